"""Many processes for real: torchrun, gloo, 2 processes, tiny models.

The same run at any world size: 2 processes x batch 4 take the same steps as 1 process x
batch 4 x grad-accum 2, under DDP and under FSDP2; checkpoints resume across world sizes
and strategies; evaluation sharded over processes gives the single-process numbers; a
SIGTERM to the launcher leaves a checkpoint to continue from.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import as_flags, quiet, train_settings

from unmask.config import TrainConfig
from unmask.pretrain.train import train
from unmask.runtime import distributed

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 6


def settings(store, model, out, **overrides) -> list[str]:
    # precision fp32: comparisons to 1e-5; bf16 (chosen by `auto` on AVX512-BF16 and AMX CPUs) earns looser ones, below
    values = dict(max_steps=STEPS, dropout=0.0, progress="none", precision="fp32")
    return as_flags(train_settings(store, model, out, **{**values, **overrides}))


def torchrun(*args: str, processes: int = 2, timeout: int = 240, command: str = "train") -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "unmask",
        command,
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def single(*args: str) -> dict:
    from unmask.cli.main import parse

    _, config = parse(["train", *args])
    return train(config, progress=False, echo=quiet)


def records(run, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if key in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, store_dir, tiny_model_dir):
    root = tmp_path_factory.mktemp("distributed")
    store, model = str(store_dir), str(tiny_model_dir)
    single(*settings(store, model, root / "single", grad_accum=2))
    for strategy in ("ddp", "fsdp"):
        result = torchrun(*settings(store, model, root / strategy, strategy=strategy))
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count(": 6 steps, ") == 1, "rank 0 alone prints the summary"
    return root


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_take_the_same_steps_as_one_with_gradient_accumulation(runs, strategy):
    one, two = records(runs / "single", "loss"), records(runs / strategy, "loss")
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    mask_rates = records(runs / strategy, "mask_rate")
    assert mask_rates == pytest.approx(records(runs / "single", "mask_rate"), rel=1e-12), "the same masks, whatever the layout"
    summary = json.loads((runs / strategy / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["strategy"] == strategy


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_run_page_counts_the_tokens_of_every_process(runs, strategy):
    """Tokens seen = steps x global batch (batch 4 x 2 processes) x window, counted by the run
    itself: the page used to work it out from batch_size x grad_accum and showed half."""
    from unmask.serve.runs import RunFolder, describe

    path = runs / strategy
    described = describe(RunFolder("r", path, "r"))
    assert described["tokens"] == STEPS * 4 * 2 * 32
    assert records(path, "train_tokens")[3] == 3 * 4 * 2 * 32


BF16_TOLERANCE = 1e-3
"""Relative: bf16 autocast keeps 8 bits of mantissa, so a sum taken in another order (FSDP's
sharded reductions) moves a loss in the fourth or fifth digit. Measured on an AMD EPYC with
AVX512-BF16, 3 steps: DDP 0 (bit-equal), FSDP2 9.7e-5; the bound leaves 10x room."""


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_bf16_two_processes_take_the_steps_of_one_within_what_bf16_earns(tmp_path, store_dir, tiny_model_dir, strategy):
    """The same comparison under --precision bf16 (what `auto` picks on AVX512-BF16, AMX and
    most GPUs): equal within bf16's rounding, and the same masks exactly."""
    store, model = str(store_dir), str(tiny_model_dir)
    single(*settings(store, model, tmp_path / "single", grad_accum=2, precision="bf16", max_steps=3, eval_every=0, checkpoint_every=0))
    result = torchrun(
        *settings(store, model, tmp_path / strategy, strategy=strategy, precision="bf16", max_steps=3, eval_every=0, checkpoint_every=0)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = records(tmp_path / "single", "loss"), records(tmp_path / strategy, "loss")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in one)
    assert worst <= BF16_TOLERANCE, worst
    assert records(tmp_path / strategy, "mask_rate") == records(tmp_path / "single", "mask_rate")
    assert json.loads((tmp_path / strategy / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sharded_evaluation_equals_single_process_evaluation_of_the_same_weights(runs, strategy, store_dir):
    from unmask.data.store import TokenStore
    from unmask.data.windows import Windows
    from unmask.evaluation.heldout import evaluate_model
    from unmask.models.masked_lm import load_mlm

    store = TokenStore.open(store_dir)
    windows = Windows.build(store.split("val"), 32, store.vocabulary(), keep_partial=True)
    [alone] = evaluate_model(load_mlm(str(runs / strategy / "model"), echo=quiet), windows, batch_size=4, device=torch.device("cpu"))
    sharded = records(runs / strategy, "eval_loss")[STEPS]
    assert sharded == pytest.approx(alone.loss, rel=1e-9)
    assert records(runs / strategy, "eval_masked_tokens")[STEPS] == alone.masked_tokens
    assert records(runs / strategy, "eval_accuracy")[STEPS] == alone.accuracy


def test_the_final_model_of_a_sharded_run_is_a_plain_transformers_folder(runs):
    from safetensors.torch import load_file
    from transformers import pipeline

    sharded, plain = (load_file(str(runs / name / "model" / "model.safetensors")) for name in ("fsdp", "single"))
    assert sorted(sharded) == sorted(plain)
    assert max(float((sharded[k] - plain[k]).abs().max()) for k in plain) < 1e-4
    assert len(pipeline("fill-mask", model=str(runs / "fsdp" / "model"))("the cat [MASK] the door.")) == 5


def test_checkpoints_resume_under_another_world_size_and_strategy(runs, store_dir, tiny_model_dir, tmp_path):
    store, model = str(store_dir), str(tiny_model_dir)
    # A DDP checkpoint continued by one process with gradient accumulation.
    shutil.copytree(runs / "ddp", tmp_path / "to-one")
    for leftover in ("checkpoints/step-00000006", "model", "summary.json"):
        shutil.rmtree(tmp_path / "to-one" / leftover, ignore_errors=True)
        (tmp_path / "to-one" / leftover).unlink(missing_ok=True)
    single(*settings(store, model, tmp_path / "to-one", grad_accum=2), "--resume")
    # A one-process checkpoint continued by two processes under FSDP2.
    shutil.copytree(runs / "single", tmp_path / "to-two")
    for leftover in ("checkpoints/step-00000006", "model", "summary.json"):
        shutil.rmtree(tmp_path / "to-two" / leftover, ignore_errors=True)
        (tmp_path / "to-two" / leftover).unlink(missing_ok=True)
    # --resume reads the run's own config (accumulation 2 on one process): two processes keep
    # the global batch with accumulation 1, said on the command line.
    result = torchrun(*settings(store, model, tmp_path / "to-two", strategy="fsdp", grad_accum=1), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    uninterrupted = records(runs / "single", "loss")
    for resumed in (tmp_path / "to-one", tmp_path / "to-two"):
        losses = records(resumed, "loss")
        assert sorted(losses) == list(range(1, STEPS + 1))
        for step in (4, 5, 6):
            assert losses[step] == pytest.approx(uninterrupted[step], rel=1e-5), (resumed.name, step)
    # Another global batch is refused, naming the grad-accum that keeps it.
    shutil.rmtree(tmp_path / "to-one" / "model")
    with pytest.raises(Exception, match=r"trained on 8 windows a step.*--grad-accum 2"):
        single(*settings(store, model, tmp_path / "to-one", grad_accum=1), "--resume")


def launch_until(out, args, step: int, poll: float = 0.2) -> subprocess.Popen:
    """torchrun with two workers training `args` into `out`, returned once metrics.jsonl shows `step`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "unmask", "train", *args]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or f'"step": {step}' not in (out / "metrics.jsonl").read_text():
        assert time.time() < deadline and launcher.poll() is None, "training never got going"
        time.sleep(poll)
    return launcher


def test_sigterm_to_the_launcher_leaves_a_checkpoint_to_continue_from(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = settings(
        str(store_dir), str(tiny_model_dir), out, max_steps=100_000, eval_every=0, checkpoint_every=0, log_every=20, progress="lines"
    )
    launcher = launch_until(out, args, 40)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0, "torchrun reports the signal"
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1 and "by SIGTERM" in stopped[0] and "continue with --resume" in stopped[0], stderr[-2000:]
    step = int(stopped[0].split()[3])
    from unmask.storage import checkpoint
    from unmask.storage.rundir import RunDir

    assert checkpoint.latest_checkpoint(RunDir(out)).name == f"step-{step:08d}"
    assert "\r" not in stderr, "a log gets plain lines, never a carriage-return bar"
    from unmask.cli.main import parse

    _, config = parse(["train", *args[:], "--grad-accum", "2", "--resume"])
    seen = []

    def first_step_then_stop(number: int) -> None:
        seen.append(number)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, echo=quiet, on_step=first_step_then_stop)
    assert seen == [step + 1], "one process continues where the two stopped"


def start_two_workers(out, args) -> tuple[subprocess.Popen, list[int]]:
    """torchrun with two workers, once they have logged step 10; returns the launcher and the workers' pids."""
    launcher = launch_until(out, args, 10)
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    workers = [int(pid) for pid in found]
    assert len(workers) == 2, found
    return launcher, workers


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still running (and not zombies) after up to `seconds`."""
    deadline = time.time() + seconds
    while True:
        alive = [pid for pid in pids if _running(pid)]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] not in "ZX"
    except FileNotFoundError:
        return False


def test_a_launcher_killed_alone_takes_its_workers_with_it_after_a_checkpoint(store_dir, tiny_model_dir, tmp_path):
    """kill -9 of torchrun's agent, not its group: the workers (each in a session of its own)
    hear SIGHUP from the kernel (once per thread of the dying launcher) and stop as on a
    preemption, with a checkpoint."""
    out = tmp_path / "run"
    args = settings(str(store_dir), str(tiny_model_dir), out, max_steps=100_000, eval_every=0, checkpoint_every=0, log_every=5)
    launcher, workers = start_two_workers(out, args)
    launcher.kill()
    alive = wait_gone(workers, 60)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=30)
    assert alive == [], "workers outlived their launcher"
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1 and "by SIGHUP (the launcher died)" in stopped[0], stderr[-2000:]
    assert "interrupted" not in stderr, "the kernel tells of the launcher's death more than once: that is not a second signal"
    from unmask.storage import checkpoint
    from unmask.storage.rundir import RunDir

    assert checkpoint.latest_checkpoint(RunDir(out)).name == f"step-{int(stopped[0].split()[3]):08d}"


def test_a_hung_worker_ends_the_others_after_the_collective_timeout_in_one_line(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = settings(str(store_dir), str(tiny_model_dir), out, max_steps=100_000, eval_every=0, checkpoint_every=0, log_every=5)
    launcher, workers = start_two_workers(out, [*args, "--collective-timeout", "0.1"])
    hung, other = workers
    os.kill(hung, signal.SIGSTOP)
    try:
        alive = wait_gone([other], 60)
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.kill()
    _, stderr = launcher.communicate(timeout=30)
    assert alive == [], "the waiting worker never gave up"
    lines = [line for line in stderr.splitlines() if "--collective-timeout" in line]
    assert lines and "error:" in lines[0] and "sent nothing for 0.1 min" in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr.split(lines[0])[0][-2000:], "the timeout is one line, not a traceback"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_stop_mid_step_under_torchrun_drops_the_step_and_resumes_bit_identical(store_dir, tiny_model_dir, tmp_path, strategy):
    """Steps of many micro-batches on two processes: SIGTERM to the launcher lands inside a
    step, every process drops it at the next micro-batch, and the resumed run ends with the
    weights of one that never stopped."""
    from safetensors.torch import load_file

    common = dict(max_steps=3, batch_size=1, grad_accum=150, eval_every=0, checkpoint_every=0, log_every=1, strategy=strategy)
    straight = torchrun(*settings(str(store_dir), str(tiny_model_dir), tmp_path / "straight", **common))
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "stopped"
    args = settings(str(store_dir), str(tiny_model_dir), out, **common)
    launcher = launch_until(out, args, 1, poll=0.05)
    # Step 1 is logged: step 2's 150 micro-batches are under way (no sleep decides where the signal lands)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1 and "by SIGTERM" in stopped[0] and "interrupted" not in stderr, stderr[-2000:]
    assert int(stopped[0].split()[3]) < 3
    resumed = torchrun(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("straight", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the dropped step is redone exactly"


def test_a_single_process_stops_at_a_step_boundary_on_a_signal(store_dir, tiny_model_dir, tmp_path):
    import os

    from unmask.runtime.preemption import Stopped

    def interrupt_at_step_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = TrainConfig(
        data=str(store_dir),
        model=str(tiny_model_dir),
        out=str(tmp_path / "run"),
        seq_len=32,
        batch_size=4,
        max_steps=10,
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
    )
    with pytest.raises(Stopped) as stopped:
        train(cfg, progress=False, echo=quiet, on_step=interrupt_at_step_3)
    assert stopped.value.exit_code == 143 and stopped.value.step == 4, "the signal is acted on at the next step boundary"
    assert stopped.value.checkpoint.name == "step-00000004" and (stopped.value.checkpoint / "state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handlers are put back"

    def ctrl_c_twice(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(cfg, out=str(tmp_path / "twice")), progress=False, echo=quiet, on_step=ctrl_c_twice)


def test_one_process_without_torchrun_is_a_world_of_one(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world, device = distributed.join("cpu")
    assert world == distributed.World() and not world.distributed and device.type == "cpu"
    assert distributed.resolve_strategy("fsdp", world) == "none"
    assert distributed.sum_across([1.5, 2.0], world, device) == [1.5, 2.0]
    assert distributed.resolve_strategy("auto", distributed.World(0, 2)) == "ddp"


def test_activation_checkpointing_gives_the_same_losses(store_dir, tiny_model_dir, tmp_path):
    plain = single(*settings(str(store_dir), str(tiny_model_dir), tmp_path / "plain", max_steps=3))
    recomputed = single(*settings(str(store_dir), str(tiny_model_dir), tmp_path / "ac", max_steps=3), "--activation-checkpointing")
    assert records(tmp_path / "ac", "loss") == pytest.approx(records(tmp_path / "plain", "loss"), rel=1e-6)
    assert plain["eval_loss"] == pytest.approx(recomputed["eval_loss"], rel=1e-6)


def test_fine_tuning_on_two_processes_takes_the_steps_of_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    """DDP fine-tuning: every process takes its share of each global batch; the loss is the
    mean over the whole batch, so 2 x batch 4 equals 1 x batch 8 (dropout off)."""
    from conftest import classification_records, write_jsonl

    from unmask.config import FinetuneConfig
    from unmask.tasks.finetune import finetune

    train_data = write_jsonl(tmp_path / "t.jsonl", classification_records(40))
    eval_data = write_jsonl(tmp_path / "e.jsonl", classification_records(15, 9))
    common = dict(
        model=str(tiny_model_dir),
        train=train_data,
        eval=eval_data,
        epochs=2,
        lr=1e-3,
        dropout=0.0,
        log_every=1,
        progress="none",
        precision="fp32",
    )
    alone = finetune(FinetuneConfig(out=str(tmp_path / "one"), batch_size=8, device="cpu", **common), echo=quiet, progress=False)
    flags = [
        item
        for key, value in {**common, "out": tmp_path / "two", "batch_size": 4}.items()
        for item in (f"--{key.replace('_', '-')}", str(value))
    ]
    result = torchrun(*flags, command="finetune")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = {
        name: {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
        for name in ("one", "two")
    }
    assert losses["one"].keys() == losses["two"].keys() and len(losses["one"]) == 10
    for step, loss in losses["one"].items():
        assert losses["two"][step] == pytest.approx(loss, rel=1e-5), step
    together = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert together["metrics"]["accuracy"]["median"] == alone["metrics"]["accuracy"]["median"]
