"""`voxbridge stt-serve`: one GPU host transcribes for many bot hosts.

Serves the local engine (faster-whisper, CapacityLimiter, `max_concurrent_transcriptions`
workers) over two protocols:
- WebSocket (`ws://host:4901`): a JSON header `{"type": "transcribe", "language", "rate",
  "format": "s16le"}` then one binary message of PCM -> `{"type": "transcript", "text", ...}`;
  `{"type": "status"}` -> load (in flight, waiting, served, errors, clients);
- Wyoming (`tcp://host:10300`): describe/info and transcribe/audio-start/audio-chunk/audio-stop ->
  transcript, so Home Assistant or another VoxBridge (`[stt].backend = "wyoming"`) can use it.
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

log = logging.getLogger("voxbridge.stt_serve")
MAX_AUDIO_BYTES = STT_RATE * 2 * 120  # two minutes of 16 kHz s16le per request


class SttServer:
    def __init__(self, engine):
        self.engine = engine
        self.load = {"in_flight": 0, "served": 0, "errors": 0, "clients": 0}

    def status(self) -> dict:
        limiter = getattr(self.engine, "limiter", None)
        waiting = limiter.statistics().tasks_waiting if limiter is not None else 0
        return {"type": "status", **self.load, "waiting": waiting,
                "workers": limiter.total_tokens if limiter is not None else None,
                "device": getattr(self.engine, "device", None),
                "batching": dict(self.engine.stats) if hasattr(self.engine, "stats") and "batches" in self.engine.stats else None}

    async def transcribe(self, pcm: bytes, rate: int, language: str | None) -> dict:
        if len(pcm) > MAX_AUDIO_BYTES * max(1, rate // STT_RATE):
            raise SttError("audio longer than two minutes")
        audio = pcm16_to_float(pcm)
        if rate != STT_RATE:
            audio = await trio.to_thread.run_sync(resample, audio, rate, STT_RATE)
        self.load["in_flight"] += 1
        try:
            tr = await self.engine.transcribe(audio, language=language)
        except SttError:
            self.load["errors"] += 1
            raise
        finally:
            self.load["in_flight"] -= 1
        self.load["served"] += 1
        return {"type": "transcript", "text": tr.text, "language": tr.language, "confidence": tr.confidence,
                "duration_s": tr.duration_s, "timings": tr.timings}

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
                if header.get("type") == "status":
                    await ws.send_message(json.dumps(self.status()))
                    continue
                pcm = await ws.get_message()
                if not isinstance(pcm, (bytes, bytearray)):
                    await ws.send_message(json.dumps({"type": "error", "error": "expected binary PCM after the header"}))
                    continue
                try:
                    reply = await self.transcribe(bytes(pcm), int(header.get("rate") or STT_RATE), header.get("language"))
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
        language, rate, pcm = None, STT_RATE, bytearray()
        try:
            while True:
                event = await conn.receive()
                if event.type == "describe":
                    await conn.send("info", {"asr": [{"name": "voxbridge", "description": "VoxBridge stt-serve",
                                                      "installed": True, "attribution": {"name": "VoxBridge", "url": ""},
                                                      "models": [{"name": "whisper", "languages": ["en"], "installed": True,
                                                                  "description": "faster-whisper",
                                                                  "attribution": {"name": "faster-whisper", "url": ""}}]}]})
                elif event.type == "transcribe":
                    language = event.data.get("language")
                elif event.type == "audio-start":
                    rate, pcm = int(event.data.get("rate", STT_RATE)), bytearray()
                    if int(event.data.get("width", 2)) != 2 or int(event.data.get("channels", 1)) != 1:
                        await conn.send("error", {"text": "send 16-bit mono audio"})
                        return
                elif event.type == "audio-chunk":
                    pcm += event.payload
                    if len(pcm) > MAX_AUDIO_BYTES * 3:
                        await conn.send("error", {"text": "audio too long"})
                        return
                elif event.type == "audio-stop":
                    try:
                        reply = await self.transcribe(bytes(pcm), rate, language)
                        await conn.send("transcript", {"text": reply["text"], "language": reply["language"]})
                    except SttError as exc:
                        await conn.send("error", {"text": str(exc)})
                    pcm = bytearray()
        except (WyomingError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.load["clients"] -= 1
            await conn.aclose()


async def serve(settings, *, host: str = "127.0.0.1", ws_port: int = 4901, wyoming_port: int | None = 10300,
                engine=None, batch: bool | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """`batch`: decode concurrent requests as one batch (default: on with CUDA, off on CPU, where
    it measured 0.83-0.95x the unbatched throughput: padding to 30 s costs more than it saves)."""
    from trio_websocket import serve_websocket

    from ..stt.batching import BatchingStt
    from ..stt.local import LocalWhisper

    if engine is None:
        engine = LocalWhisper(settings.stt)
        await engine.load()
    if batch is None:
        batch = getattr(engine, "device", "cpu") == "cuda"
    async with trio.open_nursery() as nursery:  # bounds the batcher, both listeners and their connections
        if batch:
            engine = BatchingStt(engine)
            await nursery.start(engine.run)
        server = SttServer(engine)
        ws = await nursery.start(functools.partial(serve_websocket, server.websocket, host, ws_port, ssl_context=None))
        ports = {"websocket": ws.port}
        if wyoming_port is not None:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, server.wyoming, wyoming_port, host=host))
            ports["wyoming"] = listeners[0].socket.getsockname()[1]
        log.info("event=stt_serve_listening host=%s websocket=%s wyoming=%s", host, ports["websocket"], ports.get("wyoming"))
        task_status.started((server, ports))
