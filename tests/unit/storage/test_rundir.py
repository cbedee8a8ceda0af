"""The run folder's layout: checkpoints by step, what counts as a run, the metrics reader."""

import json

import pytest

from unmask.errors import UnmaskError
from unmask.storage.rundir import RunDir, step_dir_name, step_of


def test_checkpoint_folders_are_listed_by_step_and_nothing_else(tmp_path):
    run = RunDir(tmp_path)
    for step in (10, 2, 300):
        run.checkpoint(step).mkdir(parents=True)
    (run.checkpoints / ".step-00000400.partial-host-1").mkdir()  # being written
    (run.checkpoints / "step-notanumber").mkdir()
    (run.checkpoints / "step-00000005").write_text("a file, not a folder")
    assert [step for step, _ in run.checkpoint_steps()] == [2, 10, 300]
    assert [step_of(path) for _, path in run.checkpoint_steps()] == [2, 10, 300]
    assert step_dir_name(7) == "step-00000007" and step_of(tmp_path / "model") is None


def test_a_run_is_what_training_writes_not_any_folder_with_a_config(tmp_path):
    other = tmp_path / "configs"
    other.mkdir()
    (other / "config.yaml").write_text("a: 1")
    assert not RunDir(other).is_run(), "a config.yaml alone could be anyone's"
    started = tmp_path / "started"
    (started / "base").mkdir(parents=True)
    (started / "config.yaml").write_text("a: 1")
    assert RunDir(started).is_run()
    logging = tmp_path / "logging"
    logging.mkdir()
    (logging / "config.yaml").write_text("a: 1")
    (logging / "metrics.jsonl").write_text("")
    assert RunDir(logging).is_run() and not RunDir(tmp_path / "missing").is_run()


def test_the_metrics_reader_leaves_out_a_torn_last_line_and_can_name_a_bad_one(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text(json.dumps({"step": 1}) + "\n" + "[1, 2]\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo')
    records, lines = run.read_metrics()
    assert records == [{"step": 1}, {"step": 2}] and lines == 3
    assert run.read_metrics(after=2) == ([{"step": 2}], 3)
    with pytest.raises(UnmaskError, match=r"metrics.jsonl:2: not a JSON line"):
        run.read_metrics(strict=True)
    assert RunDir(tmp_path / "none").read_metrics() == ([], 0)
