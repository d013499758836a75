"""Hot reload of agents.toml: on file change (polled content hash) and on SIGHUP.

A valid file is swapped in atomically (turns in flight keep the config they started with); an
invalid one is logged with file:line and reason, counted, and the last good config keeps
serving. Reading and parsing run in a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..errors import ConfigError
from .config import AgentsConfig, parse_agents, read_agents_bytes

if TYPE_CHECKING:
    from ..store.redis_layer import RedisLayer

log = logging.getLogger("voxbridge.reload")


class AgentsReloader:
    def __init__(
        self,
        path: str | Path,
        holder,
        *,
        transform: Callable[[AgentsConfig], AgentsConfig] | None = None,
        poll_s: float = 1.0,
        broadcaster: RedisLayer | None = None,
        instance: str | None = None,
    ):
        self.path = Path(path)
        self.holder = holder
        self.transform = transform or (lambda cfg: cfg)
        self.poll_s = poll_s
        # Redis layer (or None): a reload here is announced; one announced elsewhere re-reads here.
        self.broadcaster = broadcaster
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self._digest: str | None = None
        self._lock = trio.Lock()

    def _read(self) -> bytes:
        """The file's bytes, or ConfigError: missing, unreadable, not a regular file (a FIFO
        would block, /dev/zero never ends) or over the size cap."""
        return read_agents_bytes(self.path)

    async def reload_now(self, reason: str) -> bool:
        """Re-read the file; True if a new config is now serving."""
        async with self._lock:
            try:
                data = await trio.to_thread.run_sync(self._read)
            except ConfigError as exc:
                self._reject(reason, exc)
                return False
            digest = hashlib.sha256(data).hexdigest()
            self._digest = digest
            try:
                text = data.decode("utf-8")
                # Abandoned on cancel: a reload in progress never holds up shutdown (the result is dropped).
                cfg = await trio.to_thread.run_sync(
                    lambda: self.transform(parse_agents(text, str(self.path))), abandon_on_cancel=True
                )
            except UnicodeDecodeError:
                self._reject(reason, ConfigError(str(self.path), "not UTF-8 text"))
                return False
            except ConfigError as exc:
                self._reject(reason, exc)
                return False
            if cfg.version == self.holder.current.version:
                return False  # nothing changed (e.g. the watcher already applied this edit before SIGHUP)
            self.holder.swap(cfg)
            log.info(
                "event=agents_reloaded reason=%s version=%s agents=%s rules=%d reloads=%d",
                reason,
                cfg.version,
                ",".join(a.id for a in cfg.agents),
                len(cfg.rules),
                self.holder.reloads,
            )
            if self.broadcaster is not None and reason != "broadcast":
                await trio.to_thread.run_sync(self.broadcaster.publish_reload, cfg.version, self.instance)
            return True

    def _reject(self, reason: str, exc: ConfigError) -> None:
        self.holder.reload_failures += 1
        self.holder.last_error = str(exc)
        log.warning(
            "event=agents_reload_rejected reason=%s error=%r serving_version=%s failures=%d",
            reason,
            str(exc),
            self.holder.current.version,
            self.holder.reload_failures,
        )

    async def watch(self) -> None:
        """Poll the file; reload when its content differs from the config serving now.

        Comparing with the serving version (a hash of the file's text) needs no baseline read,
        so an edit made before the first poll is not missed; a rejected content is not retried
        until the file changes again."""
        problem: str | None = None  # logged once until the file is readable again
        while True:
            try:
                data = await trio.to_thread.run_sync(self._read)
            except ConfigError as exc:
                if str(exc) != problem:
                    problem = str(exc)
                    log.warning(
                        "event=agents_file_unreadable error=%r serving_version=%s", problem, self.holder.current.version
                    )
            else:
                if problem is not None:
                    problem = None
                    log.info("event=agents_file_readable")
                digest = hashlib.sha256(data).hexdigest()
                if digest[:12] != self.holder.current.version and digest != self._digest:
                    await self.reload_now("file_changed")
            await trio.sleep(self.poll_s)

    async def on_sighup(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                await self.reload_now("sighup")

    async def listen_broadcasts(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Re-read the file when another instance announces a reload (Redis pub/sub).

        Redis going away is logged once and the subscription retried with back-off (local
        reloads keep working meanwhile); once the store is closed the listener just ends."""
        task_status.started()
        broadcaster = self.broadcaster
        if broadcaster is None:  # run() starts this only with a broadcaster
            return
        pubsub = None
        delay = 1.0
        try:
            while not getattr(broadcaster, "closed", False):
                try:
                    if pubsub is None:
                        pubsub = await trio.to_thread.run_sync(broadcaster.reload_messages)  # connect: 2 s at most
                        if delay > 1.0:
                            log.info("event=reload_broadcast_restored")
                        delay = 1.0
                    msg = await trio.to_thread.run_sync(
                        functools.partial(pubsub.get_message, timeout=1.0), abandon_on_cancel=True
                    )
                except Exception as exc:  # RedisError, or the socket closed under us (ValueError, OSError)
                    if getattr(broadcaster, "closed", False):
                        return
                    if delay == 1.0:
                        log.warning(
                            "event=reload_broadcast_unavailable error=%s retry_s=%.0f", type(exc).__name__, delay
                        )
                    if pubsub is not None:
                        await trio.to_thread.run_sync(_close_quietly, pubsub)
                        pubsub = None
                    await trio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                if not msg:
                    continue
                try:
                    info = json.loads(msg["data"])
                except (ValueError, TypeError):
                    continue
                if isinstance(info, dict) and info.get("instance") != self.instance:
                    log.info(
                        "event=agents_reload_announced by=%s version=%s", info.get("instance"), info.get("version")
                    )
                    await self.reload_now("broadcast")
        finally:
            if pubsub is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close_quietly, pubsub)

    async def run(self, *, sighup: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:  # bounds the watcher, signal and broadcast listeners
            if sighup:
                await nursery.start(self.on_sighup)
            if self.broadcaster is not None:  # Redis down: local reloads still work, the listener retries
                await nursery.start(self.listen_broadcasts)
            nursery.start_soon(self.watch)
            task_status.started()


def _close_quietly(pubsub) -> None:
    try:
        pubsub.close()
    except Exception:  # already broken: nothing to release
        pass
