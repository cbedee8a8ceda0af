"""The GPU check script, run end to end on the CPU with tiny shapes (`--dry-run`), as CI does:
every section runs, and the attention paths a CPU cannot run are refused by name."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_end_to_end_on_the_cpu_and_writes_its_table(tmp_path):
    out = tmp_path / "gpu_results.md"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    for row in ("CLI end to end on cpu", "--deterministic: killed and resumed vs straight | 0 (bit for bit)", "measured matmul peak"):
        assert row in table, row
    assert "--attention sdpa | " in table and " tokens/s, MFU " in table
    assert "--attention varlen | refused: unmask train: error: --attention varlen: torch's varlen attention runs on CUDA only" in table
    assert "### attention_bench.py" in table and "### compile_bench.py" in table and "failed:" not in table
