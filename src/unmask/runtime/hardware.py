"""The machine a command runs on: which device, which precision to compute in there, and
whether to make a GPU's arithmetic reproducible.

`--precision auto` takes bf16 autocast where it is faster: on GPUs that support it, and on
CPUs with AMX or AVX512-BF16, where a bf16 matrix product runs several times faster than
fp32. On a CPU the choice is confirmed by a short calibration (a bf16 and an fp32 matrix
product timed against each other) and cached per machine, CPU model, torch version and
thread count; elsewhere (AVX2 CPUs) fp32. Weights and optimizer state stay fp32 either way:
autocast computes in bf16, it does not store in it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.errors import UnmaskError

CALIBRATION_SIZE = 1024
CALIBRATION_GAIN = 1.3
"""bf16 must be at least this much faster than fp32 to be chosen."""


def resolve_device(device: str) -> torch.device:
    """`auto` (a CUDA GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UnmaskError(f"--device: '{device}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UnmaskError(f"--device: '{device}' asked for, but no CUDA GPU is available")
    return resolved


@dataclass(frozen=True)
class Precision:
    """What a command computes in, and why (one line for the log and summary.json)."""

    dtype: torch.dtype | None
    """torch.bfloat16 for bf16 autocast; None for fp32."""
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is not None else "fp32"


def _cpuinfo(field: str) -> str | None:
    """The first `field` line's value in /proc/cpuinfo (None where there is none: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    import platform

    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def _cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_bf16_hardware() -> str | None:
    """`AMX` or `AVX512-BF16` when this CPU has bf16 matrix instructions torch can use, else None.

    Asked of torch first (it initialises AMX tiles, which also needs the kernel's
    permission), then of the CPU's flags."""
    init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init_amx is not None:
        try:
            if init_amx():
                return "AMX"
        except RuntimeError:
            pass
    flags = _cpu_flags()
    if "amx_bf16" in flags and init_amx is None:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def matmul_rate(dtype: torch.dtype, size: int = CALIBRATION_SIZE, repeats: int = 5, device: torch.device | None = None) -> float:
    """FLOP/s of the fastest of `repeats` (size x size) matrix products in `dtype` on `device`."""
    device = device or torch.device("cpu")
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)  # warm up: the first call pays for allocation and kernel choice
    wait()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        wait()
        times.append(time.perf_counter() - started)
    return 2.0 * size**3 / max(min(times), 1e-9)


def calibrate(size: int = CALIBRATION_SIZE, repeats: int = 5) -> float:
    """How many times faster a bf16 (size x size) matrix product runs than an fp32 one here."""
    return matmul_rate(torch.bfloat16, size, repeats) / matmul_rate(torch.float32, size, repeats)


def _cache_path(name: str = "cpu-precision.json") -> Path:
    root = Path(os.environ.get("UNMASK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unmask")
    return root / name


def _cached(name: str, key: str, measure) -> float:
    """The number kept under `key` in the cache file `name`, measured once by `measure()`."""
    path = _cache_path(name)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    value = measure()
    _store_cached(name, key, value, known)
    return value


def _store_cached(name: str, key: str, value: float, known: dict | None = None) -> None:
    path = _cache_path(name)
    if known is None:
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
    try:  # a cache that cannot be written only means measuring again next time
        from unmask.storage.files import atomic_write_text

        atomic_write_text(path, json.dumps({**known, key: value}, indent=1))
    except OSError:
        pass


def _cached_gain(key: str) -> float:
    """The calibrated gain for `key`, measured once and kept in the cache file."""
    return _cached("cpu-precision.json", key, calibrate)


def _device_key(device: torch.device) -> str:
    """What a measured peak holds for: the device model, torch, and on a CPU the threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}"
    return f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads"


@dataclass(frozen=True)
class GpuPeak:
    """A GPU's dense peak from its data sheet (TFLOPS; no 2:4 sparsity)."""

    name: str
    matches: Callable[[str], bool]
    bf16: float
    fp32: float


GPU_PEAKS: dict[str, GpuPeak] = {
    "h200": GpuPeak("NVIDIA H200", lambda n: "H200" in n, 989.4, 66.9),
    "h100-sxm": GpuPeak("NVIDIA H100 SXM", lambda n: "H100" in n and "PCIe" not in n, 989.4, 66.9),
    "h100-pcie": GpuPeak("NVIDIA H100 PCIe", lambda n: "H100" in n and "PCIe" in n, 756.5, 51.2),
    "a100": GpuPeak("NVIDIA A100", lambda n: "A100" in n, 312.0, 19.5),
    "l40s": GpuPeak("NVIDIA L40S", lambda n: "L40S" in n, 362.1, 91.6),
    "l4": GpuPeak("NVIDIA L4", lambda n: n.split()[-1:] == ["L4"], 121.0, 30.3),
}
"""Known GPUs by `--peak-tflops` name: bf16 tensor-core and fp32 dense TFLOPS from NVIDIA's data sheets."""


@dataclass(frozen=True)
class Peak:
    """The FLOP/s one device (one process's share of a CPU) can do at most, and where the figure comes from."""

    flops: float
    source: str


def peak_flops(device: torch.device, dtype: torch.dtype | None, choice: str = "auto") -> Peak:
    """The peak MFU is measured against (`--peak-tflops`): `auto` takes the data sheet of a known
    GPU, else measures a matrix product in the training precision (cached per device model,
    torch version and thread count); `measure` always measures; a `GPU_PEAKS` name takes that
    entry, refused when it is not this device; a number is that many TFLOPS."""
    precision = "bf16" if dtype is not None else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    if choice in GPU_PEAKS:
        entry = GPU_PEAKS[choice]
        if device.type != "cuda" or not entry.matches(name):
            raise UnmaskError(
                f"--peak-tflops {choice}: that is the {entry.name}'s peak, and this device is {name}; give auto, measure or a number"
            )
    elif choice == "auto" and device.type == "cuda":
        entry = next((e for e in GPU_PEAKS.values() if e.matches(name)), None)
    else:
        entry = None
    if entry is not None:
        tflops = entry.bf16 if dtype is not None else entry.fp32
        return Peak(tflops * 1e12, f"{entry.name}'s data sheet: {tflops:g} dense {precision} TFLOPS")
    if choice not in ("auto", "measure"):
        try:
            tflops = float(choice)
        except ValueError:
            raise UnmaskError(f"--peak-tflops {choice}: give auto, measure, a number of TFLOPS or one of {', '.join(GPU_PEAKS)}") from None
        if not tflops > 0:
            raise UnmaskError(f"--peak-tflops {choice}: must be more than 0")
        return Peak(tflops * 1e12, f"--peak-tflops {choice}")
    return _measured_peak(device, dtype)


def _measured_peak(device: torch.device, dtype: torch.dtype | None, again: bool = False) -> Peak:
    """The cached matrix-product peak of this device, measured if there is none; `again`
    measures once more (longer) and keeps and caches the higher of the two."""
    precision = "bf16" if dtype is not None else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    size = 8192 if device.type == "cuda" else CALIBRATION_SIZE
    key = f"{_device_key(device)}|{precision}|{size}"
    rate = _cached("matmul-peak.json", key, lambda: matmul_rate(dtype or torch.float32, size, device=device))
    if again:
        rate = max(rate, matmul_rate(dtype or torch.float32, size, repeats=20, device=device))
        _store_cached("matmul-peak.json", key, rate)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return Peak(rate, f"measured: a {size} x {size} {precision} matrix product on {name}{threads}, {rate / 1e12:.3g} TFLOPS")


def remeasured_peak(peak: Peak, device: torch.device, dtype: torch.dtype | None) -> Peak:
    """A measured peak that a run went past (an MFU over 100%, because the peak was measured
    while the machine was busy and cached): measured again, longer, the higher of that and the
    cache kept, and cached for the next run. Only a matrix product's rate is ever cached, never
    a rate a run reached (a model-FLOPs count). A peak that was not measured (a data sheet,
    --peak-tflops) stays."""
    if not peak.source.startswith("measured"):
        return peak
    return _measured_peak(device, dtype, again=True)


def _proc_status(field: str) -> int | None:
    """A memory line of /proc/self/status in bytes (None: not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_in_use(device: torch.device) -> int:
    """Bytes in use now: the CUDA tensors allocated, or on a CPU the process's resident memory."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status("VmRSS") or 0


def peak_memory(device: torch.device) -> int:
    """Bytes at most in use since the last `reset_peak_memory`: CUDA's allocator peak, or the
    process's resident peak (VmHWM; the lifetime peak from getrusage where there is none)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _proc_status("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def reset_peak_memory(device: torch.device) -> None:
    """Start `peak_memory` again from what is in use now (Linux resets VmHWM through clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        pass


class TensorMemory:
    """The peak bytes of tensor storage while it is entered, counted op by op: what CUDA's
    allocator reports as its peak (`torch.cuda.max_memory_allocated`), measured on any device.

    On a CPU, resident memory is no measure of a step: the C allocator keeps what earlier steps
    freed and hands it out again unseen, and gives a page back to the system or not as it
    likes. This counts every storage an op makes (weights, gradients, activations, the
    head's logits, autocast's copies) from the moment it is made until it is freed, so it
    counts what `plan.estimate_memory` estimates. Each op pays a Python call: for a step
    measured on its own, not for training. Not seen: a storage an op grows in place
    (`resize_`, `out=`), rare in a training step.

        with TensorMemory(existing_tensors) as memory:
            step()
        memory.peak  # bytes
    """

    def __init__(self, existing: list[torch.Tensor]):
        from torch.utils.weak import WeakIdKeyDictionary

        self._seen = WeakIdKeyDictionary()
        self.live = 0
        for tensor in existing:  # in use already: counted, and never counted again when an op returns it
            storage = tensor.untyped_storage()
            if storage not in self._seen:
                self._seen[storage] = True
                self.live += storage.nbytes()
        self.peak = self.live
        self._mode = None

    def _freed(self, size: int) -> None:
        self.live -= size

    def _made(self, output, inputs) -> None:
        import weakref

        from torch.utils._pytree import tree_leaves

        used = None
        for leaf in tree_leaves(output):
            if not isinstance(leaf, torch.Tensor) or leaf.device.type == "meta":
                continue
            storage = leaf.untyped_storage()
            if storage in self._seen:
                continue
            if used is None:  # a view or an in-place result of an input holds no new memory
                used = {
                    t.untyped_storage().data_ptr() for t in tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.device.type != "meta"
                }
            if storage.data_ptr() in used:
                continue
            size = storage.nbytes()
            self._seen[storage] = True
            weakref.finalize(storage, self._freed, size)
            self.live += size
            self.peak = max(self.peak, self.live)

    def __enter__(self) -> TensorMemory:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                output = func(*args, **(kwargs or {}))
                tracker._made(output, (args, kwargs))
                return output

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


FORCE_CPU_PRECISION = "UNMASK_CPU_PRECISION"
"""Environment variable: `bf16` or `fp32` makes `--precision auto` on a CPU choose that, without
detection (so that the test suite can run with either choice on any CPU)."""


def cpu_precision() -> Precision:
    """bf16 autocast on a CPU where it is faster, confirmed by calibration; fp32 elsewhere."""
    forced = os.environ.get(FORCE_CPU_PRECISION, "")
    if forced in ("bf16", "fp32"):
        return Precision(torch.bfloat16 if forced == "bf16" else None, f"{forced}: {FORCE_CPU_PRECISION}={forced}")
    if forced:
        raise UnmaskError(f"{FORCE_CPU_PRECISION}={forced}: give bf16 or fp32 (or unset it)")
    hardware = cpu_bf16_hardware()
    if hardware is None:
        return Precision(None, "fp32: this CPU has neither AMX nor AVX512-BF16, so bf16 matrix products would be slower")
    key = f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    gain = _cached_gain(key)
    if gain >= CALIBRATION_GAIN:
        return Precision(
            torch.bfloat16, f"bf16 autocast: this CPU has {hardware}, and a bf16 matrix product ran {gain:.1f}x as fast as fp32"
        )
    return Precision(None, f"fp32: this CPU has {hardware}, but a bf16 matrix product ran only {gain:.1f}x as fast as fp32 here")


def choose_precision(device: torch.device, precision: str) -> Precision:
    """`--precision auto|fp32|bf16` on `device`, with the reason."""
    if precision == "fp32":
        return Precision(None, "fp32: --precision fp32")
    if precision == "bf16":
        return Precision(torch.bfloat16, "bf16 autocast: --precision bf16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, f"bf16 autocast: {torch.cuda.get_device_name(device)} supports it")
        return Precision(None, f"fp32: {torch.cuda.get_device_name(device)} has no bf16")
    if device.type == "cpu":
        return cpu_precision()
    return Precision(None, f"fp32: bf16 autocast is not chosen automatically on {device.type}")


def reporting_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for numbers a user reports (held-out metrics, scores, fill
    probabilities, embeddings, probes): fp32 unless bf16 is asked for by name, so that the same
    command gives the same number on any machine. `auto` here means fp32, not "what is fastest"."""
    return torch.bfloat16 if precision == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for `dtype` on `device`; does nothing for fp32 (`dtype` None)."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


CUBLAS_WORKSPACE = ":4096:8"


def make_deterministic() -> None:
    """Bit-identical arithmetic from run to run on the same GPU: deterministic algorithms
    (an op without one raises instead of silently varying), cuBLAS's fixed workspace (set
    before the first CUDA call), cuDNN without autotuning, no TF32, and SDPA without the
    memory-efficient kernel, whose backward adds in whatever order its threads finish."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.enable_mem_efficient_sdp(False)
