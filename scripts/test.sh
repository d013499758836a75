#!/usr/bin/env bash
# Install the dev environment and run the whole test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# A real n8n for tests/test_n8n_real.py (cached outside the repo: minutes the first time, instant after).
if ! bash scripts/install_n8n.sh; then
  if [[ -n "${VOXBRIDGE_REQUIRE_SERVICES:-}" ]]; then
    echo "test.sh: n8n could not be installed and VOXBRIDGE_REQUIRE_SERVICES is set" >&2
    exit 1
  fi
  echo "test.sh: warning: n8n not installed; the real-n8n tests will skip" >&2
fi
.venv/bin/ruff check voxbridge tests scripts
.venv/bin/ruff format --check voxbridge tests scripts
.venv/bin/pyright  # [tool.pyright] in pyproject.toml: basic checks on voxbridge/
exec .venv/bin/python -m pytest "$@"
