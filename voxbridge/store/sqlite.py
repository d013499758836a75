"""SQLite backend (sqlite-utils, WAL): the embedded default, one file under the state directory."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from . import SessionRecord, TurnStart

JSON_FIELDS = ("timings", "agent_ids")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SqliteStore:
    # One connection, serialised by the facade's limiter (SQLite allows one writer anyway).
    max_concurrency = 1

    def __init__(self, path: str):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()  # belt and braces for direct (non-facade) callers
        if path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        t = self.db.table
        if "sessions" not in self.db.table_names():
            t("sessions").create(
                {"guild_id": str, "user_id": str, "conversation_id": str, "session_id": str,
                 "agent_id": str, "turn_count": int, "created_at": str, "updated_at": str},
                pk=("guild_id", "user_id"), not_null={"conversation_id", "session_id"},
            )
        if "turns" not in self.db.table_names():
            t("turns").create(
                {"id": str, "conversation_id": str, "session_id": str, "guild_id": str,
                 "channel_id": str, "user_id": str, "user_name": str, "number": int,
                 "transcript": str, "response": str, "agent_id": str, "status": str,
                 "error": str, "route_method": str, "rule_id": str, "language": str,
                 "confidence": float, "duration_ms": int, "timings": str, "flags": str,
                 "created_at": str, "updated_at": str},
                pk="id",
            )
            t("turns").create_index(["conversation_id", "number"])
            t("turns").create_index(["created_at"])
        if "routing_decisions" not in self.db.table_names():
            t("routing_decisions").create(
                {"turn_id": str, "method": str, "rule_id": str, "agent_ids": str,
                 "latency_ms": float, "created_at": str},
                pk="turn_id",
            )

    def _session_row(self, guild_id: str, user_id: str) -> dict | None:
        rows = list(self.db.query(
            "select * from sessions where guild_id = ? and user_id = ?", [guild_id, user_id]))
        return rows[0] if rows else None

    @staticmethod
    def _to_session(row: dict) -> SessionRecord:
        return SessionRecord(row["guild_id"], row["user_id"], row["conversation_id"],
                             row["session_id"], row["agent_id"], row["turn_count"] or 0)

    def _create_session(self, guild_id: str, user_id: str, agent_id: str | None = None) -> dict:
        row = {"guild_id": guild_id, "user_id": user_id, "conversation_id": str(uuid.uuid4()),
               "session_id": f"{guild_id}:{user_id}:{uuid.uuid4().hex[:8]}", "agent_id": agent_id,
               "turn_count": 0, "created_at": now_iso(), "updated_at": now_iso()}
        self.db.table("sessions").upsert(row, pk=("guild_id", "user_id"))
        return row

    def session(self, guild_id: str, user_id: str) -> SessionRecord:
        with self._lock:
            row = self._session_row(guild_id, user_id) or self._create_session(guild_id, user_id)
            return self._to_session(row)

    def new_conversation(self, guild_id: str, user_id: str) -> SessionRecord:
        with self._lock:
            old = self._session_row(guild_id, user_id)
            return self._to_session(self._create_session(guild_id, user_id, old["agent_id"] if old else None))

    def pin_agent(self, guild_id: str, user_id: str, agent_id: str | None) -> None:
        with self._lock:
            if not self._session_row(guild_id, user_id):
                self._create_session(guild_id, user_id)
            self.db.execute("update sessions set agent_id = ?, updated_at = ? where guild_id = ? and user_id = ?",
                            [agent_id, now_iso(), guild_id, user_id])

    def begin_turn(self, turn: dict[str, Any]) -> TurnStart:
        """Insert a transcribed turn, numbering it within the speaker's conversation, atomically."""
        with self._lock, self.db.conn:
            self.db.execute("begin immediate")
            row = self._session_row(turn["guild_id"], turn["user_id"]) or self._create_session(turn["guild_id"], turn["user_id"])
            number = (row["turn_count"] or 0) + 1
            self.db.execute("update sessions set turn_count = ?, updated_at = ? where guild_id = ? and user_id = ?",
                            [number, now_iso(), turn["guild_id"], turn["user_id"]])
            record = dict(turn)
            record.setdefault("id", str(uuid.uuid4()))
            record.update(conversation_id=row["conversation_id"], session_id=row["session_id"], number=number,
                          status="transcribed", created_at=now_iso(), updated_at=now_iso())
            self.db.table("turns").insert(_encode(record))
            self.db.execute("commit")
        return TurnStart(record["id"], number, row["conversation_id"], row["session_id"], row["agent_id"])

    def update_turn(self, turn_id: str, **fields: Any) -> None:
        fields["updated_at"] = now_iso()
        with self._lock:
            self.db.table("turns").update(turn_id, _encode(fields))

    def get_turn(self, turn_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from turns where id = ?", [turn_id]))
        return _decode(rows[0]) if rows else None

    def recent_turns(self, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        """The last `limit` answered turns of a conversation, oldest first (for the payload)."""
        with self._lock:
            rows = list(self.db.query(
                "select * from turns where conversation_id = ? and status = 'answered' order by number desc limit ?",
                [conversation_id, limit]))
        return [_decode(r) for r in reversed(rows)]

    def list_turns(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self.db.query("select * from turns order by created_at, number limit ?", [limit]))
        return [_decode(r) for r in rows]

    def record_decision(self, decision: dict[str, Any]) -> None:
        row = dict(decision)
        row.setdefault("created_at", now_iso())
        with self._lock:
            self.db.table("routing_decisions").upsert(_encode(row), pk="turn_id")

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in (*JSON_FIELDS, "flags"):
        if key in out and not isinstance(out[key], (str, type(None))):
            out[key] = json.dumps(out[key], sort_keys=True)
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in (*JSON_FIELDS, "flags"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out
