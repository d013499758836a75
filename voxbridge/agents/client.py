"""Call an agent over HTTP and stream its answer back, whatever its kind.

Kinds differ only in the request (`build_request`): `n8n` and `webhook` POST the VoxBridge
payload; `openai` POSTs a Chat Completions body (system prompt, previous turns as messages).
The reply's shape (JSON, text, n8n NDJSON, SSE) is detected by `ReplyParser`.

Retries with exponential backoff on connection errors and 5xx — only before the first byte of
the answer, never after (the agent may already be acting). Timeouts: connect, first byte /
between chunks (`timeout_s`), whole answer (`total_timeout_s`). The body is capped at
`max_response_bytes`. Errors are `AgentError`s with a short reason and no URL in them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable

import attrs
import httpx
import trio

from ..errors import AgentError
from .config import AgentSpec, redact_url
from .reply import ReplyError, ReplyParser

log = logging.getLogger("voxbridge.agents")

OnText = Callable[[str], Awaitable[None]]


@attrs.frozen
class AgentAnswer:
    agent_id: str
    text: str
    handoff: str | None
    attempts: int
    first_byte_s: float | None
    total_s: float


def make_http_client() -> httpx.AsyncClient:
    """One pooled client per daemon; httpx runs on trio through anyio."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"user-agent": "voxbridge/0.1"},
        follow_redirects=False,
        trust_env=False,
    )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)) or (
        isinstance(exc, _Status) and exc.status >= 500
    )


class _Status(Exception):
    def __init__(self, status: int):
        self.status = status


async def call_agent(agent: AgentSpec, payload: dict, http: httpx.AsyncClient, on_text: OnText,
                     *, backoff_s: float = 0.25) -> AgentAnswer:
    started = time.perf_counter()
    attempt = 0
    try:
        with trio.fail_after(agent.total_timeout_s):
            while True:
                attempt += 1
                try:
                    return await _attempt(agent, payload, http, on_text, started, attempt)
                except (httpx.TransportError, _Status) as exc:
                    if attempt > agent.retries or not _retryable(exc):
                        raise
                    delay = backoff_s * 2 ** (attempt - 1)
                    log.warning("event=agent_retry agent=%s attempt=%d reason=%s delay_s=%.2f url=%s",
                                agent.id, attempt, _reason(exc), delay, redact_url(agent.url))
                    await trio.sleep(delay)
    except trio.TooSlowError:
        raise AgentError(agent.id, "timeout_total", f"no complete answer within {agent.total_timeout_s:g}s") from None
    except _Status as exc:
        raise AgentError(agent.id, f"http_{exc.status}", f"after {attempt} attempt(s)") from None
    except _FirstByteTimeout:
        raise AgentError(agent.id, "timeout_first_byte", f"nothing within {agent.timeout_s:g}s") from None
    except _StreamTimeout:
        raise AgentError(agent.id, "timeout_stream", f"stalled for {agent.timeout_s:g}s mid-answer") from None
    except httpx.TransportError as exc:
        raise AgentError(agent.id, _reason(exc), f"after {attempt} attempt(s)") from None
    except ReplyError as exc:
        raise AgentError(agent.id, exc.reason, exc.detail) from None


class _FirstByteTimeout(Exception):
    pass


class _StreamTimeout(Exception):
    pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Status):
        return f"http_{exc.status}"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "connect_failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection_closed"
    if isinstance(exc, httpx.ReadError):
        return "read_failed"
    return type(exc).__name__.lower()


def openai_messages(agent: AgentSpec, payload: dict) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
    for turn in payload.get("context", {}).get("previousTurns", []):
        messages.append({"role": "user", "content": turn.get("transcript") or ""})
        if turn.get("response"):
            messages.append({"role": "assistant", "content": turn["response"]})
    messages.append({"role": "user", "content": payload["text"]})
    return messages


def build_request(agent: AgentSpec, payload: dict) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers to POST (signed bytes must be the sent bytes)."""
    if agent.kind == "openai":
        body_obj = {"model": agent.model, "messages": openai_messages(agent, payload), "stream": agent.streaming}
        accept = "text/event-stream, application/json"
    else:
        body_obj = payload
        accept = "application/x-ndjson, application/json, text/event-stream, text/plain"
    body = json.dumps(body_obj, ensure_ascii=False).encode()
    headers = {"content-type": "application/json", "accept": accept, **agent.headers}
    if agent.api_key:
        headers["authorization"] = f"Bearer {agent.api_key}"
    if agent.hmac_secret:
        headers.update(sign(agent.hmac_secret, body))
    return body, headers


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """`X-VoxBridge-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`; the receiver checks
    the timestamp is recent (replay) and compares the digest in constant time."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"x-voxbridge-timestamp": ts, "x-voxbridge-signature": f"sha256={digest}"}


async def _attempt(agent: AgentSpec, payload: dict, http: httpx.AsyncClient, on_text: OnText,
                   started: float, attempt: int) -> AgentAnswer:
    timeout = httpx.Timeout(connect=agent.connect_timeout_s, read=agent.timeout_s, write=agent.timeout_s, pool=agent.connect_timeout_s)
    body, headers = build_request(agent, payload)
    parser = ReplyParser()
    pieces: list[str] = []
    first_byte: float | None = None
    received = 0
    try:
        async with http.stream("POST", agent.url, content=body, headers=headers, timeout=timeout) as resp:
            if resp.status_code >= 400:
                raise _Status(resp.status_code)
            async for chunk in resp.aiter_raw():
                if not chunk:
                    continue
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                received += len(chunk)
                if received > agent.max_response_bytes:
                    raise ReplyError("too_large", f"answer exceeded {agent.max_response_bytes} bytes")
                for text in parser.feed(chunk):
                    pieces.append(text)
                    await on_text(text)
    except httpx.ReadTimeout:
        raise (_FirstByteTimeout() if first_byte is None else _StreamTimeout()) from None
    except httpx.TransportError:
        if first_byte is not None:  # never retry once the agent started answering
            raise ReplyError("connection_closed", "the agent closed the connection mid-answer") from None
        raise
    for text in parser.finish():
        pieces.append(text)
        await on_text(text)
    answer = "".join(pieces).strip()
    if not answer and not parser.handoff:
        raise ReplyError("empty_response", "the agent's answer had no text")
    return AgentAnswer(agent.id, answer, parser.handoff, attempt, first_byte, time.perf_counter() - started)
