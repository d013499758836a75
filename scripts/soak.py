#!/usr/bin/env python3
"""Soak and load: every utterance must become exactly one stored turn with a final status.

Scenarios (each a full ChannelSession pipeline with real VAD, SQLite store, loopback agents):
  load-fake   20 channels x 5 speakers, fast fake STT (engine cost out of the way)
  load-real   8 speakers in one channel, the real tiny.en model
  faults      agents that refuse, 500, hang before the first byte, close mid-stream, send garbage,
              send 50 MB: every turn stored failed with its reason, the rest answered
  pg-kill     PostgreSQL store while every connection is killed in waves (needs the server)
  soak        ONE daemon (services, store, channels) kept running for --minutes while --speakers
              simulated speakers talk in real time (Piper questions, pauses between them), with
              the fast fake STT (labelled: engine cost out of the way, the rest real); every minute
              it prints the event-loop lag p99 and the RSS, at the end the RSS slope (MB/min)
Prints a table and writes JSON (bench-out/soak.json). Nothing about time is asserted.

  .venv/bin/python scripts/soak.py                                      # all but soak
  .venv/bin/python scripts/soak.py --soak --speakers 100 --minutes 10   # plus the 10-minute soak
  .venv/bin/python scripts/soak.py --scenarios --soak --speakers 20 --minutes 1   # soak smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import FastFakeStt, SpeechMaker  # noqa: E402
from voxbridge.agents.config import parse_agents  # noqa: E402
from voxbridge.audio.convert import split_frames  # noqa: E402
from voxbridge.config import load_settings  # noqa: E402
from voxbridge.core.channel import ChannelSession  # noqa: E402
from voxbridge.core.playback import CollectSink  # noqa: E402
from voxbridge.core.services import open_services  # noqa: E402
from voxbridge.net.http_server import serve_http  # noqa: E402

FINAL = {"answered", "failed", "not_routed"}
LINES = ["What time is it?", "Tell me a joke.", "How are you doing today?", "Please check the weather for tomorrow."]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Agents:
    """Loopback agents: /ok answers, the others misbehave as their path says."""

    async def handle(self, req, resp):
        kind = req.path.strip("/").split("/")[0]
        if kind == "ok":
            await resp.respond(200, {"output": "Noted, thank you."})
        elif kind == "http500":
            await resp.respond(500, {"error": "boom"})
        elif kind == "hang":
            await trio.sleep(3600)
        elif kind == "close":
            await resp.start(200, {"content-type": "application/json"})
            await resp.send(b'{"type":"item","content":"half')
            raise RuntimeError("dies mid-stream")
        elif kind == "garbage":
            await resp.respond(200, b"{\x00\xff not json", "application/json")
        elif kind == "huge":
            await resp.start(200, {"content-type": "text/plain"})
            for _ in range(50):
                await resp.send(b"x" * (1 << 20))
            await resp.end()


def agents_config(url: str, kind: str):
    target = f"{url}/{kind}" if kind != "refuse" else "http://127.0.0.1:1/refuse"
    return parse_agents(
        f'[[agents]]\nid = "a"\nname = "Agent"\nkind = "n8n"\nurl = "{target}"\nretries = 1\ntimeout_s = 1\n'
        f"total_timeout_s = 3\nmax_response_bytes = 1048576\nmax_concurrency = 64\ncircuit_failures = 1000\n",
        "soak.toml",
        env={},
    )


async def run_channels(settings, stt, agents, clips, channels: int, speakers: int, utterances: int, store_url: str):
    lag: list[float] = []

    async def probe():
        while True:
            t0 = trio.current_time()
            await trio.sleep(0.01)
            lag.append(trio.current_time() - t0 - 0.01)

    async with open_services(
        settings, agents=agents, stt=stt, tts=False, store_url=store_url, observer=lambda k, f: None
    ) as services:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            sessions = [
                await nursery.start(ChannelSession(services, f"g{c}", f"c{c}", CollectSink()).run)
                for c in range(channels)
            ]

            async def speaker(session, j):
                h = session.add_speaker(f"{session.guild_id}-u{j}", f"u{j}")
                for k in range(utterances):
                    for frame in split_frames(clips[(j + k) % len(clips)]):
                        await h.send(frame)
                await h.finish()
                await h.finished.wait()

            t0 = time.perf_counter()
            async with trio.open_nursery() as n:
                for s in sessions:
                    for j in range(speakers):
                        n.start_soon(speaker, s, j)
            wall = time.perf_counter() - t0
            nursery.cancel_scope.cancel()
        rows = await services.store.list_turns(limit=1_000_000)
    return rows, wall, lag


def row(scenario, runs, expected, rows, crashes, wall, lag, extra=""):
    stored = len(rows)
    final = sum(r["status"] in FINAL for r in rows)
    statuses = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "scenario": scenario,
        "runs": runs,
        "turns_expected": expected,
        "turns_stored": stored,
        "final": final,
        "crashes": crashes,
        "wall_s": round(wall, 1),
        "loop_lag_p99_ms": round(float(np.percentile(lag, 99)) * 1000, 1) if lag else None,
        "rss_mb": round(rss_mb(), 0),
        "statuses": statuses,
        "note": extra,
    }


async def main_async(args):
    base = load_settings(env={})
    base = attrs.evolve(
        base,
        conversation=attrs.evolve(base.conversation, addressed_above_humans=0),
        agents=attrs.evolve(base.agents, failure_notice=""),
    )
    from voxbridge.tts.piper import PiperTts

    piper = PiperTts(base.tts)
    await piper.load()
    maker = SpeechMaker(piper)
    clips = [maker.discord(t, 0.2, 1.2) for t in LINES]
    results = []
    async with trio.open_nursery() as root:
        agent_server = Agents()
        port = await root.start(serve_http, agent_server.handle)
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:

            def db(name):
                return f"sqlite:///{tmp}/{name}.db"

            if "load-fake" in args.scenarios:
                crashes = 0
                try:
                    rows, wall, lag = await run_channels(
                        base, FastFakeStt(), agents_config(url, "ok"), clips, 20, 5, 2, db("fake")
                    )
                except Exception:
                    crashes, rows, wall, lag = 1, [], 0, []
                results.append(row("load-fake 20x5", 1, 200, rows, crashes, wall, lag))
            if "load-real" in args.scenarios:
                from voxbridge.stt.local import LocalWhisper

                stt = LocalWhisper(base.stt)
                await stt.load()
                rows, wall, lag = await run_channels(base, stt, agents_config(url, "ok"), clips, 1, 8, 2, db("real"))
                results.append(row("load-real 8 speakers", 1, 16, rows, 0, wall, lag))
            if "faults" in args.scenarios:
                for kind in ("refuse", "http500", "hang", "close", "garbage", "huge"):
                    rows, wall, lag = await run_channels(
                        base, FastFakeStt(), agents_config(url, kind), clips, 2, 3, 2, db(kind)
                    )
                    reasons = sorted({(r["error"] or "").split(":")[0] for r in rows})
                    results.append(row(f"agent {kind}", 1, 12, rows, 0, wall, lag, "reasons: " + ",".join(reasons)))
            if "pg-kill" in args.scenarios:
                results.append(await pg_kill(base, url, clips))
            if args.soak:
                results.append(
                    await soak_daemon(base, agents_config(url, "ok"), clips, args.speakers, args.minutes, db("soak"))
                )
        root.cancel_scope.cancel()
    header = (
        f"{'scenario':<28} {'runs':>4} {'expected':>8} {'stored':>6} {'final':>5} {'crashes':>7} "
        f"{'lag p99 ms':>10} {'RSS MB':>6}  note"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['scenario']:<28} {r['runs']:>4} {r['turns_expected']:>8} {r['turns_stored']:>6} "
            f"{r['final']:>5} {r['crashes']:>7} "
            f"{r['loop_lag_p99_ms'] if r['loop_lag_p99_ms'] is not None else '-':>10} {r['rss_mb']:>6}  "
            f"{r.get('note', '')}"
        )
    out = Path(args.out)
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(out.write_text, json.dumps(results, indent=2))
    print(f"\nJSON: {out}")


async def soak_daemon(base, agents, clips, speakers: int, minutes: float, store_url: str) -> dict:
    """One long-running daemon: `speakers` speakers (5 per channel) talking in real time for
    `minutes`; loop lag p99 and RSS printed every minute; RSS slope at the end."""
    from voxbridge.audio import FRAME_MS

    stt = FastFakeStt()
    lag: list[float] = []
    minute_rows = []
    uttered = [0]
    rng = np.random.default_rng(42)
    frames = [split_frames(c) for c in clips]

    async def probe():
        while True:
            t0 = trio.current_time()
            await trio.sleep(0.01)
            lag.append(trio.current_time() - t0 - 0.01)

    async def speaker(handle, j, stop_at):
        await trio.sleep(float(rng.uniform(0, 3)))
        k = j
        while trio.current_time() < stop_at:
            t0 = trio.current_time()
            for i, frame in enumerate(frames[k % len(frames)]):  # real time, as Discord delivers it
                await trio.sleep_until(t0 + i * FRAME_MS / 1000)
                handle.push(frame)
            uttered[0] += 1
            k += 1
            await trio.sleep(float(rng.uniform(1.5, 4.0)))  # silence: Discord sends nothing
        await handle.finish()

    print(f"soak: one daemon, {speakers} speakers in real time, fake STT, {minutes} min", file=sys.stderr)
    async with open_services(
        base, agents=agents, stt=stt, tts=False, store_url=store_url, observer=lambda k, f: None
    ) as services:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            channels = [
                await nursery.start(ChannelSession(services, f"g{c}", f"c{c}", CollectSink()).run)
                for c in range(math.ceil(speakers / 5))
            ]
            start = trio.current_time()
            stop_at = start + minutes * 60
            handles = []
            async with trio.open_nursery() as talkers:
                for j in range(speakers):
                    h = channels[j // 5].add_speaker(f"u{j}", f"u{j}")
                    handles.append(h)
                    talkers.start_soon(speaker, h, j, stop_at)

                async def report():
                    minute = 0
                    while True:
                        await trio.sleep_until(start + (minute + 1) * 60)
                        minute += 1
                        window, lag[:] = list(lag), []
                        row = {
                            "minute": minute,
                            "loop_lag_p99_ms": round(float(np.percentile(window, 99)) * 1000, 1) if window else None,
                            "rss_mb": round(rss_mb(), 1),
                            "utterances": uttered[0],
                            "answered": services.metrics.counts().get("turns_answered", 0),
                            "load": os.getloadavg()[0],
                        }
                        minute_rows.append(row)
                        print(
                            f"  minute {minute}: loop lag p99 {row['loop_lag_p99_ms']} ms, RSS {row['rss_mb']} MB, "
                            f"{row['utterances']} utterances, {row['answered']} answered, load {row['load']:.1f}",
                            file=sys.stderr,
                        )

                talkers.start_soon(report)
                await trio.sleep_until(stop_at)
                for h in handles:
                    await h.finished.wait()
                talkers.cancel_scope.cancel()
            for ch in channels:
                ch.close()
            nursery.cancel_scope.cancel()
        rows = await services.store.list_turns(limit=10_000_000)
    rss = [r["rss_mb"] for r in minute_rows]
    xs = [r["minute"] for r in minute_rows]
    if len(rss) >= 3:  # minute 1 is warm-up (allocator, caches): the slope is fitted from minute 2 on
        slope = float(np.polyfit(xs[1:], rss[1:], 1)[0])
    elif len(rss) == 2:
        slope = rss[1] - rss[0]
    else:
        slope = float("nan")
    lags = [r["loop_lag_p99_ms"] for r in minute_rows if r["loop_lag_p99_ms"] is not None]
    final = sum(r["status"] in FINAL for r in rows)
    statuses: dict[str, int] = {}
    for r in rows:
        key = r["status"] + (f" ({(r['error'] or '').split(':')[0]})" if r["status"] == "failed" else "")
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "scenario": f"soak {minutes:g} min, {speakers} spk (fake STT)",
        "runs": 1,
        "turns_expected": uttered[0],
        "turns_stored": len(rows),
        "final": final,
        "crashes": 0,
        "loop_lag_p99_ms": max(lags) if lags else None,
        "rss_mb": rss[-1] if rss else round(rss_mb(), 1),
        "rss_slope_mb_per_min": round(slope, 2),
        "minutes": minute_rows,
        "statuses": statuses,
        "frames_dropped": services.metrics.counts().get("frames_dropped", 0),
        "note": f"RSS {rss[0] if rss else '-'} -> {rss[-1] if rss else '-'} MB, "
        f"slope {slope:.2f} MB/min (from minute 2); "
        f"lag p99 = worst minute; {statuses}; frames dropped {services.metrics.counts().get('frames_dropped', 0)}",
    }


async def pg_kill(base, url, clips):
    import os
    import uuid

    import psycopg

    admin_url = os.environ.get("VOXBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"voxbridge_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'create database "{name}"')
    kills = [0]
    try:

        async def killer():
            admin = psycopg.connect(admin_url, autocommit=True)
            try:
                for _ in range(6):
                    await trio.sleep(0.5)
                    kills[0] += admin.execute(
                        "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = %s", (name,)
                    ).fetchone()[0]
            finally:
                admin.close()

        async with trio.open_nursery() as n:
            n.start_soon(killer)
            rows, wall, lag = await run_channels(
                base, FastFakeStt(), agents_config(url, "ok"), clips, 4, 4, 2, admin_url.rpartition("/")[0] + f"/{name}"
            )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'drop database if exists "{name}" with (force)')
    return row("pg connections killed", 1, 32, rows, 0, wall, lag, f"{kills[0]} connections killed")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="*", default=["load-fake", "load-real", "faults", "pg-kill"])
    p.add_argument("--soak", action="store_true", help="also run the long soak")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--speakers", type=int, default=100, help="soak: simulated speakers (5 per channel)")
    p.add_argument("--out", default="bench-out/soak.json")
    trio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
