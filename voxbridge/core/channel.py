"""ChannelSession: one voice channel, its speakers and its playback.

    ChannelSession.run                 nursery: bounds everything this channel owns
    ├── Playback.run                   the channel's one audio stream
    └── SpeakerSession.run  (each)     in its own cancel scope: leaving cancels only that speaker

Frames enter through `SpeakerHandle`: `push` (trio, never blocks: drops the oldest frame when the
speaker's queue is full, counted; the Discord receiver hands frames over to trio and pushes them)
or `send` (trio, waits for room: the fast simulation, which must not lose audio). Each speaker
runs its turns with `run_turn`, handed to it here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from .conversation import EchoGuard, name_prompt
from .playback import FrameSink, Playback
from .services import Services
from .speaker import SpeakerSession
from .turn import run_turn
from .utterance import SpeakerInfo

log = logging.getLogger("voxbridge.channel")


@attrs.define
class SpeakerHandle:
    info: SpeakerInfo
    session: SpeakerSession
    scope: trio.CancelScope
    _send: trio.MemorySendChannel
    _receive: trio.MemoryReceiveChannel
    dropped_frames: int = 0
    finished: trio.Event = attrs.field(factory=trio.Event)

    def push(self, frame: bytes) -> None:
        """Queue a frame from trio without waiting; the oldest frame goes if the queue is full."""
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            try:
                self._receive.receive_nowait()
            except trio.WouldBlock:
                pass
            self.dropped_frames += 1
            self.session.services.metrics.frames_dropped.inc()
            try:
                self._send.send_nowait(frame)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def send(self, frame: bytes) -> None:
        """From trio, waiting for room (no frame is ever dropped)."""
        await self._send.send(frame)

    @property
    def queued(self) -> int:
        return self._receive.statistics().current_buffer_used

    async def finish(self) -> None:
        """End of this speaker's audio: an open utterance is closed and still answered."""
        await self._send.aclose()


class ChannelSession:
    def __init__(self, services: Services, guild_id: str, channel_id: str, sink: FrameSink):
        self.services = services
        self.guild_id = guild_id
        self.channel_id = channel_id
        conv = services.settings.conversation
        self.echo = EchoGuard(conv.echo_window_s, conv.echo_threshold)
        self.playback = Playback(
            sink,
            services.settings.playback.max_queued_turns,
            on_clause=lambda text, seconds: self.echo.said(text, duration_s=seconds),
        )
        self.speakers: dict[str, SpeakerHandle] = {}
        self.mode_override: str | None = None  # /voxbridge mode
        self.humans: int | None = None  # humans in the voice channel (Discord); None: count speakers
        self.mirror: Callable[[str], Awaitable[None]] | None = None  # posts to the text chat, when mirroring is on
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self.turns_in_flight = 0
        self.accepting = True  # False once shutdown began: no new speakers, no new audio

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the channel until `close()` or cancellation."""
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:  # bounds the playback task and every speaker
                self._nursery = nursery
                nursery.start_soon(self.playback.run)
                task_status.started(self)
                await trio.sleep_forever()

    def close(self) -> None:
        """Leave the channel: cancels its speakers (and their turns) and its playback."""
        if self._scope is not None:
            self._scope.cancel()

    def add_speaker(
        self, user_id: str, user_name: str = "", roles: frozenset[str] = frozenset()
    ) -> SpeakerHandle | None:
        if user_id in self.speakers:
            return self.speakers[user_id]
        if not self.accepting:
            return None
        if user_id in self.services.ignored:  # opted out: not heard, not transcribed, not stored
            self.services.metrics.optout_ignored.inc()
            return None
        assert self._nursery is not None, "ChannelSession.run must be started first"
        info = SpeakerInfo(
            user_id=user_id,
            user_name=user_name or user_id,
            guild_id=self.guild_id,
            channel_id=self.channel_id,
            roles=roles,
        )
        send, receive = trio.open_memory_channel[bytes](self.services.settings.audio.frame_queue)
        session = SpeakerSession(self, info, receive, run_turn)
        handle = SpeakerHandle(info, session, trio.CancelScope(), send, receive)
        self.speakers[user_id] = handle
        self._nursery.start_soon(self._run_speaker, handle)
        self.services.emit("speaker_joined", user=info.user_name, channel=self.channel_id)
        return handle

    async def _run_speaker(self, handle: SpeakerHandle) -> None:
        try:
            with handle.scope:  # cancelled by remove_speaker: only this speaker's work stops
                await handle.session.run()
        finally:
            if self.speakers.get(handle.info.user_id) is handle:
                del self.speakers[handle.info.user_id]
            handle.finished.set()

    def effective_mode(self) -> tuple[str, str]:
        """(mode, why): the /voxbridge mode override, else the configured mode, switched to
        addressed while more than `addressed_above_humans` people are in the channel."""
        if self.mode_override:
            return self.mode_override, "set with /voxbridge mode"
        conv = self.services.settings.conversation
        humans = self.humans if self.humans is not None else len(self.speakers)
        if conv.mode == "conversation" and conv.addressed_above_humans and humans > conv.addressed_above_humans:
            return "addressed", f"{humans} people in the channel"
        return conv.mode, "configured"

    def wake_phrases(self) -> tuple[str, ...]:
        s = self.services.settings
        return (s.general.bot_name, *s.conversation.wake_phrases)

    def stt_prompt(self) -> str | None:
        """In addressed mode, with [conversation].name_prompt: the bot's name and wake phrases as
        the STT prompt, so Whisper writes "VoxBridge" rather than "Buck's Bridge"."""
        if not self.services.settings.conversation.name_prompt or self.effective_mode()[0] != "addressed":
            return None
        return name_prompt(self.wake_phrases()) or None

    async def post(self, text: str) -> None:
        """Mirror a line to the text chat, if mirroring is on (failures are logged, not raised)."""
        if self.mirror is None or not self.services.settings.conversation.mirror:
            return
        try:
            await self.mirror(text)
        except Exception as exc:
            log.warning("event=mirror_failed channel=%s error=%s", self.channel_id, type(exc).__name__)

    async def stop_intake(self) -> None:
        """Graceful shutdown, step one: hear nothing new; utterances already spoken are closed
        and their turns run to the end (the caller bounds how long)."""
        self.accepting = False
        for handle in list(self.speakers.values()):
            await handle.finish()

    async def drained(self) -> None:
        """After `stop_intake`: until every speaker's turns have ended and nothing is left to play."""
        for handle in list(self.speakers.values()):
            await handle.finished.wait()  # a speaker's nursery ends after its last turn
        await self.playback.wait_idle()

    def remove_speaker(self, user_id: str) -> None:
        """The speaker left: cancel their segmentation and in-flight turns, nothing else."""
        handle = self.speakers.get(user_id)
        if handle is not None:
            handle.scope.cancel()
            self.playback.barge_in(user_id)
            self.services.emit("speaker_left", user=handle.info.user_name, channel=self.channel_id)

    def on_speech_started(self, speaker: SpeakerInfo) -> None:
        if self.services.settings.playback.barge_in:
            stopped = self.playback.barge_in(speaker.user_id)
            if stopped:
                self.services.emit("barge_in", user=speaker.user_name, turns=[a.turn_id for a in stopped])
