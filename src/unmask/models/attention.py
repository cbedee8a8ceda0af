"""Which attention kernel a model runs (`--attention auto|sdpa|flex|varlen|flash`), and the
unpadded paths: packed documents and padded rows run as variable-length sequences.

- `sdpa`: torch's scaled_dot_product_attention under a mask (a (T x T) boolean mask per window
  when documents are kept apart). Runs everywhere; the only path that trains on a CPU.
- `varlen`: torch's own variable-length flash attention (`torch.nn.attention.varlen`, CUDA
  only, no extra package): the batch is one flat run of tokens cut at each document's (and
  each row's padding's) boundary, so no position attends across a boundary and no score is
  computed there. Registered with transformers' `AttentionInterface` as "unmask_varlen".
- `flex`: FlexAttention (transformers' "flex_attention") with a document block mask: blocks
  between documents are skipped. Forward and backward on CUDA; forward only on a CPU in
  torch 2.13 ("FlexAttention does not support backward on CPU").
- `flash`: the flash-attn package through transformers ("flash_attention_2"), where installed.

Neither varlen nor flex has attention dropout: a model trained with attention dropout (BERT's
configs have 0.1) runs sdpa under `auto`, and is refused by name under them. varlen and flash
take bf16 or fp16 only: a run in fp32 keeps to SDPA, and fp32 evaluation switches to SDPA for
its duration (`MaskedLM.attention_for`).

The boundaries of a packed batch are `Spans`: cumulative offsets into the flattened (B * T)
tokens, computed on the host from the document ids (`spans_of`) so that nothing asks the
device how many documents there are; they reach the attention call as transformers'
padding-free keyword arguments (`cu_seq_lens_q`, ...), which flash-attn takes as well.
"""

from __future__ import annotations

import importlib.util
import typing
from typing import NamedTuple

import numpy as np
import torch

from unmask.config.sections import AttentionName
from unmask.errors import UnmaskError

ATTENTION_CHOICES: tuple[str, ...] = typing.get_args(AttentionName)
VARLEN_NAME = "unmask_varlen"
IMPLEMENTATIONS = {"sdpa": "sdpa", "flex": "flex_attention", "varlen": VARLEN_NAME, "flash": "flash_attention_2"}
"""Each path's transformers `attn_implementation`."""
UNPADDED = ("varlen", "flash")
"""Paths that take a packed batch as spans rather than a mask."""
HALF_PRECISION_ONLY = ("varlen", "flash")
"""Paths whose kernels take bf16 or fp16 only (FlashAttention's)."""
WITHOUT_DROPOUT = ("varlen", "flex")
"""Paths with no attention dropout."""


class Spans(NamedTuple):
    """Where each sequence of a flattened (B * T) batch begins: `cu` (S + 1,) int32 offsets,
    `longest` the longest sequence (an upper bound serves)."""

    cu: torch.Tensor
    longest: int

    def to(self, device: torch.device, non_blocking: bool = False) -> Spans:
        return Spans(self.cu.to(device, non_blocking=non_blocking), self.longest)

    def as_kwargs(self) -> dict:
        """transformers' padding-free keyword arguments."""
        return {"cu_seq_lens_q": self.cu, "cu_seq_lens_k": self.cu, "max_length_q": self.longest, "max_length_k": self.longest}


def spans_of(documents: np.ndarray | torch.Tensor) -> Spans:
    """The spans of a (B, T) batch of document ids (`architectures.document_ids`: padding is a
    document of its own): a new sequence wherever the id changes, and at every row's start."""
    ids = documents.cpu().numpy() if isinstance(documents, torch.Tensor) else np.asarray(documents)
    rows, length = ids.shape
    begins = np.ones(ids.shape, dtype=bool)
    begins[:, 1:] = ids[:, 1:] != ids[:, :-1]
    starts = np.flatnonzero(begins.reshape(-1))
    cu = np.append(starts, rows * length).astype(np.int32)
    return Spans(torch.from_numpy(cu), int(np.diff(cu).max()) if rows else 0)


def padded_spans(attention_mask: torch.Tensor) -> Spans:
    """The spans of a right-padded (B, T) batch, computed where the mask is (nothing waits for
    the device): each row's tokens, then its padding, as two sequences (an empty one where
    a row has no padding)."""
    rows, length = attention_mask.shape
    starts = torch.arange(rows, device=attention_mask.device, dtype=torch.int32) * length
    ends = starts + attention_mask.sum(1, dtype=torch.int32)
    cu = torch.cat([torch.stack([starts, ends], 1).reshape(-1), starts.new_full((1,), rows * length)])
    return Spans(cu, length)


def varlen_available() -> bool:
    """Whether this torch has `varlen_attn` with the `scale` and `window_size` arguments unmask
    passes (the module came with torch 2.10; those arguments after it, and 2.13 has them)."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return {"scale", "window_size"} <= set(inspect.signature(varlen_attn).parameters)


def flex_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_dropout(config) -> float:
    """The attention dropout a transformers config trains with."""
    for name in ("attention_probs_dropout_prob", "attention_dropout"):
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _missing(path: str, device: torch.device, dropout: float, supported: bool, half: bool = True) -> str | None:
    """Why `path` cannot run here (None: it can); `half`: the run computes in bf16 or fp16."""
    if not supported:
        return "this model's class does not take it"
    if path == "varlen" and device.type != "cuda":
        return f"torch's varlen attention runs on CUDA only (this device: {device.type})"
    if path == "varlen" and not varlen_available():
        return f"this torch ({torch.__version__}) has no torch.nn.attention.varlen.varlen_attn taking scale and window_size"
    if path == "flash" and (device.type != "cuda" or not flash_installed()):
        return (
            "the flash-attn package is not installed"
            if device.type == "cuda"
            else f"flash-attn runs on CUDA only (this device: {device.type})"
        )
    if path == "flex" and not flex_available():
        return f"this torch ({torch.__version__}) has no FlexAttention"
    if path == "flex" and device.type != "cuda":
        # Measured with torch 2.13 on a Xeon: no backward on a CPU, and inductor's CPU kernel
        # for a document mask failed to compile (a C++ error) beyond the first shape.
        return f"FlexAttention runs on CUDA only here (torch {torch.__version__.split('+')[0]} has no backward on {device.type}, and its CPU kernel failed to compile)"
    if path in WITHOUT_DROPOUT and dropout > 0:
        return f"it has no attention dropout and this model trains with {dropout:g} (pass --dropout 0)"
    if path in HALF_PRECISION_ONLY and not half:
        return "its kernel takes bf16 or fp16 only and this run computes in fp32 (--precision bf16, or auto on a GPU with bf16)"
    return None


def choose_attention(
    requested: str, device: torch.device, model_class: type, dropout: float, half: bool = True, deterministic: bool = False
) -> tuple[str, str]:
    """The attention path to run (`requested`, or `auto`'s pick) and the start line's reason.

    `auto`: torch's varlen (CUDA), else flash-attn where installed, else SDPA (varlen first: with
    a padded batch transformers' flash path asks the device for the lengths in every layer, and
    which kernel is faster waits for a GPU measurement). FlexAttention
    is never `auto`'s pick: on this project's CPU it ran 2.4x slower than SDPA at 512 tokens
    (benchmarks/attention_bench.py) and cannot train there; on a GPU it waits for a measurement.
    A path that cannot run is refused with what is missing and what `auto` would run instead.
    With `deterministic` (--deterministic), `auto` keeps to SDPA.
    """
    supports = {
        "sdpa": True,
        "flex": getattr(model_class, "_supports_flex_attn", False),
        "varlen": getattr(model_class, "_supports_attention_backend", False),
        "flash": getattr(model_class, "_supports_flash_attn", False),
    }
    if requested == "auto" and deterministic:
        return "sdpa", "attention: sdpa (auto: --deterministic keeps to SDPA, whose determinism it sets up and is tested on)"
    if requested == "auto":
        for path in ("varlen", "flash"):
            if _missing(path, device, dropout, supports[path], half) is None:
                return path, f"attention: {path} (auto: packed documents and padding run unpadded)"
        why = _missing("varlen", device, dropout, supports["varlen"], half)
        return "sdpa", f"attention: sdpa (auto: varlen cannot run: {why})"
    if requested not in ATTENTION_CHOICES:
        raise UnmaskError(f"--attention {requested}: choose one of {', '.join(ATTENTION_CHOICES)}")
    problem = _missing(requested, device, dropout, supports[requested], half)
    if problem is not None:
        fallback, _ = choose_attention("auto", device, model_class, dropout, half, deterministic)
        raise UnmaskError(f"--attention {requested}: {problem}; --attention auto would run {fallback}")
    return requested, f"attention: {requested} (as asked)"


def refuse_unavailable(requested: str, device: torch.device) -> None:
    """Refuse, before any work, a path this device or this torch cannot run whatever the model
    (`choose_attention` also weighs the model's class and attention dropout, once it is loaded)."""
    if requested != "auto":
        choose_attention(requested, device, _TAKES_EVERY_PATH, 0.0, half=True)


_TAKES_EVERY_PATH = type(
    "TakesEveryPath", (), {"_supports_flex_attn": True, "_supports_attention_backend": True, "_supports_flash_attn": True}
)
"""A model class that takes every path: what is left to refuse is the device's and torch's."""


def attention_of(
    requested: str, device: torch.device, model, dropout: float | None, dtype: torch.dtype | None, deterministic: bool = False
) -> tuple[str, str]:
    """`choose_attention` for a transformers model trained under `dtype` (None: fp32), whose
    attention dropout is `dropout` (--dropout) or, when None, its config's."""
    dropout = dropout if dropout is not None else attention_dropout(model.config)
    half = dtype in (torch.bfloat16, torch.float16)
    return choose_attention(requested, device, type(model), dropout, half, deterministic)


def switch_attention(model, path: str) -> None:
    """Switch a transformers model's attention implementation to `path`'s, in place."""
    if path == "sdpa":
        return
    if IMPLEMENTATIONS[path] == VARLEN_NAME:
        register_varlen()
    model.set_attn_implementation(IMPLEMENTATIONS[path])


def varlen_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention contract ((B, H, T, D) in, (B, T, H, D) out) over torch's
    varlen kernel: the batch flattened to (B * T) tokens cut at the spans given (a packed
    batch) or at each row's padding (a 2-D padding mask); no attention across a cut.
    `sliding_window` (ModernBERT's local layers) keeps each query to keys at most
    `sliding_window - 1` positions away, as transformers' own sliding mask does."""
    if dropout > 0:
        raise ValueError("unmask_varlen has no attention dropout: set the model's attention dropout to 0")
    batch, heads, length, size = query.shape
    spans = Spans(cu_seq_lens_q, max_length_q) if cu_seq_lens_q is not None else None
    if spans is None:
        spans = padded_spans(attention_mask) if attention_mask is not None else Spans(_row_starts(batch, length, query.device), length)

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], size)

    window = (sliding_window - 1, sliding_window - 1) if sliding_window else (-1, -1)
    out = varlen_kernel()(
        flat(query), flat(key), flat(value), spans.cu, spans.cu, spans.longest, spans.longest, scale=scaling, window_size=window
    )
    return out.view(batch, length, heads, size), None


def _row_starts(batch: int, length: int, device: torch.device) -> torch.Tensor:
    return torch.arange(batch + 1, device=device, dtype=torch.int32) * length


def varlen_kernel():
    """torch's varlen attention (a function, so that a test can stand a CPU reference in for it)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def varlen_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask transformers hands "unmask_varlen": the 2-D padding mask as it came (its
    spans are `padded_spans`), or None without one."""
    return attention_mask


def register_varlen() -> None:
    """Make "unmask_varlen" a valid `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN_NAME, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_NAME, varlen_mask)


def document_block_mask(documents: torch.Tensor, window: int | None = None):
    """FlexAttention's block mask for a (B, T) batch of document ids: a query attends to the
    keys of its own document (and, with `window`, at most that many positions away)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = documents.shape

    def same_document(b, h, q, kv):
        own = documents[b, q] == documents[b, kv]
        return own if window is None else own & ((q - kv).abs() <= window)

    return create_block_mask(same_document, rows, None, length, length, device=documents.device)
