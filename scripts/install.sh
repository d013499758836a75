#!/usr/bin/env bash
# Install VoxBridge as a systemd service (run as root from a checkout):
#   sudo bash scripts/install.sh            # /opt/voxbridge, /etc/voxbridge, user voxbridge
# Then put the bot token in /etc/voxbridge/discord-token and: systemctl enable --now voxbridge
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "install.sh: run as root" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/voxbridge
etc=/etc/voxbridge

id voxbridge >/dev/null 2>&1 || useradd --system --home /var/lib/voxbridge --shell /usr/sbin/nologin voxbridge
mkdir -p "$prefix" "$etc"
cp -r "$src"/voxbridge "$src"/scripts "$src"/pyproject.toml "$src"/README.md "$src"/agents.toml "$src"/config "$prefix"/
(cd "$prefix" && bash scripts/setup.sh)          # venv with the local voice, libopus
[[ -f $etc/voxbridge.toml ]] || install -m 0640 -g voxbridge "$src"/config/voxbridge.toml "$etc"/voxbridge.toml
[[ -f $etc/agents.toml ]] || install -m 0640 -g voxbridge "$src"/agents.toml "$etc"/agents.toml
for secret in discord-token api-token; do
  [[ -f $etc/$secret ]] || { install -m 0600 /dev/null "$etc/$secret"; echo "install.sh: fill in $etc/$secret"; }
done
[[ -f $etc/api-token && ! -s $etc/api-token ]] && head -c 32 /dev/urandom | base64 | tr -d '/+=' > "$etc"/api-token
install -m 0644 "$src"/systemd/voxbridge.service /etc/systemd/system/voxbridge.service
systemctl daemon-reload
echo "install.sh: done. Put the bot token in $etc/discord-token, then: systemctl enable --now voxbridge"
