"""Shared test helpers: word error rate, speech synthesis, loopback agent servers."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from voxbridge.audio import STT_RATE
from voxbridge.audio.convert import resample, to_discord_pcm

# What a key=value log reader sees in a line: tests check that a field stays whole.
KV_FIELD = re.compile(r"(?:^|\s)([A-Za-z_]\w*)=(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\S*)")


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / reference length."""
    ref, hyp = words(reference), words(hypothesis)
    d = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=int)
    d[:, 0] = np.arange(len(ref) + 1)
    d[0, :] = np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[len(ref), len(hyp)] / max(1, len(ref))


def find_in_order(needles: list[str], haystack: str, max_wer: float = 0.35) -> list[int]:
    """Positions (word index) where each needle best matches, searched left to right.

    Each needle must match a window of the haystack with WER <= max_wer, after the previous one.
    """
    hay = words(haystack)
    positions = []
    start = 0
    for needle in needles:
        n = len(words(needle))
        best = (1.0, None)
        for i in range(start, max(start, len(hay) - n) + 1):
            score = wer(needle, " ".join(hay[i : i + n]))
            if score < best[0]:
                best = (score, i)
        assert best[1] is not None and best[0] <= max_wer, (
            f"{needle!r} not found in order in {haystack!r} (best WER {best[0]:.2f})"
        )
        positions.append(best[1])
        start = best[1] + n
    return positions


class SpeechMaker:
    """Piper-made speech, cached per text: 16 kHz mono for STT, 48 kHz stereo for the pipeline."""

    def __init__(self, tts):
        self.tts = tts
        self._cache: dict[str, tuple[np.ndarray, int]] = {}

    def native(self, text: str) -> tuple[np.ndarray, int]:
        if text not in self._cache:
            speech = self.tts.synthesize_sync(text)
            self._cache[text] = (speech.audio, speech.rate)
        return self._cache[text]

    def pcm16k(self, text: str) -> np.ndarray:
        audio, rate = self.native(text)
        return resample(audio, rate, STT_RATE)

    def discord(self, text: str, lead_silence_s: float = 0.3, tail_silence_s: float = 1.3) -> bytes:
        audio, rate = self.native(text)
        padded = np.concatenate(
            [np.zeros(int(lead_silence_s * rate), np.float32), audio, np.zeros(int(tail_silence_s * rate), np.float32)]
        )
        return to_discord_pcm(padded, rate)


class FastFakeStt:
    """For load tests only: a 'transcript' derived from the audio, in ~10 ms, no model."""

    name = "fake"

    def __init__(self, fail_on: set[int] | None = None):
        self.calls = 0
        self.fail_on = fail_on or set()

    async def transcribe(self, pcm16k_mono, *, language=None, prompt=None):
        import trio

        from voxbridge.errors import SttError
        from voxbridge.stt import Transcript

        self.calls += 1
        await trio.sleep(0.01)
        if self.calls in self.fail_on:
            raise SttError("engine error on purpose")
        seconds = len(pcm16k_mono) / 16000
        return Transcript(
            text=f"utterance of {seconds:.1f} seconds number {self.calls}",
            language="en",
            confidence=0.9,
            duration_s=round(seconds, 3),
        )

    async def aclose(self):
        pass


def daemon_process(env: dict[str, str], cwd) -> subprocess.Popen[str]:
    """`voxbridge run --no-discord` as a real process, its log (stdout and stderr) as text lines."""
    return subprocess.Popen(
        [sys.executable, "-m", "voxbridge", "run", "--no-discord"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
