"""Use a masked LM: fill in masks, and show what a masking draw does to a sentence."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from unmask.data.masking import Masker
from unmask.data.tokenizer import Vocabulary, load_tokenizer, word_starts
from unmask.errors import UnmaskError
from unmask.models.masked_lm import MaskedLM, load_mlm, max_positions
from unmask.runtime.hardware import autocast, reporting_dtype, resolve_device
from unmask.storage.names import resolve_model

MASK_SPELLINGS = ("[MASK]", "<mask>")


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

    def _repr_html_(self) -> str:
        """In Jupyter: each mask's candidates, ranked, with their probabilities."""
        from unmask.tables import html_table

        rows = [["mask", "rank", "token", "probability"]]
        for number, mask in enumerate(self.masks, 1):
            rows += [[str(number) if rank == 1 else "", str(rank), c.token, f"{c.score:.1%}"] for rank, c in enumerate(mask.candidates, 1)]
        return html_table(rows, f"{self.text}  ->  {self.best_guess()}")

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


class LoadedModel:
    """A model and its tokenizer, loaded once for repeated calls (fill, score, embed)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        trust_remote_code: bool = False,
        echo=print,
        step: int | None = None,
        precision: str = "fp32",
    ):
        source = resolve_model(model, step)  # once: the tokenizer and the weights come from the same place
        self.tokenizer = load_tokenizer(source, trust_remote_code)
        self.vocab = Vocabulary.from_tokenizer(self.tokenizer)
        self.vocab.require_mask(f"'{model}'")
        self.device = resolve_device(device)
        self.dtype = reporting_dtype(self.device, precision)  # fp32 unless asked: the numbers must not depend on the CPU
        self.name = model
        self.lm: MaskedLM = load_mlm(source, trust_remote_code, echo=echo).to(self.device).eval()
        self.max_len = min(max_positions(self.lm), self.tokenizer.model_max_length or 10**9)


class Filler(LoadedModel):
    """Fill-mask: the top-k candidates of every mask."""

    @torch.no_grad()
    def fill(self, texts: list[str], top_k: int = 5, batch_size: int = 32, labels: list[str] | None = None) -> Fills:
        if top_k < 1:
            raise UnmaskError(f"--top-k: must be at least 1, got {top_k}")
        labels = labels or [f"text {i + 1}" for i in range(len(texts))]
        mask_id, pad_id = self.vocab.mask_id, self.vocab.pad_id
        encoded = []
        for text, label in zip(texts, labels):
            ids = self.tokenizer(normalise_masks(text, self.tokenizer.mask_token), truncation=False)["input_ids"]
            if mask_id not in ids:
                raise UnmaskError(f"{label}: no mask in {text!r} (write [MASK] or <mask>; this model's own is {self.tokenizer.mask_token})")
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
            with autocast(self.device, self.dtype):
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
        fills = Fills(results)
        fills.fresh_head = self.name if self.lm.has_fresh_head() else None
        return fills


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


def mask_sentence(
    tokenizer,
    text: str,
    seed: int = 0,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    masking: str = "token",
):
    """(encoding, MaskedBatch) of one sentence, drawn exactly as training draws it: the masks
    of window 0 in epoch 0 of a run with this `seed`."""
    encoded = tokenizer(text, return_tensors="pt", truncation=False)
    masker = Masker(
        Vocabulary.from_tokenizer(tokenizer),
        seed=seed,
        strategy=masking,
        mask_prob=mask_prob,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
    )
    # Word boundaries as prepare records them: from the tokenizer's own word ids.
    starts = torch.from_numpy(word_starts(encoded.word_ids(0)))[None]
    zero = torch.zeros(1, dtype=torch.long)
    return encoded, masker(encoded["input_ids"], encoded["attention_mask"], windows=zero, epochs=zero, word_starts=starts)


def inspected_rows(tokenizer, encoded, drawn) -> list[InspectedToken]:
    """One row a token: what it was, whether the draw picked it, what it became, its label."""
    rows = []
    for i, token_id in enumerate(encoded["input_ids"][0].tolist()):
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
                i,
                tokenizer.convert_ids_to_tokens(token_id),
                token_id,
                int(encoded["attention_mask"][0, i]),
                not bool(drawn.maskable[0, i]),
                picked,
                became,
                new_id,
                int(drawn.labels[0, i]),
            )
        )
    return rows


def inspect_masking(
    text: str,
    tokenizer_name: str = "minilm-l6",
    seed: int = 0,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    trust_remote_code: bool = False,
    masking: str = "token",
) -> MaskingDraw:
    """One masking draw on one sentence, exactly as training draws it (see `mask_sentence`)."""
    tokenizer = load_tokenizer(tokenizer_name, trust_remote_code)
    encoded, drawn = mask_sentence(tokenizer, text, seed, mask_prob, mask_replace_prob, random_replace_prob, masking)
    return MaskingDraw(inspected_rows(tokenizer, encoded, drawn))


class Fills(list):
    """The `FillResult`s of several texts: a list, shown in Jupyter as one table per text, under
    a warning where the model had no trained MLM head (`fresh_head`)."""

    fresh_head: str | None = None
    """The model's name when its MLM head was made fresh (its guesses are a random head's)."""

    def _repr_html_(self) -> str:
        from html import escape

        warning = (
            f"<p><b>{escape(self.fresh_head)} has no trained MLM head</b>: these are a fresh, random head's guesses, "
            "not what the model knows.</p>"
            if self.fresh_head
            else ""
        )
        return warning + "".join(result._repr_html_() for result in self)


class MaskingDraw(list):
    """One masking draw on a sentence: a list of `InspectedToken` rows, shown in Jupyter as a
    table of token, picked, became and label, with the real masking rate."""

    def table(self) -> list[list[str]]:
        """The rows as strings, a header first (what `unmask inspect` prints)."""
        header = ["pos", "token", "id", "attn", "special", "picked", "became", "input_id", "label"]
        return [header] + [
            [
                str(r.position),
                r.token,
                str(r.token_id),
                str(r.attention),
                "yes" if r.special else "",
                "yes" if r.picked else "",
                r.became,
                str(r.input_id),
                str(r.label),
            ]
            for r in self
        ]

    def counts(self) -> tuple[int, int]:
        """(picked, maskable): the real masking rate is their ratio."""
        return sum(r.picked for r in self), sum(not r.special and bool(r.attention) for r in self)

    def _repr_html_(self) -> str:
        from unmask.tables import html_table

        picked, maskable = self.counts()
        return html_table(self.table(), f"picked {picked} of {maskable} maskable tokens ({picked / max(maskable, 1):.0%})")


@dataclass
class SentenceScore:
    text: str
    tokens: list[str]
    log_probs: list[float]
    """log P(token | the rest), each token masked in turn."""
    pll: float
    """Pseudo-log-likelihood: the sum of `log_probs` (Salazar et al., 2020)."""
    pseudo_perplexity: float
    log_probs_word_l2r: list[float]
    """As `log_probs`, but the later pieces of the same word are masked too (Kauf and Ivanova, 2023)."""
    pll_word_l2r: float
    pseudo_perplexity_word_l2r: float


class Scorer(LoadedModel):
    """Pseudo-log-likelihood scoring; a sentence's masked copies go through in batches."""

    def _log_probs(self, ids: torch.Tensor, masks: torch.Tensor, targets: list[int], batch_size: int) -> list[float]:
        """Row k of `masks` says which positions copy k hides; copy k is scored at targets[k]."""
        rows = len(targets)
        copies = ids.repeat(rows, 1)
        copies[masks] = self.vocab.mask_id
        picked = torch.zeros_like(masks)
        picked[torch.arange(rows), torch.tensor(targets)] = True
        scores = []
        for start in range(0, rows, batch_size):
            chunk = slice(start, start + batch_size)
            attention = torch.ones_like(copies[chunk])
            with autocast(self.device, self.dtype):
                logits = self.lm.masked_logits(copies[chunk].to(self.device), attention.to(self.device), picked[chunk].to(self.device))
            true_ids = ids[0, torch.tensor(targets[chunk])].to(self.device)
            scores.extend(logits.float().log_softmax(-1).gather(1, true_ids[:, None])[:, 0].tolist())
        return scores

    @torch.no_grad()
    def score(self, texts: list[str], batch_size: int = 64, labels: list[str] | None = None) -> list[SentenceScore]:
        labels = labels or [f"text {i + 1}" for i in range(len(texts))]
        results = []
        for text, label in zip(texts, labels):
            encoding = self.tokenizer(text, truncation=False, return_special_tokens_mask=True)
            ids = torch.tensor([encoding["input_ids"]])
            if ids.shape[1] > self.max_len:
                raise UnmaskError(
                    f"{label}: {ids.shape[1]} tokens, more than the model's {self.max_len}; scoring needs the whole text in one window"
                )
            positions = [i for i, special in enumerate(encoding["special_tokens_mask"]) if not special]
            if not positions:
                raise UnmaskError(f"{label}: no tokens to score")
            words = encoding.word_ids()
            single = torch.zeros((len(positions), ids.shape[1]), dtype=torch.bool)
            single[torch.arange(len(positions)), torch.tensor(positions)] = True
            # Word-aware (PLL-word-l2r): hide the token and the later pieces of its word, so a
            # piece cannot be read off the rest of its own word.
            word_l2r = single.clone()
            for row, position in enumerate(positions):
                for later in positions[row + 1 :]:
                    if words[later] is None or words[later] != words[position]:
                        break
                    word_l2r[row, later] = True
            plain = self._log_probs(ids, single, positions, batch_size)
            aware = self._log_probs(ids, word_l2r, positions, batch_size)
            n = len(positions)
            results.append(
                SentenceScore(
                    text,
                    self.tokenizer.convert_ids_to_tokens([int(ids[0, p]) for p in positions]),
                    plain,
                    sum(plain),
                    math.exp(-sum(plain) / n),
                    aware,
                    sum(aware),
                    math.exp(-sum(aware) / n),
                )
            )
        return results


class Embedder(LoadedModel):
    """Sentence and token embeddings from the encoder's last hidden states."""

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.lm.model.base_model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))[0]

    @torch.no_grad()
    def embed(
        self, texts: list[str], pooling: str = "mean", batch_size: int = 32, normalize: bool = False, progress: bool = True, echo=print
    ) -> np.ndarray:
        """(len(texts), hidden) float32, rows in the order of `texts`.

        Batches are formed by length, so little compute goes to padding; mean pooling
        averages over the attention mask only.
        """
        from tqdm import tqdm

        if pooling not in ("mean", "cls"):
            raise UnmaskError(f"--pooling: '{pooling}' is not mean or cls")
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        too_long = sum(length > self.max_len for length in lengths)
        if too_long:
            echo(f"note: {too_long} text(s) longer than {self.max_len} tokens were cut to fit the model")
        order = np.argsort(lengths, kind="stable")[::-1]
        result = np.zeros((len(texts), self.lm.config.hidden_size), dtype=np.float32)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for rows in tqdm(batches, desc="embed", unit="batch", disable=not progress, file=sys.stderr):
            encoded = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
            hidden = self._hidden(encoded["input_ids"], encoded["attention_mask"]).float()  # (B, T, H)
            if pooling == "mean":
                weights = encoded["attention_mask"].to(hidden.device, hidden.dtype)[..., None]
                pooled = (hidden * weights).sum(1) / weights.sum(1)
            else:
                pooled = hidden[:, 0]
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            result[rows] = pooled.cpu().numpy()
        return result

    @torch.no_grad()
    def token_embeddings(self, text: str) -> tuple[list[str], list[int], np.ndarray]:
        """Tokens, ids and contextual vectors (T, hidden) of one text."""
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_len, return_tensors="pt")
        hidden = self._hidden(encoded["input_ids"], encoded["attention_mask"])[0].float().cpu().numpy()
        ids = encoded["input_ids"][0].tolist()
        return self.tokenizer.convert_ids_to_tokens(ids), ids, hidden
