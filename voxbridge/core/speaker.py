"""SpeakerSession: one person in one channel, from PCM frames to turns.

    SpeakerSession.run     nursery: bounds this speaker's decodes and turns
    ├── Decode.run         early transcription, started at silence onset, void if speech resumes
    │                      (only on spare capacity: when a decode worker is idle right then)
    └── run_turn  (each)   transcript -> store -> route -> agent -> speech (the channel passes it in)

The VAD+segmenter step runs in a worker thread (ONNX) under the shared VAD limiter. Discord
sends nothing while someone is silent, so after `gap_fill_ms` without frames the segmenter is fed
the silence it missed, which is what ends utterances on a real connection.
"""

from __future__ import annotations

import logging
import time

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
from ..stt import SttEngine
from .utterance import Decode, SpeakerInfo, TurnRunner, has_spare_capacity

log = logging.getLogger("voxbridge.speaker")


class SpeakerSession:
    def __init__(self, channel, info: SpeakerInfo, frames: trio.MemoryReceiveChannel, run_turn: TurnRunner):
        self.channel = channel
        self._run_turn = run_turn
        self.services = channel.services
        self.info = info
        self.frames = frames
        s = self.services.settings
        self.segmenter = Segmenter(
            self.services.vad.new(),
            threshold=s.vad.threshold,
            silence_ms=s.vad.silence_ms,
            early_ms=s.vad.early_ms,
            max_utterance_ms=s.vad.max_utterance_ms,
            preroll_ms=s.vad.preroll_ms,
            min_speech_ms=s.vad.min_speech_ms,
            tail_ms=s.vad.tail_ms,
        )
        self.downsampler = Downsampler()
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._early: Decode | None = None
        self._last_speech_at: float | None = None
        self.stats = {
            "utterances": 0,
            "early_used": 0,
            "early_cancelled": 0,
            "early_skipped": 0,
            "dropped_utterances": 0,
        }

    @property
    def stt(self) -> SttEngine:
        if self.services.stt is None:
            raise RuntimeError("a speaker needs an STT engine (services were opened with stt=False)")
        return self.services.stt

    async def run(self) -> None:
        gap_s = self.services.settings.audio.gap_fill_ms / 1000
        async with trio.open_nursery() as nursery:  # bounds this speaker's decodes and turns
            self._nursery = nursery
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
        if isinstance(event, SpeechStarted):
            self.channel.on_speech_started(self.info)
        elif isinstance(event, SilenceStarted):
            self._start_early(event)
        elif isinstance(event, (SpeechResumed, UtteranceDropped)):
            if self._cancel_early():
                self.stats["early_cancelled"] += 1
            if isinstance(event, UtteranceDropped):
                self.stats["dropped_utterances"] += 1
        elif isinstance(event, UtteranceEnded):
            self._utterance_ended(event)

    def _start_early(self, event: SilenceStarted) -> None:
        """Silence began: decode what was said so far, if a worker is idle right now."""
        self._cancel_early()
        if has_spare_capacity(self.stt):  # speculative work only on an idle worker
            self._early = Decode(self.stt, event.audio, event.utterance, early=True, prompt=self.channel.stt_prompt())
            self._nursery.start_soon(self._early.run)
        else:
            self.stats["early_skipped"] += 1

    def _utterance_ended(self, event: UtteranceEnded) -> None:
        """Use the early decode if it heard this very utterance, else decode now; start the turn."""
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
            decode = Decode(self.stt, event.audio, event.utterance, early=False, prompt=self.channel.stt_prompt())
            self._nursery.start_soon(decode.run)
        vad_ms = round((ended_at - self._last_speech_at) * 1000) if self._last_speech_at is not None else None
        self._nursery.start_soon(self._run_turn, self.channel, self.info, event, decode, ended_at, vad_ms)

    def _cancel_early(self) -> bool:
        if self._early is None:
            return False
        self._early.cancel()
        self._early = None
        return True
