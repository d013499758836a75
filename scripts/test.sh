#!/usr/bin/env bash
# Install the dev environment and run the whole test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check voxbridge tests scripts
exec .venv/bin/python -m pytest "$@"
