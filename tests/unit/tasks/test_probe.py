"""The linear probe: every task kind, a score that reflects what the features hold, fast, deterministic."""

import pytest
from conftest import classification_records, make_sentences, quiet, tagging_records, write_jsonl

from unmask.config import ProbeConfig
from unmask.tasks.probe import probe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    # 200 examples: with 60, a 20-row evaluation put Pearson anywhere from 0.35 to 0.66 by the seed alone
    numbers = [{"text": s, "label": float("cat" in s)} for s in make_sentences(280, 4)]
    return {
        "classification": (
            write_jsonl(folder / "c.jsonl", classification_records(120)),
            write_jsonl(folder / "ce.jsonl", classification_records(40, 9)),
        ),
        "regression": (write_jsonl(folder / "r.jsonl", numbers[:200]), write_jsonl(folder / "re.jsonl", numbers[200:])),
        "token-classification": (
            write_jsonl(folder / "t.jsonl", tagging_records(80)),
            write_jsonl(folder / "te.jsonl", tagging_records(30, 9)),
        ),
    }


@pytest.mark.parametrize(
    "kind,metric,floor", [("classification", "accuracy", 0.75), ("regression", "pearson", 0.5), ("token-classification", "entity_f1", 0.9)]
)
def test_the_probe_reads_what_the_frozen_features_hold(kind, metric, floor, data, tiny_model_dir):
    """Whether a sentence names an animal is in the token identities even a random encoder keeps (the majority
    class is 63%)."""
    config = ProbeConfig(model=str(tiny_model_dir), task=kind, train=data[kind][0], eval=data[kind][1], device="cpu")
    result = probe(config, echo=quiet)
    assert result["probe"] == ("ridge" if kind == "regression" else "logistic") and result["score_metric"] == metric
    assert result["score"] >= floor, result["metrics"]
    assert probe(config, echo=quiet)["metrics"] == result["metrics"], "deterministic"
    assert result["seconds"] < 30
