"""The machine: precision chosen by what the CPU can do (probe stubbed both ways), bf16 autocast
holding fp32's loss, a training step that never reads the device, and --deterministic."""

import json

import pytest
import torch
from conftest import DeviceReads, quiet, train_config

from unmask.config import TrainConfig
from unmask.pretrain.step import (
    PICKED_ROWS_MULTIPLE,
    PICKED_SLOTS_MULTIPLE,
    clip_step_and_tally,
    draw_or_drop,
    forward_backward_or_drop,
    settle_or_stop,
)
from unmask.pretrain.train import setup, train
from unmask.runtime import hardware
from unmask.runtime.preemption import StopSignals


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(hardware.FORCE_CPU_PRECISION, raising=False)  # these tests stub the detection itself
    return tmp_path / "cache" / "cpu-precision.json"


def test_the_cpu_choice_can_be_forced_for_a_test_run_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setenv(hardware.FORCE_CPU_PRECISION, "bf16")
    monkeypatch.setattr(hardware, "cpu_bf16_hardware", lambda: None)  # even where detection would say fp32
    assert hardware.choose_precision(torch.device("cpu"), "auto").dtype is torch.bfloat16
    assert hardware.choose_precision(torch.device("cpu"), "fp32").dtype is None, "a choice by name still wins"
    monkeypatch.setenv(hardware.FORCE_CPU_PRECISION, "fp32")
    assert hardware.choose_precision(torch.device("cpu"), "auto").dtype is None
    monkeypatch.setenv(hardware.FORCE_CPU_PRECISION, "fp16")
    with pytest.raises(hardware.UnmaskError, match="UNMASK_CPU_PRECISION=fp16: give bf16 or fp32"):
        hardware.choose_precision(torch.device("cpu"), "auto")


def test_reported_numbers_are_fp32_whatever_auto_would_pick_for_training(monkeypatch, tiny_model_dir):
    """fill probabilities (and eval, score, embed: one LoadedModel) do not move with the CPU:
    with `auto` forced to bf16 they equal the fp32 ones bit for bit, unless bf16 is asked by name."""
    import unmask

    text = ["the [MASK] sat on the [MASK] ."]
    monkeypatch.setenv(hardware.FORCE_CPU_PRECISION, "fp32")
    fp32 = unmask.fill(str(tiny_model_dir), text, top_k=5)
    monkeypatch.setenv(hardware.FORCE_CPU_PRECISION, "bf16")
    assert unmask.fill(str(tiny_model_dir), text, top_k=5) == fp32
    asked = unmask.fill(str(tiny_model_dir), text, top_k=5, precision="bf16")
    assert [c.score for c in asked[0].masks[0].candidates] != [c.score for c in fp32[0].masks[0].candidates]
    assert hardware.reporting_dtype(torch.device("cpu"), "fp32") is None


def test_a_cpu_without_bf16_units_trains_in_fp32(monkeypatch, cache):
    monkeypatch.setattr(hardware, "cpu_bf16_hardware", lambda: None)
    monkeypatch.setattr(hardware, "calibrate", lambda *a, **k: pytest.fail("no calibration without the hardware"))
    choice = hardware.choose_precision(torch.device("cpu"), "auto")
    assert choice.dtype is None and choice.name == "fp32" and "neither AMX nor AVX512-BF16" in choice.reason


def test_a_cpu_with_amx_takes_bf16_once_calibration_confirms_it_and_remembers(monkeypatch, cache):
    monkeypatch.setattr(hardware, "cpu_bf16_hardware", lambda: "AMX")
    monkeypatch.setattr(hardware, "calibrate", lambda *a, **k: 5.3)
    choice = hardware.choose_precision(torch.device("cpu"), "auto")
    assert choice.dtype is torch.bfloat16 and "AMX" in choice.reason and "5.3x" in choice.reason
    assert list(json.loads(cache.read_text()).values()) == [5.3]
    monkeypatch.setattr(hardware, "calibrate", lambda *a, **k: pytest.fail("calibrated once per machine"))
    assert hardware.choose_precision(torch.device("cpu"), "auto").dtype is torch.bfloat16


def test_bf16_units_that_calibrate_slow_keep_fp32_and_explicit_choices_win(monkeypatch, cache):
    monkeypatch.setattr(hardware, "cpu_bf16_hardware", lambda: "AVX512-BF16")
    monkeypatch.setattr(hardware, "calibrate", lambda *a, **k: 1.1)
    assert hardware.choose_precision(torch.device("cpu"), "auto").dtype is None
    assert hardware.choose_precision(torch.device("cpu"), "bf16").dtype is torch.bfloat16
    assert hardware.choose_precision(torch.device("cpu"), "fp32").dtype is None


def test_the_real_probe_answers_on_this_machine(cache):
    """Whatever this CPU is, the probe gives a reason; `calibrate` measures a positive ratio."""
    assert hardware.cpu_bf16_hardware() in (None, "AMX", "AVX512-BF16")
    assert hardware.calibrate(size=64, repeats=1) > 0


def tiny_config(store_dir, tiny_model_dir, out, **overrides) -> TrainConfig:
    values = dict(batch_size=8, dropout=0.0, eval_every=0, checkpoint_every=0, progress="none", warmup_steps=None)
    return train_config(store_dir, tiny_model_dir, out, **{**values, **overrides})


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_bf16_autocast_on_cpu_follows_the_fp32_loss(store_dir, tiny_model_dir, tmp_path):
    fp32 = train(tiny_config(store_dir, tiny_model_dir, tmp_path / "fp32", precision="fp32"), progress=False, echo=quiet)
    bf16 = train(tiny_config(store_dir, tiny_model_dir, tmp_path / "bf16", precision="bf16"), progress=False, echo=quiet)
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") and "--precision bf16" in bf16["precision_reason"]
    for a, b in zip(losses(tmp_path / "fp32"), losses(tmp_path / "bf16")):
        assert b == pytest.approx(a, rel=0.02), (a, b)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "bf16" / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values()), "master weights stay fp32"


@pytest.mark.parametrize("masking", ["token", "whole-word", "span"])
def test_a_step_that_logs_nothing_never_reads_the_device(store_dir, tiny_model_dir, tmp_path, masking):
    run = setup(tiny_config(store_dir, tiny_model_dir, tmp_path / "run", masking=masking, dropout=0.1), echo=quiet)
    try:
        no_signal = StopSignals()  # not entered: never receives one
        for _ in range(3):
            drawn = draw_or_drop(run, no_signal)  # the host's part: masks and where they fall
            with DeviceReads() as reads:  # the device's part: forward, backward, clip, step
                clip_step_and_tally(run, forward_backward_or_drop(run, drawn, no_signal))
            assert reads.seen == [], reads.seen
            run.state.step += 1
        assert settle_or_stop(run)["loss"] > 0
        # The detector catches what it looks for: the labels-based path the host's plan replaced
        # finds its positions on the device, and a logged number is a read.
        batch = drawn.micro_batches[0]
        # a few shapes for every step: the masked positions padded (oneDNN keeps kernels per shape)
        assert batch.picks.flat.shape[0] % PICKED_ROWS_MULTIPLE == 0 and batch.picks.order.shape[1] % PICKED_SLOTS_MULTIPLE == 0
        labels = torch.full_like(batch.input_ids, -100).reshape(-1).index_put((batch.picks.flat,), batch.targets).view_as(batch.input_ids)
        with DeviceReads() as reads:
            loss, _ = run.lm(batch.input_ids, batch.attention_mask, labels)
            float(loss.detach())
        assert "nonzero" in " ".join(reads.seen) and "_local_scalar_dense" in " ".join(reads.seen), reads.seen
    finally:
        run.lock.release()


def test_deterministic_sets_what_it_must_and_a_run_keeps_to_it(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        summary = train(
            tiny_config(store_dir, tiny_model_dir, tmp_path / "run", deterministic=True, dropout=0.1), progress=False, echo=quiet
        )
        assert torch.are_deterministic_algorithms_enabled() and summary["deterministic"] is True
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == hardware.CUBLAS_WORKSPACE
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cuda.enable_mem_efficient_sdp(True)


def test_a_measured_peak_a_run_went_past_is_measured_again_and_cached_higher(cache, monkeypatch):
    rates = iter([1e9, 3e9])  # the first on a busy machine, the second quiet
    monkeypatch.setattr(hardware, "matmul_rate", lambda *a, **k: next(rates))
    device = torch.device("cpu")
    busy = hardware.peak_flops(device, None, "auto")
    assert busy.flops == 1e9 and hardware.peak_flops(device, None, "auto").flops == 1e9, "cached"
    again = hardware.remeasured_peak(busy, device, None)
    assert again.flops == 3e9 and hardware.peak_flops(device, None, "auto").flops == 3e9, "measured again and cached"
    monkeypatch.setattr(hardware, "matmul_rate", lambda *a, **k: 1e9)
    assert hardware.remeasured_peak(again, device, None).flops == 3e9, "a lower measurement never replaces a higher one"
    given = hardware.peak_flops(device, None, "2")
    assert hardware.remeasured_peak(given, device, None) == given, "a peak the user gave stays"


def test_tensor_memory_counts_what_ops_make_until_it_is_freed():
    kept = torch.zeros(1000)  # 4,000 bytes in use before
    outside = torch.zeros(10_000_000)  # 40 MB the tracker was not told of
    with hardware.TensorMemory([kept]) as memory:
        a = torch.ones(2000)  # 8,000
        b = a * 2  # 8,000 more: the peak
        view = b[:10]  # a view makes no storage
        del a
        c = torch.ones(500)  # 2,000, into what a freed
        kept.add_(1)  # in place: nothing new
        untracked_view = outside[:10]  # a view of a tensor made before: no new memory
    assert memory.peak == 4000 + 8000 + 8000
    assert memory.live == 4000 + 8000 + 2000
    assert view.shape == (10,) and c.numel() == 500 and untracked_view.numel() == 10
