"""Operating the daemon: control API, metrics, systemd notification."""
