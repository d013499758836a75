#!/usr/bin/env python3
"""STT under concurrency: VoxBridge's pipeline vs the old one-speaker-at-a-time lock.

For 1, 3 and 8 concurrent speakers (each saying several Piper-made utterances of 3-8 s, starting
0.7 s apart so they overlap), measured in one run on the same clips:

- latency: end of utterance (the moment the silence threshold expires) -> transcript ready,
  p50/p95, with audio fed in real time (early transcription needs real time to matter);
- throughput: seconds of speech transcribed per wall second with audio fed as fast as the
  pipeline takes it, as a ratio to raw faster-whisper transcribing the same clips back to back;
- baseline "old-lock": one transcription at a time and no early decoding, i.e. the old design's
  global lock (kinder than the original, which dropped the other speakers outright).

Prints a table and writes JSON (default bench-out/bench_stt.json). No timing is asserted.

`--backends local stt-serve wyoming` compares STT backends instead: the same clips in-process,
through `voxbridge stt-serve` (WebSocket) and through wyoming-faster-whisper (bundled tiny.en).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxbridge.agents.config import load_agents  # noqa: E402
from voxbridge.audio import DISCORD_RATE, FRAME_MS, STT_RATE  # noqa: E402
from voxbridge.audio.convert import resample, split_frames, to_discord_pcm  # noqa: E402
from voxbridge.config import load_settings  # noqa: E402
from voxbridge.core.channel import ChannelSession  # noqa: E402
from voxbridge.core.playback import CollectSink  # noqa: E402
from voxbridge.core.services import open_services  # noqa: E402
from voxbridge.sim.demo_agents import DemoAgents  # noqa: E402
from voxbridge.stt.local import LocalWhisper  # noqa: E402
from voxbridge.tts.piper import PiperTts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = [
    "Could you tell me what the weather will be like in Paris tomorrow afternoon?",
    "Please remind me to call my sister when I get home from work tonight, and also remind me to water the plants before I go to bed.",
    "What is the fastest way to get from the train station to the old harbour?",
    "I would like to book a table for four people at seven o'clock on Friday evening, preferably near the window, and one of us is vegetarian.",
    "Can you explain how a rainbow forms after a summer storm?",
    "Tell me a short story about a dragon who is afraid of the dark, lives in a lighthouse by the sea, and makes friends with a small fishing boat.",
    "How many kilometres is it from the earth to the moon, roughly?",
    "Add milk, eggs, bread and two kilos of apples to my shopping list, and remove the orange juice because we still have plenty at home.",
    "Which planet in our solar system has the most moons, and how many does it have?",
    "Turn the living room lights down to thirty percent and play some quiet jazz.",
    "What should I cook for dinner if I only have rice, beans and tomatoes, and it needs to be ready in less than half an hour?",
    "Summarise the main points of the meeting we had this morning about the budget for next year, and list who is responsible for each item.",
]


def pct(values, q):
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def words(t):
    import re

    return re.sub(r"[^a-z0-9' ]+", " ", t.lower()).split()


def wer(ref, hyp):
    r, h = words(ref), words(hyp)
    d = np.arange(len(h) + 1)
    for i in range(1, len(r) + 1):
        prev, d[0] = d.copy(), i
        for j in range(1, len(h) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1]))
    return d[len(h)] / max(1, len(r))


async def run_pipeline(settings, engine, agents, scripts, clips, realtime: bool):
    """Feed every speaker's utterances through a ChannelSession; collect per-turn STT timings."""
    events = []

    def observe(kind, fields):
        if kind == "turn_transcribed":
            events.append(fields)

    pcm = {}
    for name, items in scripts.items():
        parts = [np.zeros(int(items[0][0] * DISCORD_RATE), np.float32)]
        for _, idx in items:
            audio, rate = clips[idx]
            parts += [resample(audio, rate, DISCORD_RATE), np.zeros(int(1.5 * DISCORD_RATE), np.float32)]
        parts.append(np.zeros(int((settings.vad.silence_ms / 1000 + 0.5) * DISCORD_RATE), np.float32))
        pcm[name] = to_discord_pcm(np.concatenate(parts), DISCORD_RATE)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        async with open_services(settings, agents=agents, stt=engine, tts=False, observer=observe,
                                 store_url=f"sqlite:///{tmp}/bench.db") as services:
            async with trio.open_nursery() as nursery:
                channel = await nursery.start(ChannelSession(services, "bench", "bench", CollectSink()).run)
                handles = {name: channel.add_speaker(name, name) for name in scripts}
                t0 = trio.current_time()

                async def feed(handle, data):
                    start = trio.current_time()
                    for i, frame in enumerate(split_frames(data)):
                        if realtime:
                            await trio.sleep_until(start + i * FRAME_MS / 1000)
                            handle.push(frame)
                        else:
                            await handle.send(frame)
                    await handle.finish()

                async with trio.open_nursery() as feeders:
                    for name, handle in handles.items():
                        feeders.start_soon(feed, handle, pcm[name])
                for handle in handles.values():
                    await handle.finished.wait()
                wall = trio.current_time() - t0
                turns = await services.store.list_turns(limit=10_000)
                channel.close()
    expected = {}
    for name, items in scripts.items():
        for _, idx in items:
            expected.setdefault(name, []).append(SENTENCES[idx])
    by_user = {}
    for t in sorted(turns, key=lambda t: t["number"]):
        by_user.setdefault(t["user_id"], []).append(t)
    wers, early = [], 0
    for name, sents in expected.items():
        got = by_user.get(name, [])
        for i, s in enumerate(sents):
            wers.append(wer(s, got[i]["transcript"]) if i < len(got) else 1.0)
    latencies = [e["stt_ms"] for e in events]
    early = sum(1 for t in turns if (t.get("timings") or {}).get("early_decode"))
    speech_s = sum(len(clips[idx][0]) / clips[idx][1] for items in scripts.values() for _, idx in items)
    return {"turns": len(turns), "expected": sum(len(v) for v in expected.values()), "latency_ms": latencies,
            "wall_s": wall, "speech_s": speech_s, "wer": statistics.mean(wers), "early_used": early}


def raw_back_to_back(engine, clips, indices):
    audio = [resample(clips[i][0], clips[i][1], STT_RATE) for i in indices]
    engine.transcribe_sync(audio[0], "en", None)  # warm-up
    t0 = time.perf_counter()
    for a in audio:
        engine.transcribe_sync(a, "en", None)
    wall = time.perf_counter() - t0
    return sum(len(a) for a in audio) / STT_RATE / wall, wall


async def main_async(args):
    base = load_settings(env={})
    base = attrs.evolve(base, agents=attrs.evolve(base.agents, file=str(ROOT / "agents.toml")))
    print("synthesizing clips with Piper...", file=sys.stderr)
    piper = PiperTts(base.tts)
    await piper.load()
    clips = []
    for s in SENTENCES:
        sp = await piper.synthesize(s)
        clips.append((sp.audio, sp.rate))
    durations = [len(a) / r for a, r in clips]
    print(f"clips: {len(clips)}, {min(durations):.1f}-{max(durations):.1f} s", file=sys.stderr)

    new_engine = LocalWhisper(base.stt)
    await new_engine.load()
    lock_settings = attrs.evolve(base, stt=attrs.evolve(base.stt, max_concurrent_transcriptions=1),
                                 vad=attrs.evolve(base.vad, early_ms=0))
    lock_engine = LocalWhisper(lock_settings.stt)
    await lock_engine.load()

    demo = DemoAgents(token_delay_s=0)
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(demo.serve)
        agents = load_agents(base.agents.file)
        agents = demo.answer_for(agents)
        for n in args.speakers:
            scripts = {f"s{i}": [(i * 0.7, (i * args.utterances + k) % len(SENTENCES)) for k in range(args.utterances)] for i in range(n)}
            indices = [idx for items in scripts.values() for _, idx in items]
            raw_tput, raw_wall = await trio.to_thread.run_sync(raw_back_to_back, new_engine, clips, indices)
            for design, settings, engine in (("voxbridge", base, new_engine), ("old-lock", lock_settings, lock_engine)):
                print(f"{design}: {n} speaker(s), real time...", file=sys.stderr)
                rt = await run_pipeline(settings, engine, agents, scripts, clips, realtime=True)
                print(f"{design}: {n} speaker(s), fast...", file=sys.stderr)
                fast = await run_pipeline(settings, engine, agents, scripts, clips, realtime=False)
                results.append({
                    "design": design, "speakers": n, "utterances": rt["expected"],
                    "transcribed_rt": rt["turns"], "early_used": rt["early_used"],
                    "latency_p50_ms": pct(rt["latency_ms"], 50), "latency_p95_ms": pct(rt["latency_ms"], 95),
                    "latency_max_ms": max(rt["latency_ms"]) if rt["latency_ms"] else None,
                    "throughput_speech_s_per_s": fast["speech_s"] / fast["wall_s"],
                    "raw_speech_s_per_s": raw_tput, "throughput_ratio_to_raw": (fast["speech_s"] / fast["wall_s"]) / raw_tput,
                    "wer_rt": rt["wer"], "wer_fast": fast["wer"], "latency_ms_all": rt["latency_ms"],
                })
        nursery.cancel_scope.cancel()

    header = f"{'design':<10} {'spk':>3} {'utt':>4} {'early':>5} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'tput x raw':>10} {'WER':>5}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['design']:<10} {r['speakers']:>3} {r['utterances']:>4} {r['early_used']:>5} {r['latency_p50_ms']:>7.0f} "
              f"{r['latency_p95_ms']:>7.0f} {r['latency_max_ms'] or 0:>7.0f} {r['throughput_ratio_to_raw']:>10.2f} {r['wer_rt']:>5.2f}")
    print("\nlatency: end of utterance (silence threshold expired) -> transcript ready, audio fed in real time")
    print("tput x raw: speech seconds transcribed per wall second, fed as fast as possible, / raw faster-whisper back to back")
    out = Path(args.out)
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(out.write_text, json.dumps({"machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
                                           "device": new_engine.device, "compute_type": new_engine.compute_type},
                               "settings": {"silence_ms": base.vad.silence_ms, "early_ms": base.vad.early_ms,
                                            "max_concurrent_transcriptions": base.stt.max_concurrent_transcriptions},
                               "results": results}, indent=2))
    print(f"\nJSON: {out}")


async def compare_backends(args):
    """The same clips through each STT backend: per-request latency (one client, sequential) and
    throughput (--clients concurrent clients), as ratios to the in-process engine, in one run."""
    import socket
    import subprocess

    from voxbridge.ops.stt_serve import serve
    from voxbridge.stt.local import bundled_model_path
    from voxbridge.stt.remote import WebsocketStt, WyomingStt

    base = load_settings(env={})
    piper = PiperTts(base.tts)
    await piper.load()
    clips = [resample(sp.audio, sp.rate, STT_RATE) for sp in [await piper.synthesize(t) for t in SENTENCES]]
    local = LocalWhisper(base.stt)
    await local.load()
    engines, procs = {}, []
    async with trio.open_nursery() as nursery:
        if "local" in args.backends:
            engines["local (in-process)"] = local
        if "stt-serve" in args.backends:
            served = LocalWhisper(base.stt)
            await served.load()
            _, ports = await nursery.start(lambda task_status: serve(base, ws_port=0, wyoming_port=None, engine=served,
                                                                      task_status=task_status))
            engines["stt-serve (websocket)"] = WebsocketStt(attrs.evolve(base.stt, backend="websocket",
                                                                         endpoints=(f"ws://127.0.0.1:{ports['websocket']}",)))
        if "stt-serve-batched" in args.backends:
            batched = LocalWhisper(base.stt)
            await batched.load()
            _, bports = await nursery.start(lambda task_status: serve(base, ws_port=0, wyoming_port=None, engine=batched,
                                                                       batch=True, task_status=task_status))
            engines["stt-serve batched"] = WebsocketStt(attrs.evolve(base.stt, backend="websocket",
                                                                     endpoints=(f"ws://127.0.0.1:{bports['websocket']}",)))
        if "wyoming" in args.backends:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            import tempfile

            data = tempfile.mkdtemp()
            cmd = [sys.executable, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{port}", "--model",
                   str(bundled_model_path()), "--data-dir", data, "--language", "en", "--local-files-only", "--beam-size", "1"]
            procs.append(await trio.to_thread.run_sync(
                lambda: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await trio.sleep(0.1)
            engines["wyoming-faster-whisper"] = WyomingStt(attrs.evolve(base.stt, backend="wyoming", endpoints=(f"tcp://127.0.0.1:{port}",)))
        rows = []
        try:
            for name, engine in engines.items():
                await engine.transcribe(clips[0])  # warm-up (first request loads lazily on some servers)
                lat, wers = [], []
                for clip, text in zip(clips, SENTENCES, strict=True):
                    t0 = time.perf_counter()
                    tr = await engine.transcribe(clip)
                    lat.append((time.perf_counter() - t0) * 1000)
                    wers.append(wer(text, tr.text))
                t0 = time.perf_counter()
                async def client(engine, share):
                    for clip in share:
                        await engine.transcribe(clip)

                async with trio.open_nursery() as clients:
                    for c in range(args.clients):
                        clients.start_soon(client, engine, clips[c::args.clients] * 2)
                wall = time.perf_counter() - t0
                speech_s = 2 * sum(len(c) for c in clips) / STT_RATE
                rows.append({"backend": name, "n": len(clips), "latency_p50_ms": pct(lat, 50), "latency_p95_ms": pct(lat, 95),
                             "throughput_speech_s_per_s": speech_s / wall, "wer": statistics.mean(wers)})
        finally:
            for proc in procs:
                proc.kill()
        nursery.cancel_scope.cancel()
    ref = rows[0]
    header = f"{'backend':<24} {'n':>3} {'p50 ms':>7} {'p95 ms':>7} {'p50 x local':>11} {'tput s/s':>8} {'tput x local':>12} {'WER':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        r["p50_ratio"] = r["latency_p50_ms"] / ref["latency_p50_ms"]
        r["throughput_ratio"] = r["throughput_speech_s_per_s"] / ref["throughput_speech_s_per_s"]
        print(f"{r['backend']:<24} {r['n']:>3} {r['latency_p50_ms']:>7.0f} {r['latency_p95_ms']:>7.0f} {r['p50_ratio']:>11.2f} "
              f"{r['throughput_speech_s_per_s']:>8.2f} {r['throughput_ratio']:>12.2f} {r['wer']:>5.2f}")
    print(f"\nlatency: one request at a time (clip sent -> transcript); throughput: {args.clients} concurrent clients, "
          "each clip twice, speech s per wall s")
    out = Path(args.out.replace(".json", "_backends.json"))
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(out.write_text, json.dumps(rows, indent=2))
    print(f"\nJSON: {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", type=int, nargs="+", default=[1, 3, 8])
    p.add_argument("--utterances", type=int, default=3, help="utterances per speaker")
    p.add_argument("--backends", nargs="+", choices=["local", "stt-serve", "stt-serve-batched", "wyoming"],
                   help="instead: compare STT backends on the same clips (local must come first: it is the reference)")
    p.add_argument("--clients", type=int, default=6, help="concurrent clients in the throughput part of --backends")
    p.add_argument("--out", default="bench-out/bench_stt.json")
    args = p.parse_args()
    trio.run(compare_backends if args.backends else main_async, args)


if __name__ == "__main__":
    main()
