#!/usr/bin/env python3
"""Discord receive on the wire: frames delivered and first-frame delay, over the loopback voice server.

VoxBridge joins through its own path (`VoxApp.join_voice`, py-cord 2.8.1's real `VoiceClient`)
the loopback Discord voice server of the tests (tests/discord_voice_server.py: TLS voice gateway
v8, `aead_xchacha20_poly1305_rtpsize` RTP with header extensions, libopus). Members speak talk
spurts (a voiced synthetic signal, 20 ms Opus packets, silence frames then nothing between spurts,
as Discord clients send). Measured:

- delivered / sent: PCM frames handed to VoxBridge's speaker queues (`SpeakerHandle.push`, wrapped
  here) over the packets the server put on the wire for the members;
- first-frame delay: from the server sending the first packet of a talk spurt to the first PCM
  frame of that member reaching `SpeakerHandle.push` (same process, perf_counter), p50/p99; a
  spurt with no frame before the member's next spurt counts as missing;
- connect: `join_voice` until connected (handshake, IP discovery).

Variants, in one run: an idle daemon (one member at a time) and a busy one (all members at once
plus CPU-burning Python threads contending for the GIL). The STT is the fast fake of the tests
(the measurement is the receive path, not whisper). Prints a table, writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import attrs
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.discord_voice_server import open_wire_session  # noqa: E402
from tests.helpers import FastFakeStt  # noqa: E402
from voxbridge.audio.convert import to_discord_pcm  # noqa: E402
from voxbridge.config import load_settings  # noqa: E402
from voxbridge.core.channel import SpeakerHandle  # noqa: E402
from voxbridge.discord.adapter import run_guest  # noqa: E402


def talk_spurt(seconds: float, seed: int, rate: int = 48000) -> bytes:
    """A voiced, syllable-modulated signal (f0 110-220 Hz with harmonics), 48 kHz stereo s16le."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(110, 220)
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 5) * t)
    return to_discord_pcm((0.15 * tone * envelope).astype(np.float32), rate)


class PushRecorder:
    """Wraps `SpeakerHandle.push`: when each member's PCM frames reach VoxBridge's speaker queue."""

    def __init__(self):
        self.times: dict[int, list[float]] = defaultdict(list)
        self._orig = SpeakerHandle.push

    def __enter__(self):
        orig, times = self._orig, self.times

        def push(handle, frame):
            times[int(handle.info.user_id)].append(time.perf_counter())
            return orig(handle, frame)

        SpeakerHandle.push = push
        return self

    def __exit__(self, *exc):
        SpeakerHandle.push = self._orig


def burn(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(10_000):
            x += i * i


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def run_variant(name: str, settings, *, members: int, spurts: int, concurrent: bool, burners: int,
                spurt_s: float, pause_s: float) -> dict:
    uids = [101 + i for i in range(members)]
    audio = {uid: talk_spurt(spurt_s, uid) for uid in uids}
    stop = threading.Event()
    threads = [threading.Thread(target=burn, args=(stop,), daemon=True) for _ in range(burners)]

    async def main(loop):
        t0 = time.perf_counter()
        async with open_wire_session(loop, settings, stt=FastFakeStt(), tts=False, agents=False) as w:
            connect_s = time.perf_counter() - t0
            srv = w.server
            for uid in uids:
                srv.add_member(uid, f"member{uid}")
            for t in threads:
                t.start()

            async def member(uid, offset):
                await trio.sleep(offset)
                for _ in range(spurts):
                    await srv.speak(uid, audio[uid])
                    await trio.sleep(pause_s)

            async with trio.open_nursery() as n:
                for i, uid in enumerate(uids):
                    if concurrent:
                        n.start_soon(member, uid, 0.13 * i)
                    else:
                        await member(uid, 0)
            await trio.sleep(1.0)  # late frames still count
            return connect_s, dict(srv.packets_sent), {u: list(v) for u, v in srv.speech_starts.items()}

    with PushRecorder() as rec:
        try:
            connect_s, sent, starts = run_guest(main)
        finally:
            stop.set()
            for t in threads:
                t.join()
    delays, missing = [], 0
    for uid in uids:
        s = starts.get(uid, [])
        pushes = np.array(rec.times.get(uid, []))
        for i, start in enumerate(s):
            end = s[i + 1] if i + 1 < len(s) else math.inf
            inside = pushes[(pushes >= start) & (pushes < end)]
            if len(inside):
                delays.append((inside[0] - start) * 1000)
            else:
                missing += 1
    total_sent = sum(sent.get(u, 0) for u in uids)
    delivered = sum(len(rec.times.get(u, [])) for u in uids)
    return {"variant": name, "members": members, "concurrent": concurrent, "burner_threads": burners,
            "spurts": sum(len(starts.get(u, [])) for u in uids), "frames_sent": total_sent,
            "frames_delivered": delivered, "delivered_ratio": delivered / total_sent if total_sent else math.nan,
            "first_frame_p50_ms": percentile(delays, 50), "first_frame_p99_ms": percentile(delays, 99),
            "first_frame_max_ms": max(delays) if delays else math.nan, "spurts_without_frame": missing,
            "connect_s": connect_s}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--spurts", type=int, default=5, help="talk spurts per member")
    p.add_argument("--spurt-s", type=float, default=1.2)
    p.add_argument("--pause-s", type=float, default=0.8)
    p.add_argument("--burners", type=int, default=2, help="CPU-burning threads in the busy variant")
    p.add_argument("--out", default="bench-out/bench_discord.json")
    args = p.parse_args()

    base = load_settings(env={})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = attrs.evolve(base, general=attrs.evolve(base.general, state_dir=tmp))
        for name, concurrent, burners in (("idle: one member at a time", False, 0),
                                          (f"busy: all at once + {args.burners} CPU threads", True, args.burners)):
            rows.append(run_variant(name, settings, members=args.members, spurts=args.spurts, concurrent=concurrent,
                                    burners=burners, spurt_s=args.spurt_s, pause_s=args.pause_s))

    header = f"{'variant':<36} {'spurts':>6} {'sent':>6} {'deliv.':>6} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missing':>7} {'conn s':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<36} {r['spurts']:>6} {r['frames_sent']:>6} {r['frames_delivered']:>6} "
              f"{r['delivered_ratio']:>6.3f} {r['first_frame_p50_ms']:>8.1f} {r['first_frame_p99_ms']:>8.1f} "
              f"{r['first_frame_max_ms']:>8.1f} {r['spurts_without_frame']:>7} {r['connect_s']:>6.2f}")
    print("\nsent = member RTP packets on the wire; delivered = PCM frames reaching SpeakerHandle.push;")
    print("first frame = first packet of a talk spurt sent -> first PCM frame of that member pushed (p50/p99 over spurts with a frame)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "python": platform.python_version(), "rows": rows}, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
