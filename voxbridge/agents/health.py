"""Per-agent health and load: a circuit breaker and a concurrency limit, kept across reloads.

Circuit: `circuit_failures` consecutive failures open it; while open the router skips the agent;
after `circuit_reset_s` it is half-open and one trial request decides (success closes it,
failure opens it again).
"""

from __future__ import annotations

import time

import attrs
import httpx
import trio

from .client import auth_headers
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


@attrs.frozen
class Probe:
    """`voxbridge check --reach`: state is "ok", "FAIL" or "unverified" (reachable, but what
    matters could not be checked without triggering the agent); detail says what was checked."""

    agent_id: str
    state: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.state == "ok"


async def probe_agent(agent: AgentSpec, http: httpx.AsyncClient) -> Probe:
    """Probe one agent without triggering it.

    - n8n: a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method: POST). n8n
      answers a plain OPTIONS with 204 on any path, registered or not; to a preflight it lists
      the methods registered at that path in Access-Control-Allow-Methods ("OPTIONS, POST";
      just "OPTIONS" and HTTP 500 for an unknown or inactive webhook). No workflow runs.
    - openai: GET <base>/models; the configured model must be listed.
    - webhook: OPTIONS shows the host answers; the endpoint itself is not checked (only a POST
      would tell, and a POST triggers it).
    """
    t0 = time.perf_counter()
    timeout = agent.connect_timeout_s + 2

    def ms() -> str:
        return f"{(time.perf_counter() - t0) * 1000:.0f} ms"

    try:
        if agent.kind == "openai":
            return await _probe_openai(agent, http, timeout, ms)
        headers = dict(agent.headers)
        if agent.kind == "n8n":
            headers.update(
                {
                    "origin": "http://voxbridge.invalid",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "content-type",
                }
            )
        resp = await http.request("OPTIONS", agent.url, timeout=timeout, headers=headers)
    except httpx.HTTPError as exc:
        return Probe(agent.id, "FAIL", f"cannot reach the host ({type(exc).__name__})")
    allowed = resp.headers.get("access-control-allow-methods")
    if agent.kind == "n8n" and allowed is not None:
        methods = {m.strip().upper() for m in allowed.split(",")}
        if "POST" in methods:
            return Probe(
                agent.id,
                "ok",
                f"n8n webhook registered for POST (CORS preflight HTTP {resp.status_code} "
                f"in {ms()}; nothing triggered)",
            )
        return Probe(
            agent.id,
            "FAIL",
            f"n8n has no webhook registered for POST at this path (methods: {allowed}; "
            f"HTTP {resp.status_code} in {ms()}): is the workflow active, the path "
            "right, n8n done starting?",
        )
    if resp.status_code == 404 or resp.status_code >= 500:
        return Probe(agent.id, "FAIL", f"OPTIONS answered HTTP {resp.status_code} in {ms()}: nothing serves this path")
    what = (
        "the server did not answer the CORS preflight as n8n does, so the webhook's registration was not checked"
        if agent.kind == "n8n"
        else "the endpoint itself was not checked (only a POST would tell, and it triggers it)"
    )
    return Probe(agent.id, "unverified", f"host answers (OPTIONS HTTP {resp.status_code} in {ms()}); {what}")


async def _probe_openai(agent: AgentSpec, http: httpx.AsyncClient, limit_s: float, ms) -> Probe:
    base = agent.url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    resp = await http.get(base + "/models", timeout=limit_s, headers=auth_headers(agent))
    if resp.status_code in (401, 403):
        return Probe(
            agent.id, "FAIL", f"the server refused the API key (GET /models HTTP {resp.status_code} in {ms()})"
        )
    if resp.status_code != 200:
        return Probe(
            agent.id,
            "unverified",
            f"host answers, but GET /models gave HTTP {resp.status_code} in {ms()}: the model was not checked",
        )
    try:
        ids = [m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return Probe(agent.id, "unverified", f"GET /models answered but not with a model list ({ms()})")
    if agent.model in ids:
        return Probe(agent.id, "ok", f"model {agent.model!r} served (GET /models in {ms()}; nothing generated)")
    listed = ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
    return Probe(agent.id, "FAIL", f"model {agent.model!r} is not among the served models ({listed or 'none'})")
