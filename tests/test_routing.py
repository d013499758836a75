"""The router's tiers and strategies, on parsed agents.toml text."""

import pytest

from voxbridge.agents.config import parse_agents
from voxbridge.routing import RouteContext, Router

BASE = """
[routing]
strategy = "{strategy}"
default_agent = "general"
{extra}

[[agents]]
id = "general"
kind = "n8n"
url = "http://127.0.0.1:9/g"

[[agents]]
id = "tech"
kind = "n8n"
url = "http://127.0.0.1:9/t"
keywords = ["bug", "crash"]
priority = 5

[[agents]]
id = "billing"
kind = "n8n"
url = "http://127.0.0.1:9/b"
keywords = ["invoice"]
guilds = ["g1"]

[[agents]]
id = "staff"
kind = "n8n"
url = "http://127.0.0.1:9/s"
allowed_roles = ["mod"]

[[rules]]
id = "vip"
priority = 50
agents = ["staff"]
match = {{ users = ["boss"] }}

[[rules]]
id = "errors"
priority = 10
agents = ["tech"]
match = {{ regex = "error code [0-9]+" }}
"""


def router(strategy="user_preference", extra="", available=None, classifier=None):
    cfg = parse_agents(BASE.format(strategy=strategy, extra=extra), "a.toml", env={})
    return Router(cfg, available or (lambda _id: True), classifier=classifier)


def ctx(text="hello", guild="g1", user="u", pinned=None, roles=()):
    return RouteContext(text, guild, "c", user, pinned, frozenset(roles))


async def test_direct_beats_rules_and_fallback():
    d = await router().route(ctx("error code 42", pinned="billing"))
    assert (d.method, d.agent_ids) == ("direct", ("billing",)) and d.fallbacks == ("general",)


async def test_rules_by_priority_and_role_scoping():
    d = await router().route(ctx("error code 42"))
    assert (d.method, d.rule_id, d.agent_ids) == ("rule", "errors", ("tech",))
    d = await router().route(ctx("error code 42", user="boss"))  # vip rule, but boss lacks the role
    assert d.rule_id == "errors"
    d = await router().route(ctx("error code 42", user="boss", roles=["mod"]))
    assert (d.rule_id, d.agent_ids) == ("vip", ("staff",))


async def test_fallback_and_guild_scoping():
    d = await router().route(ctx("what is the weather"))
    assert (d.method, d.agent_ids) == ("fallback", ("general",))
    r = router("content_based")
    assert (await r.route(ctx("my invoice is wrong", guild="g1"))).agent_ids == ("billing",)
    d = await r.route(ctx("my invoice is wrong", guild="g2"))  # billing is scoped to g1
    assert d.agent_ids == ("general",)
    d = await r.route(ctx("pinned", guild="g2", pinned="billing"))  # a pin to an out-of-scope agent is ignored
    assert d.method == "fallback"


async def test_content_based_keywords_whole_words():
    r = router("content_based")
    d = await r.route(ctx("the app had a crash"))
    assert (d.method, d.agent_ids, d.fallbacks) == ("keyword", ("tech",), ("general",))
    assert (await r.route(ctx("debugging is fun"))).method == "fallback"  # "bug" is not a whole word here


async def test_classifier_tier():
    asked = []

    async def classify(agent, text, candidates):
        asked.append((agent.id, text, [c.id for c in candidates]))
        return "billing"

    r = router("content_based", 'classifier_agent = "general"', classifier=classify)
    d = await r.route(ctx("I was charged twice"))
    assert (d.method, d.agent_ids) == ("classifier", ("billing",))
    assert asked[0][0] == "general" and "general" not in asked[0][2]


async def test_round_robin_and_broadcast():
    r = router("round_robin")
    picks = [(await r.route(ctx())).agent_ids[0] for _ in range(6)]
    assert picks == ["general", "tech", "billing"] * 2  # staff needs the mod role
    d = await router("broadcast").route(ctx(roles=["mod"]))
    assert (d.method, d.agent_ids) == ("broadcast", ("general", "tech", "billing", "staff"))


async def test_open_circuits_are_skipped():
    down = {"general"}
    r = router(available=lambda a: a not in down)
    d = await r.route(ctx("hello"))
    assert d.agent_ids == ("tech",) and d.skipped == ("general",)  # default down: highest priority
    down |= {"tech", "billing"}
    assert (await r.route(ctx("hello"))).method == "none"


@pytest.mark.parametrize("n", [10_000, 100_000])
async def test_long_transcripts_route_quickly(n):
    d = await router().route(ctx("a" * n + " error code 7"))
    assert d.latency_ms < 1000
