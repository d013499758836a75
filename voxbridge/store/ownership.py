"""Scale-out: one owner per guild's voice connection across instances sharing Redis.

The owner holds `vbx:voice:<guild>` (SET NX PX, renewed every third of the TTL by this task,
released on leave). Every instance registers its API URL under `vbx:instance:<id>`, so a
`/voice/speak` that reaches a non-owner is forwarded to the owner. A standby instance keeps
trying to claim the guilds it is configured for: when the owner dies, its lock expires and the
standby takes the guild over within `voice_lock_ttl_s` (plus one claim interval). Without Redis,
every claim succeeds (a single instance).
"""

from __future__ import annotations

import logging

import trio

from ..errors import ControlError

log = logging.getLogger("voxbridge.ownership")


class Ownership:
    def __init__(self, redis_layer, instance_id: str, api_url: str, ttl_s: float = 10.0):
        self.redis = redis_layer  # RedisLayer or None
        self.instance_id = instance_id
        self.api_url = api_url
        self.ttl_ms = int(ttl_s * 1000)
        self.owned: set[str] = set()
        self.lost: set[str] = set()

    async def _call(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args)

    async def claim(self, guild_id: str) -> tuple[bool, str | None]:
        """(True, us) when we own (or just took) the guild; (False, owner) otherwise."""
        if self.redis is None:
            return True, self.instance_id
        if guild_id in self.owned and await self._call(self.redis.renew_voice, guild_id, self.instance_id, self.ttl_ms):
            return True, self.instance_id
        got = await self._call(self.redis.acquire_voice, guild_id, self.instance_id, self.ttl_ms)
        if got is None:  # Redis unreachable: degrade to local behaviour
            return True, self.instance_id
        if got:
            self.owned.add(guild_id)
            log.info("event=voice_claimed guild=%s instance=%s", guild_id, self.instance_id)
            return True, self.instance_id
        owner = await self._call(self.redis.voice_owner, guild_id)
        if owner == self.instance_id:  # ours already (e.g. renewed elsewhere)
            self.owned.add(guild_id)
            return True, owner
        return False, owner

    async def release(self, guild_id: str) -> None:
        self.owned.discard(guild_id)
        if self.redis is not None:
            await self._call(self.redis.release_voice, guild_id, self.instance_id)

    async def owner_url(self, guild_id: str) -> tuple[str | None, str | None]:
        if self.redis is None:
            return None, None
        owner = await self._call(self.redis.voice_owner, guild_id)
        if owner is None or owner == self.instance_id:
            return owner, None
        raw = await self._call(self.redis._safe, lambda: self.redis.client.get(f"{self.redis.prefix}instance:{owner}"))
        return owner, raw.decode() if raw else None

    async def run(self, on_lost, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Register this instance and keep our locks alive; `on_lost(guild)` if one was taken."""
        task_status.started()
        if self.redis is None:
            return
        key = f"{self.redis.prefix}instance:{self.instance_id}"
        while True:
            await self._call(self.redis._safe, lambda: self.redis.client.set(key, self.api_url, px=self.ttl_ms * 3))
            for guild in list(self.owned):
                ok = await self._call(self.redis.renew_voice, guild, self.instance_id, self.ttl_ms)
                if not ok and await self._call(self.redis.voice_owner, guild) not in (None, self.instance_id):
                    self.owned.discard(guild)
                    log.warning("event=voice_lock_lost guild=%s", guild)
                    await on_lost(guild)
            await trio.sleep(self.ttl_ms / 3000)


class OwnedVoice:
    """Wraps the voice backend: join only with the guild's lock; leave releases it."""

    def __init__(self, voice, ownership: Ownership):
        self.voice = voice
        self.ownership = ownership
        self.kind = voice.kind

    def __getattr__(self, name):
        return getattr(self.voice, name)

    async def join(self, guild_id: str, channel_id: str) -> None:
        ok, owner = await self.ownership.claim(guild_id)
        if not ok:
            raise ControlError(f"the voice connection of guild {guild_id} is owned by instance {owner}")
        await self.voice.join(guild_id, channel_id)

    async def leave(self, guild_id: str):
        try:
            return await self.voice.leave(guild_id)
        finally:
            await self.ownership.release(guild_id)
