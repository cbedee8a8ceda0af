"""BERT-style masking as small pure functions.

Of the maskable positions (not special, not padding), each is picked with probability
`mask_prob`; a picked token becomes the mask token with probability `mask_replace_prob`,
a random vocabulary token with `random_replace_prob`, and otherwise stays as it is. Labels
hold the original id at picked positions and -100 everywhere else (the transformers
contract). Everything runs on the tensors' device with a caller-owned, seeded generator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unmask.config import check_masking_probabilities
from unmask.tokenizer import Vocabulary

IGNORE_INDEX = -100


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
    *,
    mask_token_id: int,
    random_pool: torch.Tensor,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> MaskedBatch:
    """Pick positions and replace them 80/10/10 (by default); the input is not modified."""
    check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob)
    device = input_ids.device
    picked = (torch.rand(input_ids.shape, generator=generator, device=device) < mask_prob) & maskable
    # One uniform draw splits the picked positions: [0, p_mask) mask, [p_mask, p_mask + p_random) random.
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    became_mask = picked & (split < mask_replace_prob)
    became_random = picked & (split >= mask_replace_prob) & (split < mask_replace_prob + random_replace_prob)
    draws = torch.randint(len(random_pool), input_ids.shape, generator=generator, device=device)
    random_tokens = random_pool.to(device)[draws]

    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    masked = torch.where(became_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(became_random, random_tokens, masked)
    return MaskedBatch(masked, labels, became_mask, became_random, maskable)


class Masker:
    """The masking settings of a run bound to its vocabulary and its own seeded generator."""

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
        self.special_ids = torch.tensor(vocab.special_ids, dtype=torch.long, device=device)
        self.random_pool = replacement_ids(vocab.size, self.special_ids, device)
        self.mask_token_id = vocab.require_mask("masking")
        self.generator = seeded_generator(seed, device)
        self.probabilities = dict(mask_prob=mask_prob, mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> MaskedBatch:
        maskable = maskable_positions(input_ids, self.special_ids, attention_mask)
        return mask_tokens(
            input_ids,
            maskable,
            mask_token_id=self.mask_token_id,
            random_pool=self.random_pool,
            generator=self.generator,
            **self.probabilities,
        )
