"""Fine-tuning: every task kind end to end (loaded back by the transformers pipeline), the loss
equal to transformers' own for the same batch, exact resume, seeds summarised, length-grouped batches."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import classification_records, make_sentences, quiet, tagging_records, write_jsonl
from safetensors.torch import load_file

from unmask.config import FinetuneConfig
from unmask.data.batching import length_grouped_batches, padding_share
from unmask.data.sources import ReadOptions
from unmask.errors import UnmaskError
from unmask.models.masked_lm import load_task_model
from unmask.storage import checkpoint
from unmask.storage.rundir import RunDir
from unmask.tasks.finetune import finetune, loss_sum, make_batch, target_count
from unmask.tasks.labelled import LabelSet, TaskSpec, encode, read_examples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    pairs = [{"a": s, "b": t, "label": int(s.split()[1] == t.split()[1])} for s, t in zip(make_sentences(60, 1), make_sentences(60, 2))]
    numbers = [{"text": s, "label": float(len(s.split()))} for s in make_sentences(60, 3)]
    return {
        "classification": (
            write_jsonl(folder / "c-train.jsonl", classification_records(60)),
            write_jsonl(folder / "c-eval.jsonl", classification_records(20, 9)),
        ),
        "pair-classification": (write_jsonl(folder / "p-train.jsonl", pairs[:45]), write_jsonl(folder / "p-eval.jsonl", pairs[45:])),
        "regression": (write_jsonl(folder / "r-train.jsonl", numbers[:45]), write_jsonl(folder / "r-eval.jsonl", numbers[45:])),
        "token-classification": (
            write_jsonl(folder / "t-train.jsonl", tagging_records(60)),
            write_jsonl(folder / "t-eval.jsonl", tagging_records(20, 9)),
        ),
    }


def settings(model, data, kind, out, **overrides) -> FinetuneConfig:
    train, evaluation = data[kind]
    values = dict(
        model=str(model),
        train=train,
        eval=evaluation,
        task=kind,
        out=str(out),
        epochs=2,
        batch_size=8,
        lr=1e-3,
        progress="none",
        device="cpu",
    )
    if kind == "pair-classification":
        values.update(text_field="a", text_pair_field="b")
    return FinetuneConfig(**{**values, **overrides})


@pytest.mark.parametrize("kind", ["classification", "pair-classification", "regression", "token-classification"])
def test_every_task_kind_fine_tunes_and_loads_back_in_the_transformers_pipeline(kind, data, tiny_model_dir, tmp_path):
    from transformers import pipeline

    summary = finetune(settings(tiny_model_dir, data, kind, tmp_path / "out"), echo=quiet, progress=False)
    assert summary["task"] == kind and summary["seeds"][0]["steps"] == 2 * -(-len(open(data[kind][0]).readlines()) // 8)
    assert all(np.isfinite(v["median"]) for v in summary["metrics"].values())
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in lines) and any(k.startswith("eval_") for k in lines[-1])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["score"] == summary["score"]
    if kind == "token-classification":
        tagged = pipeline("token-classification", model=str(tmp_path / "out" / "model"))("the cat sees a dog")
        assert isinstance(tagged, list) and all(t["entity"] in ("B-ANI", "O") for t in tagged)
    else:
        [answer] = pipeline("text-classification", model=str(tmp_path / "out" / "model"))("the cat sees the door today.")
        names = {"classification": {"animal", "person"}, "pair-classification": {"0", "1"}}.get(kind)
        assert names is None or answer["label"] in names


@pytest.mark.parametrize("kind,collator", [("classification", "padding"), ("regression", "padding"), ("token-classification", "tokens")])
def test_one_batchs_loss_equals_transformers_own_loss(kind, collator, data, tiny_model_dir):
    """Our batch (dynamic padding, targets, -100 off first sub-tokens) against transformers' collators and loss."""
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = TaskSpec.of(kind)
    examples = read_examples(spec, data[kind][0], ReadOptions())
    labels = None if spec.is_regression else LabelSet.of(examples, spec)
    encoded = encode(tokenizer, examples, spec, labels, max_length=64)
    model = load_task_model(str(tiny_model_dir), tokens=spec.is_tokens, labels=labels and labels.id2label, seed=0, echo=quiet).eval()
    indices = np.arange(6)
    input_ids, attention_mask, targets = make_batch(encoded, indices, tokenizer.pad_token_id, spec.is_regression)
    with torch.no_grad():
        ours = loss_sum(model(input_ids=input_ids, attention_mask=attention_mask).logits, targets, spec.is_regression) / target_count(
            encoded, indices
        )
        features = [
            {"input_ids": encoded.input_ids[i], "attention_mask": [1] * len(encoded.input_ids[i]), "labels": encoded.targets[i]}
            for i in indices
        ]
        batch = (DataCollatorForTokenClassification if collator == "tokens" else DataCollatorWithPadding)(tokenizer)(features)
        theirs = model(**batch).loss
    assert torch.allclose(ours, theirs, atol=1e-6), (float(ours), float(theirs))


def test_a_killed_fine_tuning_resumes_to_the_same_weights(data, tiny_model_dir, tmp_path, monkeypatch):
    import unmask.tasks.finetune as module

    straight = finetune(settings(tiny_model_dir, data, "classification", tmp_path / "straight", dropout=0.1), echo=quiet, progress=False)
    real = module._checkpoint
    calls = []

    def dies_after_the_first(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "_checkpoint", dies_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        finetune(settings(tiny_model_dir, data, "classification", tmp_path / "killed", dropout=0.1), echo=quiet, progress=False)
    monkeypatch.setattr(module, "_checkpoint", real)
    with pytest.raises(UnmaskError, match="already holds a fine-tuning"):
        finetune(settings(tiny_model_dir, data, "classification", tmp_path / "killed", dropout=0.1), echo=quiet, progress=False)
    lines = []
    resumed = finetune(
        settings(tiny_model_dir, data, "classification", tmp_path / "killed", dropout=0.1, resume=True), echo=lines.append, progress=False
    )
    assert any("resumed from" in line and "at step 8" in line for line in lines)
    assert resumed["metrics"] == straight["metrics"]
    a, b = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "bit for bit"


def test_several_seeds_are_summarised_and_a_rerun_keeps_the_finished_ones(data, tiny_model_dir, tmp_path):
    config = settings(tiny_model_dir, data, "classification", tmp_path / "out", seeds=3, epochs=1, save_model=False)
    summary = finetune(config, echo=quiet, progress=False)
    scores = [s["metrics"]["accuracy"] for s in summary["seeds"]]
    assert [s["seed"] for s in summary["seeds"]] == [0, 1, 2]
    assert summary["metrics"]["accuracy"]["median"] == float(np.median(scores))
    assert summary["metrics"]["accuracy"]["min"] == min(scores) and summary["metrics"]["accuracy"]["std"] >= 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("seed-")) == ["seed-0", "seed-1", "seed-2"]
    lines = []
    again = finetune(FinetuneConfig(**{**config.__dict__, "resume": True}), echo=lines.append, progress=False)
    assert again["metrics"] == summary["metrics"] and sum("already done" in line for line in lines) == 3


def test_a_long_text_is_cut_with_one_line_saying_how_many(data, tiny_model_dir, tmp_path):
    long = write_jsonl(
        tmp_path / "long.jsonl", [{"text": " ".join(["the cat sees the door"] * 40), "label": "a"}, {"text": "b c", "label": "b"}]
    )
    lines = []
    finetune(
        settings(tiny_model_dir, data, "classification", tmp_path / "o", train=long, eval=long, epochs=1, max_length=32),
        echo=lines.append,
        progress=False,
    )
    assert "note: 1 of 2 training, 1 of 2 eval examples are longer than --max-length 32 tokens and were cut to fit" in lines


def test_length_grouped_batches_cover_every_example_once_in_a_seeded_order():
    lengths = np.random.default_rng(0).integers(5, 200, 1000)
    batches = length_grouped_batches(lengths, 16, seed=3, epoch=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert [b.tolist() for b in batches] == [b.tolist() for b in length_grouped_batches(lengths, 16, seed=3, epoch=1)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in length_grouped_batches(lengths, 16, seed=3, epoch=2)]
    random = [np.random.default_rng(0).permutation(1000)[i : i + 16] for i in range(0, 1000, 16)]
    assert padding_share(lengths, batches) < padding_share(lengths, random) / 4, "grouping by length cuts padding"


def test_a_fine_tuning_step_that_logs_nothing_never_reads_the_device(data, tiny_model_dir, tmp_path, monkeypatch):
    """Counted at the dispatcher, as for pretraining: between two updates that do not settle
    (no log line, no evaluation, no checkpoint) the host reads nothing from the device."""
    from conftest import DeviceReads

    import unmask.tasks.finetune as module

    reads = DeviceReads()
    seen_at_update: list[int] = []
    real = module.clipped_update

    def counting(*args, **kwargs):
        seen_at_update.append(len(reads.seen))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "clipped_update", counting)
    config = settings(
        tiny_model_dir, data, "classification", tmp_path / "quiet", log_every=1000, checkpoint_every=1000, eval_every_epoch=False
    )
    with reads:
        finetune(config, echo=quiet, progress=False)
    between = np.diff(seen_at_update)
    steps_per_epoch = len(seen_at_update) // 2  # 2 epochs; the epoch's end settles
    quiet_steps = [k for k in range(len(between)) if k + 1 != steps_per_epoch]
    assert len(seen_at_update) >= 4 and all(between[k] == 0 for k in quiet_steps), list(between)


def test_a_non_finite_gradient_stops_fine_tuning_naming_the_step_and_keeps_no_model(data, tiny_model_dir, tmp_path, monkeypatch):
    import unmask.tasks.finetune as module

    real = module.loss_sum
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(module, "loss_sum", poisoned)
    # The rule and its words are pretraining's (`Tally.stop_if_nonfinite`): a non-finite loss is named as such.
    with pytest.raises(UnmaskError, match=r"seed 0, step 3: training loss is nan, gradient norm nan; stopped"):
        finetune(settings(tiny_model_dir, data, "classification", tmp_path / "nan", log_every=1000), echo=quiet, progress=False)
    assert not (tmp_path / "nan" / "model").exists()


def test_on_nonfinite_skip_drops_the_bad_updates_and_goes_on_until_too_many_in_a_row(data, tiny_model_dir, tmp_path, monkeypatch):
    import unmask.tasks.finetune as module

    real = module.loss_sum
    calls = {"n": 0}
    poisoned_calls = {3}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in poisoned_calls else loss

    monkeypatch.setattr(module, "loss_sum", poisoned)
    result = finetune(
        settings(tiny_model_dir, data, "classification", tmp_path / "skip", on_nonfinite="skip", log_every=2), echo=quiet, progress=False
    )
    assert (tmp_path / "skip" / "model").is_dir() and all(math.isfinite(v["median"]) for v in result["metrics"].values())
    # The log window is pretraining's: the dropped step is counted, and left out of the window's loss.
    lines = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    windows = [line for line in lines if "loss" in line]
    assert [w["step"] for w in windows[:3]] == [2, 4, 6] and [w["skipped_steps"] for w in windows[:3]] == [0, 1, 1]
    assert all(math.isfinite(w["loss"]) and math.isfinite(w["grad_norm"]) for w in windows)
    saved = checkpoint.read_checkpoint(checkpoint.latest_checkpoint(RunDir(tmp_path / "skip")))
    assert saved.info.skipped_steps == 1 and saved.info.extra == {"seed": 0}
    calls["n"], poisoned_calls = 0, {3, 4}
    monkeypatch.setattr(module, "loss_sum", poisoned)
    with pytest.raises(UnmaskError, match=r"seed 0, step 4: .*2 non-finite steps in a row \(--max-nonfinite 1\): stopped"):
        finetune(
            settings(tiny_model_dir, data, "classification", tmp_path / "two", on_nonfinite="skip", max_nonfinite=1, log_every=2),
            echo=quiet,
            progress=False,
        )
    assert not (tmp_path / "two" / "model").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_out_pointed_at_a_pretraining_run_says_what_the_folder_is(data, tiny_model_dir, store_dir, tmp_path, resume):
    from unmask.config import TrainConfig
    from unmask.pretrain.train import train

    run = tmp_path / "pretrained"
    train(
        TrainConfig(data=str(store_dir), model=str(tiny_model_dir), out=str(run), seq_len=32, batch_size=4, max_steps=1),
        progress=False,
        echo=quiet,
    )
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(UnmaskError, match=r"holds a pretraining run \(`unmask train`\); fine-tuning writes a folder of its own") as refused:
        finetune(settings(tiny_model_dir, data, "classification", run, resume=resume), echo=quiet, progress=False)
    assert "--resume" not in str(refused.value) and "unknown" not in str(refused.value)
    assert sorted(p.name for p in run.iterdir()) == before, "the run is left as it was"
