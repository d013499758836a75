"""The asyncio <-> trio bridge: py-cord owns an asyncio loop; trio runs as a *guest* on it
(`trio.lowlevel.start_guest_run`), so both share one thread and neither blocks the other.

`Bridge.aio` awaits an asyncio coroutine from trio and `Bridge.to_trio` awaits a trio function from
asyncio; cancellation crosses both ways and exceptions arrive with their tracebacks. Chosen over
py-cord in its own thread because the two event loops then never race over shared objects (the
ChannelSession state touched by commands), and over trio-asyncio, which the design rules out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken, nursery: trio.Nursery):
        self.loop = loop
        self.token = token
        self.nursery = nursery  # trio tasks started from asyncio live here

    async def aio(self, coro: Coroutine[Any, Any, T]) -> T:
        """From trio: run an asyncio coroutine to completion. Cancelling the trio side cancels
        the asyncio task (and waits for it to unwind); its exception is raised here."""
        task = self.loop.create_task(coro)
        done = trio.Event()
        task.add_done_callback(lambda _t: self.token.run_sync_soon(done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            task.cancel()
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return task.result()

    async def to_trio(self, async_fn: Callable[..., Awaitable], *args: Any) -> Any:
        """From asyncio: run a trio function in the bridge's nursery. Cancelling the asyncio
        side cancels the trio task; its exception is raised here."""
        fut = self.loop.create_future()
        box: dict[str, trio.CancelScope] = {}

        async def runner():
            with trio.CancelScope() as scope:
                box["scope"] = scope
                if fut.cancelled():
                    scope.cancel()
                try:
                    result = await async_fn(*args)
                except BaseException as exc:
                    if not fut.done():
                        if isinstance(exc, trio.Cancelled):
                            fut.cancel()
                        else:
                            fut.set_exception(exc)
                    if isinstance(exc, Exception):
                        return  # delivered to the asyncio caller
                    raise
                if not fut.done():
                    fut.set_result(result)

        self.token.run_sync_soon(lambda: self.nursery.start_soon(runner))
        try:
            return await fut
        except asyncio.CancelledError:
            self.token.run_sync_soon(lambda: box["scope"].cancel() if "scope" in box else None)
            raise


def run_guest(trio_main: Callable[..., Awaitable[T]], *args: Any) -> T | None:
    """asyncio.run a host loop with `trio_main(bridge_factory_args...)` as trio guest; returns its
    result (None when the host cancelled it). Ctrl-C / cancellation of the host cancels the trio
    run and waits for it."""

    async def host():
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        scope_box: dict[str, trio.CancelScope] = {}

        async def guest() -> T | None:
            with trio.CancelScope() as scope:
                scope_box["scope"] = scope
                return await trio_main(loop, *args)

        def finished(outcome):
            if not done.done():
                done.set_result(outcome)

        trio.lowlevel.start_guest_run(
            guest,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=finished,
            host_uses_signal_set_wakeup_fd=True,
        )
        try:
            outcome = await asyncio.shield(done)
        except asyncio.CancelledError:
            scope = scope_box.get("scope")
            if scope is not None:
                loop.call_soon_threadsafe(scope.cancel)  # trio picks it up on its next tick
            outcome = await done
        return outcome.unwrap()

    return asyncio.run(host())
