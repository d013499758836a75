"""TurnRecord: a turn's row in the store, moved through its statuses, each change written once
with its event.

    transcribed -> not_routed                      the room's mode, echo guard or rate limit said no
    transcribed -> routed -> answered | failed     an agent answered, or nobody did
    failed at once                                 the STT failed: the utterance is kept as a turn
    (not yet closed) -> failed                     cancelled (the speaker left, the channel closed)
                                                   or a bug: "cancelled: ..." | "internal error: ..."

The voice path (`run_turn`), including its STT failures, and the typed path (`voxbridge say`)
store turns through this one class. Turn ids are chosen here, before the insert, so a retried
insert is recognised rather than duplicated.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import attrs
import trio

from ..errors import SttError
from ..routing import RouteDecision
from ..store import TurnStart
from ..stt import Transcript
from .playback import SpokenAnswer
from .services import Services
from .utterance import SpeakerInfo

CLOSED = ("answered", "failed", "not_routed")
CANCELLED = "cancelled: the speaker left or the channel closed"


@attrs.define
class TurnInfo:
    """What an agent's payload says about the turn (`agents/payload.py`)."""

    turn_id: str
    number: int
    conversation_id: str
    session_id: str
    user_id: str
    user_name: str
    guild_id: str
    channel_id: str
    language: str
    confidence: float
    duration_ms: int


class TurnRecord:
    """One turn's status and its writes; `timings` (ms from `ended_at`) go with every write.

    `routed` writes the route decision once the agent request has left (the request leaves one
    thread hop after the insert); `answered` and `failed` wait until it is written, so "routed"
    never lands over a final status."""

    def __init__(self, services: Services, speaker: SpeakerInfo, *, ended_at: float, timings: dict[str, Any]):
        self.services = services
        self.store = services.store
        self.speaker = speaker
        self.ended_at = ended_at
        self.timings = timings
        self.status = "new"  # no row yet
        self.start: TurnStart | None = None
        self.info: TurnInfo | None = None
        self._route_written = trio.Event()

    @property
    def turn_id(self) -> str | None:
        return self.start.turn_id if self.start is not None else None

    def ms(self) -> int:
        """Milliseconds since the utterance ended."""
        return round((trio.current_time() - self.ended_at) * 1000)

    async def begin(self, transcript: Transcript, *, history: int) -> TurnInfo:
        """Stored before anything else can fail: status "transcribed", with the recent history."""
        speaker = self.speaker
        row = self._row(
            transcript=transcript.text,
            language=transcript.language,
            confidence=transcript.confidence,
            duration_ms=round(transcript.duration_s * 1000),
            timings=self.timings,
        )
        start = await self._insert(row, history=history)
        self.info = TurnInfo(
            start.turn_id,
            start.number,
            start.conversation_id,
            start.session_id,
            speaker.user_id,
            speaker.user_name,
            speaker.guild_id,
            speaker.channel_id,
            transcript.language,
            transcript.confidence,
            round(transcript.duration_s * 1000),
        )
        self.timings["stored_ms"] = self.ms()
        self.services.emit(
            "turn_transcribed",
            turn=start.turn_id,
            number=start.number,
            user=speaker.user_name,
            text=transcript.text,
            confidence=transcript.confidence,
            stt_ms=self.timings.get("stt_ms", 0),
        )
        return self.info

    async def stt_failed(self, exc: SttError, *, duration_ms: int) -> None:
        """The utterance could not be transcribed: kept as a failed turn with an empty transcript."""
        start = await self._insert(self._row(transcript="", duration_ms=duration_ms))
        await self.store.update_turn(start.turn_id, status="failed", error=f"stt: {exc}", timings=self.timings)
        self.status = "failed"
        self.services.emit("turn_failed", turn=start.turn_id, user=self.speaker.user_name, reason="stt", error=str(exc))

    def _row(self, **fields: Any) -> dict[str, Any]:
        """A new turn row; its id is chosen here, so a retried insert is recognised, not duplicated."""
        s = self.speaker
        ids = {"id": str(uuid.uuid4()), "guild_id": s.guild_id, "channel_id": s.channel_id}
        return {**ids, "user_id": s.user_id, "user_name": s.user_name, **fields}

    async def _insert(self, row: dict[str, Any], **history: int) -> TurnStart:
        # cast: Store's methods are made by __getattr__ (untyped); begin_turn returns a TurnStart
        start = cast(TurnStart, await self.store.begin_turn(row, **history))
        self.start, self.status = start, "transcribed"
        return start

    async def not_routed(self, mode: str, mode_reason: str, reason: str) -> None:
        turn_id = self._open_id()
        flags = {"mode": mode, "mode_reason": mode_reason, "not_routed": reason}
        await self.store.update_turn(turn_id, status="not_routed", timings=self.timings, flags=flags)
        self.status = "not_routed"
        self.services.emit("turn_not_routed", turn=turn_id, user=self.speaker.user_name, mode=mode, reason=reason)

    def routed(self, decision: RouteDecision, nursery: trio.Nursery, after: trio.Event | None = None) -> None:
        """Status "routed"; the decision is written in `nursery` once `after` is set (the request
        has left), so the write never delays the request."""
        turn_id = self._open_id()
        self.status = "routed"
        self.services.emit(
            "turn_routed",
            turn=turn_id,
            user=self.speaker.user_name,
            agent=",".join(decision.agent_ids) or "-",
            method=decision.method,
            rule=decision.rule_id,
            skipped=list(decision.skipped),
        )
        nursery.start_soon(self._write_route, turn_id, decision, after)

    async def _write_route(self, turn_id: str, decision: RouteDecision, after: trio.Event | None) -> None:
        if after is not None:
            await after.wait()
        row = {
            "turn_id": turn_id,
            "method": decision.method,
            "rule_id": decision.rule_id,
            "agent_ids": list(decision.agent_ids),
            "latency_ms": decision.latency_ms,
        }
        await self.store.mark_routed(
            turn_id,
            row,
            agent_id=",".join(decision.agent_ids) or None,
            route_method=decision.method,
            rule_id=decision.rule_id,
        )
        self._route_written.set()

    async def answered(self, reply: str, agent_ids: tuple[str, ...], flags: dict[str, Any]) -> None:
        turn_id = self._open_id()
        await self._route_written.wait()
        self.timings["agent_done_ms"] = self.ms()
        agents = ",".join(agent_ids)
        await self.store.update_turn(
            turn_id, status="answered", response=reply, agent_id=agents, timings=self.timings, flags=flags
        )
        self.status = "answered"
        self.services.emit(
            "turn_answered",
            turn=turn_id,
            user=self.speaker.user_name,
            agent=agents,
            text=reply,
            attempts=flags.get("attempts"),
        )

    async def failed(self, error: str, agent_ids: tuple[str, ...]) -> None:
        """Nobody answered; `error` is "<reason>: <details>"."""
        turn_id = self._open_id()
        await self._route_written.wait()
        self.timings["failed_ms"] = self.ms()
        await self.store.update_turn(turn_id, status="failed", error=error[:500], timings=self.timings)
        self.status = "failed"
        self.services.emit(
            "turn_failed",
            turn=turn_id,
            user=self.speaker.user_name,
            agent=",".join(agent_ids) or "-",
            reason=error.split(":")[0],
            error=error,
        )

    async def played(self, answer: SpokenAnswer) -> None:
        """The answer has been played (or interrupted, or never started): how it went."""
        turn_id = self._open_id()
        if answer.started_at is not None:
            self.timings["first_frame_ms"] = round((answer.started_at - self.ended_at) * 1000)
        self.timings["played_frames"] = answer.frames
        self.timings["interrupted"] = answer.interrupted
        await self.store.update_turn(turn_id, timings=self.timings)
        self.services.emit(
            "turn_played",
            turn=turn_id,
            user=self.speaker.user_name,
            status=self.status,
            interrupted=answer.interrupted,
            timings=dict(self.timings),
            ended_at=self.ended_at,
        )

    async def close_interrupted(self, cancelled: bool, exc: BaseException) -> None:
        """A turn stopped before it closed (cancelled, or a bug) is closed as failed."""
        if self.start is None or self.status in CLOSED:
            return
        error = CANCELLED if cancelled else f"internal error: {type(exc).__name__}"
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.store.update_turn(self.start.turn_id, status="failed", error=error, timings=self.timings)
        if cancelled:
            self.services.emit("turn_cancelled", turn=self.start.turn_id, user=self.speaker.user_name, error=error)
        else:
            self.services.emit(
                "turn_failed", turn=self.start.turn_id, user=self.speaker.user_name, reason="internal", error=error
            )

    def _open_id(self) -> str:
        if self.start is None:
            raise RuntimeError("TurnRecord.begin must come first")
        return self.start.turn_id
