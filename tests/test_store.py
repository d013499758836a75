"""One behavioural suite, every backend: SQLite file, PostgreSQL and the Redis layer (real servers)."""

import uuid

import pytest
import trio

from voxbridge.errors import ConfigError
from voxbridge.store import Store, open_store
from voxbridge.store.redis_layer import RedisLayer
from voxbridge.store.sqlite import SqliteStore

BACKENDS = ["sqlite", "postgres", "sqlite+redis", "postgres+redis"]


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    kind = request.param
    if kind.startswith("postgres"):
        url = request.getfixturevalue("postgres_url")
        s = await trio.to_thread.run_sync(open_store, url)
    else:
        s = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    if kind.endswith("+redis"):
        redis_url = request.getfixturevalue("redis_url")
        s = Store(RedisLayer(s.backend, redis_url, prefix=f"vbxtest:{uuid.uuid4().hex[:8]}:"))
    yield s
    await s.aclose()


def T(user="u", guild="g", text="hi"):
    return {"guild_id": guild, "user_id": user, "channel_id": "c", "transcript": text, "user_name": user}


async def test_turn_lifecycle_and_history(store):
    first = await store.begin_turn(T(text="one"))
    assert first.number == 1
    row = await store.get_turn(first.turn_id)
    assert row["status"] == "transcribed" and row["transcript"] == "one"
    await store.update_turn(first.turn_id, status="answered", response="r1", timings={"stt_ms": 5})
    failed = await store.begin_turn(T(text="broken"))
    await store.update_turn(failed.turn_id, status="failed", error="http_500: after 3 attempt(s)")
    second = await store.begin_turn(T(text="two"))
    assert second.number == 3 and second.conversation_id == first.conversation_id
    history = await store.recent_turns(first.conversation_id, 5)
    assert [t["transcript"] for t in history] == ["one"]  # only answered turns, oldest first
    assert history[0]["timings"] == {"stt_ms": 5}
    assert (await store.get_turn(failed.turn_id))["error"].startswith("http_500")


async def test_history_is_limited_to_last_n(store):
    conv = None
    for i in range(7):
        t = await store.begin_turn(T(text=f"q{i}"))
        conv = t.conversation_id
        await store.update_turn(t.turn_id, status="answered", response=f"a{i}")
    assert [t["transcript"] for t in await store.recent_turns(conv, 3)] == ["q4", "q5", "q6"]
    nxt = await store.begin_turn(T(text="q7"), history=3)  # history in the same transaction
    assert [t["transcript"] for t in nxt.history] == ["q4", "q5", "q6"]


async def test_session_new_and_pinning(store):
    s1 = await store.session("g", "u")
    assert s1.agent_id is None and s1.turn_count == 0
    await store.pin_agent("g", "u", "tech")
    t = await store.begin_turn(T())
    assert t.pinned_agent == "tech"
    s2 = await store.session("g", "u")
    assert s2.agent_id == "tech" and s2.turn_count == 1  # a cache, if any, saw both writes
    fresh = await store.new_conversation("g", "u")
    assert fresh.conversation_id != s1.conversation_id and fresh.agent_id == "tech" and fresh.turn_count == 0
    t2 = await store.begin_turn(T())
    assert t2.number == 1 and t2.conversation_id == fresh.conversation_id
    await store.pin_agent("g", "u", None)
    assert (await store.session("g", "u")).agent_id is None


async def test_guilds_never_share_sessions(store):
    await store.pin_agent("g1", "u", "tech")
    a = await store.begin_turn(T(guild="g1"))
    b = await store.begin_turn(T(guild="g2"))
    assert a.pinned_agent == "tech" and b.pinned_agent is None
    assert a.conversation_id != b.conversation_id


async def test_concurrent_turns_get_distinct_numbers(store):
    numbers = []

    async def one(i):
        numbers.append((await store.begin_turn(T(text=str(i)))).number)

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(one, i)
    assert sorted(numbers) == list(range(1, 21))


async def test_decisions_are_recorded_and_queryable(store):
    t = await store.begin_turn(T())
    await store.mark_routed(
        t.turn_id,
        {"turn_id": t.turn_id, "method": "rule", "rule_id": "code", "agent_ids": ["tech"], "latency_ms": 0.2},
        agent_id="tech",
        route_method="rule",
        rule_id="code",
    )
    u = await store.begin_turn(T())
    await store.mark_routed(
        u.turn_id,
        {"turn_id": u.turn_id, "method": "fallback", "rule_id": None, "agent_ids": ["general"], "latency_ms": 0.1},
    )
    row = await store.get_turn(t.turn_id)
    assert (row["status"], row["agent_id"], row["route_method"], row["rule_id"]) == ("routed", "tech", "rule", "code")
    [d] = await store.decisions(method="rule")
    assert d["turn_id"] == t.turn_id and d["agent_ids"] == ["tech"] and d["rule_id"] == "code"
    assert len(await store.decisions()) == 2
    assert [x["id"] for x in await store.list_turns(user_id="u")] == [t.turn_id, u.turn_id]


async def test_unknown_fields_are_rejected(store):
    t = await store.begin_turn(T())
    with pytest.raises(ValueError, match="unknown turn fields"):
        await store.update_turn(t.turn_id, statuss="x")


def test_sqlite_wal_mode(tmp_path):
    s = SqliteStore(str(tmp_path / "w.db"))
    assert s.conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    s.close()


def test_postgres_schema_creation_is_idempotent(postgres_url):
    from voxbridge.store.postgres import PostgresStore

    a = PostgresStore(postgres_url)
    b = PostgresStore(postgres_url)  # a second instance starting on the same database
    with a.pool.connection() as conn:
        from voxbridge.store.postgres import MIGRATIONS

        assert conn.execute("select count(*) from voxbridge_schema").fetchone()[0] == len(MIGRATIONS)
    a.close()
    b.close()


def test_bad_urls_say_what_to_do():
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store("mysql://x")
    with pytest.raises(ConfigError, match="cannot connect to PostgreSQL"):
        open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match="redis_url"):
        open_store("sqlite:///:memory:", "http://redis")


async def test_redis_cache_hits_and_degrades_when_redis_is_gone(tmp_path, redis_url):
    layer = RedisLayer(SqliteStore(str(tmp_path / "r.db")), redis_url, prefix=f"vbxtest:{uuid.uuid4().hex[:8]}:")
    layer.session("g", "u")
    layer.session("g", "u")
    assert layer.stats["cache_hits"] == 1
    dead = RedisLayer(SqliteStore(str(tmp_path / "d.db")), "redis://127.0.0.1:1/0")  # nothing listens there
    assert dead.session("g", "u").turn_count == 0  # served by the store below
    dead.pin_agent("g", "u", "tech")
    assert dead.session("g", "u").agent_id == "tech"
    assert dead.stats["redis_errors"] >= 2 and not dead.healthy
    assert dead.acquire_voice("g", "me", 1000) is None  # unknown, not "someone else owns it"
    layer.close()
    dead.close()


def test_voice_lock_has_one_owner_and_expires(redis_url):
    import time

    prefix = f"vbxtest:{uuid.uuid4().hex[:8]}:"
    a = RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix)
    b = RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix)
    assert a.acquire_voice("g", "A", 300) is True
    assert b.acquire_voice("g", "B", 300) is False
    assert b.renew_voice("g", "B", 300) is False and b.release_voice("g", "B") is False
    assert a.renew_voice("g", "A", 300) is True and a.voice_owner("g") == "A"
    time.sleep(0.4)
    assert a.voice_owner("g") is None  # A stopped renewing: the lock expired
    assert b.acquire_voice("g", "B", 300) is True
    assert b.release_voice("g", "B") is True and b.voice_owner("g") is None
    a.close()
    b.close()


def test_reload_broadcast_reaches_subscribers(redis_url):
    import json

    prefix = f"vbxtest:{uuid.uuid4().hex[:8]}:"
    a = RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix)
    b = RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix)
    sub = b.reload_messages()
    sub.get_message(timeout=0.5)
    assert a.publish_reload("abc123", "instance-a") == 1
    msg = None
    for _ in range(20):
        msg = sub.get_message(timeout=0.5)
        if msg:
            break
    assert msg and json.loads(msg["data"]) == {"version": "abc123", "instance": "instance-a"}
    sub.close()
    a.close()
    b.close()


async def test_opt_out_persists(store):
    await store.set_ignored("u1", True)
    await store.set_ignored("u2", True)
    await store.set_ignored("u2", False)
    assert await store.ignored_users() == {"u1"}


async def test_begin_turn_again_with_the_same_id_is_the_same_turn(store):
    """A retry after a commit whose reply was lost: recognised by the turn id, never a second row
    (PostgreSQL does the whole begin in one statement; SQLite in one transaction)."""
    first = await store.begin_turn(T(text="q1"), history=5)
    await store.update_turn(first.turn_id, status="answered", response="a1")
    row = {**T(text="q2"), "id": "turn-fixed-id", "timings": {"stt_ms": 7}, "duration_ms": None}
    began = await store.begin_turn(dict(row), history=5)
    again = await store.begin_turn(dict(row), history=5)
    assert again == began and began.turn_id == "turn-fixed-id" and began.number == 2
    assert [t["transcript"] for t in began.history] == ["q1"]
    assert [t["transcript"] for t in await store.list_turns(user_id="u")] == ["q1", "q2"]
    stored = await store.get_turn("turn-fixed-id")
    assert stored["timings"] == {"stt_ms": 7} and stored["status"] == "transcribed" and stored["number"] == 2
