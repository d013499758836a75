"""Routing through the real turn code (`answer_transcript`, as `voxbridge say` and the voice path
use it) against real HTTP agents on loopback: failover, circuit breaker, broadcast order,
handoff, classifier, OpenAI SSE with history, HMAC signatures."""

import hashlib
import hmac
import json

import pytest
import trio

from voxbridge.agents.config import parse_agents
from voxbridge.core.services import open_services
from voxbridge.core.turn import answer_transcript
from voxbridge.core.utterance import SpeakerInfo
from voxbridge.stt import Transcript


class Agents:
    """One loopback server, many agents: /<id> paths with per-agent behaviour."""

    def __init__(self):
        self.calls: list[tuple[str, dict, dict]] = []
        self.behaviour = {}

    async def handle(self, req, resp):
        agent_id = req.path.strip("/")
        body = req.json()
        self.calls.append((agent_id, body, req.headers))
        await self.behaviour.get(agent_id, ok)(req, resp, body)


async def ok(req, resp, body):
    await resp.respond(200, {"output": f"{req.path.strip('/')} answers: {body.get('text', '')}"})


async def fail500(req, resp, body):
    await resp.respond(500, {"error": "boom"})


def config(url, strategy="user_preference", agents=("general", "tech", "spare"), extra_agent="", extra=""):
    parts = [f'[routing]\nstrategy = "{strategy}"\ndefault_agent = "general"\n{extra}\n']
    for a in agents:
        parts.append(
            f'[[agents]]\nid = "{a}"\nname = "{a.title()}"\nkind = "n8n"\nurl = "{url}/{a}"\nretries = 0\n'
            f"timeout_s = 2\ncircuit_failures = 2\ncircuit_reset_s = 0.5\n{extra_agent}\n"
        )
    return parse_agents("\n".join(parts), "test-agents.toml", env={})


@pytest.fixture
async def world(settings, agent_server):
    agents = Agents()
    url = await agent_server(agents.handle)
    return agents, url


async def ask(services, text, user="alice", guild="g1", roles=frozenset()):
    spk = SpeakerInfo(user, user, guild, "c1", roles)
    tr = Transcript(text=text, language="en", confidence=0.9, duration_s=1.2)
    return await answer_transcript(services, spk, tr, ended_at=trio.current_time(), timings={}, playback=None)


async def test_failover_to_default_when_the_rule_agent_fails(settings, world):
    agents, url = world
    agents.behaviour["tech"] = fail500
    cfg = config(url, extra='[[rules]]\nid = "code"\nagents = ["tech"]\nmatch = { keywords = ["bug"] }\n')
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        out = await ask(services, "I found a bug")
        row = await services.store.get_turn(out.turn_id)
        [decision] = await services.store.decisions(turn_id=out.turn_id)
    assert [c[0] for c in agents.calls] == ["tech", "general"]
    assert out.status == "answered" and row["agent_id"] == "general" and row["route_method"] == "rule"
    assert row["flags"]["failover_errors"] == ["tech: http_500 (after 1 attempt(s))"]
    assert decision["rule_id"] == "code" and decision["agent_ids"] == ["tech"]


async def test_circuit_opens_skips_the_agent_and_closes_again(settings, world):
    agents, url = world
    agents.behaviour["general"] = fail500
    cfg = config(url, agents=("general", "spare"))
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        health = services.agents.health
        for _ in range(2):  # two failures (failover answers each time)
            assert (await ask(services, "hello")).status == "answered"
        assert health.state("general") == "open"
        agents.calls.clear()
        out = await ask(services, "hello again")
        assert [c[0] for c in agents.calls] == ["spare"]  # general skipped while open
        assert out.decision.skipped == ("general",)
        agents.behaviour["general"] = ok
        await trio.sleep(0.6)  # reset time: half-open, one trial
        assert health.state("general") == "half_open"
        agents.calls.clear()
        out = await ask(services, "are you back")
        assert [c[0] for c in agents.calls] == ["general"] and out.status == "answered"
        assert health.state("general") == "closed" and health.breakers["general"].opens == 1


async def test_all_agents_fail_turn_stored_failed_with_reason(settings, world):
    agents, url = world
    for a in ("general", "tech", "spare"):
        agents.behaviour[a] = fail500
    async with open_services(settings, agents=config(url), stt=False, tts=False) as services:
        out = await ask(services, "anyone there")
        row = await services.store.get_turn(out.turn_id)
    assert out.status == "failed" and row["status"] == "failed"
    assert row["transcript"] == "anyone there" and row["error"].startswith("http_500")


async def test_broadcast_speaks_answers_in_configured_order(settings, world):
    agents, url = world

    async def slow(req, resp, body):
        await trio.sleep(0.3)
        await ok(req, resp, body)

    agents.behaviour["general"] = slow  # first in order, but the slowest
    async with open_services(settings, agents=config(url, "broadcast"), stt=False, tts=False) as services:
        spoken = []

        async def capture(text):
            spoken.append(text)

        spk = SpeakerInfo("alice", "alice", "g1", "c1")
        tr = Transcript(text="status report", language="en", confidence=0.9, duration_s=1.0)
        out = await answer_transcript(
            services, spk, tr, ended_at=trio.current_time(), timings={}, playback=None, on_text=capture
        )
        row = await services.store.get_turn(out.turn_id)
    assert [s.split(":")[0] for s in spoken] == ["General", "Tech", "Spare"]
    assert row["route_method"] == "broadcast" and row["agent_id"] == "general,tech,spare"
    assert set(row["flags"]["broadcast"]) == {"general", "tech", "spare"}


async def test_handoff_pins_the_next_turns(settings, world):
    agents, url = world

    async def hand_over(req, resp, body):
        await resp.respond(200, {"output": "Let me pass you to tech.", "handoff": "tech"})

    agents.behaviour["general"] = hand_over
    async with open_services(settings, agents=config(url), stt=False, tts=False) as services:
        await ask(services, "my laptop is broken")
        out = await ask(services, "it does not boot")
        other_guild = await ask(services, "hello", guild="g2")
    assert (out.decision.method, out.decision.agent_ids) == ("direct", ("tech",))
    assert other_guild.decision.agent_ids == ("general",)  # a handoff in g1 does not leak to g2


async def test_classifier_agent_picks_the_agent(settings, world):
    agents, url = world

    async def classify(req, resp, body):
        assert body["task"] == "classify" and "tech" in body["candidates"]
        await resp.respond(200, {"output": "tech"})

    agents.behaviour["router"] = classify
    cfg = config(url, "content_based", agents=("general", "tech", "router"), extra='classifier_agent = "router"')
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        out = await ask(services, "my screen flickers")
    assert (out.decision.method, out.decision.agent_ids) == ("classifier", ("tech",))
    assert [c[0] for c in agents.calls] == ["router", "tech"]


async def test_hmac_signature_matches_the_sent_bytes(settings, agent_server):
    seen = {}

    async def handler(req, resp):
        seen.update(body=req.body, headers=req.headers)
        await resp.respond(200, {"output": "signed"})

    url = await agent_server(handler)
    cfg = config(url, agents=("general",), extra_agent='hmac_secret = "${VBX_TEST_SECRET:-s3cret}"')
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        assert (await ask(services, "sign this")).status == "answered"
    ts = seen["headers"]["x-voxbridge-timestamp"]
    expected = hmac.new(b"s3cret", ts.encode() + b"." + seen["body"], hashlib.sha256).hexdigest()
    assert seen["headers"]["x-voxbridge-signature"] == f"sha256={expected}"
    assert "s3cret" not in repr(cfg)


async def test_openai_chat_completions_sse_with_history_and_system_prompt(settings, agent_server):
    requests = []

    async def handler(req, resp):
        body = req.json()
        requests.append((body, req.headers))
        n = len(requests)
        await resp.start(200, {"content-type": "text/event-stream"})
        for piece in [f"Answer {n}", " is", " here."]:
            chunk = {
                "id": "x",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}}],
            }
            data = f"data: {json.dumps(chunk)}\n\n".encode()
            await resp.send(data[:10])  # split mid-event
            await resp.send(data[10:])
        await resp.send(b"data: [DONE]\n\n")
        await resp.end()

    url = await agent_server(handler)
    cfg = parse_agents(
        f'[[agents]]\nid = "llm"\nkind = "openai"\nurl = "{url}/v1/chat/completions"\nmodel = "tiny"\n'
        'api_key = "${VBX_TEST_KEY:-sk-test}"\nsystem_prompt = "Answer in one sentence."\n',
        "a.toml",
        env={},
    )
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        first = await ask(services, "What is two plus two?")
        second = await ask(services, "And three plus three?")
    assert first.text == "Answer 1 is here." and second.text == "Answer 2 is here."
    body, headers = requests[1]
    assert headers["authorization"] == "Bearer sk-test" and body["model"] == "tiny" and body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Answer 1 is here."},
        {"role": "user", "content": "And three plus three?"},
    ]


async def test_webhook_sse_reply(settings, agent_server):
    async def handler(req, resp):
        await resp.start(200, {"content-type": "text/event-stream"})
        await resp.send(b'event: token\ndata: {"text": "Hello "}\n\n: comment\ndata: {"text": "world."}\n\n')
        await resp.end()

    url = await agent_server(handler)
    cfg = parse_agents(f'[[agents]]\nid = "w"\nkind = "webhook"\nurl = "{url}/hook"\n', "a.toml", env={})
    async with open_services(settings, agents=cfg, stt=False, tts=False) as services:
        assert (await ask(services, "hi")).text == "Hello world."


async def test_per_agent_concurrency_limit(settings, world):
    agents, url = world
    in_flight, peak = [0], [0]

    async def slow(req, resp, body):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await trio.sleep(0.2)
        in_flight[0] -= 1
        await ok(req, resp, body)

    agents.behaviour["general"] = slow
    async with open_services(
        settings, agents=config(url, agents=("general",), extra_agent="max_concurrency = 2"), stt=False, tts=False
    ) as services:
        async with trio.open_nursery() as n:
            for i in range(6):
                n.start_soon(ask, services, f"q{i}", f"user{i}")
    assert peak[0] == 2


async def test_very_long_transcript_is_truncated_in_the_payload_with_a_marker(settings, world):
    agents, url = world
    async with open_services(settings, agents=config(url), stt=False, tts=False) as services:
        out = await ask(services, "word " * 5000)
        row = await services.store.get_turn(out.turn_id)
    sent = agents.calls[0][1]["text"]
    assert len(sent) <= 4000 + len(" […truncated]") and sent.endswith("[…truncated]")
    assert row["transcript"] == "word " * 5000  # the store keeps the whole transcript


async def test_route_record_is_written_once_the_request_left_while_the_agent_thinks(settings, world):
    """The decision is written after the request's last byte went out (httpcore's trace), not
    alongside it (a store write competing with the send) and not only when the answer is in."""
    agents, url = world
    arrived, release = trio.Event(), trio.Event()
    seen: list[str] = []

    async def thinking(req, resp, body):
        seen.append((await services.store.get_turn(body["turnId"]))["status"])  # stored before the call
        arrived.set()
        await release.wait()
        await ok(req, resp, body)

    agents.behaviour["general"] = thinking
    async with open_services(settings, agents=config(url), stt=False, tts=False) as services:
        async with trio.open_nursery() as nursery:
            outcome = []
            nursery.start_soon(lambda: _ask_into(services, outcome))
            with trio.fail_after(10):
                await arrived.wait()
                turn_id = (await services.store.list_turns())[-1]["id"]
                while (await services.store.get_turn(turn_id))["status"] != "routed":
                    await trio.sleep(0.01)  # the agent has not answered: only the sent request can trigger it
            [decision] = await services.store.decisions(turn_id=turn_id)
            release.set()
        assert seen[0] in ("transcribed", "routed") and decision["agent_ids"] == ["general"]
        assert outcome[0].status == "answered"
        assert (await services.store.get_turn(turn_id))["status"] == "answered"


async def _ask_into(services, out: list) -> None:
    out.append(await ask(services, "take your time"))
