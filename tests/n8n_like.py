"""Loopback answers shaped the way a real n8n 1.123.0 sends them (checked against the real one in
tests/test_n8n_real.py): express `compression` gzips when the client accepts it, a streamed
answer is flushed after every line (Z_SYNC_FLUSH), JSON bodies of 1 KiB or more are gzipped,
Transfer-Encoding is chunked and `Vary: Accept-Encoding` is set."""

from __future__ import annotations

import json
import zlib

from voxbridge.net.http_server import ResponseWriter

N8N_HEADERS = {
    "content-type": "application/json; charset=utf-8",
    "cache-control": "no-cache",
    "vary": "Accept-Encoding",
}
# n8n's own 404 for an unknown (or not yet activated) production webhook, byte for byte.
NOT_REGISTERED_404 = (
    b'{"code":404,"message":"The requested webhook \\"POST general\\" is not registered.",'
    b'"hint":"The workflow must be active for a production URL to run successfully. You can activate the '
    b"workflow using the toggle in the top-right of the editor. Note that unlike test URL calls, production "
    b"URL calls aren't shown on the canvas (only in the executions list)\"}"
)


def accepts_gzip(headers: dict[str, str]) -> bool:
    return "gzip" in headers.get("accept-encoding", "")


class Compressed:
    """Writes a body through a compressor, flushing each `send` (what `res.flush()` does)."""

    def __init__(self, resp: ResponseWriter, coding: str = "gzip"):
        self.resp = resp
        self.coding = coding
        wbits = {"gzip": 31, "deflate": 15, "deflate-raw": -15}[coding]
        self.z = zlib.compressobj(6, zlib.DEFLATED, wbits)

    async def start(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        coding = "deflate" if self.coding == "deflate-raw" else self.coding
        await self.resp.start(status, {**N8N_HEADERS, **(headers or {}), "content-encoding": coding})

    async def send(self, data: bytes | str, *, flush: bool = True) -> None:
        if isinstance(data, str):
            data = data.encode()
        out = self.z.compress(data) + (self.z.flush(zlib.Z_SYNC_FLUSH) if flush else b"")
        await self.resp.send(out)

    async def end(self) -> None:
        await self.resp.send(self.z.flush(zlib.Z_FINISH))
        await self.resp.end()


def n8n_line(kind: str, content=None, **metadata) -> bytes:
    obj = {"type": kind, "metadata": {"nodeId": "a2", "nodeName": "Respond", "itemIndex": 0, "runIndex": 0, **metadata}}
    if content is not None:
        obj["content"] = content
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def gzip_bytes(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()
