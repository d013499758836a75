"""Parse an agent's reply body as it streams in, whatever its shape.

- n8n streaming: newline-delimited `{"type": "begin"|"item"|"end"|"error", "content": ...}`
  objects (served as application/json, chunked; chunk boundaries may fall anywhere). An
  `item`'s content is either a text token or, from a Respond-to-Webhook node, a *string holding
  JSON* such as `{"output": "..."}` that is unwrapped. Unknown types (keepalive) are ignored.
- Server-Sent Events (`data: ...` lines; webhook agents and OpenAI Chat Completions streams):
  each event's JSON gives text through the same keys, or `choices[0].delta.content`; `[DONE]`
  ends the stream.
- anything else is buffered to the end: JSON (`output`/`content`/`text`/`response`/`answer`/
  `message`, or a list of such items, as n8n returns for "all items") or plain text.
A `handoff` key (top level, inside an unwrapped item, or in an `end` line's metadata) names the
agent that should take the user's next turns.

What does not parse as the agent kind's format fails with reason `garbage` and is never spoken:
bytes that are not UTF-8 text (a compressed body read without decoding, binary), control
characters, an HTML page (a wrong URL: n8n's editor answers 200 with HTML), malformed JSON, JSON
without an answer key, and for the `openai` kind anything that is neither JSON nor SSE.
In-band errors (an n8n `error` line, SSE `event: error` or `data: {"error": ...}`, a JSON
`{"error": ...}` body) fail with reason `agent_error` and the server's message.

`content_seen` turns true with the first piece of the answer itself: SSE comments (`: ping`),
n8n `begin`/`end`/`keepalive` lines and blank lines are not content (they neither count as the
answer's first byte nor as progress of a stalled answer).
"""

from __future__ import annotations

import json
import re
from typing import Any

N8N_TYPES = {"begin", "item", "end", "error", "keepalive"}
TEXT_KEYS = ("output", "content", "text", "response", "answer", "message")
_NOT_JSON = object()
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ReplyError(ValueError):
    """The agent said it failed (an in-band error) or sent something we cannot read."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _text_of(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, list):
        parts = [t for t in (_text_of(o) for o in obj) if t]
        return "\n".join(parts) if parts else None
    if isinstance(obj, dict):
        for key in TEXT_KEYS:
            if key in obj:
                value = obj[key]
                if isinstance(value, dict) and "content" in value:  # {"message": {"content": ...}}
                    value = value["content"]
                text = _text_of(value)
                if text is not None:
                    return text
    return None


def _handoff_of(obj: Any) -> str | None:
    if isinstance(obj, dict):
        value = obj.get("handoff")
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and isinstance(value.get("agent"), str):
            return value["agent"]
    if isinstance(obj, list):
        for o in obj:
            if h := _handoff_of(o):
                return h
    return None


def _error_message(error: Any) -> str:
    """The human part of an in-band error: `{"error": {"message": ...}}`, `{"error": "..."}`."""
    if isinstance(error, dict):
        for key in ("message", "detail", "error", "description"):
            if isinstance(error.get(key), str) and error[key]:
                return error[key][:200]
            if isinstance(error.get(key), dict):
                return _error_message(error[key])
    if isinstance(error, str) and error:
        return error[:200]
    return json.dumps(error)[:200] if error else "the agent reported an error"


def _text(data: bytes, what: str) -> str:
    """Bytes that must be UTF-8 text; binary (say, a gzip body nobody decoded) is garbage."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReplyError("garbage", f"{what} is not UTF-8 text (binary or compressed data?)") from None
    if _CONTROL.search(text):
        raise ReplyError("garbage", f"{what} holds control characters (binary data?)")
    return text


class ReplyParser:
    def __init__(self, kind: str = "n8n", content_type: str = ""):
        self.kind = kind
        self.content_type = content_type.lower()
        self.mode: str | None = None  # "n8n_stream" | "sse" | "buffered"
        self._buf = bytearray()
        self.handoff: str | None = None
        self.items = 0
        self.keepalives = 0  # SSE comments and n8n keepalive lines seen
        self.content_seen = False  # the first piece of the answer itself has arrived
        self.content_events = 0  # pieces of the answer seen so far (progress of a stream)
        self._sse_event = ""

    def _content(self) -> None:
        self.content_seen = True
        self.content_events += 1

    def feed(self, data: bytes) -> list[str]:
        """Bytes in, text deltas out (only in streaming mode; buffered mode answers in finish)."""
        self._buf += data
        out: list[str] = []
        if self.mode is None:
            stripped = bytes(self._buf).lstrip()
            nl = stripped.find(b"\n")
            if nl < 0:
                return out
            first = stripped[:nl].strip()
            self.mode = self._detect(first)
        if self.mode == "sse":
            while (nl := self._buf.find(b"\n")) >= 0:
                line = bytes(self._buf[:nl]).strip()
                del self._buf[: nl + 1]
                out.extend(self._sse_line(line))
        elif self.mode == "n8n_stream":
            while (nl := self._buf.find(b"\n")) >= 0:
                line = bytes(self._buf[:nl]).strip()
                del self._buf[: nl + 1]
                if line:
                    out.extend(self._n8n_line(line))
        elif self._buf.strip():
            self._content()  # buffered: the body is the answer
        return out

    def finish(self) -> list[str]:
        """End of body: the last line (streaming) or the whole answer (buffered)."""
        rest = bytes(self._buf).strip()
        self._buf.clear()
        if self.mode is None:
            self.mode = self._detect(rest)
        if self.mode == "sse":
            return self._sse_line(rest) if rest else []
        if self.mode == "n8n_stream":
            return self._n8n_line(rest) if rest else []
        if not rest:
            raise ReplyError("empty_response", "the agent answered with an empty body")
        self._content()
        text = _text(rest, "the answer")
        try:
            obj = json.loads(text)
        except ValueError:
            obj = _NOT_JSON
        if obj is _NOT_JSON:
            if text.lstrip().startswith(("{", "[")):
                raise ReplyError("garbage", "malformed JSON")
            # by its text, not its Content-Type: n8n sends a "Respond with Text" answer as text/html
            if text[:15].lower().startswith(("<!doctype", "<html", "<head", "<body")):
                raise ReplyError("garbage", "an HTML page, not an answer (is the URL the webhook's?)")
            if self.kind == "openai":
                raise ReplyError("garbage", "plain text, not a Chat Completions answer (JSON or SSE)")
            return [text]
        if isinstance(obj, dict) and obj.get("error") and _text_of(obj) is None:
            raise ReplyError("agent_error", _error_message(obj["error"]))
        self.handoff = _handoff_of(obj)
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list) and obj["choices"]:
            message = obj["choices"][0].get("message") if isinstance(obj["choices"][0], dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                return [message["content"]]
        answer = _text_of(obj)
        if answer is None:
            if self.handoff:
                return []
            raise ReplyError("garbage", f"JSON without any of the keys {', '.join(TEXT_KEYS)}")
        return [answer]

    def _detect(self, first_line: bytes) -> str:
        if first_line.startswith((b"data:", b"event:", b"id:", b":", b"retry:")):
            return "sse"
        return "n8n_stream" if self._is_n8n_line(first_line) else "buffered"

    def _sse_line(self, line: bytes) -> list[str]:
        if not line:
            self._sse_event = ""  # a blank line ends the event
            return []
        if line.startswith(b":"):
            self.keepalives += 1  # a comment (sse-starlette's ": ping" every 15 s)
            return []
        if line.startswith(b"event:"):
            self._sse_event = _text(line[6:], "an SSE event name").strip()
            return []
        if not line.startswith(b"data:"):
            return []  # id:, retry: carry no text
        data = line[5:].strip()
        if data == b"[DONE]" or not data:
            return []
        self._content()
        raw = _text(data, "an SSE data line")
        try:
            obj = json.loads(raw)
        except ValueError:
            if self._sse_event == "error":
                raise ReplyError("agent_error", raw[:200]) from None
            if self.kind == "openai":
                raise ReplyError("garbage", "an SSE data line that is not JSON") from None
            return [raw]  # a plain-text data line
        if self._sse_event == "error" or (isinstance(obj, dict) and obj.get("error")):
            error = obj.get("error", obj) if isinstance(obj, dict) else obj
            raise ReplyError("agent_error", _error_message(error))
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list):
            for c in obj["choices"]:
                if isinstance(c, dict) and c.get("finish_reason") == "error":
                    raise ReplyError("agent_error", 'the server ended the answer with finish_reason "error"')
            text = "".join(
                (c.get("delta") or c.get("message") or {}).get("content") or ""
                for c in obj["choices"]
                if isinstance(c, dict)
            )
            return [text] if text else []
        if self.kind == "openai":
            return []  # not a chunk (usage, metadata): no text
        if h := _handoff_of(obj):
            self.handoff = h
        text = _text_of(obj)
        return [text] if text else []

    @staticmethod
    def _is_n8n_line(line: bytes) -> bool:
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        return isinstance(obj, dict) and obj.get("type") in N8N_TYPES

    def _n8n_line(self, line: bytes) -> list[str]:
        try:
            obj = json.loads(_text(line, "a line of the n8n stream"))
        except ValueError:
            raise ReplyError("garbage", "malformed line in the n8n stream") from None
        if not isinstance(obj, dict):
            raise ReplyError("garbage", "n8n stream line is not an object")
        kind = obj.get("type")
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        if h := _handoff_of(meta):
            self.handoff = h
        if kind == "error":
            self._content()
            node = meta.get("nodeName")
            raise ReplyError(
                "agent_error",
                _error_message(
                    obj.get("content")
                    or (f"the n8n node {node!r} failed" if isinstance(node, str) else "error in the n8n workflow")
                ),
            )
        if kind != "item":
            if kind == "keepalive":
                self.keepalives += 1
            return []  # begin, end, keepalive and future types carry no text
        self._content()
        self.items += 1
        content = obj.get("content")
        if isinstance(content, str):
            stripped = content.strip()
            if stripped.startswith("{") and stripped.endswith("}"):
                try:
                    inner = json.loads(stripped)
                except ValueError:
                    inner = None
                if isinstance(inner, dict):
                    if h := _handoff_of(inner):
                        self.handoff = h
                    text = _text_of(inner)
                    return [text] if text else []
            return [content] if content else []
        text = _text_of(content)
        if h := _handoff_of(content):
            self.handoff = h
        return [text] if text else []
