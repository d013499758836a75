"""`voxbridge stt-serve`: one GPU host transcribes for many bot hosts.

Serves the local engine (faster-whisper, CapacityLimiter, `max_concurrent_transcriptions`
workers) over two protocols:
- WebSocket (`ws://host:4901`): a JSON header `{"type": "transcribe", "language", "rate",
  "channels", "format": "s16le", "bytes": N, "prompt"}` ("prompt" optional: Whisper's initial
  prompt, e.g. the bot's name in addressed mode; at most MAX_PROMPT_CHARS) then the PCM in binary
  messages until N bytes (without "bytes": one binary message) -> `{"type": "transcript", "text", "confidence", ...}`;
  `{"type": "status"}` -> load (in flight, waiting, served, errors, clients);
- Wyoming (`tcp://host:10300`): describe/info and transcribe/audio-start/audio-chunk/audio-stop ->
  transcript, so Home Assistant or another VoxBridge (`[stt].backend = "wyoming"`) can use it.
Audio may be any rate, mono or stereo (downmixed); at most MAX_AUDIO_S seconds per request,
whatever the rate. `info` lists the configured `[stt].language` (or, when it is empty, what
the model can transcribe).
Concurrent requests from all clients share the engine's workers; with batching (default on CUDA,
`--batch`), requests arriving together are decoded as one batch (`voxbridge/stt/batching.py`).
"""

from __future__ import annotations

import functools
import json
import logging

import trio

from ..audio import STT_RATE
from ..audio.convert import pcm16_to_float, resample
from ..errors import SttError
from ..net.wyoming import WyomingConnection, WyomingError
from . import decodes_waiting

log = logging.getLogger("voxbridge.stt_serve")
MAX_AUDIO_S = 120  # per request, at any rate
WS_MAX_MESSAGE = 4 << 20  # one-message clients: two minutes of 16 kHz mono fits
MAX_PROMPT_CHARS = 500  # Whisper reads at most ~224 prompt tokens; a name and wake phrases need far fewer


def max_audio_bytes(rate: int, channels: int = 1) -> int:
    return MAX_AUDIO_S * rate * 2 * channels


class SttServer:
    def __init__(self, engine, language: str | None = None):
        self.engine = engine
        self.language = language  # the configured [stt].language ("" = auto-detect)
        self.load = {"in_flight": 0, "served": 0, "errors": 0, "clients": 0}

    def languages(self) -> list[str]:
        if self.language:
            return [self.language]
        engine = getattr(self.engine, "engine", self.engine)  # BatchingStt wraps the local engine
        ct2 = getattr(getattr(engine, "model", None), "model", None)  # faster-whisper's ctranslate2 model
        if not getattr(ct2, "is_multilingual", False):  # tiny.en and the other *.en models
            return ["en"]
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return sorted(_LANGUAGE_CODES)

    def status(self) -> dict:
        limiter = getattr(self.engine, "limiter", None)
        waiting = decodes_waiting(self.engine) or 0
        return {
            "type": "status",
            **self.load,
            "waiting": waiting,
            "workers": limiter.total_tokens if limiter is not None else None,
            "device": getattr(self.engine, "device", None),
            "batching": dict(self.engine.stats)
            if hasattr(self.engine, "stats") and "batches" in self.engine.stats
            else None,
        }

    async def transcribe(
        self, pcm: bytes, rate: int, language: str | None, channels: int = 1, prompt: str | None = None
    ) -> dict:
        if not 4000 <= rate <= 192_000 or channels not in (1, 2):
            raise SttError(f"unsupported audio: {rate} Hz, {channels} channels (4-192 kHz, mono or stereo)")
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
            raise SttError(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
        if len(pcm) > max_audio_bytes(rate, channels):
            raise SttError(f"audio longer than {MAX_AUDIO_S} seconds")
        audio = pcm16_to_float(pcm[: len(pcm) - len(pcm) % 2])
        if channels == 2:
            audio = audio[: len(audio) - len(audio) % 2].reshape(-1, 2).mean(axis=1)
        if rate != STT_RATE:
            audio = await trio.to_thread.run_sync(resample, audio, rate, STT_RATE)
        self.load["in_flight"] += 1
        try:
            tr = await self.engine.transcribe(audio, language=language, prompt=prompt or None)
        except SttError:
            self.load["errors"] += 1
            raise
        finally:
            self.load["in_flight"] -= 1
        self.load["served"] += 1
        return {
            "type": "transcript",
            "text": tr.text,
            "language": tr.language,
            "confidence": tr.confidence,
            "duration_s": tr.duration_s,
            "timings": tr.timings,
        }

    # --- WebSocket -------------------------------------------------------------------------------
    async def websocket(self, request) -> None:
        from trio_websocket import ConnectionClosed

        ws = await request.accept()
        self.load["clients"] += 1
        try:
            while True:
                try:
                    header = json.loads(await ws.get_message())
                except ValueError:
                    await ws.send_message(json.dumps({"type": "error", "error": "expected a JSON header"}))
                    continue
                if not isinstance(header, dict):
                    await ws.send_message(json.dumps({"type": "error", "error": "expected a JSON object header"}))
                    continue
                if header.get("type") == "status":
                    await ws.send_message(json.dumps(self.status()))
                    continue
                try:
                    rate, channels = int(header.get("rate") or STT_RATE), int(header.get("channels") or 1)
                    expected = int(header["bytes"]) if header.get("bytes") is not None else None
                except (TypeError, ValueError):
                    await ws.send_message(
                        json.dumps({"type": "error", "error": "rate, channels and bytes must be integers"})
                    )
                    return
                if expected is not None and not 0 < expected <= max_audio_bytes(rate, max(1, channels)):
                    await ws.send_message(
                        json.dumps({"type": "error", "error": f"audio longer than {MAX_AUDIO_S} seconds"})
                    )
                    return  # the client is sending the PCM anyway: close rather than read it
                pcm = bytearray()
                while True:  # one message, or several up to `bytes`
                    part = await ws.get_message()
                    if not isinstance(part, (bytes, bytearray)):
                        break
                    pcm += part
                    if expected is None or len(pcm) >= expected:
                        break
                if not isinstance(part, (bytes, bytearray)) or (expected is not None and len(pcm) != expected):
                    await ws.send_message(
                        json.dumps({"type": "error", "error": "expected binary PCM after the header"})
                    )
                    continue
                try:
                    reply = await self.transcribe(
                        bytes(pcm), rate, header.get("language"), channels, prompt=header.get("prompt")
                    )
                except SttError as exc:
                    reply = {"type": "error", "error": str(exc)}
                await ws.send_message(json.dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            self.load["clients"] -= 1

    # --- Wyoming ---------------------------------------------------------------------------------
    async def wyoming(self, stream: trio.SocketStream) -> None:
        conn = WyomingConnection(stream)
        self.load["clients"] += 1
        language, rate, channels, pcm = None, STT_RATE, 1, bytearray()
        try:
            while True:
                event = await conn.receive()
                if event.type == "describe":
                    await conn.send(
                        "info",
                        {
                            "asr": [
                                {
                                    "name": "voxbridge",
                                    "description": "VoxBridge stt-serve",
                                    "installed": True,
                                    "attribution": {"name": "VoxBridge", "url": ""},
                                    "models": [
                                        {
                                            "name": "whisper",
                                            "languages": self.languages(),
                                            "installed": True,
                                            "description": "faster-whisper",
                                            "attribution": {"name": "faster-whisper", "url": ""},
                                        }
                                    ],
                                }
                            ]
                        },
                    )
                elif event.type == "transcribe":
                    language = event.data.get("language")
                elif event.type == "audio-start":
                    try:
                        rate, width = int(event.data.get("rate", STT_RATE)), int(event.data.get("width", 2))
                        channels = int(event.data.get("channels", 1))
                    except (TypeError, ValueError):
                        width = 0
                    pcm = bytearray()
                    if width != 2 or channels not in (1, 2) or not 4000 <= rate <= 192_000:
                        await conn.send("error", {"text": "send 16-bit mono or stereo audio at 4-192 kHz"})
                        return
                elif event.type == "audio-chunk":
                    pcm += event.payload
                    if len(pcm) > max_audio_bytes(rate, channels):
                        await conn.send("error", {"text": f"audio longer than {MAX_AUDIO_S} seconds"})
                        return
                elif event.type == "audio-stop":
                    try:
                        reply = await self.transcribe(bytes(pcm), rate, language, channels)
                        await conn.send(
                            "transcript",
                            {"text": reply["text"], "language": reply["language"], "confidence": reply["confidence"]},
                        )
                    except SttError as exc:
                        await conn.send("error", {"text": str(exc)})
                    pcm = bytearray()
        except (WyomingError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.load["clients"] -= 1
            await conn.aclose()


async def serve(
    settings,
    *,
    host: str = "127.0.0.1",
    ws_port: int = 4901,
    wyoming_port: int | None = 10300,
    engine=None,
    batch: bool | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """`batch`: decode concurrent requests as one batch (default: on with CUDA, off on CPU, where
    it measured 0.83-0.95x the unbatched throughput: padding to 30 s costs more than it saves)."""
    from trio_websocket import serve_websocket

    from .batching import BatchingStt
    from .local import LocalWhisper

    if engine is None:
        engine = LocalWhisper(settings.stt)
        await engine.load()
    if batch is None:
        batch = getattr(engine, "device", "cpu") == "cuda"
    async with trio.open_nursery() as nursery:  # bounds the batcher, both listeners and their connections
        if batch:
            engine = BatchingStt(engine)
            await nursery.start(engine.run)
        server = SttServer(engine, settings.stt.language)
        ws = await nursery.start(
            functools.partial(
                serve_websocket, server.websocket, host, ws_port, ssl_context=None, max_message_size=WS_MAX_MESSAGE
            )
        )
        ports = {"websocket": ws.port}
        if wyoming_port is not None:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, server.wyoming, wyoming_port, host=host))
            ports["wyoming"] = listeners[0].socket.getsockname()[1]
        log.info(
            "event=stt_serve_listening host=%s websocket=%s wyoming=%s", host, ports["websocket"], ports.get("wyoming")
        )
        task_status.started((server, ports))
