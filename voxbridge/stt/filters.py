"""Drop what Whisper invents on silence or noise ("Thank you.", "you", subtitles credits)."""

from __future__ import annotations

import re

import numpy as np

# Known phantom phrases Whisper emits on near-silence, normalised (lowercase, no punctuation).
PHANTOMS = {
    "thank you",
    "thanks for watching",
    "thank you for watching",
    "you",
    "bye",
    "so",
    "uh",
    "um",
    "thank you very much",
    "please subscribe",
    "subtitles by the amaraorg community",
    "the end",
    "music",
    "applause",
    "silence",
    "blank_audio",
    "blank audio",
}

_norm_re = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> str:
    return " ".join(_norm_re.sub(" ", text.lower()).split())


def _phantom_repeats(norm: str) -> int:
    """How many times `norm` repeats one phantom phrase ("you you you" -> 3), else 0."""
    words = norm.split()
    for phrase in PHANTOMS:
        p = phrase.split()
        if words and len(words) % len(p) == 0 and all(words[i : i + len(p)] == p for i in range(0, len(words), len(p))):
            return len(words) // len(p)
    return 0


def drop_reason(segments: list[tuple[str, float, float]], *, no_speech_threshold: float) -> str:
    """Why the decoded segments (text, no_speech_prob, avg_logprob) are not speech, or ""."""
    text = " ".join(t.strip() for t, _, _ in segments).strip()
    if not normalize(text):
        return "empty"
    if all(nsp > no_speech_threshold and lp < -0.7 for _, nsp, lp in segments):
        return "no_speech"
    repeats = _phantom_repeats(normalize(text))
    if repeats >= 3:  # "you" x120 over a long silence: nobody says that, whatever the confidence
        return "phantom_phrase"
    if repeats and max(nsp for _, nsp, _ in segments) > 0.2:
        return "phantom_phrase"
    if ANNOTATION_RE.fullmatch(text):
        return "annotation"  # "[Music]", "(silence)"
    return ""


ANNOTATION_RE = re.compile(r"[\s\W]*\[[^\]]*\][\s\W]*|[\s\W]*\([^)]*\)[\s\W]*")
SILENT_DBFS = -60.0  # loudest 100 ms below this: nothing was said (digital silence, line noise)
QUIET_DBFS = -35.0  # loudest 100 ms below this: too quiet for a phantom phrase to be believed
NOISE_FLATNESS = 0.5  # spectral flatness above this: hiss, not a voice


def loudest_dbfs(audio: np.ndarray, rate: int = 16000, window_s: float = 0.1) -> float:
    """Level of the loudest `window_s` window (RMS, dBFS) of float audio in -1..1."""
    n = max(1, int(rate * window_s))
    x = np.asarray(audio, dtype=np.float32)
    if len(x) == 0:
        return -120.0
    x = x[: len(x) - len(x) % n] if len(x) >= n else np.pad(x, (0, n - len(x)))
    rms = np.sqrt(np.mean(x.reshape(-1, n).astype(np.float64) ** 2, axis=1)).max()
    return float(20 * np.log10(max(rms, 1e-6)))


def spectral_flatness(audio: np.ndarray, n_fft: int = 512) -> float:
    """Geometric over arithmetic mean of the average power spectrum: ~1 for hiss and other
    broadband noise, well under 0.3 for voices (harmonics and formants)."""
    x = np.asarray(audio, dtype=np.float64)
    frames = len(x) // n_fft
    if frames == 0:
        return 0.0
    window = np.hanning(n_fft)
    power = (np.abs(np.fft.rfft(x[: frames * n_fft].reshape(frames, n_fft) * window, axis=1)) ** 2).mean(axis=0)[1:]
    power = np.maximum(power, 1e-20)
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def remote_drop_reason(
    text: str,
    audio: np.ndarray,
    *,
    confidence: float | None = None,
    segments: list[tuple[str, float, float]] | None = None,
    no_speech_threshold: float = 0.6,
    rate: int = 16000,
) -> str:
    """The same judgement for a remote engine's answer, which usually has no per-segment
    no-speech probability: with segments (OpenAI verbose_json), exactly `drop_reason`; else
    the audio itself stands in for it (silence -> "no_speech"; a phantom phrase over quiet audio
    or broadband noise, or one the server itself was unsure of, -> "phantom_phrase")."""
    if segments:
        return drop_reason(segments, no_speech_threshold=no_speech_threshold)
    norm = normalize(text)
    if not norm:
        return "empty"
    level = loudest_dbfs(audio, rate)
    if level < SILENT_DBFS:
        return "no_speech"
    if norm in PHANTOMS and (
        level < QUIET_DBFS or (confidence is not None and confidence < 0.5) or spectral_flatness(audio) > NOISE_FLATNESS
    ):
        return "phantom_phrase"
    if ANNOTATION_RE.fullmatch(text):
        return "annotation"
    return ""
