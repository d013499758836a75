#!/usr/bin/env python3
"""Routing overhead: transcript ready -> first byte of the agent request on the wire.

VoxBridge's path per turn, as a voice turn takes it: store the turn (and read the last 5
answered turns of history, same transaction), admission (the channel's mode, rate limit, echo
guard), route, build the payload, POST; the routing decision is written once the request has
left. Measured with the SQLite store, and PostgreSQL too when the `postgres` extra is installed
and the server answers, each against, in the same run: a bare `httpx` POST of the same payload
to the same server (the ratios' denominator), and the floor of any design that stores the turn
before the request leaves (the same store insert, then the bare POST). The server is a plain
socket server in its own process (as an agent is) that timestamps the first byte of each request
on the system-wide monotonic clock. Also counted: worker-thread hops taken before the request
left. Prints a table, writes JSON; asserts nothing about time.

  .venv/bin/python scripts/bench_routing.py            # 6 rounds x 100 turns per variant
  .venv/bin/python scripts/bench_routing.py --quick    # 1 round x 50 turns
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import attrs
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import loadavg  # noqa: E402

from voxbridge.agents.client import make_http_client  # noqa: E402
from voxbridge.agents.config import parse_agents  # noqa: E402
from voxbridge.config import load_settings  # noqa: E402
from voxbridge.core.channel import ChannelSession  # noqa: E402
from voxbridge.core.playback import CollectSink  # noqa: E402
from voxbridge.core.services import open_services  # noqa: E402
from voxbridge.core.speaker import SpeakerInfo  # noqa: E402
from voxbridge.core.turn import answer_transcript  # noqa: E402
from voxbridge.stt import Transcript  # noqa: E402

RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{"output": "Fine."}\n'


class FirstByteServer:
    """Keep-alive HTTP/1.1 in its own process (as a real agent is); records when each request's
    first byte arrives, on the system-wide monotonic clock (`time.perf_counter` is CLOCK_MONOTONIC
    on Linux, the same in both processes). A server thread in the measured process would wait for
    the GIL while the client side runs Python after sending, and stamp the arrival late."""

    CAPACITY = 200_000

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self._arrivals = ctx.Array("d", self.CAPACITY, lock=False)
        self._count = ctx.Value("i", 0, lock=False)
        port = ctx.Value("i", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=_serve_forever, args=(port, self._arrivals, self._count, ready), daemon=True)
        self.proc.start()
        if not ready.wait(30):
            raise RuntimeError("the first-byte server did not start")
        self.port = port.value

    @property
    def arrivals(self) -> list[float]:
        return list(self._arrivals[: self._count.value])

    def count(self) -> int:
        return self._count.value

    def arrival(self, i: int) -> float:
        return self._arrivals[i]

    def close(self) -> None:
        self.proc.kill()
        self.proc.join(5)


def _serve_forever(port, arrivals, count, ready) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port.value = sock.getsockname()[1]
    lock = threading.Lock()

    def stamp() -> None:
        t = time.perf_counter()
        with lock:
            arrivals[count.value] = t
            count.value += 1

    def serve(conn) -> None:
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if not buf:
                stamp()
            buf += data
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                if len(rest) < length:
                    break
                buf = rest[length:]
                conn.sendall(RESPONSE)
                if buf:
                    stamp()

    ready.set()
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def pct(v, q):
    return float(np.percentile(v, q))


class HopCounter:
    """Counts trio.to_thread.run_sync calls (thread hops) made by one task (the turn's own: the
    request waits for those; writes started alongside it in child tasks are not counted)."""

    def __init__(self):
        self.calls: list[tuple[float, object]] = []
        self._orig = trio.to_thread.run_sync

    def __enter__(self):
        orig = self._orig

        async def counted(*args, **kwargs):
            self.calls.append((time.perf_counter(), trio.lowlevel.current_task()))
            return await orig(*args, **kwargs)

        trio.to_thread.run_sync = counted
        return self

    def __exit__(self, *exc):
        trio.to_thread.run_sync = self._orig

    def between(self, t0: float, t1: float, task) -> int:
        return sum(1 for t, who in self.calls if t0 <= t < t1 and who is task)


async def measure_voxbridge(settings, store_url, server, n, warm, pace_s=0.0):
    cfg = parse_agents(
        f'[[agents]]\nid = "general"\nkind = "n8n"\nurl = "http://127.0.0.1:{server.port}/webhook/general"\n'
        f"retries = 0\n[routing]\nhistory_turns = 5\n",
        "bench.toml",
        env={},
    )
    spk = SpeakerInfo("bench-user", "bench", "bench-guild", "bench-channel")
    latencies, hops = [], []
    async with open_services(
        settings, agents=cfg, stt=False, tts=False, store_url=store_url, observer=lambda k, f: None
    ) as services:
        room = ChannelSession(services, spk.guild_id, spk.channel_id, CollectSink())  # admission as in a voice channel
        with HopCounter() as counter:
            for i in range(warm + n):
                tr = Transcript(
                    text=f"What is the status of order number {i}?", language="en", confidence=0.9, duration_s=2.0
                )
                await trio.sleep(pace_s)
                before = server.count()
                t0 = time.perf_counter()
                out = await answer_transcript(
                    services, spk, tr, ended_at=trio.current_time(), timings={}, playback=None, room=room
                )
                assert out.status == "answered", out
                if i >= warm:
                    latencies.append((server.arrival(before) - t0) * 1000)
                    hops.append(counter.between(t0, server.arrival(before), trio.lowlevel.current_task()))
        last = await services.store.get_turn(out.turn_id)
        history = len(await services.store.recent_turns(last["conversation_id"], 5))  # what each payload carried
    return latencies, history, hops


async def measure_floor(store_url, server, n, warm, payload, pace_s=0.0):
    """What any design that stores the turn before the request leaves pays: the same store insert
    (one thread hop, history read) then a bare httpx POST; no admission, routing or agent client."""
    from voxbridge.store import open_store

    store = await trio.to_thread.run_sync(open_store, store_url)
    answered: list[str] = []

    async def stored(i: int) -> bytes:
        row = {
            "id": str(uuid.uuid4()),
            "guild_id": "floor-guild",
            "channel_id": "floor-channel",
            "user_id": "floor-user",
            "user_name": "floor",
            "transcript": f"What is the status of order number {i}?",
            "language": "en",
            "confidence": 0.9,
            "duration_ms": 2000,
            "timings": {},
        }
        start = await store.begin_turn(row, history=5)
        answered.append(start.turn_id)
        return json.dumps({**payload, "turnId": start.turn_id, "turnNumber": start.number}).encode()

    async def close_turn() -> None:  # untimed: the turn is answered before the next one
        await store.update_turn(answered.pop(), status="answered", response="Fine.")

    try:
        return await measure_bare(server, n, warm, payload, pace_s, body_for=stored, after=close_turn)
    finally:
        await store.aclose()


async def measure_bare(server, n, warm, payload, pace_s=0.0, body_for=None, after=None):
    """POSTs of `payload`, timed from the call to the first byte at the server. `body_for(i)`, when
    given, makes each body inside the timed span (the floor's store insert); `after()` runs untimed."""
    latencies = []
    body = json.dumps(payload).encode()
    async with make_http_client() as http:
        for i in range(warm + n):
            await trio.sleep(pace_s)
            before = server.count()
            t0 = time.perf_counter()
            r = await http.post(
                f"http://127.0.0.1:{server.port}/webhook/general",
                content=body if body_for is None else await body_for(i),
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 200
            if i >= warm:
                latencies.append((server.arrival(before) - t0) * 1000)
            if after is not None:
                await after()
    return latencies


def example_payload():
    return {
        "text": "What is the status of order number 7?",
        "userId": "bench-user",
        "userName": "bench",
        "guildId": "bench-guild",
        "channelId": "bench-channel",
        "conversationId": str(uuid.uuid4()),
        "sessionId": "s",
        "agentId": "general",
        "turnId": str(uuid.uuid4()),
        "turnNumber": 7,
        "timestamp": "2026-01-01T00:00:00.000+00:00",
        "useStreaming": True,
        "context": {
            "previousTurns": [
                {"transcript": f"question {i}", "response": "Fine.", "turnNumber": i, "agentId": "general"}
                for i in range(5)
            ],
            "userPreferences": {},
        },
        "stt": {"language": "en", "confidence": 0.9, "durationMs": 2000},
    }


async def main_async(args):
    settings = load_settings(env={})
    settings = attrs.evolve(settings, agents=attrs.evolve(settings.agents, failure_notice=""))
    server = FirstByteServer()
    results = []
    pg_admin = os.environ.get("VOXBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", f"sqlite:///{tmp}/bench.db")]
        pg_db = None
        if not args.no_postgres:
            try:
                import psycopg

                pg_db = f"voxbridge_bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(pg_admin, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f'create database "{pg_db}"')
                backends.append(("postgres", pg_admin.rpartition("/")[0] + f"/{pg_db}"))
            except ImportError:
                pg_db = None
                print("PostgreSQL skipped: the `postgres` extra (psycopg) is not installed", file=sys.stderr)
            except Exception as exc:
                pg_db = None
                print(
                    f"PostgreSQL skipped: cannot reach {pg_admin.split('@')[-1]} ({type(exc).__name__})",
                    file=sys.stderr,
                )
        print(loadavg(), file=sys.stderr)
        hops_by = {}
        try:
            for rnd in range(args.rounds):  # interleave, so machine noise hits every variant alike
                for name, url in backends:
                    lat, history, hops = await measure_voxbridge(
                        settings, url, server, args.turns, args.warmup if rnd == 0 else 0, args.pace_ms / 1000
                    )
                    results.append(("voxbridge/" + name, lat, history, rnd, name))
                    hops_by.setdefault("voxbridge/" + name, []).extend(hops)
                    bare = await measure_bare(
                        server, args.turns, args.warmup if rnd == 0 else 0, example_payload(), args.pace_ms / 1000
                    )
                    results.append(("bare httpx (paired with " + name + ")", bare, 5, rnd, name))
                    floor = await measure_floor(
                        url, server, args.turns, args.warmup if rnd == 0 else 0, example_payload(), args.pace_ms / 1000
                    )
                    results.append(("floor: " + name + " insert + bare POST", floor, 5, rnd, name))
        finally:
            server.close()
            if pg_db:
                import psycopg

                with psycopg.connect(pg_admin, autocommit=True) as conn:
                    conn.execute(f'drop database if exists "{pg_db}" with (force)')
    merged: dict[str, list[float]] = {}
    history_by = {}
    # paired ratios: each round's p50 against the bare POST of the same round and backend, so a
    # machine that slows down for a few seconds (this one is shared) moves both sides alike
    bare_p50 = {(rnd, backend): pct(lat, 50) for name, lat, _h, rnd, backend in results if name.startswith("bare")}
    paired: dict[str, list[float]] = {}
    for name, lat, history, rnd, backend in results:
        merged.setdefault(name, []).extend(lat)
        history_by[name] = history
        paired.setdefault(name, []).append(pct(lat, 50) / bare_p50[(rnd, backend)])
    bare_all = [x for k, v in merged.items() if k.startswith("bare") for x in v]
    hops_by.update({k: [1] for k in merged if k.startswith("floor")})
    b50, b99 = pct(bare_all, 50), pct(bare_all, 99)
    rows = []
    for name, lat in merged.items():
        hops = hops_by.get(name)
        rows.append(
            {
                "variant": name,
                "n": len(lat),
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
                "mean_ms": statistics.mean(lat),
                "p50_ratio_to_bare": pct(lat, 50) / b50,
                "p50_ratio_paired_median": statistics.median(paired[name]),
                "p50_ratio_paired_rounds": paired[name],
                "p99_ratio_to_bare": pct(lat, 99) / b99,
                "history_turns": history_by[name],
                "thread_hops_before_request": max(hops) if hops else 0,
            }
        )
    header = (
        f"{'variant':<36} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50 x bare':>10} {'paired':>7} {'p99 x bare':>10} "
        f"{'history':>7} {'hops':>4}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:<36} {r['n']:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['p50_ratio_to_bare']:>10.2f} "
            f"{r['p50_ratio_paired_median']:>7.2f} {r['p99_ratio_to_bare']:>10.2f} {r['history_turns']:>7} "
            f"{r['thread_hops_before_request']:>4}"
        )
    print("\ntranscript ready -> first byte of the request at the agent server, admission included (a channel's mode,")
    print("rate limit, echo guard); history = previous turns in every payload; hops = most worker-thread hops taken")
    print(
        "before the request left; bare httpx = the same payload POSTed directly (ratios against all bare runs pooled);"
    )
    print("floor = the same store insert (with its history read) then the bare POST: what storing first costs;")
    print("paired = median over rounds of each round's p50 / the p50 of that round's bare POST (same backend)")
    print(loadavg())
    out = Path(args.out)
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(
        out.write_text,
        json.dumps({"turns_per_round": args.turns, "rounds": args.rounds, "rows": rows, "raw_ms": merged}, indent=2),
    )
    print(f"\nJSON: {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=100, help="measured turns per variant per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--pace-ms", type=float, default=0.0, help="idle time before each request (both variants)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 50 turns")
    p.add_argument("--out", default="bench-out/bench_routing.json")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.turns, args.warmup = 1, 50, 10
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
