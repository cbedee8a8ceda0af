"""How well the hardware is used: the speed numbers of every log line and the summary, and `--plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import train_config

from unmask.cli.main import main
from unmask.config import TrainConfig
from unmask.models.flops import TRAINING_PASSES, Shape
from unmask.models.masked_lm import load_mlm
from unmask.pretrain.plan import estimate_lines, speed_means
from unmask.pretrain.train import train
from unmask.runtime import hardware
from unmask.storage.names import resolve_model


def _config(store_dir, tiny_model_dir, out, **overrides) -> TrainConfig:
    values = dict(lr=None, warmup_steps=None, log_every=2, eval_every=0, checkpoint_every=0, progress="none")
    return train_config(store_dir, tiny_model_dir, out, **{**values, **overrides})


def test_every_log_line_says_how_well_the_hardware_is_used(store_dir, tiny_model_dir, tmp_path):
    summary = train(_config(store_dir, tiny_model_dir, tmp_path / "run"), progress=False, echo=lambda _: None)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert len(steps) == 3
    lm = load_mlm(resolve_model(str(tiny_model_dir)))
    for record in steps:
        assert 0 < record["mfu"] < 1, record
        assert record["tokens_per_s_per_device"] == record["tokens_per_s"]
        assert 0 <= record["data_wait"] < 1 and record["padding"] == 0.0  # packed windows have no padding
        assert record["memory_gib"] > 0.01
        # Packed windows of 32 tokens with about 15% masked: the formula's FLOPs a token.
        nominal = TRAINING_PASSES * lm.forward_flops(Shape(np.full(4, 32), round(record["mask_rate"] * 4 * 30))) / (4 * 32)
        assert record["flops_per_token"] == pytest.approx(nominal, rel=0.05)
    assert summary["mean_mfu"] == pytest.approx(sum(r["mfu"] for r in steps) / 3)
    assert summary["peak_memory_gib"] == max(r["memory_gib"] for r in steps)
    assert summary["peak_tflops"] > 0 and summary["peak_source"].startswith("measured")


def test_padded_windows_report_their_padding_share(store_dir, tiny_model_dir, tmp_path):
    from unmask.data.store import TokenStore
    from unmask.data.windows import Windows

    store = TokenStore.open(store_dir)
    # one step over every window: each document's last window is padded, whatever the order draws
    count = len(Windows.build(store.split("train"), 32, store.vocabulary(), packing="padded"))
    config = _config(store_dir, tiny_model_dir, tmp_path / "run", packing="padded", max_steps=1, batch_size=count, log_every=1)
    train(config, progress=False, echo=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all(0 < r["padding"] < 1 for r in records), records


def test_speed_means_average_the_log_lines_and_keep_the_highest_memory():
    records = [
        {"tokens_per_s": 10, "mfu": 0.1, "memory_gib": 1.0},
        {"eval_loss": 3.0},
        {"tokens_per_s": 30, "mfu": None, "memory_gib": 2.0},
    ]
    means = speed_means(records)
    assert means["mean_tokens_per_s"] == 20 and means["mean_mfu"] == 0.1 and means["peak_memory_gib"] == 2.0
    assert speed_means([])["mean_mfu"] is None


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp32"])  # what an AMX / AVX512-BF16 CPU trains in, and an AVX2 one
def test_plan_measures_a_few_steps_writes_no_run_folder_and_estimates_memory_within_25_percent(store_dir, tmp_path, precision):
    # Tensor memory is counted op by op, so the figure is the same on any CPU and under any
    # load; only the precision changes it, and the estimate knows the precision.
    out = tmp_path / "never"
    argv = ["train", "--data", store_dir, "--out", out, "--from-scratch", "tiny", "--seq-len", "128", "--batch-size", "32"]
    argv += ["--max-tokens", "409600", "--plan", "--progress", "none", "--json"]
    environment = {**os.environ, "UNMASK_CPU_PRECISION": precision}
    done = subprocess.run([sys.executable, "-m", "unmask", *map(str, argv)], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not out.exists()
    plan = json.loads(done.stdout[done.stdout.index("{") :])
    assert plan["total_steps"] == 100  # 409,600 tokens / (32 x 128) a step
    assert plan["memory_measured"] == pytest.approx(plan["memory_estimate"], rel=0.25), plan
    assert 0 < plan["mfu"] < 1 and plan["tokens_per_s"] > 0
    assert plan["seconds_to_end"] == pytest.approx(100 * plan["seconds_per_step"])
    printed = done.stdout + done.stderr
    assert "plan: peak tensor memory" in printed and "100 steps to --max-tokens 409,600" in printed


def test_the_estimate_is_printed_at_the_start_of_every_run(store_dir, tiny_model_dir, tmp_path):
    said = []
    train(_config(store_dir, tiny_model_dir, tmp_path / "run", max_steps=1), progress=False, echo=said.append)
    assert any(line.startswith("plan: ") and "parameters" in line and "TFLOPs" in line for line in said)
    assert any(line.startswith("plan: memory per process") for line in said)
    assert estimate_lines  # the one writer of those lines


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--peak-tflops", "h100-sxm"], "--peak-tflops h100-sxm: that is the NVIDIA H100 SXM's peak"),
        (["--peak-tflops", "fast"], "--peak-tflops fast: give auto, measure"),
        (["--max-tokens", "100"], "--max-tokens: 100: less than one step's 128 tokens"),
    ],
)
def test_a_plan_that_cannot_be_made_is_one_line_and_exit_1(store_dir, tiny_model_dir, tmp_path, capsys, flags, message):
    if flags[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["train", "--data", store_dir, "--out", tmp_path / "o", "--model", tiny_model_dir, "--seq-len", "32", "--batch-size", "4"]
    code = main([str(a) for a in argv + flags + ["--plan"]])
    err = capsys.readouterr().err
    assert code == 1, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_known_gpus_peak_comes_from_its_data_sheet_and_a_number_is_taken_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    peak = hardware.peak_flops(torch.device("cuda"), torch.bfloat16)
    assert peak.flops == pytest.approx(989.4e12) and "data sheet" in peak.source
    assert hardware.peak_flops(torch.device("cuda"), None, "h200").flops == pytest.approx(66.9e12)
    with pytest.raises(hardware.UnmaskError, match="this device is NVIDIA H200"):
        hardware.peak_flops(torch.device("cuda"), torch.bfloat16, "a100")
    assert hardware.peak_flops(torch.device("cpu"), None, "2.5").flops == pytest.approx(2.5e12)


def test_a_measured_cpu_peak_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path))
    monkeypatch.setattr(hardware, "matmul_rate", lambda *a, **k: 1.5e11)
    first = hardware.peak_flops(torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(hardware, "matmul_rate", lambda *a, **k: pytest.fail("measured once per machine"))
    assert hardware.peak_flops(torch.device("cpu"), torch.bfloat16) == first and first.flops == 1.5e11
    assert "bf16 matrix product" in first.source
