"""Downstream tasks: labelled data read and checked, label sets, encoding, metrics equal to the libraries'."""

import math

import numpy as np
import pytest
from conftest import classification_records, write_jsonl

from unmask.data.records import read_records
from unmask.data.sources import ReadOptions
from unmask.errors import UnmaskError
from unmask.tasks.labelled import IGNORE_INDEX, LabelSet, TaskSpec, compute_metrics, encode, read_examples


def test_records_come_from_jsonl_csv_and_parquet_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = classification_records(5)
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.csv").write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows))
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}), tmp_path / "a.parquet")
    columns = {"text": "--text-field", "label": "--label-field"}
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        found = [r for _, r in read_records(str(tmp_path / name), columns)]
        assert [(r["text"], r["label"]) for r in found] == [(r["text"], r["label"]) for r in rows], name
    with pytest.raises(UnmaskError, match=r"a\.csv: no column 'category' \(columns: text, label\); set it with --label-field"):
        list(read_records(str(tmp_path / "a.csv"), {"text": "--text-field", "category": "--label-field"}))
    (tmp_path / "plain.txt").write_text("some text\n")
    with pytest.raises(UnmaskError, match="plain text has no labels"):
        list(read_records(str(tmp_path / "plain.txt"), columns))


def test_the_offline_task_holds_out_exactly_the_paragraphs_prepare_holds_out(tmp_path):
    """Its eval paragraphs are in the store's held-out split, none in the training split."""
    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare
    from unmask.data.store import TokenStore
    from unmask.data.tokenizer import load_tokenizer

    prepare(PrepareConfig(sources=["sample:pydocs"], out=str(tmp_path / "s"), doc_per="blank-line", val_fraction=0.1), progress=False)
    store = TokenStore.open(tmp_path / "s")
    tokenizer = load_tokenizer(str(tmp_path / "s"))
    held_out = tokenizer.decode(np.asarray(store.split("val").tokens))
    evals = [r["text"] for _, r in read_records("sample:pydocs-sections:eval", {})]
    trains = [r["text"] for _, r in read_records("sample:pydocs-sections:train", {})]
    assert len(evals) > 100 and len(trains) > 1000
    normal = lambda text: " ".join(tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]).split())
    held = " ".join(held_out.split())
    assert all(normal(t) in held for t in evals[:40]), "every eval paragraph is in the held-out split"
    assert sum(normal(t) in held for t in trains[:40]) == 0, "no training paragraph is"
    assert {r["label"] for _, r in read_records("sample:pydocs-sections:eval", {})} == {"faq", "howto", "tutorial"}


@pytest.mark.parametrize(
    "records,kind,message",
    [
        (
            [{"text": "a b", "label": "x"}, {"text": "c d"}],
            "classification",
            r"t\.jsonl:2: record has no 'label' field \(it has text\); set it with --label-field",
        ),
        (
            [{"text": "a b", "label": "x"}, {"text": "c d", "label": "x"}],
            "classification",
            r"every label is 'x'; a classifier needs at least two classes",
        ),
        (
            [{"text": "a b", "label": 1.5}, {"text": "c d", "label": "lots"}],
            "regression",
            r"t\.jsonl:2: the regression label 'label' is 'lots', not a number",
        ),
        (
            [{"text": "a b", "label": 1.5}, {"text": "c d", "label": float("nan")}],
            "regression",
            r"t\.jsonl:2: .* it must be a finite number",
        ),
        ([{"text": "a b", "label": ""}], "classification", r"t\.jsonl:1: the label \('label'\) is empty"),
        ([{"tokens": ["a", "b"], "tags": ["O"]}], "token-classification", r"'tags' must be a list of one tag per word \(2 words\)"),
    ],
    ids=["missing-label", "one-class", "not-a-number", "nan", "empty-label", "tags-length"],
)
def test_bad_labels_are_one_line_naming_the_record(tmp_path, records, kind, message):
    source = write_jsonl(tmp_path / "t.jsonl", records)
    spec = TaskSpec.of(kind)
    with pytest.raises(UnmaskError, match=message):
        examples = read_examples(spec, source, ReadOptions())
        LabelSet.of(examples, spec)


def test_an_empty_split_and_an_eval_label_unseen_in_training_are_refused(tmp_path):
    spec = TaskSpec.of("classification")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UnmaskError, match=r"--eval .*empty\.jsonl: no records"):
        read_examples(spec, str(tmp_path / "empty.jsonl"), ReadOptions(), role="--eval")
    train = read_examples(
        spec, write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]), ReadOptions()
    )
    labels = LabelSet.of(train, spec)
    unseen = read_examples(spec, write_jsonl(tmp_path / "e.jsonl", [{"text": "c", "label": "z"}]), ReadOptions())
    with pytest.raises(UnmaskError, match=r"e\.jsonl:1: label 'z' does not occur in the training data \(x, y\)"):
        labels.check(unseen, spec)


def test_integer_labels_keep_numeric_order_and_declared_names(tmp_path):
    spec = TaskSpec.of("classification")
    train = read_examples(spec, write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 10}, {"text": "b", "label": 2}]), ReadOptions())
    assert LabelSet.of(train, spec).names == ("2", "10")
    named = LabelSet.of(
        read_examples(spec, write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}]), ReadOptions()),
        spec,
        ["negative", "positive"],
    )
    assert named.names == ("negative", "positive") and named.id_of(1) == 1


def test_token_labels_go_to_first_sub_tokens_and_truncation_is_counted(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = TaskSpec.of("token-classification")
    records = [{"tokens": ["the", "cat", "unbelievably", "sees"], "tags": ["O", "B-ANI", "O", "O"]}]
    examples = read_examples(spec, write_jsonl(tmp_path / "t.jsonl", records), ReadOptions())
    labels = LabelSet(("B-ANI", "O"), ("B-ANI", "O"))
    encoded = encode(tokenizer, examples, spec, labels, max_length=64)
    words = encoded.word_ids[0]
    expected = [
        IGNORE_INDEX if w is None or (p > 0 and words[p - 1] == w) else labels.id_of(records[0]["tags"][w]) for p, w in enumerate(words)
    ]
    assert encoded.targets[0] == expected and max(words.count(w) for w in set(words) - {None}) > 1, "a split word: its first piece only"
    assert encode(tokenizer, examples, spec, labels, max_length=4).truncated == 1


def test_metrics_equal_the_libraries_own_on_fixed_predictions():
    from scipy import stats
    from seqeval.metrics import f1_score as entity_f1
    from sklearn import metrics

    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 3, 200).tolist(), rng.integers(0, 3, 200).tolist()
    labels = LabelSet(("a", "b", "c"), ("a", "b", "c"))
    found = compute_metrics(TaskSpec.of("classification", metrics=["macro_f1"]), guess, truth, labels)
    assert found["macro_f1"] == metrics.f1_score(truth, guess, average="macro") and list(found)[0] == "macro_f1"
    assert found["accuracy"] == metrics.accuracy_score(truth, guess) and found["mcc"] == metrics.matthews_corrcoef(truth, guess)
    binary = compute_metrics(
        TaskSpec.of("pair-classification"), [g % 2 for g in guess], [t % 2 for t in truth], LabelSet(("n", "y"), ("n", "y"))
    )
    assert binary["f1"] == metrics.f1_score([t % 2 for t in truth], [g % 2 for g in guess])
    x, y = rng.normal(size=50).tolist(), rng.normal(size=50).tolist()
    regression = compute_metrics(TaskSpec.of("regression"), x, y, None)
    assert math.isclose(regression["pearson"], stats.pearsonr(x, y)[0]) and math.isclose(regression["spearman"], stats.spearmanr(x, y)[0])
    tags = LabelSet(("B-X", "I-X", "O"), ("B-X", "I-X", "O"))
    true_tags, guessed_tags = [[0, 1, 2, 0], [2, 0, 2]], [[0, 1, 2, 2], [2, 0, 1]]
    tokens = compute_metrics(TaskSpec.of("token-classification"), guessed_tags, true_tags, tags)
    named = lambda rows: [[tags.names[t] for t in row] for row in rows]
    assert tokens["entity_f1"] == entity_f1(named(true_tags), named(guessed_tags)) and tokens["word_accuracy"] == 5 / 7
    with pytest.raises(UnmaskError, match=r"--metric: pearson cannot score a classification task"):
        TaskSpec.of("classification", metrics=["pearson"])
