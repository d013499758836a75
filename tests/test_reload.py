"""agents.toml hot reload: file change and SIGHUP; a broken file never replaces a good one."""

import os
import signal

import trio

from voxbridge.agents.config import load_agents
from voxbridge.agents.reloader import AgentsReloader
from voxbridge.core.services import AgentsHolder, open_services

from .test_turn_routing import Agents, ask


def agents_file(path, url, default="general", extra=""):
    path.write_text(
        f'[routing]\ndefault_agent = "{default}"\n\n'
        f'[[agents]]\nid = "general"\nkind = "n8n"\nurl = "{url}/general"\n\n'
        f'[[agents]]\nid = "tech"\nkind = "n8n"\nurl = "{url}/tech"\n{extra}'
    )


async def wait_for(predicate, limit_s=5):
    with trio.fail_after(limit_s):
        while not predicate():
            await trio.sleep(0.02)


async def test_file_change_swaps_and_broken_file_is_rejected(tmp_path, nursery, caplog):
    path = tmp_path / "agents.toml"
    agents_file(path, "http://127.0.0.1:9")
    holder = AgentsHolder(load_agents(path))
    first_version = holder.current.version
    reloader = AgentsReloader(path, holder, poll_s=0.02)
    await nursery.start(reloader.run)
    agents_file(path, "http://127.0.0.1:9", default="tech")
    await wait_for(lambda: holder.current.routing.default_agent == "tech")
    assert holder.reloads == 1 and holder.current.version != first_version
    good_version = holder.current.version
    path.write_text(path.read_text() + '\n[[agents]]\nid = "tech"\nkind = "n8n"\nurl = "http://x/y"\n')  # duplicate id
    await wait_for(lambda: holder.reload_failures == 1)
    assert holder.current.version == good_version  # the last good config keeps serving
    assert "agents.toml:" in holder.last_error and "duplicate agent id 'tech'" in holder.last_error
    assert "event=agents_reload_rejected" in caplog.text or any(
        "agents_reload_rejected" in r.getMessage() for r in caplog.records
    )
    path.unlink()
    await trio.sleep(0.1)
    assert holder.current.version == good_version  # a vanished file changes nothing either


async def test_sighup_reloads(tmp_path, nursery):
    path = tmp_path / "agents.toml"
    agents_file(path, "http://127.0.0.1:9")
    holder = AgentsHolder(load_agents(path))
    reloader = AgentsReloader(path, holder, poll_s=3600)  # only the signal can notice
    await nursery.start(reloader.run)
    agents_file(path, "http://127.0.0.1:9", default="tech")
    os.kill(os.getpid(), signal.SIGHUP)
    await wait_for(lambda: holder.current.routing.default_agent == "tech")
    assert holder.reloads == 1


async def test_turns_in_flight_keep_their_config_while_files_change(settings, tmp_path, agent_server, nursery):
    agents = Agents()
    gate = trio.Event()

    async def slow_general(req, resp, body):
        await gate.wait()
        await resp.respond(200, {"output": "general, from the old config"})

    agents.behaviour["general"] = slow_general
    url = await agent_server(agents.handle)
    path = tmp_path / "agents.toml"
    agents_file(path, url)
    async with open_services(settings, agents=load_agents(path), stt=False, tts=False) as services:
        reloader = AgentsReloader(path, services.agents, poll_s=0.02)
        await nursery.start(reloader.run)
        results = {}

        async def first():
            results["first"] = await ask(services, "question one", "alice")

        async with trio.open_nursery() as turns:
            turns.start_soon(first)
            await wait_for(lambda: agents.calls)  # alice's turn is waiting on "general"
            agents_file(path, url, default="tech")
            await wait_for(lambda: services.agents.reloads == 1)
            path.write_text("[[agents]\nbroken")  # invalid while the turn still runs
            await wait_for(lambda: services.agents.reload_failures == 1)
            results["second"] = await ask(services, "question two", "bob")
            gate.set()
        rows = {r["user_id"]: r for r in await services.store.list_turns()}
    assert results["first"].status == "answered" and rows["alice"]["agent_id"] == "general"
    assert results["second"].status == "answered" and rows["bob"]["agent_id"] == "tech"
    assert services.agents.current.routing.default_agent == "tech"


async def test_reload_is_broadcast_to_other_instances(tmp_path, nursery, redis_url):
    import uuid

    from voxbridge.store.redis_layer import RedisLayer
    from voxbridge.store.sqlite import SqliteStore

    prefix = f"vbxtest:{uuid.uuid4().hex[:8]}:"
    path_a, path_b = tmp_path / "a.toml", tmp_path / "b.toml"
    agents_file(path_a, "http://127.0.0.1:9")
    agents_file(path_b, "http://127.0.0.1:9")
    a = AgentsHolder(load_agents(path_a))
    b = AgentsHolder(load_agents(path_b))
    ra = AgentsReloader(
        path_a, a, poll_s=3600, broadcaster=RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix), instance="A"
    )
    rb = AgentsReloader(
        path_b, b, poll_s=3600, broadcaster=RedisLayer(SqliteStore(":memory:"), redis_url, prefix=prefix), instance="B"
    )
    await nursery.start(lambda task_status: ra.run(sighup=False, task_status=task_status))
    await nursery.start(lambda task_status: rb.run(sighup=False, task_status=task_status))
    await trio.sleep(0.2)
    agents_file(path_a, "http://127.0.0.1:9", default="tech")  # config management updated both hosts,
    agents_file(path_b, "http://127.0.0.1:9", default="tech")  # but only A was told to reload
    assert await ra.reload_now("sighup")
    await wait_for(lambda: b.current.routing.default_agent == "tech")
    assert b.reloads == 1
