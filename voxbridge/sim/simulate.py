"""`voxbridge simulate`: a local voice channel, the full pipeline, no Discord.

Speakers are WAV files or lines synthesized with Piper; each is fed as its own concurrent
speaker (48 kHz stereo 20 ms frames, exactly what py-cord delivers), in real time or as fast as
the pipeline takes them (`fast`). Offsets are silence before a speaker's first word, so runs
are reproducible in both modes. Output: the channel's audio as a WAV, a JSON log of every event
and turn, and a live log on stdout.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import trio

from ..agents.config import load_agents
from ..agents.reloader import AgentsReloader
from ..audio import DISCORD_RATE, FRAME_BYTES, FRAME_MS
from ..audio.convert import split_frames, to_discord_pcm
from ..audio.wav import read_wav_mono, write_wav
from ..config import Settings
from ..core.channel import ChannelSession
from ..core.playback import CollectSink, PlayerBuffer
from ..core.services import open_services
from ..errors import VoxBridgeError
from .demo_agents import DemoAgents

# Three people in a room: more than [conversation].addressed_above_humans (2), so the channel is in
# addressed mode and only utterances that start with the bot's name are answered.
DEFAULT_SCENARIO = [
    "alice@0:VoxBridge, what time is it in Tokyo?",
    "bob@0.8:VoxBridge, tell me a story about a dragon.",
    "carol@1.6:How far away is the moon, do you think?",
]
GAP_BETWEEN_LINES_S = 1.5


@attrs.frozen
class SpeakerLine:
    speaker: str
    offset_s: float
    text: str | None = None
    wav: str | None = None


_SPEC_RE = re.compile(r"^(?P<name>[\w.-]+)(?:@(?P<offset>\d+(?:\.\d+)?))?:(?P<value>.+)$", re.S)


def parse_line(spec: str, kind: str) -> SpeakerLine:
    """`name[@offset]:text` for --say, `name[@offset]:path.wav` for --wav."""
    m = _SPEC_RE.match(spec.strip())
    if not m:
        raise VoxBridgeError(
            f"--{kind} {spec!r}: expected NAME[@OFFSET_S]:{'TEXT' if kind == 'say' else 'FILE.wav'}, "
            f"e.g. alice@1.5:{'what time is it' if kind == 'say' else 'question.wav'}"
        )
    offset = float(m.group("offset") or 0)
    value = m.group("value").strip().strip('"')
    if kind == "say":
        return SpeakerLine(m.group("name"), offset, text=value)
    return SpeakerLine(m.group("name"), offset, wav=value)


@attrs.define
class SimResult:
    out_wav: Path
    log_json: Path
    turns: list[dict[str, Any]]
    events: list[dict[str, Any]]
    stats: dict[str, Any]
    played: list[dict[str, Any]]


class LivePrinter:
    """Human-readable live log; also keeps every event for the JSON log."""

    def __init__(self, stream=sys.stdout, quiet: bool = False):
        self.stream = stream
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        t = round(time.monotonic() - self.t0, 3)
        self.events.append({"t": t, "event": kind, **_jsonable(fields)})
        if self.quiet:
            return
        who = str(fields.get("user", ""))[:10]
        line = None
        if kind == "turn_transcribed":
            line = (
                f'{who:<10} said  "{fields["text"]}"  '
                f"(stt {fields['stt_ms']} ms after the pause ended the utterance, conf {fields['confidence']:.2f})"
            )
        elif kind == "turn_routed":
            line = f"{who:<10} route → {fields['agent']} ({fields['method']})"
        elif kind == "turn_answered":
            line = f'{who:<10} answer "{fields["text"]}"'
        elif kind == "turn_failed":
            line = f"{who:<10} FAILED {fields.get('reason')}: {fields.get('error')}"
        elif kind == "turn_played":
            tm = fields.get("timings", {})
            parts = [
                f"{k.removesuffix('_ms')} {tm[k]}"
                for k in (
                    "stt_ms",
                    "routed_ms",
                    "agent_first_byte_ms",
                    "first_clause_ms",
                    "tts_first_audio_ms",
                    "first_frame_ms",
                )
                if k in tm
            ]
            line = (
                f"{who:<10} played{' (interrupted)' if fields.get('interrupted') else ''}  "
                "ms after the pause ended the utterance: " + ", ".join(parts)
            )
        elif kind == "turn_not_routed":
            line = f"{who:<10} not routed ({fields['reason']}, mode {fields['mode']})"
        elif kind == "mirror":
            line = f"[text chat] {fields['text']}"
        elif kind in ("stt_dropped", "barge_in", "turn_cancelled", "speaker_left"):
            line = f"{who:<10} {kind} " + " ".join(f"{k}={v}" for k, v in fields.items() if k != "user")
        if line:
            print(f"[{t:7.2f}s] {line}", file=self.stream, flush=True)


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fields, default=str))


async def prepare_audio(lines: list[SpeakerLine], tts) -> dict[str, bytes]:
    """Each speaker's whole input as 48 kHz stereo PCM: offset silence, then their lines."""
    by_speaker: dict[str, list[SpeakerLine]] = {}
    for line in lines:
        by_speaker.setdefault(line.speaker, []).append(line)
    out: dict[str, bytes] = {}
    for speaker, items in by_speaker.items():
        parts: list[np.ndarray] = [np.zeros(int(items[0].offset_s * DISCORD_RATE), np.float32)]
        for i, item in enumerate(items):
            if item.text is not None:
                if tts is None:
                    raise VoxBridgeError("--say needs a TTS voice: install the `piper` extra")
                speech = await tts.synthesize(item.text)
                mono, rate = speech.audio, speech.rate
            else:
                mono, rate = await trio.to_thread.run_sync(read_wav_mono, item.wav)
            pcm = await trio.to_thread.run_sync(to_discord_pcm, mono, rate)
            stereo = np.frombuffer(pcm, "<i2").reshape(-1, 2)[:, 0].astype(np.float32) / 32768.0
            if i:
                parts.append(np.zeros(int(GAP_BETWEEN_LINES_S * DISCORD_RATE), np.float32))
            parts.append(stereo)
        mono48 = np.concatenate(parts)
        pcm16 = (np.clip(mono48, -1, 1) * 32767).astype("<i2")
        out[speaker] = np.repeat(pcm16, 2).tobytes()
    return out


async def simulate(
    settings: Settings,
    lines: list[SpeakerLine],
    *,
    out_dir: Path,
    fast: bool = False,
    demo_agents: bool = False,
    store_url: str | None = None,
    quiet: bool = False,
    progress: bool = True,
    stt=None,
    tts=None,
    line_tts=None,
    observer: Callable | None = None,
    mode: str | None = None,
) -> SimResult:
    """Run one simulated channel. `stt`/`tts` share loaded engines (tts=False: answers not spoken);
    `line_tts` voices the --say lines (default: the answer voice, else the bundled Piper voice)."""
    await trio.to_thread.run_sync(lambda: out_dir.mkdir(parents=True, exist_ok=True))
    printer = LivePrinter(quiet=quiet)
    agents = await trio.to_thread.run_sync(load_agents, settings.agents.file)
    tail_s = settings.vad.silence_ms / 1000 + 0.5  # so every last utterance ends

    def observe(kind, fields):
        printer(kind, fields)
        if observer:
            observer(kind, fields)

    async with trio.open_nursery() as root:  # bounds the demo agents, the clock and the channel
        transform = None
        if demo_agents:
            demo = DemoAgents()
            await root.start(demo.serve)
            transform = demo.answer_for  # every agent, also after a reload, answers from the demo server
            agents = transform(agents)
        async with open_services(
            settings,
            agents=agents,
            observer=observe,
            stt=stt,
            tts=tts if tts is not None else True,
            store_url=store_url or f"sqlite:///{out_dir / 'voxbridge.db'}",
        ) as services:
            if line_tts is None and any(line.text for line in lines):
                line_tts = services.tts or await _load_piper(settings)
            audio = await prepare_audio(lines, line_tts)
            output = bytearray()
            if fast:
                sink = CollectSink()
            else:
                sink = PlayerBuffer(capacity_frames=max(1, settings.playback.buffer_ms // FRAME_MS))
                root.start_soon(_player_clock, sink, output)
            reloader = AgentsReloader(
                settings.agents.file, services.agents, transform=transform, broadcaster=services.broadcaster
            )
            await root.start(reloader.run)  # edits to agents.toml (or SIGHUP) apply mid-run
            channel = await root.start(ChannelSession(services, "sim-guild", "sim-channel", sink).run)
            channel.humans = len(audio)  # a room with this many people
            channel.mode_override = mode

            async def mirror(text: str) -> None:  # the channel's text chat, in the log
                services.emit("mirror", text=text)

            channel.mirror = mirror
            total_frames = sum(len(a) // FRAME_BYTES for a in audio.values())
            fed = [0]
            if progress:
                root.start_soon(_progress, channel, fed, total_frames, services)
            async with trio.open_nursery() as feeders:  # bounds the speakers' feeding tasks
                for name, pcm in audio.items():
                    handle = channel.add_speaker(name, name)
                    frames = split_frames(pcm) + split_frames(bytes(int(tail_s * DISCORD_RATE) * 4))
                    feeders.start_soon(_feed, handle, frames, fast, fed)
            for handle in list(channel.speakers.values()):
                await handle.finished.wait()
            await channel.playback.wait_idle()
            if not fast:  # let the player drain its buffer, plus a little silence at the end
                await trio.sleep(settings.playback.buffer_ms / 1000 + 0.3)
            channel.close()
            mine = {e["turn"] for e in printer.events if "turn" in e}
            turns = [t for t in await services.store.list_turns(limit=100_000) if t["id"] in mine]
            stats = {
                "counters": dict(services.metrics.counts()),
                "playback": channel.playback.stats,
                "stt": getattr(services.stt, "stats", {}),
                "frames_fed": fed[0],
            }
        root.cancel_scope.cancel()
    frames_out = sink.frames if isinstance(sink, CollectSink) else [bytes(output)]
    pcm_out = b"".join(frames_out)
    out_wav = out_dir / "channel.wav"
    write_wav(out_wav, pcm_out, DISCORD_RATE, channels=2)
    played = [
        {"turn_id": a.turn_id, "speaker": a.speaker_id, "frames": a.frames, "interrupted": a.interrupted}
        for a in channel.playback.played
        if a.frames
    ]
    by_id = {t["id"]: t for t in turns}
    for p in played:
        p["text"] = (by_id.get(p["turn_id"]) or {}).get("response")
    log_json = out_dir / "log.json"
    doc = {
        "mode": "fast" if fast else "realtime",
        "speakers": [attrs.asdict(line) for line in lines],
        "output_wav": str(out_wav),
        "output_seconds": round(len(pcm_out) / (DISCORD_RATE * 4), 2),
        "played_in_order": played,
        "turns": turns,
        "events": printer.events,
        "stats": stats,
    }
    log_json.write_text(json.dumps(doc, indent=2, default=str))
    return SimResult(out_wav, log_json, turns, printer.events, stats, played)


async def _load_piper(settings):
    from ..tts.piper import PiperTts

    engine = PiperTts(settings.tts)
    await engine.load()
    return engine


async def _feed(handle, frames: list[bytes], fast: bool, fed: list[int]) -> None:
    start = trio.current_time()
    for i, frame in enumerate(frames):
        if fast:
            await handle.send(frame)
        else:
            await trio.sleep_until(start + i * FRAME_MS / 1000)
            handle.push(frame)
        fed[0] += 1
    await handle.finish()


async def _player_clock(buffer: PlayerBuffer, output: bytearray) -> None:
    """Stands in for py-cord's player thread: one frame every 20 ms into the recording."""
    start = trio.current_time()
    i = 0
    while True:
        i += 1
        await trio.sleep_until(start + i * FRAME_MS / 1000)
        output += buffer.read()


async def _progress(channel, fed: list[int], total: int, services) -> None:
    tty = sys.stderr.isatty()
    interval = 0.5 if tty else 10.0
    start = time.monotonic()
    while True:
        await trio.sleep(interval)
        c = services.metrics.counts()
        msg = (
            f"[sim] audio fed {100 * fed[0] // max(1, total):3d}% | turns transcribed {c['event.turn_transcribed']}"
            f" answered {c['event.turn_answered']} failed {c['event.turn_failed']}"
            f" | in flight {channel.turns_in_flight}"
            f" | {time.monotonic() - start:5.1f}s"
        )
        print(("\r" + msg) if tty else msg, end="" if tty else "\n", file=sys.stderr, flush=True)
