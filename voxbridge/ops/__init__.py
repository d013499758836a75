"""Operating the daemon: Prometheus metrics and systemd notification."""
