"""Remote STT backends: Wyoming (tcp://), OpenAI-compatible (http://), VoxBridge stt-serve (ws://).

All send 16 kHz mono s16le and share the endpoint pool (least outstanding, failover; each
attempt has its share of `timeout_s`). A remote peer cannot be asked to forget, so cancellation
just drops the connection. What comes back goes through the same hallucination filter as the
local engine (`filters.remote_drop_reason`); a confidence the server sends is kept. Any failure
is an SttError (it fails its turn, never the channel).
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import wave

import httpx
import numpy as np
import trio

from ..audio import STT_RATE
from ..audio.convert import float_to_pcm16
from ..errors import SttError
from ..net.endpoints import EndpointPool, bearer_headers, describe_error
from ..net.wyoming import WyomingConnection, WyomingError
from . import Transcript
from .filters import remote_drop_reason

log = logging.getLogger("voxbridge.stt")
RETRYABLE = (OSError, WyomingError, trio.BrokenResourceError, trio.TooSlowError, httpx.TransportError, ConnectionError)
WS_CHUNK = 256 * 1024  # stt-serve takes the PCM in messages of at most this size (its limit: 1 MiB)
MAX_AUDIO_S = 120  # stt-serve's limit per request


class _Remote:
    name: str  # the backend, set by each subclass

    def __init__(self, settings):
        self.settings = settings
        self.pool = EndpointPool(settings.endpoints)
        self.stats = {"transcribed": 0, "dropped": 0, "errors": 0}
        self.model = True  # readiness: remote engines are "loaded" once configured

    async def load(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None, prompt: str | None) -> tuple:
        """(text, language, confidence, segments) or (text, language) from one endpoint. `prompt`
        (addressed mode: the bot's name) goes to the server where its protocol carries one."""
        raise NotImplementedError

    async def transcribe(
        self, pcm16k_mono: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        lang = self.settings.language if language is None else language
        t0 = time.perf_counter()
        try:
            reply = await self.pool.call(
                lambda ep: self._one(ep, pcm16k_mono, lang, prompt),
                RETRYABLE,
                timeout_s=self.settings.timeout_s,
                what="transcript",
            )
            text, detected, confidence, segments = reply if len(reply) == 4 else (*reply, None, None)
        except SttError:
            self.stats["errors"] += 1
            raise
        except Exception as exc:  # ConnectionError from the pool, or anything a peer provoked
            self.stats["errors"] += 1
            raise SttError(f"{self.name} STT failed: {describe_error(exc)}") from None
        text = " ".join((text or "").split())
        if confidence is None and segments:
            confidence = math.exp(sum(lp for _, _, lp in segments) / len(segments))
        reason = remote_drop_reason(
            text,
            pcm16k_mono,
            confidence=confidence,
            segments=segments,
            no_speech_threshold=self.settings.no_speech_threshold,
        )
        if reason:
            self.stats["dropped"] += 1
            log.info(
                "event=stt_dropped reason=%s backend=%s duration_s=%.2f", reason, self.name, len(pcm16k_mono) / STT_RATE
            )
        else:
            self.stats["transcribed"] += 1
        if confidence is None:
            confidence = 1.0  # the server did not say (Wyoming): what it sent is all there is
        return Transcript(
            text="" if reason else text,
            language=detected or lang or "",
            confidence=0.0 if reason else round(min(1.0, max(0.0, float(confidence))), 3),
            duration_s=round(len(pcm16k_mono) / STT_RATE, 3),
            timings={"decode_s": round(time.perf_counter() - t0, 4)},
            dropped=reason,
        )


class WyomingStt(_Remote):
    """Against a Wyoming ASR server (wyoming-faster-whisper, wyoming-whisper-cpp, ...). Wyoming's
    transcribe event has no prompt: give the server one of its own (wyoming-faster-whisper
    `--initial-prompt "VoxBridge."`)."""

    name = "wyoming"

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None, prompt: str | None):
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
                if event.type == "transcript":  # stt-serve also sends its confidence
                    return (
                        str(event.data.get("text") or ""),
                        event.data.get("language"),
                        _confidence(event.data.get("confidence")),
                        None,
                    )
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

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None, prompt: str | None):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(STT_RATE)
            w.writeframes(float_to_pcm16(audio).tobytes())
        data = {"model": self.settings.remote_model, "response_format": "json"}
        if language:
            data["language"] = language
        if prompt:
            data["prompt"] = prompt  # OpenAI's field; speaches / faster-whisper-server pass it to Whisper
        resp = await self.http.post(
            endpoint.rstrip("/") + "/v1/audio/transcriptions",
            headers=self.headers,
            data=data,
            files={"file": ("utterance.wav", buf.getvalue(), "audio/wav")},
            timeout=self.settings.timeout_s,
        )
        if resp.status_code >= 500:
            raise ConnectionError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise SttError(f"openai STT answered HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            return resp.text, None
        if not isinstance(body, dict):
            raise SttError("openai STT answered JSON that is not an object")
        segments = None
        if isinstance(body.get("segments"), list):  # verbose_json: judge like the local engine
            try:
                segments = [
                    (str(g.get("text", "")), float(g.get("no_speech_prob", 0.0)), float(g.get("avg_logprob", 0.0)))
                    for g in body["segments"]
                ]
            except (TypeError, ValueError, AttributeError):
                segments = None
        return str(body.get("text") or ""), body.get("language"), _confidence(body.get("confidence")), segments


class WebsocketStt(_Remote):
    """A client of `voxbridge stt-serve` (one GPU host serving many bot hosts)."""

    name = "websocket"

    async def _one(self, endpoint: str, audio: np.ndarray, language: str | None, prompt: str | None):
        """The header, then the PCM in messages of at most WS_CHUNK bytes (a 45 s utterance is
        1.4 MB: over the 1 MiB a websocket message may have). A rejected handshake, a closed
        connection or a timeout is a ConnectionError (the next endpoint is tried)."""
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

        if len(audio) > MAX_AUDIO_S * STT_RATE:
            raise SttError(f"utterance of {len(audio) / STT_RATE:.0f}s is longer than stt-serve's {MAX_AUDIO_S}s limit")
        pcm = float_to_pcm16(audio).tobytes()
        header = {
            "type": "transcribe",
            "language": language,
            "rate": STT_RATE,
            "channels": 1,
            "format": "s16le",
            "bytes": len(pcm),
        }
        if prompt:
            header["prompt"] = prompt
        try:
            async with open_websocket_url(endpoint, connect_timeout=5, disconnect_timeout=2) as ws:
                await ws.send_message(json.dumps(header))
                for i in range(0, len(pcm), WS_CHUNK):
                    await ws.send_message(pcm[i : i + WS_CHUNK])
                message = await ws.get_message()
        except (HandshakeError, ConnectionClosed) as exc:
            raise ConnectionError(f"websocket {describe_error(exc)}") from None
        except BaseExceptionGroup as group:  # trio-websocket's internal nursery
            if group.subgroup(lambda e: not isinstance(e, Exception)) is not None:
                raise  # a Cancelled inside: not ours to swallow
            leaf = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise ConnectionError(f"websocket {describe_error(leaf)}") from None
        try:
            reply = json.loads(message)
        except (ValueError, TypeError):
            raise SttError("stt-serve answered something that is not JSON") from None
        if not isinstance(reply, dict) or reply.get("type") == "error":
            raise SttError(f"stt-serve: {reply.get('error') if isinstance(reply, dict) else 'unexpected answer'}")
        return str(reply.get("text") or ""), reply.get("language"), _confidence(reply.get("confidence")), None


def _confidence(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1 else None
