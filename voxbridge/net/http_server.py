"""A small HTTP/1.1 server on trio streams (h11), for loopback peers we host ourselves.

It serves the demo n8n agents of `voxbridge simulate` and the agent servers the tests start.
Handlers get the whole request and a writer that can stream: every `send()` becomes one HTTP
chunk, so a handler can split a JSON line anywhere, stall before the first byte, or die
mid-stream — the peer behaviours the agent client must survive.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio

MAX_REQUEST_BODY = 1 << 20


@attrs.define
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


class ResponseWriter:
    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream):
        self._conn = conn
        self._stream = stream
        self.started = False
        self.ended = False

    async def _send(self, event) -> None:
        data = self._conn.send(event)
        if data:
            await self._stream.send_all(data)

    async def start(
        self, status: int = 200, headers: dict[str, str] | None = None, *, length: int | None = None
    ) -> None:
        hdrs = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if length is not None:
            hdrs.append((b"content-length", str(length).encode()))
        else:
            hdrs.append((b"transfer-encoding", b"chunked"))
        await self._send(h11.Response(status_code=status, headers=hdrs))
        self.started = True

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        if data:
            await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())
        self.ended = True

    async def respond(self, status: int, body: bytes | str | dict | list, content_type: str | None = None) -> None:
        if isinstance(body, (dict, list)):
            body, content_type = json.dumps(body).encode(), content_type or "application/json"
        elif isinstance(body, str):
            body = body.encode()
        await self.start(status, {"content-type": content_type or "text/plain; charset=utf-8"}, length=len(body))
        await self.send(body)
        await self.end()


Handler = Callable[[Request, ResponseWriter], Awaitable[None]]


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        while True:
            request = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_REQUEST_BODY:
                        writer = ResponseWriter(conn, stream)
                        await writer.respond(413, {"error": "request body too large"})
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            req = Request(
                method=request.method.decode(),
                path=request.target.decode(),
                headers={k.decode().lower(): v.decode("latin-1") for k, v in request.headers},
                body=bytes(body),
            )
            writer = ResponseWriter(conn, stream)
            try:
                await handler(req, writer)
            except Exception as exc:  # a handler bug answers 500 instead of killing the server
                if not writer.started:
                    await writer.respond(500, {"error": type(exc).__name__})
                return
            if not writer.ended or conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await stream.aclose()


async def serve_http(
    handler: Handler, host: str = "127.0.0.1", port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; `task_status.started` reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def handle(stream):
        await _serve_connection(stream, handler)

    async with trio.open_nursery() as nursery:  # bounds every connection of this server
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
