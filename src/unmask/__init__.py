"""unmask: train masked language models on your own text, then evaluate and use them.

Every command is a function here with the command's settings as keyword arguments
(`unmask.train(model="minilm-l6", data=["runs/store"], out="runs/demo", max_steps=100)`);
see `unmask.api`. Bad input raises `unmask.UnmaskError` with the message the CLI prints.
"""

__version__ = "0.1.0"

from unmask.api import (
    compare,
    downstream,
    embed,
    evaluate,
    export,
    fill,
    fill_against,
    finetune,
    inspect,
    pairs,
    plan,
    prepare,
    probe,
    score,
    tokenizer,
    train,
)
from unmask.errors import UnmaskError

__all__ = [
    "MaskRateCallback", "MaskingCollator", "UnmaskError", "compare", "downstream", "embed", "evaluate", "export", "fill", "fill_against", "finetune", "inspect", "pairs", "plan", "prepare", "probe",
    "score", "tokenizer", "train",
]  # fmt: skip


def __getattr__(name: str):
    """`MaskingCollator` and `MaskRateCallback` (for Hugging Face's Trainer), imported when first
    used, so that `import unmask` stays light (no torch, no Trainer)."""
    if name == "MaskingCollator":
        from unmask.data.collator import MaskingCollator

        return MaskingCollator
    if name == "MaskRateCallback":
        from unmask.data.collator import mask_rate_callback_class

        return mask_rate_callback_class()
    raise AttributeError(f"module 'unmask' has no attribute {name!r}")
