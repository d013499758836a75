"""What every channel shares: engines, store, HTTP client, the live agents config, metrics.

Built once by `open_services` (which owns their lifetimes) and passed down explicitly; there is
no module-level singleton.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import trio

from ..agents.client import make_http_client
from ..agents.config import AgentsConfig, load_agents
from ..agents.health import AgentHealth
from ..audio.vad import VadFactory
from ..config import Settings
from ..logs import log_event
from ..ops.events import observe
from ..ops.metrics import Metrics
from ..store import Store, open_store
from ..stt import SttEngine, create_stt, decodes_waiting
from ..tts import TtsEngine, create_tts

log = logging.getLogger("voxbridge")

Observer = Callable[[str, dict[str, Any]], None]
log_observer = log_event  # the default observer: one log line per event (voxbridge.logs)


class RateLimit:
    """At most `per_minute` turns per (guild, user) in any sliding 60 s; 0 = unlimited."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._times: dict[tuple[str, str], collections.deque] = {}

    def allow(self, guild_id: str, user_id: str) -> bool:
        if not self.per_minute:
            return True
        now = self.clock()
        q = self._times.setdefault((guild_id, user_id), collections.deque())
        while q and q[0] <= now - 60:
            q.popleft()
        if len(q) >= self.per_minute:
            return False
        q.append(now)
        return True


class SttBacklog:
    """Says when speech waits for the STT: an utterance whose decode waited `threshold_s` or more
    for a free worker means more people talk than this machine transcribes in real time. Without
    this an operator sees only slow answers. One `stt_backlog` event per `every_s` at most, with
    how many such waits it stands for."""

    HINT = (
        "more speech than the STT workers decode in real time: use a GPU ([stt].device = cuda), "
        "stt-serve on a GPU host, [stt].beam_size = 1, or more [stt].max_concurrent_transcriptions if cores are idle"
    )

    def __init__(self, threshold_s: float = 2.0, every_s: float = 60.0):
        self.threshold_s, self.every_s = threshold_s, every_s
        self.last_at: float | None = None
        self.waits = 0  # since the last event

    def note(self, services: Services, queued_s: float) -> None:
        if queued_s < self.threshold_s:
            return
        self.waits += 1
        now = time.monotonic()
        if self.last_at is not None and now - self.last_at < self.every_s:
            return
        waiting = decodes_waiting(services.stt)
        services.emit("stt_backlog", queued_s=round(queued_s, 2), waits=self.waits, waiting=waiting, hint=self.HINT)
        self.last_at, self.waits = now, 0


class AgentsHolder:
    """The live agents config: swapped atomically; a turn keeps the snapshot it started with.
    Agent health (circuit breakers, concurrency limits) lives here and survives reloads."""

    def __init__(self, config: AgentsConfig):
        self.current = config
        self.health = AgentHealth(config)
        self.round_robin = itertools.count()
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None

    def swap(self, config: AgentsConfig) -> None:
        self.health.sync(config)
        self.current = config
        self.reloads += 1
        self.last_error = None


@attrs.define
class Services:
    settings: Settings
    stt: SttEngine | None
    tts: TtsEngine | None
    store: Store
    http: httpx.AsyncClient
    agents: AgentsHolder
    vad: VadFactory
    vad_limiter: trio.CapacityLimiter
    observer: Observer = log_observer
    metrics: Metrics = attrs.field(factory=Metrics)
    ignored: set[str] = attrs.field(factory=set)  # users who opted out (/voxbridge ignore-me)
    rate_limit: RateLimit = attrs.field(factory=lambda: RateLimit(0))
    stt_backlog: SttBacklog = attrs.field(factory=SttBacklog)

    @property
    def broadcaster(self):
        """The Redis layer when configured (reload broadcast, voice ownership), else None."""
        from ..store.redis_layer import RedisLayer

        return self.store.backend if isinstance(self.store.backend, RedisLayer) else None

    def emit(self, kind: str, **fields: Any) -> None:
        """THE event call: updates the metrics (`voxbridge/ops/events.py`) and hands the event to
        the observer (by default one log line with its fields)."""
        try:
            observe(self.metrics, kind, fields)
        except Exception:  # a metrics bug must not break a turn
            log.exception("event=metrics_error kind=%s", kind)
        try:
            self.observer(kind, fields)
        except Exception:  # nor an observer bug
            log.exception("event=observer_error kind=%s", kind)


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    agents: AgentsConfig | None = None,
    observer: Observer | None = None,
    stt: SttEngine | Literal[False] | None = None,
    tts: TtsEngine | None | bool = True,
    store_url: str | None = None,
) -> AsyncIterator[Services]:
    """Load engines (in threads), open the store and HTTP client; close them all on exit.

    `stt`/`tts` can be passed in to share already-loaded engines (tests, benchmarks);
    `tts=False` disables speaking.
    """
    agents_cfg = agents or load_agents(Path(settings.agents.file))
    own_stt = stt is None
    if stt is None:
        stt = await create_stt(settings)
    elif stt is False:  # text only (voxbridge say): no model to load
        stt, own_stt = None, False
    own_tts = tts is True
    if tts is True:
        tts = await create_tts(settings)
    elif tts is False:
        tts = None
    store = await trio.to_thread.run_sync(
        lambda: open_store(
            store_url or settings.store_url,
            settings.store.redis_url,
            session_ttl_s=settings.store.session_ttl_s,
            retry_s=settings.store.retry_s,
        )
    )
    http = make_http_client()
    services = Services(
        settings=settings,
        stt=stt,
        tts=tts,
        store=store,
        http=http,
        agents=AgentsHolder(agents_cfg),
        vad=VadFactory(settings.vad.backend, settings.vad.energy_floor_dbfs),
        vad_limiter=trio.CapacityLimiter(2),
        observer=observer or log_observer,
        rate_limit=RateLimit(settings.conversation.max_turns_per_minute),
    )
    services.ignored = await store.ignored_users()
    services.metrics.watch(services=services)
    try:
        yield services
    finally:
        with trio.CancelScope(shield=True):
            await http.aclose()
            await store.aclose()
            if own_stt and stt is not None:
                await stt.aclose()
            if own_tts and tts is not None:
                await tts.aclose()  # an OpenAI-compatible TTS holds an HTTP client
