"""SpeechStream: one answer's text, as it streams in, cut into clauses, synthesized and played.

Clause n+1 is synthesized while clause n plays (bounded by `[tts].lookahead_clauses`); an agent
slow to finish its first sentence has its first words spoken anyway (`FIRST_CHUNK_WAIT_S`). The
thinking cue plays until the first audio is ready. With no playback (`voxbridge say`), clauses are
only split and counted.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

from ..audio.convert import to_discord_pcm
from ..audio.cues import thinking_cue_pcm
from ..errors import TtsError
from ..tts import TtsEngine
from ..tts.splitter import ClauseSplitter
from .playback import Playback, SpokenAnswer

log = logging.getLogger("voxbridge.speech")

# An agent that has not finished its first sentence this long after its first text gets its
# first words spoken anyway (cut at a comma or after FIRST_CHUNK_WORDS words).
FIRST_CHUNK_WAIT_S = 0.25
FIRST_CHUNK_WORDS = 6
CUE_PERIODS = 8  # the thinking cue repeats at most this often (1.5 s each: 12 s)


class SpeechStream:
    """Streams an answer's clauses through TTS into the channel's playback, one answer's worth.

    `timings` (the turn's, in ms from `ended_at`) gains first_clause_ms, tts_first_synth_ms and
    tts_first_audio_ms."""

    def __init__(
        self,
        tts: TtsEngine | None,
        playback: Playback | None,
        answer_id: str,
        speaker_id: str,
        *,
        lookahead: int,
        ended_at: float,
        timings: dict[str, Any],
    ):
        self.tts = tts if playback is not None else None
        self.playback = playback
        self.cue: SpokenAnswer | None = None
        self.answer = SpokenAnswer(answer_id, speaker_id, lookahead)
        self.splitter = ClauseSplitter()
        self.clauses_send, self.clauses_receive = trio.open_memory_channel[str](math.inf)
        self.ended_at = ended_at
        self.timings = timings
        self.enqueued = False
        self.text_finished = False
        self.first_text_at: float | None = None
        self.clauses = 0
        self.tts_errors = 0
        self.said: list[str] = []  # notices spoken (the failure notice), for `voxbridge say`

    def _ms(self) -> int:
        return round((trio.current_time() - self.ended_at) * 1000)

    async def on_text(self, text: str) -> None:
        """More of the agent's answer, as it streams."""
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
        """Forget an unfinished clause (the agent failed mid-answer: it is never spoken)."""
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
        try:
            async with self.answer.send:
                while True:
                    try:
                        clause = await self._next_clause()
                    except trio.EndOfChannel:
                        break
                    await self._speak(clause)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # barge-in or queue overflow stopped this answer
        finally:
            self.stop_cue()
            if not self.enqueued:
                self.answer.done.set()  # nothing to play

    async def _speak(self, clause: str) -> None:
        if self.tts is None or self.playback is None:
            return
        try:
            pcm, synth_s = await synthesize_pcm(self.tts, clause)
            self.timings.setdefault("tts_first_synth_ms", round(synth_s * 1000))
        except TtsError as exc:
            self.tts_errors += 1
            log.warning("event=tts_failed turn=%s error=%r", self.answer.turn_id, str(exc))
            return  # skip the clause; the rest of the answer still plays
        self.timings.setdefault("tts_first_audio_ms", self._ms())
        if not self.enqueued:
            self.stop_cue()  # speech is ready: the thinking cue gives way
            self.playback.enqueue(self.answer)
            self.enqueued = True
        # SpokenAnswer's channel carries (clause, pcm) for answers and bare pcm for cues (Playback.run reads
        # both); playback.py annotates it as bytes only.
        await self.answer.send.send((clause, pcm))

    async def thinking_cue(self) -> None:
        """A soft two-tone pulse every 1.5 s (at most 12 s) until the answer's first audio."""
        if self.playback is None:
            return
        self.cue = SpokenAnswer(f"cue-{self.answer.turn_id}", self.answer.speaker_id, 1)
        pcm = thinking_cue_pcm()
        self.playback.enqueue(self.cue)
        try:
            async with self.cue.send:
                for _ in range(CUE_PERIODS):
                    await self.cue.send.send(pcm)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def stop_cue(self) -> None:
        if self.cue is not None and not self.cue.done.is_set():
            self.cue.stop(interrupted=False)


async def synthesize_pcm(tts: TtsEngine, clause: str) -> tuple[bytes, float]:
    """A clause as Discord PCM, and the seconds synthesis and conversion took in the worker.
    Engines with a blocking `synthesize_sync` (Piper) do both in one worker call, so the audio
    is ready one thread hop after the clause; others synthesize, then convert in a thread."""
    sync = getattr(tts, "synthesize_sync", None)
    limiter = getattr(tts, "limiter", None)
    if sync is None or limiter is None:
        t0 = time.perf_counter()
        speech = await tts.synthesize(clause)
        pcm = await trio.to_thread.run_sync(to_discord_pcm, speech.audio, speech.rate)
        return pcm, time.perf_counter() - t0

    def work() -> tuple[bytes, float]:
        t0 = time.perf_counter()
        speech = sync(clause)
        return to_discord_pcm(speech.audio, speech.rate), time.perf_counter() - t0

    try:
        return await trio.to_thread.run_sync(work, limiter=limiter)
    except TtsError:
        raise
    except Exception as exc:
        raise TtsError(f"{tts.name} failed on a {len(clause)}-character clause: {type(exc).__name__}: {exc}") from exc
