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
from typing import Any

import trio

from .agents.reloader import AgentsReloader
from .api.control import ControlApi, resolve_api_token
from .config import Settings
from .core.control import Control, ControlError
from .core.services import open_services
from .errors import ConfigError
from .ops.systemd import Notifier
from .sim.local_voice import LocalVoice
from .store.ownership import OwnedVoice, Ownership

log = logging.getLogger("voxbridge.daemon")

# A voice backend (LocalVoice, the Discord adapter's) has `kind`, `join`, `leave` and its own
# extras (`played_bytes`, `ready`); the daemon wraps it in OwnedVoice, which forwards the rest.
VoiceFactory = Callable[["Daemon", trio.Nursery], Awaitable[Any]]


class Daemon:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None, *, engines: dict | None = None):
        self.settings = settings
        self.env = env
        self.engines = engines or {}  # preloaded {"stt": ..., "tts": ...} (tests, embedding)
        self.notifier = Notifier(env)
        self.api_token = resolve_api_token(settings, env)
        self.stop_requested: trio.Event = trio.Event()
        self.stopping = False  # shutdown has begun: signals no longer start anything
        self._ready_nursery: trio.Nursery | None = None  # where a SIGHUP's reload runs, once ready
        self._hup_pending = False  # a SIGHUP arrived while starting: reload once ready
        self.control: Control | None = None
        self.voice: Any = None  # OwnedVoice around the backend, once started
        self.reloader: AgentsReloader | None = None
        self.api_port: int | None = None
        self.api: ControlApi | None = None
        self.ownership: Ownership | None = None
        self.on_ownership: Callable[[Ownership], None] | None = (
            None  # the Discord adapter's hook: its own joins take the same locks
        )

    def request_stop(self) -> None:
        self.stop_requested.set()

    def on_signal(self, signum: int) -> None:
        """SIGHUP reloads agents.toml once the daemon is ready (one arriving while it starts is
        deferred until then; during shutdown it is ignored); SIGTERM/SIGINT stop it (again: the
        shutdown already under way goes on). Never raises: a signal must not kill the daemon."""
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self.stopping:
                log.info("event=signal_ignored name=SIGHUP reason=shutting_down")
            elif self._ready_nursery is None or self.reloader is None:
                self._hup_pending = True
                log.info("event=signal_deferred name=SIGHUP reason=starting")
            else:
                self._ready_nursery.start_soon(self.reloader.reload_now, "sighup")
        else:
            if self.stopping:
                log.info("event=signal name=%s shutdown=already_in_progress", name)
            else:
                log.info("event=signal name=%s", name)
            self.request_stop()

    async def readiness(self) -> dict:
        if self.control is None:
            return {"stt": False, "store": False, "discord": None}
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

    async def run(
        self, *, voice_factory: VoiceFactory | None = None, signals: bool = True, task_status=trio.TASK_STATUS_IGNORED
    ) -> int:
        await trio.to_thread.run_sync(preflight, self.settings)
        if not signals:  # the caller delivers them to on_signal (Discord mode: the asyncio host loop)
            return await self._run(voice_factory, task_status)
        # The receiver is open for the whole lifetime, loading and closing included: a signal
        # before ready or during shutdown must not fall through to the default action (exit).
        outcome: dict = {}
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals_in:
            async with trio.open_nursery() as outer:

                async def deliver():
                    async for signum in signals_in:
                        self.on_signal(signum)

                async def main():
                    try:
                        outcome["code"] = await self._run(voice_factory, task_status)
                    except ConfigError as exc:  # raised below, outside the nursery: not an ExceptionGroup
                        outcome["error"] = exc
                    finally:
                        outer.cancel_scope.cancel()

                outer.start_soon(deliver)
                outer.start_soon(main)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["code"]

    async def _run(self, voice_factory: VoiceFactory | None, task_status) -> int:
        settings = self.settings
        self.notifier.status("loading models")
        async with (
            open_services(settings, **self.engines) as services,
            trio.open_nursery() as nursery,
        ):
            self.control = control = Control(services, nursery)
            services.metrics.watch(control=control)
            self.reloader = reloader = AgentsReloader(
                settings.agents.file, services.agents, broadcaster=services.broadcaster
            )
            await nursery.start(functools.partial(reloader.run, sighup=False))
            if voice_factory is not None:
                self.voice = await voice_factory(self, nursery)
            else:
                recordings = settings.state_path / "recordings" if settings.daemon.recordings else None
                self.voice = LocalVoice(control, nursery, recordings)
            d = settings.daemon
            instance = d.instance_id or f"{socket.gethostname()}:{os.getpid()}"
            self.ownership = ownership = Ownership(services.broadcaster, instance, "", d.voice_lock_ttl_s)
            if self.on_ownership is not None:
                self.on_ownership(ownership)
            local_voice = self.voice
            self.voice = OwnedVoice(local_voice, ownership)
            if settings.api.enabled:
                api = ControlApi(
                    control,
                    self.voice,
                    reloader,
                    token=self.api_token,
                    readiness=self.readiness,
                    max_body=settings.api.max_body_bytes,
                    ownership=ownership,
                    body_timeout_s=settings.api.read_timeout_s,
                )
                self.api_port = await nursery.start(functools.partial(api.serve, settings.api))
                self.api = api
                services.metrics.watch(api_server=api.server)
                log.info(
                    "event=api_listening host=%s port=%s auth=%s",
                    settings.api.host,
                    self.api_port,
                    "bearer" if self.api_token else "read_only",
                )
            ownership.api_url = d.public_api_url or f"http://{settings.api.host}:{self.api_port}"

            async def lost(guild: str) -> None:  # another instance holds the lock now: step back
                await local_voice.leave(guild)

            await nursery.start(ownership.run, lost)
            if local_voice.kind != "discord":  # Discord mode joins from its own auto_join/commands
                nursery.start_soon(self._claim_loop)
            nursery.start_soon(self.notifier.watchdog)
            agents = len(services.agents.current.agents)
            api_address = f"{settings.api.host}:{self.api_port}"
            self.notifier.ready(f"ready: voice={self.voice.kind}, agents={agents}, api={api_address}")
            log.info("event=ready voice=%s agents=%d api=%s", self.voice.kind, agents, api_address)
            task_status.started(self)
            self._ready_nursery = nursery
            if self._hup_pending:
                self._hup_pending = False
                nursery.start_soon(reloader.reload_now, "sighup")
            await self.stop_requested.wait()
            self.stopping = True
            self._ready_nursery = None
            await self._shutdown(nursery)
        self.notifier.status("stopped")
        self.notifier.close()
        log.info("event=stopped")
        return 0

    async def _claim_loop(self) -> None:
        """Keep trying to hold the configured channels ([discord].auto_join "GUILD:CHANNEL"):
        a standby instance takes a guild over when its owner's lock expires."""
        control, ownership = self.control, self.ownership
        assert control is not None and ownership is not None, "started once both exist"
        wanted = [spec.partition(":")[::2] for spec in self.settings.discord.auto_join]
        while True:
            for guild, channel in wanted:
                if guild and channel and control.channel(guild) is None and not self.stop_requested.is_set():
                    try:
                        await self.voice.join(guild, channel)
                        log.info("event=voice_taken_over guild=%s instance=%s", guild, ownership.instance_id)
                    except ControlError:
                        pass  # another instance owns it; try again later
            await trio.sleep(max(0.2, self.settings.daemon.voice_lock_ttl_s / 2))

    async def _shutdown(self, nursery: trio.Nursery) -> None:
        control = self.control
        assert control is not None, "shutdown runs inside _run, after Control exists"
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


def preflight(settings: Settings) -> None:
    """Check at start what would otherwise fail later with a traceback: a state_dir that cannot be
    written, an API host that does not resolve, an API port in use. Raises ConfigError."""
    state = settings.state_path
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / f".voxbridge-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            "[general].state_dir",
            f"{str(state)!r} is not a writable directory ({exc.strerror}); "
            "create it, fix its permissions or choose another",
        ) from None
    api = settings.api
    if not api.enabled:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(api.host, api.port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            "[api].host",
            f"cannot resolve {api.host!r} ({exc}); use an IP address such as 127.0.0.1 or a name this machine resolves",
        ) from None
    if api.port:
        with socket.socket(family, kind, proto) as probe_socket:
            probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
            try:
                probe_socket.bind(address)
            except OSError as exc:
                raise ConfigError(
                    "[api].port",
                    f"cannot listen on {api.host}:{api.port} ({exc.strerror}); another "
                    "program (another voxbridge?) has it: stop it or choose another port",
                ) from None


def run_local(settings: Settings) -> int:
    """The daemon without Discord: API + simulated channels."""
    # Outside Daemon.run's receiver (trio starting, the last instants after the store closed)
    # SIGTERM and SIGHUP are ignored rather than killing the process with 143 / 129.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return trio.run(Daemon(settings).run)
