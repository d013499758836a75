"""Dispatch: one agent with failover, or all at once, into one `Dispatched` (no HTTP: a fake caller)."""

import trio

from voxbridge.agents.client import AgentAnswer
from voxbridge.agents.config import parse_agents
from voxbridge.agents.dispatch import NO_AGENT, broadcast, single
from voxbridge.errors import AgentError

CONFIG = parse_agents(
    "".join(
        f'[[agents]]\nid = "{a}"\nname = "{a.title()}"\nkind = "n8n"\nurl = "http://127.0.0.1:9/{a}"\n'
        for a in ("general", "tech", "spare")
    ),
    "t.toml",
    env={},
)


class FakeCaller:
    """Each agent id maps to (words said before the outcome, answer text or an AgentError, delay)."""

    def __init__(self, plan, down=()):
        self.plan, self.down, self.calls = plan, set(down), []

    def available(self, agent_id):
        return agent_id not in self.down

    async def __call__(self, agent, payload, on_text):
        self.calls.append(agent.id)
        words, outcome, delay = self.plan[agent.id]
        for w in words:
            await on_text(w)
        await trio.sleep(delay)
        if isinstance(outcome, AgentError):
            raise outcome
        await on_text(outcome)
        return AgentAnswer(agent.id, outcome, None, 1, 0.01)


def payload_for(agent):
    return {"agentId": agent.id}


async def test_single_fails_over_while_nothing_was_said():
    caller = FakeCaller({"general": ((), AgentError("general", "http_500"), 0), "tech": ((), "Fixed.", 0)})
    heard, events = [], []

    async def on_text(t):
        heard.append(t)

    r = await single(caller, CONFIG, ("general",), ("tech",), payload_for, on_text, lambda k, **f: events.append(k))
    assert r.answered and r.text == "Fixed." and r.agent_ids == ("tech",)
    assert r.flags["failover_errors"] == ["general: http_500"] and r.first_byte_s == 0.01
    assert caller.calls == ["general", "tech"] and events == ["agent_failover"] and heard == ["Fixed."]


async def test_single_never_restarts_an_agent_that_started_talking():
    caller = FakeCaller({"general": (("Let me",), AgentError("general", "timeout", "30 s"), 0), "tech": ((), "x", 0)})

    async def on_text(t):
        pass

    r = await single(caller, CONFIG, ("general",), ("tech",), payload_for, on_text, lambda k, **f: None)
    assert not r.answered and r.text is None and caller.calls == ["general"]
    assert r.error == "timeout: general: timeout (30 s)" and r.notice_for is CONFIG.get("general")


async def test_single_skips_fallbacks_whose_circuit_is_open_and_reports_no_agent():
    caller = FakeCaller({"general": ((), AgentError("general", "http_500"), 0), "spare": ((), "ok", 0)}, down={"tech"})

    async def on_text(t):
        pass

    r = await single(caller, CONFIG, ("general",), ("tech", "spare"), payload_for, on_text, lambda k, **f: None)
    assert r.answered and caller.calls == ["general", "spare"]
    r = await single(caller, CONFIG, (), (), payload_for, on_text, lambda k, **f: None)
    assert r.error == NO_AGENT and r.notice_for is None


async def test_broadcast_speaks_in_configured_order_and_keeps_errors():
    caller = FakeCaller(
        {
            "general": ((), "G.", 0.05),
            "tech": ((), AgentError("tech", "http_500"), 0),
            "spare": ((), "S.", 0),
        }
    )
    heard = []

    async def on_text(t):
        heard.append(t)

    r = await broadcast(caller, CONFIG, ("general", "tech", "spare"), payload_for, on_text)
    assert heard == ["General: G.\n", "Spare: S.\n"]  # the slower General first: configured order
    assert r.answered and r.agent_ids == ("general", "spare") and r.text == "[general] G.\n[spare] S."
    assert r.flags == {"broadcast": {"general": "G.", "spare": "S."}, "errors": {"tech": "http_500"}}
    assert r.first_text_at is not None


async def test_broadcast_with_every_agent_failing():
    caller = FakeCaller({a: ((), AgentError(a, "timeout"), 0) for a in ("general", "tech")})

    async def on_text(t):
        pass

    r = await broadcast(caller, CONFIG, ("general", "tech"), payload_for, on_text)
    assert r.error == "all_agents_failed: general: timeout; tech: timeout" and r.notice_for is CONFIG.get("general")
