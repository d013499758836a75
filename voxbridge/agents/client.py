"""Call an agent over HTTP and stream its answer back, whatever its kind.

Kinds differ only in the request (`build_request`): `n8n` and `webhook` POST the VoxBridge
payload; `openai` POSTs a Chat Completions body (system prompt, previous turns as messages).
The reply's shape (JSON, text, n8n NDJSON, SSE) is detected by `ReplyParser`.

Retries with jittered exponential backoff (`voxbridge.retry`) on connection errors, 5xx and
n8n's not-ready answers (404 "not registered", 200 "n8n is starting up") — only before the first
byte of the answer, never after (the agent may already be acting). Timeouts: connect, first byte / between chunks
(`timeout_s`), whole answer (`total_timeout_s`); keepalives are not the answer's first byte and
hold a silent answer open only until `total_timeout_s`. The body is decoded as it streams
(`decode.BodyDecoder`: gzip, deflate) and capped at `max_response_bytes` on the wire and decoded.
Errors are `AgentError`s with a short reason and no URL in them.
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
from ..retry import call_retrying
from .config import AgentSpec, redact_url
from .decode import ACCEPT_ENCODING, BodyDecoder
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


def make_http_client() -> httpx.AsyncClient:
    """One pooled client per daemon; httpx runs on trio through anyio."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"user-agent": "voxbridge/0.1"},
        follow_redirects=False,
        trust_env=False,
    )


NOT_REGISTERED_DETAIL = (
    "n8n says the webhook is not registered: is the workflow active and the path and "
    "method right? (n8n answers this for ~10 s after a restart while workflows activate)"
)
N8N_STARTING = "n8n is starting up. Please wait"  # n8n's 200 (!) while its database migrates


def _retryable(exc: BaseException) -> bool:
    """Nothing ran on the agent's side: a connection that never carried the request, a 5xx, n8n
    not ready. Anything else (timeouts, bad replies, cancellation) is final."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)) or (
        isinstance(exc, _Status) and (exc.status >= 500 or bool(exc.state))
    )


class _Status(Exception):
    """An answer that is not an answer: an HTTP error, or n8n not ready (`state`): nothing ran."""

    def __init__(self, status: int, state: str = ""):
        self.status = status
        self.state = state  # "not_registered" | "n8n_starting" | ""


def is_n8n_not_registered(status: int, body: bytes) -> bool:
    """n8n's 404 for a webhook it does not serve (now): `{"code":404,"message":"The requested
    webhook \"POST x\" is not registered.","hint":...}` or "... not registered for GET requests";
    or, in the moment before its webhook routes are mounted, Express's `Cannot POST /webhook/x`."""
    if status != 404:
        return False
    if b"<pre>Cannot POST /" in body[:2000]:
        return True
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and "webhook" in message and "not registered" in message


@attrs.define
class _Progress:
    """One attempt, as far as it got (for the reason when the total timeout cuts it)."""

    started: float
    received: int = 0  # wire bytes
    first_byte: float | None = None  # first piece of the answer (keepalives do not count)
    last_content: float = 0.0
    keepalives: int = 0


async def call_agent(
    agent: AgentSpec,
    payload: dict,
    http: httpx.AsyncClient,
    on_text: OnText,
    *,
    backoff_s: float = 0.25,
    on_sent: Callable[[], None] | None = None,
) -> AgentAnswer:
    """POST the turn to `agent` and stream its answer to `on_text`. `on_sent()` is called once the
    request's last byte is handed to the socket (each attempt), so the caller can defer its own
    work (the turn's route record) until the request has left."""
    started = time.perf_counter()
    attempt = 0
    progress = _Progress(started)

    async def one(n: int) -> AgentAnswer:
        nonlocal attempt, progress
        attempt, progress = n, _Progress(time.perf_counter())
        return await _attempt(agent, payload, http, on_text, started, n, progress, on_sent)

    def on_retry(exc: Exception, n: int, wait_s: float) -> None:
        log.warning(
            "event=agent_retry agent=%s attempt=%d reason=%s backoff_s=%.2f url=%s",
            agent.id,
            n,
            _reason(exc),
            wait_s,
            redact_url(agent.url),
        )

    try:
        with trio.fail_after(agent.total_timeout_s):
            return await call_retrying(
                one,
                on=_retryable,
                attempts=agent.retries + 1,
                timeout_s=None,
                wait_initial_s=backoff_s,
                on_retry=on_retry,
            )
    except trio.TooSlowError:
        raise _total_timeout(agent, progress) from None
    except _Status as exc:
        if exc.state == "not_registered":
            raise AgentError(agent.id, "not_registered", f"{NOT_REGISTERED_DETAIL}; {attempt} attempt(s)") from None
        if exc.state == "n8n_starting":
            raise AgentError(agent.id, "n8n_starting", f"n8n was still starting up; {attempt} attempt(s)") from None
        raise AgentError(agent.id, f"http_{exc.status}", f"after {attempt} attempt(s)") from None
    except _FirstByteTimeout:
        raise AgentError(agent.id, "timeout_first_byte", f"nothing within {agent.timeout_s:g}s") from None
    except _StreamTimeout:
        raise AgentError(agent.id, "timeout_stream", f"stalled for {agent.timeout_s:g}s mid-answer") from None
    except httpx.TransportError as exc:
        raise AgentError(agent.id, _reason(exc), f"after {attempt} attempt(s)") from None
    except ReplyError as exc:
        raise AgentError(agent.id, exc.reason, exc.detail) from None


def _total_timeout(agent: AgentSpec, p: _Progress) -> AgentError:
    """The whole answer took longer than total_timeout_s. Keepalives (SSE comments, n8n
    keepalive lines) hold a silent answer open past timeout_s, but only up to here: say so."""
    now = time.perf_counter()
    kept = f" ({p.keepalives} keepalive(s), no content)" if p.keepalives else ""
    if p.first_byte is None and now - p.started > agent.timeout_s:
        return AgentError(
            agent.id, "timeout_first_byte", f"nothing said within total_timeout_s {agent.total_timeout_s:g}s{kept}"
        )
    if p.first_byte is not None and now - p.last_content > agent.timeout_s:
        return AgentError(
            agent.id,
            "timeout_stream",
            f"no content for {now - p.last_content:.1f}s mid-answer{kept}, cut at total_timeout_s",
        )
    return AgentError(agent.id, "timeout_total", f"no complete answer within {agent.total_timeout_s:g}s")


class _FirstByteTimeout(Exception):
    pass


class _StreamTimeout(Exception):
    pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Status):
        return exc.state or f"http_{exc.status}"
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


def auth_headers(agent: AgentSpec) -> dict[str, str]:
    """The agent's configured headers, plus its API key as a bearer token (openai kind)."""
    headers = dict(agent.headers)
    if agent.api_key:
        headers["authorization"] = f"Bearer {agent.api_key}"
    return headers


def build_request(agent: AgentSpec, payload: dict) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers to POST (signed bytes must be the sent bytes)."""
    if agent.kind == "openai":
        body_obj = {
            "model": agent.model,
            "messages": openai_messages(agent, payload),
            "stream": agent.streaming,
            "max_tokens": agent.max_tokens,
            "temperature": agent.temperature,
        }
        accept = "text/event-stream, application/json"
    else:
        body_obj = payload
        accept = "application/x-ndjson, application/json, text/event-stream, text/plain"
    body = json.dumps(body_obj, ensure_ascii=False).encode()
    headers = {
        "content-type": "application/json",
        "accept": accept,
        "accept-encoding": ACCEPT_ENCODING,
        **auth_headers(agent),
    }
    if agent.hmac_secret:
        headers.update(sign(agent.hmac_secret, body))
    return body, headers


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """`X-VoxBridge-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`; the receiver checks
    the timestamp is recent (replay) and compares the digest in constant time."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"x-voxbridge-timestamp": ts, "x-voxbridge-signature": f"sha256={digest}"}


async def _attempt(
    agent: AgentSpec,
    payload: dict,
    http: httpx.AsyncClient,
    on_text: OnText,
    started: float,
    attempt: int,
    progress: _Progress,
    on_sent: Callable[[], None] | None = None,
) -> AgentAnswer:
    timeout = httpx.Timeout(
        connect=agent.connect_timeout_s, read=agent.timeout_s, write=agent.timeout_s, pool=agent.connect_timeout_s
    )
    body, headers = build_request(agent, payload)
    pieces: list[str] = []
    first_data: float | None = None
    try:
        extensions = {"trace": _sent_trace(on_sent)} if on_sent is not None else None
        async with http.stream(
            "POST", agent.url, content=body, headers=headers, timeout=timeout, extensions=extensions
        ) as resp:
            if resp.status_code >= 400:
                head = b""
                if resp.status_code == 404 and agent.kind == "n8n":
                    head = await _read_some(resp, 8192)
                raise _Status(
                    resp.status_code, "not_registered" if is_n8n_not_registered(resp.status_code, head) else ""
                )
            parser = ReplyParser(agent.kind, resp.headers.get("content-type", ""))
            decoder = BodyDecoder(resp.headers.get("content-encoding"), agent.max_response_bytes)
            async for chunk in resp.aiter_raw():  # wire bytes; decoded (and capped) by BodyDecoder
                if not chunk:
                    continue
                progress.received += len(chunk)
                if progress.received > agent.max_response_bytes:
                    raise ReplyError("too_large", f"answer exceeded {agent.max_response_bytes} bytes")
                data = decoder.decode(chunk)
                now = time.perf_counter()
                if first_data is None and data.strip():
                    first_data = now
                seen = parser.content_events
                texts = parser.feed(data)
                progress.keepalives = parser.keepalives
                if parser.content_events > seen:  # keepalives are not progress of the answer
                    if progress.first_byte is None:
                        progress.first_byte = now - started
                    progress.last_content = now
                for text in texts:
                    pieces.append(text)
                    await on_text(text)
            tail = decoder.finish()
    except httpx.ReadTimeout:
        raise (_FirstByteTimeout() if progress.first_byte is None else _StreamTimeout()) from None
    except httpx.TransportError:
        if progress.received:  # never retry once the agent started answering (even keepalives)
            raise ReplyError("connection_closed", "the agent closed the connection mid-answer") from None
        raise
    texts = parser.feed(tail) if tail else []
    texts += parser.finish()
    if progress.first_byte is None and parser.content_seen:  # buffered: the body's first byte
        progress.first_byte = (first_data or time.perf_counter()) - started
    if agent.kind == "n8n" and parser.mode == "buffered" and "".join(texts).strip() == N8N_STARTING:
        raise _Status(resp.status_code, "n8n_starting")  # a 200 but nothing ran: retried like a 503
    for text in texts:
        pieces.append(text)
        await on_text(text)
    answer = "".join(pieces).strip()
    if not answer and not parser.handoff:
        raise ReplyError("empty_response", "the agent's answer had no text")
    return AgentAnswer(agent.id, answer, parser.handoff, attempt, progress.first_byte)


SENT_EVENTS = frozenset({"http11.send_request_body.complete", "http2.send_request_body.complete"})


def _sent_trace(on_sent: Callable[[], None]) -> Callable[[str, dict], Awaitable[None]]:
    """An httpcore `trace` extension that reports when the request body has been written."""

    async def trace(event: str, info: dict) -> None:
        if event in SENT_EVENTS:
            on_sent()

    return trace


async def _read_some(resp: httpx.Response, limit: int) -> bytes:
    """The start of an error body (decoded), for telling n8n's 404s apart; never more than limit."""
    decoder = BodyDecoder(resp.headers.get("content-encoding"), limit)
    out = bytearray()
    try:
        async for chunk in resp.aiter_raw():
            out += decoder.decode(chunk)
            if len(out) >= limit:
                break
    except (httpx.HTTPError, ReplyError):
        pass
    return bytes(out)
