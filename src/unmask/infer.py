"""Use a masked LM: fill in masks, and show what a masking draw does to a sentence."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from unmask.config import UnmaskError
from unmask.masking import Masker
from unmask.model import MaskedLM, load_mlm, max_positions, resolve_device
from unmask.tokenizer import load_tokenizer, special_ids

MASK_SPELLINGS = ("[MASK]", "<mask>")


def resolve_model_dir(name: str) -> str:
    """A run folder stands for its final model: `unmask fill RUN` works like `unmask fill RUN/model`."""
    path = Path(name)
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        return str(path / "model")
    return name


@dataclass
class Candidate:
    token: str
    token_id: int
    score: float


@dataclass
class FilledMask:
    position: int
    """Index of the mask among the text's tokens ([CLS] is 0)."""
    candidates: list[Candidate]


@dataclass
class FillResult:
    text: str
    masks: list[FilledMask] = field(default_factory=list)

    def best_guess(self) -> str:
        """The text with every mask replaced by its top candidate."""
        filled = self.text
        for mask in self.masks:
            for spelling in MASK_SPELLINGS:
                if spelling in filled:
                    filled = filled.replace(spelling, mask.candidates[0].token.strip(), 1)
                    break
        return filled


def normalise_masks(text: str, mask_token: str) -> str:
    """Let users write [MASK] or <mask> whatever the model's own mask token is."""
    for spelling in MASK_SPELLINGS:
        text = text.replace(spelling, mask_token)
    return text


def window_around_masks(ids: list[int], mask_id: int, max_len: int, label: str) -> list[int]:
    """Fit a framed sequence into max_len tokens while keeping every mask inside; never cut a mask off."""
    if len(ids) <= max_len:
        return ids
    opener, body, closer = ids[0], ids[1:-1], ids[-1]
    room = max_len - 2
    where = [i for i, token in enumerate(body) if token == mask_id]
    span = where[-1] - where[0] + 1
    if span > room:
        raise UnmaskError(f"{label}: its masks lie {span} tokens apart, more than the model's window of {room} tokens")
    start = min(max(0, where[0] - (room - span) // 2), len(body) - room)
    return [opener, *body[start : start + room], closer]


class Filler:
    """A loaded model and tokenizer for repeated fill-mask calls."""

    def __init__(self, model: str, device: str = "auto", trust_remote_code: bool = False, echo=print):
        name = resolve_model_dir(model)
        self.tokenizer = load_tokenizer(name, trust_remote_code)
        if self.tokenizer.mask_token_id is None:
            raise UnmaskError(f"'{model}': the tokenizer has no mask token")
        self.device = resolve_device(device)
        self.lm: MaskedLM = load_mlm(name, trust_remote_code, echo=echo).to(self.device).eval()
        self.max_len = min(max_positions(self.lm), self.tokenizer.model_max_length or 10**9)

    @torch.no_grad()
    def fill(self, texts: list[str], top_k: int = 5, batch_size: int = 32, labels: list[str] | None = None) -> list[FillResult]:
        if top_k < 1:
            raise UnmaskError(f"--top-k: must be at least 1, got {top_k}")
        labels = labels or [f"text {i + 1}" for i in range(len(texts))]
        mask_id, pad_id = self.tokenizer.mask_token_id, self.tokenizer.pad_token_id or 0
        encoded = []
        for text, label in zip(texts, labels):
            ids = self.tokenizer(normalise_masks(text, self.tokenizer.mask_token), truncation=False)["input_ids"]
            if mask_id not in ids:
                raise UnmaskError(f"{label}: no mask in {text!r} (write [MASK] or {self.tokenizer.mask_token})")
            encoded.append(window_around_masks(ids, mask_id, self.max_len, label))
        results = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            picked = input_ids == mask_id
            logits = self.lm.masked_logits(input_ids.to(self.device), attention_mask.to(self.device), picked.to(self.device))
            top = logits.float().softmax(-1).topk(min(top_k, logits.shape[-1]), dim=-1)
            rows, positions = picked.nonzero(as_tuple=True)
            chunk_results = [FillResult(text) for text in texts[start : start + batch_size]]
            for k, (row, position) in enumerate(zip(rows.tolist(), positions.tolist())):
                candidates = [
                    Candidate(self.tokenizer.decode([token_id]), token_id, score)
                    for token_id, score in zip(top.indices[k].tolist(), top.values[k].tolist())
                ]
                chunk_results[row].masks.append(FilledMask(position, candidates))
            results.extend(chunk_results)
        return results


@dataclass
class InspectedToken:
    position: int
    token: str
    token_id: int
    attention: int
    special: bool
    picked: bool
    became: str
    """'[MASK]', 'random:<token>', 'kept', or '' when not picked."""
    input_id: int
    label: int


def inspect_masking(
    text: str,
    tokenizer_name: str = "minilm-l6",
    seed: int = 0,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    trust_remote_code: bool = False,
) -> list[InspectedToken]:
    """One masking draw on one sentence, exactly as training would draw it."""
    tokenizer = load_tokenizer(resolve_model_dir(tokenizer_name), trust_remote_code)
    encoded = tokenizer(text, return_tensors="pt", truncation=False)
    masker = Masker(
        vocab_size=len(tokenizer), special_ids=special_ids(tokenizer), mask_token_id=tokenizer.mask_token_id, seed=seed,
        mask_prob=mask_prob, mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob,
    )  # fmt: skip
    drawn = masker(encoded["input_ids"], encoded["attention_mask"])
    rows = []
    original = encoded["input_ids"][0].tolist()
    for i, token_id in enumerate(original):
        picked = bool(drawn.labels[0, i] != -100)
        new_id = int(drawn.input_ids[0, i])
        if not picked:
            became = ""
        elif drawn.became_mask[0, i]:
            became = tokenizer.mask_token
        elif drawn.became_random[0, i]:
            became = f"random:{tokenizer.convert_ids_to_tokens(new_id)}"
        else:
            became = "kept"
        rows.append(
            InspectedToken(
                i, tokenizer.convert_ids_to_tokens(token_id), token_id, int(encoded["attention_mask"][0, i]),
                not bool(drawn.maskable[0, i]), picked, became, new_id, int(drawn.labels[0, i]),
            )
        )  # fmt: skip
    return rows
