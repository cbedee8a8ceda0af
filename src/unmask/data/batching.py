"""Batches of examples of different lengths: grouped by length so that little compute goes
to padding, in a seeded order, and padded to the longest in each batch (dynamic padding).

The order of an epoch is a pure function of (seed, epoch), as transformers'
LengthGroupedSampler draws it: a seeded permutation, cut into mega-batches of 50 batches,
each sorted by length and cut into batches, then the batches shuffled. A resumed run
therefore takes up exactly where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch

MEGABATCH = 50


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches of one epoch: every example exactly once, similar lengths together."""
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    order = rng.permutation(len(lengths))
    span = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), span):
        mega = order[start : start + span]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        batches.extend(mega[i : i + batch_size] for i in range(0, len(mega), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches for evaluation: longest first, so memory peaks at once and not later."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded with `pad` to the longest sequence, and the attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def padding_share(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """The share of the batches' token slots that are padding."""
    slots = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - int(lengths.sum()) / slots if slots else 0.0
