"""Two instances sharing PostgreSQL and Redis: one owner per guild's voice connection, speak
requests forwarded to the owner, and the owner's death handing the guild over within the lock
expiry, with no turn lost."""

import attrs
import httpx
import trio

from voxbridge.audio.convert import split_frames
from voxbridge.daemon import Daemon

from .helpers import SpeechMaker, wer

TOKEN = "scaleout-token"


async def wait_for(predicate, limit_s=20):
    with trio.fail_after(limit_s):
        while not predicate():
            await trio.sleep(0.05)


async def test_one_owner_forwarding_and_handover(
    settings, stt, piper, postgres_url, private_redis, agent_server, nursery, tmp_path
):  # noqa: F811
    _, redis_url = private_redis

    async def agent(req, resp):
        await resp.respond(200, {"output": "Understood."})

    url = await agent_server(agent)
    (tmp_path / "agents.toml").write_text(f'[[agents]]\nid = "general"\nkind = "n8n"\nurl = "{url}/general"\n')

    def instance(name):
        return attrs.evolve(
            settings,
            general=attrs.evolve(settings.general, state_dir=str(tmp_path / name)),
            agents=attrs.evolve(settings.agents, file=str(tmp_path / "agents.toml")),
            api=attrs.evolve(settings.api, port=0),
            store=attrs.evolve(settings.store, url=postgres_url, redis_url=redis_url),
            discord=attrs.evolve(settings.discord, auto_join=("g1:c1",)),
            daemon=attrs.evolve(settings.daemon, instance_id=name, voice_lock_ttl_s=1.5),
        )

    a = Daemon(instance("A"), env={"VOXBRIDGE_API_TOKEN": TOKEN}, engines={"stt": stt, "tts": piper})
    b = Daemon(instance("B"), env={"VOXBRIDGE_API_TOKEN": TOKEN}, engines={"stt": stt, "tts": piper})
    a_scope = trio.CancelScope()

    async def run_a():
        with a_scope:  # cancelling this is a crash: nothing is released, the lock just stops being renewed
            await a.run()

    nursery.start_soon(run_a)
    await wait_for(lambda: a.control is not None and a.control.channel("g1") is not None)
    await nursery.start(b.run)
    await trio.sleep(1.0)
    assert b.control.channel("g1") is None  # B stands by: A owns the guild

    auth = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{b.api_port}", timeout=30) as http:
        r = await http.post("/voice/join", json={"guild_id": "g1", "channel_id": "c1"}, headers=auth)
        assert r.status_code == 409 and "owned by instance A" in r.json()["detail"]
        r = await http.post("/voice/speak", json={"guild_id": "g1", "text": "Hello from instance B."}, headers=auth)
        assert r.status_code == 202 and r.json()["forwarded_to"] == "A"
    await wait_for(lambda: a.voice.played_bytes("g1") > 48000 * 4)  # A spoke it

    speech = SpeechMaker(piper)

    async def say(daemon, user, text):
        h = daemon.control.channel("g1").add_speaker(user, user)
        for frame in split_frames(speech.discord(text)):
            await h.send(frame)
        return h

    await say(a, "alice", "What is the capital of France?")
    store = b.control.services.store
    await wait_for(lambda: a.control.services.metrics.counts()["turns_answered"] >= 1, 30)

    a_scope.cancel()  # kill A
    killed_at = trio.current_time()
    await wait_for(lambda: b.control.channel("g1") is not None, 30)
    handover_s = trio.current_time() - killed_at
    h = await say(b, "bob", "How far away is the moon?")
    await h.finish()
    with trio.move_on_after(120) as waited:  # bob's turn runs to its end (a hang fails here, with the rows)
        await h.finished.wait()
    assert not waited.cancelled_caught, f"bob's turn never ended: {await store.list_turns()}"
    rows = {r["user_id"]: r for r in await store.list_turns()}
    b.request_stop()
    # Expected: lock expiry + one claim interval (1.5 + 0.75 s); the figure is printed, the bound
    # is a 10x sanity limit (a busy machine delays the claim loop, it does not break hand-over).
    assert handover_s < 10 * (1.5 + 0.75)
    assert set(rows) == {"alice", "bob"} and all(r["status"] == "answered" for r in rows.values())
    assert wer("How far away is the moon?", rows["bob"]["transcript"]) <= 0.25
    print(f"\nhand-over after the owner died: {handover_s:.2f} s (lock TTL 1.5 s)")
