"""Calling the agent(s) a turn was routed to: one with failover, or all at once (broadcast).

Both give one `Dispatched`: the answer (text, who gave it, the flags stored with the turn) or
why nobody answered. Speaking, storing and the failure notice are the caller's (`core/turn.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import httpx
import trio

from ..errors import AgentError
from .client import AgentAnswer, OnText, call_agent
from .config import AgentsConfig, AgentSpec
from .health import AgentHealth

PayloadFor = Callable[[AgentSpec], dict[str, Any]]
Emit = Callable[..., None]  # Services.emit(kind, **fields)


class Caller(Protocol):
    """What dispatch needs to reach agents (`AgentCaller`; a fake in tests)."""

    def available(self, agent_id: str) -> bool: ...

    async def __call__(self, agent: AgentSpec, payload: dict[str, Any], on_text: OnText) -> AgentAnswer: ...


@attrs.frozen
class AgentCaller:
    """Calls one agent under its concurrency limit, feeding its circuit breaker."""

    health: AgentHealth
    http: httpx.AsyncClient
    on_sent: Callable[[], None] | None = None  # a request has left (call_agent's on_sent)

    def available(self, agent_id: str) -> bool:
        return self.health.available(agent_id)

    async def __call__(self, agent: AgentSpec, payload: dict[str, Any], on_text: OnText) -> AgentAnswer:
        self.health.on_start(agent)
        async with self.health.limiter(agent):
            try:
                answer = await call_agent(agent, payload, self.http, on_text, on_sent=self.on_sent)
            except AgentError:
                self.health.record(agent, ok=False)
                raise
        self.health.record(agent, ok=True)
        return answer


@attrs.frozen
class Dispatched:
    """What the agent(s) made of a turn."""

    text: str | None = None  # the answer (broadcast: one "[agent] text" line each); None if nobody answered
    agent_ids: tuple[str, ...] = ()  # who answered
    flags: dict[str, Any] = attrs.field(factory=dict)  # stored with the turn
    error: str | None = None  # "<reason>: <details>" when nobody answered; the first token is the reason
    notice_for: AgentSpec | None = None  # nobody answered: the agent the failure notice names (None: any)
    handoff: str | None = None  # the agent the answer hands the user to (known to the config)
    first_byte_s: float | None = None  # single: the answering agent's first byte, after its request went out
    first_text_at: float | None = None  # broadcast: trio clock when any agent's first text came

    @property
    def answered(self) -> bool:
        return self.error is None


NO_AGENT = "no_agent: no agent is available for this guild, role or right now (circuits open)"


async def single(
    call: Caller,
    config: AgentsConfig,
    agent_ids: tuple[str, ...],
    fallbacks: tuple[str, ...],
    payload_for: PayloadFor,
    on_text: OnText,
    emit: Emit,
) -> Dispatched:
    """The chosen agent, then its fallbacks while nothing has been said yet (failover)."""
    if not agent_ids:
        return Dispatched(error=NO_AGENT)
    spoke = False

    async def relay(text: str) -> None:
        nonlocal spoke
        spoke = True
        await on_text(text)

    errors: list[str] = []
    candidates = [agent for a in (*agent_ids, *fallbacks) if (agent := config.get(a)) is not None]
    for i, agent in enumerate(candidates):
        if i and not call.available(agent.id):
            continue
        try:
            answer = await call(agent, payload_for(agent), relay)
        except AgentError as exc:
            errors.append(f"{agent.id}: {exc.reason}" + (f" ({exc.detail})" if exc.detail else ""))
            if spoke:  # the agent started talking: never restart with another agent
                break
            if i + 1 < len(candidates):
                emit("agent_failover", agent=agent.id, reason=exc.reason, to=candidates[i + 1].id)
            continue
        flags = {"attempts": answer.attempts, "handoff": answer.handoff, "failover_errors": errors}
        handoff = answer.handoff if answer.handoff and config.get(answer.handoff) else None
        return Dispatched(answer.text, (agent.id,), flags, handoff=handoff, first_byte_s=answer.first_byte_s)
    # "<reason>: <agent>: <reason> (<detail>); <agent>: ...": the first token is always the reason
    reason = errors[0].split(": ", 1)[1].split(" ", 1)[0] if errors else "failed"
    return Dispatched(error=f"{reason}: " + "; ".join(errors), notice_for=config.get(agent_ids[0]))


async def broadcast(
    call: Caller, config: AgentsConfig, agent_ids: tuple[str, ...], payload_for: PayloadFor, on_text: OnText
) -> Dispatched:
    """All agents at once; each answer goes to `on_text` once complete, in the configured order."""
    agents = [agent for a in agent_ids if (agent := config.get(a)) is not None]
    results: dict[str, AgentAnswer | AgentError] = {}
    done = {a.id: trio.Event() for a in agents}
    first_text_at: list[float] = []

    async def quiet(_text: str) -> None:
        if not first_text_at:
            first_text_at.append(trio.current_time())

    async def one(agent: AgentSpec) -> None:
        try:
            results[agent.id] = await call(agent, payload_for(agent), quiet)
        except AgentError as exc:
            results[agent.id] = exc
        finally:
            done[agent.id].set()

    async with trio.open_nursery() as nursery:  # bounds the broadcast's agent calls
        for agent in agents:
            nursery.start_soon(one, agent)
        for agent in agents:  # deterministic order: as configured, whoever finishes first
            await done[agent.id].wait()
            result = results[agent.id]
            if isinstance(result, AgentAnswer):
                await on_text(f"{agent.name}: {result.text}\n")
    at = first_text_at[0] if first_text_at else None
    answered = {a.id: r for a in agents if isinstance(r := results[a.id], AgentAnswer)}
    errors = {a.id: f"{r.reason}" for a in agents if isinstance(r := results[a.id], AgentError)}
    if not answered:
        error = "all_agents_failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        return Dispatched(error=error, notice_for=agents[0] if agents else None, first_text_at=at)
    text = "\n".join(f"[{a}] {r.text}" for a, r in answered.items())
    flags = {"broadcast": {a: r.text for a, r in answered.items()}, "errors": errors}
    return Dispatched(text, tuple(answered), flags, first_text_at=at)
