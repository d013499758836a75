"""Undo an answer's Content-Encoding as it streams in, with a cap on the decoded size.

Real n8n gzips streaming answers and JSON bodies of 1 KiB or more (express `compression`, each
streamed chunk flushed with Z_SYNC_FLUSH, so pieces can be decoded as they arrive). We ask for
`gzip, deflate` only (`br` too when the `brotli` module is installed) and decode here rather
than through httpx, so that the decoded size is bounded while inflating: a few KiB on the wire
that would inflate to gigabytes (a compression bomb) stop at `limit` + 1 bytes and fail as
`too_large`. A body that is not what its Content-Encoding says fails as `garbage`.
"""

from __future__ import annotations

import zlib

from .reply import ReplyError

try:  # optional: httpx decodes br only with it too
    import brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

ACCEPT_ENCODING = "gzip, deflate" + (", br" if brotli is not None else "")
_BROTLI_SLICE = 1024  # input bytes per brotli step (brotli cannot bound its output itself)


class BodyDecoder:
    def __init__(self, content_encoding: str | None, limit: int):
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise ReplyError("garbage", f"unsupported Content-Encoding {content_encoding!r} (several codings)")
        self.coding = codings[0] if codings else "identity"
        if self.coding not in ("identity", "gzip", "x-gzip", "deflate") and not (self.coding == "br" and brotli):
            raise ReplyError("garbage", f"unsupported Content-Encoding {self.coding!r} (we ask for {ACCEPT_ENCODING})")
        self.limit = limit
        self.decoded = 0
        self._z: zlib._Decompress | None = None
        self._br = brotli.Decompressor() if self.coding == "br" and brotli is not None else None
        self._deflate_raw: bool | None = None  # deflate: zlib-wrapped (RFC) or raw (some servers)
        self._pending = b""  # deflate: first bytes kept until the wrapping is known

    def _count(self, out: bytes) -> bytes:
        self.decoded += len(out)
        if self.decoded > self.limit:
            raise ReplyError("too_large", f"answer exceeded {self.limit} bytes once decompressed ({self.coding})")
        return out

    def _inflate(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self._z is None:
                self._z = zlib.decompressobj(self._wbits())
            room = self.limit - self.decoded - len(out) + 1  # one byte over the cap proves it is too large
            try:
                out += self._z.decompress(data, room)
            except zlib.error:
                raise ReplyError("garbage", f"the body is not valid {self.coding} data") from None
            if len(out) >= room:
                break  # over the cap; _count raises
            if self._z.eof:  # a gzip body may hold several members
                data = self._z.unused_data
                self._z = None
            else:
                data = b""
        return self._count(bytes(out))

    def _wbits(self) -> int:
        if self.coding in ("gzip", "x-gzip"):
            return 16 + zlib.MAX_WBITS
        return -zlib.MAX_WBITS if self._deflate_raw else zlib.MAX_WBITS

    def decode(self, data: bytes) -> bytes:
        if self.coding == "identity":
            return self._count(data)
        if self._br is not None:
            assert brotli is not None  # a brotli decompressor exists only with the module
            out = bytearray()
            for i in range(0, len(data), _BROTLI_SLICE):
                try:
                    out += self._br.process(data[i : i + _BROTLI_SLICE])
                except brotli.error:
                    raise ReplyError("garbage", "the body is not valid br data") from None
                if self.decoded + len(out) > self.limit:
                    break
            return self._count(bytes(out))
        if self.coding == "deflate" and self._deflate_raw is None:
            self._pending += data
            if len(self._pending) < 2:
                return b""
            cmf, flg = self._pending[0], self._pending[1]
            self._deflate_raw = not (cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0)
            data, self._pending = self._pending, b""
        return self._inflate(data)

    def finish(self) -> bytes:
        """End of the body: whatever the decoder still holds; a cut-off stream is garbage."""
        if self.coding == "identity" or self._br is not None:
            if self._br is not None and not self._br.is_finished():
                raise ReplyError("garbage", "the br body ended early")
            return b""
        if self._pending:  # a deflate body of fewer than two bytes
            raise ReplyError("garbage", "the deflate body ended early")
        if self._z is None:  # nothing received, or the last gzip member was complete
            return b""
        try:
            out = self._z.flush()
        except zlib.error:
            raise ReplyError("garbage", f"the body is not valid {self.coding} data") from None
        if not self._z.eof:
            raise ReplyError("garbage", f"the {self.coding} body ended early (cut off)")
        return self._count(out)
