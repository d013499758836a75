"""`voxbridge` command line: run, simulate, say, transcribe, check, config."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import trio

from .config import explain, load_settings
from .errors import ConfigError, VoxBridgeError
from .logs import setup_logging


def _settings(args):
    path = args.config or os.environ.get("VOXBRIDGE_CONFIG") or None
    settings = load_settings(path)
    if getattr(args, "agents", None):
        import attrs

        settings = attrs.evolve(settings, agents=attrs.evolve(settings.agents, file=args.agents))
    return settings


def cmd_simulate(args) -> int:
    from .sim.simulate import DEFAULT_SCENARIO, parse_line, simulate

    settings = _settings(args)
    if args.no_tts:
        import attrs

        settings = attrs.evolve(settings, tts=attrs.evolve(settings.tts, backend="none"))
    lines = [parse_line(s, "say") for s in args.say or []] + [parse_line(s, "wav") for s in args.wav or []]
    if not lines:
        lines = [parse_line(s, "say") for s in DEFAULT_SCENARIO]
        print("No --say/--wav given: simulating three overlapping speakers.", file=sys.stderr)
    out = Path(args.out)
    t0 = time.monotonic()
    if args.mirror:
        import attrs

        settings = attrs.evolve(settings, conversation=attrs.evolve(settings.conversation, mirror=True))
    result = trio.run(
        lambda: simulate(
            settings,
            lines,
            out_dir=out,
            fast=args.fast,
            demo_agents=args.demo_agents,
            store_url=args.store,
            quiet=args.quiet,
            progress=not args.no_progress,
            mode=args.mode,
        )
    )
    if not args.no_progress and sys.stderr.isatty():
        print(file=sys.stderr)
    statuses: dict[str, int] = {}
    for t in result.turns:
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
    print(
        f"\n{len(result.turns)} turns ({', '.join(f'{v} {k}' for k, v in statuses.items()) or 'none'}) "
        f"in {time.monotonic() - t0:.1f}s; {len(result.played)} answers played"
    )
    print(f"channel audio: {result.out_wav}\nlog:           {result.log_json}")
    failed = statuses.get("failed", 0)
    return 1 if failed and args.strict else 0


def cmd_run(args) -> int:
    import signal

    # A SIGHUP (systemctl reload) while the daemon imports and loads must not kill it (exit 129);
    # the daemon's own handling starts once it runs (Daemon.on_signal).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = _settings(args)
    if args.no_discord or not settings.daemon.discord:
        from .daemon import run_local

        return run_local(settings)
    from .discord.adapter import run_daemon

    return run_daemon(settings)


def cmd_stt_serve(args) -> int:
    import functools

    from .stt.serve import serve

    settings = _settings(args)
    trio.run(
        functools.partial(
            serve,
            settings,
            host=args.host,
            ws_port=args.port,
            wyoming_port=None if args.wyoming_port < 0 else args.wyoming_port,
            batch=args.batch,
        )
    )
    return 0


TRANSCRIBE_CHUNK_S = 30.0  # Whisper's own window: a file is decoded piece by piece, in bounded memory
DIGITAL_SILENCE = 1e-4  # peak below -80 dBFS: nothing to decode (Whisper would invent "you")


def _next_piece(reader, carry):
    """The next <= 30 s of a file, cut at its quietest 100 ms within the last 5 s (not mid-word);
    returns (piece, carry-over, at_end)."""
    import numpy as np

    rate = reader.rate
    need = max(0, int(TRANSCRIBE_CHUNK_S * rate) - carry.size)
    fresh = reader.frames(need)
    x = np.concatenate([carry, fresh]) if carry.size else fresh
    at_end = fresh.size < need
    if at_end or x.size < 10 * rate:
        return x, np.zeros(0, np.float32), at_end
    win = max(1, rate // 10)
    tail = x[-5 * rate :]
    n = tail.size // win
    energy = (tail[: n * win].reshape(n, win) ** 2).mean(axis=1)
    cut = x.size - tail.size + int(np.argmin(energy)) * win + win // 2
    return x[:cut], x[cut:], False


async def _transcribe_file(engine, path: str) -> None:
    import numpy as np

    from .audio import STT_RATE
    from .audio.convert import resample
    from .audio.wav import WavReader

    reader = await trio.to_thread.run_sync(WavReader, path)
    texts, reasons, confidences = [], [], []
    audio_s = decode_s = 0.0
    language = ""
    try:
        carry = np.zeros(0, np.float32)
        at_end = False
        while not at_end:
            piece, carry, at_end = await trio.to_thread.run_sync(_next_piece, reader, carry)
            if not piece.size:
                continue
            audio_s += piece.size / reader.rate
            if float(np.max(np.abs(piece))) < DIGITAL_SILENCE:
                reasons.append("silence")
                continue
            audio = await trio.to_thread.run_sync(resample, piece, reader.rate, STT_RATE)
            t0 = time.perf_counter()
            tr = await engine.transcribe(audio)
            decode_s += time.perf_counter() - t0
            if tr.text:
                texts.append(tr.text)
                confidences.append(tr.confidence)
                language = tr.language
            else:
                reasons.append(tr.dropped or "empty")
    finally:
        reader.close()
    shown = " ".join(texts) if texts else f"<nothing: {', '.join(sorted(set(reasons))) or 'empty'}>"
    print(f"{path}: {shown}")
    confidence = f"{min(confidences):.2f}" if confidences else "-"
    print(
        f"  {audio_s:.2f}s audio, {decode_s:.2f}s to transcribe (x{audio_s / max(decode_s, 1e-6):.1f} real time), "
        f"language {language or '-'}, confidence {confidence}",
        file=sys.stderr,
    )


def cmd_transcribe(args) -> int:
    from .stt import create_stt

    settings = _settings(args)
    failed = []

    async def main():
        engine = await create_stt(settings)
        try:
            for path in args.files:
                try:
                    await _transcribe_file(engine, path)
                except (VoxBridgeError, OSError) as exc:  # one bad file does not stop the others
                    failed.append(path)
                    print(f"voxbridge: {exc}", file=sys.stderr)
        finally:
            await engine.aclose()

    trio.run(main)
    if failed:
        print(f"voxbridge: {len(failed)} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_check(args) -> int:
    from .agents.config import load_agents, redact_url
    from .words import keyword_problem

    settings = _settings(args)
    agents = load_agents(settings.agents.file)
    print(f"{args.config or 'settings'}: ok")
    r = agents.routing
    print(
        f"{agents.source}: ok (version {agents.version}); strategy {r.strategy}, default agent {r.default_agent!r}, "
        f"{len(agents.rules)} rule(s)"
    )
    for a in agents.agents:
        print(f"  agent {a.id:<16} {a.kind:<8} {redact_url(a.url)}  {a.name}")
    for rule in agents.rules:
        print(f"  rule  {rule.id:<16} priority {rule.priority:<4} -> {', '.join(rule.agents)}")
    for where, keywords in [
        *((f"agent {a.id}", a.keywords) for a in agents.agents),
        *((f"rule {r.id}", r.match.keywords) for r in agents.rules),
    ]:
        for k in keywords:
            if problem := keyword_problem(k):
                print(f"  warning: {where}: {problem}")
    if not args.reach:
        return 0
    results = trio.run(_reach, agents)
    print(
        "  reach: n8n: CORS preflight (is a POST webhook registered at the path?); openai: GET /models "
        "(is the model served?); webhook: OPTIONS (host only). Nothing is triggered."
    )
    for probe in results:
        print(f"  reach {probe.agent_id:<16} {probe.state:<10} {probe.detail}")
    return 1 if any(p.state == "FAIL" for p in results) else 0


async def _reach(agents):
    """Probe each agent without triggering it (see `voxbridge.agents.health.probe_agent`)."""
    from .agents.client import make_http_client
    from .agents.health import probe_agent

    async with make_http_client() as http:
        return [await probe_agent(a, http) for a in agents.agents]


def cmd_say(args) -> int:
    from .say import say

    settings = _settings(args)
    roles = frozenset(r for r in (args.roles or "").split(",") if r)
    return trio.run(
        lambda: say(
            settings,
            " ".join(args.text),
            user=args.user,
            guild=args.guild,
            channel=args.channel,
            roles=roles,
            demo_agents=args.demo_agents,
            speak=Path(args.speak) if args.speak else None,
            store_url=args.store,
            explain=args.explain,
        )
    )


def cmd_config(args) -> int:
    if args.explain:
        print(explain())
        return 0
    settings = _settings(args)
    import attrs

    from .config import SECRET_SETTINGS, redact_credentials

    for section, values in attrs.asdict(settings).items():
        print(f"[{section}]")
        for k, v in values.items():
            if k in SECRET_SETTINGS and isinstance(v, str):
                v = redact_credentials(v)  # database and Redis passwords
            print(f"{k} = {v!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxbridge", description="Discord voice channels talking to AI agents.")
    p.add_argument("--config", help="settings file (voxbridge.toml); default: built-in defaults, or $VOXBRIDGE_CONFIG")
    p.add_argument("--log-level", default=None, help="override [log].level")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run",
        help="the daemon: join Discord voice channels and answer "
        "(token: $DISCORD_TOKEN, [discord].token_file or systemd credentials)",
    )
    r.add_argument(
        "--no-discord", action="store_true", help="no Discord: control API and simulated voice channels only"
    )
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("simulate", help="a local voice channel, full pipeline, no Discord token")
    s.add_argument(
        "--say",
        action="append",
        metavar="NAME[@OFFSET]:TEXT",
        help="a speaker line synthesized with Piper (repeatable; same NAME = same speaker)",
    )
    s.add_argument(
        "--wav",
        action="append",
        metavar="NAME[@OFFSET]:FILE",
        help="a speaker from a WAV file (any rate/channels; repeatable)",
    )
    s.add_argument(
        "--demo-agents",
        action="store_true",
        help="serve n8n-compatible demo webhooks on 127.0.0.1 and use them for every agent",
    )
    s.add_argument(
        "--fast", action="store_true", help="feed audio as fast as the pipeline takes it instead of in real time"
    )
    s.add_argument(
        "--out",
        default="sim-out",
        help="output directory for channel.wav, log.json and the run's database (default: sim-out)",
    )
    s.add_argument("--store", default=None, help="store URL (default: sqlite in --out)")
    s.add_argument("--agents", default=None, help="agents file (default: [agents].file)")
    s.add_argument("--no-tts", action="store_true", help="do not speak answers")
    s.add_argument(
        "--mode",
        choices=["conversation", "addressed", "transcribe"],
        default=None,
        help="the channel's mode "
        "(default: [conversation].mode, addressed automatically above addressed_above_humans speakers)",
    )
    s.add_argument("--mirror", action="store_true", help="also show what would be posted to the text chat")
    s.add_argument("--quiet", action="store_true", help="no live log")
    s.add_argument("--no-progress", action="store_true", help="no progress line")
    s.add_argument("--strict", action="store_true", help="exit 1 if any turn failed")
    s.set_defaults(func=cmd_simulate)

    ss = sub.add_parser("stt-serve", help="serve the local STT engine to other instances (WebSocket and Wyoming)")
    ss.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ss.add_argument("--port", type=int, default=4901, help="WebSocket port (default 4901)")
    ss.add_argument("--wyoming-port", type=int, default=10300, help="Wyoming TCP port (default 10300; -1: off)")
    ss.add_argument(
        "--batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode concurrent requests as one batch (default: on with CUDA, off on CPU)",
    )
    ss.set_defaults(func=cmd_stt_serve)

    t = sub.add_parser("transcribe", help="transcribe WAV files with the configured STT")
    t.add_argument("files", nargs="+")
    t.set_defaults(func=cmd_transcribe)

    c = sub.add_parser("check", help="validate settings and agents.toml")
    c.add_argument("--agents", default=None, help="agents file (default: [agents].file)")
    c.add_argument(
        "--reach",
        action="store_true",
        help="also probe each agent without triggering it (n8n: CORS preflight shows whether the webhook "
        "is registered; openai: GET /models; webhook: OPTIONS)",
    )
    c.set_defaults(func=cmd_check)

    y = sub.add_parser(
        "say", help="route typed text exactly as speech would be; print the decision and the streamed answer"
    )
    y.add_argument("text", nargs="+")
    y.add_argument("--user", default="cli-user", help="user id (sessions and history are per guild and user)")
    y.add_argument("--guild", default="cli-guild")
    y.add_argument("--channel", default="cli-channel")
    y.add_argument("--roles", default="", help="comma-separated role ids of the member (agent/rule scoping)")
    y.add_argument("--agents", default=None, help="agents file (default: [agents].file)")
    y.add_argument(
        "--store",
        default=None,
        help="store URL (default: [store].url): sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db (four slashes) or postgresql://...",
    )
    y.add_argument("--demo-agents", action="store_true", help="answer from the built-in demo webhooks")
    y.add_argument("--speak", metavar="OUT.wav", help="also synthesize the answer to a WAV file")
    y.add_argument("--explain", action="store_true", help="print each routing tier: what matched, or why not")
    y.set_defaults(func=cmd_say)

    g = sub.add_parser("config", help="print the effective settings")
    g.add_argument(
        "--explain", action="store_true", help="every setting with its default, meaning and environment variable"
    )
    g.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        level = args.log_level
        fmt = "kv"
        if level is None:
            try:
                s = _settings(args)
                level, fmt = s.log.level, s.log.format
            except ConfigError:
                level = "info"
        levels = ()
        try:
            levels = _settings(args).log.levels
        except ConfigError:
            pass
        setup_logging(
            level if args.command not in ("simulate", "say") else ("warning" if level == "info" else level),
            fmt,
            levels=levels,
        )
        return args.func(args)
    except ConfigError as exc:
        print(f"voxbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except VoxBridgeError as exc:
        print(f"voxbridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
