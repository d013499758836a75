"""Which agent(s) a turn goes to, and why (recorded for every turn).

This is the first tier set: a pinned agent (the user's `/agent select`, or a handoff from an
agent's previous answer) is a `direct` decision; otherwise the `fallback` is the default agent.
Rules, strategies and health checks plug in here without changing the turn pipeline.
"""

from __future__ import annotations

import time

import attrs

from .agents.config import AgentsConfig


@attrs.frozen
class RouteContext:
    text: str
    guild_id: str
    channel_id: str
    user_id: str
    pinned_agent: str | None


@attrs.frozen
class RouteDecision:
    method: str  # direct | fallback
    agent_ids: tuple[str, ...]
    rule_id: str | None = None
    latency_ms: float = 0.0


class Router:
    def __init__(self, config: AgentsConfig):
        self.config = config

    def route(self, ctx: RouteContext) -> RouteDecision:
        t0 = time.perf_counter()
        if ctx.pinned_agent and self.config.get(ctx.pinned_agent):
            method, agents = "direct", (ctx.pinned_agent,)
        else:
            method, agents = "fallback", (self.config.routing.default_agent,)
        return RouteDecision(method, agents, None, round((time.perf_counter() - t0) * 1000, 3))
