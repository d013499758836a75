"""The trio-guest-on-asyncio bridge: cancellation both ways, exceptions with tracebacks."""

import asyncio
import traceback

import pytest
import trio

from voxbridge.discord.adapter import Bridge, run_guest


def with_bridge(body):
    """Run `body(bridge)` as trio guest on a fresh asyncio loop."""

    async def main(loop):
        async with trio.open_nursery() as nursery:
            bridge = Bridge(loop, trio.lowlevel.current_trio_token(), nursery)
            result = await body(bridge)
            nursery.cancel_scope.cancel()
            return result

    return run_guest(main)


def test_trio_awaits_asyncio_and_gets_the_result():
    async def body(bridge):
        async def add(a, b):
            await asyncio.sleep(0.01)
            return a + b

        return await bridge.aio(add(2, 3))

    assert with_bridge(body) == 5


def test_cancelling_trio_cancels_the_asyncio_task():
    seen = {}

    async def body(bridge):
        async def forever():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen["asyncio_cancelled"] = True
                await asyncio.sleep(0.01)  # cleanup still runs before trio moves on
                seen["cleanup_done"] = True
                raise

        with trio.move_on_after(0.05):
            await bridge.aio(forever())
        return seen.copy()

    assert with_bridge(body) == {"asyncio_cancelled": True, "cleanup_done": True}


def test_cancelling_asyncio_cancels_the_trio_task():
    seen = {}

    async def body(bridge):
        async def trio_forever():
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                seen["trio_cancelled"] = True
                raise

        async def asyncio_side():
            task = asyncio.ensure_future(bridge.to_trio(trio_forever))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        await bridge.aio(asyncio_side())
        await trio.sleep(0.05)
        return seen.copy()

    assert with_bridge(body) == {"trio_cancelled": True}


def test_asyncio_exception_surfaces_in_trio_with_its_traceback():
    async def body(bridge):
        async def pycord_code():
            await asyncio.sleep(0)
            raise ValueError("from py-cord land")

        try:
            await bridge.aio(pycord_code())
        except ValueError as exc:
            return "".join(traceback.format_exception(exc))
        return ""

    tb = with_bridge(body)
    assert "from py-cord land" in tb and "pycord_code" in tb


def test_trio_exception_surfaces_in_asyncio_and_trio_calls_work_from_asyncio():
    async def body(bridge):
        async def trio_side(x):
            await trio.sleep(0.01)
            if x < 0:
                raise KeyError("negative")
            return x * 2

        async def asyncio_side():
            ok = await bridge.to_trio(trio_side, 21)
            try:
                await bridge.to_trio(trio_side, -1)
            except KeyError as exc:
                return ok, "".join(traceback.format_exception(exc))

        return await bridge.aio(asyncio_side())

    ok, tb = with_bridge(body)
    assert ok == 42 and "negative" in tb and "trio_side" in tb
