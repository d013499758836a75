"""Remote TTS backends: Wyoming (wyoming-piper, ...) and OpenAI-compatible `/v1/audio/speech`
(OpenAI, Chatterbox, Kokoro, speaches). Several endpoints: least outstanding, failover."""

from __future__ import annotations

import io

import httpx
import numpy as np
import trio

from ..audio.convert import pcm16_to_float
from ..audio.wav import read_wav_mono
from ..errors import TtsError
from ..net.endpoints import EndpointPool, bearer_headers
from ..net.wyoming import WyomingConnection, WyomingError
from . import Speech

RETRYABLE = (OSError, WyomingError, trio.BrokenResourceError, httpx.TransportError, ConnectionError)
OPENAI_PCM_RATE = 24_000  # OpenAI's response_format=pcm: 24 kHz s16le mono


class _Remote:
    def __init__(self, settings):
        self.settings = settings
        self.pool = EndpointPool(settings.endpoints)
        self.voice = True  # readiness

    async def load(self) -> None:
        return None

    async def synthesize(self, text: str, *, voice: str | None = None) -> Speech:
        try:
            with trio.fail_after(self.settings.timeout_s):
                return await self.pool.call(lambda ep: self._one(ep, text, voice or self.settings.remote_voice), RETRYABLE)
        except (ConnectionError, trio.TooSlowError) as exc:
            raise TtsError(f"{self.name} TTS failed: {exc}") from None


class WyomingTts(_Remote):
    name = "wyoming"

    async def _one(self, endpoint: str, text: str, voice: str) -> Speech:
        conn = await WyomingConnection.connect(endpoint)
        try:
            await conn.send("synthesize", {"text": text, **({"voice": {"name": voice}} if voice else {})})
            rate, width, channels, chunks = 22050, 2, 1, []
            while True:
                event = await conn.receive()
                if event.type == "audio-start":
                    rate = int(event.data.get("rate", rate))
                    width = int(event.data.get("width", width))
                    channels = int(event.data.get("channels", channels))
                elif event.type == "audio-chunk":
                    chunks.append(event.payload)
                elif event.type == "audio-stop":
                    break
                elif event.type == "error":
                    raise TtsError(f"wyoming server error: {event.data.get('text', '')[:200]}")
        finally:
            await conn.aclose()
        if width != 2:
            raise TtsError(f"wyoming TTS sent {width * 8}-bit audio; 16-bit expected")
        audio = pcm16_to_float(b"".join(chunks))
        if channels > 1:
            audio = audio[: len(audio) - len(audio) % channels].reshape(-1, channels).mean(axis=1)
        return Speech(audio=audio.astype(np.float32), rate=rate)


class OpenAiTts(_Remote):
    name = "openai"

    def __init__(self, settings):
        super().__init__(settings)
        self.http = httpx.AsyncClient(trust_env=False)
        self.headers = bearer_headers(settings.api_key_env)

    async def _one(self, endpoint: str, text: str, voice: str) -> Speech:
        body = {"model": self.settings.remote_model, "input": text, "voice": voice or "alloy", "response_format": "pcm"}
        resp = await self.http.post(endpoint.rstrip("/") + "/v1/audio/speech", json=body, headers=self.headers,
                                    timeout=self.settings.timeout_s)
        if resp.status_code >= 500:
            raise ConnectionError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise TtsError(f"openai TTS answered HTTP {resp.status_code}")
        return await trio.to_thread.run_sync(decode_audio, resp.content, resp.headers.get("content-type", ""))


def decode_audio(data: bytes, content_type: str = "") -> Speech:
    """WAV (Chatterbox always answers WAV), MP3 (servers ignoring response_format) or raw PCM."""
    if data[:4] == b"RIFF":
        audio, rate = read_wav_mono(io.BytesIO(data))
        return Speech(audio=audio, rate=rate)
    if "mpeg" in content_type or data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        import av

        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray() for f in container.decode(audio=0)]
            rate = container.streams.audio[0].rate
        audio = np.concatenate([f.mean(axis=0) if f.ndim > 1 else f for f in frames]).astype(np.float32)
        if np.abs(audio).max(initial=0) > 1.5:  # integer sample formats
            audio = audio / 32768.0
        return Speech(audio=audio, rate=rate)
    return Speech(audio=pcm16_to_float(data), rate=OPENAI_PCM_RATE)
