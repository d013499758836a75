#!/usr/bin/env bash
# Install n8n (pinned) from npm for the real-n8n tests and scripts/bench_agents.py (idempotent).
# Usage: scripts/install_n8n.sh [--print-bin]
#   Installs into ${VOXBRIDGE_N8N_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxbridge/n8n-<version>},
#   outside the repository, so a second run (and CI with that directory cached) is instant.
#   --print-bin: print the path of the n8n executable afterwards (nothing else on stdout).
#   --where:     print that path if n8n is installed, else exit 1; never installs.
# Needs Node.js 20 (node, npm) and the npm registry. The n8n dependency `xlsx` points at a
# tarball outside the registry that cannot be fetched: it is overridden with the registry's 0.18.5.
set -euo pipefail
N8N_VERSION=1.123.0
XLSX_VERSION=0.18.5
dir=${VOXBRIDGE_N8N_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxbridge/n8n-$N8N_VERSION}
bin="$dir/node_modules/.bin/n8n"
stamp="$dir/.voxbridge-installed"

if [[ "${1:-}" == "--where" ]]; then
  if [[ -f "$stamp" && -x "$bin" ]]; then echo "$bin"; exit 0; fi
  echo "n8n $N8N_VERSION is not installed in $dir: run scripts/install_n8n.sh" >&2
  exit 1
fi
if [[ -f "$stamp" && -x "$bin" ]]; then
  [[ "${1:-}" == "--print-bin" ]] && echo "$bin"
  exit 0
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "install_n8n: $tool not found; install Node.js 20 (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [[ "$node_major" != 20 && "$node_major" != 22 ]]; then
  echo "install_n8n: warning: n8n $N8N_VERSION supports Node 20/22, found $(node --version)" >&2
fi

mkdir -p "$dir"
cat >"$dir/package.json" <<EOF
{
  "name": "voxbridge-n8n",
  "private": true,
  "description": "n8n for the VoxBridge tests (written by scripts/install_n8n.sh)",
  "dependencies": { "n8n": "$N8N_VERSION" },
  "overrides": { "xlsx": "$XLSX_VERSION" }
}
EOF
echo "install_n8n: installing n8n $N8N_VERSION into $dir (several minutes the first time)" >&2
(cd "$dir" && npm install --no-audit --no-fund --loglevel=error >&2)
if [[ ! -x "$bin" ]]; then
  echo "install_n8n: npm finished but $bin is missing" >&2
  exit 1
fi
touch "$stamp"
echo "install_n8n: n8n $N8N_VERSION ready: $bin" >&2
[[ "${1:-}" == "--print-bin" ]] && echo "$bin"
exit 0
