import trio

from voxbridge.store import open_store


async def test_turn_lifecycle_and_history(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    try:
        first = await store.begin_turn({"guild_id": "g", "user_id": "u", "channel_id": "c", "transcript": "one"})
        assert first.number == 1
        row = await store.get_turn(first.turn_id)
        assert row["status"] == "transcribed" and row["transcript"] == "one"
        await store.update_turn(first.turn_id, status="answered", response="r1", timings={"stt_ms": 5})
        second = await store.begin_turn({"guild_id": "g", "user_id": "u", "channel_id": "c", "transcript": "two"})
        assert second.number == 2 and second.conversation_id == first.conversation_id
        history = await store.recent_turns(first.conversation_id, 5)
        assert [t["transcript"] for t in history] == ["one"]  # only answered turns
        assert history[0]["timings"] == {"stt_ms": 5}
        fresh = await store.new_conversation("g", "u")
        assert fresh.conversation_id != first.conversation_id
        await store.pin_agent("g", "u", "tech")
        third = await store.begin_turn({"guild_id": "g", "user_id": "u", "channel_id": "c", "transcript": "three"})
        assert third.pinned_agent == "tech" and third.conversation_id == fresh.conversation_id
        other_guild = await store.session("g2", "u")
        assert other_guild.agent_id is None  # guilds never share a session
    finally:
        await store.aclose()


async def test_concurrent_turns_get_distinct_numbers(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    numbers = []

    async def one(i):
        numbers.append((await store.begin_turn({"guild_id": "g", "user_id": "u", "channel_id": "c", "transcript": str(i)})).number)

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(one, i)
    assert sorted(numbers) == list(range(1, 21))
    await store.aclose()


def test_wal_mode(tmp_path):
    from voxbridge.store.sqlite import SqliteStore

    s = SqliteStore(str(tmp_path / "w.db"))
    assert s.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    s.close()
