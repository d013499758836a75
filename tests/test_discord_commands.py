"""Slash commands invoked with py-cord's own objects (ApplicationContext from an interaction
payload, AutocompleteContext), through the real Control and store; replies are ephemeral."""

import attrs
import discord
import trio

from voxbridge.agents.config import parse_agents
from voxbridge.core.control import Control
from voxbridge.core.services import open_services
from voxbridge.discord.adapter import Bridge, VoxApp, build_commands, run_guest

from .discord_objects import RecordingResponse, command_context, offline_bot

AGENTS = """
[[agents]]
id = "general"
name = "General Assistant"
description = "Everyday questions"
kind = "n8n"
url = "http://127.0.0.1:9/g"

[[agents]]
id = "tech"
name = "Tech Support"
kind = "n8n"
url = "http://127.0.0.1:9/t"

[[agents]]
id = "staff-only"
name = "Staff Desk"
kind = "n8n"
url = "http://127.0.0.1:9/s"
allowed_roles = ["8"]
"""


def with_app(settings, body):
    async def main(loop):
        async with trio.open_nursery() as nursery:
            cfg = parse_agents(AGENTS, "agents.toml", env={})
            async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
                bot, guild = offline_bot()
                app = VoxApp(
                    settings, Control(services, nursery), Bridge(loop, trio.lowlevel.current_trio_token(), nursery), bot
                )
                cmds = {c.name: c for c in build_commands(app)}
                sub = {
                    f"{g.name} {c.name}": c
                    for g in cmds.values()
                    if isinstance(g, discord.SlashCommandGroup)
                    for c in g.subcommands
                }
                result = await body(app, bot, {**cmds, **sub}, services)
            nursery.cancel_scope.cancel()
            return result

    return run_guest(main)


def test_agent_list_select_info_clear(settings):
    async def body(app, bot, cmd, services):
        out = {}
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["agent list"](ctx))
        out["list"] = ctx.replies[-1]
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["agent select"](ctx, "Tech Support"))  # by name or id
        out["select"] = ctx.replies[-1]
        out["pinned"] = (await services.store.session(str(100), "11")).agent_id
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["agent select"](ctx, "staff-only"))  # alice lacks role 8
        out["denied"] = ctx.replies[-1]
        staff = command_context(bot, 12, "bob", roles=("7", "8"))
        await app.bridge.aio(cmd["agent select"](staff, "staff-only"))
        out["staff"] = staff.replies[-1]
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["agent info"](ctx, "general"))
        out["info"] = ctx.replies[-1]
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["agent clear"](ctx))
        out["cleared"] = (await services.store.session(str(100), "11")).agent_id
        return out

    out = with_app(settings, body)
    assert out["list"]["ephemeral"] is True
    names = [f.name for f in out["list"]["embed"].fields]
    assert names == ["General Assistant (general)", "Tech Support (tech)"]  # no staff-only agent for alice
    assert out["select"]["ephemeral"] and out["select"]["embed"].title == "You are talking to Tech Support"
    assert out["pinned"] == "tech"
    assert out["denied"]["embed"].title == "Agent not changed" and "not available" in out["denied"]["embed"].description
    assert out["staff"]["embed"].title == "You are talking to Staff Desk"
    assert out["info"]["embed"].title == "General Assistant" and out["info"]["embed"].fields[2].value == "closed"
    assert out["cleared"] is None


def test_autocomplete_comes_from_the_live_registry(settings):
    async def body(app, bot, cmd, services):
        group = cmd["agent"]
        interaction = discord.Interaction(
            data={
                "id": "2",
                "application_id": "9",
                "type": 4,
                "token": "t",
                "version": 1,
                "guild_id": "100",
                "channel_id": "200",
                "member": {
                    "user": {
                        "id": "11",
                        "username": "alice",
                        "discriminator": "0",
                        "global_name": "Alice",
                        "avatar": None,
                    },
                    "roles": ["7"],
                    "joined_at": "2026-01-01T00:00:00+00:00",
                    "deaf": False,
                    "mute": False,
                    "permissions": "0",
                },
                "data": {
                    "id": "5",
                    "name": "agent",
                    "type": 1,
                    "options": [
                        {
                            "name": "select",
                            "type": 1,
                            "options": [{"name": "name", "type": 3, "value": "te", "focused": True}],
                        }
                    ],
                },
            },
            state=bot._connection,
        )
        response = RecordingResponse(interaction)
        interaction._cs_response = response
        await app.bridge.aio(group.invoke_autocomplete_callback(discord.AutocompleteContext(bot, interaction)))
        # the registry changes (a reload): autocomplete follows at once
        services.agents.swap(parse_agents(AGENTS.replace('id = "tech"', 'id = "techno"'), "agents.toml", env={}))
        interaction.data = {
            "id": "5",
            "name": "agent",
            "type": 1,
            "options": [
                {"name": "select", "type": 1, "options": [{"name": "name", "type": 3, "value": "te", "focused": True}]}
            ],
        }
        await app.bridge.aio(group.invoke_autocomplete_callback(discord.AutocompleteContext(bot, interaction)))
        return [r["choices"] for r in response.records]

    assert with_app(settings, body) == [["tech"], ["techno"]]


def test_session_info_and_new(settings):
    async def body(app, bot, cmd, services):
        await services.store.begin_turn({"guild_id": "100", "user_id": "11", "channel_id": "200", "transcript": "hi"})
        a = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["session info"](a))
        b = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["session new"](b))
        return a.replies[-1]["embed"], b.replies[-1]["embed"]

    info, new = with_app(settings, body)
    fields = {f.name: f.value for f in info.fields}
    new_fields = {f.name: f.value for f in new.fields}
    assert fields["turns"] == "1" and new_fields["turns"] == "0"
    assert fields["conversation"] != new_fields["conversation"]


def test_join_and_leave_permissions_and_status(settings):
    settings = attrs.evolve(settings, discord=attrs.evolve(settings.discord, join_roles=("8",)))

    async def body(app, bot, cmd, services):
        out = {}
        ctx = command_context(bot, 11, "alice")  # not in a voice channel
        await app.bridge.aio(cmd["join"](ctx))
        out["no_voice"] = ctx.replies[-1]["embed"].title
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["leave"](ctx))  # lacks join role 8
        out["leave_denied"] = ctx.replies[-1]["embed"].title
        ctx = command_context(bot, 12, "bob", roles=("7", "8"))
        await app.bridge.aio(cmd["leave"](ctx))
        out["leave_ok"] = ctx.replies[-1]["embed"].title
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["voxbridge status"](ctx))
        out["status"] = {f.name: f.value for f in ctx.replies[-1]["embed"].fields}
        out["ephemeral"] = ctx.replies[-1]["ephemeral"]
        return out

    out = with_app(settings, body)
    assert out["no_voice"] == "Join a voice channel first"
    assert out["leave_denied"] == "Not allowed"
    assert out["leave_ok"] == "I was not in a voice channel"
    assert out["status"]["voice"] == "not in a voice channel" and "general (closed)" in out["status"]["agents"]
    assert out["ephemeral"] is True


def test_token_resolution_never_shows_the_token(settings, tmp_path):
    import pytest

    from voxbridge.discord.adapter import resolve_token
    from voxbridge.errors import ConfigError

    assert resolve_token(settings, env={"DISCORD_TOKEN": "abc.def\n"}) == "abc.def"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "discord-token").write_text("from-systemd\n")
    assert resolve_token(settings, env={"CREDENTIALS_DIRECTORY": str(creds)}) == "from-systemd"
    f = tmp_path / "token"
    f.write_text("from-file")
    s2 = attrs.evolve(settings, discord=attrs.evolve(settings.discord, token_file=str(f)))
    assert resolve_token(s2, env={}) == "from-file"
    assert (
        resolve_token(s2, env={"DISCORD_TOKEN": "from-env"}) == "from-file"
    )  # the configured file comes first, as documented
    with pytest.raises(ConfigError, match="no Discord bot token"):
        resolve_token(settings, env={})


def test_readme_invite_url_asks_for_exactly_the_voice_permissions():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    perms = int(re.search(r"scope=bot%20applications\.commands&permissions=(\d+)", text).group(1))
    expected = discord.Permissions(view_channel=True, connect=True, speak=True, use_voice_activation=True)
    assert perms == expected.value


def test_member_leaving_the_channel_cancels_their_speaker_and_follow_joins(settings):
    from voxbridge.core.playback import CollectSink

    from .discord_objects import GUILD_ID, VOICE_ID, member

    settings = attrs.evolve(settings, discord=attrs.evolve(settings.discord, follow_users=("13",)))

    async def body(app, bot, cmd, services):
        guild = bot.get_guild(GUILD_ID)
        voice = guild.get_channel(VOICE_ID)
        channel = await app.control.join(str(GUILD_ID), str(VOICE_ID), CollectSink())
        alice = member(guild, 11, "alice")
        handle = channel.add_speaker("11", "alice")
        data = {
            "channel_id": str(VOICE_ID),
            "session_id": "s",
            "deaf": False,
            "mute": False,
            "self_deaf": False,
            "self_mute": False,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        inside = discord.VoiceState(data=data, channel=voice)
        outside = discord.VoiceState(data={**data, "channel_id": None}, channel=None)
        await app.bridge.aio(app.on_voice_state_update(alice, inside, outside))
        with trio.fail_after(5):
            await handle.finished.wait()  # alice's SpeakerSession (and its turns) ended
        joined = []

        async def record_join(ch):
            joined.append(ch.id)

        app.join_voice = record_join
        await app.control.leave(str(GUILD_ID))
        carol = member(guild, 13, "carol")
        await app.bridge.aio(app.on_voice_state_update(carol, outside, inside))  # a followed user joins voice
        return "11" in channel.speakers, joined

    still_there, joined = with_app(settings, body)
    assert still_there is False
    assert joined == [VOICE_ID]


def test_mode_and_ignore_me_commands(settings):
    from voxbridge.core.playback import CollectSink

    async def body(app, bot, cmd, services):
        out = {}
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["voxbridge mode"](ctx, "transcribe"))  # not in voice yet
        out["not_joined"] = ctx.replies[-1]["embed"].title
        channel = await app.control.join("100", "200", CollectSink())
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["voxbridge mode"](ctx, "transcribe"))
        out["set"] = (ctx.replies[-1]["embed"].title, channel.effective_mode())
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["voxbridge mode"](ctx, "auto"))
        out["auto"] = channel.effective_mode()
        channel.add_speaker("11", "alice")
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["voxbridge ignore-me"](ctx))
        out["ignored"] = (
            ctx.replies[-1]["embed"].title,
            "11" in services.ignored,
            "11" in channel.speakers,
            channel.add_speaker("11", "alice"),
            await services.store.ignored_users(),
        )
        ctx = command_context(bot, 11, "alice")
        await app.bridge.aio(cmd["voxbridge ignore-me"](ctx))
        out["back"] = (ctx.replies[-1]["embed"].title, await services.store.ignored_users())
        return out

    out = with_app(settings, body)
    assert out["not_joined"] == "Mode not changed"
    assert out["set"] == ("Mode: transcribe", ("transcribe", "set with /voxbridge mode"))
    assert out["auto"] == ("conversation", "configured")
    title, in_memory, still_speaker, new_handle, stored = out["ignored"]
    assert title == "I will not listen to you" and in_memory and new_handle is None and stored == {"11"}
    assert out["back"] == ("Listening to you again", set())


def test_shard_settings_make_a_sharded_bot(settings):
    import asyncio

    from voxbridge.discord.adapter import make_bot

    async def build(s):  # as in production: inside py-cord's running loop
        return make_bot(s)

    sharded = asyncio.run(
        build(attrs.evolve(settings, discord=attrs.evolve(settings.discord, shard_count=4, shard_ids=("2", "3"))))
    )
    assert isinstance(sharded, discord.AutoShardedBot) and sharded.shard_count == 4 and sharded.shard_ids == [2, 3]
    assert not isinstance(asyncio.run(build(settings)), discord.AutoShardedBot)


def test_discord_joins_respect_another_instances_voice_lock(settings, redis_url):
    import uuid

    import pytest

    from voxbridge.core.control import ControlError
    from voxbridge.store.ownership import Ownership
    from voxbridge.store.redis_layer import RedisLayer
    from voxbridge.store.sqlite import SqliteStore

    prefix = f"vbxtest:{uuid.uuid4().hex[:8]}:"
    other = RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix)
    assert other.acquire_voice("100", "instance-A", 30_000)

    async def body(app, bot, cmd, services):
        app.ownership = Ownership(RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix), "instance-B", "", 30)
        with pytest.raises(ControlError, match="held by VoxBridge instance instance-A"):
            await app.bridge.aio(app.join_voice(bot.get_guild(100).get_channel(200)))
        return app.control.channel("100")

    assert with_app(settings, body) is None  # refused before any connection attempt
    other.release_voice("100", "instance-A")
    other.close()
