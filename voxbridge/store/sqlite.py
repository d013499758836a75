"""SQLite backend (sqlite-utils for the schema, WAL): the embedded default."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .sql import SqlStore


class SqliteStore(SqlStore):
    # One connection, serialised (SQLite has one writer anyway); the facade's limiter is 1 too.
    max_concurrency = 1

    def __init__(self, path: str):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db = sqlite_utils.Database(self.conn)
        self._lock = threading.Lock()
        if path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        """Create missing tables and indexes (idempotent)."""
        t, names = self.db.table, set(self.db.table_names())
        if "sessions" not in names:
            t("sessions").create(
                {
                    "guild_id": str,
                    "user_id": str,
                    "conversation_id": str,
                    "session_id": str,
                    "agent_id": str,
                    "turn_count": int,
                    "created_at": str,
                    "updated_at": str,
                },
                pk=("guild_id", "user_id"),
                not_null={"conversation_id", "session_id"},
            )
        if "turns" not in names:
            t("turns").create(
                {
                    "id": str,
                    "conversation_id": str,
                    "session_id": str,
                    "guild_id": str,
                    "channel_id": str,
                    "user_id": str,
                    "user_name": str,
                    "number": int,
                    "transcript": str,
                    "response": str,
                    "agent_id": str,
                    "status": str,
                    "error": str,
                    "route_method": str,
                    "rule_id": str,
                    "language": str,
                    "confidence": float,
                    "duration_ms": int,
                    "timings": str,
                    "flags": str,
                    "created_at": str,
                    "updated_at": str,
                },
                pk="id",
            )
            t("turns").create_index(["conversation_id", "number"])
            t("turns").create_index(["created_at"])
        if "user_prefs" not in names:
            t("user_prefs").create({"user_id": str, "ignore_me": int, "updated_at": str}, pk="user_id")
        if "routing_decisions" not in names:
            t("routing_decisions").create(
                {
                    "turn_id": str,
                    "method": str,
                    "rule_id": str,
                    "agent_ids": str,
                    "latency_ms": float,
                    "created_at": str,
                },
                pk="turn_id",
            )

    @contextmanager
    def _transaction(self, write: bool = False):
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("begin immediate" if write else "begin")
            try:
                yield cur
            except BaseException:
                cur.execute("rollback")
                raise
            else:
                cur.execute("commit")
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self.conn.close()
