"""Real py-cord objects built offline from Discord payloads (no network, no token)."""

from __future__ import annotations

import discord

ROLE_FIELDS = {
    "color": 0,
    "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
    "hoist": False,
    "managed": False,
    "mentionable": False,
    "permissions": "0",
}
GUILD_ID, VOICE_ID, BOT_ID = 100, 200, 999


def user_payload(uid: int, name: str) -> dict:
    return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name.title(), "avatar": None}


def member_payload(uid: int, name: str, roles: list[str]) -> dict:
    return {
        "user": user_payload(uid, name),
        "roles": roles,
        "joined_at": "2026-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
    }


def offline_bot(bot: discord.Bot | None = None):
    """A Bot whose ConnectionState knows one guild with a voice channel, and itself."""
    bot = bot or discord.Bot(intents=discord.Intents.default())
    state = bot._connection
    state.user = discord.ClientUser(state=state, data={**user_payload(BOT_ID, "voxbridge"), "bot": True})
    state._add_guild_from_data(
        {
            "id": str(GUILD_ID),
            "name": "Test Guild",
            "owner_id": "1",
            "emojis": [],
            "stickers": [],
            "features": [],
            "premium_tier": 0,
            "member_count": 3,
            "members": [],
            "voice_states": [],
            "roles": [
                {
                    "id": str(GUILD_ID),
                    "name": "@everyone",
                    "position": 0,
                    **ROLE_FIELDS,
                    "permissions": str((1 << 10) | (1 << 20) | (1 << 21)),
                },  # Discord's defaults: view, connect, speak
                {"id": "7", "name": "member", "position": 1, **ROLE_FIELDS},
                {"id": "8", "name": "staff", "position": 2, **ROLE_FIELDS},
            ],
            "channels": [
                {
                    "id": str(VOICE_ID),
                    "type": 2,
                    "name": "Voice",
                    "position": 0,
                    "permission_overwrites": [],
                    "bitrate": 64000,
                    "user_limit": 0,
                }
            ],
        }
    )
    return bot, bot.get_guild(GUILD_ID)


def member(guild: discord.Guild, uid: int, name: str, roles=("7",)) -> discord.Member:
    state = guild._state
    return guild._get_and_update_member(
        member_payload(uid, name, list(roles)), uid, state.member_cache_flags.interaction
    )


def command_context(
    bot, uid: int, name: str, roles=("7",), options=None, command="agent"
) -> discord.ApplicationContext:
    """An ApplicationContext built from an interaction payload, with `respond` recorded."""
    interaction = discord.Interaction(
        data={
            "id": "1",
            "application_id": "9",
            "type": 2,
            "token": "interaction-token",
            "version": 1,
            "guild_id": str(GUILD_ID),
            "channel_id": str(VOICE_ID),
            "member": {**member_payload(uid, name, list(roles)), "permissions": str(1 << 20)},
            "data": {"id": "5", "name": command, "type": 1, "options": options or []},
        },
        state=bot._connection,
    )
    response = RecordingResponse(interaction)
    interaction._cs_response = response  # py-cord caches Interaction.response in this slot
    ctx = discord.ApplicationContext(bot, interaction)
    ctx.replies = response.records
    return ctx


class RecordingResponse(discord.InteractionResponse):
    """py-cord's InteractionResponse with only the HTTP sends replaced by recording: the real
    `ctx.respond()` / `ctx.defer()` / autocomplete code paths run up to the wire."""

    __slots__ = ("records",)

    def __init__(self, parent):
        super().__init__(parent)
        self.records = []

    async def send_message(self, content=None, **kwargs):
        self.records.append({"content": content, **kwargs})

    async def defer(self, **kwargs):
        self.records.append({"deferred": True, **kwargs})

    async def send_autocomplete_result(self, *, choices):
        self.records.append({"choices": [c.name for c in choices]})


def add_voice_channel(guild: discord.Guild, channel_id: int, name: str) -> discord.VoiceChannel:
    """Another voice channel in the offline guild (as a GUILD_CREATE payload would carry it)."""
    channel = discord.VoiceChannel(
        state=guild._state,
        guild=guild,
        data={
            "id": str(channel_id),
            "type": 2,
            "name": name,
            "position": len(guild.channels),
            "permission_overwrites": [],
            "bitrate": 64000,
            "user_limit": 0,
            "guild_id": str(guild.id),
        },
    )
    guild._add_channel(channel)
    return channel
