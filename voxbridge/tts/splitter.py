"""Streamed text -> clauses to speak, as early as it is safe to cut.

A clause ends at . ! ? … or a newline when the next character is whitespace (so "3.14" and
"example.com/a.b" never split) and the word before the period is not a known abbreviation
("Dr.", "e.g.") or a single initial ("J. Smith"). Over `max_chars` without such an end, the text
is cut at the last comma/semicolon/colon, else the last space, so synthesis can start.

`first_chunk()` is for an agent that is slow to finish its first sentence: the words so far are
cut at the first comma/semicolon/colon (after two words or more), else after `words` complete
words, so the first audio does not wait for the sentence to end.
"""

from __future__ import annotations

import re

ABBREVIATIONS = {
    "dr",
    "mr",
    "mrs",
    "ms",
    "prof",
    "sr",
    "jr",
    "st",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "approx",
    "no",
    "fig",
    "inc",
    "ltd",
    "co",
    "corp",
    "mt",
    "ave",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "u.s",
    "a.m",
    "p.m",
    "min",
    "max",
    "dept",
    "est",
    "vol",
}

_END = re.compile(r"([.!?…]+[\"')\]]*)(\s+)|(\n+)")
_SOFT_END = re.compile(r"[,;:](\s+)")
_WORD_END = re.compile(r"\S+\s+")


class ClauseSplitter:
    def __init__(self, max_chars: int = 160):
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the clauses it completed (possibly none)."""
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_end()
            if cut is None:
                break
            clause, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            if clause:
                out.append(clause)
        while len(self._buf) > self.max_chars:
            cut = self._soft_cut()
            clause, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            if clause:
                out.append(clause)
        return out

    def first_chunk(self, words: int = 6) -> list[str]:
        """A short first clause from an unfinished sentence, or [] if there is not enough yet.

        Only complete words count (a word is complete once whitespace follows it)."""
        buf = self._buf
        done = [m.end() for m in _WORD_END.finditer(buf)]
        comma = next((m for m in _SOFT_END.finditer(buf) if len(buf[: m.start()].split()) >= 2), None)
        if comma and (len(done) < words or comma.end() <= done[words - 1]):
            cut = comma.end()
        elif len(done) >= words:
            cut = done[words - 1]
        else:
            return []
        clause, self._buf = buf[:cut].strip(), buf[cut:].lstrip()
        return [clause] if clause else []

    def flush(self) -> list[str]:
        """The stream ended: whatever is left is the last clause."""
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def _find_end(self) -> int | None:
        for m in _END.finditer(self._buf):
            if m.group(3):  # newline
                return m.end()
            before = self._buf[: m.start(1)]
            word = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
            word = word.lstrip("(\"'")
            if m.group(1).startswith(".") and len(m.group(1)) == 1:
                if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                    continue
            return m.end()
        return None

    def _soft_cut(self) -> int:
        window = self._buf[: self.max_chars]
        for sep in (";", ":", ",", " "):
            i = window.rfind(sep)
            if i > self.max_chars // 3:
                return i + 1
        return self.max_chars
