"""Agent answers as real servers send them: compressed (n8n gzips), with keepalives (SSE
`: ping`, n8n keepalive lines), n8n's 404 while restarting, OpenAI streams that end in an error.
Real HTTP servers on loopback; the n8n-shaped ones follow tests/n8n_like.py."""

import json
import time
import zlib

import pytest
import trio

from voxbridge.agents.client import call_agent, make_http_client
from voxbridge.agents.config import AgentSpec, parse_agents
from voxbridge.errors import AgentError

from .n8n_like import (
    N8N_HEADERS,
    NOT_REGISTERED_404,
    Compressed,
    accepts_gzip,
    gzip_bytes,
    n8n_line,
)

PAYLOAD = {"text": "hello", "turnNumber": 1}


def spec(url, **kw):
    return AgentSpec(**{"id": "t", "name": "T", "kind": "n8n", "url": url, "timeout_s": 2.0, "retries": 0, **kw})


async def call(agent, on_text=None):
    seen = []

    async def collect(t):
        seen.append(t)
        if on_text:
            await on_text(t)

    async with make_http_client() as http:
        answer = await call_agent(agent, PAYLOAD, http, collect, backoff_s=0.01)
    return answer, seen


async def failure(agent) -> AgentError:
    with pytest.raises(AgentError) as err:
        await call(agent)
    return err.value


# --- compression ------------------------------------------------------------------------------------


async def test_gzipped_n8n_stream_is_decoded_piece_by_piece(agent_server):
    """n8n's streaming answer, gzipped and flushed per line: each piece is spoken as it arrives,
    not after the end (the server waits until the client has the first piece)."""
    first_piece_heard = trio.Event()
    words = ["The first ", "piece, ", "then the rest."]

    async def handler(req, resp):
        assert accepts_gzip(req.headers), req.headers
        out = Compressed(resp)
        await out.start()
        await out.send(n8n_line("begin"))
        await out.send(n8n_line("item", words[0]))
        with trio.fail_after(5):
            await first_piece_heard.wait()  # the client decoded it from the flushed gzip block
        for w in words[1:]:
            await out.send(n8n_line("item", w))
        await out.send(n8n_line("end"))
        await out.end()

    async def on_text(t):
        first_piece_heard.set()

    answer, seen = await call(spec(await agent_server(handler)), on_text)
    assert seen == words and answer.text == "".join(words).strip()


async def test_gzipped_respond_to_webhook_stream_split_anywhere(agent_server):
    """The captured Respond-to-Webhook stream, gzipped, its wire bytes cut into 3-byte chunks."""
    inner = json.dumps({"output": "You asked: what time is it. Here is my answer.", "agentId": "general", "turn": 3})
    body = n8n_line("begin") + n8n_line("item", inner) + n8n_line("end")
    wire = gzip_bytes(body)

    async def handler(req, resp):
        await resp.start(200, {**N8N_HEADERS, "content-encoding": "gzip"})
        for i in range(0, len(wire), 3):
            await resp.send(wire[i : i + 3])
        await resp.end()

    answer, _ = await call(spec(await agent_server(handler)))
    assert answer.text == "You asked: what time is it. Here is my answer."


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw"])
async def test_compressed_json_answer_of_a_kib_or_more(agent_server, coding):
    text = "A long answer. " * 100  # 1.5 KiB: n8n gzips JSON bodies from 1 KiB

    async def handler(req, resp):
        out = Compressed(resp, coding)
        await out.start()
        await out.send(json.dumps({"output": text}), flush=False)
        await out.end()

    answer, _ = await call(spec(await agent_server(handler)))
    assert answer.text == text.strip() and answer.first_byte_s is not None


async def test_compression_bomb_is_refused_without_inflating_it(agent_server):
    """8 MiB of zeros in ~8 KiB of gzip: the cap (64 KiB) applies to the decoded bytes."""
    bomb = gzip_bytes(b'{"output": "' + b"0" * (8 << 20) + b'"}')
    assert len(bomb) < 64 * 1024

    async def handler(req, resp):
        await resp.start(200, {**N8N_HEADERS, "content-encoding": "gzip"}, length=len(bomb))
        await resp.send(bomb)
        await resp.end()

    err = await failure(spec(await agent_server(handler), max_response_bytes=64 * 1024))
    assert err.reason == "too_large" and "decompressed" in err.detail


async def test_wire_bytes_are_capped_too(agent_server):
    async def handler(req, resp):
        out = Compressed(resp)
        await out.start()
        for _ in range(200):  # incompressible: wire bytes grow as fast as decoded ones
            await out.send(n8n_line("item", zlib.compress(bytes(range(256)) * 8).hex()))
        await out.end()

    err = await failure(spec(await agent_server(handler), max_response_bytes=64 * 1024))
    assert err.reason == "too_large"


@pytest.mark.parametrize(
    ("headers", "body", "detail"),
    [
        # gzip sent without saying so: binary, never spoken
        ({}, gzip_bytes(n8n_line("item", "hidden")), "UTF-8"),
        ({"content-type": "application/octet-stream"}, bytes(range(256)), "UTF-8"),
        ({"content-encoding": "gzip"}, b"this is not gzip at all", "gzip"),
        ({"content-encoding": "gzip"}, gzip_bytes(b'{"output": "cut off here"}')[:-10], "ended early"),
        ({"content-encoding": "zstd"}, b"(\xb5/\xfd", "Content-Encoding"),
        ({"content-type": "text/html"}, b"<!DOCTYPE html><html><body>n8n editor</body></html>", "HTML"),
        ({}, b"plain \x00\x01 text with control bytes", "control"),
    ],
    ids=["undeclared-gzip", "binary", "bad-gzip", "truncated-gzip", "unsupported-coding", "html", "control-bytes"],
)
async def test_garbage_is_failed_never_answered(agent_server, headers, body, detail):
    async def handler(req, resp):
        await resp.start(200, {"content-type": "application/json", **headers}, length=len(body))
        await resp.send(body)
        await resp.end()

    err = await failure(spec(await agent_server(handler)))
    assert err.reason == "garbage" and detail in err.detail


async def test_gzipped_answer_is_stored_decoded_and_garbage_is_stored_failed(settings, agent_server):
    """Through a whole turn: the decoded answer is stored; a binary body is a failed turn."""
    from voxbridge.core.services import open_services

    from .test_reliability import ask, one_agent

    async def handler(req, resp):
        if json.loads(req.body)["text"] == "binary please":
            body = gzip_bytes(b'{"output": "secret"}')
            await resp.start(200, {"content-type": "application/json"}, length=len(body))
            await resp.send(body)
            return await resp.end()
        out = Compressed(resp)
        await out.start()
        for line in (n8n_line("begin"), n8n_line("item", "Decoded and stored."), n8n_line("end")):
            await out.send(line)
        await out.end()

    url = await agent_server(handler)
    async with open_services(settings, agents=one_agent(url), stt=False, tts=False) as services:
        good = await ask(services, "hello")
        bad = await ask(services, "binary please")
        good_row = await services.store.get_turn(good.turn_id)
        bad_row = await services.store.get_turn(bad.turn_id)
    assert good_row["status"] == "answered" and good_row["response"] == "Decoded and stored."
    assert bad_row["status"] == "failed" and bad_row["error"].startswith("garbage") and not bad_row["response"]


# --- keepalives -------------------------------------------------------------------------------------


async def test_n8n_keepalives_are_not_the_first_byte(agent_server):
    async def handler(req, resp):
        out = Compressed(resp)
        await out.start()
        await out.send(n8n_line("begin"))
        for _ in range(4):
            await out.send(b'{"type":"keepalive"}\n')
            await trio.sleep(0.1)
        await out.send(n8n_line("item", "At last."))
        await out.send(n8n_line("end"))
        await out.end()

    t0 = time.perf_counter()
    answer, _ = await call(spec(await agent_server(handler)))
    assert answer.text == "At last."
    assert answer.first_byte_s >= 0.35  # after the keepalives, not at the first of them
    assert answer.first_byte_s <= time.perf_counter() - t0


async def test_sse_ping_comments_are_not_the_first_byte(agent_server):
    async def handler(req, resp):
        await resp.start(200, {"content-type": "text/event-stream"})
        for _ in range(4):
            await resp.send(b": ping - 2026-11-22 10:00:00\r\n\r\n")  # sse-starlette's keepalive
            await trio.sleep(0.1)
        for piece in ("Hel", "lo."):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await resp.send(f"data: {json.dumps(chunk)}\r\n\r\n")
        await resp.send(b"data: [DONE]\r\n\r\n")
        await resp.end()

    answer, seen = await call(spec(await agent_server(handler), kind="openai", model="m"))
    assert answer.text == "Hello." and seen == ["Hel", "lo."]
    assert answer.first_byte_s >= 0.35


@pytest.mark.parametrize("keepalive", [b": ping\r\n\r\n", b'{"type":"keepalive"}\n'])
async def test_keepalives_hold_a_stalled_answer_only_until_total_timeout(agent_server, keepalive):
    """Content stops; keepalives go on forever. timeout_s alone would never fire (bytes keep
    coming); total_timeout_s ends it, and the reason says it was a stall with keepalives."""
    sse = keepalive.startswith(b":")

    async def handler(req, resp):
        await resp.start(200, {"content-type": "text/event-stream" if sse else "application/json"})
        await resp.send(b'data: {"output": "partial"}\n\n' if sse else n8n_line("item", "partial"))
        while True:
            await resp.send(keepalive)
            await trio.sleep(0.05)

    t0 = time.perf_counter()
    err = await failure(spec(await agent_server(handler), kind="webhook", timeout_s=0.3, total_timeout_s=1.0))
    elapsed = time.perf_counter() - t0
    assert err.reason == "timeout_stream" and "keepalive" in err.detail
    assert 0.9 <= elapsed < 10


async def test_keepalives_only_is_a_first_byte_timeout_at_total_timeout(agent_server):
    async def handler(req, resp):
        await resp.start(200, {"content-type": "application/json"})
        await resp.send(n8n_line("begin"))
        while True:
            await resp.send(b'{"type":"keepalive"}\n')
            await trio.sleep(0.05)

    err = await failure(spec(await agent_server(handler), timeout_s=0.3, total_timeout_s=1.0))
    assert err.reason == "timeout_first_byte" and "keepalive" in err.detail


async def test_connection_lost_after_keepalives_is_not_retried(agent_server):
    """A keepalive proves the agent got the request (and may be acting): no second request."""
    calls = []

    async def handler(req, resp):
        calls.append(1)
        await resp.start(200, {"content-type": "application/json"})
        await resp.send(b'{"type":"keepalive"}\n')
        raise RuntimeError("the agent died")

    err = await failure(spec(await agent_server(handler), retries=2))
    assert err.reason == "connection_closed" and len(calls) == 1


# --- n8n restarting ---------------------------------------------------------------------------------


async def test_n8n_not_registered_404_is_retried_within_the_budget(agent_server):
    """For ~8 s after a restart n8n answers 404 "not registered" while it activates workflows;
    nothing ran, so it is retried like a 503 (within `retries`)."""
    calls = []

    async def handler(req, resp):
        calls.append(1)
        if len(calls) <= 2:
            await resp.respond(404, NOT_REGISTERED_404, "application/json; charset=utf-8")
        else:
            await resp.respond(200, {"output": "Back up."})

    answer, _ = await call(spec(await agent_server(handler), retries=2))
    assert answer.text == "Back up." and answer.attempts == 3


async def test_n8n_not_registered_404_fails_clearly_when_the_budget_is_spent(agent_server):
    calls = []

    async def handler(req, resp):
        calls.append(1)
        await resp.start(404, {**N8N_HEADERS, "content-encoding": "gzip"})
        await resp.send(gzip_bytes(NOT_REGISTERED_404))
        await resp.end()

    err = await failure(spec(await agent_server(handler), retries=1))
    assert err.reason == "not_registered" and "workflow active" in err.detail and len(calls) == 2
    assert "general" not in str(err)  # the webhook path (a secret) is not repeated


# --- openai -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error_event",
    [
        b'data: {"error": {"message": "Context size has been exceeded.", "type": "server_error", "code": 500}}\n\n',
        b'event: error\ndata: {"message": "Context size has been exceeded."}\n\n',
    ],
    ids=["data-error", "event-error"],
)
async def test_openai_stream_ending_in_an_error_after_200(agent_server, error_event):
    async def handler(req, resp):
        await resp.start(200, {"content-type": "text/event-stream"})
        chunk = {"choices": [{"index": 0, "delta": {"content": "I was saying"}, "finish_reason": None}]}
        await resp.send(f"data: {json.dumps(chunk)}\n\n")
        await resp.send(error_event)
        await resp.end()

    err = await failure(spec(await agent_server(handler), kind="openai", model="m"))
    assert err.reason == "agent_error" and err.detail == "Context size has been exceeded."


async def test_openai_plain_text_is_garbage(agent_server):
    async def handler(req, resp):
        await resp.respond(200, "Internal proxy says hi", "text/plain")

    err = await failure(spec(await agent_server(handler), kind="openai", model="m"))
    assert err.reason == "garbage"


async def test_openai_request_bounds_the_answer(agent_server):
    bodies = []

    async def handler(req, resp):
        bodies.append(req.json())
        await resp.respond(200, {"choices": [{"message": {"role": "assistant", "content": "Short."}}]})

    cfg = parse_agents(
        '[[agents]]\nid = "llm"\nkind = "openai"\nurl = "http://x/v1/chat/completions"\nmodel = "m"\n', "a.toml", env={}
    )
    default = cfg.agents[0]
    assert default.max_tokens == 300 and default.temperature == 0.7  # bounded by default
    url = await agent_server(handler)
    await call(spec(url, kind="openai", model="m"))
    await call(spec(url, kind="openai", model="m", max_tokens=64, temperature=0.0))
    assert (bodies[0]["max_tokens"], bodies[0]["temperature"]) == (300, 0.7)
    assert (bodies[1]["max_tokens"], bodies[1]["temperature"]) == (64, 0.0)


@pytest.mark.parametrize(
    ("line", "what"),
    [("max_tokens = 0", "max_tokens"), ("temperature = 3.5", "temperature"), ('temperature = "hot"', "temperature")],
)
def test_openai_bounds_are_validated(line, what):
    from voxbridge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_agents(
            f'[[agents]]\nid = "llm"\nkind = "openai"\nurl = "http://x/v1"\nmodel = "m"\n{line}\n', "a.toml", env={}
        )
    assert what in str(err.value) and "a.toml:6" in str(err.value)


# --- check --reach ----------------------------------------------------------------------------------


async def test_reach_probe_openai_models_and_webhook_host_only(agent_server):
    from voxbridge.agents.health import probe_agent

    seen = []

    async def handler(req, resp):
        seen.append((req.method, req.path, req.headers.get("authorization")))
        if req.path == "/v1/models":
            if req.headers.get("authorization") != "Bearer k":
                return await resp.respond(401, {"error": "bad key"})
            return await resp.respond(200, {"object": "list", "data": [{"id": "llama3"}, {"id": "qwen"}]})
        await resp.respond(204, b"")

    url = await agent_server(handler)
    async with make_http_client() as http:
        served = await probe_agent(spec(f"{url}/v1/chat/completions", kind="openai", model="llama3", api_key="k"), http)
        missing = await probe_agent(spec(f"{url}/v1/chat/completions", kind="openai", model="gpt-9", api_key="k"), http)
        refused = await probe_agent(
            spec(f"{url}/v1/chat/completions", kind="openai", model="llama3", api_key="x"), http
        )
        hook = await probe_agent(spec(f"{url}/hook", kind="webhook"), http)
    assert served.state == "ok" and missing.state == refused.state == "FAIL"
    assert "llama3, qwen" in missing.detail and "API key" in refused.detail
    assert hook.state == "unverified" and "not checked" in hook.detail
    assert all(method in ("GET", "OPTIONS") for method, _, _ in seen)  # nothing was POSTed


async def test_n8n_starting_up_answers_are_retried_not_spoken(agent_server):
    """Just after n8n starts: 200 "n8n is starting up. Please wait" (text/html, its database is
    migrating), then Express's 404 "Cannot POST" (routes not mounted), then the answer."""
    calls = []

    async def handler(req, resp):
        calls.append(1)
        if len(calls) == 1:
            await resp.respond(200, "n8n is starting up. Please wait", "text/html; charset=utf-8")
        elif len(calls) == 2:
            page = (
                '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
                "</head>\n<body>\n<pre>Cannot POST /webhook/general</pre>\n</body>\n</html>\n"
            )
            await resp.respond(404, page, "text/html; charset=utf-8")
        else:  # a "Respond with Text" answer: n8n sends it as text/html too
            await resp.respond(200, "Ready now.", "text/html; charset=utf-8")

    seen = []

    async def on_text(t):
        seen.append(t)

    answer, _ = await call(spec(await agent_server(handler), retries=2), on_text)
    assert answer.text == "Ready now." and answer.attempts == 3 and len(calls) == 3
    assert "starting" not in "".join(seen)
