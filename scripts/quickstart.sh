#!/usr/bin/env bash
# The main job on the bundled defaults, offline: continue pretraining the MiniLM-L6 starter
# on the bundled Python-docs sample, fill in masks with the trained model beside the starter
# it began from (whose MLM head is fresh, so its guesses are a random head's), and probe both
# on the offline downstream task, whose paragraphs the store holds out of pretraining.
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK_EXTRAS=starter,report,finetune bash scripts/setup.sh
. .venv/bin/activate
unmask prepare sample:pydocs --out runs/pydocs --doc-per blank-line --val-fraction 0.1 --overwrite
if [ -d runs/minilm-pydocs/model ]; then
  echo "runs/minilm-pydocs is already trained; delete it to train again"
else
  unmask train --config configs/minilm-pydocs.yaml
fi
echo
echo "Top-3 fills after the 100 steps (left) and before them (right):"
unmask fill runs/minilm-pydocs --against minilm-l6 --top-k 3 \
  "A class can inherit from another [MASK]." \
  "Use a try statement to catch an [MASK]." \
  "The import statement loads a [MASK] into the current namespace." \
  "The for loop iterates over the items of a [MASK]."
echo
echo "Downstream: a linear probe of each on which part of the docs a held-out paragraph is from:"
unmask downstream pydocs --models minilm-l6 runs/minilm-pydocs --mode probe --out runs/downstream
