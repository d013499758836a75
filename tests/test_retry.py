"""voxbridge.retry.call_retrying: the first attempt bare, then jittered exponential backoff."""

import pytest
import trio

from voxbridge.retry import call_retrying


class Flaky(Exception):
    pass


async def test_retries_with_growing_waits_until_it_works(autojump_clock):
    starts, waits = [], []

    async def fn(n):
        starts.append((n, trio.current_time()))
        if n < 4:
            raise Flaky()
        return "ok"

    out = await call_retrying(
        fn,
        on=lambda e: isinstance(e, Flaky),
        attempts=5,
        timeout_s=None,
        wait_initial_s=0.1,
        jitter_s=0,
        on_retry=lambda e, n, w: waits.append((n, round(w, 3))),
    )
    assert out == "ok" and [n for n, _ in starts] == [1, 2, 3, 4]
    gaps = [round(b - a, 3) for (_, a), (_, b) in zip(starts, starts[1:], strict=False)]
    assert gaps == [0.1, 0.2, 0.4] and waits == [(1, 0.1), (2, 0.2), (3, 0.4)]


async def test_gives_up_after_attempts_and_on_errors_it_does_not_retry(autojump_clock):
    calls = []

    async def fn(n):
        calls.append(n)
        raise Flaky()

    with pytest.raises(Flaky):
        await call_retrying(fn, on=lambda e: True, attempts=3, timeout_s=None, wait_initial_s=0.01)
    assert calls == [1, 2, 3]
    calls.clear()
    with pytest.raises(Flaky):  # not retryable: raised at once, unchanged
        await call_retrying(fn, on=lambda e: False, attempts=3, timeout_s=None, wait_initial_s=0.01)
    assert calls == [1]


async def test_timeout_bounds_the_retries(autojump_clock):
    calls = []

    async def fn(n):
        calls.append(trio.current_time())
        raise Flaky()

    t0 = trio.current_time()
    with pytest.raises(Flaky):
        await call_retrying(
            fn, on=lambda e: True, attempts=None, timeout_s=2.0, wait_initial_s=0.1, wait_max_s=0.5, jitter_s=0
        )
    # no retry is decided after the deadline; the last one decided before it starts one wait later at most
    assert 3 <= len(calls) and 2.0 - 0.5 <= calls[-1] - t0 <= 2.0 + 0.5
    with pytest.raises(Flaky):  # timeout 0: a single attempt
        calls.clear()
        await call_retrying(fn, on=lambda e: True, attempts=None, timeout_s=0, wait_initial_s=0.1)
    assert len(calls) == 1
