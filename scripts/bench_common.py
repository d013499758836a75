"""Shared by the benchmark scripts: speech material, true end of speech, real-time feeding.

- Speech is made here with Piper (several "voices": length_scale / noise_scale / noise_w
  varied), optionally mixed with white noise at a given SNR; the reference text of every clip
  is the text it was synthesized from.
- The true end of speech of an utterance is the end of the last 32 ms window of the *fed* audio
  (Discord PCM -> the pipeline's own downsampler -> a fresh Silero VAD) whose speech
  probability is at or above the VAD threshold. Latencies start there, not at the moment the
  pipeline noticed the silence.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxbridge.audio import DISCORD_RATE, FRAME_MS, STT_RATE  # noqa: E402
from voxbridge.audio.convert import Downsampler, resample, split_frames, to_discord_pcm  # noqa: E402
from voxbridge.audio.vad import WINDOW, SileroSession, SileroVad  # noqa: E402

# (name, length_scale, noise_scale, noise_w): the bundled voice made to sound like several speakers
VOICES = [("plain", 1.0, 0.667, 0.8), ("slow", 1.2, 0.5, 0.6), ("fast", 0.85, 0.8, 1.0), ("lively", 1.05, 0.9, 1.1)]

QUESTIONS = [
    "What time is it in Tokyo right now?",
    "Could you tell me what the weather will be like in Paris tomorrow afternoon?",
    "Please remind me to call my sister when I get home tonight.",
    "What is the fastest way to get from the train station to the old harbour?",
    "Can you explain how a rainbow forms after a summer storm?",
    "How many kilometres is it from the earth to the moon?",
    "Add milk, eggs and bread to my shopping list.",
    "Which planet in our solar system has the most moons?",
    "Turn the living room lights down to thirty percent.",
    "What should I cook for dinner if I only have rice and beans?",
    "Tell me a short story about a dragon who is afraid of the dark.",
    "Book a table for four people at seven o'clock on Friday.",
]


def loadavg() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(ref: str, hyp: str) -> float:
    """Word error rate: word edit distance / reference length."""
    r, h = words(ref), words(hyp)
    d = np.arange(len(h) + 1)
    for i in range(1, len(r) + 1):
        prev, d[0] = d.copy(), i
        for j in range(1, len(h) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1]))
    return float(d[len(h)]) / max(1, len(r))


def synthesize(piper, text: str, voice=VOICES[0]) -> tuple[np.ndarray, int]:
    """Blocking: Piper speech for `text` in one of VOICES (float32 mono, native rate)."""
    from piper import SynthesisConfig

    _, length_scale, noise_scale, noise_w = voice
    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w)
    chunks = [c.audio_int16_array for c in piper.voice.synthesize(text, syn_config=cfg)]
    return np.concatenate(chunks).astype(np.float32) / 32768.0, piper.rate


def with_noise(audio: np.ndarray, snr_db: float | None, seed: int) -> np.ndarray:
    """White noise mixed in at `snr_db` (speech power over noise power; None: clean)."""
    if snr_db is None:
        return audio
    rng = np.random.default_rng(seed)
    power = float(np.mean(audio[np.abs(audio) > 1e-4] ** 2)) if np.any(np.abs(audio) > 1e-4) else 1e-6
    noise = rng.normal(0.0, math.sqrt(power / 10 ** (snr_db / 10)), len(audio)).astype(np.float32)
    return np.clip(audio + noise, -1.0, 1.0)


@attrs.define
class Utterance:
    speaker: str
    text: str
    start_s: float  # offset of the clip in the speaker's stream
    true_end_s: float = 0.0  # offset of the true end of speech in the stream
    audio16k: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)  # the clip, for bare decoding


@attrs.define
class SpeakerStream:
    name: str
    pcm: bytes  # Discord PCM, the whole stream with its silences
    utterances: list[Utterance]


def build_stream(
    name: str, clips: list[tuple[str, np.ndarray, int]], lead_s: float, gaps_s: list[float], tail_s: float
) -> SpeakerStream:
    """One speaker's stream: lead silence, then each clip followed by its gap of silence."""
    parts = [np.zeros(int(lead_s * DISCORD_RATE), np.float32)]
    t = lead_s
    utts = []
    for (text, audio, rate), gap in zip(clips, gaps_s, strict=True):
        a = resample(audio, rate, DISCORD_RATE)
        utts.append(Utterance(name, text, t))
        parts += [a, np.zeros(int(gap * DISCORD_RATE), np.float32)]
        t += (len(a) + int(gap * DISCORD_RATE)) / DISCORD_RATE
    parts.append(np.zeros(int(tail_s * DISCORD_RATE), np.float32))
    return SpeakerStream(name, to_discord_pcm(np.concatenate(parts), DISCORD_RATE), utts)


def mark_true_ends(stream: SpeakerStream, threshold: float, session: SileroSession | None = None) -> None:
    """Set each utterance's true end: the end of the last VAD window >= threshold before the next one."""
    vad = SileroVad(session or SileroSession())
    down = Downsampler()
    mono = np.concatenate([down.process(f) for f in split_frames(stream.pcm)])
    n = len(mono) // WINDOW
    probs = []
    for i in range(0, n, 256):  # in pieces, state carried: as the pipeline sees it
        probs.append(vad.probs(mono[i * WINDOW : min(n, i + 256) * WINDOW].reshape(-1, WINDOW)))
    p = np.concatenate(probs)
    ends = (np.nonzero(p >= threshold)[0] + 1) * WINDOW / STT_RATE
    bounds = [u.start_s for u in stream.utterances[1:]] + [math.inf]
    for u, nxt in zip(stream.utterances, bounds, strict=True):
        inside = ends[(ends > u.start_s) & (ends <= nxt)]
        u.true_end_s = float(inside[-1]) if len(inside) else u.start_s


async def feed_realtime(handle, pcm: bytes, t0: float) -> None:
    """Push frames at their real times from `t0` (trio clock), as a Discord receiver would."""
    for i, frame in enumerate(split_frames(pcm)):
        await trio.sleep_until(t0 + i * FRAME_MS / 1000)
        handle.push(frame)
    await handle.finish()


def match_turns(utterances: list[Utterance], t0: float, played: list[dict], max_s: float = 10.0):
    """Pair each `turn_played` event (its `ended_at`, trio clock) with the utterance whose true end
    is the latest one before it; returns [(utterance, event)] and the utterances left unanswered."""
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    pairs, used = [], set()
    for ev in played:
        cands = [u for u in by_speaker.get(ev["user"], []) if t0 + u.true_end_s <= ev["ended_at"] + 1e-3]
        if not cands:
            continue
        u = max(cands, key=lambda u: u.true_end_s)
        if id(u) in used or ev["ended_at"] - (t0 + u.true_end_s) > max_s:
            continue
        used.add(id(u))
        pairs.append((u, ev))
    missed = [u for u in utterances if id(u) not in used]
    return pairs, missed


class TimedTts:
    """Wraps a TTS engine; records each synthesis's duration in its worker (no queueing)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.limiter = inner.limiter
        self.synth_s: list[float] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def synthesize_sync(self, text: str):
        t = time.perf_counter()
        out = self.inner.synthesize_sync(text)
        self.synth_s.append(time.perf_counter() - t)
        return out

    async def synthesize(self, text: str, *, voice: str | None = None):
        return await trio.to_thread.run_sync(self.synthesize_sync, text, limiter=self.limiter)


def stt_16k(clip: tuple[np.ndarray, int]) -> np.ndarray:
    audio, rate = clip
    return resample(audio, rate, STT_RATE)
