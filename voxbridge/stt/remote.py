"""Remote STT backends: Wyoming (tcp://), OpenAI-compatible (http://), VoxBridge stt-serve (ws://).

All send 16 kHz mono s16le and share the endpoint pool (least outstanding, failover). A remote
peer cannot be asked to forget, so cancellation just drops the connection.
"""

from __future__ import annotations

import io
import json
import logging
import time
import wave

import httpx
import numpy as np
import trio

from ..audio import STT_RATE
from ..audio.convert import float_to_pcm16
from ..errors import SttError
from ..net.endpoints import EndpointPool, bearer_headers
from ..net.wyoming import WyomingConnection, WyomingError
from . import Transcript

log = logging.getLogger("voxbridge.stt")
RETRYABLE = (OSError, WyomingError, trio.BrokenResourceError, trio.TooSlowError, httpx.TransportError, ConnectionError)


class _Remote:
    def __init__(self, settings):
        self.settings = settings
        self.pool = EndpointPool(settings.endpoints)
        self.stats = {"transcribed": 0, "dropped": 0, "errors": 0}
        self.model = True  # readiness: remote engines are "loaded" once configured

    async def load(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def transcribe(self, pcm16k_mono: np.ndarray, *, language: str | None = None, prompt: str | None = None) -> Transcript:
        lang = self.settings.language if language is None else language
        t0 = time.perf_counter()
        try:
            with trio.fail_after(self.settings.timeout_s):
                text, detected = await self.pool.call(lambda ep: self._one(ep, pcm16k_mono, lang), RETRYABLE)
        except (ConnectionError, trio.TooSlowError) as exc:
            self.stats["errors"] += 1
            raise SttError(f"{self.name} STT failed: {exc}") from None
        text = (text or "").strip()
        self.stats["transcribed" if text else "dropped"] += 1
        return Transcript(text=text, language=detected or lang or "", confidence=1.0 if text else 0.0,
                          duration_s=round(len(pcm16k_mono) / STT_RATE, 3),
                          timings={"decode_s": round(time.perf_counter() - t0, 4)}, dropped="" if text else "empty")


class WyomingStt(_Remote):
    """Against a Wyoming ASR server (wyoming-faster-whisper, wyoming-whisper-cpp, ...)."""

    name = "wyoming"

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None):
        conn = await WyomingConnection.connect(endpoint)
        try:
            await conn.send("transcribe", {"language": language} if language else {})
            fmt = {"rate": STT_RATE, "width": 2, "channels": 1}
            await conn.send("audio-start", fmt)
            pcm = float_to_pcm16(audio).tobytes()
            for i in range(0, len(pcm), STT_RATE * 2):  # one-second chunks
                await conn.send("audio-chunk", fmt, pcm[i : i + STT_RATE * 2])
            await conn.send("audio-stop", {})
            while True:
                event = await conn.receive()
                if event.type == "transcript":
                    return event.data.get("text", ""), event.data.get("language")
                if event.type == "error":
                    raise SttError(f"wyoming server error: {event.data.get('text', '')[:200]}")
        finally:
            await conn.aclose()


class OpenAiStt(_Remote):
    """POST /v1/audio/transcriptions (OpenAI, speaches, faster-whisper-server, ...)."""

    name = "openai"

    def __init__(self, settings):
        super().__init__(settings)
        self.http = httpx.AsyncClient(trust_env=False)
        self.headers = bearer_headers(settings.api_key_env)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(STT_RATE)
            w.writeframes(float_to_pcm16(audio).tobytes())
        data = {"model": self.settings.remote_model, "response_format": "json"}
        if language:
            data["language"] = language
        resp = await self.http.post(endpoint.rstrip("/") + "/v1/audio/transcriptions", headers=self.headers, data=data,
                                    files={"file": ("utterance.wav", buf.getvalue(), "audio/wav")}, timeout=self.settings.timeout_s)
        if resp.status_code >= 500:
            raise ConnectionError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise SttError(f"openai STT answered HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            return resp.text, None
        return body.get("text", ""), body.get("language")


class WebsocketStt(_Remote):
    """A client of `voxbridge stt-serve` (one GPU host serving many bot hosts)."""

    name = "websocket"

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None):
        from trio_websocket import open_websocket_url

        async with open_websocket_url(endpoint, connect_timeout=5, disconnect_timeout=2) as ws:
            await ws.send_message(json.dumps({"type": "transcribe", "language": language, "rate": STT_RATE, "format": "s16le"}))
            await ws.send_message(float_to_pcm16(audio).tobytes())
            reply = json.loads(await ws.get_message())
        if reply.get("type") == "error":
            raise SttError(f"stt-serve: {reply.get('error')}")
        return reply.get("text", ""), reply.get("language")
