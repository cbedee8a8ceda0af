"""Minimal pairs: does a model score the acceptable sentence above the unacceptable one?

The benchmark of BLiMP and the BabyLM challenge: each record holds a good and a bad
sentence; a pair counts as right only when the good one's pseudo-log-likelihood is strictly
higher (a tie is wrong). Sentences are scored by `infer.Scorer`, exactly as `unmask score`
scores them, each unique sentence once per model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from unmask.config import PairsConfig
from unmask.errors import UnmaskError

NO_GROUP = "(all)"


@dataclass
class Pair:
    good: str
    bad: str
    group: str
    where: str
    """file:line, for messages."""


@dataclass
class ModelResult:
    model: str
    right: int = 0
    total: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)  # group -> [right, total]
    scores: list[tuple[float, float]] = field(default_factory=list)  # (good, bad) per pair
    fresh_head: bool = False
    """The model had no trained MLM head: its scores are a random head's."""

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else float("nan")


def read_pairs(path: str, good_field: str, bad_field: str, group_field: str) -> list[Pair]:
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UnmaskError(f"{path}: cannot read: {e}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnmaskError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise UnmaskError(f"{where}: expected a JSON object with '{good_field}' and '{bad_field}'")
        for name in (good_field, bad_field):
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise UnmaskError(f"{where}: no sentence in '{name}' (set the fields with --good-field and --bad-field)")
        group = str(record.get(group_field, "(no group)")) if group_field else NO_GROUP
        pairs.append(Pair(record[good_field], record[bad_field], group, where))
    if not pairs:
        raise UnmaskError(f"{path}: no pairs")
    return pairs


def score_pairs(config: PairsConfig, echo=print) -> list[ModelResult]:
    from tqdm import tqdm

    from unmask.infer import Scorer

    pairs = read_pairs(config.pairs, config.good_field, config.bad_field, config.group_field)
    sentences = list(dict.fromkeys(s for p in pairs for s in (p.good, p.bad)))
    labels = {}
    for pair in pairs:
        labels.setdefault(pair.good, f"{pair.where} ({config.good_field})")
        labels.setdefault(pair.bad, f"{pair.where} ({config.bad_field})")
    results = []
    for name in [config.model, *config.models]:
        scorer = Scorer(name, device=config.device, trust_remote_code=config.trust_remote_code, echo=echo, precision=config.precision)
        scored: dict[str, float] = {}
        for sentence in tqdm(sentences, desc=f"pairs {name}", unit="sentence", file=sys.stderr, leave=False):
            [result] = scorer.score([sentence], batch_size=config.batch_size, labels=[labels[sentence]])
            scored[sentence] = result.pll_word_l2r if config.scoring == "pll-word-l2r" else result.pll
        outcome = ModelResult(name, fresh_head=scorer.lm.has_fresh_head())
        for pair in pairs:
            good, bad = scored[pair.good], scored[pair.bad]
            right = int(good > bad)  # a tie is wrong
            outcome.right += right
            outcome.total += 1
            counts = outcome.groups.setdefault(pair.group, [0, 0])
            counts[0] += right
            counts[1] += 1
            outcome.scores.append((good, bad))
        results.append(outcome)
    return results


def as_json(config: PairsConfig, results: list[ModelResult]) -> dict:
    return {
        "pairs": config.pairs,
        "scoring": config.scoring,
        "models": [
            {
                "model": r.model,
                "accuracy": r.accuracy,
                "right": r.right,
                "pairs": r.total,
                "fresh_head": r.fresh_head,
                "groups": {g: {"accuracy": c[0] / c[1], "right": c[0], "pairs": c[1]} for g, c in sorted(r.groups.items())},
                "scores": [{"good": g, "bad": b, "right": g > b} for g, b in r.scores],
            }
            for r in results
        ],
    }


def table(report: dict) -> list[list[str]]:
    """The accuracy table of a report (`as_json`): overall and per group, one column per model."""
    models = report["models"]
    rows = [["", *(m["model"] for m in models)], ["overall", *(f"{m['accuracy']:.1%} ({m['pairs']})" for m in models)]]
    groups = sorted(models[0]["groups"])
    if groups != [NO_GROUP]:
        for group in groups:
            rows.append([group, *(f"{m['groups'][group]['accuracy']:.1%} ({m['groups'][group]['pairs']})" for m in models)])
    return rows


def fresh_head_notes(report: dict) -> list[str]:
    """A line for each model whose scores come from a fresh, random MLM head: its accuracy says
    nothing of what the model knows, however far from the 50% of a coin it lands."""
    return [
        f"note: {m['model']} has no trained MLM head: its scores are those of a fresh, randomly initialised head (seeded, so "
        f"repeatable); its {m['accuracy']:.1%} is a random head's ranking of the sentences, not what the model knows (chance: 50%)"
        for m in report["models"]
        if m.get("fresh_head")
    ]
