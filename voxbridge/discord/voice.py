"""Voice on Discord: joining, hearing members, speaking answers, following the bot's voice state.

`VoxApp` glues py-cord's objects (asyncio) to the trio `Control`. Per guild voice connection:
a `VoiceReceiver` (receive.py) turns members' RTP into PCM frames for their SpeakerSessions; the
channel's answers go out through `DiscordPlayback` -> `PlayerBuffer` -> py-cord's player thread
(`VoxAudioSource`), which is started when there is something to say and ends when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import discord
import trio

from ..audio import FRAME_MS
from ..config import Settings
from ..core.control import Control, ControlError
from ..core.playback import PlayerBuffer
from .bridge import Bridge
from .compat import VoxAudioSource, install_pycord_fixes
from .receive import VoiceReceiver

if TYPE_CHECKING:
    from ..store.ownership import Ownership

log = logging.getLogger("voxbridge.discord")
AnyBot = discord.Bot | discord.AutoShardedBot  # make_bot: sharded when [discord].shard_count is set
VoiceRoom = discord.VoiceChannel | discord.StageChannel  # what the bot can join

WRITE_STALL_S = 1.0  # a player that takes no frame for this long is gone (disconnect): drop audio


def roles_of(member: Any) -> frozenset[str]:
    return frozenset(str(r.id) for r in getattr(member, "roles", []) or [])


class DiscordPlayback:
    """The channel's FrameSink on Discord: frames into the player buffer, py-cord's player thread
    started when audio arrives. Never waits forever: while the voice connection is down (or the
    player has stopped taking frames) the audio is dropped, counted and logged once per outage."""

    def __init__(self, vc: Any, buffer: PlayerBuffer, busy, guild_id: int):
        self.vc = vc
        self.buffer = buffer
        self.busy = busy
        self.guild_id = guild_id
        self.dropped_frames = 0  # in the current outage (logged when it ends)

    async def write(self, frame: bytes) -> None:
        if not self.vc.is_connected():
            self._drop("disconnected")
            await trio.lowlevel.checkpoint()
            return
        await self._ensure_player()
        with trio.move_on_after(WRITE_STALL_S) as scope:
            await self.buffer.write(frame)
        if scope.cancelled_caught:
            self._drop("player_stalled")
        elif self.dropped_frames:
            log.warning("event=voice_audio_dropped guild=%s frames=%d", self.guild_id, self.dropped_frames)
            self.dropped_frames = 0

    def _drop(self, reason: str) -> None:
        if not self.dropped_frames:
            log.warning("event=voice_audio_dropping guild=%s reason=%s", self.guild_id, reason)
        self.dropped_frames += 1
        self.buffer.clear()

    async def _ensure_player(self) -> None:
        """One player thread at a time: a new `play()` while the last one still sends its trailing
        silence would race it on sequence, timestamp and nonce."""
        player = getattr(self.vc, "_player", None)
        if player is not None and player.is_alive():
            if player.is_playing():
                return
            await trio.to_thread.run_sync(player.join, 0.5)  # finishing: 5 silence frames
        if self.vc.is_connected() and not self.vc.is_playing():
            self.vc.play(VoxAudioSource(self.buffer, self.busy))

    def clear(self) -> None:
        self.buffer.clear()


class GuildVoice:
    """What VoxBridge holds for one guild's voice connection."""

    def __init__(self, vc: Any, receiver: VoiceReceiver, scope: trio.CancelScope, keepalive: asyncio.Task | None):
        self.vc = vc
        self.receiver = receiver
        self.scope = scope  # the receiver's trio task
        self.keepalive = keepalive

    def close(self, token: trio.lowlevel.TrioToken) -> None:
        """From asyncio: stop the receiver (its trio task) and the keepalive."""
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self.scope.cancel)  # the receiver unregisters itself on the way out
        if self.keepalive is not None:
            self.keepalive.cancel()


class VoxApp:
    """Glue between py-cord objects (asyncio) and the trio `Control`."""

    def __init__(self, settings: Settings, control: Control, bridge: Bridge, bot: AnyBot):
        install_pycord_fixes()
        self.settings = settings
        self.control = control
        self.bridge = bridge
        self.bot = bot
        self.guild_voice: dict[int, GuildVoice] = {}
        self._alone_tasks: dict[int, asyncio.Task] = {}
        self.wanted: dict[int, int] = {}  # guild -> channel we intend to be in (for reconnects)
        self.ownership: Ownership | None = None  # set by the daemon: with Redis, one instance owns a guild's voice

    def _update_humans(self, guild_id: int) -> None:
        guild = self.bot.get_guild(guild_id)
        vc = guild.voice_client if guild else None
        room = vc.channel if vc is not None else None
        session = self.control.channel(str(guild_id))
        if session is not None and isinstance(room, VoiceRoom):
            session.humans = len([m for m in room.members if not m.bot])

    def _mirror_for(self, vc):
        """Post to the voice channel's own text chat, or to [conversation].mirror_channel."""
        target_id = self.settings.conversation.mirror_channel

        async def post(text: str) -> None:
            channel = self.bot.get_channel(int(target_id)) if target_id.isdigit() else vc.channel
            if isinstance(channel, discord.abc.Messageable):
                await self.bridge.aio(channel.send(text[:2000], allowed_mentions=discord.AllowedMentions.none()))
            elif channel is not None:  # e.g. a category: the channel logs event=mirror_failed
                raise TypeError(f"channel {channel.id} takes no messages")

        return post

    async def _keepalive(self, vc) -> None:
        """Some clients stop hearing a bot that sent nothing for ~60 s: while idle, send a few
        opus silence frames every keepalive_s."""
        every = self.settings.conversation.keepalive_s
        if not every:
            return
        while True:
            await asyncio.sleep(every)
            if vc.is_connected() and not vc.is_playing():
                for _ in range(5):
                    with contextlib.suppress(Exception):
                        vc.send_audio_packet(b"\xf8\xff\xfe", encode=False)

    # voice ----------------------------------------------------------------------------------
    def on_frame(self, guild_id: int, user_id: int, pcm: bytes) -> None:
        """trio context (from the receiver on py-cord's socket thread): one member's 20 ms."""
        channel = self.control.channel(str(guild_id))
        if channel is None:
            return
        uid = str(user_id)
        handle = channel.speakers.get(uid)
        if handle is None:
            guild = self.bot.get_guild(guild_id)
            member = guild.get_member(user_id) if guild else None
            if member is not None and member.bot or (self.bot.user and user_id == self.bot.user.id):
                return  # other bots (music bots, other VoxBridges) are not people
            name = getattr(member, "display_name", None) or uid
            handle = channel.add_speaker(uid, name, roles_of(member))
        if handle is not None:  # None while shutting down: nothing new is heard
            handle.push(pcm)

    def on_speaking(self, guild_id: int, user_id: int, speaking: bool) -> None:
        self.control.services.emit("discord_speaking", guild=str(guild_id), user=str(user_id), speaking=speaking)

    async def join_voice(self, channel: VoiceRoom) -> None:
        guild = channel.guild
        if self.ownership is not None:  # /join, auto-join and follow all take the guild's lock
            ok, owner = await self.bridge.to_trio(self.ownership.claim, str(guild.id))
            if not ok:
                raise ControlError(f"the voice connection of this server is held by VoxBridge instance {owner}")
        self.wanted[guild.id] = channel.id
        vc = guild.voice_client
        if vc is not None and vc.channel and vc.channel.id == channel.id and vc.is_connected():
            return
        if vc is not None:
            await vc.disconnect(force=True)
        vc = await channel.connect(reconnect=True, timeout=30)
        await self._attach(guild.id, channel.id, vc)
        log.info("event=voice_joined guild=%s channel=%s", guild.id, channel.id)

    async def _attach(self, guild_id: int, channel_id: int, vc) -> None:
        self._detach(guild_id)
        token = self.bridge.token
        buffer = PlayerBuffer(max(1, self.settings.playback.buffer_ms // FRAME_MS), token)
        box: dict[str, Any] = {}
        playback = DiscordPlayback(vc, buffer, lambda: box["session"].playback.busy, guild_id)
        session = await self.bridge.to_trio(self.control.join, str(guild_id), str(channel_id), playback)
        box["session"] = session
        self._update_humans(guild_id)
        session.mirror = self._mirror_for(vc)
        receiver = VoiceReceiver(
            vc,
            lambda uid, pcm: self.on_frame(guild_id, uid, pcm),
            token,
            on_speaking=lambda uid, s: self.on_speaking(guild_id, uid, s),
        )
        scope = await self.bridge.to_trio(self._start_receiver, receiver, guild_id)
        keepalive = self.bot.loop.create_task(self._keepalive(vc))
        self.guild_voice[guild_id] = GuildVoice(vc, receiver, scope, keepalive)

    async def _start_receiver(self, receiver: VoiceReceiver, guild_id: int) -> trio.CancelScope:
        metrics = self.control.services.metrics
        component = f"discord_receive:{guild_id}"  # its packet counts in voxbridge_component_stat

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                receiver.start()
                metrics.add_stats(component, lambda: receiver.stats)
                task_status.started(scope)
                try:
                    await receiver.run()
                finally:
                    metrics.remove_stats(component)

        return await self.bridge.nursery.start(run)

    def _detach(self, guild_id: int) -> None:
        held = self.guild_voice.pop(guild_id, None)
        if held is not None:
            held.close(self.bridge.token)

    async def leave_voice(self, guild: discord.Guild) -> bool:
        self.wanted.pop(guild.id, None)
        vc = guild.voice_client
        self._detach(guild.id)
        left = await self.bridge.to_trio(self.control.leave, str(guild.id))
        if vc is not None:
            await vc.disconnect(force=True)
            left = True
        if self.ownership is not None:
            await self.bridge.to_trio(self.ownership.release, str(guild.id))
        return left

    async def on_voice_state_update(self, member, before, after) -> None:
        guild = member.guild
        me = self.bot.user
        if me and member.id == me.id:
            await self._own_voice_state(guild, before, after)
            return
        session = self.control.channel(str(guild.id))
        if (
            session
            and before.channel
            and before.channel.id == int(session.channel_id)
            and (after.channel is None or after.channel.id != before.channel.id)
        ):
            await self.bridge.to_trio(_call_sync, session.remove_speaker, str(member.id))
        if str(member.id) in self.settings.discord.follow_users and after.channel and guild.voice_client is None:
            await self.join_voice(after.channel)
        self._update_humans(guild.id)
        self._check_alone(guild)

    async def _own_voice_state(self, guild, before, after) -> None:
        if before.channel and after.channel is None and guild.id in self.wanted:
            # Dropped (not /leave): py-cord retries transient drops itself; if we are still out, rejoin.
            self.bot.loop.create_task(self._rejoin_later(guild, self.wanted[guild.id]))
        elif before.channel and after.channel and before.channel.id != after.channel.id:
            # Moved by a moderator: the same connection, another room.
            session = self.control.channel(str(guild.id))
            if session is not None:
                session.channel_id = str(after.channel.id)
                here = {str(m.id) for m in after.channel.members}
                for uid in [u for u in session.speakers if u not in here]:  # the old room's people
                    await self.bridge.to_trio(_call_sync, session.remove_speaker, uid)
            if guild.id in self.wanted:
                self.wanted[guild.id] = after.channel.id
            self._update_humans(guild.id)
            self._check_alone(guild)
            log.info("event=voice_moved guild=%s from=%s to=%s", guild.id, before.channel.id, after.channel.id)

    async def _rejoin_later(self, guild, channel_id: int, attempts: int = 5) -> None:
        for i in range(attempts):
            await asyncio.sleep(min(30, 2**i))
            if guild.id not in self.wanted or (guild.voice_client and guild.voice_client.is_connected()):
                return
            channel = guild.get_channel(channel_id)
            if channel is None:
                return
            try:
                self._detach(guild.id)
                await self.bridge.to_trio(self.control.leave, str(guild.id))
                await self.join_voice(channel)  # sessions and history live in the store: they resume
                log.info("event=voice_rejoined guild=%s attempt=%d", guild.id, i + 1)
                return
            except Exception as exc:
                log.warning(
                    "event=voice_rejoin_failed guild=%s attempt=%d error=%s", guild.id, i + 1, type(exc).__name__
                )

    def _check_alone(self, guild) -> None:
        vc = guild.voice_client
        humans = [m for m in (vc.channel.members if vc and vc.channel else []) if not m.bot]
        task = self._alone_tasks.pop(guild.id, None)
        if task:
            task.cancel()
        if vc and not humans:
            self._alone_tasks[guild.id] = self.bot.loop.create_task(self._leave_if_alone(guild))

    async def _leave_if_alone(self, guild) -> None:
        await asyncio.sleep(self.settings.discord.alone_timeout_s)
        vc = guild.voice_client
        if vc and vc.channel and not [m for m in vc.channel.members if not m.bot]:
            log.info("event=voice_left_alone guild=%s", guild.id)
            await self.leave_voice(guild)

    async def auto_join(self) -> None:
        for spec in self.settings.discord.auto_join:
            gid, _, cid = spec.partition(":")
            channel = self.bot.get_channel(int(cid)) if cid.isdigit() else None
            if channel is None:
                log.warning("event=auto_join_skipped spec=%s reason=channel_not_found", spec)
                continue
            if not isinstance(channel, VoiceRoom):
                log.warning("event=auto_join_skipped spec=%s reason=not_a_voice_channel", spec)
                continue
            try:
                await self.join_voice(channel)
            except Exception as exc:
                log.warning("event=auto_join_failed channel=%s error=%s", cid, type(exc).__name__)


async def _call_sync(fn, *args):
    return fn(*args)
