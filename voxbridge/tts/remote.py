"""Remote TTS backends: Wyoming (wyoming-piper, ...) and OpenAI-compatible `/v1/audio/speech`
(OpenAI, Chatterbox, Kokoro, speaches). Several endpoints: least outstanding, failover; each
attempt has its share of `timeout_s`. The OpenAI backend asks for WAV, which carries its sample
rate (servers differ: OpenAI's raw PCM is 24 kHz, others send 22.05 kHz); raw PCM that comes
anyway is read at the rate its headers give (`audio/pcm;rate=22050`, `X-Sample-Rate`), else 24 kHz."""

from __future__ import annotations

import io

import httpx
import numpy as np
import trio

from ..audio.convert import pcm16_to_float
from ..audio.wav import read_wav_mono
from ..errors import TtsError
from ..net.endpoints import EndpointPool, bearer_headers, describe_error
from ..net.wyoming import WyomingConnection, WyomingError
from . import Speech

RETRYABLE = (OSError, WyomingError, trio.BrokenResourceError, trio.TooSlowError, httpx.TransportError, ConnectionError)
OPENAI_PCM_RATE = 24_000  # OpenAI's response_format=pcm: 24 kHz s16le mono


class _Remote:
    name: str  # the backend, set by each subclass

    def __init__(self, settings):
        self.settings = settings
        self.pool = EndpointPool(settings.endpoints)

    async def load(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def _one(self, endpoint: str, text: str, voice: str) -> Speech:
        raise NotImplementedError

    async def synthesize(self, text: str, *, voice: str | None = None) -> Speech:
        try:
            return await self.pool.call(
                lambda ep: self._one(ep, text, voice or self.settings.remote_voice),
                RETRYABLE,
                timeout_s=self.settings.timeout_s,
                what="audio",
            )
        except TtsError:
            raise
        except Exception as exc:  # ConnectionError from the pool, or anything a peer provoked
            raise TtsError(f"{self.name} TTS failed: {describe_error(exc)}") from None


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

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _one(self, endpoint: str, text: str, voice: str) -> Speech:
        body = {"model": self.settings.remote_model, "input": text, "voice": voice or "alloy", "response_format": "wav"}
        resp = await self.http.post(
            endpoint.rstrip("/") + "/v1/audio/speech", json=body, headers=self.headers, timeout=self.settings.timeout_s
        )
        if resp.status_code >= 500:
            raise ConnectionError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise TtsError(f"openai TTS answered HTTP {resp.status_code}")
        return await trio.to_thread.run_sync(
            decode_audio, resp.content, resp.headers.get("content-type", ""), pcm_rate(resp.headers)
        )


def pcm_rate(headers) -> int | None:
    """The sample rate a raw-PCM answer declares: `audio/pcm;rate=22050` (also `audio/L16;
    rate=`, `sample_rate=`, `samplerate=`) or an `X-Sample-Rate`/`Sample-Rate` header."""
    for param in headers.get("content-type", "").split(";")[1:]:
        key, _, value = param.partition("=")
        if (
            key.strip().lower() in ("rate", "sample_rate", "samplerate", "sample-rate")
            and value.strip().strip('"').isdigit()
        ):
            return int(value.strip().strip('"'))
    for name in ("x-sample-rate", "sample-rate", "x-audio-sample-rate"):
        value = headers.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def decode_audio(data: bytes, content_type: str = "", rate: int | None = None) -> Speech:
    """WAV (Chatterbox always answers WAV), MP3 (servers ignoring response_format) or raw PCM."""
    if data[:4] == b"RIFF":
        audio, rate = read_wav_mono(io.BytesIO(data))
        return Speech(audio=audio, rate=rate)
    if "mpeg" in content_type or data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        import av

        with av.open(io.BytesIO(data), mode="r") as container:
            frames = [f.to_ndarray() for f in container.decode(audio=0)]
            rate = container.streams.audio[0].rate
        audio = np.concatenate([f.mean(axis=0) if f.ndim > 1 else f for f in frames]).astype(np.float32)
        if np.abs(audio).max(initial=0) > 1.5:  # integer sample formats
            audio = audio / 32768.0
        return Speech(audio=audio, rate=rate)
    if rate is not None and not 4000 <= rate <= 192_000:
        raise TtsError(f"the TTS server declared an implausible sample rate {rate}")
    return Speech(audio=pcm16_to_float(data), rate=rate or OPENAI_PCM_RATE)
