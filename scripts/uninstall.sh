#!/usr/bin/env bash
# Remove the VoxBridge service (keeps /etc/voxbridge and /var/lib/voxbridge unless --purge).
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "uninstall.sh: run as root" >&2; exit 1; }
systemctl disable --now voxbridge 2>/dev/null || true
rm -f /etc/systemd/system/voxbridge.service
systemctl daemon-reload 2>/dev/null || true
rm -rf /opt/voxbridge
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf /etc/voxbridge /var/lib/voxbridge
  userdel voxbridge 2>/dev/null || true
fi
echo "uninstall.sh: done"
