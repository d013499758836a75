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


def _phantom_repeats(norm: str) -> int:
    """How many times `norm` repeats one phantom phrase ("you you you" -> 3), else 0."""
    words = norm.split()
    for phrase in PHANTOMS:
        p = phrase.split()
        if words and len(words) % len(p) == 0 and all(words[i:i + len(p)] == p for i in range(0, len(words), len(p))):
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
    if re.fullmatch(r"[\s\W]*\[[^\]]*\][\s\W]*|[\s\W]*\([^)]*\)[\s\W]*", text):
        return "annotation"  # "[Music]", "(silence)"
    return ""
