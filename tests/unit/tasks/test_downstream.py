"""Suites: the runner over two checkpoints of a run, resuming a half-done results file; reports; bad suites."""

import json

import pytest
from conftest import classification_records, quiet, train_config, write_jsonl

from unmask.config import DownstreamConfig, load_suite
from unmask.errors import UnmaskError
from unmask.pretrain.train import train
from unmask.tasks.suites import resolve_suite, run_suite, settings_key


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory, store_dir, tiny_model_dir):
    out = tmp_path_factory.mktemp("ds") / "run"
    settings = dict(max_steps=4, checkpoint_every=2, keep_checkpoints=5, eval_every=0, lr=None, warmup_steps=None, log_every=None)
    train(train_config(store_dir, tiny_model_dir, out, **settings), progress=False, echo=quiet)
    return out


def suite_file(folder, train, evaluation) -> str:
    (folder / "suite.yaml").write_text(
        f"""name: tiny
tasks:
  - name: animals
    train: {train}
    eval: {evaluation}
    mode: finetune
    seeds: 2
    max_length: 32
    finetune: {{epochs: 1, batch_size: 16, lr: 1.0e-3}}
  - name: animals-probe
    train: {train}
    eval: {evaluation}
    mode: probe
"""
    )
    return str(folder / "suite.yaml")


def test_a_suite_over_two_checkpoints_resumes_a_half_done_results_file(run_with_checkpoints, tmp_path):
    train_data = write_jsonl(tmp_path / "t.jsonl", classification_records(48))
    eval_data = write_jsonl(tmp_path / "e.jsonl", classification_records(16, 9))
    suite = suite_file(tmp_path, train_data, eval_data)
    results = run_with_checkpoints / "downstream" / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {
        "task": "animals",
        "target": "step 2",
        "model": str(run_with_checkpoints),
        "step": 2,
        "tokens": 256,
        "mode": "finetune",
        "settings": settings_key(load_suite(suite).tasks[0], "finetune"),
        "seed": 0,
        "metrics": {"accuracy": 0.125},
        "score_metric": "accuracy",
        "score": 0.125,
    }
    results.write_text(json.dumps(done) + "\n" + '{"task": "animals", "target": "step 2", "mo')  # a crash tore the next line
    lines = []
    report = run_suite(DownstreamConfig(suite=suite, run=str(run_with_checkpoints), device="cpu"), echo=lines.append)
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip().endswith("}")]
    keys = {(r["task"], r["target"], r["seed"]) for r in records}
    assert keys == {(t, f"step {s}", seed) for s in (2, 4) for t, seed in [("animals", 0), ("animals", 1), ("animals-probe", 0)]}
    assert len(records) == 6 and records[0] == done, "the result already there is kept, not recomputed"
    assert not any("animals / step 2: finetune, seed 0" in line for line in lines)
    fine_tuned = report["tasks"]["animals"]["finetune"]
    assert fine_tuned["step 2"]["seeds"] == 2 and fine_tuned["step 2"]["min"] == 0.125
    assert set(report["average"]) == {"suite"} and set(report["average"]["suite"]) == {"step 2", "step 4"}
    assert report["table"][0] == ["task (metric), mode", "step 2", "step 4"]
    assert (run_with_checkpoints / "downstream" / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert "| animals (score), finetune | 0." in (run_with_checkpoints / "downstream" / "report.md").read_text()
    lines.clear()
    run_suite(DownstreamConfig(suite=suite, run=str(run_with_checkpoints), device="cpu"), echo=lines.append)
    assert lines == [], "a finished suite costs nothing to report again"


def test_the_web_page_gets_the_runs_downstream_curve(run_with_checkpoints, tmp_path):
    from unmask.serve.runs import downstream

    curves = downstream(run_with_checkpoints)
    assert set(curves) >= {"animals, finetune", "animals-probe, probe"} and [p[0] for p in curves["animals, finetune"]["points"]] == [2, 4]


def test_probes_and_fine_tunings_of_one_checkpoint_are_reported_apart_and_other_settings_left_out(run_with_checkpoints, tmp_path):
    """The issue's case: probe the checkpoints, fine-tune them, probe again: step 2's cell is
    never the median of a probe and a fine-tuning shown as two seeds."""

    train_data = write_jsonl(tmp_path / "t.jsonl", classification_records(48))
    eval_data = write_jsonl(tmp_path / "e.jsonl", classification_records(16, 9))
    suite = tmp_path / "one.yaml"
    one_task = f"name: one\ntasks:\n  - {{name: pets, train: {train_data}, eval: {eval_data}, mode: finetune, max_length: 32, "
    suite.write_text(one_task + "finetune: {epochs: 1, batch_size: 16, lr: 1.0e-3}}\n")
    out = tmp_path / "scores"
    common = dict(suite=str(suite), run=str(run_with_checkpoints), steps="2", device="cpu", out=str(out))
    run_suite(DownstreamConfig(mode="probe", **common), echo=quiet)
    run_suite(DownstreamConfig(mode="finetune", **common), echo=quiet)
    report = run_suite(DownstreamConfig(mode="probe", **common), echo=quiet)
    cells = report["tasks"]["pets"]
    assert cells["probe"]["step 2"]["seeds"] == 1 and cells["finetune"]["step 2"]["seeds"] == 1
    assert [row[0] for row in report["table"][1:]] == [
        "pets (score), finetune",
        "pets (score), probe",
        "average, finetune",
        "average, probe",
    ]
    assert report["average"]["probe"]["step 2"] == cells["probe"]["step 2"]["median"]

    suite.write_text(one_task + "finetune: {epochs: 1, batch_size: 16, lr: 2.0e-3}}\n")  # the suite edited: another lr
    lines = []
    report = run_suite(DownstreamConfig(mode="finetune", **common), echo=lines.append)
    assert any("pets / step 2: finetune, seed 0" in line for line in lines), "other settings are not a result already there"
    assert report["left_out"] == 1 and report["tasks"]["pets"]["finetune"]["step 2"]["seeds"] == 1
    assert "1 result(s) in results.jsonl were made with other settings" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\ntasks:\n  - {name: a, train: t, eval: e, learning_rate: 1}\n", r"task 'a': unknown key\(s\) learning_rate"),
        (
            "name: x\ntasks:\n  - {name: a, train: t, eval: e, task: ranking}\n",
            r"task 'a': task type 'ranking' is not one of classification",
        ),
        ("name: x\ntasks:\n  - {name: a, train: t, eval: e, finetune: {lrr: 1}}\n", r"task 'a': finetune: unknown setting\(s\) lrr"),
        ("name: x\ntasks:\n  - {name: a, eval: e}\n", r"task 'a': needs train"),
        ("name: x\ntasks: []\n", r"a suite is a mapping with `name` and a non-empty list of `tasks`"),
        ("name: x\ntaks: []\n", r"a suite is a mapping"),
        ("name: x\ntasks:\n  - {name: a, train: t, eval: e, seeds: 0}\n", r"seeds must be a count"),
        (
            "name: x\ntasks:\n  - {name: a, train: t, eval: e, epochs: 1}\n",
            r"task 'a': epochs: finetune setting\(s\), which go under `finetune:` \(finetune: \{epochs: \.\.\.\}\)$",
        ),
        (
            "name: x\ntasks:\n  - {name: a, train: t, eval: e, pooling: cls}\n",
            r"task 'a': pooling: probe setting\(s\), which go under `probe:`",
        ),
    ],
    ids=["unknown-key", "unknown-type", "unknown-setting", "no-train", "no-tasks", "typo", "zero-seeds", "finetune-at-top", "probe-at-top"],
)
def test_a_bad_suite_is_one_line_naming_the_task_and_key(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(UnmaskError, match=message):
        load_suite(tmp_path / "s.yaml")


def test_a_run_with_no_checkpoints_and_a_missing_suite_are_refused(tmp_path):
    with pytest.raises(UnmaskError, match=r"no such suite file \(bundled suites: glue, pydocs\)"):
        resolve_suite("gleu")
    (tmp_path / "run" / "base").mkdir(parents=True)
    (tmp_path / "run" / "base" / "config.json").write_text("{}")
    with pytest.raises(UnmaskError, match="no checkpoints to score"):
        run_suite(DownstreamConfig(suite="pydocs", run=str(tmp_path / "run")), echo=quiet)


def test_the_bundled_suites_load_and_glue_cites_its_settings():
    glue = load_suite(resolve_suite("glue"))
    assert [t.name for t in glue.tasks] == ["mnli", "qnli", "qqp", "rte", "sst2", "mrpc", "stsb", "cola"]
    assert all("MosaicBERT" in t.source for t in glue.tasks) and glue.tasks[0].hf_eval_split == [
        "validation_matched",
        "validation_mismatched",
    ]
    rte = next(t for t in glue.tasks if t.name == "rte")
    assert (rte.finetune["lr"], rte.finetune["epochs"], rte.finetune["batch_size"], rte.seed_list()) == (
        1e-5,
        3,
        16,
        [19, 8364, 717, 10536, 90166],
    )
    assert load_suite(resolve_suite("pydocs")).tasks[0].train == "sample:pydocs-sections:train"


def test_the_score_axis_never_turns_a_small_gap_into_a_cliff():
    from unmask.tasks.suites import score_limits

    low, high = score_limits([0.7090, 0.7313])
    assert high - low >= 0.1 and low < 0.7090 and high > 0.7313
    assert score_limits([0.0, 0.02])[0] == 0.0 and score_limits([0.97, 1.0])[1] == 1.0
    low, high = score_limits([0.2, 0.9])
    assert low < 0.2 and high > 0.9 and high - low < 0.8
    assert score_limits([-3.0, 40.0])[0] < -3.0, "scores beyond [0, 1] (a correlation of -1..1, an error) are not clipped"


def test_a_results_line_without_every_key_is_not_read_as_a_result(tmp_path):
    from unmask.tasks.suites import Results

    whole = {"task": "t", "target": "step 2", "mode": "probe", "seed": 0, "settings": "abc", "score": 0.5}
    lines = [whole, {k: v for k, v in whole.items() if k != "settings"}, {k: v for k, v in whole.items() if k != "score"}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = Results(tmp_path)
    assert results.records == [whole] and results.has(("t", "step 2", "probe", 0, "abc"))
    assert not results.has(("t", "step 2", "probe", 0, None))
