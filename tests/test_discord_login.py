"""`voxbridge run` against a Discord API that rejects the token, and one that cannot be reached:
one clear line and exit 2, or retries with backoff; never a traceback of the task tree.
Discord's REST base is pointed at a loopback HTTP server (py-cord's `Route.BASE`)."""

import http.server
import logging
import os
import signal
import threading

import attrs
import discord
import pytest

from voxbridge.discord import adapter


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # GET /api/v10/users/@me: what py-cord's login asks
        body = b'{"message": "401: Unauthorized", "code": 0}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def daemon_settings(settings):
    return attrs.evolve(settings, api=attrs.evolve(settings.api, port=0))


def test_rejected_token_is_one_line_and_exit_2(daemon_settings, monkeypatch, caplog):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(discord.http.Route, "API_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/api/v10")
    monkeypatch.setattr(adapter, "check_opus", lambda: None)
    monkeypatch.setenv("DISCORD_TOKEN", "bogus-token-value")
    caplog.set_level(logging.INFO)
    try:
        rc = adapter.run_daemon(daemon_settings)
    finally:
        server.shutdown()
    assert rc == 2
    failed = [r.getMessage() for r in caplog.records if "discord_login_failed" in r.getMessage()]
    assert len(failed) == 1 and "Reset Token" in failed[0]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
    assert "bogus-token-value" not in caplog.text


def test_unreachable_discord_is_retried_with_backoff(daemon_settings, monkeypatch, caplog):
    # a port nobody listens on: connection refused, like Discord being unreachable
    monkeypatch.setattr(discord.http.Route, "API_BASE_URL", "http://127.0.0.1:9/api/v10")
    monkeypatch.setattr(adapter, "check_opus", lambda: None)
    monkeypatch.setenv("DISCORD_TOKEN", "bogus-token-value")
    caplog.set_level(logging.INFO)

    class StopAfterRetries(logging.Handler):  # stop the daemon (as systemd would) after 3 tries
        seen = 0

        def emit(self, record):
            if "discord_unreachable" in record.getMessage():
                self.seen += 1
                if self.seen == 3:
                    os.kill(os.getpid(), signal.SIGTERM)

    stopper = StopAfterRetries()
    logging.getLogger("voxbridge.discord").addHandler(stopper)
    try:
        rc = adapter.run_daemon(daemon_settings)
    finally:
        logging.getLogger("voxbridge.discord").removeHandler(stopper)
    retries = [r.getMessage() for r in caplog.records if "discord_unreachable" in r.getMessage()]
    assert rc == 0 and len(retries) >= 2
    assert "retry_in_s=1" in retries[0] and "retry_in_s=2" in retries[1]  # backoff grows
    assert not [r for r in caplog.records if r.exc_info]
    assert "bogus-token-value" not in caplog.text
