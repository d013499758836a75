"""Per-speaker utterance segmentation: 16 kHz samples -> VAD -> utterance events.

Pure and synchronous (positions are counted in samples, not wall time), so it is deterministic
in tests and runs in a worker thread together with the VAD model. Events:

    SpeechStarted    enough speech to count (barge-in hooks here)
    SilenceStarted   `early_ms` of silence: start decoding early, with the audio the final
                     utterance will have if the speaker stays quiet
    SpeechResumed    speech came back before `silence_ms`: the early decode is void
    UtteranceEnded   `silence_ms` of silence, or `max_utterance_ms` reached: the utterance
    UtteranceDropped the speech was too short to be an utterance (a cough): void any decode
"""

from __future__ import annotations

import itertools
from collections import deque

import attrs
import numpy as np

from . import STT_RATE
from .vad import WINDOW, Vad

_ids = itertools.count(1)


@attrs.frozen
class SpeechStarted:
    utterance: int


@attrs.frozen
class SilenceStarted:
    utterance: int
    audio: np.ndarray = attrs.field(eq=False, repr=lambda a: f"<{len(a)} samples>")


@attrs.frozen
class SpeechResumed:
    utterance: int


@attrs.frozen
class UtteranceEnded:
    utterance: int
    audio: np.ndarray = attrs.field(eq=False, repr=lambda a: f"<{len(a)} samples>")
    reason: str  # "silence" | "max_length" | "flush"
    speech_ms: int
    early: bool  # a SilenceStarted with this exact audio preceded it


@attrs.frozen
class UtteranceDropped:
    utterance: int


Event = SpeechStarted | SilenceStarted | SpeechResumed | UtteranceEnded | UtteranceDropped


def _ms(samples: int) -> int:
    return samples * 1000 // STT_RATE


def _samples(ms: int) -> int:
    return ms * STT_RATE // 1000


class Segmenter:
    def __init__(
        self,
        vad: Vad,
        *,
        threshold: float = 0.5,
        silence_ms: int = 800,
        early_ms: int = 150,
        max_utterance_ms: int = 45_000,
        preroll_ms: int = 200,
        min_speech_ms: int = 200,
        tail_ms: int = 150,
    ):
        self.vad = vad
        self.on = threshold
        self.off = max(0.0, threshold - 0.15)  # hysteresis: speech ends below this
        self.silence = _samples(silence_ms)
        self.early = _samples(early_ms) if early_ms else 0
        self.max_len = _samples(max_utterance_ms)
        self.min_speech = _samples(min_speech_ms)
        self.tail = _samples(tail_ms)
        self._pending = np.zeros(0, np.float32)  # less than one window
        self._preroll_windows = max(1, _samples(preroll_ms) // WINDOW)
        self._preroll: deque[np.ndarray] = deque(maxlen=self._preroll_windows)
        self._chunks: list[np.ndarray] = []  # the current utterance's windows
        self._id: int | None = None
        self._speech_samples = 0
        self._in_speech = False
        self._last_speech_end = 0  # sample count within the utterance
        self._silence_run = 0
        self._early_sent = False
        self._started_sent = False

    @property
    def active(self) -> bool:
        return self._id is not None

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def process(self, samples: np.ndarray) -> list[Event]:
        """Feed 16 kHz mono float32 samples; returns the events they complete."""
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(data) // WINDOW
        self._pending = data[n * WINDOW :]
        if n == 0:
            return []
        windows = data[: n * WINDOW].reshape(n, WINDOW)
        probs = self.vad.probs(windows)
        events: list[Event] = []
        for window, p in zip(windows, probs, strict=True):
            self._step(window, float(p), events)
        return events

    def flush(self) -> list[Event]:
        """End of stream (the speaker left): close an open utterance as if silence followed."""
        events: list[Event] = []
        if self._id is not None:
            self._finish("flush", events)
        return events

    def _utterance_len(self) -> int:
        return len(self._chunks) * WINDOW

    def _cut(self) -> np.ndarray:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return audio[: self._last_speech_end + self.tail]

    def _step(self, window: np.ndarray, p: float, events: list[Event]) -> None:
        speech = p >= self.on if not self._in_speech else p >= self.off
        if self._id is None:
            if not speech:
                self._preroll.append(window)
                return
            # Onset: the utterance starts with the pre-roll so first syllables survive.
            self._id = next(_ids)
            self._chunks = list(self._preroll)
            self._preroll.clear()
            self._speech_samples = 0
            self._early_sent = False
            self._started_sent = False
        self._chunks.append(window)
        if speech:
            if self._early_sent:
                events.append(SpeechResumed(self._id))
                self._early_sent = False
            self._in_speech = True
            self._silence_run = 0
            self._speech_samples += WINDOW
            self._last_speech_end = self._utterance_len()
            if not self._started_sent and self._speech_samples >= self.min_speech:
                events.append(SpeechStarted(self._id))
                self._started_sent = True
            if self._utterance_len() + WINDOW > self.max_len:  # the next window would pass the cap
                self._finish("max_length", events)
            return
        self._in_speech = False
        self._silence_run += WINDOW
        if self._silence_run >= self.silence:
            self._finish("silence", events)
        elif self.early and not self._early_sent and self._silence_run >= self.early:
            if self._speech_samples >= self.min_speech:
                events.append(SilenceStarted(self._id, self._cut()))
                self._early_sent = True

    def _finish(self, reason: str, events: list[Event]) -> None:
        assert self._id is not None
        if self._speech_samples >= self.min_speech:
            events.append(UtteranceEnded(self._id, self._cut(), reason, _ms(self._speech_samples), self._early_sent))
        else:
            events.append(UtteranceDropped(self._id))
        keep_tail = self._chunks[-self._preroll_windows :] if reason == "max_length" else []
        self._id = None
        self._chunks = []
        self._in_speech = False
        self._silence_run = 0
        self._early_sent = False
        self._preroll.clear()
        self._preroll.extend(keep_tail)
