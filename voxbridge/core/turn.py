"""One turn: an utterance becomes a transcript, a stored row, a routed agent call and speech.

This is where a transcript becomes a webhook call. Stages and their records:

    transcript ready  -> store.begin_turn         (status "transcribed": never lost after this)
    route             -> store.update_turn        (status "routed", decision recorded)
    call agent(s)     -> clauses -> TTS -> playback, while the answer still streams
    answer / failure  -> store.update_turn        (status "answered" | "failed" + reason)
    played            -> store.update_turn        (timings: first frame, interrupted)

`run_turn` is the voice path (decode -> `answer_transcript` -> playback); `voxbridge say` calls
`answer_transcript` directly, so typed text is routed exactly as speech would be.
Timings are milliseconds from the moment the utterance ended (the silence threshold expired).
A cancelled turn (the speaker left, the channel closed) is still closed in the store as failed.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import attrs
import numpy as np
import trio

from ..agents.client import AgentAnswer, call_agent
from ..agents.config import AgentsConfig, AgentSpec
from ..agents.payload import build_payload
from ..audio.convert import to_discord_pcm
from ..audio.segmenter import UtteranceEnded
from ..core.conversation import addressed, split_message
from ..errors import AgentError, SttError, TtsError
from ..routing import RouteContext, RouteDecision, Router
from ..stt import Transcript
from ..tts.splitter import ClauseSplitter
from .playback import Playback, SpokenAnswer
from .speaker import Decode, SpeakerInfo

log = logging.getLogger("voxbridge.turn")

OnText = Callable[[str], Awaitable[None]]
# An agent that has not finished its first sentence this long after its first text gets its
# first words spoken anyway (cut at a comma or after FIRST_CHUNK_WORDS words).
FIRST_CHUNK_WAIT_S = 0.25
FIRST_CHUNK_WORDS = 6


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


@attrs.define
class TurnOutcome:
    turn_id: str | None
    status: str  # answered | failed | dropped
    decision: RouteDecision | None = None
    text: str = ""
    error: str | None = None
    speech: _Speech | None = None


class _Speech:
    """Streams an answer's clauses through TTS into the channel's playback, one turn's worth.

    With no playback (`voxbridge say`), clauses are only split and counted."""

    def __init__(self, services, playback: Playback | None, turn_id: str, speaker: SpeakerInfo, ended_at: float, timings: dict):
        self.services = services
        self.playback = playback
        self.cue: SpokenAnswer | None = None
        self.answer = SpokenAnswer(turn_id, speaker.user_id, services.settings.tts.lookahead_clauses)
        self.splitter = ClauseSplitter()
        self.clauses_send, self.clauses_receive = trio.open_memory_channel[str](math.inf)
        self.ended_at = ended_at
        self.timings = timings
        self.enqueued = False
        self.text_finished = False
        self.spoken_text = False  # any clause of an agent's answer reached the splitter
        self.first_text_at: float | None = None
        self.clauses = 0
        self.tts_errors = 0
        self.said: list[str] = []  # notices spoken (the failure notice), for `voxbridge say`

    def _ms(self) -> int:
        return round((trio.current_time() - self.ended_at) * 1000)

    async def on_text(self, text: str) -> None:
        self.spoken_text = True
        if self.first_text_at is None:
            self.first_text_at = trio.current_time()
        for clause in self.splitter.feed(text):
            self._clause(clause)

    def say(self, text: str) -> None:
        """Queue whole sentences (notices, broadcast answers) after what is pending."""
        self.said.append(text)
        for clause in self.splitter.feed(text + "\n"):
            self._clause(clause)

    def _clause(self, clause: str) -> None:
        self.timings.setdefault("first_clause_ms", self._ms())
        self.clauses += 1
        self.clauses_send.send_nowait(clause)

    async def _next_clause(self) -> str:
        """The next clause; while none has come yet, an agent slow to finish its first sentence
        has its first words cut off as a short first chunk (FIRST_CHUNK_WAIT_S after its first
        text) so synthesis starts. Raises EndOfChannel after the last clause."""
        retry_at = 0.0
        while not self.clauses and not self.text_finished:
            if self.first_text_at is None:  # no text yet: look again later
                deadline = trio.current_time() + FIRST_CHUNK_WAIT_S
            else:
                deadline = max(self.first_text_at + FIRST_CHUNK_WAIT_S, retry_at)
            with trio.move_on_at(deadline):
                return await self.clauses_receive.receive()
            slow = self.first_text_at is not None and trio.current_time() >= self.first_text_at + FIRST_CHUNK_WAIT_S
            if slow and not self.clauses:
                for clause in self.splitter.first_chunk(FIRST_CHUNK_WORDS):
                    self._clause(clause)
                retry_at = trio.current_time() + 0.05  # not enough words yet: look again shortly
        return await self.clauses_receive.receive()

    def drop_partial(self) -> None:
        self.splitter.flush()

    def finish_text(self) -> None:
        """No more text for this answer (idempotent): the last clause goes to TTS."""
        if self.text_finished:
            return
        self.text_finished = True
        for clause in self.splitter.flush():
            self._clause(clause)
        self.clauses_send.close()

    async def run_tts(self) -> None:
        """Synthesize clause n+1 while clause n plays (bounded by `lookahead_clauses`)."""
        tts = self.services.tts if self.playback is not None else None
        try:
            async with self.answer.send:
                while True:
                    try:
                        clause = await self._next_clause()
                    except trio.EndOfChannel:
                        break
                    if tts is None:
                        continue
                    try:
                        pcm, synth_s = await _synthesize_pcm(tts, clause)
                        self.timings.setdefault("tts_first_synth_ms", round(synth_s * 1000))
                    except TtsError as exc:
                        self.tts_errors += 1
                        log.warning("event=tts_failed turn=%s error=%r", self.answer.turn_id, str(exc))
                        continue  # skip the clause; the rest of the answer still plays
                    self.timings.setdefault("tts_first_audio_ms", self._ms())
                    if not self.enqueued:
                        self.stop_cue()  # speech is ready: the thinking cue gives way
                        self.playback.enqueue(self.answer)
                        self.enqueued = True
                    await self.answer.send.send((clause, pcm))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # barge-in or queue overflow stopped this answer
        finally:
            self.stop_cue()
            if not self.enqueued:
                self.answer.done.set()  # nothing to play

    async def thinking_cue(self) -> None:
        """A soft two-tone pulse every 1.5 s (at most 12 s) until the answer's first audio."""
        if self.playback is None:
            return
        from ..audio.convert import to_discord_pcm

        self.cue = SpokenAnswer(f"cue-{self.answer.turn_id}", self.answer.speaker_id, 1)
        rate = 24000
        t = np.arange(int(0.12 * rate)) / rate
        env = np.sin(np.pi * t / t[-1]) ** 2
        pulse = np.concatenate([0.03 * np.sin(2 * np.pi * 660 * t) * env, np.zeros(int(0.05 * rate)),
                                0.03 * np.sin(2 * np.pi * 880 * t) * env]).astype(np.float32)
        gap = np.zeros(int(1.2 * rate), np.float32)
        pcm = to_discord_pcm(np.concatenate([pulse, gap]), rate)
        self.playback.enqueue(self.cue)
        try:
            async with self.cue.send:
                for _ in range(8):
                    await self.cue.send.send(pcm)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def stop_cue(self) -> None:
        if self.cue is not None and not self.cue.done.is_set():
            self.cue.stop(interrupted=False)


async def _synthesize_pcm(tts, clause: str) -> tuple[bytes, float]:
    """A clause as Discord PCM, and the seconds synthesis and conversion took in the worker.
    Engines with a blocking `synthesize_sync` (Piper) do both in one worker call, so the audio
    is ready one thread hop after the clause; others synthesize, then convert in a thread."""
    sync = getattr(tts, "synthesize_sync", None)
    if sync is None or getattr(tts, "limiter", None) is None:
        t0 = time.perf_counter()
        speech = await tts.synthesize(clause)
        pcm = await trio.to_thread.run_sync(to_discord_pcm, speech.audio, speech.rate)
        return pcm, time.perf_counter() - t0

    def work() -> tuple[bytes, float]:
        t0 = time.perf_counter()
        speech = sync(clause)
        return to_discord_pcm(speech.audio, speech.rate), time.perf_counter() - t0

    try:
        return await trio.to_thread.run_sync(work, limiter=tts.limiter)
    except TtsError:
        raise
    except Exception as exc:
        raise TtsError(f"{tts.name} failed on a {len(clause)}-character clause: {type(exc).__name__}: {exc}") from exc


async def run_turn(channel, speaker: SpeakerInfo, utterance: UtteranceEnded, decode: Decode, ended_at: float,
                   vad_ms: int | None = None) -> None:
    """The voice path: wait for the transcript, answer it, wait until the answer has played."""
    services = channel.services
    timings: dict = {"early_decode": decode.early}
    if vad_ms is not None:
        timings["vad_ms"] = vad_ms  # last speech heard -> utterance cut (silence_ms + processing)
    try:
        transcript = await decode.wait()
    except SttError as exc:
        start = await services.store.begin_turn({
            "guild_id": speaker.guild_id, "channel_id": speaker.channel_id, "user_id": speaker.user_id,
            "user_name": speaker.user_name, "transcript": "", "duration_ms": round(len(utterance.audio) / 16),
        })
        await services.store.update_turn(start.turn_id, status="failed", error=f"stt: {exc}", timings=timings)
        services.counters["turns_failed"] += 1
        services.emit("turn_failed", turn=start.turn_id, user=speaker.user_name, reason="stt", error=str(exc))
        return
    wait_ms = round((decode.finished_at - ended_at) * 1000)
    timings.update(stt_ms=max(0, wait_ms), stt_ready_ms=wait_ms, stt_decode_ms=round(transcript.timings.get("decode_s", 0) * 1000))
    channel.turns_in_flight += 1
    try:
        await answer_transcript(services, speaker, transcript, ended_at=ended_at, timings=timings,
                                playback=channel.playback, room=channel)
    finally:
        channel.turns_in_flight -= 1


async def answer_transcript(services, speaker: SpeakerInfo, transcript: Transcript, *, ended_at: float, timings: dict,
                            playback: Playback | None, on_text: OnText | None = None,
                            on_decision: Callable[[RouteDecision], None] | None = None, room=None) -> TurnOutcome:
    """Store, route, call the agent(s), speak; the turn row ends answered, failed or not_routed.

    `room` is the ChannelSession when the words were spoken in one: its mode (conversation,
    addressed, transcribe), echo guard and text mirror apply."""
    store = services.store
    if transcript.empty:
        services.counters["stt_dropped"] += 1
        services.emit("stt_dropped", user=speaker.user_name, reason=transcript.dropped, duration_s=transcript.duration_s)
        return TurnOutcome(None, "dropped")
    turn: TurnInfo | None = None
    status = "transcribed"

    def ms() -> int:
        return round((trio.current_time() - ended_at) * 1000)

    try:
        # 1. Stored before anything else can fail.
        start = await store.begin_turn({
            "id": str(uuid.uuid4()),  # chosen here, so a retried insert is recognised, not duplicated
            "guild_id": speaker.guild_id, "channel_id": speaker.channel_id, "user_id": speaker.user_id,
            "user_name": speaker.user_name, "transcript": transcript.text, "language": transcript.language,
            "confidence": transcript.confidence, "duration_ms": round(transcript.duration_s * 1000), "timings": timings,
        }, history=services.agents.current.routing.history_turns)
        turn = TurnInfo(start.turn_id, start.number, start.conversation_id, start.session_id, speaker.user_id,
                        speaker.user_name, speaker.guild_id, speaker.channel_id, transcript.language,
                        transcript.confidence, round(transcript.duration_s * 1000))
        timings["stored_ms"] = ms()
        services.emit("turn_transcribed", turn=turn.turn_id, number=turn.number, user=speaker.user_name,
                      text=transcript.text, confidence=transcript.confidence, stt_ms=timings.get("stt_ms", 0))
        text = transcript.text
        if room is not None:
            mode, why = room.effective_mode()
            reason = None
            if not services.rate_limit.allow(speaker.guild_id, speaker.user_id):
                reason = "rate_limited"
            elif room.echo.is_echo(text):
                reason = "echo"  # the bot hearing itself through someone's microphone
            elif mode == "transcribe":
                reason = "transcribe_only"
            elif mode == "addressed":
                stripped = addressed(text, room.wake_phrases())
                if stripped is None:
                    reason = "not_addressed"
                elif not stripped:
                    reason = "wake_phrase_only"
                else:
                    text = stripped
            if reason != "echo":
                await room.post(f"**{speaker.user_name}**: {transcript.text}")
            if reason is not None:
                await store.update_turn(turn.turn_id, status="not_routed", timings=timings,
                                        flags={"mode": mode, "mode_reason": why, "not_routed": reason})
                status = "not_routed"
                services.counters[f"not_routed_{reason}"] += 1
                services.emit("turn_not_routed", turn=turn.turn_id, user=speaker.user_name, mode=mode, reason=reason)
                return TurnOutcome(turn.turn_id, "not_routed", error=reason)
            timings["mode"] = mode

        # 2. Route with the agents config as it is now; a reload mid-turn does not affect this turn.
        agents_cfg: AgentsConfig = services.agents.current
        health = services.agents.health
        router = Router(agents_cfg, health.available, classifier=lambda a, text, c: _classify(services, a, text, c),
                        cursor=services.agents.round_robin)
        decision = await router.route(RouteContext(text, speaker.guild_id, speaker.channel_id, speaker.user_id,
                                                   start.pinned_agent, speaker.roles))
        timings["routed_ms"] = ms()
        if on_decision:
            on_decision(decision)
        history = list(start.history)
        # The decision is written while the request goes out (one thread hop before it leaves,
        # the begin_turn above); every later write of this turn waits until it is recorded.
        route_recorded = trio.Event()

        async def record_route() -> None:
            await store.mark_routed(turn.turn_id, {"turn_id": turn.turn_id, "method": decision.method, "rule_id": decision.rule_id,
                                                   "agent_ids": list(decision.agent_ids), "latency_ms": decision.latency_ms},
                                    agent_id=",".join(decision.agent_ids) or None, route_method=decision.method,
                                    rule_id=decision.rule_id)
            route_recorded.set()

        status = "routed"
        services.emit("turn_routed", turn=turn.turn_id, user=speaker.user_name, agent=",".join(decision.agent_ids) or "-",
                      method=decision.method, rule=decision.rule_id, skipped=list(decision.skipped))

        # 3. Call the agent(s); speak clauses as they stream in.
        speech = _Speech(services, playback, turn.turn_id, speaker, ended_at, timings)

        async def text_out(text: str) -> None:
            await speech.on_text(text)
            if on_text:
                await on_text(text)

        def payload_for(agent: AgentSpec) -> dict:
            return build_payload(text=text, turn=turn, agent_id=agent.id, previous_turns=history, streaming=agent.streaming)

        outcome = TurnOutcome(turn.turn_id, "failed", decision, speech=speech)
        timings["agent_request_ms"] = ms()
        async with trio.open_nursery() as nursery:  # bounds this turn's route record, TTS task (and thinking cue)
            nursery.start_soon(record_route)
            nursery.start_soon(speech.run_tts)
            if room is not None and services.settings.conversation.thinking_cue and playback is not None:
                nursery.start_soon(speech.thinking_cue)
            try:
                call = _broadcast if decision.method == "broadcast" else _single
                answered, error = await call(services, agents_cfg, decision, turn, payload_for, speech, text_out, timings, ms)
            finally:
                speech.finish_text()
            await route_recorded.wait()  # "routed" is never written over "answered"/"failed"
            if answered is not None:
                reply, agent_ids, flags = answered
                timings["agent_done_ms"] = ms()
                await store.update_turn(turn.turn_id, status="answered", response=reply, agent_id=",".join(agent_ids),
                                        timings=timings, flags=flags)
                status = "answered"
                outcome.status, outcome.text = "answered", reply
                services.counters["turns_answered"] += 1
                services.emit("turn_answered", turn=turn.turn_id, user=speaker.user_name, agent=",".join(agent_ids),
                              text=reply, attempts=flags.get("attempts"))
                if room is not None:
                    for part in split_message(f"**{services.settings.general.bot_name}** → {speaker.user_name}: {reply}"):
                        await room.post(part)
            else:
                timings["failed_ms"] = ms()
                await store.update_turn(turn.turn_id, status="failed", error=error[:500], timings=timings)
                status = "failed"
                outcome.error = error
                services.counters["turns_failed"] += 1
                services.emit("turn_failed", turn=turn.turn_id, user=speaker.user_name,
                              agent=",".join(decision.agent_ids) or "-", reason=error.split(":")[0], error=error)
            # 4. Wait until the answer has been played (or interrupted) to record how it went.
            await speech.answer.done.wait()
        if playback is not None:
            if speech.answer.started_at is not None:
                timings["first_frame_ms"] = round((speech.answer.started_at - ended_at) * 1000)
            timings["played_frames"] = speech.answer.frames
            timings["interrupted"] = speech.answer.interrupted
            await store.update_turn(turn.turn_id, timings=timings)
            services.emit("turn_played", turn=turn.turn_id, user=speaker.user_name, status=status,
                          interrupted=speech.answer.interrupted, timings=dict(timings), ended_at=ended_at)
        return outcome
    except BaseException as exc:
        cancelled = _only_cancelled(exc)
        if turn is not None and status not in ("answered", "failed", "not_routed"):
            error = "cancelled: the speaker left or the channel closed" if cancelled else f"internal error: {type(exc).__name__}"
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await store.update_turn(turn.turn_id, status="failed", error=error, timings=timings)
            services.emit("turn_cancelled" if cancelled else "turn_failed", turn=turn.turn_id, user=speaker.user_name, error=error)
        if cancelled or not isinstance(exc, Exception):
            raise
        # A bug in one turn is logged and counted; the speaker, channel and daemon carry on.
        services.counters["turn_internal_errors"] += 1
        log.exception("event=turn_internal_error user=%s turn=%s", speaker.user_name, turn.turn_id if turn else None)
        return TurnOutcome(turn.turn_id if turn else None, "failed", error=f"internal error: {type(exc).__name__}")


async def _call(services, agent: AgentSpec, payload: dict, on_text: OnText) -> AgentAnswer:
    """One agent call under its concurrency limit, feeding its circuit breaker."""
    health = services.agents.health
    health.on_start(agent)
    async with health.limiter(agent):
        try:
            answer = await call_agent(agent, payload, services.http, on_text)
        except AgentError:
            health.record(agent, ok=False)
            raise
    health.record(agent, ok=True)
    return answer


def _notice(services, agent: AgentSpec | None) -> str:
    template = services.settings.agents.failure_notice
    return template.format(agent=agent.name if agent else "the assistant") if template else ""


async def _single(services, cfg, decision, turn: TurnInfo, payload_for, speech: _Speech, text_out, timings, ms):
    """The chosen agent, then its fallbacks while nothing has been said yet (failover)."""
    if not decision.agent_ids:
        if notice := _notice(services, None):
            speech.say(notice)
        return None, "no_agent: no agent is available for this guild, role or right now (circuits open)"
    errors = []
    candidates = [a for a in (*decision.agent_ids, *decision.fallbacks) if cfg.get(a)]
    for i, agent_id in enumerate(candidates):
        agent = cfg.get(agent_id)
        if i and not services.agents.health.available(agent_id):
            continue
        try:
            answer = await _call(services, agent, payload_for(agent), text_out)
        except AgentError as exc:
            errors.append(f"{agent.id}: {exc.reason}" + (f" ({exc.detail})" if exc.detail else ""))
            if speech.spoken_text:  # the agent started talking: never restart with another agent
                speech.drop_partial()
                break
            if i + 1 < len(candidates):
                services.emit("agent_failover", agent=agent.id, reason=exc.reason, to=candidates[i + 1])
            continue
        if answer.first_byte_s is not None:
            timings["agent_first_byte_ms"] = timings["agent_request_ms"] + round(answer.first_byte_s * 1000)
        if answer.handoff and cfg.get(answer.handoff):  # the user's next turns go to that agent
            await services.store.pin_agent(turn.guild_id, turn.user_id, answer.handoff)
            services.emit("agent_handoff", user=turn.user_name, frm=agent.id, to=answer.handoff)
        flags = {"attempts": answer.attempts, "handoff": answer.handoff, "failover_errors": errors}
        return (answer.text, (agent.id,), flags), None
    first = cfg.get(decision.agent_ids[0])
    if notice := _notice(services, first):
        speech.say(notice)
    # "<reason>: <agent>: <reason> (<detail>); <agent>: ...": the first token is always the reason
    reason = errors[0].split(": ", 1)[1].split(" ", 1)[0] if errors else "failed"
    return None, f"{reason}: " + "; ".join(errors)


async def _broadcast(services, cfg, decision, turn: TurnInfo, payload_for, speech: _Speech, text_out, timings, ms):
    """All agents at once; answers are spoken in the configured order, each once complete."""
    agents = [cfg.get(a) for a in decision.agent_ids if cfg.get(a)]
    results: dict[str, AgentAnswer | AgentError] = {}
    done = {a.id: trio.Event() for a in agents}

    async def one(agent: AgentSpec) -> None:
        async def quiet(_text: str) -> None:
            timings.setdefault("agent_first_byte_ms", ms())

        try:
            results[agent.id] = await _call(services, agent, payload_for(agent), quiet)
        except AgentError as exc:
            results[agent.id] = exc
        finally:
            done[agent.id].set()

    async with trio.open_nursery() as nursery:  # bounds the broadcast's agent calls
        for agent in agents:
            nursery.start_soon(one, agent)
        for agent in agents:  # deterministic order: as configured, whoever finishes first
            await done[agent.id].wait()
            result = results[agent.id]
            if isinstance(result, AgentAnswer):
                await text_out(f"{agent.name}: {result.text}\n")
    answered = {a.id: r for a in agents if isinstance(r := results[a.id], AgentAnswer)}
    errors = {a.id: f"{r.reason}" for a in agents if isinstance(r := results[a.id], AgentError)}
    if not answered:
        if notice := _notice(services, agents[0] if agents else None):
            speech.say(notice)
        return None, "all_agents_failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
    text = "\n".join(f"[{a}] {r.text}" for a, r in answered.items())
    return (text, tuple(answered), {"broadcast": {a: r.text for a, r in answered.items()}, "errors": errors}), None


_ID_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]*")


async def _classify(services, classifier: AgentSpec, text: str, candidates) -> str | None:
    """Ask the classifier agent which agent should answer; its reply must name an agent id."""
    listing = "\n".join(f"- {a.id}: {a.name}. {a.description}" for a in candidates)
    prompt = (f"Choose the agent that should answer the user's request. Reply with the agent id only.\n"
              f"Agents:\n{listing}\nRequest: {text}")
    payload = {"text": prompt, "task": "classify", "candidates": [a.id for a in candidates], "transcript": text}
    try:
        answer = await _call(services, classifier, payload, _ignore)
    except AgentError as exc:
        log.warning("event=classifier_failed agent=%s reason=%s", classifier.id, exc.reason)
        return None
    ids = {a.id for a in candidates}
    return next((tok for tok in _ID_TOKEN.findall(answer.text.lower()) if tok in ids), None)


async def _ignore(_text: str) -> None:
    return None


def _only_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, bare or wrapped by nurseries in (nested) exception groups."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False
