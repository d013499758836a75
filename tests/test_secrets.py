"""Secrets never leave: a full run with a webhook key in the URL, an HMAC secret, an API key
header and an API token; every byte the commands print, log or store is searched for them."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx
import trio

from .helpers import daemon_process

SECRETS = {"hook": "HOOKKEY-9f8e7d", "hmac": "HMACSECRET-1a2b3c", "apikey": "APIKEY-5e6f7a", "api": "APITOKEN-4d4d4d"}


def run(args, env, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "voxbridge", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


async def test_no_secret_appears_in_any_output_log_or_store(tmp_path, agent_server):
    async def agent(req, resp):
        if "tech" in req.path:
            await resp.respond(500, {"error": "boom"})  # exercise the error paths too
        else:
            await resp.respond(200, {"output": "All good."})

    url = await agent_server(agent)
    (tmp_path / "agents.toml").write_text(
        '[[agents]]\nid = "general"\nkind = "n8n"\nurl = "${GENERAL_URL}"\nhmac_secret = "${HMAC}"\n'
        'headers = { "X-Api-Key" = "${APIKEY}" }\n'
        '[[agents]]\nid = "tech"\nkind = "webhook"\nurl = "${TECH_URL}"\nretries = 1\n'
        '[[rules]]\nid = "bugs"\nagents = ["tech"]\nmatch = { keywords = ["bug"] }\n'
    )
    env = {
        **os.environ,
        "GENERAL_URL": f"{url}/webhook/general/{SECRETS['hook']}",
        "TECH_URL": f"{url}/tech/{SECRETS['hook']}",
        "HMAC": SECRETS["hmac"],
        "APIKEY": SECRETS["apikey"],
        "VOXBRIDGE_API_TOKEN": SECRETS["api"],
        "VOXBRIDGE_LOG__LEVEL": "debug",
        "VOXBRIDGE_API__PORT": "0",
        "VOXBRIDGE_STORE__URL": f"sqlite:///{tmp_path}/v.db",
    }
    outputs = []

    def sync_runs():
        for args in (
            [
                "simulate",
                "--fast",
                "--no-progress",
                "--out",
                str(tmp_path / "sim"),
                "--say",
                "alice:what time is it",
                "--say",
                "bob@0.5:there is a bug in my code",
            ],
            ["say", "--user", "carol", "hello there"],
            ["say", "--user", "dave", "another bug report"],
            ["check", "--reach"],
            ["config"],
        ):
            r = run(args, env, tmp_path)
            outputs.extend([r.stdout, r.stderr])
        daemon = daemon_process(env, tmp_path)
        try:
            port = None
            deadline = time.time() + 120
            lines = []
            while port is None and time.time() < deadline:
                line = daemon.stdout.readline()
                lines.append(line)
                if "event=api_listening" in line:
                    port = int(line.split("port=")[1].split()[0])
            assert port, "".join(lines)
            auth = {"authorization": f"Bearer {SECRETS['api']}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                for path in ("/health", "/status", "/agents", "/metrics"):
                    outputs.append(http.get(path, headers=auth).text)
                outputs.append(http.post("/reload", headers=auth).text)
                outputs.append(http.post("/voice/join", headers={"authorization": "Bearer wrong"}, json={}).text)
            daemon.terminate()
            out, _ = daemon.communicate(timeout=60)
            outputs.extend(lines + [out])
        finally:
            if daemon.poll() is None:
                daemon.kill()

    await trio.to_thread.run_sync(sync_runs)
    outputs.append((tmp_path / "sim" / "log.json").read_text())
    for db in (tmp_path / "v.db", tmp_path / "sim" / "voxbridge.db"):
        conn = sqlite3.connect(db)
        outputs.append(
            json.dumps(
                [
                    list(r)
                    for t in ("turns", "sessions", "routing_decisions")
                    for r in conn.execute(f"select * from {t}")
                ]
            )
        )
        conn.close()
    everything = "\n".join(outputs)
    assert "All good." in everything and "http_500" in everything  # the runs really happened, errors included
    for name, secret in SECRETS.items():
        assert secret not in everything, f"{name} secret leaked"
