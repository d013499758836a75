#!/usr/bin/env python3
"""Voice to voice, the headline: from the moment a person stops speaking to the bot's first frame.

For 1, 3 and 8 concurrent speakers, each in their own voice channel, speaking Piper-made
questions (several voices) in real time with pauses between them, through the whole daemon
pipeline (Silero VAD, early transcription with the real STT model, SQLite store, routing, an
n8n-style streaming agent on loopback that answers instantly, Piper TTS, playback):

  voice-to-voice = true end of speech -> first frame of the answer handed to the channel's output

The true end of speech is the end of the last 32 ms window of the fed audio whose VAD speech
probability is at or above the threshold (scripts/bench_common.py). Each turn is split into
stages (ms): vad (true end -> utterance cut: the silence threshold plus detection), stt
(cut -> transcript ready; 0 when the early decode finished first), route (transcript -> request
sent: store, admission, routing), agent (request -> first byte), clause (first byte -> first
clause), tts (first clause -> its audio), frame (audio -> first frame handed to the output).
Also: decode work per turn (decodes run / turns; 1.0 = no speculative work wasted) and
first clause -> first frame minus that clause's synthesis (+ conversion to 48 kHz stereo) in its
worker, i.e. what the pipeline adds around synthesis.

>= 30 utterances per point, 3 repeats, the load average printed before each. Barge-in is off
(a speaker's next question would otherwise cut an answer still waiting to play) and the
output is a collecting sink (frames are taken as fast as they come). Prints a table, writes JSON
(bench-out/bench_voice.json); asserts nothing about time.

  .venv/bin/python scripts/bench_voice.py                  # 1, 3, 8 speakers, 30 utterances, 3 repeats
  .venv/bin/python scripts/bench_voice.py --quick          # smoke test: 6 utterances, 1 repeat
  .venv/bin/python scripts/bench_voice.py --device cuda --model small.en --speakers 32 --batch
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import attrs
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    QUESTIONS,
    ROOT,
    VOICES,
    TimedTts,
    build_stream,
    feed_realtime,
    loadavg,
    mark_true_ends,
    match_turns,
    pct,
    synthesize,
)

from voxbridge.agents.config import load_agents  # noqa: E402
from voxbridge.audio.vad import SileroSession  # noqa: E402
from voxbridge.config import load_settings  # noqa: E402
from voxbridge.core.channel import ChannelSession  # noqa: E402
from voxbridge.core.playback import CollectSink  # noqa: E402
from voxbridge.core.services import open_services  # noqa: E402
from voxbridge.sim.demo_agents import DemoAgents  # noqa: E402
from voxbridge.stt.local import LocalWhisper  # noqa: E402
from voxbridge.tts.piper import PiperTts  # noqa: E402

STAGES = ("vad", "stt", "route", "agent", "clause", "tts", "frame")


def stages_of(true_end_abs: float, ev: dict) -> dict | None:
    t = ev["timings"]
    need = (
        "stt_ms",
        "agent_request_ms",
        "agent_first_byte_ms",
        "first_clause_ms",
        "tts_first_audio_ms",
        "first_frame_ms",
    )
    if any(k not in t for k in need):
        return None
    vad = (ev["ended_at"] - true_end_abs) * 1000
    return {
        "v2v": vad + t["first_frame_ms"],
        "vad": vad,
        "stt": t["stt_ms"],
        "route": t["agent_request_ms"] - t["stt_ms"],
        "agent": t["agent_first_byte_ms"] - t["agent_request_ms"],
        "clause": t["first_clause_ms"] - t["agent_first_byte_ms"],
        "tts": t["tts_first_audio_ms"] - t["first_clause_ms"],
        "frame": t["first_frame_ms"] - t["tts_first_audio_ms"],
        "clause_to_frame": t["first_frame_ms"] - t["first_clause_ms"],
        "clause_to_frame_minus_synth": t["first_frame_ms"] - t["first_clause_ms"] - t.get("tts_first_synth_ms", 0),
        "early": bool(t.get("early_decode")),
    }


class Clips:
    """Piper speech per (question, voice), made once."""

    def __init__(self, piper):
        self.piper = piper
        self.cache = {}

    def get(self, text, voice):
        key = (text, voice[0])
        if key not in self.cache:
            self.cache[key] = synthesize(self.piper, text, voice)
        return self.cache[key]


async def one_run(args, settings, engine, tts, agents_cfg, clips, n: int, repeat: int, vad_session) -> dict:
    per_speaker = math.ceil(args.utterances / n)
    rng = np.random.default_rng(1000 * repeat + n)
    streams = []
    for i in range(n):
        voice = VOICES[i % len(VOICES)]
        texts = [QUESTIONS[(i * 5 + repeat * 3 + k) % len(QUESTIONS)] for k in range(per_speaker)]
        made = [await trio.to_thread.run_sync(clips.get, t, voice) for t in texts]
        gaps = list(rng.uniform(args.gap_s, args.gap_s + 1.0, per_speaker))
        stream = build_stream(
            f"s{i}",
            [(t, a, r) for t, (a, r) in zip(texts, made, strict=True)],
            lead_s=0.3 + (i * 0.37) % 3.0,
            gaps_s=gaps,
            tail_s=settings.vad.silence_ms / 1000 + 1.0,
        )
        await trio.to_thread.run_sync(mark_true_ends, stream, settings.vad.threshold, vad_session)
        streams.append(stream)
    played = []

    def observe(kind, fields):
        if kind == "turn_played":
            played.append(fields)

    decodes_before = dict(getattr(engine, "stats", {}))
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            open_services(
                settings,
                agents=agents_cfg,
                stt=engine,
                tts=tts,
                observer=observe,
                store_url=f"sqlite:///{tmp}/bench.db",
            ) as services,
            trio.open_nursery() as nursery,
        ):
            handles = []
            for s in streams:
                channel = await nursery.start(ChannelSession(services, f"g-{s.name}", f"c-{s.name}", CollectSink()).run)
                handles.append((channel, channel.add_speaker(s.name, s.name)))
            t0 = trio.current_time() + 0.2
            async with trio.open_nursery() as feeders:
                for s, (_, h) in zip(streams, handles, strict=True):
                    feeders.start_soon(feed_realtime, h, s.pcm, t0)
            for channel, h in handles:
                await h.finished.wait()
                await channel.playback.wait_idle()
                channel.close()
            counters = dict(services.metrics.counts())
    utts = [u for s in streams for u in s.utterances]
    pairs, missed = match_turns(utts, t0, played)
    rows = [r for u, ev in pairs if (r := stages_of(t0 + u.true_end_s, ev)) is not None]
    stats = getattr(engine, "stats", {})
    decodes = stats.get("decodes", 0) - decodes_before.get("decodes", 0)
    return {
        "speakers": n,
        "repeat": repeat,
        "utterances": len(utts),
        "turns": len(played),
        "measured": len(rows),
        "missed": len(missed),
        "decodes": decodes,
        "decode_s": stats.get("decode_s", 0) - decodes_before.get("decode_s", 0),
        "wasted_s": stats.get("wasted_s", 0) - decodes_before.get("wasted_s", 0),
        "frames_dropped": counters.get("frames_dropped", 0),
        "rows": rows,
    }


def summarize(runs: list[dict]) -> dict:
    rows = [r for run in runs for r in run["rows"]]
    out = {
        "speakers": runs[0]["speakers"],
        "repeats": len(runs),
        "utterances": sum(r["utterances"] for r in runs),
        "measured": len(rows),
        "missed": sum(r["missed"] for r in runs),
        "decode_work_per_turn": sum(r["decodes"] for r in runs) / max(1, sum(r["turns"] for r in runs)),
        "wasted_decode_s": round(sum(r["wasted_s"] for r in runs), 3),
        "early_used": sum(r["early"] for r in rows),
        "v2v_p50_ms": pct([r["v2v"] for r in rows], 50),
        "v2v_p95_ms": pct([r["v2v"] for r in rows], 95),
        "v2v_max_ms": max((r["v2v"] for r in rows), default=float("nan")),
        "v2v_p50_per_repeat_ms": [pct([r["v2v"] for r in run["rows"]], 50) for run in runs],
        "clause_to_frame_p50_ms": pct([r["clause_to_frame"] for r in rows], 50),
        "clause_to_frame_minus_synth_p50_ms": pct([r["clause_to_frame_minus_synth"] for r in rows], 50),
        "clause_to_frame_minus_synth_max_ms": max(
            (r["clause_to_frame_minus_synth"] for r in rows), default=float("nan")
        ),
        "load": [r["load"] for r in runs],
    }
    for st in STAGES:
        out[f"{st}_p50_ms"] = pct([r[st] for r in rows], 50)
        out[f"{st}_p95_ms"] = pct([r[st] for r in rows], 95)
    return out


async def main_async(args):
    base = load_settings(env={})
    stt_over = {}
    if args.device:
        stt_over["device"] = args.device
    if args.model:
        stt_over["model"] = args.model
    if args.workers:
        stt_over["max_concurrent_transcriptions"] = args.workers
    settings = attrs.evolve(
        base,
        stt=attrs.evolve(base.stt, **stt_over),
        agents=attrs.evolve(base.agents, file=str(ROOT / "agents.toml")),
        playback=attrs.evolve(base.playback, barge_in=False),
        conversation=attrs.evolve(base.conversation, addressed_above_humans=0, thinking_cue=False),
    )
    print("loading models...", file=sys.stderr)
    piper = PiperTts(settings.tts)
    await piper.load()
    clips = Clips(piper)
    engine = LocalWhisper(settings.stt)
    await engine.load()
    tts = TimedTts(piper)
    vad_session = SileroSession()
    demo = DemoAgents(token_delay_s=0)  # answers instantly, streaming like n8n
    summaries, runs_all = [], []
    async with trio.open_nursery() as root:
        await root.start(demo.serve)
        agents_cfg = demo.answer_for(load_agents(settings.agents.file))
        stt = engine
        if args.batch:
            from voxbridge.stt.batching import BatchingStt

            batched = BatchingStt(engine)
            await root.start(batched.run)
            stt = _BatchedView(batched, engine)
        early_variants = args.early_ms or [settings.vad.early_ms]
        for n in args.speakers:
            runs: dict[int, list] = {e: [] for e in early_variants}
            for rep in range(args.repeats):
                for early_ms in early_variants:  # interleaved per repeat: this machine drifts
                    variant = attrs.evolve(settings, vad=attrs.evolve(settings.vad, early_ms=early_ms))
                    load = loadavg()
                    print(
                        f"{n} speaker(s), early_ms {early_ms}, repeat {rep + 1}/{args.repeats}: {load}",
                        file=sys.stderr,
                    )
                    run = await one_run(args, variant, stt, tts, agents_cfg, clips, n, rep, vad_session)
                    run["load"], run["early_ms"] = load, early_ms
                    runs[early_ms].append(run)
                    print(
                        f"  measured {len(run['rows'])}/{run['utterances']} utterances, decodes {run['decodes']} "
                        f"for {run['turns']} turns",
                        file=sys.stderr,
                    )
            for early_ms in early_variants:
                summaries.append({"early_ms": early_ms, **summarize(runs[early_ms])})
                runs_all += runs[early_ms]
        root.cancel_scope.cancel()

    print(
        "\nvoice to voice (ms): true end of speech -> first frame of the answer; "
        f"{engine.device}/{engine.compute_type}, model {settings.stt.model or 'tiny.en (bundled)'}, "
        f"{settings.stt.max_concurrent_transcriptions} decode worker(s)" + (", batched" if args.batch else "")
    )
    header = (
        f"{'spk':>3} {'early':>5} {'n':>4} {'p50':>6} {'p95':>6} {'max':>6} | "
        + " ".join(f"{s:>6}" for s in STAGES)
        + f" | {'dec/turn':>8} {'used':>5} {'cl->fr-syn':>10}"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        print(
            f"{s['speakers']:>3} {s['early_ms']:>5} {s['measured']:>4} {s['v2v_p50_ms']:>6.0f} {s['v2v_p95_ms']:>6.0f} "
            f"{s['v2v_max_ms']:>6.0f} | "
            + " ".join(f"{s[f'{st}_p50_ms']:>6.0f}" for st in STAGES)
            + f" | {s['decode_work_per_turn']:>8.2f} {s['early_used']:>5} "
            f"{s['clause_to_frame_minus_synth_p50_ms']:>10.1f}"
        )
    print(
        "\nearly = [vad].early_ms (the silence after which the early decode starts); stages are p50s;\n"
        "dec/turn = decodes run per turn (1.00 = no wasted speculative work); used = turns the early decode served;\n"
        "cl->fr-syn = first clause -> first frame minus its synthesis + conversion in the worker (p50)"
    )
    for s in summaries:
        print(
            f"  {s['speakers']} speaker(s), early_ms {s['early_ms']}: "
            f"v2v p50 per repeat {', '.join(f'{v:.0f}' for v in s['v2v_p50_per_repeat_ms'])} ms; "
            f"missed {s['missed']}/{s['utterances']}; "
            f"first clause->first frame p50 {s['clause_to_frame_p50_ms']:.0f} ms, "
            f"minus synthesis max {s['clause_to_frame_minus_synth_max_ms']:.0f} ms; loads: {'; '.join(s['load'])}"
        )
    if tts.synth_s:
        print(
            f"  Piper synthesis per clause (in its worker): p50 {pct(tts.synth_s, 50) * 1000:.0f} ms "
            f"over {len(tts.synth_s)} clauses"
        )
    out = Path(args.out)
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(
        out.write_text,
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count(),
                    "device": engine.device,
                    "compute_type": engine.compute_type,
                },
                "settings": {
                    "model": settings.stt.model or "tiny.en (bundled)",
                    "batch": args.batch,
                    "workers": settings.stt.max_concurrent_transcriptions,
                    "beam_size": settings.stt.beam_size,
                    "silence_ms": settings.vad.silence_ms,
                    "early_ms": early_variants,
                },
                "summaries": summaries,
                "runs": runs_all,
            },
            indent=2,
        ),
    )
    print(f"\nJSON: {out}")


class _BatchedView:
    """The batching wrapper, with the inner engine's limiter and decode counters visible."""

    def __init__(self, batched, engine):
        self._batched = batched
        self._engine = engine
        self.name = batched.name
        self.limiter = engine.limiter

    @property
    def stats(self) -> dict:
        s = dict(self._engine.stats)
        s["decodes"] += self._batched.stats["batched_requests"]  # each utterance in a batch: one decode
        return s

    async def transcribe(self, *args, **kwargs):
        return await self._batched.transcribe(*args, **kwargs)

    async def aclose(self):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", type=int, nargs="+", default=[1, 3, 8])
    p.add_argument("--utterances", type=int, default=30, help="utterances per point (spread over the speakers)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gap-s", type=float, default=2.0, help="silence after each utterance: this to this + 1 s")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="STT device (default: the config's)")
    p.add_argument("--model", help="STT model (default: the bundled tiny.en), e.g. small.en")
    p.add_argument("--workers", type=int, help="decode workers (default: the config's max_concurrent_transcriptions)")
    p.add_argument(
        "--batch", action="store_true", help="batch decodes across speakers (as `voxbridge stt-serve --batch`)"
    )
    p.add_argument(
        "--early-ms",
        type=int,
        nargs="+",
        help="[vad].early_ms variants, run side by side (default: the config's); each >= tail_ms, < silence_ms",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 6 utterances per point, 1 repeat")
    p.add_argument("--out", default="bench-out/bench_voice.json")
    args = p.parse_args()
    if args.quick:
        args.utterances, args.repeats = min(args.utterances, 6), 1
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
