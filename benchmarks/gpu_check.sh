#!/usr/bin/env bash
# The GPU check in one command (about 6 minutes on an H200): installs unmask into the Python
# at hand (which must already have a CUDA torch), then runs benchmarks/gpu_check.py, which
# writes benchmarks/gpu_results.md for RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'" 
python -m pip install -q -e ".[bench,finetune,starter]" 2>/dev/null || python -m pip install -q --no-deps -e .
python benchmarks/gpu_check.py --out benchmarks/gpu_results.md "$@"
