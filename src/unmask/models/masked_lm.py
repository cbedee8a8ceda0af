"""Masked language models: load from a hub id, folder or alias, or build from a preset.

`MaskedLM` runs the MLM head only at the masked positions (sparse prediction): on a small
BERT the vocabulary projection is about half of all the arithmetic, and 85% of it would be
thrown away. For the same reason the last encoder layer runs its queries, attention output
and feed-forward only at those positions; only its keys and values need every position.

Everything unmask knows about a model class is in one table, `architectures.ARCHITECTURES`;
a class not in the table is trained with its own dense head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from pickle import UnpicklingError  # only to name torch's refusal of an unsafe pickle; nothing is unpickled here

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from unmask.data.masking import IGNORE_INDEX
from unmask.data.tokenizer import Vocabulary
from unmask.errors import UnmaskError
from unmask.models import cpu_dropout
from unmask.models.architectures import (
    ARCHITECTURES,
    GENERIC_HEAD_PARTS,
    SCRATCH_CLASSES,
    Architecture,
    Picks,
    architecture_for_type,
    architecture_of,
    document_mask,
    document_positions,
    picks_of,
    rows_at,
)
from unmask.models.flops import Shape, bert_flops
from unmask.storage import checkpoint
from unmask.storage.names import (
    ModelSource,
    cannot_load,
    go_offline_if_unreachable,
    quiet_transformers,
    resolve_model,
)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """State-dict names that are another parameter under a second name (a decoder tied to the
    embeddings): alias -> the name `named_parameters` reports. Checkpoints keep each tensor once."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            aliases[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return aliases


PREPARED_MASK_TYPES = ("bert", "roberta")
"""Model types whose encoder takes a prepared 4-D boolean mask as transformers' own sdpa mask
builder would make it (others keep the 2-D mask: ModernBERT unpads with it)."""


def prepared_attention_mask(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The attention mask to hand a task model for a batch padded on the host, so that the
    model never asks the device whether the batch has padding: transformers' mask builder
    reads `mask.all()` back, a wait for the device every step. None without padding (what the
    builder itself would decide), a 4-D boolean mask for BERT and RoBERTa under sdpa
    attention, and the 2-D mask otherwise."""
    if attention_mask.numpy().all():  # the host's tensor: nothing waits
        return None
    if model.config.model_type in PREPARED_MASK_TYPES and model.config._attn_implementation in ("sdpa", cpu_dropout.ATTENTION_NAME):
        return attention_mask.bool()[:, None, None, :].expand(-1, 1, attention_mask.shape[1], -1)
    return attention_mask


def _final_layer_function(model: nn.Module, architecture: Architecture) -> Callable | None:
    """(input_ids, attention_mask, picks, documents) -> last hidden states (N, H) at the
    picked positions; None means run the whole encoder."""
    from transformers.masking_utils import create_bidirectional_mask

    final = architecture.final_layer
    if final is None or model.config._attn_implementation not in ("sdpa", cpu_dropout.ATTENTION_NAME):
        return None
    if getattr(model.config, "is_decoder", False):
        return None
    base, layers = model.base_model, architecture.layers(model)
    reserved = architecture.reserved_positions(model.config)

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, picks: Picks, documents: torch.Tensor | None) -> torch.Tensor:
        if documents is None:
            hidden = base.embeddings(input_ids)
            mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        else:
            hidden = base.embeddings(input_ids, position_ids=document_positions(documents) + reserved)
            mask = document_mask(documents)
        for layer in layers[:-1]:
            hidden = layer(hidden, mask)
        return final(layers[-1], hidden, mask, picks, documents is not None)

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
        self.attention = "sdpa"
        """The attention path (`attention.ATTENTION_CHOICES`), set by `use_attention`."""
        self._sdpa_implementation = model.config._attn_implementation if hasattr(model, "config") else "sdpa"
        """What "sdpa" is for this model: transformers' own, or `cpu_dropout`'s."""

    def use_attention(self, path: str) -> None:
        """Run attention by `path` (`attention.choose_attention` picked it): the model's
        implementation is switched in place (parameters untouched). The masked-only last
        layer is SDPA's; under the other paths the whole encoder runs and only the head is sparse."""
        from unmask.models.attention import switch_attention

        if path == self.attention:
            return
        if path == "sdpa":
            self.model.set_attn_implementation(self._sdpa_implementation)
        else:
            switch_attention(self.model, path)
        self.attention = path
        self._final_layer = _final_layer_function(self.model, self.architecture) if self.architecture else None

    @contextmanager
    def attention_for(self, dtype: torch.dtype | None) -> Iterator[None]:
        """Run under `dtype` (None: fp32) with the attention path in use, or SDPA where that
        path takes half precision only (varlen, flash): held-out evaluation computes in fp32."""
        from unmask.models.attention import HALF_PRECISION_ONLY

        path = self.attention
        if path not in HALF_PRECISION_ONLY or dtype in (torch.bfloat16, torch.float16):
            yield
            return
        self.use_attention("sdpa")
        try:
            yield
        finally:
            self.use_attention(path)

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
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def forward_flops(self, shape: Shape) -> float:
        """Model FLOPs of one forward pass over a micro-batch of `shape` (`models.flops`): the
        family's formula; outside the table BERT's, with its dense head at every real token."""
        if self.architecture is None:
            return bert_flops(self.model.config, Shape(shape.segments, shape.tokens), False)
        return self.architecture.flops(self.model.config, shape, self._final_layer is not None)

    def tied_aliases(self) -> dict[str, str]:
        """The wrapped model's `tied_aliases`."""
        return tied_aliases(self.model)

    def masked_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        picked: torch.Tensor | Picks,
        documents: torch.Tensor | None = None,
        spans=None,
    ) -> torch.Tensor:
        """Logits (N, V) at the N picked positions (a (B, T) mask, or its `Picks`), in row-major order.

        `attention_mask` None: no padding, so attention needs no mask (SDPA may take its
        fastest kernel). `documents` (B, T) from `architectures.document_ids`: each document
        of a packed window attends only to itself, with positions from its own start; `spans`
        (`attention.spans_of` them, made on the host) spare the unpadded paths computing them."""
        picks = picked if isinstance(picked, Picks) else picks_of(picked)
        if self._head is None:
            if documents is not None:
                self.require_documents_apart()  # refuses: outside the table nothing keeps documents apart
            # Unknown architecture: dense head, then select. Same numbers, more arithmetic.
            return rows_at(self.model(input_ids=input_ids, attention_mask=attention_mask).logits, picks.flat)
        return self._head(self.masked_hidden(input_ids, attention_mask, picks, documents, spans))  # (N, H) -> (N, V)

    def masked_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, picks: Picks, documents=None, spans=None
    ) -> torch.Tensor:
        """(N, H) the last hidden states at the picked positions (an architecture of the table)."""
        if documents is not None:
            self.require_documents_apart()
        if self._final_layer is not None:
            return self._final_layer(input_ids, attention_mask, picks, documents)
        return rows_at(self.hidden_states(input_ids, attention_mask, documents, spans), picks.flat)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, documents: torch.Tensor | None = None, spans=None
    ) -> torch.Tensor:
        """(B, T, H) the encoder's last hidden states."""
        if documents is not None:
            return self.architecture.encode_documents(self.model, input_ids, attention_mask, documents, spans)
        return self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]

    def require_documents_apart(self) -> None:
        """Refuse --no-attention-across-docs for a class whose table entry cannot keep documents apart."""
        if self.architecture is None or self.architecture.encode_documents is None:
            raise UnmaskError(
                f"--no-attention-across-docs: {type(self.model).__name__} cannot keep a window's documents apart in unmask "
                f"(supported: {', '.join(n for n, a in ARCHITECTURES.items() if a.encode_documents)}); use --packing padded instead"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        picks: Picks | None = None,
        documents: torch.Tensor | None = None,
        spans=None,
        top_k: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`loss_sum`; the entry point that wrappers (DDP, FSDP) hook into."""
        return self.loss_sum(input_ids, attention_mask, labels, picks, documents, spans, top_k)

    def loss_sum(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        picks: Picks | None = None,
        documents: torch.Tensor | None = None,
        spans=None,
        top_k: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(summed cross-entropy over the masked tokens, their logits (N, V)); divide by the
        count yourself. With `top_k`, the k best ids (N, k) instead of the logits (evaluation).
        Where the logits would pass `HEAD_LOGITS_ELEMENTS`, the head runs in chunks (training:
        `chunked_cross_entropy`, and no logits: None; without gradients: `scored_in_chunks`).

        `labels`: (B, T) ids with -100 off the picked positions; or, with `picks` planned on
        the host (training), the (N,) ids at those positions, so that nothing here has to ask
        the device how many there are. A sum, not a mean, so that gradient accumulation and
        evaluation can normalise by the masked tokens of the whole step or split instead of
        averaging batch means.
        """
        if picks is None:
            picked = labels != IGNORE_INDEX
            if not picked.any():
                return self._nothing_picked(input_ids, attention_mask, documents, top_k, spans)
            picks, labels = picks_of(picked), labels.reshape(-1)[picked.reshape(-1)]
        if labels.shape[0] == 0:
            return self._nothing_picked(input_ids, attention_mask, documents, top_k, spans)
        rows = head_chunk_rows(labels.shape[0], self.model.config.vocab_size)
        if rows is not None and self._head is not None:
            hidden = self.masked_hidden(input_ids, attention_mask, picks, documents, spans)
            if torch.is_grad_enabled():
                return chunked_cross_entropy(hidden, self._head, labels, rows), None
            return scored_in_chunks(hidden, self._head, labels, rows, top_k)
        logits = self.masked_logits(input_ids, attention_mask, picks, documents, spans)
        return F.cross_entropy(logits.float(), labels, reduction="sum"), logits if top_k is None else best_ids(logits, top_k)

    def _nothing_picked(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        documents: torch.Tensor | None,
        top_k: int | None = None,
        spans=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one position anyway and return zero times its logits, so that every parameter
        still gets a (zero) gradient, as DDP and FSDP expect of each process."""
        dummy = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        dummy[0, 0] = True
        logits = self.masked_logits(input_ids, attention_mask, dummy, documents, spans)
        return logits.float().sum() * 0.0, logits[:0] if top_k is None else best_ids(logits[:0], top_k)


HEAD_LOGITS_ELEMENTS = 1 << 28
"""Logits a training step may hold at once (1 GiB in fp32): past it the loss over the masked
positions is taken in chunks of this many. BERT's 30k vocabulary at 4,096 masked positions is
125M (one piece, as before); a 256k vocabulary (mmBERT, Gemma's tokenizer) passes it at 1,024."""


def head_chunk_rows(rows: int, vocab_size: int, budget: int | None = None) -> int | None:
    """Masked positions per chunk of the head, or None when all of them fit in `budget` logits
    (default `HEAD_LOGITS_ELEMENTS`)."""
    budget = HEAD_LOGITS_ELEMENTS if budget is None else budget
    if rows * vocab_size <= budget:
        return None
    return max(1, budget // vocab_size)


def chunked_cross_entropy(
    hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor, rows: int
) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` (N, V) against `targets` (N,), `rows` positions at
    a time. Each chunk's logits are recomputed in the backward pass rather than kept
    (non-reentrant checkpointing), so at most one chunk's logits and their gradient exist at
    once: the head costs one more forward, and no longer memory in proportion to N x V."""
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        total = total + checkpoint(chunk_loss, hidden[start : start + rows], targets[start : start + rows], use_reentrant=False)
    return total


def best_ids(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(N, min(k, V)) the ids of each row's k largest logits, best first."""
    return logits.float().topk(min(k, logits.shape[-1]), dim=-1).indices


@torch.no_grad()
def scored_in_chunks(
    hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor, rows: int, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Without gradients: the summed cross-entropy of `head(hidden)` against `targets` and, with
    `top_k`, each position's best ids, `rows` positions' logits at a time."""
    total, best = hidden.new_zeros((), dtype=torch.float32), []
    for start in range(0, hidden.shape[0], rows):
        logits = head(hidden[start : start + rows]).float()
        total += F.cross_entropy(logits, targets[start : start + rows], reduction="sum")
        if top_k is not None:
            best.append(best_ids(logits, top_k))
    return total, torch.cat(best) if top_k is not None else None


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


def attention_for(config) -> str:
    """The attention implementation a model of `config` is built with: SDPA where the family
    has it (eager where it does not: DeBERTa). `MaskedLM.use_attention` switches it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    try:
        model_class = MODEL_FOR_MASKED_LM_MAPPING[type(config)]
    except KeyError:  # remote code: its own class decides
        return "sdpa"
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def check_context(config, seq_len: int | None, rope_theta: float | None, name: str) -> None:
    """Refuse, before any weights are built, a --rope-theta for a family without rotary
    positions and a --seq-len longer than a model can be extended to."""
    family = architecture_for_type(config.model_type)
    kind = family.positions if family is not None else None
    _refuse_rope_theta(rope_theta, kind, f"'{name}' ({config.model_type})")
    if seq_len is None:
        return
    reserved = family.reserved_positions(config) if family is not None else 0
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None or seq_len <= limit - reserved or kind in ("rotary", "relative"):
        return
    if family is None or family.position_table is None or getattr(config, "sinusoidal_pos_embds", False):
        raise UnmaskError(
            f"--seq-len {seq_len}: '{name}' ({config.model_type}) embeds at most {limit - reserved} positions, "
            "and unmask does not know how to extend its position table"
        )


def _refuse_rope_theta(rope_theta: float | None, kind: str | None, what: str) -> None:
    """A RoPE base given for a family (`what`) whose positions (`kind`) are not rotary."""
    if rope_theta is not None and kind != "rotary":
        rotary = ", ".join(name for name, cls in SCRATCH_CLASSES.items() if ARCHITECTURES[cls].positions == "rotary")
        raise UnmaskError(
            f"--rope-theta {rope_theta:g}: {what} has {kind or 'unknown'} positions, not rotary ones; a RoPE base applies to {rotary}"
        )


def _set_rope_theta(config, rope_theta: float) -> None:
    """The global-attention layers' RoPE base (ModernBERT raised it to extend its context)."""
    config.rope_parameters["full_attention"]["rope_theta"] = float(rope_theta)


def extend_positions(lm: MaskedLM, seq_len: int) -> str | None:
    """Make room for windows of `seq_len`: a learned position table grows by copies of the
    positions it has (the first rows stay exactly as they were, so shorter inputs give the
    same outputs); rotary and relative positions need nothing. Returns a line saying what
    was done, or None."""
    config, family = lm.config, lm.architecture
    reserved = family.reserved_positions(config) if family is not None else 0
    had = config.max_position_embeddings - reserved
    if seq_len <= had:
        return None
    if family is None or family.positions != "learned":
        config.max_position_embeddings = seq_len + reserved
        return None
    table = family.position_table(lm.model)
    old = table.weight.data
    rows = torch.arange(seq_len + reserved)
    source = torch.where(rows < old.shape[0], rows, reserved + (rows - reserved) % had)  # Longformer's copies
    grown = nn.Embedding(len(rows), old.shape[1], padding_idx=table.padding_idx, device=old.device, dtype=old.dtype)
    grown.weight.data.copy_(old[source])
    embeddings = lm.model.base_model.embeddings
    for name, module in embeddings.named_children():
        if module is table:
            setattr(embeddings, name, grown)
    for buffer in ("position_ids", "token_type_ids"):
        if isinstance(getattr(embeddings, buffer, None), torch.Tensor):
            old_buffer = getattr(embeddings, buffer)
            fresh = torch.arange(len(rows)) if buffer == "position_ids" else torch.zeros(len(rows), dtype=old_buffer.dtype)
            embeddings.register_buffer(buffer, fresh.expand(1, -1).to(old_buffer.device), persistent=False)
    config.max_position_embeddings = len(rows)
    return f"positions extended from {had} to {seq_len} (learned positions: the new ones start as copies of the first {had})"


def _model_config(source: ModelSource, trust_remote_code: bool, seq_len: int | None, rope_theta: float | None):
    from transformers import AutoConfig

    if Path(source.folder).is_dir() and not (Path(source.folder) / "config.json").is_file():
        # transformers would ask for a `model_type` key in a config.json that is not there
        raise UnmaskError(f"cannot load a masked LM from folder '{source.name}': it has no config.json (not a saved model)")
    try:
        config = AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnmaskError(cannot_load("a masked LM", source.name, source.folder, e)) from None
    check_context(config, seq_len, rope_theta, source.name)
    if rope_theta is not None:
        _set_rope_theta(config, rope_theta)
    return config


def load_mlm(
    name: str | ModelSource,
    trust_remote_code: bool = False,
    echo: Callable[[str], None] = print,
    init_seed: int = 0,
    *,
    seq_len: int | None = None,
    rope_theta: float | None = None,
) -> MaskedLM:
    """Load a masked LM (any name `names.resolve_model` takes, or what it returned); an
    encoder-only checkpoint gets a fresh, tied MLM head and one line saying so.

    `init_seed` seeds that fresh head, so that scoring a headless checkpoint twice gives the
    same numbers. `seq_len` and `rope_theta` (training at a longer context) are checked
    against the model's config before any weights are built; `extend_positions` then makes
    room.
    """
    quiet_transformers()
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    go_offline_if_unreachable(source.folder)
    config = _model_config(source, trust_remote_code, seq_len, rope_theta)
    if source.checkpoint is not None:
        return _load_checkpoint(source, config, trust_remote_code)
    from transformers import AutoModelForMaskedLM

    path = source.folder
    # A forked RNG: seeding the fresh head must not reset the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(
                path,
                config=config,
                output_loading_info=True,
                trust_remote_code=trust_remote_code,
                attn_implementation=attention_for(config),
            )
        except UnpicklingError:
            raise UnmaskError(
                f"'{source.name}': refused to load pickled weights that do more than hold tensors (they could run code); "
                "only safetensors and plain-tensor checkpoints load"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise UnmaskError(cannot_load("a masked LM", source.name, path, e)) from None
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


def _load_checkpoint(source: ModelSource, config, trust_remote_code: bool) -> MaskedLM:
    """A run's checkpoint: the model built from the run's base config, with the checkpoint's weights."""
    from transformers import AutoModelForMaskedLM

    weights = _checkpoint_weights(source)
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForMaskedLM.from_config(config, trust_remote_code=trust_remote_code, attn_implementation=attention_for(config))
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
    one output) or token classification, from any name `names.resolve_model` takes, a run's
    checkpoint included. `seed` seeds the fresh head (in a forked RNG)."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    source = name if isinstance(name, ModelSource) else resolve_model(name)
    go_offline_if_unreachable(source.folder)
    head = AutoModelForTokenClassification if tokens else AutoModelForSequenceClassification
    options = (
        {"num_labels": 1, "problem_type": "regression"}
        if labels is None
        else {
            "num_labels": len(labels),
            "id2label": labels,
            "label2id": {v: k for k, v in labels.items()},
            **({} if tokens else {"problem_type": "single_label_classification"}),
        }
    )
    weights = _checkpoint_weights(source) if source.checkpoint is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            config = AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code, **options)
            if weights is not None:
                model = head.from_config(config, trust_remote_code=trust_remote_code, attn_implementation=attention_for(config))
                missing = set(model.load_state_dict(weights, strict=False).missing_keys)
            else:
                model, info = head.from_pretrained(
                    source.folder,
                    config=config,
                    output_loading_info=True,
                    trust_remote_code=trust_remote_code,
                    attn_implementation=attention_for(config),
                )
                missing = set(info.get("missing_keys", ()))
        except UnpicklingError:
            raise UnmaskError(
                f"'{source.name}': refused to load pickled weights that do more than hold tensors (they could run code)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise UnmaskError(cannot_load("an encoder", source.name, source.folder, e)) from None
    encoder_missing = sorted(k for k in missing if any(part in k for part in _ENCODER_PARTS) and "pooler" not in k)
    if encoder_missing:
        echo(
            f"warning: '{source.name}' lacks {len(encoder_missing)} encoder weight(s), initialised at random: {', '.join(encoder_missing[:5])}"
        )
    family = architecture_for_type(config.model_type)
    cpu_dropout.install(model, switch_attention=family is not None and family.plain_attention)
    return model


def build_config(arch: str, size: str, vocab: Vocabulary, seq_len: int, rope_theta: float | None = None):
    """The transformers config of a fresh `arch` model of `size` for this vocabulary, checked
    (before any weights exist) against what the family needs of the tokenizer."""
    quiet_transformers()
    family = ARCHITECTURES[SCRATCH_CLASSES[arch]]
    for field_name in family.required_ids:
        value = getattr(vocab, field_name)
        if not 0 <= value < vocab.size:
            raise UnmaskError(
                f"--arch {arch}: the tokenizer's {field_name.removesuffix('_id')} id is {value}, outside its vocabulary of {vocab.size}; "
                f"a {SCRATCH_CLASSES[arch]} needs every special id inside the vocabulary (train the tokenizer with its special tokens)"
            )
    if vocab.mask_id is not None and vocab.mask_id >= vocab.size:
        raise UnmaskError(f"--arch {arch}: the tokenizer's mask id {vocab.mask_id} is outside its vocabulary of {vocab.size}")
    check_scratch(arch, rope_theta)
    return family.scratch(size, vocab, seq_len, rope_theta)


def check_scratch(arch: str, rope_theta: float | None) -> None:
    """Refuse a --rope-theta for a --from-scratch family without rotary positions."""
    _refuse_rope_theta(rope_theta, ARCHITECTURES[SCRATCH_CLASSES[arch]].positions, f"--arch {arch}")


def check_model_settings(name: str, seq_len: int, rope_theta: float | None, trust_remote_code: bool = False) -> None:
    """`check_context` from a model's config alone: cheap, for before a run writes anything."""
    quiet_transformers()
    source = resolve_model(name)
    go_offline_if_unreachable(source.folder)
    _model_config(source, trust_remote_code, seq_len, rope_theta)


def build_mlm(size: str, vocab: Vocabulary, seq_len: int, seed: int, arch: str = "bert", rope_theta: float | None = None) -> MaskedLM:
    """A freshly initialised model of an architecture and size, for this vocabulary."""
    from transformers import AutoModelForMaskedLM

    config = build_config(arch, size, vocab, seq_len, rope_theta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedLM(AutoModelForMaskedLM.from_config(config, attn_implementation=attention_for(config)))


def set_dropout(model: nn.Module, probability: float) -> None:
    """Set every dropout layer's probability; the model config is left as it was, so
    `save_pretrained` still records the checkpoint's own dropout for later fine-tuning."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        elif isinstance(getattr(module, "attention_dropout", None), float):  # ModernBERT keeps its attention's as a number
            module.attention_dropout = probability


def max_positions(model: MaskedLM) -> int:
    """Longest input the model embeds as it is (RoBERTa reserves the positions up to its padding id)."""
    limit = getattr(model.config, "max_position_embeddings", 512)
    return limit - (model.architecture.reserved_positions(model.config) if model.architecture else 0)
