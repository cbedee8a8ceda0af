"""Masked language models: load from a hub id, folder or alias, or build from a preset.

`MaskedLM` runs the MLM head only at the masked positions (sparse prediction): on a small
BERT the vocabulary projection is about half of all the arithmetic, and 85% of it would be
thrown away. For the same reason the last encoder layer runs its queries, attention output
and feed-forward only at those positions; only its keys and values need every position.

Everything unmask knows about a model class is in one table, `architectures.ARCHITECTURES`;
a class not in the table is trained with its own dense head.
"""

from __future__ import annotations

from collections.abc import Callable
from pickle import UnpicklingError  # only to name torch's refusal of an unsafe pickle; nothing is unpickled here

import torch
import torch.nn.functional as F
from torch import nn

from unmask import checkpoint, cpu_dropout
from unmask.architectures import GENERIC_HEAD_PARTS, Architecture, Picks, architecture_for_type, architecture_of, picks_of, rows_at
from unmask.errors import UnmaskError
from unmask.hub import ModelSource, describe_failure, go_offline_if_unreachable, quiet_transformers, resolve_model, where
from unmask.masking import IGNORE_INDEX
from unmask.tokenizer import Vocabulary

# Google's BERT miniatures (Turc et al., 2019) and bert-base.
PRESET_SHAPES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def _final_layer_function(model: nn.Module, architecture: Architecture) -> Callable | None:
    """(input_ids, attention_mask, picks) -> last hidden states (N, H) at the picked
    positions; None means run the whole encoder."""
    from transformers.masking_utils import create_bidirectional_mask

    final = architecture.final_layer
    if final is None or model.config._attn_implementation not in ("sdpa", cpu_dropout.ATTENTION_NAME):
        return None
    if getattr(model.config, "is_decoder", False):
        return None
    base, layers = model.base_model, architecture.layers(model)

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, picks: Picks) -> torch.Tensor:
        hidden = base.embeddings(input_ids)
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in layers[:-1]:
            hidden = layer(hidden, mask)
        return final(layers[-1], hidden, mask, picks)

    return run


class MaskedLM(nn.Module):
    """A transformers masked LM with a sparse prediction path; `.model` is the plain HF model.

    Wrapping swaps the model's dropout layers and attention for `cpu_dropout`'s, which
    differ from the originals only in how CPU training draws its dropout masks.
    """

    def __init__(self, model: nn.Module, fresh_parameters: frozenset[str] = frozenset()):
        super().__init__()
        self.model = model
        self.architecture = architecture_of(model)
        cpu_dropout.install(model, switch_attention=self.architecture is not None and self.architecture.plain_attention)
        head = self.architecture.head(model) if self.architecture else None
        # A plain callable, not a submodule: registering the head twice would give its
        # weights a second name in every state dict.
        self._head = head.__call__ if isinstance(head, nn.Module) else head
        self._final_layer = _final_layer_function(model, self.architecture) if self.architecture else None
        self.fresh_parameters = fresh_parameters
        """Names (in `model`) of parameters initialised here rather than loaded."""

    @property
    def sparse(self) -> bool:
        return self._head is not None

    def has_fresh_head(self) -> bool:
        """Whether the MLM head was initialised here rather than loaded (its predictions are a random head's)."""
        if self.architecture is not None:
            return any(name.startswith(self.architecture.head_prefixes) for name in self.fresh_parameters)
        return any(part in name for name in self.fresh_parameters for part in GENERIC_HEAD_PARTS)

    def compile_encoder(self, **compile_options) -> None:
        """torch.compile, in place, the encoder layers that see every token. The last layer
        and the head stay eager when they run at the masked positions only, whose number
        changes every batch; parameter names are unchanged."""
        if self.architecture is None or self._final_layer is None:
            self.model.base_model.compile(**compile_options)
            return
        for layer in self.architecture.layers(self.model)[:-1]:
            layer.compile(**compile_options)

    @property
    def config(self):
        return self.model.config

    def separately_shardable_layers(self) -> list[nn.Module]:
        """Encoder layers that FSDP may shard one by one: those called through their own
        forward. The masked-only last layer calls its submodules directly, so it stays with the root."""
        if self.architecture is None:
            return []
        layers = list(self.architecture.layers(self.model))
        return layers[:-1] if self._final_layer is not None else layers

    def enable_activation_checkpointing(self) -> None:
        """Recompute each encoder layer's activations in the backward pass instead of keeping them."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise UnmaskError(f"--activation-checkpointing: {type(self.model).__name__} does not support it")
        # Non-reentrant checkpointing, the kind that works under FSDP2 hooks.
        options = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

    def tied_aliases(self) -> dict[str, str]:
        """State-dict names that are another parameter under a second name (a decoder tied to
        the embeddings): alias -> the name `named_parameters` reports."""
        first: dict[int, str] = {}
        aliases = {}
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            if id(parameter) in first:
                aliases[name] = first[id(parameter)]
            else:
                first[id(parameter)] = name
        return aliases

    def masked_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, picked: torch.Tensor | Picks) -> torch.Tensor:
        """Logits (N, V) at the N picked positions (a (B, T) mask, or its `Picks`), in row-major order.

        `attention_mask` None: no padding, so attention needs no mask (SDPA may take its
        fastest kernel)."""
        picks = picked if isinstance(picked, Picks) else picks_of(picked)
        if self._head is None:
            # Unknown architecture: dense head, then select. Same numbers, more arithmetic.
            return rows_at(self.model(input_ids=input_ids, attention_mask=attention_mask).logits, picks.flat)
        if self._final_layer is not None:
            return self._head(self._final_layer(input_ids, attention_mask, picks))  # (N, H) -> (N, V)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, H)
        return self._head(rows_at(hidden, picks.flat))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor, picks: Picks | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_sum`; the entry point that wrappers (DDP, FSDP) hook into."""
        return self.loss_sum(input_ids, attention_mask, labels, picks)

    def loss_sum(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor, picks: Picks | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy over the masked tokens, their logits); divide by the count yourself.

        `labels`: (B, T) ids with -100 off the picked positions; or, with `picks` planned on
        the host (training), the (N,) ids at those positions, so that nothing here has to ask
        the device how many there are. A sum, not a mean, so that gradient accumulation and
        evaluation can normalise by the masked tokens of the whole step or split instead of
        averaging batch means.
        """
        if picks is None:
            picked = labels != IGNORE_INDEX
            if not picked.any():
                return self._nothing_picked(input_ids, attention_mask)
            picks, labels = picks_of(picked), labels.reshape(-1)[picked.reshape(-1)]
        if labels.shape[0] == 0:
            return self._nothing_picked(input_ids, attention_mask)
        logits = self.masked_logits(input_ids, attention_mask, picks)
        return F.cross_entropy(logits.float(), labels, reduction="sum"), logits

    def _nothing_picked(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one position anyway and return zero times its logits, so that every parameter
        still gets a (zero) gradient, as DDP and FSDP expect of each process."""
        dummy = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        dummy[0, 0] = True
        logits = self.masked_logits(input_ids, attention_mask, dummy)
        return logits.float().sum() * 0.0, logits[:0]


def _report_fresh_head(name: str, model: nn.Module, missing: set[str], echo: Callable[[str], None]) -> None:
    architecture = architecture_of(model)
    if architecture is not None:
        head_missing = sorted(k for k in missing if k.startswith(architecture.head_prefixes))
    else:
        head_missing = sorted(k for k in missing if any(p in k for p in GENERIC_HEAD_PARTS))
    other_missing = sorted(set(missing) - set(head_missing))
    if other_missing:
        shown = ", ".join(other_missing[:5]) + (" ..." if len(other_missing) > 5 else "")
        echo(f"warning: '{name}' lacks {len(other_missing)} encoder weight(s), initialised at random: {shown}")
    if head_missing:
        echo(f"note: '{name}' has no MLM head; initialised a fresh one (decoder tied to the input embeddings)")


def load_mlm(name: str | ModelSource, trust_remote_code: bool = False, echo: Callable[[str], None] = print, init_seed: int = 0) -> MaskedLM:
    """Load a masked LM (any name `hub.resolve_model` takes, or what it returned); an
    encoder-only checkpoint gets a fresh, tied MLM head and one line saying so.

    `init_seed` seeds that fresh head, so that scoring a headless checkpoint twice gives the same numbers.
    """
    quiet_transformers()
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    if source.checkpoint is not None:
        return _load_checkpoint(source, trust_remote_code)
    from transformers import AutoModelForMaskedLM

    path = source.folder
    go_offline_if_unreachable(path)
    # A forked RNG: seeding the fresh head must not reset the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(
                path, output_loading_info=True, trust_remote_code=trust_remote_code, attn_implementation="sdpa"
            )
        except UnpicklingError:
            raise UnmaskError(
                f"'{source.name}': refused to load pickled weights that do more than hold tensors (they could run code); "
                "only safetensors and plain-tensor checkpoints load"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UnmaskError(f"cannot load a masked LM from {where(path)} '{source.name}': {describe_failure(e)}") from None
    missing = set(info.get("missing_keys", ()))
    _report_fresh_head(source.name, model, missing, echo)
    return MaskedLM(model, frozenset(missing & {n for n, _ in model.named_parameters()}))


def _checkpoint_weights(source: ModelSource) -> dict[str, torch.Tensor]:
    """A run checkpoint's model weights, verified against their checksums first."""
    from safetensors.torch import load_file

    problem = checkpoint.verify(source.checkpoint)
    if problem:
        raise UnmaskError(f"{source.checkpoint}: damaged checkpoint ({problem})")
    return load_file(str(source.checkpoint / checkpoint.MODEL_FILE))


def _load_checkpoint(source: ModelSource, trust_remote_code: bool) -> MaskedLM:
    """A run's checkpoint: the model built from the run's base config, with the checkpoint's weights."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    weights = _checkpoint_weights(source)
    config = AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code)
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForMaskedLM.from_config(config, trust_remote_code=trust_remote_code, attn_implementation="sdpa")
    lm = MaskedLM(model)
    for alias, parameter in lm.tied_aliases().items():
        if parameter in weights:
            weights.setdefault(alias, weights[parameter])
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UnmaskError(f"{source.checkpoint}: the weights do not fit {source.folder}/config.json: {str(e).splitlines()[0]}") from None
    return lm


_ENCODER_PARTS = ("embeddings", "encoder", "layer", "transformer")


def load_task_model(
    name: str | ModelSource,
    *,
    tokens: bool,
    labels: dict[int, str] | None,
    seed: int,
    trust_remote_code: bool = False,
    echo: Callable[[str], None] = print,
) -> nn.Module:
    """An encoder with a fresh task head: sequence classification (`labels` None: regression,
    one output) or token classification, from any name `hub.resolve_model` takes, a run's
    checkpoint included. `seed` seeds the fresh head (in a forked RNG)."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    source = name if isinstance(name, ModelSource) else resolve_model(name)
    go_offline_if_unreachable(source.folder)
    head = AutoModelForTokenClassification if tokens else AutoModelForSequenceClassification
    options = {"num_labels": 1, "problem_type": "regression"} if labels is None else {
        "num_labels": len(labels), "id2label": labels, "label2id": {v: k for k, v in labels.items()},
        **({} if tokens else {"problem_type": "single_label_classification"}),
    }  # fmt: skip
    weights = _checkpoint_weights(source) if source.checkpoint is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            config = AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code, **options)
            if weights is not None:
                model = head.from_config(config, trust_remote_code=trust_remote_code, attn_implementation="sdpa")
                missing = set(model.load_state_dict(weights, strict=False).missing_keys)
            else:
                model, info = head.from_pretrained(
                    source.folder, config=config, output_loading_info=True, trust_remote_code=trust_remote_code, attn_implementation="sdpa"
                )
                missing = set(info.get("missing_keys", ()))
        except UnpicklingError:
            raise UnmaskError(
                f"'{source.name}': refused to load pickled weights that do more than hold tensors (they could run code)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UnmaskError(f"cannot load an encoder from {where(source.folder)} '{source.name}': {describe_failure(e)}") from None
    encoder_missing = sorted(k for k in missing if any(part in k for part in _ENCODER_PARTS) and "pooler" not in k)
    if encoder_missing:
        echo(
            f"warning: '{source.name}' lacks {len(encoder_missing)} encoder weight(s), initialised at random: {', '.join(encoder_missing[:5])}"
        )
    family = architecture_for_type(config.model_type)
    cpu_dropout.install(model, switch_attention=family is not None and family.plain_attention)
    return model


def build_mlm(preset: str, vocab: Vocabulary, seq_len: int, seed: int) -> MaskedLM:
    """A freshly initialised BERT of a preset shape for this vocabulary."""
    quiet_transformers()
    from transformers import BertConfig, BertForMaskedLM

    if preset not in PRESET_SHAPES:
        raise UnmaskError(f"--from-scratch: unknown preset '{preset}' (choose from {', '.join(PRESET_SHAPES)})")
    config = BertConfig(
        vocab_size=vocab.size,
        max_position_embeddings=max(512, seq_len),
        pad_token_id=vocab.pad_id,
        tie_word_embeddings=True,
        **PRESET_SHAPES[preset],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedLM(BertForMaskedLM(config))


def set_dropout(model: nn.Module, probability: float) -> None:
    """Set every dropout layer's probability; the model config is left as it was, so
    `save_pretrained` still records the checkpoint's own dropout for later fine-tuning."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability


def max_positions(model: MaskedLM) -> int:
    """Longest input the model can embed (RoBERTa reserves two positions for padding offsets)."""
    limit = getattr(model.config, "max_position_embeddings", 512)
    return limit - (model.architecture.position_offset if model.architecture else 0)
