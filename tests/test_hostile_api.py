"""Hostile input against the control API (issue 14, items 8 and 9): half-sent requests by the
thousand, malformed HTTP, deeply nested JSON, a body that never arrives, path-traversal and
newline ids; and log lines that a logged value cannot split or forge."""

import io
import json
import logging
import types

import attrs
import httpx
import pytest
import trio

from scripts.attack_connections import idle_connections_scenario
from voxbridge.api.control import ApiError, ControlApi
from voxbridge.logs import setup_logging

from .helpers import KV_FIELD
from .test_ops import TOKEN, agents_toml, start_daemon

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_settings(settings, tmp_path):
    (tmp_path / "agents.toml").write_text(agents_toml("http://127.0.0.1:9"))
    return attrs.evolve(
        settings,
        api=attrs.evolve(settings.api, port=0, read_timeout_s=1.0, keep_alive_s=1.0),
        agents=attrs.evolve(settings.agents, file=str(tmp_path / "agents.toml")),
    )


@pytest.fixture
def logged():
    """setup_logging(fmt) into a buffer for this test; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()

    def start(fmt: str = "kv") -> io.StringIO:
        setup_logging("info", fmt, stream=out)
        return out

    yield start
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


async def test_half_sent_requests_cannot_exhaust_the_daemons_descriptors():
    # The real daemon in a child process with 512 descriptors; 1,500 requests that never finish
    # their headers. Before: the h11 server held every one until accept() hit EMFILE and /health
    # stopped answering. Now: the cap evicts the oldest idle ones and the keep-alive timeout
    # closes the rest.
    r = await idle_connections_scenario(1500, daemon_nofile=512, health_every=300, wait_close_s=8.0)
    assert r["held"], r
    assert r["health_ok"] == r["health_probes"] >= 6 and r["daemon_fds_peak"] < 512 - 16, r
    assert r["still_open"] == 0 and r["closed_by_daemon"] == r["opened"], r


async def _raw(port: int, data: bytes, *, read_for: float = 5.0) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(read_for):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


async def test_malformed_http_deep_json_and_a_stalled_body_get_4xx(api_settings, stt, piper, nursery):
    daemon = await start_daemon(nursery, api_settings, stt, piper)
    port = daemon.api_port
    # Before: the h11 server dropped these connections without an answer.
    for garbage in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /health HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ):
        answer = await _raw(port, garbage)
        assert answer.startswith(b"HTTP/1.1 400"), (garbage, answer[:200])
    # Before: RecursionError -> 500.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for deep in (b"[" * 50_000, b'{"guild_id": ' + b'{"a": ' * 8000 + b"1" + b"}" * 8000 + b"}"):
            r = await http.post("/voice/join", content=deep, headers={**AUTH, "content-type": "application/json"})
            assert (r.status_code, r.json()["error"]) == (400, "malformed_json"), r.text
        assert (await http.get("/health")).status_code == 200
    # A body announced and never sent: 408 after read_timeout_s, not a connection held forever.
    with trio.fail_after(20):
        answer = await _raw(
            port,
            b"POST /voice/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{",
            read_for=15,
        )
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:300]
    # Headers that never end: closed by the keep-alive timeout (1 s here) with nothing answered.
    with trio.fail_after(20):
        assert await _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n", read_for=15) == b""
    assert daemon.api.server.stats.accepted >= 6 and daemon.api.server.stats.open <= 1
    daemon.request_stop()


async def test_ids_are_validated_so_no_recording_escapes_and_no_log_line_is_forged(
    api_settings, stt, piper, nursery, tmp_path, logged
):
    log_out = logged("kv")
    daemon = await start_daemon(nursery, api_settings, stt, piper)
    state = tmp_path / "state"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.api_port}", timeout=30) as http:
        bad = [
            {"guild_id": "../../x", "channel_id": "c1"},
            {"guild_id": "g1", "channel_id": "../../../etc/x"},
            {"guild_id": "g1\nts=2026 level=error event=forged", "channel_id": "c1"},
            {"guild_id": "g 1", "channel_id": "c1"},
            {"guild_id": "g1", "channel_id": ".hidden"},
            {"guild_id": "-rf", "channel_id": "c1"},
        ]
        for body in bad:
            r = await http.post("/voice/join", json=body, headers=AUTH)
            assert (r.status_code, r.json()["error"]) == (422, "invalid_field"), (body, r.text)
        r = await http.post("/voice/speak", json={"guild_id": "../x", "text": "hi"}, headers=AUTH)
        assert r.status_code == 422
        r = await http.post("/voice/leave", json={"guild_id": "a/b"}, headers=AUTH)
        assert r.status_code == 422
        ok = {"guild_id": "Guild_1-sim", "channel_id": 1234567890123}  # numbers are accepted as ids too
        assert (await http.post("/voice/join", json=ok, headers=AUTH)).json()["joined"] is True
        assert (
            await http.post("/voice/speak", json={"guild_id": "Guild_1-sim", "text": "Hello."}, headers=AUTH)
        ).status_code == 202
        with trio.fail_after(60):
            while daemon.voice.played_bytes("Guild_1-sim") == 0:
                await trio.sleep(0.1)
        left = (await http.post("/voice/leave", json={"guild_id": "Guild_1-sim"}, headers=AUTH)).json()
    assert (
        left["recording"].startswith(str(state / "recordings") + "/")
        and "Guild_1-sim-1234567890123-" in left["recording"]
    )
    assert not list(tmp_path.parent.glob("x-*.wav")) and not list(tmp_path.glob("*.wav"))
    lines = log_out.getvalue().splitlines()
    assert any("event=recording_written guild=Guild_1-sim " in line for line in lines), lines
    assert all(line.startswith("ts=") for line in lines) and not any("event=forged" in line for line in lines)
    daemon.request_stop()


def test_discord_voice_takes_only_snowflake_ids():
    api = ControlApi.__new__(ControlApi)
    api.voice = types.SimpleNamespace(kind="discord")
    assert api._id({"guild_id": "123456789012345678"}, "guild_id") == "123456789012345678"
    assert api._id({"guild_id": 123456789012345678}, "guild_id") == "123456789012345678"
    for value in ("g1", "12a", "1" * 21, "../1"):
        with pytest.raises(ApiError) as err:
            api._id({"guild_id": value}, "guild_id")
        assert err.value.status == 422


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_a_logged_value_cannot_split_or_forge_a_line(fmt, logged):
    out = logged(fmt)
    log = logging.getLogger("voxbridge.test")
    forged = "g1\nts=2026-01-01T00:00:00.000Z level=error logger=voxbridge.api event=forged"
    log.info("event=join guild=%s channel=%s n=%d took=%.2f error=%r", forged, "a b=c\r\x1b[31m\u2028", 3, 0.5, "x\ny")
    log.info(f"event=fstring detail={forged}")  # noqa: G004 (a message built before logging: still one line)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert not any("\x1b" in line or "\r" in line or "\u2028" in line for line in lines)
    if fmt == "kv":
        fields = KV_FIELD.findall(lines[0])  # what a key=value parser sees
        assert (
            [v for k, v in fields if k == "level"] == ["info"] and ("n", "3") in fields and ("took", "0.50") in fields
        )
        assert ("guild", json.dumps(forged)) in fields
    else:
        doc = json.loads(lines[0])
        assert (
            doc["guild"] == forged
            and doc["channel"] == "a b=c\r\x1b[31m\u2028"
            and doc["n"] == "3"
            and doc["error"] == "x\ny"
        )
        assert doc["level"] == "info" and doc["event"] == "join"
