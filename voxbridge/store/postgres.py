"""PostgreSQL backend: psycopg 3 with a connection pool; schema migrations in code, idempotent."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, LiteralString

from ..errors import ConfigError
from . import TurnStart
from .sql import SqlStore, encode, new_turn, now_iso

# Each migration runs once, in order, recorded in voxbridge_schema (safe for several instances
# starting at once: the whole migration runs under an advisory lock).
MIGRATIONS: list[LiteralString] = [
    """
    create table if not exists sessions (
        guild_id text not null, user_id text not null, conversation_id text not null,
        session_id text not null, agent_id text, turn_count integer not null default 0,
        created_at text not null, updated_at text not null, primary key (guild_id, user_id));
    create table if not exists turns (
        id text primary key, conversation_id text, session_id text, guild_id text, channel_id text,
        user_id text, user_name text, number integer, transcript text, response text, agent_id text,
        status text, error text, route_method text, rule_id text, language text,
        confidence double precision, duration_ms integer, timings text, flags text,
        created_at text, updated_at text);
    create index if not exists turns_conversation on turns (conversation_id, number);
    create index if not exists turns_created on turns (created_at);
    create table if not exists routing_decisions (
        turn_id text primary key, method text, rule_id text, agent_ids text,
        latency_ms double precision, created_at text);
    """,
    """
    create table if not exists user_prefs (
        user_id text primary key, ignore_me integer not null default 0, updated_at text);
    """,
]


class _Connections:
    """A small connection pool of our own: an idle connection is reused, a missing one is made
    on demand in the calling thread (milliseconds), one that failed is dropped, never repaired.

    psycopg_pool refills in a background worker whose reconnect back-off grows from 1 s when
    attempts fail: with connections killed every 0.3 s it starved, and callers got PoolTimeout
    after 10 s (transcripts lost). Here a killed connection fails one call; the Store facade
    retries it with a fresh connection. Concurrency is bounded by the facade's limiter (`size`)."""

    def __init__(self, url: str, size: int):
        self.url = url
        self.size = size
        self._idle: list = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self):
        """A connection in a transaction: committed on success, rolled back on error."""
        conn = self._take()
        try:
            yield conn
            conn.commit()
        except BaseException:
            if conn.broken:
                self._discard(conn)
            else:
                self._rollback(conn)
            raise
        else:
            self._put_back(conn)

    @contextmanager
    def single_statement(self):
        """A connection in autocommit mode for one statement, atomic by itself: one round trip,
        where a transaction adds a BEGIN and a COMMIT."""
        conn = self._take()
        try:
            conn.autocommit = True
            yield conn
            conn.autocommit = False
        except BaseException:
            if conn.broken or conn.closed:
                self._discard(conn)
            else:
                try:
                    conn.autocommit = False
                except Exception:
                    self._discard(conn)
                else:
                    self._put_back(conn)
            raise
        else:
            self._put_back(conn)

    def _take(self):
        """An idle connection, or a new one made in the calling thread (not in autocommit)."""
        import psycopg

        with self._lock:
            conn = self._idle.pop() if self._idle else None
        return conn if conn is not None else psycopg.connect(self.url, autocommit=False, connect_timeout=5)

    def _rollback(self, conn) -> None:
        try:
            conn.rollback()
        except Exception:
            self._discard(conn)
        else:
            self._put_back(conn)

    def _put_back(self, conn) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < self.size:
                self._idle.append(conn)
                return
        self._discard(conn)

    @staticmethod
    def _discard(conn) -> None:
        try:
            conn.close()
        except Exception:  # already gone
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)


class PostgresStore(SqlStore):
    placeholder = "%s"

    def __init__(self, url: str, pool_size: int = 4):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "[store].url", "PostgreSQL needs the `postgres` extra: pip install 'voxbridge[postgres]'"
            ) from None
        self.max_concurrency = pool_size
        self.pool = _Connections(url, pool_size)
        self._migrate()

    def _migrate(self) -> None:
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute("select pg_advisory_xact_lock(7745627)")  # 'vbx' migrations lock
            cur.execute(
                "create table if not exists voxbridge_schema"
                " (version integer primary key, applied_at timestamptz default now())"
            )
            cur.execute("select coalesce(max(version), 0) from voxbridge_schema")
            row = cur.fetchone()
            current = row[0] if row else 0
            for version, sql in enumerate(MIGRATIONS, 1):
                if version > current:
                    cur.execute(sql)
                    cur.execute("insert into voxbridge_schema (version) values (%s)", (version,))

    @contextmanager
    def _transaction(self, write: bool = False):
        with self.pool.connection() as conn:  # commits on success, rolls back on error
            with conn.cursor() as cur:
                yield cur

    def begin_turn(self, turn: dict[str, Any], history: int = 0) -> TurnStart:
        """`SqlStore.begin_turn` in one statement (one round trip instead of six): a retried insert
        is recognised by its id, the session's counter is taken, the turn inserted and the history
        read together. A speaker without a session row yet takes the portable path once."""
        now = now_iso()
        record = encode(new_turn(turn, now))
        params = {f"c_{k}": v for k, v in record.items()}
        params.update(now=now, history=history, guild_id=turn["guild_id"], user_id=turn["user_id"])
        cols = ", ".join(record)
        values = ", ".join(f"%(c_{k})s" for k in record)
        sql = _BEGIN_TURN.format(cols=cols, values=values)
        with self.pool.single_statement() as conn, conn.cursor() as cur:
            cur.execute(sql, params)  # type: ignore[arg-type]  # columns are ours (TURN_COLUMNS), never input
            row = cur.fetchone()
        if row is None:
            return super().begin_turn(turn, history)
        turn_id, number, conversation_id, session_id, agent_id, previous = row
        return TurnStart(turn_id, number, conversation_id, session_id, agent_id, tuple(previous))

    def close(self) -> None:
        self.pool.close()


_BEGIN_TURN = """
with existing as (
    select t.id, t.number, t.conversation_id, t.session_id, s.agent_id
    from turns t join sessions s on s.guild_id = t.guild_id and s.user_id = t.user_id
    where t.id = %(c_id)s
), counted as (
    update sessions set turn_count = turn_count + 1, updated_at = %(now)s
    where guild_id = %(guild_id)s and user_id = %(user_id)s and not exists (select 1 from existing)
    returning conversation_id, session_id, agent_id, turn_count
), inserted as (
    insert into turns ({cols}, conversation_id, session_id, number)
    select {values}, c.conversation_id, c.session_id, c.turn_count from counted c
    returning id, number, conversation_id, session_id
), began as (
    select i.id, i.number, i.conversation_id, i.session_id, c.agent_id from inserted i, counted c
    union all
    select * from existing
)
select b.id, b.number, b.conversation_id, b.session_id, b.agent_id,
    (select coalesce(json_agg(h order by h.number), '[]'::json) from (
        select id, number, transcript, response, agent_id from turns
        where conversation_id = b.conversation_id and status = 'answered' and id <> b.id
        order by number desc limit %(history)s) h)
from began b
"""
