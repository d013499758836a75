"""`voxbridge say`: typed text routed exactly as a transcript would be (for testing agents.toml).

Runs the same `answer_transcript` as the voice path: the turn is stored, routed, the agent is
called, and the answer streams to the terminal (and, with `--speak`, is synthesized to a WAV).
`--explain` prints the router's trace: each tier, what matched or why not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from .audio import DISCORD_RATE
from .audio.wav import write_wav
from .core.playback import CollectSink, Playback
from .core.services import open_services
from .core.turn import answer_transcript
from .core.utterance import SpeakerInfo
from .stt import Transcript


async def say(
    settings,
    text: str,
    *,
    user: str,
    guild: str,
    channel: str,
    roles: frozenset[str],
    demo_agents: bool = False,
    speak: Path | None = None,
    store_url: str | None = None,
    explain: bool = False,
    out=sys.stdout,
) -> int:
    from .agents.config import load_agents
    from .sim.demo_agents import DemoAgents

    agents = await trio.to_thread.run_sync(load_agents, settings.agents.file)
    async with trio.open_nursery() as nursery:  # bounds the demo server, if any
        if demo_agents:
            demo = DemoAgents()
            await nursery.start(demo.serve)
            agents = demo.answer_for(agents)
        async with open_services(
            settings,
            agents=agents,
            stt=False,
            tts=speak is not None,
            store_url=store_url,
            observer=lambda kind, fields: None,
        ) as services:
            sink = CollectSink()
            playback = Playback(sink) if speak is not None else None
            speaker = SpeakerInfo(user_id=user, user_name=user, guild_id=guild, channel_id=channel, roles=roles)
            transcript = Transcript(text=text.strip(), language="en", confidence=1.0, duration_s=0.0)

            def on_decision(d):
                rule = f" rule={d.rule_id}" if d.rule_id else ""
                extra = f" fallbacks={','.join(d.fallbacks)}" if d.fallbacks else ""
                skipped = f" skipped(circuit open)={','.join(d.skipped)}" if d.skipped else ""
                print(
                    f"route: {d.method}{rule} -> {','.join(d.agent_ids) or '(none)'}{extra}{skipped} "
                    f"({d.latency_ms} ms)",
                    file=out,
                    flush=True,
                )
                if explain:
                    for step in d.trace:
                        print(f"  why: {step}", file=out, flush=True)
                print("answer: ", end="", file=out, flush=True)

            printed: list[str] = []

            async def on_text(t: str) -> None:
                printed.append(t)
                print(t, end="", file=out, flush=True)

            async with trio.open_nursery() as inner:  # bounds the playback task of --speak
                if playback is not None:
                    inner.start_soon(playback.run)
                outcome = await answer_transcript(
                    services,
                    speaker,
                    transcript,
                    ended_at=trio.current_time(),
                    timings={},
                    playback=playback,
                    on_text=on_text,
                    on_decision=on_decision,
                )
                inner.cancel_scope.cancel()
            if outcome.status != "answered" and outcome.speech is not None:
                # what the channel hears instead of an answer (a partial answer is dropped)
                notice = " ".join(outcome.speech.said) or "(nothing: [agents].failure_notice is empty)"
                if "".join(printed).strip():
                    print(" [dropped: the agent failed mid-answer]", file=out)
                print(f"[failure notice] {notice}", end="", file=out)
            print(file=out)
            if outcome.status == "answered":
                print(f"turn {outcome.turn_id}: answered", file=out)
            else:
                print(f"turn {outcome.turn_id}: {outcome.status}: {outcome.error}", file=out)
            if path := getattr(getattr(services.store, "backend", None), "path", None):
                print(describe_sqlite_path(path), file=out)
            if speak is not None:
                pcm = b"".join(sink.frames)
                await trio.to_thread.run_sync(write_wav, speak, pcm, DISCORD_RATE, 2)
                print(f"spoken answer: {speak} ({len(pcm) / (DISCORD_RATE * 4):.1f} s)", file=out)
        nursery.cancel_scope.cancel()
    return 0 if outcome.status == "answered" else 1


def describe_sqlite_path(path: str) -> str:
    """Where a SQLite store is; a hint when `sqlite:///tmp/x.db` (relative: three slashes) was
    probably meant as `/tmp/x.db` (absolute: `sqlite:////tmp/x.db`, four slashes)."""
    if path == ":memory:":
        return "store: :memory:"
    p = Path(path)
    line = f"store: {p.resolve()}"
    first = p.parts[0] if p.parts else ""
    if not p.is_absolute() and first and (Path("/") / first).is_dir() and Path.cwd() != Path("/"):
        line += (
            f"\n  (sqlite:///{path} is relative to the working directory; for /{path} write "
            f"sqlite:////{path}, four slashes)"
        )
    return line
