"""Rules for a room of several people: who is talking to the bot, and what is only its own echo.

Pure functions over transcripts, so they are cheap and testable:
- `addressed(text, phrases)`: does the utterance start with the bot's name or a wake phrase
  (case- and punctuation-insensitive)? Returns the text with the phrase stripped, or None.
- `EchoGuard`: remembers what the bot said recently; an utterance that largely matches it
  (users on speakers feed the bot back through their microphones) is not routed.
- `split_message(text, limit)`: chunks within Discord's 2000-character message limit.
"""

from __future__ import annotations

import collections
import difflib
import re
import time

MODES = ("conversation", "addressed", "transcribe")
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def sound_key(text: str) -> str:
    """A crude phonetic key, so Whisper's spellings of an invented name still match it.

    Whisper tiny.en hears Piper's "VoxBridge" as "Buck's Bridge", "Box Bridge" or "Boxbridge";
    all give "bksbrdg": b/v, c/k, x/ks/cks and ph/f are folded, vowels after the first letter
    dropped, doubled letters collapsed.
    """
    s = re.sub(r"[^a-z]", "", text.lower())
    for a, b in (("ph", "f"), ("ck", "k"), ("x", "ks"), ("c", "k"), ("q", "k"), ("v", "b"), ("z", "s"), ("w", "")):
        s = s.replace(a, b)
    if not s:
        return ""
    key = s[0] + re.sub(r"[aeiouy]", "", s[1:])
    return re.sub(r"(.)\1+", r"\1", key)


def addressed(text: str, phrases: tuple[str, ...] | list[str]) -> str | None:
    """The utterance minus its leading wake phrase, or None when it does not start with one.

    "VoxBridge, what time is it?" -> "what time is it?"; "Hey VoxBridge what's up" with phrase
    "hey voxbridge" -> "what's up". Whisper's re-spellings ("Vox Bridge", "Buck's Bridge") match by
    sound (`sound_key`, exact key; allowing even one edit let "books bring" match). A phrase later in the utterance
    ("what time is it, VoxBridge") does not count: addressing is at the start.
    """
    spoken = words(text)
    for phrase in sorted(phrases, key=lambda p: -len(words(p))):
        target = words(phrase)
        if not target:
            continue
        exact, key = "".join(target), sound_key("".join(target))
        for k in range(1, min(len(spoken), len(target) + 2) + 1):
            heard = "".join(spoken[:k])
            heard_key = sound_key(heard)
            if heard == exact or (len(key) >= 3 and heard_key == key):
                return _strip_words(text, k)
    return None


def _strip_words(text: str, k: int) -> str:
    """Remove the first k words (and the punctuation after them) from the original text."""
    matches = list(re.finditer(r"[A-Za-z0-9'’]+", text))
    if len(matches) <= k:
        return ""
    return text[matches[k - 1].end():].lstrip(" ,.:;!?-—").strip()


class EchoGuard:
    """What the bot said in the last `window_s` seconds (and what it is saying now)."""

    def __init__(self, window_s: float = 8.0, threshold: float = 0.6, clock=time.monotonic):
        self.window_s = window_s
        self.threshold = threshold
        self.clock = clock
        self._said: collections.deque[tuple[float, list[str]]] = collections.deque(maxlen=64)

    def said(self, text: str, *, duration_s: float = 0.0) -> None:
        """Remember a clause the bot is about to speak (kept until it has played + window)."""
        w = words(text)
        if w:
            self._said.append((self.clock() + duration_s + self.window_s, w))

    def similarity(self, transcript: str) -> float:
        heard = words(transcript)
        if not heard:
            return 0.0
        now = self.clock()
        recent = [w for expires, w in self._said if expires >= now]
        if not recent:
            return 0.0
        # Compare with everything said recently as one text: an echo may span clauses.
        spoken = [w for clause in recent for w in clause]
        matcher = difflib.SequenceMatcher(a=heard, b=spoken, autojunk=False)
        matched = sum(block.size for block in matcher.get_matching_blocks())
        return matched / len(heard)

    def is_echo(self, transcript: str) -> bool:
        return len(words(transcript)) >= 2 and self.similarity(transcript) >= self.threshold


def split_message(text: str, limit: int = 2000) -> list[str]:
    """Split at paragraph, sentence or word boundaries so each part fits in `limit` characters."""
    text = text.strip()
    parts: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        cut = max(window.rfind("\n\n"), window.rfind("\n"))
        if cut < limit // 2:
            cut = max(window.rfind(". "), window.rfind("! "), window.rfind("? "))
            cut = cut + 1 if cut >= limit // 2 else -1
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts
