"""Several endpoints for one remote service: least-outstanding-requests balancing and failover.

`ranked()` orders the endpoints by fewest requests in flight (ties: fewest recent failures, then
configured order), putting those still cooling down after a failure last; `call()` tries them
in that order until one succeeds. The cool-down doubles with each consecutive failure (from
`cooldown_s` up to `max_cooldown_s`), so a dead endpoint is not tried again on every busy
moment. With `timeout_s`, each attempt gets its own deadline, its share of what is left of the
budget (remaining / endpoints left to try): a server that accepts and never answers, or drops
SYNs, costs its share, is marked failed, and the next endpoint still has time to answer.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

log = logging.getLogger("voxbridge.endpoints")
T = TypeVar("T")


class AttemptTimeout(Exception):
    """One endpoint attempt ran past its share of the budget (connect and answer)."""


class EndpointPool:
    def __init__(
        self,
        endpoints: list[str] | tuple[str, ...],
        *,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 300.0,
        clock=time.monotonic,
    ):
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.outstanding = {e: 0 for e in self.endpoints}
        self.failed_at: dict[str, float] = {}
        self.failures = {e: 0 for e in self.endpoints}  # consecutive failures (0 after a success)
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock

    def cooldown(self, endpoint: str) -> float:
        """How long a failed endpoint sits out: cooldown_s, doubled per consecutive failure."""
        n = self.failures[endpoint]
        return 0.0 if n == 0 else min(self.max_cooldown_s, self.cooldown_s * 2 ** min(n - 1, 30))

    def cooling(self, endpoint: str) -> bool:
        return self.clock() - self.failed_at.get(endpoint, -1e9) < self.cooldown(endpoint)

    def ranked(self) -> list[str]:
        healthy = [e for e in self.endpoints if not self.cooling(e)]
        cooling = [e for e in self.endpoints if e not in healthy]
        key = lambda e: (self.outstanding[e], self.failures[e], self.endpoints.index(e))  # noqa: E731
        return sorted(healthy, key=key) + sorted(cooling, key=lambda e: self.failed_at[e])

    @asynccontextmanager
    async def use(self, endpoint: str):
        self.outstanding[endpoint] += 1
        try:
            yield endpoint
        finally:
            self.outstanding[endpoint] -= 1

    def mark_failed(self, endpoint: str) -> None:
        self.failed_at[endpoint] = self.clock()
        self.failures[endpoint] += 1

    def mark_ok(self, endpoint: str) -> None:
        self.failed_at.pop(endpoint, None)
        self.failures[endpoint] = 0

    async def call(
        self,
        fn: Callable[[str], Awaitable[T]],
        retryable: tuple[type[BaseException], ...],
        timeout_s: float | None = None,
        what: str = "request",
    ) -> T:
        """fn(endpoint) on the best endpoint; on a retryable error or its attempt deadline, the
        next one (each once). ConnectionError (saying what failed where) when all fail."""
        errors = []
        order = self.ranked()
        healthy = sum(not self.cooling(e) for e in order)  # they come first and share the budget;
        deadline = trio.current_time() + timeout_s if timeout_s is not None else math.inf
        for i, endpoint in enumerate(order):  # cooling ones (last resort) get what is left
            share = (deadline - trio.current_time()) / ((healthy if i < healthy else len(order)) - i)
            if share <= 0:
                errors.append(f"{_shown(endpoint)}: not tried (the {timeout_s:g}s budget was spent)")
                continue
            async with self.use(endpoint):
                try:
                    result = await _attempt(fn, endpoint, share, what)
                except (*retryable, AttemptTimeout) as exc:
                    self.mark_failed(endpoint)
                    reason = describe_error(exc).replace(endpoint, _shown(endpoint))
                    errors.append(f"{_shown(endpoint)}: {reason}")
                    log.warning(
                        "event=endpoint_failed endpoint=%s error=%s failures=%d retry_after_s=%.0f",
                        _shown(endpoint),
                        reason,
                        self.failures[endpoint],
                        self.cooldown(endpoint),
                    )
                    continue
            self.mark_ok(endpoint)
            return result
        budget = f" within {timeout_s:g}s" if timeout_s is not None else ""
        raise ConnectionError(f"every endpoint failed{budget}: " + "; ".join(errors))


async def _attempt(fn: Callable[[str], Awaitable[T]], endpoint: str, share: float, what: str) -> T:
    """fn(endpoint) within its share of the budget, else AttemptTimeout."""
    with trio.move_on_after(share):
        return await fn(endpoint)
    raise AttemptTimeout(f"no answer within {share:.3g}s (connect and {what})")


def describe_error(exc: BaseException) -> str:
    """An error as a short sentence, never empty (trio.TooSlowError and friends have no text)."""
    text = " ".join(str(exc).split())[:200]
    if isinstance(exc, AttemptTimeout):
        return text
    if isinstance(exc, trio.TooSlowError):
        return "timed out" + (f": {text}" if text else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def bearer_headers(api_key_env: str) -> dict[str, str]:
    """Authorization from the environment variable *named* in settings (never the key itself)."""
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    return {"authorization": f"Bearer {key}"} if key else {}


def _shown(endpoint: str) -> str:
    from ..agents.config import redact_url

    return redact_url(endpoint) if endpoint.startswith("http") else endpoint
