#!/usr/bin/env bash
# Set up (see setup.sh), install headless Chromium for the browser tests, and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
. .venv/bin/activate
python -m pytest -q "$@"
