"""BERT-style masking as small pure functions.

Of the maskable positions (not special, not padding), each is picked with probability
`mask_prob`; a picked token becomes the mask token with probability `mask_replace_prob`,
a random vocabulary token with `random_replace_prob`, and otherwise stays as it is. Labels
hold the original id at picked positions and -100 everywhere else (the transformers
contract).

The random numbers behind a draw (`Draws`) come from one of two sources:
- `hashed_draws`, for training: a counter-based hash of (seed, epoch, window, position).
  A training mask is a pure function of those four numbers, with no generator state: the
  same on CPU and GPU, whatever the batch layout, the world size or a resume.
- `generator_draws`, for evaluation: a seeded torch generator, in the order of draws that
  evaluation has always used, so held-out numbers stay comparable across versions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unmask.config import check_masking_probabilities
from unmask.tokenizer import Vocabulary

IGNORE_INDEX = -100
_MASK32 = 0xFFFFFFFF
# One stream per kind of draw, so that the pick, the split and the replacement of one
# position are independent numbers.
PICK, SPLIT, CHOICE = 0x243F6A88, 0x85A308D3, 0x13198A2E


class MaskedBatch(NamedTuple):
    input_ids: torch.Tensor
    """The ids the model sees."""
    labels: torch.Tensor
    """Original ids at picked positions, -100 elsewhere."""
    became_mask: torch.Tensor
    """Picked positions replaced by the mask token."""
    became_random: torch.Tensor
    """Picked positions replaced by a random token (which may by chance equal the original)."""
    maskable: torch.Tensor
    """Positions that could have been picked; picked / maskable is the real masking rate."""


class Draws(NamedTuple):
    """The random numbers of one masking draw, one of each per position."""

    pick: torch.Tensor
    """Uniform in [0, 1): the position is picked when below mask_prob."""
    split: torch.Tensor
    """Uniform in [0, 1): [0, p_mask) mask token, [p_mask, p_mask + p_random) random token, else kept."""
    choice: torch.Tensor
    """Index into the pool of replacement ids."""


def _mul32(x, constant: int):
    """(x * constant) mod 2**32 for x in [0, 2**32), in pieces that never overflow int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def mix32(x):
    """A 32-bit integer hash (Wellons' lowbias32) of ints or int64 tensors holding [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seed: int, stream: int, epochs: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """A 32-bit key per row (B,) from (seed, stream, epoch, window); window ids may pass 2**32."""
    base = mix32(mix32(mix32((seed & _MASK32) ^ 0x9E3779B9) ^ ((seed >> 32) & _MASK32)) ^ stream)
    key = mix32(epochs.to(torch.int64) ^ base)
    windows = windows.to(torch.int64)
    key = mix32(key ^ (windows & _MASK32))
    return mix32(key ^ (windows >> 32))


def hashed_bits(seed: int, stream: int, epochs: torch.Tensor, windows: torch.Tensor, length: int) -> torch.Tensor:
    """32 random bits per (row, position), shape (B, length), int64 in [0, 2**32)."""
    keys = row_keys(seed, stream, epochs, windows)[:, None]
    positions = torch.arange(length, device=keys.device, dtype=torch.int64)[None, :]
    return mix32(mix32(keys ^ positions) ^ 0x68E31DA4)


def to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """32 hashed bits -> float32 uniform in [0, 1) with 24 bits of resolution (exact in float32)."""
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


def hashed_draws(seed: int, epochs: torch.Tensor, windows: torch.Tensor, length: int, pool_size: int) -> Draws:
    """Training draws: a pure function of (seed, epoch, window, position)."""
    choice = (hashed_bits(seed, CHOICE, epochs, windows, length) * pool_size) >> 32
    return Draws(
        to_uniform(hashed_bits(seed, PICK, epochs, windows, length)),
        to_uniform(hashed_bits(seed, SPLIT, epochs, windows, length)),
        choice,
    )


def generator_draws(shape: torch.Size | tuple[int, ...], generator: torch.Generator, pool_size: int, device="cpu") -> Draws:
    """Draws from a seeded generator, in the order (rand, rand, randint) evaluation has always used."""
    pick = torch.rand(shape, generator=generator, device=device)
    split = torch.rand(shape, generator=generator, device=device)
    return Draws(pick, split, torch.randint(pool_size, shape, generator=generator, device=device))


def maskable_positions(input_ids: torch.Tensor, special_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """True where a token may be picked: not a special token and not padding."""
    maskable = ~torch.isin(input_ids, special_ids.to(input_ids.device))
    if attention_mask is not None:
        maskable &= attention_mask.bool()
    return maskable


def replacement_ids(vocab_size: int, special_ids: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Ids a random replacement is drawn from: the whole vocabulary except special tokens.

    Drawing from the real vocabulary, not from the largest id in the batch, is what keeps
    rare tokens in the 10% random share.
    """
    ids = torch.arange(vocab_size, device=device)
    return ids[~torch.isin(ids, special_ids.to(device))]


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator of its own, so masking draws never depend on other RNG consumers."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    draws: Draws,
    *,
    mask_token_id: int,
    random_pool: torch.Tensor,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> MaskedBatch:
    """Pick positions and replace them 80/10/10 (by default); the input is not modified."""
    check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob)
    picked = (draws.pick < mask_prob) & maskable
    became_mask = picked & (draws.split < mask_replace_prob)
    became_random = picked & (draws.split >= mask_replace_prob) & (draws.split < mask_replace_prob + random_replace_prob)
    random_tokens = random_pool.to(input_ids.device)[draws.choice]

    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    masked = torch.where(became_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(became_random, random_tokens, masked)
    return MaskedBatch(masked, labels, became_mask, became_random, maskable)


class Masker:
    """The masking settings of a run bound to its vocabulary.

    `masker(input_ids, attention_mask, windows, epochs)` masks rows of training windows with
    hashed draws; `masker.with_draws(...)` takes draws from elsewhere (evaluation).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        *,
        seed: int,
        mask_prob: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        device: torch.device | str = "cpu",
    ):
        check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob)
        self.seed = seed
        self.special_ids = torch.tensor(vocab.special_ids, dtype=torch.long, device=device)
        self.random_pool = replacement_ids(vocab.size, self.special_ids, device)
        self.mask_token_id = vocab.require_mask("masking")
        self.probabilities = dict(mask_prob=mask_prob, mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)

    def with_draws(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, draws: Draws, mask_prob: float | None = None) -> MaskedBatch:
        probabilities = dict(self.probabilities, **({} if mask_prob is None else {"mask_prob": mask_prob}))
        maskable = maskable_positions(input_ids, self.special_ids, attention_mask)
        return mask_tokens(input_ids, maskable, draws, mask_token_id=self.mask_token_id, random_pool=self.random_pool, **probabilities)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, windows: torch.Tensor, epochs: torch.Tensor, mask_prob: float | None = None
    ) -> MaskedBatch:
        """Mask rows of training windows; `windows` and `epochs` (B,) say which window of which epoch each row is."""
        draws = hashed_draws(self.seed, epochs.to(input_ids.device), windows.to(input_ids.device), input_ids.shape[1], len(self.random_pool))
        return self.with_draws(input_ids, attention_mask, draws, mask_prob)
