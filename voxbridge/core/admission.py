"""Admission: whether a transcribed turn in a voice channel goes to an agent at all.

A pure function of what the room knows (its mode, the echo guard's verdict, the rate limit's,
the wake phrases), so each rule is testable on its own. In order: rate limited, the bot's own
echo, transcribe-only mode, then in addressed mode the wake phrase (stripped from the text that
is routed). Opted-out users never get this far: they are not heard, transcribed or stored
(`ChannelSession.add_speaker`), which a not-routed turn would be.
"""

from __future__ import annotations

import attrs

from .conversation import addressed


@attrs.frozen
class Admission:
    text: str  # what to route: the transcript, minus the wake phrase in addressed mode
    reason: str | None = None  # why not routed: rate_limited | echo | transcribe_only | not_addressed | ...

    @property
    def admitted(self) -> bool:
        return self.reason is None


def admit(text: str, *, mode: str, rate_ok: bool, echo: bool, wake_phrases: tuple[str, ...] | list[str]) -> Admission:
    """Route `text`, or say why not. `echo` is only looked at when the rate limit allows the turn,
    the wake phrases only in addressed mode."""
    if not rate_ok:
        return Admission(text, "rate_limited")
    if echo:
        return Admission(text, "echo")  # the bot hearing itself through someone's microphone
    if mode == "transcribe":
        return Admission(text, "transcribe_only")
    if mode != "addressed":
        return Admission(text)
    stripped = addressed(text, wake_phrases)
    if stripped is None:
        return Admission(text, "not_addressed")
    if not stripped:
        return Admission(text, "wake_phrase_only")
    return Admission(stripped)
