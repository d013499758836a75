"""Speech to text: one small protocol, one module per backend, a registry keyed by `backend`."""

from __future__ import annotations

from typing import Protocol

import attrs
import numpy as np


@attrs.frozen
class Transcript:
    text: str
    language: str
    confidence: float  # exp(mean avg_logprob) of kept segments, 0..1
    duration_s: float  # audio length
    timings: dict = attrs.field(factory=dict)  # e.g. {"decode_s": 0.41, "queued_s": 0.02}
    dropped: str = ""  # why the text was filtered out ("" when kept)

    @property
    def empty(self) -> bool:
        return not self.text


class SttEngine(Protocol):
    name: str

    async def transcribe(
        self, pcm16k_mono: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript: ...

    async def aclose(self) -> None: ...


def decodes_waiting(stt: object) -> int | None:
    """Transcriptions waiting for a decode worker of an in-process engine (its CapacityLimiter);
    None for engines without one (the remote backends: their queue is the server's)."""
    limiter = getattr(stt, "limiter", None)
    return limiter.statistics().tasks_waiting if limiter is not None else None


async def create_stt(settings) -> SttEngine:
    """Build and load the configured engine (model loading happens in a worker thread)."""
    if settings.stt.backend == "local":
        from .local import LocalWhisper

        engine = LocalWhisper(settings.stt)
        await engine.load()
        return engine
    from .remote import OpenAiStt, WebsocketStt, WyomingStt

    remote = {"wyoming": WyomingStt, "openai": OpenAiStt, "websocket": WebsocketStt}.get(settings.stt.backend)
    if remote is not None:
        return remote(settings.stt)
    raise ValueError(f"unknown stt backend {settings.stt.backend!r}")  # config validation prevents this
