"""TurnRecord: status transitions and their writes, the same for the voice and the typed path."""

import sqlite3

import attrs
import pytest
import trio

from voxbridge.core.record import CANCELLED, TurnRecord
from voxbridge.core.utterance import SpeakerInfo
from voxbridge.errors import SttError
from voxbridge.routing import RouteDecision
from voxbridge.store import Store
from voxbridge.store.sqlite import SqliteStore
from voxbridge.stt import Transcript

SPEAKER = SpeakerInfo("u1", "alice", "g1", "c1")


class ReplyLostOnce(SqliteStore):
    """The first insert commits, then its reply is lost (a transient error): the facade retries it."""

    lost = False

    def begin_turn(self, turn, history=0):
        start = super().begin_turn(turn, history)
        if not self.lost:
            self.lost = True
            raise sqlite3.OperationalError("database is locked")
        return start


@attrs.define
class FakeServices:
    store: Store
    events: list = attrs.field(factory=list)

    def emit(self, kind, **fields):
        self.events.append((kind, fields))


def record(services, timings=None):
    return TurnRecord(services, SPEAKER, ended_at=trio.current_time(), timings=timings or {})


async def test_stt_failure_is_one_failed_turn_even_when_its_insert_is_retried():
    services = FakeServices(Store(ReplyLostOnce(":memory:"), retry_s=5))
    r = record(services, {"early_decode": False})
    await r.stt_failed(SttError("engine error on purpose"), duration_ms=1200)
    [turn] = await services.store.list_turns()
    assert turn["id"] == r.turn_id and turn["status"] == "failed" and turn["error"] == "stt: engine error on purpose"
    assert turn["duration_ms"] == 1200 and turn["transcript"] == ""
    assert services.events == [
        ("turn_failed", {"turn": r.turn_id, "user": "alice", "reason": "stt", "error": "engine error on purpose"})
    ]
    assert services.store.retries == 1  # the turn_failed event above is what counts it in the metrics


async def test_routed_then_answered_writes_the_decision_before_the_answer():
    services = FakeServices(Store(SqliteStore(":memory:")))
    r = record(services)
    await r.begin(Transcript("what time is it", "en", 0.9, 1.0), history=3)
    assert r.status == "transcribed" and r.timings["stored_ms"] >= 0
    decision = RouteDecision("fallback", ("general",))
    async with trio.open_nursery() as nursery:
        r.routed(decision, nursery)
        await r.answered("Noon.", ("general",), {"attempts": 1})
    row = await services.store.get_turn(r.turn_id)
    assert row["status"] == "answered" and row["response"] == "Noon." and row["route_method"] == "fallback"
    assert [k for k, _ in services.events] == ["turn_transcribed", "turn_routed", "turn_answered"]
    [d] = await services.store.decisions(turn_id=r.turn_id)
    assert d["method"] == "fallback"


async def test_a_cancelled_turn_is_closed_as_failed_and_a_closed_one_is_left_alone():
    services = FakeServices(Store(SqliteStore(":memory:")))
    r = record(services)
    await r.begin(Transcript("hello", "en", 0.9, 1.0), history=0)
    await r.close_interrupted(True, KeyboardInterrupt())  # what was cancelled does not matter
    row = await services.store.get_turn(r.turn_id)
    assert row["status"] == "failed" and row["error"] == CANCELLED
    assert services.events[-1][0] == "turn_cancelled"
    done = record(services)
    await done.begin(Transcript("hi", "en", 0.9, 1.0), history=0)
    await done.not_routed("addressed", "configured", "not_addressed")
    await done.close_interrupted(False, RuntimeError("late"))
    assert (await services.store.get_turn(done.turn_id))["status"] == "not_routed"


async def test_writes_before_begin_are_a_bug():
    r = record(FakeServices(Store(SqliteStore(":memory:"))))
    with pytest.raises(RuntimeError, match="begin"):
        await r.failed("x: y", ())
