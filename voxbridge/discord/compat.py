"""py-cord 2.8.1 voice receive and playback, made to work, in one place.

As released, 2.8.1's receive path is broken for stock sinks (upstream issue 3241; the fix,
pull request 3159, is unmerged): the packet router expects `__sink_listeners__`,
`walk_children()` and `is_opus()` on the sink, never calls `Sink.init`, and hands `write()` a
`VoiceData` (`.pcm` = 48 kHz stereo s16le, 3840 bytes per 20 ms; `.source` = the member).
`VoxSink` provides all of that. It runs on py-cord's packet-router thread, which holds a lock
while calling it: every method here only hands data to trio (`run_sync_soon`) and returns.

`VoxAudioSource.read()` runs on py-cord's player thread every 20 ms: it returns the next frame
from the channel's `PlayerBuffer`, silence during a short gap inside an answer, and b"" once the
channel has nothing left to say (which ends py-cord's player without touching the receiver;
never `vc.stop()`, which would also stop listening).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import discord
import trio

from ..audio import SILENT_FRAME
from ..core.playback import PlayerBuffer

log = logging.getLogger("voxbridge.discord")


class VoxSink(discord.sinks.Sink):
    __sink_listeners__ = [
        ("on_member_speaking_start", "on_member_speaking_start"),
        ("on_member_speaking_stop", "on_member_speaking_stop"),
    ]

    def __init__(self, on_frame: Callable[[Any, bytes], None], on_speaking: Callable[[Any, bool], None],
                 token: trio.lowlevel.TrioToken, *, bot_user_id: int | None = None, vc=None):
        super().__init__()
        self.vc = vc  # py-cord never calls init(); set it before start_recording
        self._on_frame = on_frame
        self._on_speaking = on_speaking
        self._token = token
        self.bot_user_id = bot_user_id
        self.frames = 0
        self.ignored = 0

    def walk_children(self):
        return iter(())

    def is_opus(self) -> bool:
        return False  # py-cord decodes to PCM for us

    def _hand_off(self, fn, *args) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def write(self, data, user=None) -> None:
        """Packet-router thread: one user's 20 ms of PCM. Never blocks."""
        pcm = getattr(data, "pcm", data)
        member = user if user is not None else getattr(data, "source", None)
        if not pcm or member is None or getattr(member, "id", None) in (None, self.bot_user_id):
            self.ignored += 1  # unmapped SSRC (first packets), the bot itself, or no audio
            return
        self.frames += 1
        self._hand_off(self._on_frame, member, bytes(pcm))

    def on_member_speaking_start(self, member) -> None:
        if getattr(member, "id", None) != self.bot_user_id:
            self._hand_off(self._on_speaking, member, True)

    def on_member_speaking_stop(self, member) -> None:
        if getattr(member, "id", None) != self.bot_user_id:
            self._hand_off(self._on_speaking, member, False)

    def cleanup(self) -> None:
        self.finished = True

    def format_audio(self, audio) -> None:  # nothing is saved to files
        return None


class VoxAudioSource(discord.AudioSource):
    def __init__(self, buffer: PlayerBuffer, busy: Callable[[], bool]):
        self.buffer = buffer
        self.busy = busy  # the channel's playback still has (or awaits) audio of an answer
        self.frames = 0

    def read(self) -> bytes:
        frame = self.buffer.read_frame()
        if frame is not None:
            self.frames += 1
            return frame
        if self.busy():
            return SILENT_FRAME  # the next clause is still being synthesized
        return b""  # idle: end playback (no silence stream, no speaking indicator)

    def is_opus(self) -> bool:
        return False

    def cleanup(self) -> None:
        pass
