"""Simulated voice channels for the daemon without Discord (`voxbridge run --no-discord`).

A joined channel plays into a PlayerBuffer read every 20 ms by a clock task, exactly as py-cord's
player would; what it played is kept and, on leave, written to <state_dir>/recordings/.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import trio

from ..audio import DISCORD_RATE, FRAME_MS
from ..audio.wav import write_wav
from ..core.control import Control
from ..core.playback import PlayerBuffer

log = logging.getLogger("voxbridge.voice")
MAX_RECORDING_S = 3600


def _safe(part: str) -> str:
    """One file-name component: letters, digits, '_' and '-' only (no '/', no '..')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(part))[:64] or "_"


class LocalVoice:
    kind = "simulated"

    def __init__(self, control: Control, nursery: trio.Nursery, recordings: Path | None):
        self.control = control
        self.nursery = nursery  # the daemon's: bounds each channel's clock task
        self.recordings = recordings
        self._clocks: dict[str, tuple[trio.CancelScope, bytearray, PlayerBuffer]] = {}

    async def join(self, guild_id: str, channel_id: str) -> None:
        await self.leave(guild_id)
        settings = self.control.services.settings
        buffer = PlayerBuffer(max(1, settings.playback.buffer_ms // FRAME_MS))
        recording = bytearray()
        scope = trio.CancelScope()
        self._clocks[guild_id] = (scope, recording, buffer)
        self.nursery.start_soon(self._clock, scope, buffer, recording)
        await self.control.join(guild_id, channel_id, buffer)

    async def _clock(self, scope: trio.CancelScope, buffer: PlayerBuffer, recording: bytearray) -> None:
        with scope:
            start, i = trio.current_time(), 0
            limit = MAX_RECORDING_S * DISCORD_RATE * 4
            while True:
                i += 1
                await trio.sleep_until(start + i * FRAME_MS / 1000)
                frame = buffer.read_frame()
                if frame is not None and len(recording) < limit:
                    recording.extend(frame)

    def played_bytes(self, guild_id: str) -> int:
        entry = self._clocks.get(guild_id)
        return len(entry[1]) if entry else 0

    async def leave(self, guild_id: str) -> dict | None:
        entry = self._clocks.pop(guild_id, None)
        channel = self.control.channel(guild_id)
        await self.control.leave(guild_id)
        if entry is None:
            return None
        scope, recording, _ = entry
        scope.cancel()
        info: dict[str, object] = {"played_s": round(len(recording) / (DISCORD_RATE * 4), 2)}
        if self.recordings is not None and recording:
            # The API validates ids; the file name is made safe here too, whoever called us.
            where = _safe(channel.channel_id) if channel else "channel"
            name = f"{_safe(guild_id)}-{where}-{time.strftime('%Y%m%dT%H%M%S')}.wav"
            path = self.recordings / name
            await trio.to_thread.run_sync(write_wav, path, bytes(recording), DISCORD_RATE, 2)
            info["recording"] = str(path)
            log.info("event=recording_written guild=%s path=%s seconds=%s", guild_id, path, info["played_s"])
        return info
