"""SpeakerSession: one person in one channel, from PCM frames to turns.

    SpeakerSession.run     nursery: bounds this speaker's decodes and turns
    ├── Decode.run         early transcription, started at silence onset, void if speech resumes
    │                      (only on spare capacity: when a decode worker is idle right then)
    └── run_turn  (each)   transcript -> store -> route -> agent -> speech

The VAD+segmenter step runs in a worker thread (ONNX) under the shared VAD limiter. Discord
sends nothing while someone is silent, so after `gap_fill_ms` without frames the segmenter is fed
the silence it missed, which is what ends utterances on a real connection.
"""

from __future__ import annotations

import logging
import time

import attrs
import numpy as np
import trio

from ..audio import FRAME_MS, SILENT_FRAME
from ..audio.convert import Downsampler
from ..audio.segmenter import (
    Segmenter,
    SilenceStarted,
    SpeechResumed,
    SpeechStarted,
    UtteranceDropped,
    UtteranceEnded,
)
from ..audio.vad import WINDOW
from ..errors import SttError
from ..stt import Transcript

log = logging.getLogger("voxbridge.speaker")


@attrs.frozen
class SpeakerInfo:
    user_id: str
    user_name: str
    guild_id: str
    channel_id: str
    roles: frozenset[str] = frozenset()  # the member's role ids (agent and rule scoping)


def has_spare_capacity(stt) -> bool:
    """A decode worker is idle and nobody waits for one (engines without a limiter, the remote
    ones, always say yes: their capacity is the server's business)."""
    limiter = getattr(stt, "limiter", None)
    if limiter is None:
        return True
    return limiter.available_tokens > 0 and limiter.statistics().tasks_waiting == 0


class Decode:
    """One transcription in flight, awaitable by the turn that needs its result.

    An early decode is speculative: it starts only if a worker is idle at the moment it would
    start (checked again in `run`, right before it takes the worker, with no yield in between);
    otherwise it is `skipped` and the final decode runs when the utterance ends."""

    def __init__(self, stt, audio: np.ndarray, utterance: int, early: bool, prompt: str | None = None):
        self.stt = stt
        self.prompt = prompt  # addressed mode: the bot's name, so Whisper spells it as written
        self.audio = audio
        self.utterance = utterance
        self.early = early
        self.scope = trio.CancelScope()
        self._done = trio.Event()
        self.result: Transcript | None = None
        self.error: SttError | None = None
        self.started_at = trio.current_time()
        self.finished_at: float | None = None
        self.speculative = early  # until the utterance really ends with this audio
        self.skipped = False

    async def run(self) -> None:
        try:
            if self.speculative and not has_spare_capacity(self.stt):
                self.skipped = True
                return
            with self.scope:
                self.result = await self.stt.transcribe(self.audio, prompt=self.prompt)
        except SttError as exc:
            self.error = exc
        finally:
            self.finished_at = trio.current_time()
            self._done.set()

    def cancel(self) -> None:
        self.scope.cancel()

    async def wait(self) -> Transcript:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise SttError("transcription was cancelled")
        return self.result


class SpeakerSession:
    def __init__(self, channel, info: SpeakerInfo, frames: trio.MemoryReceiveChannel):
        self.channel = channel
        self.services = channel.services
        self.info = info
        self.frames = frames
        s = self.services.settings
        self.segmenter = Segmenter(
            self.services.vad.new(), threshold=s.vad.threshold, silence_ms=s.vad.silence_ms,
            early_ms=s.vad.early_ms, max_utterance_ms=s.vad.max_utterance_ms,
            preroll_ms=s.vad.preroll_ms, min_speech_ms=s.vad.min_speech_ms, tail_ms=s.vad.tail_ms,
        )
        self.downsampler = Downsampler()
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._early: Decode | None = None
        self._last_speech_at: float | None = None
        self.stats = {"utterances": 0, "early_used": 0, "early_cancelled": 0, "early_skipped": 0, "dropped_utterances": 0}

    async def run(self) -> None:
        from .turn import run_turn

        gap_s = self.services.settings.audio.gap_fill_ms / 1000
        async with trio.open_nursery() as nursery:  # bounds this speaker's decodes and turns
            self._nursery = nursery
            self._run_turn = run_turn
            last_frame = time.monotonic()
            while True:
                frames: list[bytes] = []
                with trio.move_on_after(gap_s):
                    try:
                        frames.append(await self.frames.receive())
                    except trio.EndOfChannel:
                        break
                now = time.monotonic()
                if not frames:
                    if self.segmenter.active:  # feed the silence Discord did not send
                        missing = max(1, int((now - last_frame) * 1000 / FRAME_MS))
                        frames = [SILENT_FRAME] * missing
                    last_frame = now
                else:
                    last_frame = now
                    while True:  # take everything already queued: one VAD call for all of it
                        try:
                            frames.append(self.frames.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                if frames:
                    await self._feed(frames)
            await self._feed([], flush=True)
            # Leaving normally (audio ended): the nursery waits for this speaker's turns.

    async def _feed(self, frames: list[bytes], flush: bool = False) -> None:
        for frame in frames:
            samples = self.downsampler.process(frame)
            self._pending.append(samples)
            self._pending_len += len(samples)
        if self._pending_len < WINDOW and not flush:
            return
        samples = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._pending_len = [], 0

        def step():
            events = self.segmenter.process(samples)
            return events + self.segmenter.flush() if flush else events

        events = await trio.to_thread.run_sync(step, limiter=self.services.vad_limiter)
        if self.segmenter.in_speech:
            self._last_speech_at = trio.current_time()  # for the vad stage: speech end -> cut
        for event in events:
            self._handle(event)

    def _handle(self, event) -> None:
        stt = self.services.stt
        if isinstance(event, SpeechStarted):
            self.channel.on_speech_started(self.info)
        elif isinstance(event, SilenceStarted):
            self._cancel_early()
            if has_spare_capacity(stt):  # speculative work only on an idle worker
                self._early = Decode(stt, event.audio, event.utterance, early=True, prompt=self.channel.stt_prompt())
                self._nursery.start_soon(self._early.run)
            else:
                self.stats["early_skipped"] += 1
        elif isinstance(event, (SpeechResumed, UtteranceDropped)):
            if self._cancel_early():
                self.stats["early_cancelled"] += 1
            if isinstance(event, UtteranceDropped):
                self.stats["dropped_utterances"] += 1
        elif isinstance(event, UtteranceEnded):
            ended_at = trio.current_time()
            self.stats["utterances"] += 1
            early = self._early
            self._early = None
            if early is not None and early.skipped:
                self.stats["early_skipped"] += 1
                early = None
            if event.early and early is not None and early.utterance == event.utterance:
                decode = early
                decode.speculative = False  # needed now: it runs even if it has not started yet
                self.stats["early_used"] += 1
            else:
                if early is not None:
                    early.cancel()
                decode = Decode(stt, event.audio, event.utterance, early=False, prompt=self.channel.stt_prompt())
                self._nursery.start_soon(decode.run)
            vad_ms = round((ended_at - self._last_speech_at) * 1000) if self._last_speech_at is not None else None
            self._nursery.start_soon(self._run_turn, self.channel, self.info, event, decode, ended_at, vad_ms)

    def _cancel_early(self) -> bool:
        if self._early is None:
            return False
        self._early.cancel()
        self._early = None
        return True
