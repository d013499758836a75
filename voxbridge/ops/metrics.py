"""Prometheus metrics (prometheus-client), one registry per daemon.

Counters and histograms are updated explicitly per event kind (`voxbridge/ops/events.py`, the
table); live values (channels, speakers, queue depths, circuits, reloads, the components' own
`.stats`) are read by `LiveCollector` when /metrics is scraped, so nothing has to keep them in
sync. A registry per `Metrics` (not the process-global one) keeps daemons in one process (tests,
embedding) apart.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..stt import decodes_waiting

disable_created_metrics()  # no `_created` series next to every counter: not part of our documented names

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# turn_played timings -> stage label; vad = last speech heard -> utterance cut, the others are ms
# from the cut (the moment the silence threshold expired)
STAGES = {
    "vad_ms": "vad",
    "stt_ms": "stt",
    "routed_ms": "route",
    "agent_first_byte_ms": "agent_first_byte",
    "tts_first_audio_ms": "tts_first_audio",
    "first_frame_ms": "first_frame",
}
OUTCOMES = ("answered", "failed", "cancelled", "not_routed")


class Metrics:
    """The daemon's metrics; `events.observe` updates them, `render` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter("voxbridge_events", "Events emitted, by kind.", ["kind"], registry=r)
        self.turns = Counter("voxbridge_turns", "Turns by final outcome.", ["outcome"], registry=r)
        self.not_routed = Counter(
            "voxbridge_turns_not_routed",
            "Turns stored but not sent to an agent, by reason (mode, echo, wake phrase only).",
            ["reason"],
            registry=r,
        )
        self.stt_failures = Counter(
            "voxbridge_stt_failures", "Utterances whose transcription failed (the turn is stored failed).", registry=r
        )
        self.stt_dropped = Counter(
            "voxbridge_stt_dropped", "Utterances whose transcript was empty or a hallucination.", registry=r
        )
        self.agent_errors = Counter(
            "voxbridge_agent_errors",
            "Turns failed by their agent(s), by agent and reason.",
            ["agent", "reason"],
            registry=r,
        )
        self.agent_failovers = Counter(
            "voxbridge_agent_failovers", "Agent calls failed over to the next agent.", ["agent", "reason"], registry=r
        )
        self.stages = Histogram(
            "voxbridge_stage_latency_seconds",
            "vad: last speech heard to utterance cut; others: cut to each stage.",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.frames_dropped = Counter(
            "voxbridge_frames_dropped", "Audio frames dropped because a speaker's queue was full.", registry=r
        )
        self.optout_ignored = Counter(
            "voxbridge_optout_ignored", "Speakers not heard because they opted out (/voxbridge ignore-me).", registry=r
        )
        self.internal_errors = Counter(
            "voxbridge_turn_internal_errors", "Turns failed by a bug (logged with its traceback).", registry=r
        )
        for outcome in OUTCOMES:  # every documented series exists from the start, at 0
            self.turns.labels(outcome)
        for stage in STAGES.values():
            self.stages.labels(stage)
        self.live = LiveCollector()
        r.register(self.live)

    def watch(self, *, services: Any = None, control: Any = None, api_server: Any = None) -> None:
        """What the live collector reads at scrape time (each optional)."""
        if services is not None:
            self.live.services = services
        if control is not None:
            self.live.control = control
        if api_server is not None:
            self.live.api_server = api_server

    def add_stats(self, component: str, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Export another component's `.stats` (read at scrape time) as
        `voxbridge_component_stat{component=...}`; e.g. the Discord voice receiver's."""
        self.live.sources[component] = stats

    def remove_stats(self, component: str) -> None:
        self.live.sources.pop(component, None)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when absent): tests and `/status` read counts here."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def counts(self) -> collections.Counter[str]:
        """The counters as one flat Counter (`/status`, summaries, tests; a missing key reads 0):
        `turns_<outcome>`, `not_routed_<reason>`, `stt_failures`, `stt_dropped`, `frames_dropped`,
        `turn_internal_errors`, `optout_ignored`, `event.<kind>`."""
        out: collections.Counter[str] = collections.Counter()
        keys = {
            "voxbridge_turns_total": lambda labels: f"turns_{labels['outcome']}",
            "voxbridge_turns_not_routed_total": lambda labels: f"not_routed_{labels['reason']}",
            "voxbridge_stt_failures_total": lambda labels: "stt_failures",
            "voxbridge_stt_dropped_total": lambda labels: "stt_dropped",
            "voxbridge_frames_dropped_total": lambda labels: "frames_dropped",
            "voxbridge_turn_internal_errors_total": lambda labels: "turn_internal_errors",
            "voxbridge_optout_ignored_total": lambda labels: "optout_ignored",
            "voxbridge_events_total": lambda labels: f"event.{labels['kind']}",
        }
        for counter in (
            self.turns,
            self.not_routed,
            self.stt_failures,
            self.stt_dropped,
            self.frames_dropped,
            self.internal_errors,
            self.optout_ignored,
            self.events,
        ):
            for family in counter.collect():
                for sample in family.samples:
                    if sample.name in keys:
                        out[keys[sample.name](sample.labels)] = int(sample.value)
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class LiveCollector(Collector):
    """Gauges and component counters read when scraped, from the objects that keep them."""

    def __init__(self) -> None:
        self.services: Any = None
        self.control: Any = None
        self.api_server: Any = None
        self.sources: dict[str, Callable[[], Mapping[str, Any]]] = {}

    def describe(self) -> list[Metric]:
        return []  # names depend on what is watched; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        services, control = self.services, self.control
        if control is not None:
            channels = list(control.channels.values())
            yield _gauge("voxbridge_channels", "Voice channels joined.", len(channels))
            yield _gauge("voxbridge_speakers", "Speakers being listened to.", sum(len(c.speakers) for c in channels))
            yield _gauge(
                "voxbridge_turns_in_flight",
                "Turns between transcript and played answer.",
                sum(c.turns_in_flight for c in channels),
            )
            depth = GaugeMetricFamily("voxbridge_queue_depth", "Items waiting in bounded queues.", labels=["queue"])
            depth.add_metric(["speaker_frames"], sum(h.queued for c in channels for h in c.speakers.values()))
            depth.add_metric(["playback_answers"], sum(c.playback.queued for c in channels))
            waiting = decodes_waiting(services.stt) if services is not None else None
            if waiting is not None:  # utterances waiting for a decode worker (stt_backlog events say why)
                depth.add_metric(["stt_decodes"], waiting)
            yield depth
        components = GaugeMetricFamily(
            "voxbridge_component_stat",
            "A component's own counts (STT engine, batching, Redis layer, API server, playback), read when scraped.",
            labels=["component", "stat"],
        )
        if control is not None:
            playback: dict[str, float] = {}
            for channel in control.channels.values():  # the channels joined now
                for stat, value in channel.playback.stats.items():
                    playback[stat] = playback.get(stat, 0) + (_number(value) or 0)
            _add_stats(components, "playback", playback)
        if services is not None:
            yield from self._services(services, components)
        if self.api_server is not None:
            _add_stats(components, "api_server", attrs.asdict(self.api_server.stats))
        for component, stats in list(self.sources.items()):
            _add_stats(components, component, stats())
        yield components

    def _services(self, services: Any, components: GaugeMetricFamily) -> Iterator[Metric]:
        holder = services.agents
        reloads = CounterMetricFamily("voxbridge_reloads", "agents.toml reloads by result.", labels=["result"])
        reloads.add_metric(["ok"], holder.reloads)
        reloads.add_metric(["rejected"], holder.reload_failures)
        yield reloads
        circuit = GaugeMetricFamily(
            "voxbridge_agent_circuit_open", "1 while an agent's circuit breaker is open.", labels=["agent"]
        )
        calls = CounterMetricFamily(
            "voxbridge_agent_calls", "Agent calls by agent and result.", labels=["agent", "result"]
        )
        for agent in holder.current.agents:
            circuit.add_metric([agent.id], int(holder.health.state(agent.id) == "open"))
        for agent_id, stats in sorted(holder.health.stats.items()):
            calls.add_metric([agent_id, "ok"], stats["calls"] - stats["failures"])
            calls.add_metric([agent_id, "failed"], stats["failures"])
        yield circuit
        yield calls
        yield CounterMetricFamily(
            "voxbridge_store_retries", "Store calls retried after a transient error.", value=services.store.retries
        )
        engine, name = services.stt, "stt"
        while engine is not None:  # the STT engine and what it wraps (batching -> local)
            if isinstance(getattr(engine, "stats", None), dict):
                _add_stats(components, name, engine.stats)
            engine, name = getattr(engine, "engine", None), f"{name}_inner"
        redis_stats = getattr(services.store.backend, "stats", None)
        if isinstance(redis_stats, dict):
            _add_stats(components, "store_redis", redis_stats)


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


def _add_stats(family: GaugeMetricFamily, component: str, stats: Mapping[str, Any]) -> None:
    for stat, value in sorted(stats.items()):
        number = _number(value)
        if number is not None:
            family.add_metric([component, stat], number)
