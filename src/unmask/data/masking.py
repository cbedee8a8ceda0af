"""BERT-style masking as small pure functions.

Of the maskable positions (not special, not padding), each is picked with probability
`mask_prob`; a picked token becomes the mask token with probability `mask_replace_prob`,
a random vocabulary token with `random_replace_prob`, and otherwise stays as it is. Labels
hold the original id at picked positions and -100 everywhere else (the transformers
contract).

Three strategies decide what is picked, with the same budget (`mask_prob` of the maskable
tokens, in expectation) and the same 80/10/10 split:
- `token`: each token on its own (BERT);
- `whole-word`: each word on its own, every piece of a word sharing its word's fate;
- `span`: SpanBERT's spans of whole words, lengths geometric (p = 0.2) up to 10 words, and
  the split made per span.
Word boundaries come from the tokenizer (the store records them), so they are right for
WordPiece, byte-level BPE and SentencePiece alike.

The random numbers behind a draw (`Draws`) come from one of two sources:
- `hashed_draws`, for training: a counter-based hash of (seed, epoch, window, position).
  A training mask is a pure function of those four numbers, with no generator state: the
  same on CPU and GPU, whatever the batch layout, the world size or a resume.
- `generator_draws`, for evaluation: a seeded torch generator, in the order of draws that
  evaluation has always used, so held-out numbers stay comparable across versions.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from unmask.config import check_masking_probabilities
from unmask.data.tokenizer import Vocabulary

IGNORE_INDEX = -100
_MASK32 = 0xFFFFFFFF
# One stream per kind of draw, so that the pick, the split and the replacement of one
# position are independent numbers.
PICK, SPLIT, CHOICE = 0x243F6A88, 0x85A308D3, 0x13198A2E
SPAN_LENGTH, VIRTUAL_START, VIRTUAL_LENGTH = 0x03707344, 0xA4093822, 0x299F31D0
STRATEGIES = ("token", "whole-word", "span")
SPAN_GEOMETRIC_P = 0.2
SPAN_MAX_WORDS = 10


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


def word_first_positions(word_starts: torch.Tensor) -> torch.Tensor:
    """For each token (B, T), the position of the first token of its word (position 0 starts a word)."""
    positions = torch.arange(word_starts.shape[1], device=word_starts.device).expand_as(word_starts)
    return torch.cummax(torch.where(word_starts, positions, 0), dim=1).values


def whole_word_draws(draws: Draws, word_starts: torch.Tensor) -> Draws:
    """Every piece of a word takes its word's pick and split (its random token stays its own).

    With each word picked with probability p, the expected share of picked tokens is p too.
    """
    first = word_first_positions(word_starts)
    return Draws(draws.pick.gather(1, first), draws.split.gather(1, first), draws.choice)


def span_lengths(uniform: torch.Tensor) -> torch.Tensor:
    """Span lengths in words from uniforms: geometric (p = 0.2) truncated to 1..10, mean 3.8 (SpanBERT)."""
    q = 1.0 - SPAN_GEOMETRIC_P
    tail = 1.0 - q**SPAN_MAX_WORDS
    lengths = 1 + torch.floor(torch.log1p(-uniform.double() * tail) / math.log(q)).long()
    return lengths.clamp(1, SPAN_MAX_WORDS)


@functools.lru_cache(maxsize=64)
def span_start_rate(mask_prob: float) -> float:
    """The chance a word starts a span such that a share `mask_prob` of words is covered.

    A word is left uncovered when none of the 10 words up to it starts a span long enough to
    reach it: 1 - prod_d (1 - r P(length > d)) = mask_prob, solved for r by bisection.
    """
    q = 1.0 - SPAN_GEOMETRIC_P
    tail = 1.0 - q**SPAN_MAX_WORDS
    longer = [(q**d - q**SPAN_MAX_WORDS) / tail for d in range(SPAN_MAX_WORDS)]  # P(length > d)
    low, high = 0.0, 1.0
    for _ in range(100):
        rate = (low + high) / 2
        covered = 1.0 - math.prod(1.0 - rate * s for s in longer)
        low, high = (rate, high) if covered < mask_prob else (low, rate)
    return (low + high) / 2


def span_picks(
    seed: int,
    epochs: torch.Tensor,
    windows: torch.Tensor,
    draws: Draws,
    word_starts: torch.Tensor,
    maskable: torch.Tensor,
    mask_prob: float,
) -> Draws:
    """Draws whose `pick` covers SpanBERT spans of whole maskable words and whose `split` is
    the covering span's, so that a span is masked, replaced or kept as one.

    A span starts at a word with `span_start_rate(mask_prob)`; the words it covers are found
    with a running maximum of how far the spans begun so far reach. Nine virtual words
    before the window may start spans too, so that the window's first words are covered as
    often as any (spans are at most 10 words).
    """
    batch, length = word_starts.shape
    rate = span_start_rate(mask_prob)
    is_word = word_starts & maskable
    word_index = torch.cumsum(is_word.long(), dim=1) - 1  # among the window's maskable words
    lengths = span_lengths(to_uniform(hashed_bits(seed, SPAN_LENGTH, epochs, windows, length)))
    reach = torch.where(is_word & (draws.pick < rate), word_index + lengths, -1)
    virtual_starts = to_uniform(hashed_bits(seed, VIRTUAL_START, epochs, windows, SPAN_MAX_WORDS - 1)) < rate
    virtual_lengths = span_lengths(to_uniform(hashed_bits(seed, VIRTUAL_LENGTH, epochs, windows, SPAN_MAX_WORDS - 1)))
    behind = torch.arange(1, SPAN_MAX_WORDS, device=reach.device)  # a virtual word d before word 0 reaches length - d
    carried = torch.where(virtual_starts, virtual_lengths - behind, -1).amax(dim=1)  # (B,)
    first_word = is_word & (word_index == 0)
    reach = torch.where(first_word, torch.maximum(reach, carried[:, None]), reach)
    furthest, source = torch.cummax(reach, dim=1)
    covered = maskable & (furthest > word_index)
    return Draws(torch.where(covered, 0.0, 1.0), draws.split.gather(1, source), draws.choice)


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
    closed: bool = False,
) -> MaskedBatch:
    """Pick positions and replace them 80/10/10 (by default); the input is not modified.
    `closed` allows `mask_prob` 0 and 1 (see `check_masking_probabilities`)."""
    check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob, closed=closed)
    # 1.0 picks every maskable position: the uniforms are below 1 by construction
    picked = (draws.pick < mask_prob) & maskable
    became_mask = picked & (draws.split < mask_replace_prob)
    became_random = picked & (draws.split >= mask_replace_prob) & (draws.split < mask_replace_prob + random_replace_prob)
    if len(random_pool):
        random_tokens = random_pool.to(input_ids.device)[draws.choice]
    else:  # a vocabulary of special tokens only: nothing is maskable, so nothing is replaced
        random_tokens = input_ids

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
        strategy: str = "token",
        device: torch.device | str = "cpu",
        closed: bool = False,
    ):
        check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob, closed=closed)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown masking strategy {strategy!r}")
        self.seed, self.strategy = seed, strategy
        self.special_ids = torch.tensor(vocab.special_ids, dtype=torch.long, device=device)
        self.random_pool = replacement_ids(vocab.size, self.special_ids, device)
        self.mask_token_id = vocab.require_mask("masking")
        self.probabilities = dict(
            mask_prob=mask_prob, mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob, closed=closed
        )

    def with_draws(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, draws: Draws, mask_prob: float | None = None
    ) -> MaskedBatch:
        probabilities = dict(self.probabilities, **({} if mask_prob is None else {"mask_prob": mask_prob}))
        maskable = maskable_positions(input_ids, self.special_ids, attention_mask)
        return mask_tokens(input_ids, maskable, draws, mask_token_id=self.mask_token_id, random_pool=self.random_pool, **probabilities)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        windows: torch.Tensor,
        epochs: torch.Tensor,
        mask_prob: float | None = None,
        word_starts: torch.Tensor | None = None,
    ) -> MaskedBatch:
        """Mask rows of training windows: `windows` and `epochs` (B,) say which window of which
        epoch each row is; `word_starts` (B, T) marks word boundaries (whole-word and span need them)."""
        device = input_ids.device
        epochs, windows = epochs.to(device), windows.to(device)
        draws = hashed_draws(self.seed, epochs, windows, input_ids.shape[1], len(self.random_pool))
        if self.strategy != "token":
            if word_starts is None:
                raise ValueError(f"{self.strategy} masking needs word starts")
            word_starts = word_starts.to(device)
            if self.strategy == "whole-word":
                draws = whole_word_draws(draws, word_starts)
            else:
                maskable = maskable_positions(input_ids, self.special_ids, attention_mask)
                rate = self.probabilities["mask_prob"] if mask_prob is None else mask_prob
                draws = span_picks(self.seed, epochs, windows, draws, word_starts, maskable, rate)
        return self.with_draws(input_ids, attention_mask, draws, mask_prob)
