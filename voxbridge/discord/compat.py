"""Every workaround for py-cord 2.8.1's voice code, in one place (so a fixed py-cord can drop it).

Found by driving the real `VoiceClient` against a loopback Discord voice server
(tests/discord_voice_server.py):

- The socket-reader thread schedules its listeners with `loop.create_task` from a foreign thread,
  which does not wake the asyncio loop: packets (and the IP discovery answer, so connecting)
  wait for an unrelated wake-up, then arrive in bursts. `_prompt_do_run` calls listeners marked
  `__vox_threadsafe__` (our receiver) directly on the socket thread and schedules the others
  with `call_soon_threadsafe`, which wakes the loop.
- Receive as released is unusable (no audio without DAVE, double-stripped extension with DAVE,
  the router thread dies on the first Opus error, no new key ever applied): VoxBridge does not
  call `start_recording`; `receive.VoiceReceiver` is its own pipeline.
- Without py-cord's reader, a member leaving (op 13) makes `_remove_ssrc` touch
  `MISSING.speaking_timer` and the exception kills the voice websocket's poller: guarded here.
- After a DAVE downgrade to protocol version 0 (op 21/22) py-cord keeps E2EE-encrypting what the
  bot says (its davey session is still "ready"), so members that left DAVE cannot decode it:
  `_get_voice_packet` sends transport-only Opus while the connection's protocol version is 0.

`VoxAudioSource.read()` runs on py-cord's player thread every 20 ms: it returns the next frame
from the channel's `PlayerBuffer`, silence during a short gap inside an answer, and b"" once the
channel has nothing left to say (which ends py-cord's player without touching receive; never
`vc.stop()`).
"""

from __future__ import annotations

import logging
import select
import struct
from collections.abc import Callable

import discord
from discord import utils
from discord.voice import client as voice_client_module
from discord.voice import state as voice_state_module

from ..audio import SILENT_FRAME
from ..core.playback import PlayerBuffer

log = logging.getLogger("voxbridge.discord")

_installed = False


def install_pycord_fixes() -> None:
    """Patch py-cord 2.8.1's voice classes (idempotent)."""
    global _installed
    if _installed:
        return
    voice_state_module.SocketReader._do_run = _prompt_do_run
    voice_client_module.VoiceClient._remove_ssrc = _remove_ssrc
    voice_client_module.VoiceClient._get_voice_packet = _get_voice_packet
    _installed = True


def _schedule_listener(state, callback, data: bytes) -> None:
    """On the asyncio loop: run a py-cord socket listener as py-cord meant to."""
    task = state.loop.create_task(utils.maybe_coroutine(callback, data))
    state._dispatch_task_set.add(task)
    task.add_done_callback(state._dispatch_task_set.discard)


def _prompt_do_run(self) -> None:
    """`SocketReader._do_run` with a prompt, thread-safe dispatch (see the module docstring)."""
    while not self._end.is_set():
        if not self._running.is_set():
            self._running.wait()
            continue
        try:
            readable, _, _ = select.select([self.state.socket], [], [], 30)
        except (ValueError, TypeError, OSError):
            continue  # the socket is being replaced (reconnect); py-cord logs nothing here either
        if not readable:
            continue
        try:
            data = self.state.socket.recv(self.buffer_size)
        except OSError:
            continue
        for callback in list(self._callbacks):
            try:
                if getattr(callback, "__vox_threadsafe__", False):
                    callback(data)
                else:
                    self.state.loop.call_soon_threadsafe(_schedule_listener, self.state, callback, data)
            except Exception:
                log.exception("event=voice_socket_listener_failed")


def _remove_ssrc(self, *, user_id: int) -> None:
    """`VoiceClient._remove_ssrc` that works without py-cord's own reader."""
    ssrc = self._id_to_ssrc.pop(user_id, None)
    if ssrc:
        if self._reader:
            self._reader.speaking_timer.drop_ssrc(ssrc)
        self._ssrc_to_id.pop(ssrc, None)


def _get_voice_packet(self, data) -> bytes:
    """`VoiceClient._get_voice_packet`, with DAVE E2EE only while the call's protocol is DAVE."""
    conn = self._connection
    session = conn.dave_session
    if session and session.ready and conn.dave_protocol_version > 0:
        data = session.encrypt_opus(data)
    header = bytearray(12)
    header[0], header[1] = 0x80, 0x78
    struct.pack_into(">HII", header, 2, self.sequence, self.timestamp, self.ssrc)
    return getattr(self, f"_encrypt_{self.mode}")(header, data)


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
