"""Which agent(s) a turn goes to, and why. Every decision is recorded with its turn.

Tiers, as in a call centre (direct assignment -> rules -> fallback):

1. direct     the user's pinned agent (`/agent select`, or a handoff from an agent's answer)
2. rule       `[[rules]]` by priority: keywords, regex, guild, channel, user, role
   keyword    (content_based) agents whose `keywords` occur in the transcript, by priority
   classifier (content_based + `classifier_agent`) an agent that answers with an agent id
3. fallback   `default_agent`, then other eligible agents by priority (user_preference,
              content_based), or the strategy's own choice:
   round_robin (spread over eligible agents) or broadcast (all eligible agents at once)

An agent is eligible when the guild and the member's roles allow it and its circuit is not
open. A decision carries `agent_ids` (broadcast: all of them) and `fallbacks`: where a single
agent's turn goes next if that agent fails before answering.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Awaitable, Callable

import attrs

from .agents.config import AgentsConfig, AgentSpec, Rule


@attrs.frozen
class RouteContext:
    text: str
    guild_id: str
    channel_id: str
    user_id: str
    pinned_agent: str | None = None
    roles: frozenset[str] = frozenset()


@attrs.frozen
class RouteDecision:
    method: str  # direct | rule | keyword | classifier | fallback | round_robin | broadcast | none
    agent_ids: tuple[str, ...]
    rule_id: str | None = None
    latency_ms: float = 0.0
    fallbacks: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # agents passed over because their circuit is open


_WORD = re.compile(r"[a-z0-9']+")

Classifier = Callable[[AgentSpec, str, tuple[AgentSpec, ...]], Awaitable[str | None]]


class Router:
    """Cheap to build per turn; the round-robin cursor is passed in so it persists."""

    def __init__(self, config: AgentsConfig, available: Callable[[str], bool] = lambda _id: True,
                 classifier: Classifier | None = None, cursor: itertools.count | None = None):
        self.config = config
        self.available = available
        self.classifier = classifier
        self._rr = cursor if cursor is not None else itertools.count()  # shared across turns

    def eligible(self, ctx: RouteContext) -> tuple[list[AgentSpec], list[str]]:
        allowed = [a for a in self.config.agents if a.allowed_in(ctx.guild_id, ctx.roles)]
        ok = [a for a in allowed if self.available(a.id)]
        return ok, [a.id for a in allowed if a not in ok]

    async def route(self, ctx: RouteContext) -> RouteDecision:
        t0 = time.perf_counter()
        decision = await self._route(ctx)
        return attrs.evolve(decision, latency_ms=round((time.perf_counter() - t0) * 1000, 3))

    async def _route(self, ctx: RouteContext) -> RouteDecision:
        cfg = self.config
        eligible, skipped = self.eligible(ctx)
        ids = [a.id for a in eligible]
        skip = tuple(skipped)
        if not eligible:
            return RouteDecision("none", (), skipped=skip)

        def single(method: str, first: str, rule_id: str | None = None, preferred: tuple[str, ...] = ()) -> RouteDecision:
            chain = [first] + [a for a in preferred if a != first and a in ids]
            default = cfg.routing.default_agent
            if default in ids and default not in chain:
                chain.append(default)
            return RouteDecision(method, (first,), rule_id, fallbacks=tuple(chain[1:]), skipped=skip)

        if ctx.pinned_agent and ctx.pinned_agent in ids:
            return single("direct", ctx.pinned_agent)
        words = set(_WORD.findall(ctx.text.lower()))
        text_lower = ctx.text.lower()
        for rule in cfg.rules:
            if self._matches(rule, ctx, words, text_lower):
                targets = [a for a in rule.agents if a in ids]
                if targets:
                    if cfg.routing.strategy == "broadcast" and len(targets) > 1:
                        return RouteDecision("rule", tuple(targets), rule.id, skipped=skip)
                    return single("rule", targets[0], rule.id, tuple(targets))
        strategy = cfg.routing.strategy
        if strategy == "content_based":
            hits = [a for a in eligible if a.keywords and any(_kw_in(k, words, text_lower) for k in a.keywords)]
            if hits:
                hits.sort(key=lambda a: -a.priority)
                return single("keyword", hits[0].id, preferred=tuple(a.id for a in hits))
            classifier = cfg.get(cfg.routing.classifier_agent) if cfg.routing.classifier_agent else None
            if classifier and self.classifier and self.available(classifier.id):
                candidates = tuple(a for a in eligible if a.id != classifier.id)
                choice = await self.classifier(classifier, ctx.text, candidates)
                if choice in {a.id for a in candidates}:
                    return single("classifier", choice)
        if strategy == "broadcast":
            return RouteDecision("broadcast", tuple(ids), skipped=skip)
        if strategy == "round_robin":
            return single("round_robin", ids[next(self._rr) % len(ids)])
        # Fallback: the default agent, then (failed or circuit open) other eligible agents by priority.
        by_priority = tuple(a.id for a in sorted(eligible, key=lambda a: -a.priority))
        first = cfg.routing.default_agent if cfg.routing.default_agent in ids else by_priority[0]
        return single("fallback", first, preferred=by_priority)

    @staticmethod
    def _matches(rule: Rule, ctx: RouteContext, words: set[str], text_lower: str) -> bool:
        m = rule.match
        if m.guilds and ctx.guild_id not in m.guilds:
            return False
        if m.channels and ctx.channel_id not in m.channels:
            return False
        if m.users and ctx.user_id not in m.users:
            return False
        if m.roles and not set(m.roles) & set(ctx.roles):
            return False
        if m.keywords and not any(_kw_in(k, words, text_lower) for k in m.keywords):
            return False
        if rule.compiled is not None and not rule.compiled.search(ctx.text[:4000]):
            return False
        return True


def _kw_in(keyword: str, words: set[str], text_lower: str) -> bool:
    """A single word matches whole words ("bug" not in "debugging"); a phrase matches as text."""
    return keyword in words if " " not in keyword else keyword in text_lower
