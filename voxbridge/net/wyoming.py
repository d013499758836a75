"""The Wyoming protocol (Home Assistant's voice peers) on trio streams.

An event is a JSON header line `{"type": ..., "data": {...}, "version": ...}`; the header may
instead announce `"data_length": N` (N bytes of JSON data follow the line) and
`"payload_length": M` (M bytes of payload follow, e.g. PCM for audio-chunk).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

VERSION = "1.10.2"
MAX_LINE = 64 * 1024
MAX_DATA = 1 << 20
MAX_PAYLOAD = 16 << 20


class WyomingError(Exception):
    pass


@attrs.frozen
class Event:
    type: str
    data: dict[str, Any] = attrs.field(factory=dict)
    payload: bytes = b""


class WyomingConnection:
    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self._buf = bytearray()

    @classmethod
    async def connect(cls, uri: str, timeout_s: float = 5.0) -> WyomingConnection:
        host, port = parse_tcp_uri(uri)
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port)
        return cls(stream)

    async def send(self, type_: str, data: dict[str, Any] | None = None, payload: bytes = b"") -> None:
        header: dict[str, Any] = {"type": type_, "version": VERSION}
        body = b""
        if data:
            body = json.dumps(data, ensure_ascii=False).encode()
            header["data_length"] = len(body)
        if payload:
            header["payload_length"] = len(payload)
        await self.stream.send_all(json.dumps(header, ensure_ascii=False).encode() + b"\n" + body + payload)

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise WyomingError("connection closed by the peer")
            self._buf += chunk

    async def _read_exactly(self, n: int) -> bytes:
        await self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def receive(self) -> Event:
        while (nl := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_LINE:
                raise WyomingError("header line too long")
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise WyomingError("connection closed by the peer")
            self._buf += chunk
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        try:
            header = json.loads(line)
            type_ = header["type"]
        except (ValueError, KeyError, TypeError):
            raise WyomingError("malformed header line") from None
        data = header.get("data") or {}
        data_length = int(header.get("data_length") or 0)
        payload_length = int(header.get("payload_length") or 0)
        if not 0 <= data_length <= MAX_DATA or not 0 <= payload_length <= MAX_PAYLOAD:
            raise WyomingError("event too large")
        if data_length:
            try:
                data = {**data, **json.loads(await self._read_exactly(data_length))}
            except ValueError:
                raise WyomingError("malformed event data") from None
        payload = await self._read_exactly(payload_length) if payload_length else b""
        return Event(str(type_), data if isinstance(data, dict) else {}, payload)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


def parse_tcp_uri(uri: str) -> tuple[str, int]:
    if not uri.startswith("tcp://"):
        raise ValueError(f"expected tcp://host:port, got {uri!r}")
    host, _, port = uri[6:].rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
