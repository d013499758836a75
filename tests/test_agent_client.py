"""The agent client against real HTTP servers on loopback that misbehave on purpose."""

import json

import attrs
import pytest
import trio

from voxbridge.agents.client import call_agent, make_http_client
from voxbridge.agents.config import AgentSpec
from voxbridge.errors import AgentError

PAYLOAD = {"text": "hello", "turnNumber": 1}


def spec(url, **kw):
    return AgentSpec(**{"id": "t", "name": "T", "kind": "n8n", "url": url, "timeout_s": 2.0, "retries": 2, **kw})


async def _call(agent):
    seen = []

    async def on_text(t):
        seen.append(t)

    async with make_http_client() as http:
        answer = await call_agent(agent, PAYLOAD, http, on_text, backoff_s=0.01)
    return answer, seen


async def test_streams_tokens_split_mid_json(agent_server):
    async def handler(req, resp):
        assert req.json() == PAYLOAD
        body = (
            b'{"type":"begin"}\n'
            + b"".join(json.dumps({"type": "item", "content": t}).encode() + b"\n" for t in ["One. ", "Two."])
            + b'{"type":"end"}\n'
        )
        await resp.start(200, {"content-type": "application/json"})
        for i in range(0, len(body), 7):  # 7-byte chunks: boundaries inside JSON objects
            await resp.send(body[i : i + 7])
            await trio.sleep(0.001)
        await resp.end()

    url = await agent_server(handler)
    answer, seen = await _call(spec(url))
    assert answer.text == "One. Two." and seen == ["One. ", "Two."]
    assert answer.first_byte_s is not None and answer.attempts == 1


async def test_retries_500_then_succeeds(agent_server):
    calls = []

    async def handler(req, resp):
        calls.append(1)
        if len(calls) < 3:
            await resp.respond(500, {"error": "boom"})
        else:
            await resp.respond(200, {"output": "third time"})

    answer, _ = await _call(spec(await agent_server(handler)))
    assert answer.text == "third time" and answer.attempts == 3 and len(calls) == 3


async def test_gives_up_after_retries_with_reason(agent_server):
    async def handler(req, resp):
        await resp.respond(503, "down")

    with pytest.raises(AgentError) as err:
        await _call(spec(await agent_server(handler), retries=1))
    assert err.value.reason == "http_503"


async def test_4xx_is_not_retried(agent_server):
    calls = []

    async def handler(req, resp):
        calls.append(1)
        await resp.respond(404, {"message": "not registered"})

    with pytest.raises(AgentError) as err:
        await _call(spec(await agent_server(handler)))
    assert err.value.reason == "http_404" and len(calls) == 1


async def test_connection_refused():
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AgentError) as err:
        await _call(spec(f"http://127.0.0.1:{port}/webhook/x", retries=1))
    assert err.value.reason == "connect_failed"
    assert str(port) not in str(err.value)  # no URL in the error


async def test_slow_first_byte_times_out(agent_server):
    async def handler(req, resp):
        await trio.sleep(5)

    with pytest.raises(AgentError) as err:
        await _call(spec(await agent_server(handler), timeout_s=0.3))
    assert err.value.reason == "timeout_first_byte"


async def test_stall_mid_stream_is_not_retried(agent_server):
    calls = []

    async def handler(req, resp):
        calls.append(1)
        await resp.start(200, {"content-type": "application/json"})
        await resp.send(b'{"type":"item","content":"partial"}\n')
        await trio.sleep(5)

    with pytest.raises(AgentError) as err:
        await _call(spec(await agent_server(handler), timeout_s=0.3))
    assert err.value.reason == "timeout_stream" and len(calls) == 1


async def test_oversized_answer_is_cut(agent_server):
    async def handler(req, resp):
        await resp.start(200, {"content-type": "text/plain"})
        for _ in range(100):
            await resp.send(b"x" * 4096)
        await resp.end()

    with pytest.raises(AgentError) as err:
        await _call(spec(await agent_server(handler), max_response_bytes=64 * 1024))
    assert err.value.reason == "too_large"


async def test_garbage_answer(agent_server):
    async def handler(req, resp):
        await resp.respond(200, b'{"definitely": "not an answer"', "application/json")

    with pytest.raises(AgentError) as err:
        await _call(spec(await agent_server(handler)))
    assert err.value.reason == "garbage"


def test_spec_repr_hides_url_and_headers():
    agent = AgentSpec(
        id="a",
        name="A",
        kind="n8n",
        url="https://user:pw@hooks.example.com/webhook/SECRETKEY",
        headers={"X-Api-Key": "SECRET"},
    )
    text = repr(agent) + repr(attrs.evolve(agent))
    assert "SECRETKEY" not in text and "pw" not in text and "SECRET" not in text
