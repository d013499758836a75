"""The store's logic in portable SQL, shared by the SQLite and PostgreSQL backends.

Backends supply a connection per transaction (`_transaction`), their placeholder style and
their schema bootstrap; everything a turn or session does is written once, here. Statements are
written with `?` placeholders and rewritten for drivers that use `%s`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from . import SessionRecord, TurnStart

JSON_FIELDS = ("timings", "agent_ids", "flags")
TURN_COLUMNS = (
    "id",
    "conversation_id",
    "session_id",
    "guild_id",
    "channel_id",
    "user_id",
    "user_name",
    "number",
    "transcript",
    "response",
    "agent_id",
    "status",
    "error",
    "route_method",
    "rule_id",
    "language",
    "confidence",
    "duration_ms",
    "timings",
    "flags",
    "created_at",
    "updated_at",
)
DECISION_COLUMNS = ("turn_id", "method", "rule_id", "agent_ids", "latency_ms", "created_at")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


SESSION_FIELDS = ("conversation_id", "session_id", "number")  # a new turn takes these from its session


def new_turn(turn: dict[str, Any], now: str) -> dict[str, Any]:
    """A transcribed turn's row as `begin_turn` inserts it, less what its session gives it: only
    known columns, an id (the caller's, so a retried insert is recognised), status, timestamps."""
    record = {k: v for k, v in turn.items() if k in TURN_COLUMNS and k not in SESSION_FIELDS}
    record.setdefault("id", str(uuid.uuid4()))
    record.update(status="transcribed", created_at=now, updated_at=now)
    return record


def encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_FIELDS:
        if key in out and not isinstance(out[key], (str, type(None))):
            out[key] = json.dumps(out[key], sort_keys=True)
    return out


def decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_FIELDS:
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out


class SqlStore:
    placeholder = "?"
    max_concurrency = 1

    # --- backend hooks -------------------------------------------------------------------
    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Any]:
        """Yield a DB-API cursor inside one transaction (committed on success)."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _exec(self, cur, sql: str, params=()) -> None:
        cur.execute(self._sql(sql), params)

    def _all(self, cur, sql: str, params=()) -> list[dict[str, Any]]:
        cur.execute(self._sql(sql), params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _one(self, cur, sql: str, params=()) -> dict[str, Any] | None:
        rows = self._all(cur, sql, params)
        return rows[0] if rows else None

    def _row(self, cur, sql: str, params=()) -> dict[str, Any]:
        """The one row a statement must give (a session row that was just written)."""
        row = self._one(cur, sql, params)
        if row is None:
            raise LookupError(f"no row for: {sql.split(' where ')[0]}")
        return row

    @staticmethod
    def _to_session(row: dict) -> SessionRecord:
        return SessionRecord(
            row["guild_id"],
            row["user_id"],
            row["conversation_id"],
            row["session_id"],
            row["agent_id"],
            row["turn_count"] or 0,
        )

    def _ensure_session(self, cur, guild_id: str, user_id: str) -> None:
        self._exec(
            cur,
            "insert into sessions (guild_id, user_id, conversation_id, session_id, agent_id, turn_count,"
            " created_at, updated_at) values (?, ?, ?, ?, null, 0, ?, ?) on conflict (guild_id, user_id) do nothing",
            (
                guild_id,
                user_id,
                str(uuid.uuid4()),
                f"{guild_id}:{user_id}:{uuid.uuid4().hex[:8]}",
                now_iso(),
                now_iso(),
            ),
        )

    def _session_row(self, cur, guild_id: str, user_id: str) -> dict:
        return self._row(cur, "select * from sessions where guild_id = ? and user_id = ?", (guild_id, user_id))

    # --- the Store interface -------------------------------------------------------------
    def ping(self) -> bool:
        """Readiness: the database answers a trivial query."""
        with self._transaction() as cur:
            cur.execute("select 1")
            row = cur.fetchone()
            return row is not None and row[0] == 1

    def session(self, guild_id: str, user_id: str) -> SessionRecord:
        with self._transaction(write=True) as cur:
            self._ensure_session(cur, guild_id, user_id)
            return self._to_session(self._session_row(cur, guild_id, user_id))

    def new_conversation(self, guild_id: str, user_id: str) -> SessionRecord:
        """`/session new`: a fresh conversation id (history starts over); the pinned agent stays."""
        with self._transaction(write=True) as cur:
            self._ensure_session(cur, guild_id, user_id)
            self._exec(
                cur,
                "update sessions set conversation_id = ?, session_id = ?, turn_count = 0, updated_at = ?"
                " where guild_id = ? and user_id = ?",
                (str(uuid.uuid4()), f"{guild_id}:{user_id}:{uuid.uuid4().hex[:8]}", now_iso(), guild_id, user_id),
            )
            return self._to_session(self._session_row(cur, guild_id, user_id))

    def pin_agent(self, guild_id: str, user_id: str, agent_id: str | None) -> None:
        with self._transaction(write=True) as cur:
            self._ensure_session(cur, guild_id, user_id)
            self._exec(
                cur,
                "update sessions set agent_id = ?, updated_at = ? where guild_id = ? and user_id = ?",
                (agent_id, now_iso(), guild_id, user_id),
            )

    def begin_turn(self, turn: dict[str, Any], history: int = 0) -> TurnStart:
        """Insert a transcribed turn, numbered within the speaker's conversation, atomically;
        with `history`, the conversation's last answered turns come back in the same transaction."""
        with self._transaction(write=True) as cur:
            if turn.get("id"):  # a retry after a commit whose reply was lost: do not insert twice
                done = self._one(
                    cur,
                    "select t.id, t.number, t.conversation_id, t.session_id, s.agent_id from turns t"
                    " join sessions s on s.guild_id = t.guild_id and s.user_id = t.user_id where t.id = ?",
                    (turn["id"],),
                )
                if done:
                    previous = self._history(cur, done["conversation_id"], history) if history else []
                    return TurnStart(
                        done["id"],
                        done["number"],
                        done["conversation_id"],
                        done["session_id"],
                        done["agent_id"],
                        tuple(p for p in previous if p["id"] != done["id"]),
                    )
            now = now_iso()
            row = self._count_turn(cur, turn["guild_id"], turn["user_id"], now)
            if row is None:  # the speaker's first turn: create the session, then count
                self._ensure_session(cur, turn["guild_id"], turn["user_id"])
                row = self._count_turn(cur, turn["guild_id"], turn["user_id"], now)
                if row is None:
                    raise LookupError("no session row after creating it")
            record = encode(
                {
                    **new_turn(turn, now),
                    "conversation_id": row["conversation_id"],
                    "session_id": row["session_id"],
                    "number": row["turn_count"],
                }
            )
            cols = list(record)
            self._exec(
                cur,
                f"insert into turns ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
                tuple(record[c] for c in cols),
            )
            previous = self._history(cur, row["conversation_id"], history) if history else []
        return TurnStart(
            record["id"], row["turn_count"], row["conversation_id"], row["session_id"], row["agent_id"], tuple(previous)
        )

    def mark_routed(self, turn_id: str, decision: dict[str, Any], **fields: Any) -> None:
        """Record the routing decision and set the turn `routed`, in one transaction."""
        row = encode({k: v for k, v in decision.items() if k in DECISION_COLUMNS})
        row.setdefault("created_at", now_iso())
        cols = list(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "turn_id")
        fields = encode({**fields, "status": "routed", "updated_at": now_iso()})
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                f"insert into routing_decisions ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})"
                f" on conflict (turn_id) do update set {updates}",
                tuple(row[c] for c in cols),
            )
            self._exec(
                cur,
                f"update turns set {', '.join(f'{k} = ?' for k in fields)} where id = ?",
                (*fields.values(), turn_id),
            )

    def _count_turn(self, cur, guild_id: str, user_id: str, now: str) -> dict[str, Any] | None:
        """The session's turn counter + 1, with its ids (None: the speaker has no session yet)."""
        return self._one(
            cur,
            "update sessions set turn_count = turn_count + 1, updated_at = ? where guild_id = ? and user_id = ?"
            " returning conversation_id, session_id, agent_id, turn_count",
            (now, guild_id, user_id),
        )

    def _history(self, cur, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        """What a payload's previousTurns carry (`agents/payload.py`), oldest first: only the
        columns it needs, so a turn's critical path decodes no JSON."""
        rows = self._all(
            cur,
            "select id, number, transcript, response, agent_id from turns"
            " where conversation_id = ? and status = 'answered' order by number desc limit ?",
            (conversation_id, limit),
        )
        rows.reverse()
        return rows

    def _recent(self, cur, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self._all(
            cur,
            "select * from turns where conversation_id = ? and status = 'answered' order by number desc limit ?",
            (conversation_id, limit),
        )
        return [decode(r) for r in reversed(rows)]

    def update_turn(self, turn_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(TURN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown turn fields: {sorted(unknown)}")
        fields["updated_at"] = now_iso()
        fields = encode(fields)
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                f"update turns set {', '.join(f'{k} = ?' for k in fields)} where id = ?",
                (*fields.values(), turn_id),
            )

    def get_turn(self, turn_id: str) -> dict[str, Any] | None:
        with self._transaction() as cur:
            row = self._one(cur, "select * from turns where id = ?", (turn_id,))
        return decode(row) if row else None

    def recent_turns(self, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        """The last `limit` answered turns of a conversation, oldest first (for the payload)."""
        with self._transaction() as cur:
            return self._recent(cur, conversation_id, limit)

    def _select(
        self, table: str, columns: tuple[str, ...], order_by: str, limit: int, where: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Rows of `table` filtered by equality on known columns only (names never come from input)."""
        bad = set(where) - set(columns)
        if bad:
            raise ValueError(f"unknown {table} fields: {sorted(bad)}")
        clause = (" where " + " and ".join(f"{k} = ?" for k in where)) if where else ""
        with self._transaction() as cur:
            rows = self._all(
                cur, f"select * from {table}{clause} order by {order_by} limit ?", (*where.values(), limit)
            )
        return [decode(r) for r in rows]

    def list_turns(self, limit: int = 100, **where: Any) -> list[dict[str, Any]]:
        """Turns oldest first, optionally filtered by equality on columns (user_id=..., status=...)."""
        return self._select("turns", TURN_COLUMNS, "created_at, number", limit, where)

    def set_ignored(self, user_id: str, ignored: bool) -> None:
        """`/voxbridge ignore-me`: this user's audio is neither transcribed nor stored."""
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                "insert into user_prefs (user_id, ignore_me, updated_at) values (?, ?, ?)"
                " on conflict (user_id) do update set ignore_me = excluded.ignore_me, updated_at = excluded.updated_at",
                (user_id, 1 if ignored else 0, now_iso()),
            )

    def ignored_users(self) -> set[str]:
        with self._transaction() as cur:
            return {r["user_id"] for r in self._all(cur, "select user_id from user_prefs where ignore_me = 1")}

    def decisions(self, limit: int = 100, **where: Any) -> list[dict[str, Any]]:
        """Routing decisions, newest last; filter by method=, rule_id=, turn_id=."""
        return self._select("routing_decisions", DECISION_COLUMNS, "created_at", limit, where)
