"""The slash commands: thin callbacks (parse -> trio `Control` -> ephemeral embed).

Every reply goes through `reply()`: the work runs while a timer watches Discord's 3-second
interaction deadline; work that is not done in `DEFER_AFTER_S` defers the reply ("thinking…")
and answers as a follow-up. A `ControlError` is the user's answer; any other error is logged and
answered with a short apology instead of Discord's "the application did not respond".
Commands are guild-only; moving the bot and changing its mode need Connect by default (server
admins can narrow that in Server Settings -> Integrations).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import discord
from discord.commands import SlashCommandGroup

from ..core.control import ControlError, member_may_join
from .voice import VoxApp, roles_of

log = logging.getLogger("voxbridge.discord")

DEFER_AFTER_S = 1.5
EMBED_TOTAL = 6000  # Discord's limit over title, description and all fields
GUILD_ONLY = {discord.InteractionContextType.guild}
MAY_CONNECT = discord.Permissions(connect=True)


def embed(title: str, description: str = "", fields: list[tuple[str, str]] | None = None) -> discord.Embed:
    """An embed within Discord's limits (title 256, description 4096, 25 fields of 256/1024, 6000 in all)."""
    title = title[:256]
    description = description[:4000]
    budget = EMBED_TOTAL - len(title) - len(description)
    e = discord.Embed(title=title, description=description, colour=discord.Colour.blurple())
    for name, value in (fields or [])[:25]:
        name, value = name[:256], (value or "—")[:1024]
        if len(name) + len(value) > budget:
            value = value[: max(0, budget - len(name) - 1)] + "…"
            if budget - len(name) <= 1:
                break
        budget -= len(name) + len(value)
        e.add_field(name=name, value=value, inline=False)
    return e


async def reply(ctx: discord.ApplicationContext, work: Awaitable[discord.Embed], refused: str = "Not done") -> None:
    """Answer `ctx` with the embed `work` produces, ephemerally, within Discord's deadline; a
    `ControlError` is answered as an embed titled `refused` with its message."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=DEFER_AFTER_S)
    if not done:
        await ctx.defer(ephemeral=True)
    try:
        answer = await task
    except ControlError as exc:
        answer = embed(refused, str(exc))
    except Exception as exc:
        log.exception("event=command_failed command=%s", getattr(ctx.command, "qualified_name", "?"))
        answer = embed("Something went wrong", f"{type(exc).__name__}; the bot's log has the details.")
    await ctx.respond(embed=answer, ephemeral=True)


def build_commands(app: VoxApp) -> list:
    """The slash commands, bound to `app`. Returned (and added to the bot) so tests can call them."""
    control = app.control

    async def autocomplete_agents(actx: discord.AutocompleteContext) -> list[str]:
        gid = str(actx.interaction.guild_id)
        return control.complete_agent(gid, roles_of(actx.interaction.user), actx.value or "")

    agent = SlashCommandGroup("agent", "Choose which AI agent answers you", contexts=GUILD_ONLY)
    session = SlashCommandGroup("session", "Your conversation with the agents", contexts=GUILD_ONLY)
    vox = SlashCommandGroup(
        "voxbridge", "VoxBridge itself", contexts=GUILD_ONLY, default_member_permissions=MAY_CONNECT
    )

    @agent.command(name="list", description="The agents you can talk to here")
    async def agent_list(ctx: discord.ApplicationContext):
        async def work():
            views = control.agents_for(str(ctx.guild_id), roles_of(ctx.author))
            fields = [
                (
                    f"{v.name} ({v.id})",
                    f"{v.description or v.kind}"
                    + ("" if v.circuit == "closed" else f" — {v.circuit.replace('_', '-')}"),
                )
                for v in views
            ]
            return embed("Agents", "Pick one with /agent select.", fields)

        await reply(ctx, work())

    # Options by decorator, not annotation: this module uses postponed annotations, which py-cord
    # would evaluate without the closure (losing the autocomplete callback).
    @agent.command(name="select", description="Talk to this agent from now on")
    @discord.option("name", str, description="Agent", autocomplete=autocomplete_agents)
    async def agent_select(ctx: discord.ApplicationContext, name: str):
        async def work():
            view = await app.bridge.to_trio(
                control.select_agent, str(ctx.guild_id), str(ctx.author.id), name, roles_of(ctx.author)
            )
            return embed(f"You are talking to {view.name}", view.description)

        await reply(ctx, work(), refused="Agent not changed")

    @agent.command(name="info", description="About one agent")
    @discord.option("name", str, description="Agent", autocomplete=autocomplete_agents)
    async def agent_info(ctx: discord.ApplicationContext, name: str):
        async def work():
            v = control.agent_info(str(ctx.guild_id), name, roles_of(ctx.author))
            return embed(v.name, v.description, [("id", v.id), ("kind", v.kind), ("health", v.circuit)])

        await reply(ctx, work(), refused="Unknown agent")

    @agent.command(name="clear", description="Go back to automatic routing")
    async def agent_clear(ctx: discord.ApplicationContext):
        async def work():
            await app.bridge.to_trio(control.clear_agent, str(ctx.guild_id), str(ctx.author.id))
            return embed("Automatic routing", "Your questions go to the agent the rules pick.")

        await reply(ctx, work())

    def session_embed(title: str, s) -> discord.Embed:
        return embed(
            title,
            "",
            [("agent", s.agent_name or "automatic"), ("turns", str(s.turn_count)), ("conversation", s.conversation_id)],
        )

    @session.command(name="info", description="Your current conversation")
    async def session_info(ctx: discord.ApplicationContext):
        async def work():
            s = await app.bridge.to_trio(control.session_info, str(ctx.guild_id), str(ctx.author.id))
            return session_embed("Your session", s)

        await reply(ctx, work())

    @session.command(name="new", description="Start a new conversation (the agent forgets this one)")
    async def session_new(ctx: discord.ApplicationContext):
        async def work():
            s = await app.bridge.to_trio(control.new_session, str(ctx.guild_id), str(ctx.author.id))
            return session_embed("New conversation", s)

        await reply(ctx, work())

    def may_move(ctx, channel) -> bool:
        perms = channel.permissions_for(ctx.author) if channel is not None else None
        return member_may_join(app.settings.discord.join_roles, roles_of(ctx.author), bool(perms and perms.connect))

    @discord.slash_command(
        name="join",
        description="Bring VoxBridge into your voice channel",
        contexts=GUILD_ONLY,
        default_member_permissions=MAY_CONNECT,
    )
    async def join(ctx: discord.ApplicationContext):
        async def work():
            voice = getattr(ctx.author, "voice", None)
            channel = voice.channel if voice else None
            if channel is None:
                return embed("Join a voice channel first", "Then run /join again.")
            if not may_move(ctx, channel):
                return embed("Not allowed", "You may not bring the bot into voice channels here.")
            try:
                await app.join_voice(channel)
            except ControlError:
                raise  # reply() answers it under "Could not join"
            except Exception as exc:
                log.warning("event=join_failed guild=%s error=%s", ctx.guild_id, type(exc).__name__)
                return embed("Could not join", f"{type(exc).__name__}; check the bot's Connect/Speak permissions.")
            return embed(f"Listening in {channel.name}", "Talk to me; /agent select picks who answers.")

        await reply(ctx, work(), refused="Could not join")

    @discord.slash_command(
        name="leave",
        description="Send VoxBridge out of the voice channel",
        contexts=GUILD_ONLY,
        default_member_permissions=MAY_CONNECT,
    )
    async def leave(ctx: discord.ApplicationContext):
        async def work():
            guild = ctx.guild
            if guild is None:  # guild-only, but the guild may not be cached
                raise ControlError("this command works only in a server")
            vc = guild.voice_client
            if not may_move(ctx, vc.channel if vc else getattr(getattr(ctx.author, "voice", None), "channel", None)):
                return embed("Not allowed", "You may not move the bot here.")
            left = await app.leave_voice(guild)  # disconnecting can take seconds: reply() defers
            return embed("Left the voice channel" if left else "I was not in a voice channel")

        await reply(ctx, work())

    @vox.command(name="mode", description="How VoxBridge listens in this voice channel")
    # Discord caps option descriptions at 100 characters.
    @discord.option(
        "mode",
        str,
        description="conversation: answer all; addressed: only when named; transcribe: text only",
        choices=["conversation", "addressed", "transcribe", "auto"],
    )
    async def mode(ctx: discord.ApplicationContext, mode: str):
        async def work():
            session = control.channel(str(ctx.guild_id))
            where = (
                ctx.guild.get_channel(int(session.channel_id))
                if session and ctx.guild and session.channel_id.isdigit()
                else None
            )
            if session is not None and not may_move(ctx, where):  # same people who may move the bot
                return embed("Not allowed", "You may not change how the bot listens here.")
            effective, why = control.set_mode(str(ctx.guild_id), None if mode == "auto" else mode)
            return embed(f"Mode: {effective}", why)

        await reply(ctx, work(), refused="Mode not changed")

    @vox.command(name="ignore-me", description="Stop (or start again) listening to you; remembered")
    async def ignore_me(ctx: discord.ApplicationContext):
        async def work():
            now_ignored = str(ctx.author.id) not in control.services.ignored
            await app.bridge.to_trio(control.set_ignored, str(ctx.author.id), now_ignored)
            if now_ignored:
                return embed(
                    "I will not listen to you", "Your voice is neither transcribed nor stored. Run it again to undo."
                )
            return embed("Listening to you again", "Your voice is transcribed and answered.")

        await reply(ctx, work())

    @vox.command(name="status", description="What VoxBridge is doing")
    async def status(ctx: discord.ApplicationContext):
        async def work():
            st = control.status()
            mine = [c for c in st["channels"] if c["guild"] == str(ctx.guild_id)]
            voice = (
                f"{len(mine[0]['speakers'])} speaker(s), {mine[0]['turns_in_flight']} turn(s) in flight"
                if mine
                else "not in a voice channel"
            )
            fields = [
                ("voice", voice),
                ("agents", ", ".join(f"{a['id']} ({a['circuit'].replace('_', '-')})" for a in st["agents"])),
                (
                    "config",
                    f"version {st['config_version']}, {st['reloads']} reload(s), {st['reload_failures']} rejected",
                ),
            ]
            return embed("VoxBridge status", "", fields)

        await reply(ctx, work())

    return [agent, session, vox, join, leave]


async def on_command_error(context: discord.ApplicationContext, exception: discord.DiscordException) -> None:
    """Errors outside `reply()` (checks, option conversion): an answer, not a silent failure.

    The parameters are named as py-cord's `Bot.on_application_command_error`, which this replaces."""
    log.warning(
        "event=command_error command=%s error=%s",
        getattr(context.command, "qualified_name", "?"),
        type(getattr(exception, "original", exception)).__name__,
    )
    try:
        await context.respond(embed=embed("Something went wrong", "The bot's log has the details."), ephemeral=True)
    except Exception:
        log.debug("event=command_error_reply_failed", exc_info=True)
