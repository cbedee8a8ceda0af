"""Dropout that draws its random bits cheaply on CPU.

torch's CPU dropout calls `bernoulli_`, which spends one Mersenne-Twister draw and a float
conversion per element: on a 2-core machine it took 93 ms for one layer's attention
probabilities in the MiniLM shape (32 x 12 x 128 x 128), and a quarter of a training step in
all. Here one 64-bit draw gives four 16-bit uniforms, compared against a threshold: 17 ms for
the same tensor. The keep probability is exact to 1/65536.

The attention dropout happens inside SDPA, so the model's attention goes through
`attention_forward`, registered with transformers' `AttentionInterface` as "unmask_sdpa".
It is plain SDPA (fused kernels, identical numbers) whenever there is no dropout to draw:
evaluation, inference, `--dropout 0`, and GPUs, whose fused kernels draw dropout cheaply
themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_NAME = "unmask_sdpa"
_RESOLUTION = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], keep_probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool tensor of `shape`, each element True with `keep_probability` (to 1/65536), on CPU."""
    count = 1
    for size in shape:
        count *= size
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    threshold = round(keep_probability * _RESOLUTION) - _RESOLUTION // 2
    return (words.view(torch.int16)[:count] < threshold).view(shape)


def cheap_dropout(x: torch.Tensor, probability: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` with the same distribution, drawing its mask with `keep_mask` on CPU."""
    if not training or probability == 0.0 or x.device.type != "cpu":
        return F.dropout(x, probability, training)
    if probability == 1.0:
        return x * 0.0
    keep = keep_mask(x.shape, 1.0 - probability)
    # `where` keeps only the bool mask for backward, not a float copy of it.
    return torch.where(keep, x * (1.0 / (1.0 - probability)), 0.0)


class CheapDropout(nn.Dropout):
    """`nn.Dropout` (same `p`, no state) whose CPU mask comes from `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cheap_dropout(x, self.p, self.training)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' SDPA attention, except that CPU attention dropout draws with `keep_mask`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or dropout >= 1.0 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # SDPA's math path, the one CPU SDPA takes when it has dropout to apply. Both scales are
    # applied to the (T x head) operands rather than the (T x T) scores: 4x fewer multiplies
    # at T=128 with 32-wide heads.
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if attention_mask is not None:
        mask = attention_mask[..., : key.size(-2)]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probabilities = torch.softmax(scores, dim=-1)
    kept = torch.where(keep_mask(probabilities.shape, 1.0 - dropout), probabilities, 0.0)
    context = torch.matmul(kept, value * (1.0 / (1.0 - dropout)))
    return context.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make "unmask_sdpa" a valid `attn_implementation` whose masks are built as for SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def install(model: nn.Module, switch_attention: bool) -> bool:
    """Swap every `nn.Dropout` in `model` for `CheapDropout`, and SDPA attention for "unmask_sdpa".

    `switch_attention` comes from the architecture table (`model.ARCHITECTURES`): only
    plain softmax attention under a padding mask, which is all `attention_forward`'s dropout
    path does, may switch; others (ModernBERT's sliding windows) keep SDPA. Parameter names
    and the state dict are unchanged. Returns whether the attention was switched.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                replacement = CheapDropout(child.p, child.inplace)
                replacement.train(child.training)
                setattr(parent, name, replacement)
    config = getattr(model, "config", None)
    if not switch_attention or not hasattr(model, "set_attn_implementation") or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    model.set_attn_implementation(ATTENTION_NAME)
    return True
