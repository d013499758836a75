"""Words as routing compares them: one normalisation for keywords and transcripts alike.

Whisper writes "The weather's terrible.", "Spotify's", "12 o'clock", "follow-up"; a keyword is
written "weather", "spotify", "twelve", "follow up". Both sides go through `words()`:

- Unicode: NFKC (full-width and ligature forms), casefold ("Straße" -> "strasse"), accents on
  Latin letters dropped ("café" -> "cafe"); letters of any script and digits make words.
- Apostrophes (' ’ ‘ ʼ ` ´): a possessive or "'s" is dropped ("weather's" -> "weather",
  "dogs'" -> "dogs"); contractions are expanded ("don't" -> "do not", "can't" -> "can not",
  "won't" -> "will not", "we're" -> "we are", "I'll" -> "i will", "I've" -> "i have",
  "I'm" -> "i am", "she'd" -> "she would"); any other apostrophe is removed ("o'clock" -> "oclock").
- Hyphens and every other punctuation separate words ("follow-up" -> "follow up"); a keyword
  written as one word also matches its hyphenated or spaced spelling and vice versa ("wifi" ~
  "wi-fi" ~ "wi fi").
- Numbers: number words up to ninety-nine become digits ("twelve" -> "12", "twenty one" and
  "twenty-one" -> "21"), since Whisper writes digits; "1,000" -> "1000".

A keyword of several words matches those words in a row ("play music" matches "Play music, please",
not "play some music"). `Text` is a transcript prepared once per turn.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'", "′": "'"})
# A word: letters/digits of any script, with inner apostrophes; digits may hold "1,000" / "3.5".
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+(?:'[^\W_]+)*'?")
_SPECIAL = {
    "can't": ("can", "not"),
    "cannot": ("can", "not"),
    "won't": ("will", "not"),
    "shan't": ("shall", "not"),
    "ain't": ("is", "not"),
}
_SUFFIXES = (
    ("n't", ("not",)),
    ("'re", ("are",)),
    ("'ve", ("have",)),
    ("'ll", ("will",)),
    ("'m", ("am",)),
    ("'d", ("would",)),
    ("'s", ()),
    ("'", ()),
)
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_NUMBERS = {w: i for i, w in enumerate(_UNITS)} | _TENS


def fold(text: str) -> str:
    """NFKC, casefold, plain apostrophes, no accents on Latin letters."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    if text.isascii():
        return text
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(ch) and out and out[-1] < "\u0250":  # an accent on a Latin letter
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def _expand(token: str) -> tuple[str, ...]:
    if "'" not in token:
        return (token,)
    if token in _SPECIAL:
        return _SPECIAL[token]
    for suffix, extra in _SUFFIXES:
        if token.endswith(suffix) and len(token) > len(suffix):
            return (token[: -len(suffix)].replace("'", ""), *extra)
    return (token.replace("'", ""),)


def _numbers(tokens: list[str]) -> list[str]:
    out: list[str] = []
    for tok in tokens:
        if tok[0].isdigit():
            tok = tok.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", tok) else tok
        value = _NUMBERS.get(tok)
        if value is not None:
            if 1 <= value <= 9 and out and out[-1] in _TENS_DIGITS:  # "twenty one" -> 21
                out[-1] = str(int(out[-1]) + value)
                continue
            tok = str(value)
        out.append(tok)
    return out


_TENS_DIGITS = {str(v) for v in _TENS.values()}


@functools.lru_cache(maxsize=4096)
def _words_cached(text: str) -> tuple[str, ...]:
    tokens: list[str] = []
    for m in _TOKEN.finditer(fold(text)):
        tokens.extend(t for t in _expand(m.group()) if t)
    return tuple(_numbers(tokens))


def words(text: str) -> list[str]:
    """The normalised words of `text`, in order."""
    return list(_words_cached(text)) if len(text) <= 4000 else list(_words_cached.__wrapped__(text))


class Text:
    """A transcript's words, ready for many keyword checks."""

    __slots__ = ("words", "_set", "_joined")

    def __init__(self, text: str):
        self.words = words(text)
        self._set = set(self.words)
        self._joined: set[str] | None = None

    def _compounds(self) -> set[str]:
        # Adjacent words run together ("wi fi" -> "wifi"), so a one-word keyword matches them.
        if self._joined is None:
            w = self.words
            self._joined = {w[i] + w[i + 1] for i in range(len(w) - 1)}
            self._joined |= {w[i] + w[i + 1] + w[i + 2] for i in range(len(w) - 2)}
        return self._joined

    def find(self, keyword: str) -> str | None:
        """The words of the transcript that match `keyword`, or None."""
        target = keyword_words(keyword)
        if not target:
            return None
        if len(target) == 1:
            kw = target[0]
            if kw in self._set:
                return kw
            if len(kw) >= 4 and kw in self._compounds():
                return _find_run(self.words, kw)
            return None
        n = len(target)
        for i in range(len(self.words) - n + 1):
            if tuple(self.words[i : i + n]) == target:
                return " ".join(target)
        joined = "".join(target)
        return joined if joined in self._set else None


def _find_run(ws: list[str], joined: str) -> str | None:
    for n in (2, 3):
        for i in range(len(ws) - n + 1):
            if "".join(ws[i : i + n]) == joined:
                return " ".join(ws[i : i + n])
    return None


@functools.lru_cache(maxsize=4096)
def keyword_words(keyword: str) -> tuple[str, ...]:
    return _words_cached(keyword)


def keyword_problem(keyword: str) -> str | None:
    """Why a keyword can never match (or matches something else than written), else None."""
    target = keyword_words(keyword)
    if not target:
        return f"keyword {keyword!r} has no letters or digits, so it can never match"
    lost = re.sub(r"[\w\s'’‘ʼ`´.,!?;:\"()\-–—]", "", unicodedata.normalize("NFKC", keyword))
    if lost:
        return f"keyword {keyword!r} matches as {' '.join(target)!r}: {lost!r} is not part of any word"
    return None
