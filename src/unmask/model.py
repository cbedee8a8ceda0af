"""Masked language models: load from a hub id, folder or alias, or build from a preset.

`MaskedLM` runs the MLM head only at the masked positions (sparse prediction): on a small
BERT the vocabulary projection is about half of all the arithmetic, and 85% of it would be
thrown away. For the same reason the last encoder layer runs its queries, attention output
and feed-forward only at those positions; only its keys and values need every position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unmask import cpu_dropout
from unmask.config import UnmaskError
from unmask.masking import IGNORE_INDEX
from unmask.tokenizer import quiet_transformers, resolve_pretrained

# Google's BERT miniatures (Turc et al., 2019) and bert-base.
PRESET_SHAPES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def _head_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """hidden states (N, H) -> vocabulary logits (N, V), for the architectures we know."""
    kind = type(model).__name__
    if kind == "BertForMaskedLM":
        return model.cls
    if kind in ("RobertaForMaskedLM", "XLMRobertaForMaskedLM", "CamembertForMaskedLM"):
        return model.lm_head
    if kind == "DistilBertForMaskedLM":
        return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    if kind == "ModernBertForMaskedLM":
        return lambda h: model.decoder(model.head(h))
    return None


def _attend_at(module: nn.Module, projections: tuple[nn.Module, nn.Module, nn.Module], hidden: torch.Tensor, mask, picked: torch.Tensor):
    """Self-attention outputs (N, H) for queries at the N picked positions only, keys and
    values at every position; and the picked positions' input states (N, H), the residual.

    Each row's picked positions are packed to the left of a (B, Q) grid, Q the most any row
    has, so one batched attention call serves all rows; empty slots are dropped afterwards.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    query, key, value = projections
    batch, length, width = hidden.shape
    head_size = module.attention_head_size
    counts = picked.sum(dim=1)
    slots = int(counts.max())
    # A stable sort of 0 (picked) before 1 keeps each row's positions in increasing order,
    # so the selection below comes out in the row-major order of `picked`.
    order = torch.argsort((~picked).to(torch.int8), dim=1, stable=True)[:, :slots]
    filled = torch.arange(slots, device=picked.device) < counts[:, None]
    residual = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, width))
    queries = query(residual).view(batch, slots, -1, head_size).transpose(1, 2)
    keys = key(hidden).view(batch, length, -1, head_size).transpose(1, 2)
    values = value(hidden).view(batch, length, -1, head_size).transpose(1, 2)
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :1, :]  # a bidirectional padding mask is the same for every query
    attention = ALL_ATTENTION_FUNCTIONS[module.config._attn_implementation]
    context, _ = attention(
        module, queries, keys, values, mask, dropout=module.dropout.p if module.training else 0.0, scaling=module.scaling
    )
    return context.reshape(batch, slots, width)[filled], residual[filled]


def _bert_final_layer(layer: nn.Module, hidden: torch.Tensor, mask, picked: torch.Tensor) -> torch.Tensor:
    attention = layer.attention
    projections = (attention.self.query, attention.self.key, attention.self.value)
    context, residual = _attend_at(attention.self, projections, hidden, mask, picked)
    attended = attention.output(context, residual)
    return layer.output(layer.intermediate(attended), attended)


def _distilbert_final_layer(layer: nn.Module, hidden: torch.Tensor, mask, picked: torch.Tensor) -> torch.Tensor:
    attention = layer.attention
    context, residual = _attend_at(attention, (attention.q_lin, attention.k_lin, attention.v_lin), hidden, mask, picked)
    attended = layer.sa_layer_norm(attention.out_lin(context) + residual)
    return layer.output_layer_norm(layer.ffn.ff_chunk(attended) + attended)


def _encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    kind = type(model).__name__
    if kind in ("BertForMaskedLM", "RobertaForMaskedLM", "XLMRobertaForMaskedLM", "CamembertForMaskedLM"):
        return model.base_model.encoder.layer
    if kind == "DistilBertForMaskedLM":
        return model.base_model.transformer.layer
    return None


def _final_layer_function(model: nn.Module) -> Callable | None:
    """(input_ids, attention_mask, picked) -> last hidden states (N, H) at the picked
    positions, for the architectures we know; None means run the whole encoder."""
    from transformers.masking_utils import create_bidirectional_mask

    base = model.base_model
    layers = _encoder_layers(model)
    if layers is None:
        return None
    final = _distilbert_final_layer if type(model).__name__ == "DistilBertForMaskedLM" else _bert_final_layer
    if model.config._attn_implementation not in ("sdpa", cpu_dropout.ATTENTION_NAME) or getattr(model.config, "is_decoder", False):
        return None

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        hidden = base.embeddings(input_ids)
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in layers[:-1]:
            hidden = layer(hidden, mask)
        if not picked.any():
            return hidden[picked]
        return final(layers[-1], hidden, mask, picked)

    return run


class MaskedLM(nn.Module):
    """A transformers masked LM with a sparse prediction path; `.model` is the plain HF model.

    Wrapping swaps the model's dropout layers and attention for `cpu_dropout`'s, which
    differ from the originals only in how CPU training draws its dropout masks.
    """

    def __init__(self, model: nn.Module, fresh_parameters: frozenset[str] = frozenset()):
        super().__init__()
        self.model = model
        cpu_dropout.install(model)
        self._head = _head_function(model)
        self._final_layer = _final_layer_function(model) if self._head is not None else None
        self.fresh_parameters = fresh_parameters
        """Names (in `model`) of parameters initialised here rather than loaded."""

    @property
    def sparse(self) -> bool:
        return self._head is not None

    def compile_encoder(self, **compile_options) -> None:
        """torch.compile, in place, the encoder layers that see every token. The last layer
        and the head stay eager when they run at the masked positions only, whose number
        changes every batch; parameter names are unchanged."""
        layers = _encoder_layers(self.model)
        if layers is None or self._final_layer is None:
            self.model.base_model.compile(**compile_options)
            return
        for layer in layers[:-1]:
            layer.compile(**compile_options)

    @property
    def config(self):
        return self.model.config

    def masked_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) at the N picked positions, in row-major order of `picked`."""
        if self._head is None:
            # Unknown architecture: dense head, then select. Same numbers, more arithmetic.
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits[picked]
        if self._final_layer is not None:
            return self._head(self._final_layer(input_ids, attention_mask, picked))  # (N, H) -> (N, V)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, H)
        return self._head(hidden[picked])

    def loss_sum(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy over the masked tokens, their logits); divide by the count yourself.

        A sum, not a mean, so that gradient accumulation and evaluation can normalise by the
        masked tokens of the whole step or split instead of averaging batch means.
        """
        picked = labels != IGNORE_INDEX
        logits = self.masked_logits(input_ids, attention_mask, picked)
        return F.cross_entropy(logits.float(), labels[picked], reduction="sum"), logits


def _report_fresh_head(name: str, missing: set[str], echo: Callable[[str], None]) -> None:
    head_missing = sorted(k for k in missing if any(p in k for p in ("cls.", "lm_head", "vocab_", "decoder", "head.")))
    other_missing = sorted(set(missing) - set(head_missing))
    if other_missing:
        shown = ", ".join(other_missing[:5]) + (" ..." if len(other_missing) > 5 else "")
        echo(f"warning: '{name}' lacks {len(other_missing)} encoder weight(s), initialised at random: {shown}")
    if head_missing:
        echo(f"note: '{name}' has no MLM head; initialised a fresh one (decoder tied to the input embeddings)")


def load_mlm(name: str, trust_remote_code: bool = False, echo: Callable[[str], None] = print, init_seed: int = 0) -> MaskedLM:
    """Load a masked LM; an encoder-only checkpoint gets a fresh, tied MLM head and one line saying so.

    `init_seed` seeds that fresh head, so that scoring a headless checkpoint twice gives the same numbers.
    """
    quiet_transformers()
    from transformers import AutoModelForMaskedLM

    path = resolve_pretrained(name)
    torch.manual_seed(init_seed)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            path, output_loading_info=True, trust_remote_code=trust_remote_code, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError) as e:
        where = "folder" if Path(path).exists() else "hub id or folder"
        raise UnmaskError(f"cannot load a masked LM from {where} '{name}': {str(e).splitlines()[0]}") from None
    missing = set(info.get("missing_keys", ()))
    _report_fresh_head(name, missing, echo)
    return MaskedLM(model, frozenset(missing & {n for n, _ in model.named_parameters()}))


def build_mlm(preset: str, tokenizer, seq_len: int, seed: int) -> MaskedLM:
    """A freshly initialised BERT of a preset shape for this tokenizer's vocabulary."""
    quiet_transformers()
    from transformers import BertConfig, BertForMaskedLM

    if preset not in PRESET_SHAPES:
        raise UnmaskError(f"--from-scratch: unknown preset '{preset}' (choose from {', '.join(PRESET_SHAPES)})")
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(512, seq_len),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        tie_word_embeddings=True,
        **PRESET_SHAPES[preset],
    )
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
    config = model.config
    limit = getattr(config, "max_position_embeddings", 512)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    return limit


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UnmaskError(f"--device: '{device}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UnmaskError(f"--device: '{device}' asked for, but no CUDA GPU is available")
    return resolved


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 on GPUs that support it; fp32 on CPU, where bf16 matmuls are slow without AMX."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
