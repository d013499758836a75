"""`voxbridge run`: the daemon's lifetime, the same with or without Discord.

    Daemon.run                     root nursery: bounds everything below
    ├── AgentsReloader.run         agents.toml watch (+ Redis broadcast); SIGHUP goes to it
    ├── ControlApi.serve           the control API (hypercorn)
    ├── Notifier.watchdog          WATCHDOG=1 from the event loop itself
    ├── voice backend              Discord (adapter) or simulated channels (LocalVoice)
    └── ChannelSession (each)      started by Control.join

Shutdown (SIGTERM, SIGINT or `request_stop`): STOPPING=1, stop hearing anything new, let turns in
flight finish within `[daemon].shutdown_grace_s`, leave the voice channels (simulated ones write
their recordings), close the store (flushed), exit 0.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

import trio

from .agents.reloader import AgentsReloader
from .config import Settings
from .core.control import Control, ControlError
from .core.services import log_observer, open_services
from .ops.api import ControlApi, resolve_api_token
from .ops.local_voice import LocalVoice
from .ops.metrics import Metrics
from .ops.ownership import OwnedVoice, Ownership
from .ops.systemd import Notifier

log = logging.getLogger("voxbridge.daemon")

VoiceFactory = Callable[["Daemon", trio.Nursery], Awaitable[object]]


class Daemon:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None, *, engines: dict | None = None):
        self.settings = settings
        self.env = env
        self.engines = engines or {}  # preloaded {"stt": ..., "tts": ...} (tests, embedding)
        self.metrics = Metrics()
        self.notifier = Notifier(env)
        self.api_token = resolve_api_token(settings, env)
        self.stop_requested: trio.Event | None = None
        self.control: Control | None = None
        self.voice = None
        self.reloader: AgentsReloader | None = None
        self.api_port: int | None = None
        self.api: ControlApi | None = None
        self.ownership: Ownership | None = None
        self.on_ownership = None  # the Discord adapter's hook: its own joins take the same locks
        self.clean_exit = False

    def observe(self, kind: str, fields: dict) -> None:
        log_observer(kind, fields)
        self.metrics.observe_event(kind, fields)

    def request_stop(self) -> None:
        if self.stop_requested is not None:
            self.stop_requested.set()

    async def readiness(self) -> dict:
        services = self.control.services
        stt = services.stt is not None and getattr(services.stt, "model", True) is not None
        store = False
        try:
            with trio.move_on_after(2):
                store = bool(await services.store.ping())
        except Exception:
            store = False
        discord = getattr(self.voice, "ready", None)
        return {"stt": stt, "store": store, "discord": discord() if callable(discord) else discord}

    async def run(self, *, voice_factory: VoiceFactory | None = None, signals: bool = True,
                  task_status=trio.TASK_STATUS_IGNORED) -> int:
        settings = self.settings
        self.stop_requested = trio.Event()
        self.notifier.status("loading models")
        async with open_services(settings, observer=self.observe, **self.engines) as services, trio.open_nursery() as nursery:
            self.control = control = Control(services, nursery)
            self.reloader = AgentsReloader(settings.agents.file, services.agents, broadcaster=services.broadcaster)
            await nursery.start(functools.partial(self.reloader.run, sighup=False))
            if voice_factory is not None:
                self.voice = await voice_factory(self, nursery)
            else:
                recordings = settings.state_path / "recordings" if settings.daemon.recordings else None
                self.voice = LocalVoice(control, nursery, recordings)
            d = settings.daemon
            instance = d.instance_id or f"{socket.gethostname()}:{os.getpid()}"
            self.ownership = Ownership(services.broadcaster, instance, "", d.voice_lock_ttl_s)
            if self.on_ownership is not None:
                self.on_ownership(self.ownership)
            local_voice = self.voice
            self.voice = OwnedVoice(local_voice, self.ownership)
            if settings.api.enabled:
                api = ControlApi(control, self.voice, self.metrics, self.reloader, token=self.api_token,
                                 readiness=self.readiness, max_body=settings.api.max_body_bytes, ownership=self.ownership,
                                 body_timeout_s=settings.api.read_timeout_s)
                self.api_port = await nursery.start(functools.partial(api.serve, settings.api))
                self.api = api
                log.info("event=api_listening host=%s port=%s auth=%s", settings.api.host, self.api_port,
                         "bearer" if self.api_token else "read_only")
            self.ownership.api_url = d.public_api_url or f"http://{settings.api.host}:{self.api_port}"

            async def lost(guild: str) -> None:  # another instance holds the lock now: step back
                await local_voice.leave(guild)

            await nursery.start(self.ownership.run, lost)
            if local_voice.kind != "discord":  # Discord mode joins from its own auto_join/commands
                nursery.start_soon(self._claim_loop)
            if signals:
                nursery.start_soon(self._signals, nursery)
            nursery.start_soon(self.notifier.watchdog)
            status = f"ready: voice={self.voice.kind}, agents={len(services.agents.current.agents)}, api={settings.api.host}:{self.api_port}"
            self.notifier.ready(status)
            log.info("event=ready %s", status.removeprefix("ready: ").replace(", ", " "))
            task_status.started(self)
            await self.stop_requested.wait()
            await self._shutdown(nursery)
        self.notifier.status("stopped")
        self.notifier.close()
        self.clean_exit = True
        log.info("event=stopped")
        return 0

    async def _claim_loop(self) -> None:
        """Keep trying to hold the configured channels ([discord].auto_join "GUILD:CHANNEL"):
        a standby instance takes a guild over when its owner's lock expires."""
        wanted = [spec.partition(":")[::2] for spec in self.settings.discord.auto_join]
        while True:
            for guild, channel in wanted:
                if guild and channel and self.control.channel(guild) is None and not self.stop_requested.is_set():
                    try:
                        await self.voice.join(guild, channel)
                        log.info("event=voice_taken_over guild=%s instance=%s", guild, self.ownership.instance_id)
                    except ControlError:
                        pass  # another instance owns it; try again later
            await trio.sleep(max(0.2, self.settings.daemon.voice_lock_ttl_s / 2))

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    nursery.start_soon(self.reloader.reload_now, "sighup")
                else:
                    log.info("event=signal name=%s", signal.Signals(signum).name)
                    self.request_stop()

    async def _shutdown(self, nursery: trio.Nursery) -> None:
        control = self.control
        in_flight = sum(c.turns_in_flight for c in control.channels.values())
        self.notifier.stopping(f"draining {in_flight} turn(s)")
        log.info("event=shutdown_started channels=%d turns_in_flight=%d", len(control.channels), in_flight)
        for channel in list(control.channels.values()):
            await channel.stop_intake()
        with trio.move_on_after(self.settings.daemon.shutdown_grace_s) as grace:
            for channel in list(control.channels.values()):
                await channel.drained()
        if grace.cancelled_caught:
            left = sum(c.turns_in_flight for c in control.channels.values())
            log.warning("event=shutdown_grace_expired turns_cancelled=%d", left)
        for guild in list(control.channels):
            await self.voice.leave(guild)
        nursery.cancel_scope.cancel()


def run_local(settings: Settings) -> int:
    """The daemon without Discord: API + simulated channels."""
    return trio.run(Daemon(settings).run)
