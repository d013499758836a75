"""What an utterance carries from its speaker to its turn: who spoke (`SpeakerInfo`) and its
transcription in flight (`Decode`).

A leaf module, so that `speaker.py` (which makes utterances) and `turn.py` (which answers them)
share these types without importing each other; the channel hands the turn runner to the speaker.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

import attrs
import numpy as np
import trio

from ..audio.segmenter import UtteranceEnded
from ..errors import SttError
from ..stt import SttEngine, Transcript


@attrs.frozen
class SpeakerInfo:
    user_id: str
    user_name: str
    guild_id: str
    channel_id: str
    roles: frozenset[str] = frozenset()  # the member's role ids (agent and rule scoping)


def has_spare_capacity(stt: SttEngine) -> bool:
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

    def __init__(self, stt: SttEngine, audio: np.ndarray, utterance: int, early: bool, prompt: str | None = None):
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


class TurnRunner(Protocol):
    """How a speaker starts the turn for an utterance that ended (`core.turn.run_turn`)."""

    def __call__(
        self,
        channel,
        speaker: SpeakerInfo,
        utterance: UtteranceEnded,
        decode: Decode,
        ended_at: float,
        vad_ms: int | None = None,
    ) -> Awaitable[None]: ...
