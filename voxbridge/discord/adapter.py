"""The Discord adapter: `voxbridge run` on Discord. All asyncio code of VoxBridge lives in this
package (`voxbridge/discord/`); the core is trio.

- bridge.py: trio as a guest on py-cord's asyncio loop, awaiting either side from the other;
- receive.py: members' voice from the wire (VoxBridge's own receive pipeline);
- compat.py: every workaround for py-cord 2.8.1's voice code, in one place;
- voice.py: joining, hearing, speaking, following the bot's voice state (`VoxApp`);
- commands.py: the slash commands;
- this module: token and libopus checks, the bot, wiring, and the daemon's Discord voice backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp
import discord
import trio

from ..config import Settings, find_secret
from ..core.control import ControlError
from ..errors import ConfigError, VoxBridgeError
from .bridge import Bridge, run_guest
from .commands import build_commands, on_command_error
from .voice import AnyBot, DiscordPlayback, VoxApp

__all__ = [
    "Bridge",
    "DiscordPlayback",
    "DiscordVoice",
    "VoxApp",
    "build_commands",
    "check_opus",
    "make_bot",
    "resolve_token",
    "run_daemon",
    "run_guest",
    "wire",
]

log = logging.getLogger("voxbridge.discord")

LOGIN_RETRY_MAX_S = 60.0


def resolve_token(settings: Settings, env: dict[str, str] | None = None) -> str:
    """The bot token from [discord].token_file, $DISCORD_TOKEN or systemd's credentials, in that order."""
    token = find_secret(settings.discord.token_file, "DISCORD_TOKEN", "discord-token", "[discord].token_file", env)
    if token:
        return token
    raise ConfigError(
        "[discord].token_file",
        "no Discord bot token: set $DISCORD_TOKEN, [discord].token_file, "
        "or systemd LoadCredential=discord-token:/path (see README: Discord setup)",
    )


def check_opus() -> None:
    """py-cord encodes and decodes voice with libopus, loaded through ctypes."""
    if discord.opus.is_loaded():
        return
    with contextlib.suppress(Exception):
        if discord.opus._load_default():
            return
    raise VoxBridgeError(
        "libopus is not installed: Discord voice needs it. Debian/Ubuntu: apt-get install libopus0 "
        "(scripts/setup.sh does this when run as root); macOS: brew install opus"
    )


def make_bot(settings: Settings) -> AnyBot:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    intents.members = True  # role checks and member lookup for voice (privileged: enable it in the portal)
    d = settings.discord
    if d.shard_count:  # several instances split the guilds by shard
        ids = [int(i) for i in d.shard_ids] or None
        return discord.AutoShardedBot(
            intents=intents, auto_sync_commands=d.sync_commands, shard_count=d.shard_count, shard_ids=ids
        )
    return discord.Bot(intents=intents, auto_sync_commands=d.sync_commands)


def wire(app: VoxApp) -> None:
    bot = app.bot
    for command in build_commands(app):
        bot.add_application_command(command)
    bot.on_application_command_error = on_command_error

    @bot.listen("on_ready")
    async def ready():
        log.info("event=discord_ready user_id=%s guilds=%d", bot.user.id if bot.user else "?", len(bot.guilds))
        await app.auto_join()

    @bot.listen("on_voice_state_update")
    async def voice_state(member, before, after):
        await app.on_voice_state_update(member, before, after)


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
    outcome: dict[str, int] = {}
    rc = run_guest(_daemon_main, settings, token, outcome)
    return outcome.get("exit_code", 0 if rc is None else rc)


async def _connect_discord(bridge: Bridge, bot: AnyBot, token: str) -> None:
    """Log in (retrying with backoff while Discord cannot be reached), then stay connected
    (py-cord reconnects the gateway itself). A rejected token raises LoginFailure at once."""
    delay = 1.0
    while True:
        try:
            await bridge.aio(bot.login(token))
            break
        except discord.LoginFailure:
            raise
        except (OSError, aiohttp.ClientError, TimeoutError, discord.HTTPException, discord.GatewayNotFound) as exc:
            status = getattr(exc, "status", None)
            log.warning(
                "event=discord_unreachable error=%s%s retry_in_s=%.0f",
                type(exc).__name__,
                f" status={status}" if status else "",
                delay,
            )
            with contextlib.suppress(Exception):
                await bridge.aio(bot.http.close())
            await trio.sleep(delay)
            delay = min(LOGIN_RETRY_MAX_S, delay * 2)
    await bridge.aio(bot.connect(reconnect=True))


async def _daemon_main(loop: asyncio.AbstractEventLoop, settings: Settings, token: str, outcome: dict) -> int:
    from ..daemon import Daemon

    daemon = Daemon(settings)

    def fail(code: int, message: str) -> None:
        log.error(message)
        outcome["exit_code"] = code
        daemon.request_stop()

    async def discord_voice(daemon: Daemon, nursery: trio.Nursery) -> DiscordVoice:
        bridge = Bridge(loop, trio.lowlevel.current_trio_token(), nursery)
        bot = make_bot(settings)
        assert daemon.control is not None  # the daemon creates it before calling its voice factory
        app = VoxApp(settings, daemon.control, bridge, bot)
        wire(app)

        async def discord_client():
            try:
                await _connect_discord(bridge, bot, token)
            except discord.LoginFailure:
                fail(
                    2,
                    'event=discord_login_failed reason=invalid_token hint="Discord rejected the bot token: '
                    "reset it in the developer portal (Bot -> Reset Token) and update $DISCORD_TOKEN, "
                    '[discord].token_file or the discord-token credential"',
                )
            except discord.PrivilegedIntentsRequired:
                fail(
                    2,
                    'event=discord_login_failed reason=intents hint="enable the Server Members Intent '
                    '(developer portal -> Bot -> Privileged Gateway Intents)"',
                )
            except Exception as exc:  # a one-line reason, never a traceback of the whole task tree
                fail(1, f"event=discord_failed error={type(exc).__name__}")
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    with contextlib.suppress(Exception):
                        await bridge.aio(bot.close())

        nursery.start_soon(discord_client)
        daemon.on_ownership = lambda ownership: setattr(app, "ownership", ownership)
        return DiscordVoice(app)

    # Signals arrive on the host loop (asyncio owns the wakeup fd) and are passed to trio from the
    # start: one arriving while models load is deferred (SIGHUP) or stops after start-up (SIGTERM).
    tok = trio.lowlevel.current_trio_token()
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, tok.run_sync_soon, daemon.on_signal, sig)
    return await daemon.run(voice_factory=discord_voice, signals=False)
