"""One event path: each event is logged once with its fields (values never split) and updates the
Prometheus metrics per kind; /metrics counts not-routed turns and STT failures with their labels."""

import io
import json
import logging
import sqlite3

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from voxbridge.audio.convert import split_frames
from voxbridge.daemon import Daemon
from voxbridge.logs import log_event, setup_logging
from voxbridge.ops.events import observe
from voxbridge.ops.metrics import Metrics
from voxbridge.store import Store

from .helpers import KV_FIELD, FastFakeStt
from .test_ops import agents_toml


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics body, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _daemon_in_a_channel(settings, tmp_path, agent_url, stt, nursery):
    """A daemon (API on a free port, no TTS) joined to g1/c1: (daemon, control, channel)."""
    (tmp_path / "agents.toml").write_text(agents_toml(agent_url))
    s = attrs.evolve(
        settings,
        api=attrs.evolve(settings.api, port=0),
        agents=attrs.evolve(settings.agents, file=str(tmp_path / "agents.toml")),
    )
    daemon = Daemon(s, env={}, engines={"stt": stt, "tts": False})
    await nursery.start(daemon.run)
    await daemon.voice.join("g1", "c1")
    control = daemon.control
    assert control is not None
    channel = control.channel("g1")
    assert channel is not None
    return daemon, control, channel


async def test_metrics_count_not_routed_turns_and_stt_failures_with_their_labels(
    settings, speech, agent_server, tmp_path, nursery
):
    calls = []

    async def agent(req, resp):
        calls.append(req.json())
        await resp.respond(200, {"output": "ok"})

    daemon, control, channel = await _daemon_in_a_channel(
        settings, tmp_path, await agent_server(agent), FastFakeStt(fail_on={1}), nursery
    )

    async def say(user: str) -> None:
        handle = channel.add_speaker(user, user)
        assert handle is not None
        for frame in split_frames(speech.discord("What is the weather like today?")):
            await handle.send(frame)
        await handle.finish()
        await handle.finished.wait()

    await say("alice")  # the STT fails on its first call: a failed turn, no agent involved
    control.set_mode("g1", "transcribe")
    await say("bob")  # stored, not routed: transcribe_only
    rows = await control.services.store.list_turns()
    assert sorted(r["status"] for r in rows) == ["failed", "not_routed"] and not calls

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.api_port}") as http:
        r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("voxbridge_turns_total", (("outcome", "not_routed"),))] == 1
    assert got[("voxbridge_turns_not_routed_total", (("reason", "transcribe_only"),))] == 1
    assert got[("voxbridge_turns_total", (("outcome", "failed"),))] == 1
    assert got[("voxbridge_stt_failures_total", ())] == 1
    assert got[("voxbridge_turns_total", (("outcome", "answered"),))] == 0
    assert not [k for k in got if k[0] == "voxbridge_agent_errors_total"]  # an STT failure is not an agent error
    assert got[("voxbridge_events_total", (("kind", "turn_not_routed"),))] == 1
    # the live collector: read at scrape time from the daemon's objects
    assert got[("voxbridge_channels", ())] == 1 and got[("voxbridge_speakers", ())] == 0
    assert got[("voxbridge_queue_depth", (("queue", "speaker_frames"),))] == 0
    assert got[("voxbridge_reloads_total", (("result", "ok"),))] == 0
    assert got[("voxbridge_agent_circuit_open", (("agent", "general"),))] == 0
    assert got[("voxbridge_component_stat", (("component", "api_server"), ("stat", "accepted")))] >= 1
    assert got[("voxbridge_component_stat", (("component", "playback"), ("stat", "answers_played")))] == 0
    for name in ("voxbridge_frames_dropped_total", "voxbridge_stt_dropped_total"):
        assert got[(name, ())] == 0
    daemon.request_stop()


def test_each_event_kind_updates_its_metric_from_its_fields():
    m = Metrics()
    observe(m, "turn_failed", {"turn": "t1", "agent": "general", "reason": "http_500", "error": "http_500: x"})
    observe(m, "turn_failed", {"turn": "t2", "user": "a", "reason": "stt", "error": "engine"})
    observe(m, "turn_failed", {"turn": "t3", "user": "a", "reason": "internal", "error": "internal error: KeyError"})
    observe(m, "turn_cancelled", {"turn": "t4", "user": "a", "error": "cancelled"})
    observe(m, "turn_answered", {"turn": "t5", "agent": "general"})
    observe(m, "turn_not_routed", {"turn": "t6", "mode": "addressed", "reason": "echo"})
    observe(m, "stt_dropped", {"user": "a", "reason": "hallucination"})
    observe(m, "agent_failover", {"agent": "general", "reason": "connect_failed", "to": "tech"})
    observe(m, "turn_played", {"turn": "t5", "timings": {"stt_ms": 120, "first_frame_ms": 900, "mode": "x"}})
    observe(m, "speaker_joined", {"user": "a"})
    assert m.value("voxbridge_turns_total", outcome="failed") == 3
    assert m.value("voxbridge_turn_internal_errors_total") == 1
    assert m.value("voxbridge_agent_errors_total", agent="general", reason="http_500") == 1
    assert m.value("voxbridge_stt_failures_total") == 1
    assert m.value("voxbridge_turns_total", outcome="cancelled") == 1
    assert m.value("voxbridge_turns_total", outcome="answered") == 1
    assert m.value("voxbridge_turns_not_routed_total", reason="echo") == 1
    assert m.value("voxbridge_stt_dropped_total") == 1
    assert m.value("voxbridge_agent_failovers_total", agent="general", reason="connect_failed") == 1
    assert m.value("voxbridge_stage_latency_seconds_count", stage="stt") == 1
    assert m.value("voxbridge_stage_latency_seconds_sum", stage="first_frame") == pytest.approx(0.9)
    assert m.value("voxbridge_stage_latency_seconds_count", stage="vad") == 0
    assert m.value("voxbridge_events_total", kind="speaker_joined") == 1
    counts = m.counts()
    assert counts["turns_failed"] == 3 and counts["turns_answered"] == 1 and counts["not_routed_echo"] == 1
    assert counts["stt_failures"] == 1 and counts["turn_internal_errors"] == 1 and counts["frames_dropped"] == 0
    assert counts["event.turn_played"] == 1 and counts["turns_not_routed"] == 1 and counts["event.never"] == 0
    m.add_stats("discord_receive", lambda: {"packets": 7, "note": "not a number"})
    assert m.value("voxbridge_component_stat", component="discord_receive", stat="packets") == 7
    m.remove_stats("discord_receive")
    assert m.value("voxbridge_component_stat", component="discord_receive", stat="packets") == 0
    text = m.render().decode()
    assert "_created" not in text and 'voxbridge_turns_total{outcome="not_routed"} 1.0' in text


@pytest.fixture
def logged():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()

    def start(fmt: str) -> io.StringIO:
        setup_logging("info", fmt, stream=out)
        return out

    yield start
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_an_event_is_one_line_with_every_field_whole(fmt, logged):
    # Before: the JSON formatter re-parsed the line, so error='cancelled: the speaker left' became
    # "cancelled:" and a display name with a space was cut at the space.
    out = logged(fmt)
    error = "cancelled: the speaker left\nlevel=error event=forged"
    log_event("turn_failed", {"turn": "t1", "user": "Ada Lovelace", "error": error, "text": "secret words", "n": 3})
    [line] = out.getvalue().splitlines()
    assert "secret words" not in line
    if fmt == "kv":
        fields = dict(KV_FIELD.findall(line))
        assert fields["event"] == "turn_failed" and fields["level"] == "info"
        assert json.loads(fields["user"]) == "Ada Lovelace" and json.loads(fields["error"]) == error
        assert fields["chars"] == "12" and fields["n"] == "3"
    else:
        doc = json.loads(line)
        assert doc["event"] == "turn_failed" and doc["level"] == "info" and doc["logger"] == "voxbridge"
        assert doc["user"] == "Ada Lovelace" and doc["error"] == error and doc["chars"] == 12 and doc["n"] == 3


async def test_store_retries_transient_errors_through_the_retry_helper():
    class Flaky:
        max_concurrency = 1

        def __init__(self, failures: int):
            self.failures = failures
            self.calls = 0

        def list_turns(self, limit: int = 100):
            self.calls += 1
            if self.calls <= self.failures:
                raise sqlite3.OperationalError("database is locked")
            return ["ok"]

        def get_turn(self, turn_id: str):
            raise sqlite3.IntegrityError("not transient")

        def close(self):
            pass

    flaky = Flaky(2)
    store = Store(flaky, retry_s=5.0)  # pyright: ignore[reportArgumentType]  # a stand-in: only the methods used
    with trio.fail_after(5):
        assert await store.list_turns() == ["ok"]
    assert flaky.calls == 3 and store.retries == 2
    with pytest.raises(sqlite3.IntegrityError):
        await store.get_turn("x")  # not transient: raised at once
    assert store.retries == 2
    down = Flaky(100)
    gone = Store(down, retry_s=0.5)  # pyright: ignore[reportArgumentType]
    with trio.fail_after(5), pytest.raises(sqlite3.OperationalError):
        await gone.list_turns()
    assert 2 <= down.calls < 10  # retried with backoff within retry_s, then raised


def test_stt_backlog_is_reported_once_a_minute_with_what_it_stands_for():
    from voxbridge.core.services import SttBacklog

    events = []
    limiter = trio.CapacityLimiter(2)
    services = type("S", (), {"stt": type("E", (), {"limiter": limiter})()})()
    services.emit = lambda kind, **f: events.append((kind, f))
    backlog = SttBacklog(threshold_s=2.0, every_s=60.0)
    backlog.note(services, 0.3)  # a normal wait: nothing to say
    assert events == []
    backlog.note(services, 2.5)
    backlog.note(services, 4.0)  # within the minute: counted, not logged
    assert [(k, f["queued_s"], f["waits"], f["waiting"]) for k, f in events] == [("stt_backlog", 2.5, 1, 0)]
    assert "GPU" in events[0][1]["hint"] and "beam_size" in events[0][1]["hint"]
    backlog.every_s = 0.0
    backlog.note(services, 3.0)
    assert [(f["queued_s"], f["waits"]) for _, f in events] == [(2.5, 1), (3.0, 2)]  # the suppressed wait counted


async def test_speech_waiting_for_a_decode_worker_shows_in_metrics_and_one_backlog_event(
    settings, stt, speech, agent_server, tmp_path, nursery
):
    async def agent(req, resp):
        await resp.respond(200, {"output": "ok"})

    daemon, control, channel = await _daemon_in_a_channel(settings, tmp_path, await agent_server(agent), stt, nursery)
    busy = [object() for _ in range(int(stt.limiter.total_tokens))]
    for owner in busy:  # every decode worker is taken (as by other speakers' decodes)
        stt.limiter.acquire_on_behalf_of_nowait(owner)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.api_port}") as http:

        async def scrape():
            return samples((await http.get("/metrics")).text)

        try:
            handle = channel.add_speaker("alice", "alice")
            assert handle is not None
            for frame in split_frames(speech.discord("What is the weather like today?")):
                await handle.send(frame)
            await handle.finish()
            with trio.fail_after(60):  # a sanity bound, not a timing target
                while (await scrape()).get(("voxbridge_queue_depth", (("queue", "stt_decodes"),))) != 1:
                    await trio.sleep(0.05)
            await trio.sleep(2.2)  # the utterance waits longer than the backlog threshold (2 s)
        finally:
            for owner in busy:
                stt.limiter.release_on_behalf_of(owner)
        await handle.finished.wait()
        got = await scrape()
    assert got[("voxbridge_queue_depth", (("queue", "stt_decodes"),))] == 0
    assert got[("voxbridge_events_total", (("kind", "stt_backlog"),))] == 1
    [turn] = await control.services.store.list_turns()
    assert turn["status"] == "answered"
