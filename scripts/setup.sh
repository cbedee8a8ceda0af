#!/usr/bin/env bash
# Create .venv and install unmask with the extras in $UNMASK_EXTRAS (default: everything the
# tests use: the offline starter checkpoint, charts, the web page, trackers, data formats,
# fine-tuning metrics).
# torch is pinned to 2.13.0 first so that pip takes the CPU build on machines that have it
# locally instead of pulling a multi-GB CUDA build; on a GPU machine install your torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${UNMASK_EXTRAS:-starter,report,serve,tracking,data,finetune,test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[$EXTRAS]"
