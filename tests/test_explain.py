"""`voxbridge say --explain`: the router's own trace of each tier (what matched, or why not)."""

import trio

from voxbridge.agents.config import parse_agents
from voxbridge.routing import RouteContext, Router

from .test_cli import vbx

AGENTS = """
[routing]
strategy = "content_based"
default_agent = "general"

[[agents]]
id = "general"
kind = "n8n"
url = "http://127.0.0.1:9/g"

[[agents]]
id = "weather"
kind = "n8n"
url = "http://127.0.0.1:9/w"
keywords = ["weather", "rain", "Café", "twelve"]
priority = 3

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
keywords = ["weather"]
priority = 9

[[rules]]
id = "vip"
priority = 50
agents = ["staff"]
match = { users = ["boss"] }

[[rules]]
id = "errors"
priority = 10
agents = ["general"]
match = { keywords = ["crash"], regex = "code [0-9]+" }

[[rules]]
id = "music"
priority = 5
agents = ["general"]
match = { keywords = ["spotify"] }
"""


def explain(text, user="u", guild="g2", roles=(), available=lambda _id: True):
    cfg = parse_agents(AGENTS, "a.toml", env={})
    d = trio.run(Router(cfg, available).route, RouteContext(text, guild, "c", user, None, frozenset(roles)))
    return d, [str(s) for s in d.trace]


def test_trace_names_each_tier_and_the_reason():
    d, lines = explain("The weather's awful, did it crash?")
    assert d.method == "keyword" and d.agent_ids == ("weather",)
    assert lines == [
        "eligible billing: ineligible: guild g2 not in its guilds",
        "eligible staff: ineligible: the member has none of its allowed_roles ['mod']",
        "direct: no: no agent pinned",
        "rule vip: no: user u not in match.users",
        "rule errors: no: match.regex 'code [0-9]+' does not match",
        "rule music: no: none of match.keywords ['spotify'] is in the transcript",
        "keyword weather: matched: keyword 'weather' (priority 3)",
        "keyword weather: chosen: highest priority of the agents whose keywords matched",
    ]


def test_trace_for_a_rule_whose_agents_are_ineligible_and_the_fallback():
    d, lines = explain("hello", user="boss", available=lambda a: a != "weather")
    assert d.method == "fallback" and d.agent_ids == ("general",)
    assert "eligible weather: ineligible: circuit open (recent failures)" in lines
    assert "rule vip: no: users ok, but none of its agents (staff) is eligible" in lines
    assert "rule errors: no: none of match.keywords ['crash'] is in the transcript" in lines
    assert lines[-1] == "fallback general: chosen: the default agent"


def test_trace_for_a_matching_rule():
    d, lines = explain("Crash with code 42", user="boss", roles=("mod",))
    assert (d.method, d.rule_id) == ("rule", "vip")
    d, lines = explain("It crashed? No: crash, code 42.")
    assert (d.method, d.rule_id) == ("rule", "errors")
    assert lines[-1] == "rule errors: chosen: keyword 'crash', regex matched"


def test_say_explain_prints_the_trace(tmp_path):
    r = vbx("say", "--explain", "--demo-agents", "--store", f"sqlite:///{tmp_path / 's.db'}", "hello there")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "route: fallback -> general" in out
    assert (
        "  why: rule code-questions: no: none of match.keywords ['bug', 'error', 'stack trace'] is in the transcript"
        in out
    )
    assert "  why: fallback general: chosen: the default agent" in out
    r = vbx("say", "--demo-agents", "--store", f"sqlite:///{tmp_path / 's.db'}", "hello there")
    assert "why:" not in r.stdout
