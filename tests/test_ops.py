"""Operating the daemon: the control API over real loopback HTTP, sd_notify to a socket the test
owns, graceful drain of turns in flight, SIGHUP with a broken agents.toml, the systemd unit."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from voxbridge.audio import STT_RATE
from voxbridge.audio.convert import resample, split_frames
from voxbridge.audio.wav import read_wav_mono
from voxbridge.daemon import Daemon
from voxbridge.ops.systemd import Notifier

from .conftest import need_binary
from .helpers import SpeechMaker, daemon_process, wer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-api-token"


def agents_toml(url: str, secret: str = "SECRETKEY123") -> str:
    return (
        f'[[agents]]\nid = "general"\nname = "General"\nkind = "n8n"\nurl = "{url}/webhook/{secret}"\nretries = 0\n'
        f'[[agents]]\nid = "tech"\nkind = "n8n"\nurl = "{url}/webhook/tech"\nretries = 0\n'
    )


@pytest.fixture
def daemon_settings(settings, tmp_path):
    return attrs.evolve(
        settings,
        api=attrs.evolve(settings.api, port=0),
        agents=attrs.evolve(settings.agents, file=str(tmp_path / "agents.toml")),
        daemon=attrs.evolve(settings.daemon, shutdown_grace_s=10.0),
    )


async def start_daemon(nursery, settings, stt, piper, token=TOKEN):
    env = {"VOXBRIDGE_API_TOKEN": token} if token else {}
    daemon = Daemon(settings, env=env, engines={"stt": stt, "tts": piper})
    await nursery.start(daemon.run)
    return daemon


async def test_api_endpoints_auth_errors_and_a_join_speak_leave_cycle(
    daemon_settings, stt, piper, agent_server, nursery, tmp_path
):
    async def agent(req, resp):
        await resp.respond(200, {"output": "ok"})

    url = await agent_server(agent)
    (tmp_path / "agents.toml").write_text(agents_toml(url))
    daemon = await start_daemon(nursery, daemon_settings, stt, piper)
    base = f"http://127.0.0.1:{daemon.api_port}"
    auth = {"authorization": f"Bearer {TOKEN}"}
    seen_text = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def call(method, path, **kw):
            r = await http.request(method, path, **kw)
            seen_text.append(r.text)
            return r

        r = await call("GET", "/health")
        assert r.status_code == 200 and r.json()["checks"] == {"stt": True, "store": True, "discord": None}
        assert (await call("GET", "/status")).json() == {"status": "ok", "detail": "send the bearer token for details"}
        detail = (await call("GET", "/status", headers=auth)).json()
        assert detail["config_version"] and [a["id"] for a in detail["agents"]] == ["general", "tech"]
        agents = (await call("GET", "/agents")).json()
        assert agents["default_agent"] == "general" and agents["agents"][0]["circuit"] == "closed"

        join = {"guild_id": "g1", "channel_id": "c1"}
        r = await call("POST", "/voice/join", json=join)
        assert (
            r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["error"] == "unauthorized"
        )
        assert (
            await call("POST", "/voice/join", json=join, headers={"authorization": "Bearer wrong"})
        ).status_code == 401
        bad = [
            ({"content": b"{not json", "headers": {**auth, "content-type": "application/json"}}, 400, "malformed_json"),
            ({"content": b"[1, 2]", "headers": {**auth, "content-type": "application/json"}}, 400, "bad_request"),
            (
                {"content": b"guild_id=g1", "headers": {**auth, "content-type": "application/x-www-form-urlencoded"}},
                415,
                "unsupported_media_type",
            ),
            ({"json": {"guild_id": "g1"}, "headers": auth}, 422, "invalid_field"),
            ({"json": {"guild_id": ["g1"], "channel_id": "c1"}, "headers": auth}, 422, "invalid_field"),
            ({"json": {"guild_id": "g1", "channel_id": "c" * 1000}, "headers": auth}, 422, "invalid_field"),
            (
                {
                    "content": b'{"guild_id": "' + b"x" * 70_000 + b'"}',
                    "headers": {**auth, "content-type": "application/json"},
                },
                413,
                "body_too_large",
            ),
        ]
        for kwargs, status, error in bad:
            r = await call("POST", "/voice/join", **kwargs)
            assert (r.status_code, r.json()["error"]) == (status, error), (kwargs.get("json"), r.text)
        assert (await call("GET", "/voice/join")).status_code == 405
        assert (await call("GET", "/nope")).json()["error"] == "not_found"
        assert (
            await call("POST", "/voice/speak", json={"guild_id": "g1", "text": "hi"}, headers=auth)
        ).status_code == 409

        assert (await call("POST", "/voice/join", json=join, headers=auth)).json()["joined"] is True
        text = "Welcome to the channel. The meeting starts in five minutes."
        r = await call("POST", "/voice/speak", json={"guild_id": "g1", "text": text}, headers=auth)
        assert r.status_code == 202 and r.json()["queued"] is True
        with trio.fail_after(30):
            while daemon.voice.played_bytes("g1") < 48000 * 4 * 3:  # ~3 s of speech, played in real time
                await trio.sleep(0.1)
            while daemon.control.channel("g1").playback.busy:
                await trio.sleep(0.1)
        await trio.sleep(0.3)
        left = (await call("POST", "/voice/leave", json={"guild_id": "g1"}, headers=auth)).json()
        assert left["left"] is True and left["played_s"] > 3
        assert (await call("POST", "/voice/leave", json={"guild_id": "g1"}, headers=auth)).status_code == 404
        metrics = (await call("GET", "/metrics")).text
        assert (
            'voxbridge_turns_total{outcome="answered"}' in metrics
            and "voxbridge_stage_latency_seconds_bucket" in metrics
        )
        assert 'voxbridge_agent_circuit_open{agent="general"} 0' in metrics
        for stage in ("vad", "stt", "route", "agent_first_byte", "tts_first_audio"):
            assert f'voxbridge_stage_latency_seconds_count{{stage="{stage}"}}' in metrics

        (tmp_path / "agents.toml").write_text("[[agents]]\nid = 'x'\nkind = 'n8n'\nurl = 'http://h/x'\nbogus = 1\n")
        r = await call("POST", "/reload", headers=auth)
        assert r.status_code == 422 and "agents.toml:5" in r.json()["detail"] and "bogus" in r.json()["detail"]
        assert [a["id"] for a in (await call("GET", "/agents")).json()["agents"]] == [
            "general",
            "tech",
        ]  # old config serves
        (tmp_path / "agents.toml").write_text(agents_toml(url).replace('"general"', '"general2"', 1))
        r = await call("POST", "/reload", headers=auth)
        assert r.status_code == 200 and r.json()["reloaded"] is True

    mono, rate = read_wav_mono(left["recording"])
    heard = (await stt.transcribe(resample(mono, rate, STT_RATE))).text
    assert wer(text, heard) <= 0.3, heard
    assert not any("SECRETKEY123" in t for t in seen_text)  # webhook keys never leave the daemon
    daemon.request_stop()


async def test_mutations_are_refused_without_a_configured_token(
    daemon_settings, stt, piper, agent_server, nursery, tmp_path
):
    (tmp_path / "agents.toml").write_text(agents_toml("http://127.0.0.1:9"))
    daemon = await start_daemon(nursery, daemon_settings, stt, piper, token=None)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.api_port}") as http:
        r = await http.post("/reload", headers={"authorization": "Bearer anything"})
        assert r.status_code == 403 and r.json()["error"] == "no_api_token_configured"
        assert (await http.get("/health")).status_code == 200
    daemon.request_stop()


async def test_sigterm_drain_lets_turns_in_flight_finish_and_stores_them(
    daemon_settings, stt, piper, agent_server, nursery, tmp_path
):
    release = trio.Event()
    calls = []

    async def slow_agent(req, resp):
        calls.append(req.json()["text"])
        await release.wait()
        await resp.respond(200, {"output": "Finished after the stop request."})

    url = await agent_server(slow_agent)
    (tmp_path / "agents.toml").write_text(agents_toml(url))
    daemon = Daemon(daemon_settings, env={}, engines={"stt": stt, "tts": piper})
    done = trio.Event()

    async def run():
        assert await daemon.run() == 0
        done.set()

    nursery.start_soon(run)
    with trio.fail_after(30):
        while daemon.control is None or daemon.voice is None or daemon.api_port is None:
            await trio.sleep(0.05)
    await daemon.voice.join("g1", "c1")
    handle = daemon.control.channel("g1").add_speaker("u1", "alice")
    for frame in split_frames(SpeechMaker(piper).discord("Please summarise my meeting notes.")):
        await handle.send(frame)
    with trio.fail_after(30):
        while not calls:
            await trio.sleep(0.05)
    store = daemon.control.services.store
    daemon.request_stop()  # what SIGTERM does
    await trio.sleep(0.3)
    assert not done.is_set()  # still draining: the turn is in flight
    rows = await store.list_turns()
    assert rows and rows[0]["status"] == "routed"
    release.set()
    with trio.fail_after(30):
        await done.wait()
    from voxbridge.store import open_store

    s = open_store(daemon_settings.store_url)
    [turn] = await s.list_turns()
    await s.aclose()
    assert turn["status"] == "answered" and turn["response"] == "Finished after the stop request."


async def test_grace_period_bounds_the_drain(daemon_settings, stt, piper, agent_server, nursery, tmp_path):
    async def hanging_agent(req, resp):
        await trio.sleep_forever()

    url = await agent_server(hanging_agent)
    (tmp_path / "agents.toml").write_text(agents_toml(url))
    settings = attrs.evolve(daemon_settings, daemon=attrs.evolve(daemon_settings.daemon, shutdown_grace_s=0.5))
    daemon = Daemon(settings, env={}, engines={"stt": stt, "tts": piper})
    result = []

    async def run():
        result.append(await daemon.run())

    nursery.start_soon(run)
    with trio.fail_after(30):
        while daemon.voice is None or daemon.api_port is None:
            await trio.sleep(0.05)
    await daemon.voice.join("g1", "c1")
    handle = daemon.control.channel("g1").add_speaker("u1", "alice")
    for frame in split_frames(SpeechMaker(piper).discord("Is anybody out there?")):
        await handle.send(frame)
    with trio.fail_after(30):
        while not daemon.control.channel("g1").turns_in_flight:  # the agent call hangs now
            await trio.sleep(0.05)
    daemon.request_stop()
    with trio.fail_after(10):
        while not result:
            await trio.sleep(0.05)
    from voxbridge.store import open_store

    s = open_store(settings.store_url)
    [turn] = await s.list_turns()
    await s.aclose()
    assert result == [0] and turn["status"] == "failed" and turn["error"].startswith("cancelled")


async def test_watchdog_pings_come_from_the_event_loop(tmp_path):
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "100000"})

    def drain():
        got = []
        while True:
            try:
                got.append(server.recv(4096).decode())
            except BlockingIOError:
                return got

    async with trio.open_nursery() as n:
        n.start_soon(notifier.watchdog)
        await trio.sleep(0.3)
        assert drain().count("WATCHDOG=1") >= 4
        time.sleep(0.5)  # noqa: ASYNC251 -- on purpose: the loop is stuck, so nothing pings
        assert drain() == []
        n.cancel_scope.cancel()
    server.close()


def test_sd_notify_ready_watchdog_sighup_and_stopping_in_a_real_process(tmp_path):
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(120)
    agents = tmp_path / "agents.toml"
    agents.write_text(agents_toml("http://127.0.0.1:9"))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(sock_path),
        "WATCHDOG_USEC": "400000",
        "VOXBRIDGE_API__PORT": "0",
        "VOXBRIDGE_GENERAL__STATE_DIR": str(tmp_path / "state"),
        "VOXBRIDGE_AGENTS__FILE": str(agents),
        "VOXBRIDGE_TTS__BACKEND": "none",
    }
    proc = daemon_process(env, tmp_path)
    messages = []
    try:
        while not any("READY=1" in m for m in messages):
            messages.append(server.recv(4096).decode())
        server.settimeout(5)
        pings = 0
        while pings < 3:
            if server.recv(4096).decode() == "WATCHDOG=1":
                pings += 1
        agents.write_text("[[agents]]\nid = 'broken'\n")  # invalid: no kind/url
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(server.recv(4096).decode())
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 0, out
    assert any(m.startswith("READY=1") and "STATUS=ready" in m for m in messages)
    assert "event=agents_reload_rejected reason=sighup" in out and "missing required key 'kind'" in out
    assert "event=stopped" in out


def test_systemd_unit_verifies(tmp_path):
    need_binary("systemd-analyze", "systemd")
    unit = (ROOT / "systemd" / "voxbridge.service").read_text()
    exe = Path(sys.executable).parent / "voxbridge"
    unit = unit.replace("/opt/voxbridge/.venv/bin/voxbridge", str(exe))
    path = tmp_path / "voxbridge.service"
    path.write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "voxbridge.service" in line]
    assert problems == [], problems
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "LoadCredential=discord-token" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "StateDirectory=voxbridge" in unit
