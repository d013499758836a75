"""Text to speech: a protocol, one module per backend, a registry keyed by `backend`."""

from __future__ import annotations

from typing import Protocol

import attrs
import numpy as np


@attrs.frozen
class Speech:
    audio: np.ndarray = attrs.field(eq=False)  # mono float32
    rate: int


class TtsEngine(Protocol):
    name: str

    async def synthesize(self, text: str, *, voice: str | None = None) -> Speech: ...

    async def aclose(self) -> None:
        """Release what the engine holds (an HTTP client); the one who created it calls this."""
        ...


async def create_tts(settings) -> TtsEngine | None:
    if settings.tts.backend == "none":
        return None
    if settings.tts.backend == "piper":
        from .piper import PiperTts

        engine = PiperTts(settings.tts)
        await engine.load()
        return engine
    from .remote import OpenAiTts, WyomingTts

    remote = {"wyoming": WyomingTts, "openai": OpenAiTts}.get(settings.tts.backend)
    if remote is not None:
        return remote(settings.tts)
    raise ValueError(f"unknown tts backend {settings.tts.backend!r}")
