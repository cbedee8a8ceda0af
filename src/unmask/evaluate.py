"""Held-out evaluation of a masked LM.

The masked positions and replacements come from a fixed seed at 15%, drawn on the CPU,
whatever the training settings or device: two models scored on the same data are scored
on exactly the same positions. Loss is the mean over masked tokens of the whole split
(not a mean of batch means), and nothing but running sums is kept in memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from unmask.data.windows import Windows, sequential_batches
from unmask.masking import IGNORE_INDEX, Masker
from unmask.model import MaskedLM, autocast

EVAL_SEED = 1234
EVAL_MASK_PROB = 0.15


@dataclass
class MlmMetrics:
    loss: float
    perplexity: float
    accuracy: float
    masked_tokens: int

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def eval_masker(vocab_size: int, special_ids: list[int], mask_token_id: int) -> Masker:
    return Masker(vocab_size=vocab_size, special_ids=special_ids, mask_token_id=mask_token_id, seed=EVAL_SEED, mask_prob=EVAL_MASK_PROB)


@torch.no_grad()
def evaluate_windows(
    lm: MaskedLM,
    windows: Windows,
    *,
    vocab_size: int,
    special_ids: list[int],
    mask_token_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    max_batches: int | None = None,
) -> MlmMetrics:
    masker = eval_masker(vocab_size, special_ids, mask_token_id)
    was_training = lm.training
    lm.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    count = 0
    for indices in sequential_batches(len(windows), batch_size, max_batches):
        input_ids, attention_mask = (torch.from_numpy(a) for a in windows.batch(indices))
        masked = masker(input_ids, attention_mask)
        labels = masked.labels.to(device)
        with autocast(device, dtype):
            batch_loss, logits = lm.loss_sum(masked.input_ids.to(device), attention_mask.to(device), labels)
        targets = labels[labels != IGNORE_INDEX]
        loss_sum += batch_loss.double().cpu()
        correct += int((logits.argmax(-1) == targets).sum())
        count += len(targets)
    lm.train(was_training)
    if count == 0:
        return MlmMetrics(float("nan"), float("nan"), float("nan"), 0)
    loss = float(loss_sum) / count
    return MlmMetrics(loss, math.exp(min(loss, 700.0)), correct / count, count)
