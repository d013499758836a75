"""Several endpoints for one remote service: least-outstanding-requests balancing and failover.

`async with pool.use() as endpoint:` picks the endpoint with the fewest requests in flight
(ties: fewest recent failures, then configured order), skipping endpoints that failed within
`cooldown_s`; `call()` tries endpoints in that order until one succeeds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

log = logging.getLogger("voxbridge.endpoints")
T = TypeVar("T")


class EndpointPool:
    def __init__(self, endpoints: list[str] | tuple[str, ...], *, cooldown_s: float = 5.0, clock=time.monotonic):
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.outstanding = {e: 0 for e in self.endpoints}
        self.failed_at: dict[str, float] = {}
        self.failures = {e: 0 for e in self.endpoints}
        self.cooldown_s = cooldown_s
        self.clock = clock

    def ranked(self) -> list[str]:
        now = self.clock()
        healthy = [e for e in self.endpoints if now - self.failed_at.get(e, -1e9) >= self.cooldown_s]
        cooling = [e for e in self.endpoints if e not in healthy]
        key = lambda e: (self.outstanding[e], self.failures[e], self.endpoints.index(e))  # noqa: E731
        return sorted(healthy, key=key) + sorted(cooling, key=lambda e: self.failed_at[e])

    @asynccontextmanager
    async def use(self, endpoint: str):
        self.outstanding[endpoint] += 1
        try:
            yield endpoint
        except BaseException:
            raise
        finally:
            self.outstanding[endpoint] -= 1

    def mark_failed(self, endpoint: str) -> None:
        self.failed_at[endpoint] = self.clock()
        self.failures[endpoint] += 1

    def mark_ok(self, endpoint: str) -> None:
        self.failed_at.pop(endpoint, None)
        self.failures[endpoint] = 0

    async def call(self, fn: Callable[[str], Awaitable[T]], retryable: tuple[type[BaseException], ...]) -> T:
        """fn(endpoint) on the best endpoint; on a retryable error, the next one (each once)."""
        errors = []
        for endpoint in self.ranked():
            async with self.use(endpoint):
                try:
                    result = await fn(endpoint)
                except retryable as exc:
                    self.mark_failed(endpoint)
                    errors.append(f"{_shown(endpoint)}: {type(exc).__name__}")
                    log.warning("event=endpoint_failed endpoint=%s error=%s", _shown(endpoint), type(exc).__name__)
                    continue
            self.mark_ok(endpoint)
            return result
        raise ConnectionError("every endpoint failed: " + "; ".join(errors))


def bearer_headers(api_key_env: str) -> dict[str, str]:
    """Authorization from the environment variable *named* in settings (never the key itself)."""
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    return {"authorization": f"Bearer {key}"} if key else {}


def _shown(endpoint: str) -> str:
    from ..agents.config import redact_url

    return redact_url(endpoint) if endpoint.startswith("http") else endpoint
