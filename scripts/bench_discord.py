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
plus CPU-burning Python threads contending for the GIL); each with DAVE off and with DAVE on
(`--dave both`, the default; `off` / `on` for one): with DAVE on the server plays the voice
gateway's MLS external-sender role (tests/dave_gateway.py), the members are real davey sessions
that E2EE every Opus frame, and VoxBridge's receiver decrypts them with the bot's davey session
(`dave settle s`: members added until every session is ready; the spurts start after that).
The STT is the fast fake of the tests (the measurement is the receive path, not whisper).
Prints a table, writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import loadavg, pct  # noqa: E402

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
    """Wraps `SpeakerHandle.push`: when each member's PCM frames reach VoxBridge's speaker queue;
    and, where VoxBridge has its own receiver (`voxbridge.discord.receive.VoiceReceiver`), when
    each RTP packet reached its socket callback on py-cord's socket thread (a stage split)."""

    def __init__(self):
        self.times: dict[int, list[float]] = defaultdict(list)
        self.packet_times: dict[int, list[float]] = defaultdict(list)  # by SSRC
        self._orig = SpeakerHandle.push
        try:
            from voxbridge.discord.receive import VoiceReceiver
        except ImportError:  # before the receive pipeline: no stage split
            VoiceReceiver = None
        self._receiver = VoiceReceiver
        self._orig_packet = VoiceReceiver.on_packet if VoiceReceiver else None

    def __enter__(self):
        orig, times, packet_times, orig_packet = self._orig, self.times, self.packet_times, self._orig_packet

        def push(handle, frame):
            times[int(handle.info.user_id)].append(time.perf_counter())
            return orig(handle, frame)

        def on_packet(receiver, data):
            if len(data) > 12 and data[1] & 0x7F == 0x78:
                packet_times[int.from_bytes(data[8:12], "big")].append(time.perf_counter())
            return orig_packet(receiver, data)

        SpeakerHandle.push = push
        if self._receiver:
            self._receiver.on_packet = on_packet
        return self

    def __exit__(self, *exc):
        SpeakerHandle.push = self._orig
        if self._receiver:
            self._receiver.on_packet = self._orig_packet


def first_after(times: list[float], starts: list[float]) -> list[float | None]:
    """For each start: ms until the first time in [start, next start), None if there is none."""
    times_a = np.array(times)
    out = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else math.inf
        inside = times_a[(times_a >= start) & (times_a < end)]
        out.append(round(float(inside[0] - start) * 1000, 1) if len(inside) else None)
    return out


def burn(stop: threading.Event) -> None:
    """Pure-Python CPU work: holds the GIL (the worst case for py-cord's socket thread)."""
    x = 0
    while not stop.is_set():
        for i in range(10_000):
            x += i * i


def burn_native(stop: threading.Event) -> None:
    """Native CPU work that releases the GIL (like CTranslate2, ONNX Runtime, numpy)."""
    block = bytes(1 << 20)
    while not stop.is_set():
        hashlib.sha256(block).digest()


def run_variant(
    name: str,
    settings,
    *,
    members: int,
    spurts: int,
    concurrent: bool,
    burners: int,
    spurt_s: float,
    pause_s: float,
    native: bool = False,
    dave: bool = False,
) -> dict:
    uids = [101 + i for i in range(members)]
    audio = {uid: talk_spurt(spurt_s, uid) for uid in uids}
    stop = threading.Event()
    threads = [
        threading.Thread(target=burn_native if native else burn, args=(stop,), daemon=True) for _ in range(burners)
    ]

    async def main(loop):
        t0 = time.perf_counter()
        async with open_wire_session(
            loop, settings, stt=FastFakeStt(), tts=False, agents=False, server_options={"dave": dave}
        ) as w:
            connect_s = time.perf_counter() - t0
            srv = w.server
            for uid in uids:
                srv.add_member(uid, f"member{uid}")
            t1 = time.perf_counter()
            if dave:
                with trio.fail_after(60):
                    while True:  # no event to wait on: the sessions live in py-cord and davey
                        if srv.dave_settled():
                            break
                        await trio.sleep(0.01)
            settle_s = time.perf_counter() - t1
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
            ssrcs = {uid: srv.members[uid].ssrc for uid in uids}
            held = getattr(w.app, "guild_voice", {}).get(w.guild.id)
            extra = {
                "dave_settle_s": settle_s if dave else math.nan,
                "e2ee_frames_sent": sum(srv.dave.e2ee_sent.values()) if dave else 0,
                "receiver_dave_errors": held.receiver.stats["dave_errors"] if held else None,
            }
            return connect_s, dict(srv.packets_sent), {u: list(v) for u, v in srv.speech_starts.items()}, ssrcs, extra

    with PushRecorder() as rec:
        try:
            connect_s, sent, starts, ssrcs, extra = run_guest(main)
        finally:
            stop.set()
            for t in threads:
                t.join()
    by_spurt = {uid: first_after(rec.times.get(uid, []), starts.get(uid, [])) for uid in uids}
    to_socket = [
        x
        for uid in uids
        for x in first_after(rec.packet_times.get(ssrcs[uid], []), starts.get(uid, []))
        if x is not None
    ]
    delays = [x for v in by_spurt.values() for x in v if x is not None]
    missing = sum(x is None for v in by_spurt.values() for x in v)
    total_sent = sum(sent.get(u, 0) for u in uids)
    delivered = sum(len(rec.times.get(u, [])) for u in uids)
    return {
        "variant": name,
        "dave": dave,
        **extra,
        "members": members,
        "concurrent": concurrent,
        "burner_threads": burners,
        "native_burn": native,
        "spurts": sum(len(starts.get(u, [])) for u in uids),
        "frames_sent": total_sent,
        "frames_delivered": delivered,
        "delivered_ratio": delivered / total_sent if total_sent else math.nan,
        "first_frame_p50_ms": pct(delays, 50),
        "first_frame_p99_ms": pct(delays, 99),
        "first_frame_max_ms": max(delays) if delays else math.nan,
        "spurts_without_frame": missing,
        "first_spurt_p50_ms": pct([v[0] for v in by_spurt.values() if v and v[0] is not None], 50),
        "later_spurts_p99_ms": pct([x for v in by_spurt.values() for x in v[1:] if x is not None], 99),
        "to_socket_thread_p50_ms": pct(to_socket, 50),
        "to_socket_thread_p99_ms": pct(to_socket, 99),
        "connect_s": connect_s,
        "first_frame_ms_by_member_spurt": by_spurt,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--spurts", type=int, default=5, help="talk spurts per member")
    p.add_argument("--spurt-s", type=float, default=1.2)
    p.add_argument("--pause-s", type=float, default=0.8)
    p.add_argument("--burners", type=int, default=2, help="CPU-burning threads in the busy variant")
    p.add_argument(
        "--dave",
        choices=("both", "off", "on"),
        default="both",
        help="DAVE (E2EE, real MLS handshake) off, on, or each variant with both (default)",
    )
    p.add_argument("--out", default="bench-out/bench_discord.json")
    args = p.parse_args()

    base = load_settings(env={})
    rows = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        settings = attrs.evolve(base, general=attrs.evolve(base.general, state_dir=tmp))
        for name, concurrent, burners, native in (
            ("idle: one member at a time", False, 0, False),
            ("all members at once", True, 0, False),
            (f"busy: all + {args.burners} native CPU threads", True, args.burners, True),
            (f"busy: all + {args.burners} Python CPU threads", True, args.burners, False),
        ):
            for dave in {"both": (False, True), "off": (False,), "on": (True,)}[args.dave]:
                rows.append(
                    run_variant(
                        name,
                        settings,
                        members=args.members,
                        spurts=args.spurts,
                        concurrent=concurrent,
                        burners=burners,
                        spurt_s=args.spurt_s,
                        pause_s=args.pause_s,
                        native=native,
                        dave=dave,
                    )
                )

    header = (
        f"{'variant':<36} {'DAVE':>4} {'spurts':>6} {'sent':>6} {'deliv.':>6} {'ratio':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missing':>7} {'1st sp.':>7} {'later99':>7} "
        f"{'sock99':>7} {'conn s':>6} {'settle':>6} {'e2ee':>6} {'d.err':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:<36} {'on' if r['dave'] else 'off':>4} {r['spurts']:>6} "
            f"{r['frames_sent']:>6} {r['frames_delivered']:>6} "
            f"{r['delivered_ratio']:>6.3f} {r['first_frame_p50_ms']:>8.1f} {r['first_frame_p99_ms']:>8.1f} "
            f"{r['first_frame_max_ms']:>8.1f} {r['spurts_without_frame']:>7} {r['first_spurt_p50_ms']:>7.1f} "
            f"{r['later_spurts_p99_ms']:>7.1f} {r['to_socket_thread_p99_ms']:>7.1f} {r['connect_s']:>6.2f} "
            f"{r['dave_settle_s']:>6.2f} {r['e2ee_frames_sent']:>6} {r['receiver_dave_errors']!s:>5}"
        )
    print("\nsent = member RTP packets on the wire; delivered = PCM frames reaching SpeakerHandle.push;")
    print(
        "first frame = first packet of a talk spurt sent -> first PCM frame of that member pushed "
        "(p50/p99 over spurts with a frame);"
    )
    print("1st sp. = p50 over each member's first spurt (SSRC just mapped), later99 = p99 over the later spurts;")
    print(
        "native CPU threads release the GIL (like whisper/ONNX); "
        "Python CPU threads hold it (worst case for py-cord's threads);"
    )
    print("DAVE on: settle = members added -> every davey session ready (s); e2ee = member frames sent E2EE;")
    print("d.err = frames VoxBridge's receiver could not DAVE-decrypt (concealed);")
    print(
        "sock99 = p99 of first packet sent -> it reaches VoiceReceiver.on_packet on py-cord's socket thread "
        "(nan: no such stage)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = f"before: {load_before}; after: {loadavg()}"
    print(load)
    out.write_text(
        json.dumps({"args": vars(args), "python": platform.python_version(), "load": load, "rows": rows}, indent=2)
    )
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
