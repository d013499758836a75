"""Rules for a room of several people: who is talking to the bot, and what is only its own echo.

Pure functions over transcripts, so they are cheap and testable:
- `addressed(text, phrases)`: does the utterance start with the bot's name or a wake phrase
  (by sound: Double Metaphone keys within a small edit distance)? Returns the text with the
  phrase stripped, or None. `name_prompt(phrases)` is the STT prompt that biases Whisper toward
  spelling them as written.
- `EchoGuard`: remembers what the bot said recently; an utterance that largely matches it
  (users on speakers feed the bot back through their microphones) is not routed.
- `split_message(text, limit)`: chunks within Discord's 2000-character message limit.
"""

from __future__ import annotations

import collections
import difflib
import functools
import re
import time

from metaphone import doublemetaphone

from ..words import fold, words

MODES = ("conversation", "addressed", "transcribe")
# Said before the name without being part of it: "Hey VoxBridge", "OK VoxBridge".
GREETINGS = frozenset({"hey", "hi", "hello", "ok", "okay", "oh", "yo", "hay"})
_RAW_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Sounds Whisper confuses on a name it does not know (Double Metaphone letters): b/p and v/f
# (P, F), th/t (0, T), s/sh (S, X), n/m: a substitution inside a group costs half.
_NEAR = [set("PF"), set("T0"), set("SX"), set("NM")]


@functools.lru_cache(maxsize=1024)
def sound_keys(text: str) -> tuple[str, ...]:
    """Double Metaphone keys (primary, and the alternate if any) of the letters of `text`."""
    letters = "".join(ch for ch in fold(text) if ch.isalpha())
    if not letters:
        return ()
    primary, alternate = doublemetaphone(letters)
    return tuple(k for k in dict.fromkeys((primary, alternate)) if k)


def sound_key(text: str) -> str:
    keys = sound_keys(text)
    return keys[0] if keys else ""


def sound_distance(a: str, b: str) -> float:
    """Edit distance between two keys; a substitution between near sounds costs 0.5."""
    prev = [float(j) for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        cur = [float(i)] + [0.0] * len(b)
        for j in range(1, len(b) + 1):
            x, y = a[i - 1], b[j - 1]
            sub = 0.0 if x == y else 0.5 if any(x in g and y in g for g in _NEAR) else 1.0
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + sub)
        prev = cur
    return prev[-1]


def _tolerance(key: str) -> float:
    """How far a heard key may be from the phrase's key: none for short keys (one edit turns
    "Bob" into "Bop", "Rob" or "Pop"), then a quarter of the key."""
    return 0.0 if len(key) < 4 else min(2.0, len(key) / 4)


def name_prompt(phrases: tuple[str, ...] | list[str]) -> str:
    """The STT prompt for addressed mode: the names as they are written ("VoxBridge, hey bridge.")."""
    unique = list(dict.fromkeys(p.strip() for p in phrases if p.strip()))
    return ", ".join(unique) + "." if unique else ""


def _heard_distance(heard: str, target: str) -> float:
    if heard == target:
        return 0.0
    return min((sound_distance(h, t) for h in sound_keys(heard) for t in sound_keys(target)), default=99.0)


def addressed(text: str, phrases: tuple[str, ...] | list[str]) -> str | None:
    """The utterance minus its leading wake phrase, or None when it does not start with one.

    "VoxBridge, what time is it?" -> "what time is it?"; "Hey VoxBridge what's up" -> "what's up"
    (a greeting before the name is allowed). Whisper's re-spellings ("Vox Bridge", "Box Bridge",
    "Buck's Bridge", "Block's Bridge", "Fox Bridge") match by sound: the Double Metaphone key of
    the first words is within `_tolerance` edits of the phrase's key ("Books bring" is not). A
    phrase later in the utterance ("what time is it, VoxBridge") does not count.
    """
    raw = list(_RAW_WORD.finditer(text))
    spoken = ["".join(ch for ch in fold(m.group()) if ch.isalnum()) for m in raw]
    best: tuple[float, int] | None = None
    greeted = bool(spoken) and spoken[0] in GREETINGS
    for phrase in phrases:
        target_words = ["".join(ch for ch in fold(w) if ch.isalnum()) for w in _RAW_WORD.findall(phrase)]
        # "hey computer": any greeting, then "computer" by sound ("Computer science" is not it).
        needs_greeting = len(target_words) > 1 and target_words[0] in GREETINGS
        target = "".join(target_words[1:] if needs_greeting else target_words)
        if not target or (needs_greeting and not greeted):
            continue
        keys = sound_keys(target)
        tol = _tolerance(keys[0]) if keys else 0.0
        starts = [1] if needs_greeting else [0, 1] if greeted else [0]
        for start in starts:
            for k in range(1, min(len(spoken) - start, len(target_words) + 2) + 1):
                heard = "".join(spoken[start : start + k])
                d = _heard_distance(heard, target)
                if d <= tol and (best is None or d < best[0]):
                    best = (d, start + k)
    if best is None:
        return None
    return _strip_words(text, raw, best[1])


def _strip_words(text: str, raw: list[re.Match], k: int) -> str:
    """Remove the first k words (and the punctuation after them) from the original text."""
    if len(raw) <= k:
        return ""
    return text[raw[k - 1].end() :].lstrip(" ,.:;!?-—").strip()


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
