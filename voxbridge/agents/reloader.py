"""Hot reload of agents.toml: on file change (polled content hash) and on SIGHUP.

A valid file is swapped in atomically (turns in flight keep the config they started with); an
invalid one is logged with file:line and reason, counted, and the last good config keeps
serving. Reading and parsing run in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from ..errors import ConfigError
from .config import AgentsConfig, parse_agents

log = logging.getLogger("voxbridge.reload")


class AgentsReloader:
    def __init__(self, path: str | Path, holder, *, transform: Callable[[AgentsConfig], AgentsConfig] | None = None,
                 poll_s: float = 1.0, broadcaster=None, instance: str | None = None):
        self.path = Path(path)
        self.holder = holder
        self.transform = transform or (lambda cfg: cfg)
        self.poll_s = poll_s
        # Redis layer (or None): a reload here is announced; one announced elsewhere re-reads here.
        self.broadcaster = broadcaster
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self._digest: str | None = None
        self._lock = trio.Lock()

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    async def reload_now(self, reason: str) -> bool:
        """Re-read the file; True if a new config is now serving."""
        async with self._lock:
            data = await trio.to_thread.run_sync(self._read)
            if data is None:
                self._reject(reason, ConfigError(str(self.path), "cannot read the file (missing or unreadable)"))
                return False
            digest = hashlib.sha256(data).hexdigest()
            self._digest = digest
            try:
                text = data.decode("utf-8")
                cfg = await trio.to_thread.run_sync(lambda: self.transform(parse_agents(text, str(self.path))))
            except UnicodeDecodeError:
                self._reject(reason, ConfigError(str(self.path), "not UTF-8 text"))
                return False
            except ConfigError as exc:
                self._reject(reason, exc)
                return False
            if cfg.version == self.holder.current.version:
                return False  # nothing changed (e.g. the watcher already applied this edit before SIGHUP)
            self.holder.swap(cfg)
            log.info("event=agents_reloaded reason=%s version=%s agents=%s rules=%d reloads=%d",
                     reason, cfg.version, ",".join(a.id for a in cfg.agents), len(cfg.rules), self.holder.reloads)
            if self.broadcaster is not None and reason != "broadcast":
                await trio.to_thread.run_sync(self.broadcaster.publish_reload, cfg.version, self.instance)
            return True

    def _reject(self, reason: str, exc: ConfigError) -> None:
        self.holder.reload_failures += 1
        self.holder.last_error = str(exc)
        log.warning("event=agents_reload_rejected reason=%s error=%r serving_version=%s failures=%d",
                    reason, str(exc), self.holder.current.version, self.holder.reload_failures)

    async def watch(self) -> None:
        """Poll the file; reload when its content differs from the config serving now.

        Comparing with the serving version (a hash of the file's text) needs no baseline read,
        so an edit made before the first poll is not missed; a rejected content is not retried
        until the file changes again."""
        while True:
            data = await trio.to_thread.run_sync(self._read)
            if data is not None:
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
        """Re-read the file when another instance announces a reload (Redis pub/sub)."""
        pubsub = await trio.to_thread.run_sync(self.broadcaster.reload_messages)
        task_status.started()
        try:
            while True:
                msg = await trio.to_thread.run_sync(lambda: pubsub.get_message(timeout=1.0), abandon_on_cancel=True)
                if not msg:
                    continue
                try:
                    info = json.loads(msg["data"])
                except (ValueError, TypeError):
                    continue
                if info.get("instance") != self.instance:
                    log.info("event=agents_reload_announced by=%s version=%s", info.get("instance"), info.get("version"))
                    await self.reload_now("broadcast")
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pubsub.close)

    async def run(self, *, sighup: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:  # bounds the watcher, signal and broadcast listeners
            if sighup:
                await nursery.start(self.on_sighup)
            if self.broadcaster is not None:
                try:
                    await nursery.start(self.listen_broadcasts)
                except Exception as exc:  # Redis down: local reloads still work
                    log.warning("event=reload_broadcast_unavailable error=%s", type(exc).__name__)
            nursery.start_soon(self.watch)
            task_status.started()
