"""Retries with jittered exponential backoff, through one helper (stamina) for the store and the
agent client, so both back off the same way and tests exercise the production waits.

stamina's default instrumentation would log through an unconfigured structlog (to stdout, past our
formatter) and register process-global Prometheus counters; the callers log their own retries with
what they know (agent, reason, store call), so those hooks are switched off here.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, Callable

import stamina
from stamina.instrumentation import set_on_retry_hooks

set_on_retry_hooks([])

__all__ = ["Attempt", "retrying"]

Attempt = stamina.Attempt


def retrying(
    on: Callable[[Exception], bool],
    *,
    attempts: int | None,
    timeout_s: float | None,
    wait_initial_s: float,
    wait_max_s: float = math.inf,
    jitter_s: float | None = None,
) -> AsyncIterable[Attempt]:
    """`async for attempt in retrying(...): with attempt: ...`: the block runs again (after
    wait_initial_s * 2**(n-1) plus up to `jitter_s`, default wait_initial_s, capped at wait_max_s)
    while `on(exc)` is true and neither `attempts` nor `timeout_s` is used up; otherwise the
    exception propagates unchanged. `timeout_s` <= 0 means a single attempt."""
    if timeout_s is not None and timeout_s <= 0:
        attempts, timeout_s = 1, None
    return stamina.retry_context(
        on=on,
        attempts=attempts,
        timeout=timeout_s,
        wait_initial=wait_initial_s,
        wait_max=wait_max_s,
        wait_jitter=wait_initial_s if jitter_s is None else jitter_s,
        wait_exp_base=2,
    )
