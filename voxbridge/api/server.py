"""Serve an ASGI app on trio with hypercorn's HTTP protocol, plus a connection cap.

Hypercorn (maintained; its trio worker) does the HTTP/1.1 parsing, answers malformed requests
with 400, closes a connection that sends nothing for `read_timeout_s` and one with no request in
progress (idle keep-alive, or a request whose headers never complete) after `keep_alive_s`.
What hypercorn's own `serve()` lacks is a cap on open connections: without one, a peer that
opens connections and never finishes a request holds a file descriptor each until the timeouts
fire, and 20,000 of them exhaust the process's descriptors (then nothing is accepted, not even
`/health`). So the accept loop is ours: at `max_connections`, the oldest connection with no
request in progress is closed to make room (the newest peer is the one most likely to be a
health check; an attacker's old half-sent requests are the ones to drop).
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict

import attrs
import trio

log = logging.getLogger("voxbridge.api.http")

# accept() errors that mean "out of descriptors or memory for now": wait and retry (as trio's
# serve_listeners does) rather than kill the server.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@attrs.define(eq=False)
class _Conn:
    stream: trio.SocketStream
    busy: int = 0  # requests in progress on it


@attrs.define
class ServerStats:
    accepted: int = 0
    evicted: int = 0  # closed to stay under max_connections
    open: int = 0
    peak_open: int = 0
    accept_errors: int = 0


class AsgiServer:
    def __init__(
        self,
        app,
        *,
        max_connections: int = 256,
        read_timeout_s: float = 10.0,
        keep_alive_s: float = 5.0,
        max_header_bytes: int = 16 * 1024,
    ):
        from hypercorn.config import Config
        from hypercorn.utils import wrap_app

        config = Config()
        # hypercorn annotates int seconds; it only hands the value to trio.fail_after, so 0.5 works
        config.read_timeout = read_timeout_s  # pyright: ignore[reportAttributeAccessIssue]
        config.keep_alive_timeout = keep_alive_s
        config.h11_max_incomplete_size = max_header_bytes
        config.accesslog = None
        config.errorlog = log
        config.include_server_header = False
        config.graceful_timeout = 1.0
        self.config = config
        self.max_connections = max_connections
        self.stats = ServerStats()
        self._app = wrap_app(self._tracking(app), config.wsgi_max_body_size, "asgi")
        self._conns: OrderedDict[tuple, _Conn] = OrderedDict()  # by peer address, oldest first

    def _tracking(self, app):
        """Mark a connection busy while a request runs on it (so it is not the one evicted)."""

        async def tracked(scope, receive, send):
            conn = self._conns.get(tuple(scope.get("client") or ())[:2])
            if conn is not None:
                conn.busy += 1
            try:
                await app(scope, receive, send)
            finally:
                if conn is not None:
                    conn.busy -= 1

        return tracked

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `task_status.started` reports the bound port."""
        from hypercorn.trio.worker_context import WorkerContext

        listeners = await trio.open_tcp_listeners(port, host=host, backlog=max(128, min(self.max_connections, 4096)))
        context = WorkerContext(None)
        try:
            async with trio.open_nursery() as nursery:  # bounds the accept loops and every connection
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery, context)
                task_status.started(listeners[0].socket.getsockname()[1])
        finally:
            for listener in listeners:
                await listener.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery, context) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                self.stats.accept_errors += 1
                log.warning("event=api_accept_failed error=%s", errno.errorcode.get(exc.errno, exc.errno))
                await trio.sleep(0.1)
                continue
            self.stats.accepted += 1
            while len(self._conns) >= self.max_connections:
                await self._evict_one()
            try:
                peer = tuple(stream.socket.getpeername())[:2]
            except OSError:  # already gone
                await stream.aclose()
                continue
            self._conns[peer] = _Conn(stream)
            self.stats.open = len(self._conns)
            self.stats.peak_open = max(self.stats.peak_open, self.stats.open)
            nursery.start_soon(self._run_connection, peer, stream, context)

    async def _evict_one(self) -> None:
        victim = next((p for p, c in self._conns.items() if not c.busy), None)
        if victim is None:
            victim = next(iter(self._conns))
        conn = self._conns.pop(victim)
        self.stats.evicted += 1
        self.stats.open = len(self._conns)
        if self.stats.evicted in (1, 10, 100) or self.stats.evicted % 1000 == 0:
            log.warning(
                "event=api_connection_cap max_connections=%d evicted_total=%d", self.max_connections, self.stats.evicted
            )
        # Closing wakes the connection's pending receive (ClosedResourceError): its task ends.
        await conn.stream.aclose()

    async def _run_connection(self, peer: tuple, stream: trio.SocketStream, context) -> None:
        from hypercorn.trio.tcp_server import TCPServer

        try:
            # annotated SSLStream, but hypercorn's own trio serve hands it plain TCP streams too
            await TCPServer(self._app, self.config, context, {}, stream).run()  # pyright: ignore[reportArgumentType]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            conn = self._conns.get(peer)
            if conn is not None and conn.stream is stream:
                del self._conns[peer]
                self.stats.open = len(self._conns)
            with trio.CancelScope(shield=True):  # hypercorn's close can be cut short by a cancel
                await stream.aclose()
