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
"""

from __future__ import annotations

import json
from typing import Any

N8N_TYPES = {"begin", "item", "end", "error", "keepalive"}
TEXT_KEYS = ("output", "content", "text", "response", "answer", "message")


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


class ReplyParser:
    def __init__(self):
        self.mode: str | None = None  # "n8n_stream" | "sse" | "buffered"
        self._buf = bytearray()
        self.handoff: str | None = None
        self.items = 0

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
        text = rest.decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except ValueError:
            if text.lstrip().startswith(("{", "[")):
                raise ReplyError("bad_response", "malformed JSON") from None
            return [text]
        if isinstance(obj, dict) and isinstance(obj.get("error"), (str, dict)) and _text_of(obj) is None:
            raise ReplyError("agent_error", str(obj["error"])[:200])
        self.handoff = _handoff_of(obj)
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list) and obj["choices"]:
            message = obj["choices"][0].get("message") if isinstance(obj["choices"][0], dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                return [message["content"]]
        answer = _text_of(obj)
        if answer is None:
            if self.handoff:
                return []
            raise ReplyError("bad_response", f"JSON without any of the keys {', '.join(TEXT_KEYS)}")
        return [answer]

    def _detect(self, first_line: bytes) -> str:
        if first_line.startswith((b"data:", b"event:", b"id:", b":")):
            return "sse"
        return "n8n_stream" if self._is_n8n_line(first_line) else "buffered"

    def _sse_line(self, line: bytes) -> list[str]:
        if not line.startswith(b"data:"):
            return []  # event:, id:, retry:, comments and blank separators carry no text
        data = line[5:].strip()
        if data == b"[DONE]" or not data:
            return []
        try:
            obj = json.loads(data)
        except ValueError:
            return [data.decode("utf-8", errors="replace")]  # a plain-text data line
        if isinstance(obj, dict) and obj.get("error"):
            raise ReplyError("agent_error", str(obj["error"])[:200])
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list):
            text = "".join(
                (c.get("delta") or c.get("message") or {}).get("content") or ""
                for c in obj["choices"] if isinstance(c, dict)
            )
            return [text] if text else []
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
            obj = json.loads(line)
        except ValueError:
            raise ReplyError("bad_response", "malformed line in the n8n stream") from None
        if not isinstance(obj, dict):
            raise ReplyError("bad_response", "n8n stream line is not an object")
        kind = obj.get("type")
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        if h := _handoff_of(meta):
            self.handoff = h
        if kind == "error":
            raise ReplyError("agent_error", str(obj.get("content") or "error in the n8n workflow")[:200])
        if kind != "item":
            return []  # begin, end, keepalive and future types carry no text
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
