"""What each event does to the metrics: the one table from `Services.emit` to Prometheus.

Every event counts in `voxbridge_events_total{kind}`; the kinds below also update their own
counters or histograms, with labels taken from the event's fields (never inferred from its name):

    turn_answered    voxbridge_turns_total{outcome="answered"}
    turn_failed      voxbridge_turns_total{outcome="failed"}, and by `reason`:
                       "stt"      -> voxbridge_stt_failures_total (the STT failed, no agent involved)
                       "internal" -> voxbridge_turn_internal_errors_total (a bug)
                       other      -> voxbridge_agent_errors_total{agent, reason} when the event names
                                     an agent; without `agent` it counts only as failed
    turn_cancelled   voxbridge_turns_total{outcome="cancelled"}
    turn_not_routed  voxbridge_turns_total{outcome="not_routed"}, voxbridge_turns_not_routed_total{reason}
    stt_dropped      voxbridge_stt_dropped_total
    agent_failover   voxbridge_agent_failovers_total{agent, reason}
    turn_played      voxbridge_stage_latency_seconds{stage} from its `timings` (ms)
    stt_backlog      only voxbridge_events_total (the live gauge voxbridge_queue_depth{queue="stt_decodes"}
                     shows the queue itself)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .metrics import STAGES, Metrics


def _label(fields: Mapping[str, Any], key: str, default: str = "-") -> str:
    value = fields.get(key)
    return default if value is None or value == "" else str(value)


def _turn_answered(m: Metrics, f: Mapping[str, Any]) -> None:
    m.turns.labels("answered").inc()


def _turn_failed(m: Metrics, f: Mapping[str, Any]) -> None:
    m.turns.labels("failed").inc()
    reason = _label(f, "reason", "error")
    if reason == "stt":
        m.stt_failures.inc()
    elif reason == "internal":
        m.internal_errors.inc()
    elif "agent" in f:
        m.agent_errors.labels(_label(f, "agent"), reason).inc()


def _turn_cancelled(m: Metrics, f: Mapping[str, Any]) -> None:
    m.turns.labels("cancelled").inc()


def _turn_not_routed(m: Metrics, f: Mapping[str, Any]) -> None:
    m.turns.labels("not_routed").inc()
    m.not_routed.labels(_label(f, "reason")).inc()


def _stt_dropped(m: Metrics, f: Mapping[str, Any]) -> None:
    m.stt_dropped.inc()


def _agent_failover(m: Metrics, f: Mapping[str, Any]) -> None:
    m.agent_failovers.labels(_label(f, "agent"), _label(f, "reason")).inc()


def _turn_played(m: Metrics, f: Mapping[str, Any]) -> None:
    timings = f.get("timings") or {}
    for key, stage in STAGES.items():
        value = timings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            m.stages.labels(stage).observe(max(0.0, value) / 1000)


TABLE: dict[str, Callable[[Metrics, Mapping[str, Any]], None]] = {
    "turn_answered": _turn_answered,
    "turn_failed": _turn_failed,
    "turn_cancelled": _turn_cancelled,
    "turn_not_routed": _turn_not_routed,
    "stt_dropped": _stt_dropped,
    "agent_failover": _agent_failover,
    "turn_played": _turn_played,
}


def observe(metrics: Metrics, kind: str, fields: Mapping[str, Any]) -> None:
    metrics.events.labels(kind).inc()
    update = TABLE.get(kind)
    if update is not None:
        update(metrics, fields)
