"""Prometheus text exposition, no client library: counters, gauges and histograms we own.

Turn outcomes and stage latencies are observed from the core's events (`observe_event`);
queue depths, dropped frames, reloads and agent errors are read live when scraped.
"""

from __future__ import annotations

import bisect
import collections
import threading

STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# turn_played timings -> stage label; vad = last speech heard -> utterance cut, the others are ms
# from the cut (the moment the silence threshold expired)
STAGES = {"vad_ms": "vad", "stt_ms": "stt", "routed_ms": "route", "agent_first_byte_ms": "agent_first_byte",
          "tts_first_audio_ms": "tts_first_audio", "first_frame_ms": "first_frame"}


class Histogram:
    def __init__(self, buckets=STAGE_BUCKETS_S):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.turns = collections.Counter()  # by outcome
        self.stages: dict[str, Histogram] = {label: Histogram() for label in STAGES.values()}
        self.agent_errors = collections.Counter()  # (agent, reason)
        self.stt_dropped = 0

    def observe_event(self, kind: str, fields: dict) -> None:
        with self._lock:
            if kind == "turn_answered":
                self.turns["answered"] += 1
            elif kind == "turn_failed":
                self.turns["failed"] += 1
                self.agent_errors[(str(fields.get("agent", "-")), str(fields.get("reason", "error")))] += 1
            elif kind == "turn_cancelled":
                self.turns["cancelled"] += 1
            elif kind == "stt_dropped":
                self.stt_dropped += 1
            elif kind == "turn_played":
                timings = fields.get("timings") or {}
                for key, label in STAGES.items():
                    if isinstance(timings.get(key), (int, float)):
                        self.stages[label].observe(max(0.0, timings[key]) / 1000)

    def render(self, control=None) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            metric("voxbridge_turns_total", "counter", "Turns by final outcome.")
            for outcome in ("answered", "failed", "cancelled"):
                out.append(f'voxbridge_turns_total{{outcome="{outcome}"}} {self.turns[outcome]}')
            metric("voxbridge_stage_latency_seconds", "histogram", "vad: last speech heard to utterance cut; others: cut to each stage.")
            for label, h in self.stages.items():
                cumulative = 0
                for bound, count in zip(h.buckets, h.counts, strict=False):
                    cumulative += count
                    out.append(f'voxbridge_stage_latency_seconds_bucket{{stage="{label}",le="{bound}"}} {cumulative}')
                out.append(f'voxbridge_stage_latency_seconds_bucket{{stage="{label}",le="+Inf"}} {h.n}')
                out.append(f'voxbridge_stage_latency_seconds_sum{{stage="{label}"}} {h.total:.6f}')
                out.append(f'voxbridge_stage_latency_seconds_count{{stage="{label}"}} {h.n}')
            metric("voxbridge_agent_errors_total", "counter", "Failed turns by agent and reason.")
            for (agent, reason), n in sorted(self.agent_errors.items()):
                out.append(f'voxbridge_agent_errors_total{{agent="{_esc(agent)}",reason="{_esc(reason)}"}} {n}')
            metric("voxbridge_stt_dropped_total", "counter", "Utterances whose transcript was empty or a hallucination.")
            out.append(f"voxbridge_stt_dropped_total {self.stt_dropped}")
        if control is not None:
            services = control.services
            metric("voxbridge_frames_dropped_total", "counter", "Audio frames dropped because a speaker's queue was full.")
            out.append(f"voxbridge_frames_dropped_total {services.counters.get('frames_dropped', 0)}")
            metric("voxbridge_reloads_total", "counter", "agents.toml reloads by result.")
            out.append(f'voxbridge_reloads_total{{result="ok"}} {services.agents.reloads}')
            out.append(f'voxbridge_reloads_total{{result="rejected"}} {services.agents.reload_failures}')
            metric("voxbridge_channels", "gauge", "Voice channels joined.")
            out.append(f"voxbridge_channels {len(control.channels)}")
            metric("voxbridge_speakers", "gauge", "Speakers being listened to.")
            out.append(f"voxbridge_speakers {sum(len(c.speakers) for c in control.channels.values())}")
            metric("voxbridge_turns_in_flight", "gauge", "Turns between transcript and played answer.")
            out.append(f"voxbridge_turns_in_flight {sum(c.turns_in_flight for c in control.channels.values())}")
            metric("voxbridge_queue_depth", "gauge", "Items waiting in bounded queues.")
            frames = sum(h.queued for c in control.channels.values() for h in c.speakers.values())
            answers = sum(c.playback.queued for c in control.channels.values())
            out.append(f'voxbridge_queue_depth{{queue="speaker_frames"}} {frames}')
            out.append(f'voxbridge_queue_depth{{queue="playback_answers"}} {answers}')
            metric("voxbridge_agent_circuit_open", "gauge", "1 while an agent's circuit breaker is open.")
            for agent in services.agents.current.agents:
                state = services.agents.health.state(agent.id)
                out.append(f'voxbridge_agent_circuit_open{{agent="{_esc(agent.id)}"}} {int(state == "open")}')
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
