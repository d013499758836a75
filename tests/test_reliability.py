"""Nothing is lost: store and Redis outages, STT/TTS/agent faults, hostile input, load.
Long runs live in scripts/soak.py; these are the fast versions."""

import attrs
import numpy as np
import trio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from voxbridge.agents.config import load_agents, parse_agents
from voxbridge.config import load_settings
from voxbridge.core.channel import ChannelSession
from voxbridge.core.playback import CollectSink
from voxbridge.core.services import open_services
from voxbridge.core.turn import answer_transcript
from voxbridge.core.utterance import SpeakerInfo
from voxbridge.errors import ConfigError, TtsError
from voxbridge.stt import Transcript

from .helpers import FastFakeStt


def one_agent(url, **extra):
    body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in {"retries": 0, **extra}.items())
    return parse_agents(
        f'[[agents]]\nid = "general"\nname = "General"\nkind = "n8n"\nurl = "{url}/general"\n{body}', "a.toml", env={}
    )


async def ok_agent(req, resp):
    await resp.respond(200, {"output": "Noted."})


async def ask(services, text, user="u", guild="g", room=None, playback=None):
    return await answer_transcript(
        services,
        SpeakerInfo(user, user, guild, "c"),
        Transcript(text, "en", 0.9, 1.0),
        ended_at=trio.current_time(),
        timings={},
        playback=playback,
        room=room,
    )


# --- store faults ---------------------------------------------------------------------------------


async def test_postgres_connections_killed_mid_run_lose_no_turn(settings, postgres_url, agent_server, nursery):
    import psycopg

    url = await agent_server(ok_agent)
    dbname = postgres_url.rsplit("/", 1)[1]
    kills = [0]

    async def killer():
        admin = await trio.to_thread.run_sync(
            lambda: psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)
        )
        try:
            for _ in range(5):  # five waves: every connection of the database dies each time
                await trio.sleep(0.4)
                n = await trio.to_thread.run_sync(
                    lambda: admin.execute(
                        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                        "where datname = %s and pid <> pg_backend_pid()",
                        (dbname,),
                    ).fetchone()[0]
                )
                kills[0] += n
        finally:
            admin.close()

    async with open_services(settings, agents=one_agent(url), stt=False, tts=False, store_url=postgres_url) as services:
        async with trio.open_nursery() as n:
            n.start_soon(killer)
            outcomes = []

            async def user(i):
                for k in range(5):
                    await trio.sleep(0.05)  # spread the turns over the kill waves
                    outcomes.append(await ask(services, f"question {k} from user {i}", user=f"u{i}"))

            async with trio.open_nursery() as users:
                for i in range(8):
                    users.start_soon(user, i)
        rows = await services.store.list_turns(limit=1000)
        retries = services.store.retries
    assert kills[0] > 0 and retries > 0  # connections really died under the turns
    assert len(outcomes) == 40 and all(o.status == "answered" for o in outcomes)
    assert len(rows) == 40 and {r["status"] for r in rows} == {"answered"}
    assert len({(r["user_id"], r["number"]) for r in rows}) == 40  # no duplicates, numbering intact


async def test_redis_stopped_mid_run_degrades_to_the_database(settings, private_redis, agent_server, tmp_path, caplog):
    proc, redis_url = private_redis
    url = await agent_server(ok_agent)
    s = attrs.evolve(settings, store=attrs.evolve(settings.store, redis_url=redis_url))
    async with open_services(s, agents=one_agent(url), stt=False, tts=False) as services:
        before = [await ask(services, f"before {i}") for i in range(3)]
        assert services.broadcaster.healthy
        proc.kill()
        proc.wait()
        after = [await ask(services, f"after {i}") for i in range(3)]
        rows = await services.store.list_turns()
        stats = dict(services.broadcaster.stats)
    assert all(o.status == "answered" for o in before + after)
    assert [r["number"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert stats["redis_errors"] > 0
    assert "event=redis_unavailable" in caplog.text


# --- STT, TTS, agent faults -------------------------------------------------------------------------


async def test_stt_error_fails_only_that_turn(settings, piper, speech, agent_server, nursery):
    url = await agent_server(ok_agent)
    stt = FastFakeStt(fail_on={2})
    async with open_services(settings, agents=one_agent(url), stt=stt, tts=False) as services:
        channel = await nursery.start(ChannelSession(services, "g", "c", CollectSink()).run)
        from voxbridge.audio.convert import split_frames

        handles = []
        for name in ("alice", "bob", "carol"):
            h = channel.add_speaker(name, name)
            handles.append(h)
            for frame in split_frames(speech.discord("What is the weather like today?")):
                await h.send(frame)
            await h.finish()
            await h.finished.wait()
        rows = await services.store.list_turns()
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["answered", "answered", "failed"]
    [failed] = [r for r in rows if r["status"] == "failed"]
    assert failed["error"] == "stt: engine error on purpose"


class FlakyTts:
    """Piper, except that clauses containing 'explode' fail."""

    name = "flaky"

    def __init__(self, piper):
        self.piper = piper

    async def synthesize(self, text, *, voice=None):
        if "explode" in text:
            raise TtsError("synthesis failed on purpose")
        return await self.piper.synthesize(text)


async def test_tts_failure_keeps_the_answer_as_text_and_playback_going(settings, piper, agent_server, nursery):
    async def agent(req, resp):
        q = req.json()["text"]
        await resp.respond(
            200,
            {"output": "This clause will explode. But this one is fine." if "first" in q else "Second answer here."},
        )

    url = await agent_server(agent)
    s = attrs.evolve(settings, conversation=attrs.evolve(settings.conversation, mirror=True))
    async with open_services(s, agents=one_agent(url), stt=False, tts=FlakyTts(piper)) as services:
        channel = await nursery.start(ChannelSession(services, "g", "c", CollectSink()).run)
        posted = []

        async def mirror(text):
            posted.append(text)

        channel.mirror = mirror
        first = await ask(services, "first question", room=channel, playback=channel.playback)
        second = await ask(services, "second question", room=channel, playback=channel.playback)
    assert first.status == "answered" and first.speech.tts_errors == 1 and first.speech.answer.frames > 0
    assert any("will explode" in p for p in posted)  # the whole answer still reached the text chat
    assert second.status == "answered" and second.speech.answer.frames > 0


async def test_agent_closing_mid_stream_fails_the_turn_without_retry(settings, agent_server):
    calls = []

    async def agent(req, resp):
        calls.append(1)
        await resp.start(200, {"content-type": "application/json"})
        await resp.send(b'{"type":"begin"}\n{"type":"item","content":"Half an ans')
        raise RuntimeError("the agent process died")  # the server drops the connection mid-body

    url = await agent_server(agent)
    async with open_services(settings, agents=one_agent(url, retries=2), stt=False, tts=False) as services:
        out = await ask(services, "hello")
        row = await services.store.get_turn(out.turn_id)
    assert len(calls) == 1  # never retried after the first byte
    assert row["status"] == "failed" and row["error"].split(":")[0] in ("connection_closed", "garbage")


async def test_fifty_megabyte_answer_is_cut_at_the_cap(settings, agent_server):
    sent = [0]

    async def agent(req, resp):
        await resp.start(200, {"content-type": "text/plain"})
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            await resp.send(chunk)
            sent[0] += len(chunk)
        await resp.end()

    url = await agent_server(agent)
    async with open_services(
        settings, agents=one_agent(url, max_response_bytes=1 << 20), stt=False, tts=False
    ) as services:
        out = await ask(services, "send me everything")
        row = await services.store.get_turn(out.turn_id)
    assert row["status"] == "failed" and row["error"].startswith("too_large")
    assert sent[0] < 50 * (1 << 20)  # we stopped reading; the server could not push it all


# --- hostile input ------------------------------------------------------------------------------------

toml_scalars = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=40),
    st.lists(st.text(max_size=10), max_size=4),
)
agent_keys = st.sampled_from(
    [
        "id",
        "name",
        "kind",
        "url",
        "timeout_s",
        "retries",
        "keywords",
        "priority",
        "guilds",
        "headers",
        "hmac_secret",
        "model",
        "bogus",
        "streaming",
        "max_response_bytes",
        "circuit_failures",
    ]
)


def _toml_value(v):
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "0.0"
    if isinstance(v, (int, list)):
        return json.dumps(v)
    return json.dumps(v)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    agents=st.lists(st.dictionaries(agent_keys, toml_scalars, max_size=8), min_size=0, max_size=3),
    routing=st.dictionaries(
        st.sampled_from(["strategy", "default_agent", "history_turns", "classifier_agent", "x"]),
        toml_scalars,
        max_size=3,
    ),
    garbage=st.text(max_size=30),
)
def test_fuzzed_agents_toml_is_accepted_or_rejected_cleanly(agents, routing, garbage):
    parts = ["[routing]"] + [f"{k} = {_toml_value(v)}" for k, v in routing.items()]
    for a in agents:
        parts.append("[[agents]]")
        parts += [f"{k} = {_toml_value(v)}" for k, v in a.items()]
    for text in ("\n".join(parts), "\n".join(parts) + "\n" + garbage):
        try:
            cfg = parse_agents(text, "fuzz.toml", env={})
        except ConfigError as exc:
            assert str(exc).startswith("fuzz.toml") and exc.reason
        else:
            assert cfg.agents and cfg.get(cfg.routing.default_agent)


settings_keys = st.sampled_from(
    [
        "vad.silence_ms",
        "vad.threshold",
        "stt.model",
        "stt.device",
        "tts.backend",
        "playback.barge_in",
        "api.port",
        "log.levels",
        "conversation.mode",
        "store.url",
        "nope.x",
        "vad.nope",
    ]
)


@hsettings(max_examples=150, deadline=None)
@given(values=st.dictionaries(settings_keys, toml_scalars, max_size=6))
def test_fuzzed_voxbridge_toml_is_accepted_or_rejected_cleanly(values, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "voxbridge.toml"
    tables: dict[str, list[str]] = {}
    for key, v in values.items():
        section, name = key.split(".")
        tables.setdefault(section, []).append(f"{name} = {_toml_value(v)}")
    path.write_text("\n".join(f"[{s}]\n" + "\n".join(lines) for s, lines in tables.items()))
    try:
        load_settings(path, env={})
    except ConfigError as exc:
        assert exc.where and exc.reason


async def test_reloads_of_fuzzed_files_never_replace_the_good_config(tmp_path):
    from voxbridge.agents.reloader import AgentsReloader
    from voxbridge.core.services import AgentsHolder

    path = tmp_path / "agents.toml"
    path.write_text('[[agents]]\nid = "a"\nkind = "n8n"\nurl = "http://h/x"\n')
    holder = AgentsHolder(load_agents(path))
    good = holder.current.version
    reloader = AgentsReloader(path, holder)
    corpus = [
        "",
        "[[agents]",
        "\x00\x01",
        "[[agents]]\nid = 1",
        '[[agents]]\nid = "a"\nkind = "n8n"\nurl = "http://h/x"\nretries = 1e308',
        "[routing]\nhistory_turns = 99999999999999999999",
        '[[rules]]\nid = "r"\nagents = ["a"]\nmatch = { regex = "(a)\\\\1" }',
        "a = " + "[" * 5000,
        "\xff\xfe",
    ]
    for text in corpus:
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        assert await reloader.reload_now("fuzz") is False
        assert holder.current.version == good
    assert holder.reload_failures == len(corpus)


def test_audio_edge_cases_bounded_and_quiet():
    """Empty frames, odd lengths, clipping, noise and a 45-minute monologue through the real
    segmenter path: no crash, utterances capped at max length, memory bounded, noise ignored."""
    import tracemalloc

    from voxbridge.audio import STT_RATE
    from voxbridge.audio.convert import Downsampler
    from voxbridge.audio.segmenter import Segmenter, UtteranceEnded
    from voxbridge.audio.vad import EnergyVad, VadFactory

    ds = Downsampler()
    seg = Segmenter(VadFactory("silero").new())
    rng = np.random.default_rng(3)
    for frame in (
        b"",
        b"\x01",
        b"\x00" * 3,
        bytes(3839),
        (rng.integers(-32768, 32767, 1920, dtype=np.int16)).tobytes() * 2,
    ):
        assert seg.process(ds.process(frame)) is not None
    noise = (rng.standard_normal(STT_RATE * 30) * 0.05).astype(np.float32)
    assert not [e for e in seg.process(noise) if isinstance(e, UtteranceEnded)]  # 30 s of noise: no utterance
    clipped = np.sign(np.sin(2 * np.pi * 300 * np.arange(STT_RATE * 2) / STT_RATE)).astype(np.float32)
    seg.process(clipped)  # full-scale square wave: must not crash

    tracemalloc.start()
    mono = Segmenter(EnergyVad(), max_utterance_ms=45_000)
    loud = (0.3 * np.sin(2 * np.pi * 220 * np.arange(STT_RATE * 60) / STT_RATE)).astype(np.float32)
    lengths = []
    for _ in range(45):  # 45 minutes, a minute at a time; cut utterances are handed on, not kept
        lengths += [len(e.audio) for e in mono.process(loud) if isinstance(e, UtteranceEnded)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(lengths) >= 59 and max(lengths) <= 45 * STT_RATE
    assert peak < 64 * 1024 * 1024  # bounded: one utterance (45 s) plus the input, not 45 minutes


async def test_rate_limit_per_user(settings, agent_server, nursery):
    url = await agent_server(ok_agent)
    s = attrs.evolve(settings, conversation=attrs.evolve(settings.conversation, max_turns_per_minute=3))
    async with open_services(s, agents=one_agent(url), stt=False, tts=False) as services:
        channel = await nursery.start(ChannelSession(services, "g", "c", CollectSink()).run)
        outs = [await ask(services, f"q{i}", user="spammer", room=channel) for i in range(5)]
        other = await ask(services, "hello", user="someone-else", room=channel)
        other_guild = await ask(services, "hello", user="spammer", guild="g2", room=channel)
    assert [o.status for o in outs] == ["answered"] * 3 + ["not_routed"] * 2
    assert outs[3].error == "rate_limited"
    assert other.status == "answered" and other_guild.status == "answered"  # per user, per guild


# --- load -------------------------------------------------------------------------------------------


async def test_twenty_channels_of_five_speakers_every_utterance_is_one_final_turn(
    settings, speech, agent_server, nursery
):
    from voxbridge.audio.convert import split_frames

    url = await agent_server(ok_agent)
    clips = [speech.discord(t, 0.2, 1.2) for t in ("What time is it?", "Tell me a joke.", "How are you doing today?")]
    stt = FastFakeStt()
    # The event-loop lag under this load is a figure, not a property: `scripts/soak.py` (load-fake,
    # the same 20 x 5 speakers) reports its p99.
    async with open_services(settings, agents=one_agent(url, max_concurrency=50), stt=stt, tts=False) as services:
        channels = [
            await nursery.start(ChannelSession(services, f"g{i}", f"c{i}", CollectSink()).run) for i in range(20)
        ]

        async def speaker(channel, j):
            h = channel.add_speaker(f"{channel.guild_id}-u{j}", f"u{j}")
            for k in range(2):
                for frame in split_frames(clips[(j + k) % len(clips)]):
                    await h.send(frame)
            await h.finish()
            await h.finished.wait()

        async with trio.open_nursery() as n:
            for c in channels:
                for j in range(5):
                    n.start_soon(speaker, c, j)
        rows = await services.store.list_turns(limit=10_000)
    final = {"answered", "failed", "not_routed"}
    assert len(rows) == 20 * 5 * 2 == stt.calls  # every utterance: exactly one stored turn
    assert all(r["status"] in final for r in rows) and {r["status"] for r in rows} == {"answered"}
