"""Optional Redis layer over a store: shared session cache, voice-connection ownership, reload
broadcast. Losing Redis degrades to the store below (logged, counted), never to a failure.

- sessions are cached under `vbx:session:<guild>:<user>` for `session_ttl_s`; any write to a
  session deletes its key, so instances sharing the database and Redis never serve stale state;
- `acquire_voice`/`renew_voice`/`release_voice`: one owner per guild's voice connection
  (SET NX PX with a token; renew and release only by the owner, atomically in Lua);
- `publish_reload`/`reload_messages`: agents.toml reloads announced to every instance.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import attrs

from . import SessionRecord

log = logging.getLogger("voxbridge.store.redis")

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLayer:
    def __init__(self, inner, url: str, *, session_ttl_s: int = 300, prefix: str = "vbx:"):
        import redis  # a core dependency

        self._redis_mod = redis
        self.inner = inner
        self.max_concurrency = max(2, inner.max_concurrency)
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)
        self.ttl = session_ttl_s
        self.prefix = prefix
        self.stats = {"cache_hits": 0, "cache_misses": 0, "redis_errors": 0}
        self._last_warning = 0.0
        self.closed = False  # set by close(): listeners (the reload broadcast) stop instead of failing

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # everything not cached goes straight to the store

    # --- degrade, don't fail ---------------------------------------------------------------
    def _safe(self, fn, default=None):
        try:
            return fn()
        except self._redis_mod.RedisError as exc:
            self.stats["redis_errors"] += 1
            if time.monotonic() - self._last_warning > 60:
                self._last_warning = time.monotonic()
                log.warning("event=redis_unavailable error=%s fallback=local", type(exc).__name__)
            return default

    @property
    def healthy(self) -> bool:
        return bool(self._safe(self.client.ping, False))

    # --- session cache -----------------------------------------------------------------------
    def _key(self, guild_id: str, user_id: str) -> str:
        return f"{self.prefix}session:{guild_id}:{user_id}"

    def _forget(self, guild_id: str, user_id: str) -> None:
        self._safe(lambda: self.client.delete(self._key(guild_id, user_id)))

    def session(self, guild_id: str, user_id: str) -> SessionRecord:
        key = self._key(guild_id, user_id)
        raw = self._safe(lambda: self.client.get(key))
        if raw:
            self.stats["cache_hits"] += 1
            return SessionRecord(**json.loads(raw))
        self.stats["cache_misses"] += 1
        record = self.inner.session(guild_id, user_id)
        payload = json.dumps(attrs.asdict(record))
        self._safe(lambda: self.client.set(key, payload, ex=self.ttl))
        return record

    def new_conversation(self, guild_id: str, user_id: str) -> SessionRecord:
        record = self.inner.new_conversation(guild_id, user_id)
        self._forget(guild_id, user_id)
        return record

    def pin_agent(self, guild_id: str, user_id: str, agent_id: str | None) -> None:
        self.inner.pin_agent(guild_id, user_id, agent_id)
        self._forget(guild_id, user_id)

    def begin_turn(self, turn: dict[str, Any], history: int = 0):
        start = self.inner.begin_turn(turn, history)
        self._forget(turn["guild_id"], turn["user_id"])
        return start

    # --- voice connection ownership -------------------------------------------------------
    def _voice_key(self, guild_id: str) -> str:
        return f"{self.prefix}voice:{guild_id}"

    def acquire_voice(self, guild_id: str, owner: str, ttl_ms: int) -> bool | None:
        """Become the owner of this guild's voice connection unless someone else is; None if Redis is down."""
        return self._safe(lambda: bool(self.client.set(self._voice_key(guild_id), owner, nx=True, px=ttl_ms)))

    def renew_voice(self, guild_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._safe(lambda: self.client.eval(_RENEW, 1, self._voice_key(guild_id), owner, ttl_ms), 0))

    def release_voice(self, guild_id: str, owner: str) -> bool:
        return bool(self._safe(lambda: self.client.eval(_RELEASE, 1, self._voice_key(guild_id), owner), 0))

    def voice_owner(self, guild_id: str) -> str | None:
        raw = self._safe(lambda: self.client.get(self._voice_key(guild_id)))
        if isinstance(raw, bytes):
            raw = raw.decode()
        return raw or None

    # --- config reload broadcast ----------------------------------------------------------
    @property
    def reload_channel(self) -> str:
        return f"{self.prefix}reload"

    def publish_reload(self, version: str, instance: str) -> int:
        return self._safe(
            lambda: self.client.publish(self.reload_channel, json.dumps({"version": version, "instance": instance})), 0
        )

    def reload_messages(self):
        """A subscribed pubsub; call `get_message(timeout=...)` from a worker thread."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.reload_channel)
        return pubsub

    def close(self) -> None:
        self.closed = True
        self._safe(self.client.close)
        self.inner.close()
