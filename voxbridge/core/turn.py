"""One turn: an utterance becomes a transcript, a stored row, a routed agent call and speech.

This is where a transcript becomes a webhook call, in stages, each its own module:

    transcript ready  -> TurnRecord.begin          (core/record.py: "transcribed", never lost after this)
    admission         -> admit                     (core/admission.py: mode, echo, rate limit -> not_routed)
    route             -> Router.route              (routing.py; the decision is written while the call goes out)
    call agent(s)     -> single | broadcast        (agents/dispatch.py: failover, or everyone at once)
                      -> SpeechStream              (core/speech.py: clauses -> TTS -> playback, while it streams)
    answer / failure  -> TurnRecord                ("answered" | "failed" + reason)
    played            -> TurnRecord.played         (timings: first frame, interrupted)

`run_turn` is the voice path (decode -> `answer_transcript` -> playback); `voxbridge say` calls
`answer_transcript` directly, so typed text is routed exactly as speech would be.
Timings are milliseconds from the moment the utterance ended (the silence threshold expired).
A cancelled turn (the speaker left, the channel closed) is still closed in the store as failed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..agents.config import AgentSpec
from ..agents.dispatch import AgentCaller, Dispatched, broadcast, single
from ..agents.payload import build_payload
from ..audio.segmenter import UtteranceEnded
from ..errors import SttError
from ..routing import RouteContext, RouteDecision, Router, classify
from ..stt import Transcript
from .admission import Admission, admit
from .conversation import split_message
from .playback import Playback
from .record import TurnInfo, TurnRecord
from .services import Services
from .speech import SpeechStream
from .utterance import Decode, SpeakerInfo

log = logging.getLogger("voxbridge.turn")

OnText = Callable[[str], Awaitable[None]]
OnDecision = Callable[[RouteDecision], None]


@attrs.define
class TurnOutcome:
    turn_id: str | None
    status: str  # answered | failed | not_routed | dropped
    decision: RouteDecision | None = None
    text: str = ""
    error: str | None = None
    speech: SpeechStream | None = None


async def run_turn(
    channel, speaker: SpeakerInfo, utterance: UtteranceEnded, decode: Decode, ended_at: float, vad_ms: int | None = None
) -> None:
    """The voice path: wait for the transcript, answer it, wait until the answer has played."""
    services = channel.services
    timings: dict[str, Any] = {"early_decode": decode.early}
    if vad_ms is not None:
        timings["vad_ms"] = vad_ms  # last speech heard -> utterance cut (silence_ms + processing)
    try:
        transcript = await decode.wait()
    except SttError as exc:
        record = TurnRecord(services, speaker, ended_at=ended_at, timings=timings)
        await record.stt_failed(exc, duration_ms=round(len(utterance.audio) / 16))
        return
    services.stt_backlog.note(services, transcript.timings.get("queued_s", 0.0))
    finished_at = decode.finished_at if decode.finished_at is not None else trio.current_time()
    wait_ms = round((finished_at - ended_at) * 1000)
    timings.update(
        stt_ms=max(0, wait_ms), stt_ready_ms=wait_ms, stt_decode_ms=round(transcript.timings.get("decode_s", 0) * 1000)
    )
    channel.turns_in_flight += 1
    try:
        await answer_transcript(
            services, speaker, transcript, ended_at=ended_at, timings=timings, playback=channel.playback, room=channel
        )
    finally:
        channel.turns_in_flight -= 1


async def answer_transcript(
    services: Services,
    speaker: SpeakerInfo,
    transcript: Transcript,
    *,
    ended_at: float,
    timings: dict[str, Any],
    playback: Playback | None,
    on_text: OnText | None = None,
    on_decision: OnDecision | None = None,
    room=None,
) -> TurnOutcome:
    """Store, admit, route, call the agent(s), speak; the turn row ends answered, failed or not_routed.

    `room` is the ChannelSession when the words were spoken in one: its mode (conversation,
    addressed, transcribe), echo guard and text mirror apply. `on_text` sees the answer as it
    streams and `on_decision` the route decision (`voxbridge say` prints both)."""
    if transcript.empty:
        services.emit(
            "stt_dropped", user=speaker.user_name, reason=transcript.dropped, duration_s=transcript.duration_s
        )
        return TurnOutcome(None, "dropped")
    record = TurnRecord(services, speaker, ended_at=ended_at, timings=timings)
    try:
        turn = await record.begin(transcript, history=services.agents.current.routing.history_turns)
        admission = await _admit(services, room, record, transcript.text)
        if not admission.admitted:
            return TurnOutcome(turn.turn_id, "not_routed", error=admission.reason)
        admitted = _AdmittedTurn(services, record, turn, admission.text, playback, room, on_text)
        return await admitted.answer(await admitted.route(on_decision))
    except BaseException as exc:
        cancelled = _only_cancelled(exc)
        await record.close_interrupted(cancelled, exc)
        if cancelled or not isinstance(exc, Exception):
            raise
        # A bug in one turn is logged and counted; the speaker, channel and daemon carry on.
        log.exception("event=turn_internal_error user=%s turn=%s", speaker.user_name, record.turn_id)
        if record.start is None:  # failed before it was stored: close_interrupted had nothing to close
            services.emit(
                "turn_failed",
                turn=None,
                user=speaker.user_name,
                reason="internal",
                error=f"internal error: {type(exc).__name__}",
            )
        return TurnOutcome(record.turn_id, "failed", error=f"internal error: {type(exc).__name__}")


async def _admit(services: Services, room, record: TurnRecord, text: str) -> Admission:
    """In a voice channel: the room's rules (core/admission.py); the line is mirrored to the
    text chat unless it was the bot's own echo. Typed text (no room) is always admitted."""
    if room is None:
        return Admission(text)
    mode, why = room.effective_mode()
    rate_ok = services.rate_limit.allow(record.speaker.guild_id, record.speaker.user_id)
    echo = rate_ok and room.echo.is_echo(text)
    admission = admit(text, mode=mode, rate_ok=rate_ok, echo=echo, wake_phrases=room.wake_phrases())
    if admission.reason != "echo":
        await room.post(f"**{record.speaker.user_name}**: {text}")
    if admission.reason is not None:
        await record.not_routed(mode, why, admission.reason)
    else:
        record.timings["mode"] = mode
    return admission


class _AdmittedTurn:
    """An admitted turn: routes it, calls the agent(s), speaks the answer as it streams, records
    how it ended. It keeps the agents config as it was when routing began: a reload mid-turn does
    not affect this turn."""

    def __init__(
        self,
        services: Services,
        record: TurnRecord,
        turn: TurnInfo,
        text: str,
        playback: Playback | None,
        room,
        on_text: OnText | None,
    ):
        self.services, self.record, self.turn, self.text = services, record, turn, text
        self.playback, self.room, self.on_text = playback, room, on_text
        self.agents = services.agents.current
        # The route record is written once the request has left (or the dispatch ended): a store
        # write in a worker thread while httpx sends would delay the request (scripts/bench_routing.py).
        self.sent = trio.Event()
        self.caller = AgentCaller(services.agents.health, services.http, on_sent=self.sent.set)
        self.history = list(record.start.history) if record.start is not None else []
        self.speech = SpeechStream(
            services.tts,
            playback,
            turn.turn_id,
            turn.user_id,
            lookahead=services.settings.tts.lookahead_clauses,
            ended_at=record.ended_at,
            timings=record.timings,
        )

    async def route(self, on_decision: OnDecision | None) -> RouteDecision:
        speaker, start = self.record.speaker, self.record.start
        router = Router(
            self.agents,
            self.services.agents.health.available,
            classifier=functools.partial(classify, attrs.evolve(self.caller, on_sent=None)),  # not the turn's request
            cursor=self.services.agents.round_robin,
        )
        pinned = start.pinned_agent if start is not None else None
        ctx = RouteContext(self.text, speaker.guild_id, speaker.channel_id, speaker.user_id, pinned, speaker.roles)
        decision = await router.route(ctx)
        self.record.timings["routed_ms"] = self.record.ms()
        if on_decision:
            on_decision(decision)
        return decision

    async def answer(self, decision: RouteDecision) -> TurnOutcome:
        record, speech = self.record, self.speech
        outcome = TurnOutcome(self.turn.turn_id, "failed", decision, speech=speech)
        record.timings["agent_request_ms"] = record.ms()
        async with trio.open_nursery() as nursery:  # bounds this turn's route record, TTS task (and thinking cue)
            record.routed(decision, nursery, after=self.sent)
            nursery.start_soon(speech.run_tts)
            if self.room is not None and self.services.settings.conversation.thinking_cue and self.playback is not None:
                nursery.start_soon(speech.thinking_cue)
            try:
                result = await self._dispatch(decision)
            finally:
                self.sent.set()
                speech.finish_text()
            await self._record(decision, result, outcome)
            await speech.answer.done.wait()  # played (or interrupted): then record how it went
        if self.playback is not None:
            await record.played(speech.answer)
        return outcome

    async def _dispatch(self, d: RouteDecision) -> Dispatched:
        """Call the agent(s); on failure the failure notice is what the channel hears."""
        if d.method == "broadcast":
            result = await broadcast(self.caller, self.agents, d.agent_ids, self._payload, self._text_out)
        else:
            result = await single(
                self.caller, self.agents, d.agent_ids, d.fallbacks, self._payload, self._text_out, self.services.emit
            )
        if not result.answered:
            self.speech.drop_partial()  # an agent that failed mid-answer: its last words are never spoken
            if notice := self._notice(result.notice_for):
                self.speech.say(notice)
        if result.handoff:  # the user's next turns go to that agent
            await self.services.store.pin_agent(self.turn.guild_id, self.turn.user_id, result.handoff)
            self.services.emit("agent_handoff", user=self.turn.user_name, frm=result.agent_ids[0], to=result.handoff)
        return result

    async def _record(self, decision: RouteDecision, result: Dispatched, outcome: TurnOutcome) -> None:
        timings = self.record.timings
        if result.first_byte_s is not None:
            timings["agent_first_byte_ms"] = timings["agent_request_ms"] + round(result.first_byte_s * 1000)
        elif result.first_text_at is not None:
            timings.setdefault("agent_first_byte_ms", round((result.first_text_at - self.record.ended_at) * 1000))
        if result.text is None or result.error is not None:
            error = result.error or "failed"
            await self.record.failed(error, decision.agent_ids)
            outcome.error = error
            return
        await self.record.answered(result.text, result.agent_ids, result.flags)
        outcome.status, outcome.text = "answered", result.text
        if self.room is not None:
            bot = self.services.settings.general.bot_name
            for part in split_message(f"**{bot}** → {self.turn.user_name}: {result.text}"):
                await self.room.post(part)

    def _payload(self, agent: AgentSpec) -> dict[str, Any]:
        return build_payload(
            text=self.text, turn=self.turn, agent_id=agent.id, previous_turns=self.history, streaming=agent.streaming
        )

    async def _text_out(self, text: str) -> None:
        await self.speech.on_text(text)
        if self.on_text:
            await self.on_text(text)

    def _notice(self, agent: AgentSpec | None) -> str:
        template = self.services.settings.agents.failure_notice
        return template.format(agent=agent.name if agent else "the assistant") if template else ""


def _only_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, bare or wrapped by nurseries in (nested) exception groups."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False
