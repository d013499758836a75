"""One turn: an utterance becomes a transcript, a stored row, a routed agent call and speech.

This is where a transcript becomes a webhook call. Stages and their records:

    transcript ready  -> store.begin_turn         (status "transcribed": never lost after this)
    route             -> store.update_turn        (status "routed", decision recorded)
    call agent        -> clauses -> TTS -> playback, while the answer still streams
    answer / failure  -> store.update_turn        (status "answered" | "failed" + reason)
    played            -> store.update_turn        (timings: first frame, interrupted)

Timings are milliseconds from the moment the utterance ended (the silence threshold expired).
A cancelled turn (the speaker left, the channel closed) is still closed in the store as failed.
"""

from __future__ import annotations

import logging
import math

import attrs
import trio

from ..agents.client import call_agent
from ..agents.payload import build_payload
from ..audio.convert import to_discord_pcm
from ..audio.segmenter import UtteranceEnded
from ..errors import AgentError, SttError, TtsError
from ..routing import RouteContext, Router
from ..tts.splitter import ClauseSplitter
from .playback import SpokenAnswer
from .speaker import Decode, SpeakerInfo

log = logging.getLogger("voxbridge.turn")


@attrs.define
class TurnInfo:
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


class _Speech:
    """Streams an answer's clauses through TTS into the channel's playback, one turn's worth."""

    def __init__(self, channel, turn_id: str, speaker: SpeakerInfo, ended_at: float, timings: dict):
        self.channel = channel
        self.services = channel.services
        self.answer = SpokenAnswer(turn_id, speaker.user_id, self.services.settings.tts.lookahead_clauses)
        self.splitter = ClauseSplitter()
        self.clauses_send, self.clauses_receive = trio.open_memory_channel[str](math.inf)
        self.ended_at = ended_at
        self.timings = timings
        self.enqueued = False
        self.tts_errors = 0

    def _ms(self) -> int:
        return round((trio.current_time() - self.ended_at) * 1000)

    async def on_text(self, text: str) -> None:
        for clause in self.splitter.feed(text):
            self._clause(clause)

    def _clause(self, clause: str) -> None:
        self.timings.setdefault("first_clause_ms", self._ms())
        self.clauses_send.send_nowait(clause)

    def finish_text(self) -> None:
        for clause in self.splitter.flush():
            self._clause(clause)
        self.clauses_send.close()

    async def run_tts(self) -> None:
        """Synthesize clause n+1 while clause n plays (bounded by `lookahead_clauses`)."""
        tts = self.services.tts
        try:
            async with self.answer.send:
                async for clause in self.clauses_receive:
                    if tts is None:
                        continue
                    try:
                        speech = await tts.synthesize(clause)
                        pcm = await trio.to_thread.run_sync(to_discord_pcm, speech.audio, speech.rate)
                    except TtsError as exc:
                        self.tts_errors += 1
                        log.warning("event=tts_failed turn=%s error=%r", self.answer.turn_id, str(exc))
                        continue  # skip the clause; the rest of the answer still plays
                    self.timings.setdefault("tts_first_audio_ms", self._ms())
                    if not self.enqueued:
                        self.channel.playback.enqueue(self.answer)
                        self.enqueued = True
                    await self.answer.send.send(pcm)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # barge-in or queue overflow stopped this answer
        finally:
            if not self.enqueued:
                self.answer.done.set()  # nothing to play


async def run_turn(channel, speaker: SpeakerInfo, utterance: UtteranceEnded, decode: Decode, ended_at: float) -> None:
    services = channel.services
    settings = services.settings
    store = services.store
    timings: dict = {"early_decode": decode.early}
    turn: TurnInfo | None = None
    status = "transcribed"

    def ms() -> int:
        return round((trio.current_time() - ended_at) * 1000)

    try:
        # 1. Transcript (usually already there: decoding started at silence onset).
        try:
            transcript = await decode.wait()
        except SttError as exc:
            start = await store.begin_turn({
                "guild_id": speaker.guild_id, "channel_id": speaker.channel_id, "user_id": speaker.user_id,
                "user_name": speaker.user_name, "transcript": "", "duration_ms": round(len(utterance.audio) / 16),
            })
            await store.update_turn(start.turn_id, status="failed", error=f"stt: {exc}", timings=timings)
            services.emit("turn_failed", turn=start.turn_id, user=speaker.user_name, reason="stt", error=str(exc))
            return
        wait_ms = round((decode.finished_at - ended_at) * 1000)
        timings.update(stt_ms=max(0, wait_ms), stt_ready_ms=wait_ms, stt_decode_ms=round(transcript.timings.get("decode_s", 0) * 1000))
        if transcript.empty:
            services.counters["stt_dropped"] += 1
            services.emit("stt_dropped", user=speaker.user_name, reason=transcript.dropped, duration_s=transcript.duration_s)
            return

        # 2. Stored before anything else can fail.
        start = await store.begin_turn({
            "guild_id": speaker.guild_id, "channel_id": speaker.channel_id, "user_id": speaker.user_id,
            "user_name": speaker.user_name, "transcript": transcript.text, "language": transcript.language,
            "confidence": transcript.confidence, "duration_ms": round(transcript.duration_s * 1000), "timings": timings,
        })
        turn = TurnInfo(start.turn_id, start.number, start.conversation_id, start.session_id, speaker.user_id,
                        speaker.user_name, speaker.guild_id, speaker.channel_id, transcript.language,
                        transcript.confidence, round(transcript.duration_s * 1000))
        timings["stored_ms"] = ms()
        channel.turns_in_flight += 1
        services.emit("turn_transcribed", turn=turn.turn_id, number=turn.number, user=speaker.user_name,
                      text=transcript.text, confidence=transcript.confidence, stt_ms=timings["stt_ms"])

        # 3. Route, with the agents config as it is now (a reload mid-turn does not affect us).
        agents_cfg = services.agents.current
        decision = Router(agents_cfg).route(RouteContext(transcript.text, speaker.guild_id, speaker.channel_id,
                                                         speaker.user_id, start.pinned_agent))
        agent = agents_cfg.get(decision.agent_ids[0])
        timings["routed_ms"] = ms()
        await store.record_decision({"turn_id": turn.turn_id, "method": decision.method, "rule_id": decision.rule_id,
                                     "agent_ids": list(decision.agent_ids), "latency_ms": decision.latency_ms})
        history = await store.recent_turns(turn.conversation_id, agents_cfg.routing.history_turns)
        await store.update_turn(turn.turn_id, status="routed", agent_id=agent.id, route_method=decision.method)
        status = "routed"
        services.emit("turn_routed", turn=turn.turn_id, user=speaker.user_name, agent=agent.id, method=decision.method)

        # 4. Call the agent; speak clauses as they stream in.
        payload = build_payload(text=transcript.text, turn=turn, agent_id=agent.id, previous_turns=history,
                                streaming=agent.streaming)
        speech = _Speech(channel, turn.turn_id, speaker, ended_at, timings)
        timings["agent_request_ms"] = ms()
        async with trio.open_nursery() as nursery:  # bounds this turn's TTS task
            nursery.start_soon(speech.run_tts)
            try:
                answer = await call_agent(agent, payload, services.http, speech.on_text)
            except AgentError as exc:
                speech.splitter.flush()
                notice = settings.agents.failure_notice.format(agent=agent.name) if settings.agents.failure_notice else ""
                if notice:
                    await speech.on_text(notice)
                speech.finish_text()
                timings["failed_ms"] = ms()
                await store.update_turn(turn.turn_id, status="failed", error=f"{exc.reason}: {exc.detail}"[:500], timings=timings)
                status = "failed"
                services.counters["turns_failed"] += 1
                services.emit("turn_failed", turn=turn.turn_id, user=speaker.user_name, agent=agent.id,
                              reason=exc.reason, error=str(exc))
            else:
                speech.finish_text()
                if answer.first_byte_s is not None:
                    timings["agent_first_byte_ms"] = timings["agent_request_ms"] + round(answer.first_byte_s * 1000)
                timings["agent_done_ms"] = ms()
                if answer.handoff and agents_cfg.get(answer.handoff):
                    await store.pin_agent(speaker.guild_id, speaker.user_id, answer.handoff)
                await store.update_turn(turn.turn_id, status="answered", response=answer.text, timings=timings,
                                        flags={"attempts": answer.attempts, "handoff": answer.handoff})
                status = "answered"
                services.counters["turns_answered"] += 1
                services.emit("turn_answered", turn=turn.turn_id, user=speaker.user_name, agent=agent.id,
                              text=answer.text, attempts=answer.attempts)
            # 5. Wait until the answer has been played (or interrupted) to record how it went.
            await speech.answer.done.wait()
        if speech.answer.started_at is not None:
            timings["first_frame_ms"] = round((speech.answer.started_at - ended_at) * 1000)
        timings["played_frames"] = speech.answer.frames
        timings["interrupted"] = speech.answer.interrupted
        await store.update_turn(turn.turn_id, timings=timings)
        services.emit("turn_played", turn=turn.turn_id, user=speaker.user_name, status=status,
                      interrupted=speech.answer.interrupted, timings=dict(timings))
    except BaseException as exc:
        cancelled = _only_cancelled(exc)
        if turn is not None and status not in ("answered", "failed"):
            error = "cancelled: the speaker left or the channel closed" if cancelled else f"internal error: {type(exc).__name__}"
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await store.update_turn(turn.turn_id, status="failed", error=error, timings=timings)
            services.emit("turn_cancelled" if cancelled else "turn_failed", turn=turn.turn_id, user=speaker.user_name, error=error)
        if cancelled or not isinstance(exc, Exception):
            raise
        # A bug in one turn is logged and counted; the speaker, channel and daemon carry on.
        services.counters["turn_internal_errors"] += 1
        log.exception("event=turn_internal_error user=%s turn=%s", speaker.user_name, turn.turn_id if turn else None)
    finally:
        if turn is not None:
            channel.turns_in_flight -= 1


def _only_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, bare or wrapped by nurseries in (nested) exception groups."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False
