#!/usr/bin/env python3
"""STT: accuracy and latency, VoxBridge's pipeline against bare faster-whisper and the old design.

Two parts (`--part accuracy|latency|all`), each printing a table and writing JSON
(bench-out/bench_stt.json); nothing about time is asserted.

accuracy: word error rate and decode time per decoding configuration (beam 1 vs 5, with and
  without the temperature fallback / best_of, and faster-whisper's own defaults) on speech we
  synthesize: Piper questions in several voices (length_scale / noise_scale / noise_w varied),
  clean and mixed with white noise at 10 and 0 dB SNR. Decodes run one at a time on the same
  model; the reference is the text each clip was made from.

latency: 1, 3 and 8 concurrent speakers in real time (>= 30 utterances per point, repeated),
  latency = true end of speech (last VAD window >= threshold in the fed audio) -> transcript
  ready, for:
    voxbridge      the pipeline as configured (decode workers, early transcription on spare capacity)
    voxbridge bN   the same with beam N (--beams; at 1 speaker: the default's latency check)
    fair-lock      the same pipeline with one decode worker (one transcription at a time)
    old design     one speaker at a time, others dropped while someone holds the lock, no early
                   decoding, one worker (the served fraction is reported)
    raw            bare faster-whisper on the same model and the same number of workers, each clip
                   submitted at its true end of speech (an oracle end-pointer, no VAD delay), with
                   VoxBridge's decode options, and with faster-whisper's own defaults
  plus decode work per turn (decodes run / turns) and throughput (speech s per wall s, audio fed
  as fast as taken) against raw at the same parallelism. Every ratio is printed.

  .venv/bin/python scripts/bench_stt.py                   # both parts, full size (long)
  .venv/bin/python scripts/bench_stt.py --quick           # smoke test: small material, 1 repeat
  .venv/bin/python scripts/bench_stt.py --part accuracy   # just the WER table

`--backends local stt-serve wyoming` compares STT backends instead: the same clips in-process,
through `voxbridge stt-serve` (WebSocket) and through wyoming-faster-whisper (bundled tiny.en).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    QUESTIONS,
    ROOT,
    VOICES,
    build_stream,
    feed_realtime,
    loadavg,
    mark_true_ends,
    match_turns,
    pct,
    synthesize,
    wer,
    with_noise,
)

from voxbridge.agents.config import load_agents  # noqa: E402
from voxbridge.audio import STT_RATE  # noqa: E402
from voxbridge.audio.convert import resample, split_frames  # noqa: E402
from voxbridge.audio.vad import SileroSession  # noqa: E402
from voxbridge.config import load_settings  # noqa: E402
from voxbridge.core.channel import ChannelSession  # noqa: E402
from voxbridge.core.playback import CollectSink  # noqa: E402
from voxbridge.core.services import open_services  # noqa: E402
from voxbridge.sim.demo_agents import DemoAgents  # noqa: E402
from voxbridge.stt.local import LocalWhisper  # noqa: E402
from voxbridge.tts.piper import PiperTts  # noqa: E402

SENTENCES = [
    "Could you tell me what the weather will be like in Paris tomorrow afternoon?",
    (
        "Please remind me to call my sister when I get home from work tonight, "
        "and also remind me to water the plants before I go to bed."
    ),
    "What is the fastest way to get from the train station to the old harbour?",
    (
        "I would like to book a table for four people at seven o'clock on Friday evening, "
        "preferably near the window, and one of us is vegetarian."
    ),
    "Can you explain how a rainbow forms after a summer storm?",
    (
        "Tell me a short story about a dragon who is afraid of the dark, "
        "lives in a lighthouse by the sea, and makes friends with a small fishing boat."
    ),
    "How many kilometres is it from the earth to the moon, roughly?",
    (
        "Add milk, eggs, bread and two kilos of apples to my shopping list, "
        "and remove the orange juice because we still have plenty at home."
    ),
    "Which planet in our solar system has the most moons, and how many does it have?",
    "Turn the living room lights down to thirty percent and play some quiet jazz.",
    (
        "What should I cook for dinner if I only have rice, beans and tomatoes, "
        "and it needs to be ready in less than half an hour?"
    ),
    (
        "Summarise the main points of the meeting we had this morning about the budget for next year, "
        "and list who is responsible for each item."
    ),
]

FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's default temperature schedule
# name -> faster-whisper transcribe() options; "voxbridge" ones add VoxBridge's fixed options
DECODE_CONFIGS = {
    "beam 1, no fallback": dict(beam_size=1, temperature=0.0),
    "beam 1 + fallback (voxbridge b1)": dict(beam_size=1, temperature=FALLBACK),
    "beam 5, no fallback": dict(beam_size=5, temperature=0.0),
    "beam 5 + fallback, best_of 5 (voxbridge b5)": dict(beam_size=5, best_of=5, temperature=FALLBACK),
    "faster-whisper defaults": None,
}
VOXBRIDGE_FIXED = dict(vad_filter=False, condition_on_previous_text=False, without_timestamps=True)


def decode_bare(model, audio: np.ndarray, options: dict | None) -> str:
    """Bare faster-whisper: `options` None = its own defaults (language fixed to English)."""
    opts = {"language": "en"} if options is None else {"language": "en", **VOXBRIDGE_FIXED, **options}
    segments, _ = model.transcribe(audio, **opts)
    return " ".join(s.text.strip() for s in segments).strip()


# --- accuracy -------------------------------------------------------------------------------


def accuracy(model, material, configs) -> list[dict]:
    rows = []
    decode_bare(model, material[0]["audio"], {})  # warm-up
    for name in configs:
        opts = DECODE_CONFIGS[name]
        wers, times, cpu, by_snr = [], [], [], {}
        for m in material:
            t, c = time.perf_counter(), time.process_time()
            text = decode_bare(model, m["audio"], opts)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            w = wer(m["text"], text)
            wers.append(w)
            by_snr.setdefault(m["snr"], []).append(w)
        rows.append(
            {
                "config": name,
                "clips": len(material),
                "wer": statistics.mean(wers),
                "wer_by_snr": {str(k): statistics.mean(v) for k, v in by_snr.items()},
                "decode_p50_ms": pct(times, 50) * 1000,
                "decode_mean_ms": statistics.mean(times) * 1000,
                "cpu_p50_ms": pct(cpu, 50) * 1000,
                "cpu_p95_ms": pct(cpu, 95) * 1000,
            }
        )
    ref = (
        next(r for r in rows if r["config"] == "faster-whisper defaults")
        if "faster-whisper defaults" in configs
        else rows[0]
    )
    for r in rows:
        r["wer_minus_fw_defaults"] = r["wer"] - ref["wer"]
        r["decode_ratio_to_fw_defaults"] = r["decode_mean_ms"] / ref["decode_mean_ms"]
    return rows


def print_accuracy(rows, snrs):
    snr_names = ["clean" if s is None else f"{s:g} dB" for s in snrs]
    header = (
        f"{'decoding':<44} {'clips':>5} {'WER':>6} "
        + " ".join(f"{n:>7}" for n in snr_names)
        + f" {'dWER':>6} {'dec p50':>8} {'dec mean':>8} {'x fw':>5} {'cpu p50':>7} {'cpu p95':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['config']:<44} {r['clips']:>5} {r['wer']:>6.3f} "
            + " ".join(f"{r['wer_by_snr'][str(s)]:>7.3f}" for s in snrs)
            + f" {r['wer_minus_fw_defaults']:>+6.3f} {r['decode_p50_ms']:>8.0f} {r['decode_mean_ms']:>8.0f} "
            f"{r['decode_ratio_to_fw_defaults']:>5.2f} {r['cpu_p50_ms']:>7.0f} {r['cpu_p95_ms']:>7.0f}"
        )
    print(
        "WER per SNR column; dWER = WER minus faster-whisper's own defaults; dec = one decode at a time (ms, wall);"
        " x fw = decode time / faster-whisper defaults;\ncpu = CPU time of the decode (ms, all its threads: "
        "what it costs on an idle machine, whatever the load)"
    )


# --- latency --------------------------------------------------------------------------------


class OldLock:
    """The old design's global speaker lock: whoever starts speaking while it is free holds it
    until their transcript exists; everyone else's speech meanwhile is dropped."""

    def __init__(self):
        self.holder: str | None = None
        self.since = 0.0
        self.served = 0
        self.dropped = 0

    def transcribed(self, user: str) -> None:
        if self.holder == user:
            self.holder = None

    def admit(self, user: str, now: float) -> bool:
        if self.holder is not None and now - self.since > 15:  # nothing came out: give it up
            self.holder = None
        if self.holder in (None, user):
            self.holder, self.since = user, now
            self.served += 1
            return True
        self.dropped += 1
        return False


async def feed_gated(handle, stream, t0, lock: OldLock):
    """Real-time feed where an utterance started while another speaker holds the lock is silence."""
    from voxbridge.audio import FRAME_MS, SILENT_FRAME

    frames = split_frames(stream.pcm)
    starts = {int(u.start_s * 1000 / FRAME_MS): u for u in stream.utterances}
    ends = [int(u.start_s * 1000 / FRAME_MS) for u in stream.utterances[1:]] + [len(frames)]
    mute_until = -1
    for i, frame in enumerate(frames):
        await trio.sleep_until(t0 + i * FRAME_MS / 1000)
        if i in starts:
            u = starts[i]
            if not lock.admit(stream.name, trio.current_time()):
                u.text = ""  # not served
                mute_until = ends[stream.utterances.index(u)]
        handle.push(SILENT_FRAME if i < mute_until else frame)
    await handle.finish()


def make_streams(settings, clips, n, per_speaker, repeat, gap_s, vad_session):
    rng = np.random.default_rng(7919 * repeat + n)
    streams = []
    for i in range(n):
        voice = VOICES[i % len(VOICES)]
        texts = [QUESTIONS[(i * 5 + repeat * 3 + k) % len(QUESTIONS)] for k in range(per_speaker)]
        made = [clips(t, voice) for t in texts]
        stream = build_stream(
            f"s{i}",
            [(t, a, r) for t, (a, r) in zip(texts, made, strict=True)],
            lead_s=0.3 + (i * 0.41) % 3.0,
            gaps_s=list(rng.uniform(gap_s, gap_s + 0.6, per_speaker)),
            tail_s=settings.vad.silence_ms / 1000 + 1.0,
        )
        mark_true_ends(stream, settings.vad.threshold, vad_session)
        streams.append(stream)
    return streams


async def run_pipeline(
    settings, engine, agents_cfg, streams, *, old_lock: OldLock | None = None, realtime=True
) -> dict:
    played, transcribed = [], []

    def observe(kind, fields):
        if kind == "turn_played":
            played.append(fields)
        elif kind == "turn_transcribed":
            transcribed.append(fields)
            if old_lock is not None:
                old_lock.transcribed(fields["user"])

    before = dict(engine.stats)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            open_services(
                settings,
                agents=agents_cfg,
                stt=engine,
                tts=False,
                observer=observe,
                store_url=f"sqlite:///{tmp}/bench.db",
            ) as services,
            trio.open_nursery() as nursery,
        ):
            channel = await nursery.start(ChannelSession(services, "bench", "bench", CollectSink()).run)
            handles = [channel.add_speaker(s.name, s.name) for s in streams]
            t0 = trio.current_time() + 0.2
            async with trio.open_nursery() as feeders:
                for s, h in zip(streams, handles, strict=True):
                    if old_lock is not None:
                        feeders.start_soon(feed_gated, h, s, t0, old_lock)
                    elif realtime:
                        feeders.start_soon(feed_realtime, h, s.pcm, t0)
                    else:
                        feeders.start_soon(_feed_fast, h, s.pcm)
            for h in handles:
                await h.finished.wait()
            wall = trio.current_time() - t0
            turns = await services.store.list_turns(limit=100_000)
            channel.close()
    utts = [u for s in streams for u in s.utterances if u.text]
    pairs, missed = match_turns(utts, t0, played)
    lat = [(ev["ended_at"] - (t0 + u.true_end_s)) * 1000 + ev["timings"]["stt_ms"] for u, ev in pairs]
    texts = {t["id"]: t["transcript"] for t in turns}
    wers = [wer(u.text, texts.get(ev["turn"], "")) for u, ev in pairs] + [1.0] * len(missed)
    return {
        "latency_ms": lat,
        "turns": len(transcribed),
        "utterances": len(utts),
        "missed": len(missed),
        "early_used": sum(1 for _, ev in pairs if ev["timings"].get("early_decode")),
        "decodes": engine.stats["decodes"] - before.get("decodes", 0),
        "wall_s": wall,
        "wer": statistics.mean(wers) if wers else float("nan"),
    }


async def _feed_fast(handle, pcm):
    for frame in split_frames(pcm):
        await handle.send(frame)
    await handle.finish()


async def run_raw(model, workers, streams, options, realtime=True) -> dict:
    """Bare faster-whisper, `workers` decodes at once: each clip submitted at its true end of
    speech (real time), or all at once (throughput)."""
    limiter = trio.CapacityLimiter(workers)
    lat, wers = [], []
    items = [u for s in streams for u in s.utterances]

    async def one(u, t0):
        if realtime:
            await trio.sleep_until(t0 + u.true_end_s)
        text = await trio.to_thread.run_sync(decode_bare, model, u.audio16k, options, limiter=limiter)
        lat.append((trio.current_time() - (t0 + u.true_end_s)) * 1000)
        wers.append(wer(u.text, text))

    t0 = trio.current_time() + 0.2
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for u in items:
            nursery.start_soon(one, u, t0)
    return {
        "latency_ms": lat,
        "wall_s": time.perf_counter() - start,
        "wer": statistics.mean(wers),
        "utterances": len(items),
        "turns": len(items),
        "decodes": len(items),
        "missed": 0,
        "early_used": 0,
    }


def summarize(design, n, runs, silence_ms):
    lat = [x for r in runs for x in r["latency_ms"]]
    utts = sum(r["utterances"] for r in runs)
    row = {
        "design": design,
        "speakers": n,
        "repeats": len(runs),
        "utterances": utts,
        "measured": len(lat),
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "max_ms": max(lat) if lat else float("nan"),
        "p50_beyond_silence_ms": pct(lat, 50) - silence_ms,
        "p50_per_repeat_ms": [pct(r["latency_ms"], 50) for r in runs],
        "decode_work_per_turn": sum(r["decodes"] for r in runs) / max(1, sum(r["turns"] for r in runs)),
        "early_used": sum(r["early_used"] for r in runs),
        "wer": statistics.mean([r["wer"] for r in runs]),
        "load": [r.get("load") for r in runs],
    }
    if "served" in runs[0]:
        row["served_fraction"] = sum(r["served"] for r in runs) / max(1, sum(r["served"] + r["dropped"] for r in runs))
    return row


async def latency(args, base, model_engine, clips, vad_session) -> tuple[list[dict], list[dict]]:
    demo = DemoAgents(token_delay_s=0)
    rows, tput = [], []
    async with trio.open_nursery() as root:
        await root.start(demo.serve)
        agents_cfg = demo.answer_for(load_agents(base.agents.file))
        workers = base.stt.max_concurrent_transcriptions
        fair = attrs.evolve(base, stt=attrs.evolve(base.stt, max_concurrent_transcriptions=1))
        old = attrs.evolve(fair, vad=attrs.evolve(base.vad, early_ms=0))
        engines = {"voxbridge": (base, model_engine)}
        for b in args.beams:
            if b != base.stt.beam_size:
                s = attrs.evolve(base, stt=attrs.evolve(base.stt, beam_size=b))
                e = LocalWhisper(s.stt)
                e.model = model_engine.model
                engines[f"voxbridge b{b}"] = (s, e)
        one = LocalWhisper(fair.stt)  # one worker: its own limiter of 1 (the model is shared)
        one.model = model_engine.model
        one_old = LocalWhisper(old.stt)
        one_old.model = model_engine.model
        vox_opts = dict(beam_size=base.stt.beam_size)
        for n in args.speakers:
            per_speaker = math.ceil(args.utterances / n)
            runs: dict[str, list] = {}
            for rep in range(args.repeats):
                streams = await trio.to_thread.run_sync(
                    make_streams, base, clips, n, per_speaker, rep, args.gap_s, vad_session
                )
                for s in streams:
                    for u in s.utterances:
                        u.audio16k = _clip16k(clips, u, s)
                plan = [
                    (name, st, en, None)
                    for name, (st, en) in engines.items()
                    if name == "voxbridge" or n == 1 or args.beams_all
                ]
                plan += [("fair-lock", fair, one, None), ("old design", old, one_old, OldLock())]
                for name, st, en, lock in plan:
                    print(f"{name}: {n} speaker(s), repeat {rep + 1}: {loadavg()}", file=sys.stderr)
                    fresh = [attrs.evolve(s, utterances=[attrs.evolve(u) for u in s.utterances]) for s in streams]
                    r = await run_pipeline(st, en, agents_cfg, fresh, old_lock=lock)
                    r["load"] = loadavg()
                    if lock is not None:
                        r["served"], r["dropped"] = lock.served, lock.dropped
                    runs.setdefault(name, []).append(r)
                for name, opts in (("raw (voxbridge options)", vox_opts), ("raw (faster-whisper defaults)", None)):
                    print(f"{name}: {n} speaker(s), repeat {rep + 1}: {loadavg()}", file=sys.stderr)
                    r = await run_raw(model_engine.model, workers, streams, opts)
                    r["load"] = loadavg()
                    runs.setdefault(name, []).append(r)
            for name, rr in runs.items():
                rows.append(summarize(name, n, rr, base.vad.silence_ms))
            if args.throughput:
                streams = await trio.to_thread.run_sync(
                    make_streams, base, clips, n, per_speaker, 0, args.gap_s, vad_session
                )
                for s in streams:
                    for u in s.utterances:
                        u.audio16k = _clip16k(clips, u, s)
                speech_s = sum(len(u.audio16k) for s in streams for u in s.utterances) / STT_RATE
                fast = await run_pipeline(base, model_engine, agents_cfg, streams, realtime=False)
                raw = await run_raw(model_engine.model, workers, streams, vox_opts, realtime=False)
                tput.append(
                    {
                        "speakers": n,
                        "voxbridge_speech_s_per_s": speech_s / fast["wall_s"],
                        "raw_speech_s_per_s": speech_s / raw["wall_s"],
                        "ratio": (speech_s / fast["wall_s"]) / (speech_s / raw["wall_s"]),
                        "workers": workers,
                    }
                )
        root.cancel_scope.cancel()
    return rows, tput


def _clip16k(clips, u, stream):
    voice = VOICES[int(stream.name[1:]) % len(VOICES)]
    audio, rate = clips(u.text, voice)
    return resample(audio, rate, STT_RATE)


def print_latency(rows, tput, silence_ms):
    refs = {(r["design"], r["speakers"]): r for r in rows}
    header = (
        f"{'design':<31} {'spk':>3} {'utt':>4} {'served':>6} {'p50':>6} {'p95':>6} {'max':>6} {'>sil':>5} "
        f"{'x vox':>6} {'x raw':>6} {'dec/turn':>8} {'early':>5} {'WER':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        vox = refs.get(("voxbridge", r["speakers"]))
        raw = refs.get(("raw (voxbridge options)", r["speakers"]))
        r["p50_ratio_to_voxbridge"] = r["p50_ms"] / vox["p50_ms"] if vox else float("nan")
        r["p50_ratio_to_raw"] = r["p50_ms"] / raw["p50_ms"] if raw else float("nan")
        served = f"{r['served_fraction']:.2f}" if "served_fraction" in r else "1.00" if r["measured"] else "-"
        print(
            f"{r['design']:<31} {r['speakers']:>3} {r['utterances']:>4} {served:>6} "
            f"{r['p50_ms']:>6.0f} {r['p95_ms']:>6.0f} "
            f"{r['max_ms']:>6.0f} {r['p50_beyond_silence_ms']:>5.0f} {r['p50_ratio_to_voxbridge']:>6.2f} "
            f"{r['p50_ratio_to_raw']:>6.2f} {r['decode_work_per_turn']:>8.2f} {r['early_used']:>5} {r['wer']:>5.2f}"
        )
    print(
        "latency (ms): true end of speech -> transcript ready, real time; "
        f">sil = p50 minus the {silence_ms} ms silence threshold (target <= 50 at 1 speaker);\n"
        "x vox / x raw = p50 ratio to voxbridge / to raw (voxbridge options) at the same speakers; "
        "raw submits each clip at its true end (no VAD wait)"
    )
    for r in rows:
        print(
            f"  {r['design']}, {r['speakers']} spk: "
            f"p50 per repeat {', '.join(f'{v:.0f}' for v in r['p50_per_repeat_ms'])}"
        )
    for t in tput:
        print(
            f"throughput {t['speakers']} spk: voxbridge {t['voxbridge_speech_s_per_s']:.2f} speech s/s, raw at "
            f"{t['workers']} workers {t['raw_speech_s_per_s']:.2f}, ratio {t['ratio']:.2f}"
        )


async def main_async(args):
    base = load_settings(env={})
    stt_over = {k: v for k, v in (("device", args.device), ("model", args.model)) if v}
    base = attrs.evolve(
        base,
        stt=attrs.evolve(base.stt, **stt_over),
        agents=attrs.evolve(base.agents, file=str(ROOT / "agents.toml")),
        conversation=attrs.evolve(base.conversation, addressed_above_humans=0),
    )
    print("loading models...", file=sys.stderr)
    piper = PiperTts(base.tts)
    await piper.load()
    cache = {}

    def clips(text, voice):
        key = (text, voice[0])
        if key not in cache:
            cache[key] = synthesize(piper, text, voice)
        return cache[key]

    engine = LocalWhisper(base.stt)
    await engine.load()
    out = {
        "machine": {
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
            "device": engine.device,
            "compute_type": engine.compute_type,
            "model": base.stt.model or "tiny.en (bundled)",
        },
        "settings": {
            "beam_size": base.stt.beam_size,
            "workers": base.stt.max_concurrent_transcriptions,
            "silence_ms": base.vad.silence_ms,
            "early_ms": base.vad.early_ms,
        },
    }
    if args.part in ("accuracy", "all"):
        questions = QUESTIONS[: args.questions]
        voices = VOICES[: args.voices]
        snrs = [None, 10.0, 0.0]
        print(
            f"accuracy: {len(questions)} questions x {len(voices)} voices x {len(snrs)} noise levels; {loadavg()}",
            file=sys.stderr,
        )
        material = []
        for qi, q in enumerate(questions):
            for vi, v in enumerate(voices):
                audio, rate = await trio.to_thread.run_sync(clips, q, v)
                a16 = resample(audio, rate, STT_RATE)
                for snr in snrs:
                    material.append(
                        {"text": q, "voice": v[0], "snr": snr, "audio": with_noise(a16, snr, seed=qi * 31 + vi)}
                    )
        rows = await trio.to_thread.run_sync(accuracy, engine.model, material, list(DECODE_CONFIGS))
        out["accuracy"] = {"load": loadavg(), "rows": rows}
        print(f"\n{out['accuracy']['load']}")
        print_accuracy(rows, snrs)
    if args.part in ("latency", "all"):
        vad_session = SileroSession()
        rows, tput = await latency(args, base, engine, clips, vad_session)
        out["latency"] = {"rows": rows, "throughput": tput}
        print()
        print_latency(rows, tput, base.vad.silence_ms)
    path = Path(args.out)
    await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(path.write_text, json.dumps(out, indent=2, default=str))
    print(f"\nJSON: {path}")


async def compare_backends(args):
    """The same clips through each STT backend: per-request latency (one client, sequential) and
    throughput (--clients concurrent clients), as ratios to the in-process engine, in one run."""
    import socket
    import subprocess

    from voxbridge.stt.local import bundled_model_path
    from voxbridge.stt.remote import WebsocketStt, WyomingStt
    from voxbridge.stt.serve import serve

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
            _, ports = await nursery.start(
                lambda task_status: serve(base, ws_port=0, wyoming_port=None, engine=served, task_status=task_status)
            )
            engines["stt-serve (websocket)"] = WebsocketStt(
                attrs.evolve(base.stt, backend="websocket", endpoints=(f"ws://127.0.0.1:{ports['websocket']}",))
            )
        if "stt-serve-batched" in args.backends:
            batched = LocalWhisper(base.stt)
            await batched.load()
            _, bports = await nursery.start(
                lambda task_status: serve(
                    base, ws_port=0, wyoming_port=None, engine=batched, batch=True, task_status=task_status
                )
            )
            engines["stt-serve batched"] = WebsocketStt(
                attrs.evolve(base.stt, backend="websocket", endpoints=(f"ws://127.0.0.1:{bports['websocket']}",))
            )
        if "wyoming" in args.backends:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            import tempfile

            data = tempfile.mkdtemp()
            cmd = [
                sys.executable,
                "-m",
                "wyoming_faster_whisper",
                "--uri",
                f"tcp://127.0.0.1:{port}",
                "--model",
                str(bundled_model_path()),
                "--data-dir",
                data,
                "--language",
                "en",
                "--local-files-only",
                "--beam-size",
                "1",
            ]
            procs.append(
                await trio.to_thread.run_sync(
                    lambda: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            )
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await trio.sleep(0.1)
            engines["wyoming-faster-whisper"] = WyomingStt(
                attrs.evolve(base.stt, backend="wyoming", endpoints=(f"tcp://127.0.0.1:{port}",))
            )
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
                        clients.start_soon(client, engine, clips[c :: args.clients] * 2)
                wall = time.perf_counter() - t0
                speech_s = 2 * sum(len(c) for c in clips) / STT_RATE
                rows.append(
                    {
                        "backend": name,
                        "n": len(clips),
                        "latency_p50_ms": pct(lat, 50),
                        "latency_p95_ms": pct(lat, 95),
                        "throughput_speech_s_per_s": speech_s / wall,
                        "wer": statistics.mean(wers),
                    }
                )
        finally:
            for proc in procs:
                proc.kill()
        nursery.cancel_scope.cancel()
    ref = rows[0]
    header = (
        f"{'backend':<24} {'n':>3} {'p50 ms':>7} {'p95 ms':>7} {'p50 x local':>11} {'tput s/s':>8} "
        f"{'tput x local':>12} {'WER':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        r["p50_ratio"] = r["latency_p50_ms"] / ref["latency_p50_ms"]
        r["throughput_ratio"] = r["throughput_speech_s_per_s"] / ref["throughput_speech_s_per_s"]
        print(
            f"{r['backend']:<24} {r['n']:>3} {r['latency_p50_ms']:>7.0f} {r['latency_p95_ms']:>7.0f} "
            f"{r['p50_ratio']:>11.2f} "
            f"{r['throughput_speech_s_per_s']:>8.2f} {r['throughput_ratio']:>12.2f} {r['wer']:>5.2f}"
        )
    print(
        f"\nlatency: one request at a time (clip sent -> transcript); throughput: {args.clients} concurrent clients, "
        "each clip twice, speech s per wall s"
    )
    out = Path(args.out.replace(".json", "_backends.json"))
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(out.write_text, json.dumps(rows, indent=2))
    print(f"\nJSON: {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["accuracy", "latency", "all"], default="all")
    p.add_argument("--speakers", type=int, nargs="+", default=[1, 3, 8])
    p.add_argument("--utterances", type=int, default=30, help="utterances per point (spread over the speakers)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gap-s", type=float, default=1.2, help="silence after each utterance: this to this + 0.6 s")
    p.add_argument(
        "--beams", type=int, nargs="*", default=[1, 5], help="beam sizes compared in the pipeline (1 speaker)"
    )
    p.add_argument("--beams-all", action="store_true", help="compare the beams at every speaker count")
    p.add_argument("--no-throughput", dest="throughput", action="store_false")
    p.add_argument("--questions", type=int, default=len(QUESTIONS), help="accuracy: questions used")
    p.add_argument("--voices", type=int, default=len(VOICES), help="accuracy: voices used")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--model", help="STT model (default: the bundled tiny.en)")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 questions x 2 voices, 8 utterances, 1 repeat")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=["local", "stt-serve", "stt-serve-batched", "wyoming"],
        help="instead: compare STT backends on the same clips (local must come first: it is the reference)",
    )
    p.add_argument("--clients", type=int, default=6, help="concurrent clients in the throughput part of --backends")
    p.add_argument("--out", default="bench-out/bench_stt.json")
    args = p.parse_args()
    if args.quick:
        args.questions, args.voices, args.utterances, args.repeats = 4, 2, 8, 1
    trio.run(compare_backends if args.backends else main_async, args)


if __name__ == "__main__":
    main()
