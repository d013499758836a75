"""Against a real n8n 1.123.0 (installed by scripts/install_n8n.sh, started once per session on a
free loopback port with the workflows in tests/n8n/). Without n8n these tests skip, unless
VOXBRIDGE_REQUIRE_SERVICES is set: then they fail (CI installs it through scripts/test.sh)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import trio

from voxbridge.agents.client import build_request, call_agent, make_http_client
from voxbridge.agents.config import AgentSpec
from voxbridge.agents.health import probe_agent
from voxbridge.core.services import open_services
from voxbridge.errors import AgentError

from .conftest import service_missing
from .test_reliability import ask, one_agent

WORKFLOWS = sorted((Path(__file__).parent / "n8n").glob("*.json"))
STREAM, JSON_WF, ERROR, INACTIVE = "vbxStream0000001", "vbxJson000000001", "vbxError00000001", "vbxInactive00001"


@pytest.fixture(scope="session")
def n8n():
    import tempfile

    from voxbridge.sim.n8n_local import LocalN8n, N8nUnavailable

    # its own temp dir, not pytest's numbered ones: a concurrent pytest session may prune those
    with tempfile.TemporaryDirectory(prefix="voxbridge-n8n-") as folder:
        try:
            server = LocalN8n(Path(folder), WORKFLOWS)
            server.import_and_activate()
            server.start("vbx-json")
        except (N8nUnavailable, OSError) as exc:
            service_missing("n8n 1.123.0", exc)
        with server:
            yield server


def agent(n8n, path: str, **kw) -> AgentSpec:
    return AgentSpec(
        **{
            "id": "general",
            "name": "General",
            "kind": "n8n",
            "url": n8n.webhook(path),
            "timeout_s": 20.0,
            "total_timeout_s": 60.0,
            "retries": 0,
            **kw,
        }
    )


PAYLOAD = {"text": "what time is it", "turnNumber": 3, "agentId": "general", "userName": "alice"}


async def call(spec: AgentSpec, payload=PAYLOAD):
    pieces = []

    async def on_text(t):
        pieces.append((time.perf_counter(), t))

    async with make_http_client() as http:
        answer = await call_agent(spec, payload, http, on_text, backoff_s=0.05)
    return answer, pieces


async def last_execution(n8n, workflow_id: str, after: int = 0) -> dict:
    """n8n writes the execution once it ends (just after the answer): wait for it."""
    with trio.fail_after(20):
        while True:
            runs = [e for e in await trio.to_thread.run_sync(n8n.executions, workflow_id) if e["id"] > after]
            if runs:
                return runs[-1]
            await trio.sleep(0.1)


async def test_real_n8n_gzips_the_answer_we_ask_for(n8n):
    """The premise of the decoding: with our request headers n8n answers gzip."""
    spec = agent(n8n, "vbx-stream")
    body, headers = build_request(spec, PAYLOAD)
    async with httpx.AsyncClient() as http:
        async with http.stream("POST", spec.url, content=body, headers=headers) as resp:
            raw = b"".join([c async for c in resp.aiter_raw()])
    assert resp.status_code == 200 and resp.headers["content-encoding"] == "gzip"
    assert raw[:2] == b"\x1f\x8b"


async def test_streamed_answer_whole_in_order_and_progressive(n8n):
    """Respond, Wait 1 s, Respond: two pieces, decoded from gzip, the first spoken a second
    before the second arrives (not after the end of the stream)."""
    answer, pieces = await call(agent(n8n, "vbx-wait"))
    assert [t for _, t in pieces] == ["First part for alice.", " Second part, after a wait."]
    assert answer.text == "First part for alice. Second part, after a wait."
    assert pieces[1][0] - pieces[0][0] >= 0.5  # the Wait node's second lay between them
    assert answer.first_byte_s is not None and pieces[0][0] < pieces[-1][0]  # the first byte came before the end


async def test_streaming_json_and_text_answers(n8n):
    streamed, _ = await call(agent(n8n, "vbx-stream"))
    plain, _ = await call(agent(n8n, "vbx-json"))
    assert streamed.text == plain.text == "You said: what time is it. Turn 3."
    text, _ = await call(agent(n8n, "vbx-text"))  # "Respond with Text": n8n labels it text/html
    assert text.text == "Plain text for alice."
    async with httpx.AsyncClient() as http:
        raw = await http.post(n8n.webhook("vbx-text"), json=PAYLOAD)
    assert raw.headers["content-type"].startswith("text/html")  # so HTML is told by its text


async def test_payload_n8n_received_has_every_field_and_previous_turns(n8n, settings):
    """Two turns through the whole turn path; n8n's own execution record of the second shows
    the documented payload, with the first turn in context.previousTurns."""
    before = max([e["id"] for e in await trio.to_thread.run_sync(n8n.executions, STREAM)], default=0)
    cfg = one_agent(n8n.base + "/webhook", timeout_s=20.0)
    cfg = cfg.with_urls({"general": n8n.webhook("vbx-stream")})
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        first = await ask(services, "what time is it", user="alice", guild="g1")
        first_exec = await last_execution(n8n, STREAM, before)
        second = await ask(services, "and the date", user="alice", guild="g1")
        row = await services.store.get_turn(second.turn_id)
    assert first.status == second.status == "answered"
    assert row["response"] == "You said: and the date. Turn 2."
    body = n8n.received_body(await last_execution(n8n, STREAM, first_exec["id"]))
    for key in (
        "text",
        "userId",
        "userName",
        "guildId",
        "channelId",
        "conversationId",
        "sessionId",
        "agentId",
        "turnId",
        "turnNumber",
        "timestamp",
        "useStreaming",
        "context",
        "stt",
    ):
        assert key in body, key
    assert body["text"] == "and the date" and body["turnNumber"] == 2 and body["turnId"] == second.turn_id
    assert body["userName"] == "alice" and body["guildId"] == "g1" and body["agentId"] == "general"
    assert set(body["stt"]) >= {"language", "confidence", "durationMs"} and body["useStreaming"] is True
    assert body["context"]["previousTurns"] == [
        {
            "transcript": "what time is it",
            "response": "You said: what time is it. Turn 1.",
            "turnNumber": 1,
            "agentId": "general",
        }
    ]
    assert "userPreferences" in body["context"]


async def test_in_band_n8n_error_is_agent_error(n8n):
    with pytest.raises(AgentError) as err:
        await call(agent(n8n, "vbx-error"))
    assert err.value.reason == "agent_error" and "Fail" in err.value.detail
    assert (await last_execution(n8n, ERROR))["status"] == "error"


@pytest.mark.parametrize("path", ["vbx-inactive", "no-such-webhook"])
async def test_inactive_or_unknown_webhook_fails_clearly(n8n, path):
    with pytest.raises(AgentError) as err:
        await call(agent(n8n, path, retries=1))
    assert err.value.reason == "not_registered" and "2 attempt(s)" in err.value.detail
    assert path not in str(err.value)


async def test_reach_probe_tells_registered_from_unknown_without_triggering(n8n):
    before = {wf: len(await trio.to_thread.run_sync(n8n.executions, wf)) for wf in (JSON_WF, INACTIVE)}
    async with make_http_client() as http:
        ok = await probe_agent(agent(n8n, "vbx-json"), http)
        inactive = await probe_agent(agent(n8n, "vbx-inactive"), http)
        unknown = await probe_agent(agent(n8n, "no-such-webhook"), http)
    assert ok.ok and "registered for POST" in ok.detail
    assert inactive.state == unknown.state == "FAIL" and "no webhook registered for POST" in unknown.detail
    await trio.sleep(0.5)
    after = {wf: len(await trio.to_thread.run_sync(n8n.executions, wf)) for wf in (JSON_WF, INACTIVE)}
    assert after == before  # the probe ran no workflow


def test_check_reach_command_against_real_n8n(n8n, tmp_path):
    from .test_cli import vbx

    agents = tmp_path / "agents.toml"
    agents.write_text(
        f'[[agents]]\nid = "good"\nkind = "n8n"\nurl = "{n8n.webhook("vbx-json")}"\n'
        f'[[agents]]\nid = "gone"\nkind = "n8n"\nurl = "{n8n.webhook("vbx-inactive")}"\n'
    )
    r = vbx("check", "--agents", str(agents), "--reach")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.strip().startswith("reach ")}
    assert " ok " in lines["good"] and "registered for POST" in lines["good"]
    assert " FAIL " in lines["gone"] and "vbx-inactive" not in r.stdout


def test_the_loopback_replay_of_n8n_404_is_faithful(n8n):
    """tests/test_agent_streams.py replays n8n's 404 "not registered" (what n8n answers for ~10 s
    after a restart): the real one has the same message (but the path) and hint."""
    import json

    from voxbridge.agents.client import is_n8n_not_registered

    from .n8n_like import NOT_REGISTERED_404

    req = httpx.post(n8n.webhook("general"), json=PAYLOAD, headers={"accept-encoding": "gzip"})
    real, replay = req.json(), json.loads(NOT_REGISTERED_404)
    assert req.status_code == 404 and is_n8n_not_registered(404, req.content)
    assert real["message"] == replay["message"] and real["hint"] == replay["hint"] and real["code"] == 404


async def test_n8n_restart_is_ridden_through_by_retries(n8n, caplog):
    """Restart the real n8n and call it the moment /healthz is up: its webhooks are not (200
    "starting up", 404 "Cannot POST", 404 "not registered"). Those are retried within `retries`
    (nothing ran) and the answer arrives; no other failure is retried. Last in this file: it
    restarts the session's n8n (same port and database) and leaves it serving."""
    n8n.stop()
    n8n.launch()
    await trio.to_thread.run_sync(n8n.wait_healthz)
    started = time.perf_counter()
    with caplog.at_level("WARNING", logger="voxbridge.agents"):
        answer, _ = await call(agent(n8n, "vbx-json", retries=7))  # backoff up to 0.25 * (2^7 - 1) = 32 s
    reasons = [
        r.getMessage().split("reason=")[1].split()[0] for r in caplog.records if "event=agent_retry" in r.getMessage()
    ]
    assert answer.text == "You said: what time is it. Turn 3."
    assert answer.attempts == len(reasons) + 1 >= 2, reasons  # it was not ready at /healthz 200
    assert set(reasons) <= {"not_registered", "n8n_starting"}, reasons
    print(f"restart: retried {reasons}, answered after {time.perf_counter() - started:.1f} s")  # shown with -s
    await trio.to_thread.run_sync(lambda: n8n.wait_ready("vbx-stream"))
