"""--report-to: TensorBoard event files read back with tensorboard's own reader; a W&B offline run written."""

import json

import pytest
from conftest import quiet, train_config

from unmask.config import TrainConfig, UnmaskError
from unmask.pretrain.train import train


def run(store_dir, tiny_model_dir, out, report_to):
    settings = dict(max_steps=4, eval_every=2, checkpoint_every=0, report_to=report_to, lr=None, warmup_steps=None)
    return train(train_config(store_dir, tiny_model_dir, out, **settings), progress=False, echo=quiet)


def test_tensorboard_gets_the_same_metrics_as_metrics_jsonl(store_dir, tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run(store_dir, tiny_model_dir, out, ["tensorboard"])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    logged = [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [s for s, _ in losses] == [s for s, _ in logged] and [v for _, v in losses] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/accuracy")] == [2, 4]


@pytest.mark.slow
def test_wandb_writes_an_offline_run_when_nobody_is_logged_in(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run(store_dir, tiny_model_dir, out, ["wandb"])
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), "an offline run folder to `wandb sync` later"


def test_an_unknown_tracker_is_refused():
    with pytest.raises(UnmaskError, match="--report-to: mlflow: choose from tensorboard, wandb"):
        TrainConfig(data="d", out="o", model="m", report_to=["mlflow"])


def test_a_start_that_fails_after_the_trackers_opened_closes_them(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    """A process under torchrun ends without Python's shutdown (`distributed.end_process_if_it_made_the_group`),
    so no exit hook of wandb's would finish a run a failed start left open."""
    pytest.importorskip("tensorboard")
    from unmask.pretrain import train as training
    from unmask.runtime.tracking import Trackers

    closed = []
    monkeypatch.setattr(Trackers, "close", lambda self: closed.append(self))

    def interrupted(run, echo):
        raise KeyboardInterrupt  # a Ctrl-C as the start line is printed

    monkeypatch.setattr(training, "_announce", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(store_dir, tiny_model_dir, tmp_path / "run", ["tensorboard"])
    assert len(closed) == 1
