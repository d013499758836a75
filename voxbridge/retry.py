"""Retries with jittered exponential backoff, through one helper for the store and the agent
client, so both back off the same way and tests exercise the production waits.

`call_retrying(fn, ...)` runs `fn(1)` bare: the first attempt is the hot path of every turn
(a store write, an agent request) and carries no retry machinery. Only after a failure that `on`
accepts does it wait (`wait_initial_s` plus jitter) and hand the remaining attempts and time to
`stamina` (jittered exponential backoff, doubling to `wait_max_s`). Measured with
`scripts/bench_routing.py`: a stamina context per call cost ~0.1 ms per store call and per agent
request on a turn's critical path.

stamina's default instrumentation would log through an unconfigured structlog (to stdout, past our
formatter) and register process-global Prometheus counters; the callers log their own retries with
what they know (agent, reason, store call) through `on_retry`, so those hooks are switched off here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina
import trio
from stamina.instrumentation import set_on_retry_hooks

set_on_retry_hooks([])

__all__ = ["call_retrying"]

T = TypeVar("T")
OnRetry = Callable[[Exception, int, float], None]  # (error, attempt that failed, seconds until the next)


async def call_retrying(
    fn: Callable[[int], Awaitable[T]],
    *,
    on: Callable[[Exception], bool],
    attempts: int | None,
    timeout_s: float | None,
    wait_initial_s: float,
    wait_max_s: float = math.inf,
    jitter_s: float | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """`fn(n)` for attempt n = 1, 2, ... until it returns. It runs again (after wait_initial_s *
    2**(n-1) plus up to `jitter_s`, default wait_initial_s, capped at wait_max_s) while `on(exc)` is
    true and neither `attempts` nor `timeout_s` (since the first attempt began, on trio's clock)
    is used up; otherwise the exception propagates unchanged. `timeout_s` <= 0 means a single attempt.
    `on_retry(exc, n, wait_s)` is called before each wait."""
    jitter = wait_initial_s if jitter_s is None else jitter_s
    if timeout_s is not None and timeout_s <= 0:
        attempts, timeout_s = 1, None
    deadline = math.inf if timeout_s is None else trio.current_time() + timeout_s

    def again(exc: Exception) -> bool:  # on trio's clock, so tests with a virtual clock see the same
        return on(exc) and trio.current_time() < deadline

    try:
        return await fn(1)
    except Exception as exc:
        wait = min(wait_max_s, wait_initial_s) + random.uniform(0, jitter)
        if attempts == 1 or not again(exc):
            raise
        if on_retry is not None:
            on_retry(exc, 1, wait)
    await trio.sleep(wait)
    rest = stamina.retry_context(
        on=again,
        attempts=None if attempts is None else attempts - 1,
        timeout=None,
        wait_initial=min(wait_max_s, 2 * wait_initial_s),
        wait_max=wait_max_s,
        wait_jitter=jitter,
        wait_exp_base=2,
    )
    async for attempt in rest:
        with attempt:
            n = attempt.num + 1
            try:
                return await fn(n)
            except Exception as exc:
                more = attempts is None or n < attempts
                if on_retry is not None and more and again(exc):
                    on_retry(exc, n, attempt.next_wait)
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")
