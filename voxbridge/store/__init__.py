"""Sessions, turns and routing decisions.

Backends implement `SyncStore` (plain blocking methods); the core only ever sees `Store`, which
runs each call in a worker thread under a CapacityLimiter, so no database call blocks the loop.
A turn is written the moment its transcript exists (status `transcribed`) and updated later:
a crash after transcription never loses what someone said.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol, cast

import attrs
import trio

from ..retry import call_retrying

log = logging.getLogger("voxbridge.store")

TURN_STATUSES = ("transcribed", "routed", "answered", "failed", "not_routed")


@attrs.frozen
class SessionRecord:
    guild_id: str
    user_id: str
    conversation_id: str
    session_id: str
    agent_id: str | None  # pinned by the user (/agent select) or by an agent's handoff
    turn_count: int


@attrs.frozen
class TurnStart:
    """What `begin_turn` hands back: the ids the payload needs."""

    turn_id: str
    number: int
    conversation_id: str
    session_id: str
    pinned_agent: str | None
    history: tuple[dict[str, Any], ...] = ()  # last answered turns, oldest first (if asked for)


class SyncStore(Protocol):
    max_concurrency: int

    def session(self, guild_id: str, user_id: str) -> SessionRecord: ...
    def new_conversation(self, guild_id: str, user_id: str) -> SessionRecord: ...
    def pin_agent(self, guild_id: str, user_id: str, agent_id: str | None) -> None: ...
    def begin_turn(self, turn: dict[str, Any], history: int = 0) -> TurnStart: ...
    def mark_routed(self, turn_id: str, decision: dict[str, Any], **fields: Any) -> None: ...
    def update_turn(self, turn_id: str, **fields: Any) -> None: ...
    def get_turn(self, turn_id: str) -> dict[str, Any] | None: ...
    def recent_turns(self, conversation_id: str, limit: int) -> list[dict[str, Any]]: ...
    def list_turns(self, limit: int = 100) -> list[dict[str, Any]]: ...
    def decisions(self, limit: int = 100, **where: Any) -> list[dict[str, Any]]: ...
    def set_ignored(self, user_id: str, ignored: bool) -> None: ...
    def ignored_users(self) -> set[str]: ...
    def close(self) -> None: ...


def is_transient(exc: BaseException) -> bool:
    """A lost or refused database connection (worth retrying), not a bad query."""
    try:
        import psycopg

        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return True
    except ImportError:  # pragma: no cover - postgres extra not installed
        pass
    try:
        from psycopg_pool import PoolTimeout

        if isinstance(exc, PoolTimeout):
            return True
    except ImportError:  # pragma: no cover
        pass
    import sqlite3

    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class Store:
    """Async facade: every method of the sync backend, run in a thread under a limiter.

    A call failing with a transient error (connection refused or killed, pool timeout, SQLite
    busy) is retried with jittered backoff (0.1 s doubling to 5 s, `voxbridge.retry`) for up to
    `retry_s`: a PostgreSQL restart delays turns, it does not lose them. Other errors are raised
    at once."""

    def __init__(self, backend: SyncStore, retry_s: float = 30.0):
        self.backend = backend
        self.retry_s = retry_s
        self.limiter = trio.CapacityLimiter(backend.max_concurrency)
        self.retries = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.backend, name)
        if not callable(method):
            return method

        async def call(*args, **kwargs):
            job = functools.partial(method, *args, **kwargs)

            def on_retry(exc: Exception, attempt: int, wait_s: float) -> None:
                self.retries += 1
                log.warning(
                    "event=store_retry call=%s error=%s attempt=%d backoff_s=%.1f",
                    name,
                    type(exc).__name__,
                    attempt,
                    wait_s,
                )

            return await call_retrying(
                lambda _attempt: trio.to_thread.run_sync(job, limiter=self.limiter),
                on=is_transient,
                attempts=None,
                timeout_s=self.retry_s,
                wait_initial_s=0.1,
                wait_max_s=5.0,
                on_retry=on_retry,
            )

        call.__name__ = name
        return call

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.backend.close, limiter=self.limiter)


def open_store(url: str, redis_url: str = "", *, session_ttl_s: int = 300, retry_s: float = 30.0) -> Store:
    """`sqlite:///path.db` (relative) or `sqlite:////abs/path.db`, `postgresql://user@host/db`;
    `redis_url` (`redis://host:6379/0`) adds the shared cache/lock/broadcast layer."""
    from ..errors import ConfigError

    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        backend: SyncStore = SqliteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    elif url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        try:
            backend = PostgresStore(url)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                "[store].url",
                f"cannot connect to PostgreSQL ({type(exc).__name__}); check host, port, database and credentials",
            ) from None
    else:
        raise ConfigError(
            "[store].url", "unsupported store URL; use sqlite:///path/to/voxbridge.db or postgresql://user@host:5432/db"
        )
    if redis_url:
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("[store].redis_url", "must start with redis://, rediss:// or unix://")
        from .redis_layer import RedisLayer

        # RedisLayer is a SyncStore: what it does not cache it hands to `backend` (__getattr__)
        backend = cast(SyncStore, RedisLayer(backend, redis_url, session_ttl_s=session_ttl_s))
    return Store(backend, retry_s)
