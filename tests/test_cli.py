"""The commands as users run them (subprocesses of the installed `voxbridge`)."""

import os
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


def vbx(*args, cwd=ROOT, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "voxbridge", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_say_routes_and_streams_the_answer(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    r = vbx("say", "--demo-agents", "--store", db, "--user", "alice", "there is a bug in my code")
    assert r.returncode == 0, r.stderr
    assert "route: rule rule=code-questions -> tech" in r.stdout
    assert "You asked there is a bug in my code. The tech agent says hello." in r.stdout
    r2 = vbx("say", "--demo-agents", "--store", db, "--user", "alice", "what time is it")
    assert "route: fallback -> general" in r2.stdout and "answered" in r2.stdout


def test_say_failure_exits_1_without_leaking_the_url(tmp_path):
    r = vbx(
        "say",
        "--store",
        f"sqlite:///{tmp_path / 's.db'}",
        "hello",
        env={
            "GENERAL_WEBHOOK_URL": "http://127.0.0.1:1/webhook/SECRET-KEY-123",
            "TECH_WEBHOOK_URL": "http://127.0.0.1:1/x",
        },
    )
    assert r.returncode == 1
    assert "failed: connect_failed" in r.stdout
    assert "SECRET-KEY-123" not in r.stdout + r.stderr


def test_check_reports_file_line_and_reason(tmp_path):
    bad = tmp_path / "agents.toml"
    bad.write_text('[[agents]]\nid = "a"\nkind = "n8n"\nurl = "http://x/y"\ntimeout = 3\n')
    r = vbx("check", "--agents", str(bad))
    assert r.returncode == 2
    assert f"{bad}:5: agents[0].timeout: unknown key" in r.stderr
    r = vbx("check")
    assert r.returncode == 0 and "agents.toml: ok" in r.stdout


async def test_check_reach_probes_each_agent(tmp_path, agent_server):
    async def handler(req, resp):  # n8n's answers to a CORS preflight (see tests/test_n8n_real.py)
        assert req.method == "OPTIONS" and req.headers["access-control-request-method"] == "POST"
        if req.path == "/webhook/up":
            await resp.start(204, {"access-control-allow-methods": "OPTIONS, POST"}, length=0)
        else:  # unknown or inactive: n8n still answers a plain OPTIONS with 204, a preflight with this
            await resp.start(500, {"access-control-allow-methods": "OPTIONS"}, length=0)
        await resp.end()

    url = await agent_server(handler)
    f = tmp_path / "agents.toml"
    f.write_text(
        f'[[agents]]\nid = "up"\nkind = "n8n"\nurl = "{url}/webhook/up"\n\n'
        f'[[agents]]\nid = "gone"\nkind = "n8n"\nurl = "{url}/webhook/gone"\n\n'
        f'[[agents]]\nid = "down"\nkind = "n8n"\nurl = "http://127.0.0.1:1/x"\nconnect_timeout_s = 1\n'
    )
    r = await trio.to_thread.run_sync(lambda: vbx("check", "--reach", "--agents", str(f)))
    assert r.returncode == 1
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.strip().startswith("reach")}
    assert "ok" in lines["up"] and "HTTP 204" in lines["up"]
    assert "FAIL" in lines["gone"] and "no webhook registered for POST" in lines["gone"]
    assert "FAIL" in lines["down"] and "cannot reach" in lines["down"]


def test_bad_setting_from_env_is_named(tmp_path):
    r = vbx("check", env={"VOXBRIDGE_VAD__SILENCE_MS": "soon"})
    assert r.returncode == 2 and "VOXBRIDGE_VAD__SILENCE_MS: expected an integer" in r.stderr


def test_simulate_cli_end_to_end(tmp_path):
    out = tmp_path / "sim"
    r = vbx(
        "simulate",
        "--demo-agents",
        "--fast",
        "--no-progress",
        "--out",
        str(out),
        "--say",
        "alice:what is the capital of France",
        "--say",
        "bob@0.5:there is a bug in my code",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "2 turns (2 answered)" in r.stdout
    assert "route → tech (rule)" in r.stdout and "route → general (fallback)" in r.stdout
    assert (out / "channel.wav").stat().st_size > 48000 * 4 and (out / "log.json").exists()


def test_run_without_a_token_says_how_to_provide_one(tmp_path):
    r = vbx("run", env={"DISCORD_TOKEN": "", "CREDENTIALS_DIRECTORY": ""}, timeout=60)
    assert r.returncode == 2
    assert "no Discord bot token" in r.stderr and "DISCORD_TOKEN" in r.stderr


def test_asyncio_lives_only_in_the_discord_adapter():
    import re

    offenders = []
    for path in (ROOT / "voxbridge").rglob("*.py"):
        if path.parent.name == "discord":  # the adapter package: py-cord is asyncio
            continue
        if re.search(r"^\s*(import asyncio|from asyncio\b)", path.read_text(), re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
