"""Drop what Whisper invents on silence or noise ("Thank you.", "you", subtitles credits)."""

from __future__ import annotations

import re

# Known phantom phrases Whisper emits on near-silence, normalised (lowercase, no punctuation).
PHANTOMS = {
    "thank you", "thanks for watching", "thank you for watching", "you", "bye", "so", "uh", "um",
    "thank you very much", "please subscribe", "subtitles by the amaraorg community", "the end",
    "music", "applause", "silence", "blank_audio", "blank audio",
}

_norm_re = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> str:
    return " ".join(_norm_re.sub(" ", text.lower()).split())


def drop_reason(segments: list[tuple[str, float, float]], *, no_speech_threshold: float) -> str:
    """Why the decoded segments (text, no_speech_prob, avg_logprob) are not speech, or ""."""
    text = " ".join(t.strip() for t, _, _ in segments).strip()
    if not normalize(text):
        return "empty"
    if all(nsp > no_speech_threshold and lp < -0.7 for _, nsp, lp in segments):
        return "no_speech"
    if normalize(text) in PHANTOMS and max(nsp for _, nsp, _ in segments) > 0.2:
        return "phantom_phrase"
    if re.fullmatch(r"[\s\W]*\[[^\]]*\][\s\W]*|[\s\W]*\([^)]*\)[\s\W]*", text):
        return "annotation"  # "[Music]", "(silence)"
    return ""
