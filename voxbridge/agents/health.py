"""Per-agent health and load: a circuit breaker and a concurrency limit, kept across reloads.

Circuit: `circuit_failures` consecutive failures open it; while open the router skips the agent;
after `circuit_reset_s` it is half-open and one trial request decides (success closes it,
failure opens it again).
"""

from __future__ import annotations

import time

import trio

from .config import AgentsConfig, AgentSpec


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float, clock=time.monotonic):
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self.opens = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial_in_flight:
            return True
        return False

    def on_start(self) -> None:
        if self.state == "half_open":
            self.trial_in_flight = True

    def on_success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial_in_flight = False

    def on_failure(self) -> None:
        self.consecutive += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.consecutive >= self.threshold:
            if self.opened_at is None:
                self.opens += 1
            self.opened_at = self.clock()


class AgentHealth:
    """Breakers and limiters by agent id; `sync` adopts a reloaded config's limits."""

    def __init__(self, config: AgentsConfig | None = None, clock=time.monotonic):
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}
        self.limiters: dict[str, trio.CapacityLimiter] = {}
        self.stats: dict[str, dict[str, int]] = {}
        if config is not None:
            self.sync(config)

    def sync(self, config: AgentsConfig) -> None:
        for agent in config.agents:
            self._for(agent)
            breaker = self.breakers[agent.id]
            breaker.threshold, breaker.reset_s = agent.circuit_failures, agent.circuit_reset_s
            self.limiters[agent.id].total_tokens = agent.max_concurrency

    def _for(self, agent: AgentSpec) -> None:
        if agent.id not in self.breakers:
            self.breakers[agent.id] = CircuitBreaker(agent.circuit_failures, agent.circuit_reset_s, self.clock)
            self.limiters[agent.id] = trio.CapacityLimiter(agent.max_concurrency)
            self.stats[agent.id] = {"calls": 0, "failures": 0}

    def available(self, agent_id: str) -> bool:
        breaker = self.breakers.get(agent_id)
        return breaker is None or breaker.allow()

    def state(self, agent_id: str) -> str:
        breaker = self.breakers.get(agent_id)
        return breaker.state if breaker else "closed"

    def on_start(self, agent: AgentSpec) -> None:
        self._for(agent)
        self.breakers[agent.id].on_start()

    def limiter(self, agent: AgentSpec) -> trio.CapacityLimiter:
        self._for(agent)
        return self.limiters[agent.id]

    def record(self, agent: AgentSpec, ok: bool) -> None:
        self._for(agent)
        self.stats[agent.id]["calls"] += 1
        if ok:
            self.breakers[agent.id].on_success()
        else:
            self.stats[agent.id]["failures"] += 1
            self.breakers[agent.id].on_failure()
