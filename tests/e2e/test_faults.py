"""Nothing lost, whatever happens: kills, damaged checkpoints, non-finite steps, full disks,
two processes on one run, and files that would run code when loaded."""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, as_flags, quiet, train_config, train_settings
from safetensors.torch import load_file

from unmask.config import PrepareConfig, TrainConfig, UnmaskError
from unmask.data.prepare import prepare
from unmask.data.store import TokenStore
from unmask.pretrain.train import train
from unmask.runtime.progress import PACE_KEYS
from unmask.storage import checkpoint
from unmask.storage.rundir import RunDir

pytestmark = pytest.mark.slow

SRC = REPO / "src" / "unmask"


def settings(store, model, out, **overrides) -> list[str]:
    values = dict(max_steps=80, warmup_steps=2, eval_every=8, checkpoint_every=1, keep_checkpoints=2, progress="none")
    return as_flags(train_settings(store, model, out, **{**values, **overrides}))


def unmask_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unmask", "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lines_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def requeued_command(args: list[str], out: Path) -> list[str]:
    """What a preemptible cluster's job runs each time: the job's command with --resume, which
    is `--out RUN --resume` alone once the run folder holds its settings."""
    return ["--out", str(out), "--resume"] if RunDir(out).config.is_file() else [*args, "--resume"]


def kill_repeatedly(args: list[str], out: Path, kills: int, seed: int, early: int = 2) -> tuple[int, int, int]:
    """SIGKILL the run at random moments until `kills` kills landed; returns (kills, kills inside
    a checkpoint write or the model save, kills before the first checkpoint).

    Every attempt is run as a requeued job runs it (`requeued_command`). The first `early`
    attempts are killed at a random moment of their start-up, before any checkpoint exists;
    the others a random fraction of a second after they logged a new step, so kills fall in
    steps, evaluations, checkpoint writes and the final model save.
    """
    chance = random.Random(seed)
    landed = inside_write = before_first = 0
    while landed < kills:
        before = lines_of(out / "metrics.jsonl")
        process = unmask_process(*requeued_command(args, out))
        if landed < early:
            time.sleep(chance.uniform(0.2, 2.0))
        else:
            deadline = time.time() + 120
            while process.poll() is None and lines_of(out / "metrics.jsonl") <= before and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(chance.uniform(0.0, 0.15))
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read()[-2000:]
            if (out / "model").is_dir():
                break  # the run finished before this kill: start another
            continue
        process.kill()
        process.wait()
        landed += 1
        before_first += not RunDir(out).checkpoint_steps()
        if list((out / "checkpoints").glob(".step-*")) or list(out.glob(".model.*")):
            inside_write += 1
    return landed, inside_write, before_first


def test_ten_random_kills_then_resume_end_bit_identical_to_an_uninterrupted_run(store_dir, tiny_model_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Dropout on: the resumed run must also redraw the same dropout masks.
    reference = unmask_process(*settings(str(store_dir), str(tiny_model_dir), straight, dropout=0.1))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    args = settings(str(store_dir), str(tiny_model_dir), killed, dropout=0.1)
    landed, _, before_first = kill_repeatedly(args, killed, kills=10, seed=0, early=3)
    assert landed == 10 and before_first >= 1, (landed, before_first)
    final = unmask_process(*requeued_command(args, killed))
    assert final.wait(timeout=300) == 0, final.stderr.read()[-2000:]
    assert same_weights(weights(killed), weights(straight)), "bit for bit"

    def records(run: Path) -> list[dict]:  # everything but the speed, which differs from process to process
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in PACE_KEYS} for r in lines]

    assert records(killed) == records(straight), "no duplicated, torn or missing metrics"
    assert not list(killed.glob(".*.partial-*")) and not list((killed / "checkpoints").glob(".step-*")), "leftovers cleaned up"


def damage_truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def damage_flip_a_byte(path):
    data = bytearray((path / "optimizer.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "optimizer.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncate,
        damage_flip_a_byte,
        lambda p: (p / "model.safetensors").unlink(),
        lambda p: (p / "state.json").write_text("garbage{"),
    ],
    ids=["truncated", "flipped-byte", "missing-file", "garbage-state"],
)
def test_a_damaged_newest_checkpoint_is_named_passed_over_and_the_run_still_ends_bit_identical(store_dir, tiny_model_dir, tmp_path, damage):
    def config(out, **o):
        values = dict(eval_every=0, checkpoint_every=2, keep_checkpoints=3, dropout=0.1, log_every=None)
        return train_config(store_dir, tiny_model_dir, out, **{**values, **o})

    train(config(tmp_path / "straight"), progress=False, echo=quiet)
    out = tmp_path / "run"

    def stop_after_step_5(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(out), progress=False, echo=quiet, on_step=stop_after_step_5)
    damage(out / "checkpoints" / "step-00000004")
    lines = []
    train(config(out, resume=True), progress=False, echo=lines.append)
    warnings = [line for line in lines if line.startswith("warning: skipping damaged checkpoint")]
    assert len(warnings) == 1 and "step-00000004" in warnings[0]
    assert any("resumed from" in line and "step-00000002" in line for line in lines)
    assert same_weights(weights(out), weights(tmp_path / "straight"))


def test_keeping_n_checkpoints_never_deletes_the_last_one_that_verifies(tmp_path):
    from conftest import tiny_bert

    model = tiny_bert(60)
    state = {k: v for k, v in model.state_dict().items() if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")}
    optimizer = {"state": {}, "param_groups": [{"lr": 1.0, "params": []}]}
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(RunDir(tmp_path), checkpoint.CheckpointInfo(step=step), state, optimizer, keep=5)
    for step in (2, 3):  # both newer ones damaged
        (tmp_path / "checkpoints" / f"step-{step:08d}" / "model.safetensors").write_bytes(b"x")
    checkpoint._verified.clear()
    checkpoint.save_checkpoint(RunDir(tmp_path), checkpoint.CheckpointInfo(step=4), state, optimizer, keep=2)
    assert [p.name for p in [p for _, p in RunDir(tmp_path).checkpoint_steps()]] == ["step-00000001", "step-00000004"]
    checkpoint.save_checkpoint(RunDir(tmp_path), checkpoint.CheckpointInfo(step=5), state, optimizer, keep=1)
    assert [p.name for p in [p for _, p in RunDir(tmp_path).checkpoint_steps()]] == ["step-00000005"]


def poison_from_call(monkeypatch, first_bad: int, last_bad: int = 10**9):
    from unmask.models.masked_lm import MaskedLM

    real, calls = MaskedLM.loss_sum, {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss, logits = real(self, *args)
        return (loss * float("nan"), logits) if first_bad <= calls["n"] <= last_bad else (loss, logits)

    monkeypatch.setattr(MaskedLM, "loss_sum", poisoned)


def test_a_non_finite_step_stops_before_it_reaches_the_weights(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    poison_from_call(monkeypatch, 5)
    out = tmp_path / "run"
    cfg = train_config(store_dir, tiny_model_dir, out, eval_every=0, checkpoint_every=2, lr=None, warmup_steps=None, log_every=None)
    with pytest.raises(UnmaskError, match=r"step 5: training loss is nan, gradient norm nan; stopped before applying it"):
        train(cfg, progress=False, echo=quiet)
    assert [p.name for p in [p for _, p in RunDir(out).checkpoint_steps()]] == ["step-00000002", "step-00000004"]
    assert not (out / "model").exists()
    saved = load_file(str(out / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_skip_drops_non_finite_updates_counts_them_and_stops_after_too_many_in_a_row(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    poison_from_call(monkeypatch, 3, 4)  # steps 3 and 4 are non-finite
    out = tmp_path / "run"
    settings = dict(eval_every=0, checkpoint_every=0, on_nonfinite="skip", max_nonfinite=2, lr=None, warmup_steps=None)
    cfg = train_config(store_dir, tiny_model_dir, out, **settings)
    summary = train(cfg, progress=False, echo=quiet)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"skipped_steps"' in line]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 2, 2, 2] and [r["loss"] is None for r in records] == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    assert summary["steps"] == 6 and all(torch.isfinite(t).all() for t in weights(out).values())
    poison_from_call(monkeypatch, 1)
    with pytest.raises(UnmaskError, match=r"3 non-finite steps in a row \(--max-nonfinite 2\)"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "always")}), progress=False, echo=quiet)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real filesystem a few hundred kilobytes big (tmpfs), where the test may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")

    def make(size_kb: int) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        return mount

    yield make
    subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # lazy: a file a failed test left open keeps it busy


def fill(disk: Path, leave_bytes: int) -> None:
    """Take all free space on `disk` but `leave_bytes`."""
    free = shutil.disk_usage(disk).free - leave_bytes
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free))


DISK_FULL = r"disk full while writing .*free there\); nothing half-written was kept"


def test_a_full_disk_while_preparing_keeps_the_old_store_and_leaves_nothing_half_written(tiny_disk, corpus_dir, tokenizer_dir):
    disk = tiny_disk(1024)
    out = disk / "store"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(out), tokenizer=str(tokenizer_dir)), progress=False)
    before = (out / "train.tokens").read_bytes()
    fill(disk, 4096)
    with pytest.raises(UnmaskError, match=DISK_FULL):
        prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(out), tokenizer=str(tokenizer_dir), overwrite=True), progress=False)
    assert (out / "train.tokens").read_bytes() == before and TokenStore.open(out).split("train") is not None
    assert sorted(p.name for p in disk.iterdir() if not p.name.startswith(".store.lock")) == ["filler", "store"]


@pytest.mark.parametrize("when", ["config", "metrics", "checkpoint", "final-model"])
def test_a_full_disk_while_training_is_one_line_and_earlier_checkpoints_stay_whole(tiny_disk, store_dir, tiny_model_dir, when):
    disk = tiny_disk(8192)
    out = disk / "run"
    if when == "config":
        fill(disk, 0)
    cfg = TrainConfig(
        data=str(store_dir),
        model=str(tiny_model_dir),
        out=str(out),
        seq_len=32,
        batch_size=4,
        max_steps=40,
        eval_every=0,
        checkpoint_every=2,
        keep_checkpoints=5,
        log_every=1,
    )

    def squeeze(step: int) -> None:
        if step == 3 and when == "metrics":
            fill(disk, 0)
        if step == 3 and when == "checkpoint":
            fill(disk, 40_000)  # less than a checkpoint
        if step == 39 and when == "final-model":
            newest = checkpoint.latest_checkpoint(RunDir(out))
            size = sum(f.stat().st_size for f in newest.iterdir())
            fill(disk, size + 12_000)  # the last checkpoint fits, the model after it does not

    longer = when in ("final-model", "metrics")  # a full page of metrics lines takes a dozen steps to run out
    cfg = TrainConfig(
        **{**cfg.__dict__, "max_steps": 40 if longer else 8, "keep_checkpoints": 50, "checkpoint_every": 0 if when == "metrics" else 2}
    )
    with pytest.raises(UnmaskError, match=DISK_FULL) as failure:
        train(cfg, progress=False, echo=quiet, on_step=squeeze)
    named = {"config": r"base|config\.yaml", "metrics": r"metrics\.jsonl", "checkpoint": r"step-0000000[46]", "final-model": r"model"}[when]
    assert re.search(named, str(failure.value)), str(failure.value)
    for path in [p for _, p in RunDir(out).checkpoint_steps()]:
        assert checkpoint.verify(path) is None, f"{path} looks complete, so it must be whole"
    assert not (out / "model").exists() and not list(out.glob(".*partial*")) and not list((out / "checkpoints").glob(".step-*"))


def limited_file_size(limit_bytes: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_file_size_limit_is_one_line_like_a_full_disk(command, corpus_dir, tokenizer_dir, store_dir, tiny_model_dir, tmp_path):
    """`(ulimit -f N; unmask ...)`: the write that passes the limit fails with EFBIG (Python
    ignores SIGXFSZ), which is said in one line, with nothing half-written left behind."""
    out = tmp_path / "out"
    if command == "prepare":
        args = ["prepare", str(corpus_dir), "--out", str(out), "--tokenizer", str(tokenizer_dir)]
        limit = 4096
    else:
        args = ["train", "--model", str(tiny_model_dir), "--data", str(store_dir), "--out", str(out), "--seq-len", "32"]
        args += ["--batch-size", "4", "--max-steps", "2", "--progress", "none"]
        limit = 64 * 1024
    result = subprocess.run(
        [sys.executable, "-m", "unmask", *args], capture_output=True, text=True, preexec_fn=limited_file_size(limit), timeout=300
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(
        r"error: .*the file-size limit \(ulimit -f\) reached while writing .*may write files of up to .*nothing half-written was kept", last
    )
    half = [p for p in out.rglob("*") if ".partial-" in str(p) or ".building-" in str(p) or p.name.endswith(".tmp")] if out.exists() else []
    assert half == [], half


def test_a_second_train_into_a_live_run_refuses_and_a_killed_run_leaves_no_stuck_lock(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = settings(str(store_dir), str(tiny_model_dir), out, max_steps=100_000, checkpoint_every=50, eval_every=0)
    first = unmask_process(*args)
    while lines_of(out / "metrics.jsonl") < 3:
        assert first.poll() is None, first.stderr.read()[-2000:]
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "unmask", "train", *args, "--resume"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "is using it right now" in second.stderr and "unmask train" in second.stderr
    assert "Traceback" not in second.stderr
    while not [p for _, p in RunDir(out).checkpoint_steps()]:
        time.sleep(0.05)
    first.kill()
    first.wait()
    third = unmask_process(*settings(str(store_dir), str(tiny_model_dir), out, max_steps=60, checkpoint_every=50, eval_every=0), "--resume")
    assert third.wait(timeout=300) == 0, third.stderr.read()[-2000:]


def test_two_prepares_into_one_store_leave_one_complete_store(corpus_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "unmask",
        "prepare",
        str(corpus_dir),
        "--out",
        str(out),
        "--tokenizer",
        str(tokenizer_dir),
        "--overwrite",
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sum(code == 0 for code, _ in results) >= 1
    for code, err in results:
        assert code == 0 or "is using it right now" in err, err
    store = TokenStore.open(out)
    assert len(store.split("train").tokens) == store.meta["splits"]["train"]["tokens"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "one store, and no lock file left among the user's files"


def test_no_pickle_and_no_unsafe_torch_load_anywhere_in_unmask():
    offenders = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bpickle\.loads?\b|\bimport (c?pickle|dill|joblib)\b|\bcloudpickle\b", code):
                offenders.append(f"{path}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path}:{number}: {line.strip()}")
    assert offenders == []


def test_a_crafted_pickle_in_a_model_folder_never_runs(tmp_path):
    import pickle

    from transformers import BertConfig

    from unmask.models.masked_lm import load_mlm

    folder = tmp_path / "model"
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32).save_pretrained(folder)
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": Payload()}, f)
    with pytest.raises(UnmaskError, match="refused to load pickled weights"):
        load_mlm(str(folder), echo=quiet)
    assert not marker.exists(), "unpickling would have run the command"


def test_remote_code_runs_only_when_asked(tmp_path):
    from transformers import BertConfig

    from unmask.models.masked_lm import load_mlm

    folder = tmp_path / "remote"
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32)
    config.auto_map = {"AutoModelForMaskedLM": "modeling_evil.EvilModel"}
    config.save_pretrained(folder)
    marker = tmp_path / "RAN"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertForMaskedLM as EvilModel\n"
    )
    try:
        load_mlm(str(folder), echo=quiet)
    except UnmaskError:
        pass
    assert not marker.exists(), "custom code must not run without --trust-remote-code"


def test_a_start_that_fails_leaves_no_run_folder_behind(store_dir, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    for f in broken.glob("*.bin"):
        f.unlink()
    cfg = TrainConfig(data=str(store_dir), model=str(broken), out=str(tmp_path / "new-run"), seq_len=32, batch_size=4, max_steps=2)
    with pytest.raises(UnmaskError, match="cannot load"):
        train(cfg, progress=False, echo=quiet)
    assert not (tmp_path / "new-run").exists(), "a failed start leaves no folder holding only .lock"
    mine = tmp_path / "my-folder"
    mine.mkdir()
    with pytest.raises(UnmaskError, match="cannot load"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(mine)}), progress=False, echo=quiet)
    assert mine.is_dir(), "a folder that was there before is the user's: it stays"
