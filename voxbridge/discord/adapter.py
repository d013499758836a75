"""The Discord adapter: the only asyncio code in VoxBridge.

Bridge: py-cord owns an asyncio loop; trio runs as a *guest* on it (`start_guest_run`), so both
share one thread and neither blocks the other. `Bridge.aio` awaits an asyncio coroutine from
trio and `Bridge.to_trio` awaits a trio function from asyncio; cancellation crosses both ways
and exceptions arrive with their tracebacks. Chosen over py-cord in its own thread because the
two event loops then never race over shared objects (the ChannelSession state touched by
commands), and over trio-asyncio, which the design rules out.

The slash command callbacks are thin: parse -> `Control` (trio) -> ephemeral embed reply.
Voice: `VoxSink` (compat.py) feeds each member's PCM to their SpeakerSession; the channel's
playback goes out through `VoxAudioSource`, started when there is something to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import discord
import trio
from discord.commands import SlashCommandGroup

from ..audio import FRAME_MS
from ..config import Settings, find_secret
from ..core.control import Control, ControlError, member_may_join
from ..core.playback import PlayerBuffer
from ..errors import ConfigError, VoxBridgeError
from .compat import VoxAudioSource, VoxSink

log = logging.getLogger("voxbridge.discord")


# --- the bridge ---------------------------------------------------------------------------

class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken, nursery: trio.Nursery):
        self.loop = loop
        self.token = token
        self.nursery = nursery  # trio tasks started from asyncio live here

    async def aio(self, coro: Awaitable) -> Any:
        """From trio: run an asyncio coroutine to completion. Cancelling the trio side cancels
        the asyncio task (and waits for it to unwind); its exception is raised here."""
        task = self.loop.create_task(coro)
        done = trio.Event()
        task.add_done_callback(lambda _t: self.token.run_sync_soon(done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            task.cancel()
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return task.result()

    async def to_trio(self, async_fn: Callable[..., Awaitable], *args: Any) -> Any:
        """From asyncio: run a trio function in the bridge's nursery. Cancelling the asyncio
        side cancels the trio task; its exception is raised here."""
        fut = self.loop.create_future()
        box: dict[str, trio.CancelScope] = {}

        async def runner():
            with trio.CancelScope() as scope:
                box["scope"] = scope
                if fut.cancelled():
                    scope.cancel()
                try:
                    result = await async_fn(*args)
                except BaseException as exc:
                    if not fut.done():
                        if isinstance(exc, trio.Cancelled):
                            fut.cancel()
                        else:
                            fut.set_exception(exc)
                    if isinstance(exc, Exception):
                        return  # delivered to the asyncio caller
                    raise
                if not fut.done():
                    fut.set_result(result)

        self.token.run_sync_soon(lambda: self.nursery.start_soon(runner))
        try:
            return await fut
        except asyncio.CancelledError:
            self.token.run_sync_soon(lambda: box["scope"].cancel() if "scope" in box else None)
            raise


def run_guest(trio_main: Callable[..., Awaitable], *args: Any) -> Any:
    """asyncio.run a host loop with `trio_main(bridge_factory_args...)` as trio guest; returns its
    result. Ctrl-C / cancellation of the host cancels the trio run and waits for it."""

    async def host():
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        scope_box: dict[str, trio.CancelScope] = {}

        async def guest():
            with trio.CancelScope() as scope:
                scope_box["scope"] = scope
                return await trio_main(loop, *args)

        def finished(outcome):
            if not done.done():
                done.set_result(outcome)

        trio.lowlevel.start_guest_run(guest, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                                      done_callback=finished, host_uses_signal_set_wakeup_fd=True)
        try:
            outcome = await asyncio.shield(done)
        except asyncio.CancelledError:
            scope = scope_box.get("scope")
            if scope is not None:
                loop.call_soon_threadsafe(scope.cancel)  # trio picks it up on its next tick
            outcome = await done
        return outcome.unwrap()

    return asyncio.run(host())


# --- secrets and libraries ---------------------------------------------------------------

def resolve_token(settings: Settings, env: dict[str, str] | None = None) -> str:
    """The bot token from [discord].token_file, $DISCORD_TOKEN or systemd's credentials, in that order."""
    token = find_secret(settings.discord.token_file, "DISCORD_TOKEN", "discord-token", "[discord].token_file", env)
    if token:
        return token
    raise ConfigError("[discord].token_file", "no Discord bot token: set $DISCORD_TOKEN, [discord].token_file, "
                      "or systemd LoadCredential=discord-token:/path (see README: Discord setup)")


def check_opus() -> None:
    """py-cord encodes and decodes voice with libopus, loaded through ctypes."""
    if discord.opus.is_loaded():
        return
    with contextlib.suppress(Exception):
        if discord.opus._load_default():
            return
    raise VoxBridgeError("libopus is not installed: Discord voice needs it. Debian/Ubuntu: apt-get install libopus0 "
                         "(scripts/setup.sh does this when run as root); macOS: brew install opus")


# --- the app: bot, voice, commands -------------------------------------------------------

def _roles(member) -> frozenset[str]:
    return frozenset(str(r.id) for r in getattr(member, "roles", []) or [])


def _embed(title: str, description: str = "", fields: list[tuple[str, str]] | None = None) -> discord.Embed:
    e = discord.Embed(title=title, description=description[:4000], colour=discord.Colour.blurple())
    for name, value in (fields or [])[:25]:
        e.add_field(name=name[:256], value=(value or "—")[:1024], inline=False)
    return e


class DiscordPlayback:
    """The channel's FrameSink on Discord: frames into the player buffer; the player (py-cord's
    thread) is started when audio arrives and ends by itself when the channel has nothing to say."""

    def __init__(self, buffer: PlayerBuffer, start_player: Callable[[], None]):
        self.buffer = buffer
        self.start_player = start_player

    async def write(self, frame: bytes) -> None:
        self.start_player()
        await self.buffer.write(frame)

    def clear(self) -> None:
        self.buffer.clear()


class VoxApp:
    """Glue between py-cord objects (asyncio) and the trio `Control`."""

    def __init__(self, settings: Settings, control: Control, bridge: Bridge, bot: discord.Bot):
        self.settings = settings
        self.control = control
        self.bridge = bridge
        self.bot = bot
        self.voice: dict[int, discord.VoiceClient] = {}
        self._alone_tasks: dict[int, asyncio.Task] = {}
        self.wanted: dict[int, int] = {}  # guild -> channel we intend to be in (for reconnects)
        self._keepalives: dict[int, asyncio.Task] = {}
        self.ownership = None  # set by the daemon: with Redis, one instance owns a guild's voice

    def _update_humans(self, guild_id: int) -> None:
        guild = self.bot.get_guild(guild_id)
        vc = guild.voice_client if guild else None
        session = self.control.channel(str(guild_id))
        if session is not None and vc is not None and vc.channel is not None:
            session.humans = len([m for m in vc.channel.members if not m.bot])

    def _mirror_for(self, vc):
        """Post to the voice channel's own text chat, or to [conversation].mirror_channel."""
        target_id = self.settings.conversation.mirror_channel

        async def post(text: str) -> None:
            channel = self.bot.get_channel(int(target_id)) if target_id.isdigit() else vc.channel
            if channel is not None:
                await self.bridge.aio(channel.send(text[:2000], allowed_mentions=discord.AllowedMentions.none()))

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
    def on_frame(self, guild_id: int, member, pcm: bytes) -> None:
        """trio context (via run_sync_soon from py-cord's packet thread)."""
        channel = self.control.channel(str(guild_id))
        if channel is None:
            return
        uid = str(member.id)
        handle = channel.speakers.get(uid) or channel.add_speaker(uid, getattr(member, "display_name", uid), _roles(member))
        if handle is not None:  # None while shutting down: nothing new is heard
            handle.push(pcm)

    def on_speaking(self, guild_id: int, member, speaking: bool) -> None:
        self.control.services.emit("discord_speaking", guild=str(guild_id), user=getattr(member, "display_name", member.id), speaking=speaking)

    async def join_voice(self, channel: discord.VoiceChannel) -> None:
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
        self.voice[guild.id] = vc
        await self._attach(guild.id, channel.id, vc)
        log.info("event=voice_joined guild=%s channel=%s", guild.id, channel.id)

    async def _attach(self, guild_id: int, channel_id: int, vc: discord.VoiceClient) -> None:
        token = self.bridge.token
        buffer = PlayerBuffer(max(1, self.settings.playback.buffer_ms // FRAME_MS), token)
        session_box = {}

        def start_player() -> None:  # runs on the loop thread (trio guest)
            if vc.is_connected() and not vc.is_playing():
                playback = session_box["session"].playback
                vc.play(VoxAudioSource(buffer, lambda: playback.busy))

        session = await self.bridge.to_trio(self.control.join, str(guild_id), str(channel_id),
                                            DiscordPlayback(buffer, start_player))
        session_box["session"] = session
        self._update_humans(guild_id)
        session.mirror = self._mirror_for(vc)
        self._keepalives[guild_id] = self.bot.loop.create_task(self._keepalive(vc))
        sink = VoxSink(lambda m, pcm: self.on_frame(guild_id, m, pcm), lambda m, s: self.on_speaking(guild_id, m, s),
                       token, bot_user_id=self.bot.user.id if self.bot.user else None, vc=vc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 2.8.1 warns that receive is broken; compat.py fixes it
            vc.start_recording(sink)

    async def leave_voice(self, guild: discord.Guild) -> bool:
        self.wanted.pop(guild.id, None)
        vc = guild.voice_client
        left = await self.bridge.to_trio(self.control.leave, str(guild.id))
        if vc is not None:
            with contextlib.suppress(Exception):
                if vc.is_recording():
                    vc.stop_recording()
            await vc.disconnect(force=True)
            left = True
        self.voice.pop(guild.id, None)
        if self.ownership is not None:
            await self.bridge.to_trio(self.ownership.release, str(guild.id))
        task = self._keepalives.pop(guild.id, None)
        if task:
            task.cancel()
        return left

    async def on_voice_state_update(self, member, before, after) -> None:
        guild = member.guild
        me = self.bot.user
        if me and member.id == me.id:
            if before.channel and after.channel is None and guild.id in self.wanted:
                # Dropped (not /leave): py-cord retries transient drops itself; if we are still out, rejoin.
                self.bot.loop.create_task(self._rejoin_later(guild, self.wanted[guild.id]))
            return
        session = self.control.channel(str(guild.id))
        if session and before.channel and before.channel.id == int(session.channel_id) and (
                after.channel is None or after.channel.id != before.channel.id):
            await self.bridge.to_trio(_call_sync, session.remove_speaker, str(member.id))
        if str(member.id) in self.settings.discord.follow_users and after.channel and guild.voice_client is None:
            await self.join_voice(after.channel)
        self._update_humans(guild.id)
        self._check_alone(guild)

    async def _rejoin_later(self, guild, channel_id: int, attempts: int = 5) -> None:
        for i in range(attempts):
            await asyncio.sleep(min(30, 2 ** i))
            if guild.id not in self.wanted or (guild.voice_client and guild.voice_client.is_connected()):
                return
            channel = guild.get_channel(channel_id)
            if channel is None:
                return
            try:
                await self.bridge.to_trio(self.control.leave, str(guild.id))
                await self.join_voice(channel)  # sessions and history live in the store: they resume
                log.info("event=voice_rejoined guild=%s attempt=%d", guild.id, i + 1)
                return
            except Exception as exc:
                log.warning("event=voice_rejoin_failed guild=%s attempt=%d error=%s", guild.id, i + 1, type(exc).__name__)

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
            try:
                await self.join_voice(channel)
            except Exception as exc:
                log.warning("event=auto_join_failed channel=%s error=%s", cid, type(exc).__name__)


async def _call_sync(fn, *args):
    return fn(*args)


def build_commands(app: VoxApp) -> list:
    """The slash commands, bound to `app`. Returned (and added to the bot) so tests can call them."""
    control = app.control

    async def autocomplete_agents(actx: discord.AutocompleteContext) -> list[str]:
        gid = str(actx.interaction.guild_id)
        return control.complete_agent(gid, _roles(actx.interaction.user), actx.value or "")

    agent = SlashCommandGroup("agent", "Choose which AI agent answers you")
    session = SlashCommandGroup("session", "Your conversation with the agents")
    vox = SlashCommandGroup("voxbridge", "VoxBridge itself")

    @agent.command(name="list", description="The agents you can talk to here")
    async def agent_list(ctx: discord.ApplicationContext):
        views = control.agents_for(str(ctx.guild_id), _roles(ctx.author))
        fields = [(f"{v.name} ({v.id})", f"{v.description or v.kind}" + ("" if v.circuit == "closed" else f" — {v.circuit.replace('_', '-')}"))
                  for v in views]
        await ctx.respond(embed=_embed("Agents", "Pick one with /agent select.", fields), ephemeral=True)

    # Options by decorator, not annotation: this module uses postponed annotations, which py-cord
    # would evaluate without the closure (losing the autocomplete callback).
    @agent.command(name="select", description="Talk to this agent from now on")
    @discord.option("name", str, description="Agent", autocomplete=autocomplete_agents)
    async def agent_select(ctx: discord.ApplicationContext, name: str):
        try:
            view = await app.bridge.to_trio(control.select_agent, str(ctx.guild_id), str(ctx.author.id), name, _roles(ctx.author))
        except ControlError as exc:
            await ctx.respond(embed=_embed("Agent not changed", str(exc)), ephemeral=True)
            return
        await ctx.respond(embed=_embed(f"You are talking to {view.name}", view.description), ephemeral=True)

    @agent.command(name="info", description="About one agent")
    @discord.option("name", str, description="Agent", autocomplete=autocomplete_agents)
    async def agent_info(ctx: discord.ApplicationContext, name: str):
        try:
            v = control.agent_info(str(ctx.guild_id), name, _roles(ctx.author))
        except ControlError as exc:
            await ctx.respond(embed=_embed("Unknown agent", str(exc)), ephemeral=True)
            return
        await ctx.respond(embed=_embed(v.name, v.description, [("id", v.id), ("kind", v.kind), ("health", v.circuit)]), ephemeral=True)

    @agent.command(name="clear", description="Go back to automatic routing")
    async def agent_clear(ctx: discord.ApplicationContext):
        await app.bridge.to_trio(control.clear_agent, str(ctx.guild_id), str(ctx.author.id))
        await ctx.respond(embed=_embed("Automatic routing", "Your questions go to the agent the rules pick."), ephemeral=True)

    def session_embed(title: str, s) -> discord.Embed:
        return _embed(title, "", [("agent", s.agent_name or "automatic"), ("turns", str(s.turn_count)),
                                  ("conversation", s.conversation_id)])

    @session.command(name="info", description="Your current conversation")
    async def session_info(ctx: discord.ApplicationContext):
        s = await app.bridge.to_trio(control.session_info, str(ctx.guild_id), str(ctx.author.id))
        await ctx.respond(embed=session_embed("Your session", s), ephemeral=True)

    @session.command(name="new", description="Start a new conversation (the agent forgets this one)")
    async def session_new(ctx: discord.ApplicationContext):
        s = await app.bridge.to_trio(control.new_session, str(ctx.guild_id), str(ctx.author.id))
        await ctx.respond(embed=session_embed("New conversation", s), ephemeral=True)

    def may_move(ctx, channel) -> bool:
        perms = channel.permissions_for(ctx.author) if channel is not None else None
        return member_may_join(app.settings.discord.join_roles, _roles(ctx.author), bool(perms and perms.connect))

    @discord.slash_command(name="join", description="Bring VoxBridge into your voice channel")
    async def join(ctx: discord.ApplicationContext):
        voice = getattr(ctx.author, "voice", None)
        channel = voice.channel if voice else None
        if channel is None:
            await ctx.respond(embed=_embed("Join a voice channel first", "Then run /join again."), ephemeral=True)
            return
        if not may_move(ctx, channel):
            await ctx.respond(embed=_embed("Not allowed", "You may not bring the bot into voice channels here."), ephemeral=True)
            return
        await ctx.defer(ephemeral=True)
        try:
            await app.join_voice(channel)
        except ControlError as exc:
            await ctx.respond(embed=_embed("Could not join", str(exc)), ephemeral=True)
            return
        except Exception as exc:
            await ctx.respond(embed=_embed("Could not join", f"{type(exc).__name__}; check the bot's Connect/Speak permissions."), ephemeral=True)
            return
        await ctx.respond(embed=_embed(f"Listening in {channel.name}", "Talk to me; /agent select picks who answers."), ephemeral=True)

    @discord.slash_command(name="leave", description="Send VoxBridge out of the voice channel")
    async def leave(ctx: discord.ApplicationContext):
        vc = ctx.guild.voice_client if ctx.guild else None
        if not may_move(ctx, vc.channel if vc else getattr(getattr(ctx.author, "voice", None), "channel", None)):
            await ctx.respond(embed=_embed("Not allowed", "You may not move the bot here."), ephemeral=True)
            return
        left = await app.leave_voice(ctx.guild)
        await ctx.respond(embed=_embed("Left the voice channel" if left else "I was not in a voice channel"), ephemeral=True)

    @vox.command(name="mode", description="How VoxBridge listens in this voice channel")
    # Discord caps option descriptions at 100 characters.
    @discord.option("mode", str, description="conversation: answer all; addressed: only when named; transcribe: text only",
                    choices=["conversation", "addressed", "transcribe", "auto"])
    async def mode(ctx: discord.ApplicationContext, mode: str):
        session = control.channel(str(ctx.guild_id))
        where = ctx.guild.get_channel(int(session.channel_id)) if session and ctx.guild and session.channel_id.isdigit() else None
        if session is not None and not may_move(ctx, where):  # same people who may move the bot
            await ctx.respond(embed=_embed("Not allowed", "You may not change how the bot listens here."), ephemeral=True)
            return
        try:
            effective, why = control.set_mode(str(ctx.guild_id), None if mode == "auto" else mode)
        except ControlError as exc:
            await ctx.respond(embed=_embed("Mode not changed", str(exc)), ephemeral=True)
            return
        await ctx.respond(embed=_embed(f"Mode: {effective}", why), ephemeral=True)

    @vox.command(name="ignore-me", description="Stop (or start again) listening to you; remembered")
    async def ignore_me(ctx: discord.ApplicationContext):
        now_ignored = str(ctx.author.id) not in control.services.ignored
        await app.bridge.to_trio(control.set_ignored, str(ctx.author.id), now_ignored)
        if now_ignored:
            await ctx.respond(embed=_embed("I will not listen to you", "Your voice is neither transcribed nor stored. Run it again to undo."), ephemeral=True)
        else:
            await ctx.respond(embed=_embed("Listening to you again", "Your voice is transcribed and answered."), ephemeral=True)

    @vox.command(name="status", description="What VoxBridge is doing")
    async def status(ctx: discord.ApplicationContext):
        st = control.status()
        mine = [c for c in st["channels"] if c["guild"] == str(ctx.guild_id)]
        fields = [("voice", f"{len(mine[0]['speakers'])} speaker(s), {mine[0]['turns_in_flight']} turn(s) in flight" if mine else "not in a voice channel"),
                  ("agents", ", ".join(f"{a['id']} ({a['circuit'].replace('_', '-')})" for a in st["agents"])),
                  ("config", f"version {st['config_version']}, {st['reloads']} reload(s), {st['reload_failures']} rejected")]
        await ctx.respond(embed=_embed("VoxBridge status", "", fields), ephemeral=True)

    return [agent, session, vox, join, leave]


def make_bot(settings: Settings) -> discord.Bot:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    intents.members = True  # role checks and member lookup for voice (privileged: enable it in the portal)
    d = settings.discord
    if d.shard_count:  # several instances split the guilds by shard
        ids = [int(i) for i in d.shard_ids] or None
        return discord.AutoShardedBot(intents=intents, auto_sync_commands=d.sync_commands, shard_count=d.shard_count, shard_ids=ids)
    return discord.Bot(intents=intents, auto_sync_commands=d.sync_commands)


def wire(app: VoxApp) -> None:
    bot = app.bot
    for command in build_commands(app):
        bot.add_application_command(command)

    @bot.listen("on_ready")
    async def ready():
        log.info("event=discord_ready user_id=%s guilds=%d", bot.user.id if bot.user else "?", len(bot.guilds))
        await app.auto_join()

    @bot.listen("on_voice_state_update")
    async def voice_state(member, before, after):
        await app.on_voice_state_update(member, before, after)


# --- voxbridge run ---------------------------------------------------------------------------

class DiscordVoice:
    """The daemon's voice backend on Discord (used by the control API and shutdown)."""

    kind = "discord"

    def __init__(self, app: VoxApp):
        self.app = app

    def ready(self) -> bool:
        return self.app.bot.is_ready()

    async def join(self, guild_id: str, channel_id: str) -> None:
        channel = self.app.bot.get_channel(int(channel_id)) if channel_id.isdigit() else None
        if not isinstance(channel, (discord.VoiceChannel, discord.StageChannel)):
            raise ControlError(f"no voice channel {channel_id} is visible to the bot")
        await self.app.bridge.aio(self.app.join_voice(channel))

    async def leave(self, guild_id: str) -> None:
        guild = self.app.bot.get_guild(int(guild_id)) if guild_id.isdigit() else None
        if guild is not None:
            await self.app.bridge.aio(self.app.leave_voice(guild))
        else:
            await self.app.control.leave(guild_id)


def run_daemon(settings: Settings) -> int:
    token = resolve_token(settings)
    check_opus()
    return run_guest(_daemon_main, settings, token)


async def _daemon_main(loop: asyncio.AbstractEventLoop, settings: Settings, token: str) -> int:
    from ..daemon import Daemon

    daemon = Daemon(settings)

    async def discord_voice(daemon: Daemon, nursery: trio.Nursery) -> DiscordVoice:
        bridge = Bridge(loop, trio.lowlevel.current_trio_token(), nursery)
        bot = make_bot(settings)
        app = VoxApp(settings, daemon.control, bridge, bot)
        wire(app)

        async def discord_client():
            try:
                await bridge.aio(bot.start(token))
            except discord.LoginFailure:
                log.error("event=discord_login_failed reason=invalid_token")
                daemon.request_stop()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await bridge.aio(bot.close())

        nursery.start_soon(discord_client)
        daemon.on_ownership = lambda ownership: setattr(app, "ownership", ownership)
        return DiscordVoice(app)

    # Signals arrive on the host loop (asyncio owns the wakeup fd) and are passed to trio from the
    # start: one arriving while models load is deferred (SIGHUP) or stops after start-up (SIGTERM).
    tok = trio.lowlevel.current_trio_token()
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, functools.partial(tok.run_sync_soon, daemon.on_signal, sig))
    return await daemon.run(voice_factory=discord_voice, signals=False)
