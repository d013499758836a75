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
agent's turn goes next if that agent fails before answering, and `trace`: for each tier, what
matched or why not (`voxbridge say --explain` prints it). Keywords and transcripts are compared
as normalised words (`voxbridge/words.py`). `classify` asks the classifier agent (given the call
that reaches it, `agents.dispatch.AgentCaller` in a turn).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from .agents.client import AgentAnswer, OnText
from .agents.config import AgentsConfig, AgentSpec, Rule
from .errors import AgentError
from .words import Text

log = logging.getLogger("voxbridge.routing")


@attrs.frozen
class RouteContext:
    text: str
    guild_id: str
    channel_id: str
    user_id: str
    pinned_agent: str | None = None
    roles: frozenset[str] = frozenset()


@attrs.frozen
class Step:
    """One line of a decision's explanation."""

    tier: str  # eligible | direct | rule | keyword | classifier | fallback | round_robin | broadcast
    subject: str  # the agent or rule it is about ("" for the tier as a whole)
    outcome: str  # matched | no | ineligible | chosen | skipped
    why: str

    def __str__(self) -> str:
        subject = f" {self.subject}" if self.subject else ""
        return f"{self.tier}{subject}: {self.outcome}: {self.why}"


@attrs.frozen
class RouteDecision:
    method: str  # direct | rule | keyword | classifier | fallback | round_robin | broadcast | none
    agent_ids: tuple[str, ...]
    rule_id: str | None = None
    latency_ms: float = 0.0
    fallbacks: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # agents passed over because their circuit is open
    trace: tuple[Step, ...] = attrs.field(default=(), eq=False, repr=False)  # why, tier by tier


@attrs.frozen
class _Pick:
    """One turn's single-agent decisions: the eligible ids, in config order, and the agents passed
    over for open circuits. Fallbacks: the other preferred agents, then the default agent."""

    default: str
    ids: tuple[str, ...]
    skipped: tuple[str, ...]

    def single(
        self, method: str, first: str, rule_id: str | None = None, preferred: tuple[str, ...] = ()
    ) -> RouteDecision:
        chain = [first] + [a for a in preferred if a != first and a in self.ids]
        if self.default in self.ids and self.default not in chain:
            chain.append(self.default)
        return RouteDecision(method, (first,), rule_id, fallbacks=tuple(chain[1:]), skipped=self.skipped)


Classifier = Callable[[AgentSpec, str, tuple[AgentSpec, ...]], Awaitable[str | None]]
AgentCall = Callable[[AgentSpec, dict[str, Any], OnText], Awaitable[AgentAnswer]]


class Router:
    """Cheap to build per turn; the round-robin cursor is passed in so it persists."""

    def __init__(
        self,
        config: AgentsConfig,
        available: Callable[[str], bool] = lambda _id: True,
        classifier: Classifier | None = None,
        cursor: itertools.count | None = None,
    ):
        self.config = config
        self.available = available
        self.classifier = classifier
        self._rr = cursor if cursor is not None else itertools.count()  # shared across turns

    def eligible(self, ctx: RouteContext, trace: list[Step] | None = None) -> tuple[list[AgentSpec], list[str]]:
        allowed = [a for a in self.config.agents if a.allowed_in(ctx.guild_id, ctx.roles)]
        ok = [a for a in allowed if self.available(a.id)]
        if trace is not None:
            for a in self.config.agents:
                if a not in allowed:
                    trace.append(Step("eligible", a.id, "ineligible", _not_allowed_why(a, ctx)))
                elif a not in ok:
                    trace.append(Step("eligible", a.id, "ineligible", "circuit open (recent failures)"))
        return ok, [a.id for a in allowed if a not in ok]

    async def route(self, ctx: RouteContext) -> RouteDecision:
        t0 = time.perf_counter()
        trace: list[Step] = []
        decision = await self._route(ctx, trace)
        return attrs.evolve(decision, latency_ms=round((time.perf_counter() - t0) * 1000, 3), trace=tuple(trace))

    async def _route(self, ctx: RouteContext, trace: list[Step]) -> RouteDecision:
        eligible, skipped = self.eligible(ctx, trace)
        if not eligible:
            trace.append(Step("fallback", "", "no", "no agent is eligible for this member here"))
            return RouteDecision("none", (), skipped=tuple(skipped))
        pick = _Pick(self.config.routing.default_agent, tuple(a.id for a in eligible), tuple(skipped))
        text = Text(ctx.text)
        decision = self._direct(ctx, pick, trace) or self._rules(ctx, text, pick, trace)
        strategy = self.config.routing.strategy
        if decision is None and strategy == "content_based":
            decision = self._keywords(eligible, text, pick, trace) or await self._classify(ctx, eligible, pick, trace)
        elif decision is None:
            trace.append(
                Step("keyword", "", "skipped", f"agents' keywords are used by strategy content_based, not {strategy}")
            )
        return decision or self._by_strategy(eligible, pick, trace)

    @staticmethod
    def _direct(ctx: RouteContext, pick: _Pick, trace: list[Step]) -> RouteDecision | None:
        """Tier 1: the member's pinned agent."""
        if ctx.pinned_agent and ctx.pinned_agent in pick.ids:
            trace.append(Step("direct", ctx.pinned_agent, "chosen", "the member's pinned agent"))
            return pick.single("direct", ctx.pinned_agent)
        why = "pinned agent is not eligible" if ctx.pinned_agent else "no agent pinned"
        trace.append(Step("direct", ctx.pinned_agent or "", "no", why))
        return None

    def _rules(self, ctx: RouteContext, text: Text, pick: _Pick, trace: list[Step]) -> RouteDecision | None:
        """Tier 2: the first `[[rules]]` entry (by priority) that matches and has an eligible agent."""
        for rule in self.config.rules:
            ok, why = self._rule_matches(rule, ctx, text)
            if not ok:
                trace.append(Step("rule", rule.id, "no", why))
                continue
            targets = [a for a in rule.agents if a in pick.ids]
            if not targets:
                trace.append(
                    Step("rule", rule.id, "no", f"{why}, but none of its agents ({', '.join(rule.agents)}) is eligible")
                )
                continue
            trace.append(Step("rule", rule.id, "chosen", why))
            if self.config.routing.strategy == "broadcast" and len(targets) > 1:
                return RouteDecision("rule", tuple(targets), rule.id, skipped=pick.skipped)
            return pick.single("rule", targets[0], rule.id, tuple(targets))
        if not self.config.rules:
            trace.append(Step("rule", "", "no", "no [[rules]]"))
        return None

    @staticmethod
    def _keywords(eligible: list[AgentSpec], text: Text, pick: _Pick, trace: list[Step]) -> RouteDecision | None:
        """content_based: the highest-priority agent whose keywords occur in the transcript."""
        hits = []
        for a in eligible:
            if not a.keywords:
                continue
            found = _first_keyword(a.keywords, text)
            if found:
                hits.append(a)
                trace.append(Step("keyword", a.id, "matched", f"{found} (priority {a.priority})"))
            else:
                trace.append(
                    Step("keyword", a.id, "no", f"none of its keywords {list(a.keywords)} is in the transcript")
                )
        if not hits:
            return None
        hits.sort(key=lambda a: -a.priority)
        trace.append(Step("keyword", hits[0].id, "chosen", "highest priority of the agents whose keywords matched"))
        return pick.single("keyword", hits[0].id, preferred=tuple(a.id for a in hits))

    async def _classify(
        self, ctx: RouteContext, eligible: list[AgentSpec], pick: _Pick, trace: list[Step]
    ) -> RouteDecision | None:
        """content_based, no keyword matched: the classifier agent names one."""
        cfg = self.config
        classifier = cfg.get(cfg.routing.classifier_agent) if cfg.routing.classifier_agent else None
        if classifier is None:
            return None
        if self.classifier is None or not self.available(classifier.id):
            why = "not available (circuit open, or no classifier in this context)"
            trace.append(Step("classifier", classifier.id, "no", why))
            return None
        candidates = tuple(a for a in eligible if a.id != classifier.id)
        choice = await self.classifier(classifier, ctx.text, candidates)
        if choice is not None and choice in {a.id for a in candidates}:
            trace.append(Step("classifier", choice, "chosen", f"{classifier.id} chose it"))
            return pick.single("classifier", choice)
        why = f"answered {choice!r}, not one of {[a.id for a in candidates]}"
        trace.append(Step("classifier", classifier.id, "no", why))
        return None

    def _by_strategy(self, eligible: list[AgentSpec], pick: _Pick, trace: list[Step]) -> RouteDecision:
        """Tier 3: broadcast, round robin, or the default agent then the others by priority."""
        strategy, ids = self.config.routing.strategy, pick.ids
        if strategy == "broadcast":
            trace.append(Step("broadcast", "", "chosen", f"every eligible agent: {', '.join(ids)}"))
            return RouteDecision("broadcast", ids, skipped=pick.skipped)
        if strategy == "round_robin":
            choice = ids[next(self._rr) % len(ids)]
            trace.append(Step("round_robin", choice, "chosen", f"next in turn among {', '.join(ids)}"))
            return pick.single("round_robin", choice)
        # Fallback: the default agent, then (failed or circuit open) other eligible agents by priority.
        by_priority = tuple(a.id for a in sorted(eligible, key=lambda a: -a.priority))
        default = pick.default
        first = default if default in ids else by_priority[0]
        why = (
            "the default agent"
            if first == default
            else f"default agent {default!r} is not eligible; highest priority eligible agent"
        )
        trace.append(Step("fallback", first, "chosen", why))
        return pick.single("fallback", first, preferred=by_priority)

    @staticmethod
    def _rule_matches(rule: Rule, ctx: RouteContext, text: Text) -> tuple[bool, str]:
        """Whether the rule holds, with what matched or the first condition that failed."""
        m = rule.match
        if m.guilds and ctx.guild_id not in m.guilds:
            return False, f"guild {ctx.guild_id} not in match.guilds"
        if m.channels and ctx.channel_id not in m.channels:
            return False, f"channel {ctx.channel_id} not in match.channels"
        if m.users and ctx.user_id not in m.users:
            return False, f"user {ctx.user_id} not in match.users"
        if m.roles and not set(m.roles) & set(ctx.roles):
            return False, "the member has none of match.roles"
        found = _first_keyword(m.keywords, text) if m.keywords else None
        if m.keywords and not found:
            return False, f"none of match.keywords {list(m.keywords)} is in the transcript"
        if rule.compiled is not None and not rule.compiled.search(ctx.text[:4000]):
            return False, f"match.regex {rule.compiled.pattern!r} does not match"
        held = [c for c in ("guilds", "channels", "users", "roles") if getattr(m, c)]
        parts = (
            ([found] if found else [])
            + (["regex matched"] if rule.compiled is not None else [])
            + [f"{c} ok" for c in held]
        )
        return True, ", ".join(parts) or "a rule without conditions matches every turn"


def _first_keyword(keywords: tuple[str, ...], text: Text) -> str | None:
    """`keyword 'x'` (with the words heard, when they differ) for the first keyword that matches."""
    for k in keywords:
        heard = text.find(k)
        if heard is not None:
            return f"keyword {k!r}" + (f" (heard {heard!r})" if heard != k else "")
    return None


def _not_allowed_why(agent: AgentSpec, ctx: RouteContext) -> str:
    if agent.guilds and ctx.guild_id not in agent.guilds:
        return f"guild {ctx.guild_id} not in its guilds"
    return f"the member has none of its allowed_roles {list(agent.allowed_roles)}"


_ID_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]*")


async def classify(call: AgentCall, classifier: AgentSpec, text: str, candidates: tuple[AgentSpec, ...]) -> str | None:
    """Ask the classifier agent which agent should answer; its reply must name an agent id.
    Bind `call` (functools.partial) to get a `Classifier` for the Router."""
    listing = "\n".join(f"- {a.id}: {a.name}. {a.description}" for a in candidates)
    prompt = (
        f"Choose the agent that should answer the user's request. Reply with the agent id only.\n"
        f"Agents:\n{listing}\nRequest: {text}"
    )
    payload = {"text": prompt, "task": "classify", "candidates": [a.id for a in candidates], "transcript": text}
    try:
        answer = await call(classifier, payload, _ignore)
    except AgentError as exc:
        log.warning("event=classifier_failed agent=%s reason=%s", classifier.id, exc.reason)
        return None
    ids = {a.id for a in candidates}
    return next((tok for tok in _ID_TOKEN.findall(answer.text.lower()) if tok in ids), None)


async def _ignore(_text: str) -> None:
    return None
