"""A room of several people: addressed and transcribe modes, echo guard, opt-out, thinking cue,
text mirror. Piper-made speech through a simulated channel, real tiny.en, a loopback agent that
counts its calls."""

import attrs
import pytest
import trio

from voxbridge.agents.config import load_agents
from voxbridge.audio.convert import split_frames
from voxbridge.core.channel import ChannelSession
from voxbridge.core.control import Control
from voxbridge.core.conversation import EchoGuard, addressed, sound_key, split_message
from voxbridge.core.playback import CollectSink, PlayerBuffer
from voxbridge.core.services import open_services

from .helpers import SpeechMaker, wer


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        ("VoxBridge, what time is it?", "what time is it?"),
        ("Buck's Bridge. What time is it?", "What time is it?"),  # how tiny.en hears Piper's "VoxBridge"
        ("Box Bridge, tell me a joke.", "tell me a joke."),
        ("Hey Vox Bridge, how far away is the moon?", "how far away is the moon?"),
        ("What time is it?", None),
        ("What time is it, VoxBridge?", None),  # addressing happens at the start
        ("Books bring joy to everyone", None),
        ("VoxBridge.", ""),
    ],
)
def test_addressed_matches_the_name_by_sound_and_strips_it(heard, expected):
    assert addressed(heard, ["VoxBridge", "hey voxbridge"]) == expected


def test_sound_key_and_split_message():
    assert sound_key("VoxBridge") == sound_key("Vox Bridge") == sound_key("Fox-bridge") == "FKSPRJ"  # Double Metaphone
    parts = split_message("A sentence that goes on. " * 300, 2000)
    assert all(len(p) <= 2000 for p in parts) and "".join(parts).replace(" ", "") == (
        "A sentence that goes on. " * 300
    ).replace(" ", "")


def test_echo_guard_window():
    now = [0.0]
    guard = EchoGuard(window_s=5, threshold=0.6, clock=lambda: now[0])
    guard.said("The general agent says hello to everyone here.", duration_s=3)
    assert guard.is_echo("the general agent says hello")
    assert not guard.is_echo("what is the weather like today")
    now[0] = 7.9  # 3 s of playing + 5 s window, not yet over
    assert guard.is_echo("says hello to everyone")
    now[0] = 8.1
    assert not guard.is_echo("says hello to everyone")


class CountingAgent:
    def __init__(self):
        self.payloads = []

    async def __call__(self, req, resp):
        self.payloads.append(req.json())
        await resp.respond(200, {"output": f"The answer to number {len(self.payloads)} is ready."})


async def _room(settings, piper, stt, agent_server, nursery, *, mode=None, humans=None, **conv):
    agent = CountingAgent()
    url = await agent_server(agent)
    cfg = load_agents(settings.agents.file)
    cfg = cfg.with_urls({a.id: f"{url}/{a.id}" for a in cfg.agents})
    settings = attrs.evolve(settings, conversation=attrs.evolve(settings.conversation, **conv))
    services_cm = open_services(settings, agents=cfg, stt=stt, tts=piper)
    services = await services_cm.__aenter__()
    sink = CollectSink()
    channel = await nursery.start(ChannelSession(services, "g1", "c1", sink).run)
    channel.mode_override = mode
    channel.humans = humans
    posted = []

    async def mirror(text):
        posted.append(text)

    channel.mirror = mirror
    return services, services_cm, channel, agent, sink, posted


async def _say(channel, speech, user, text):
    handle = channel.speakers.get(user) or channel.add_speaker(user, user)
    for frame in split_frames(speech.discord(text)):
        await handle.send(frame)
    return handle


async def _settle(channel, handles):
    for h in handles:
        await h.finish()
    for h in handles:
        await h.finished.wait()
    await channel.playback.wait_idle()


async def test_addressed_mode_routes_only_utterances_that_call_the_bot(
    settings, stt, piper, speech, agent_server, nursery
):
    services, cm, channel, agent, sink, posted = await _room(
        settings, piper, stt, agent_server, nursery, mode="addressed"
    )
    try:
        a = await _say(channel, speech, "alice", "VoxBridge, what time is it?")
        b = await _say(channel, speech, "bob", "What time is it?")
        await _settle(channel, [a, b])
        turns = {t["user_id"]: t for t in await services.store.list_turns()}
    finally:
        await cm.__aexit__(None, None, None)
    assert len(agent.payloads) == 1 and agent.payloads[0]["userId"] == "alice"
    assert wer("what time is it", agent.payloads[0]["text"]) <= 0.25  # the name was stripped before routing
    assert turns["alice"]["status"] == "answered"
    assert turns["bob"]["status"] == "not_routed"
    assert turns["bob"]["flags"] == {
        "mode": "addressed",
        "mode_reason": "set with /voxbridge mode",
        "not_routed": "not_addressed",
    }
    assert wer("What time is it?", turns["bob"]["transcript"]) <= 0.25  # still stored: transcribed, not routed


async def test_more_people_than_the_threshold_switches_to_addressed(
    settings, stt, piper, speech, agent_server, nursery
):
    services, cm, channel, agent, sink, posted = await _room(
        settings, piper, stt, agent_server, nursery, humans=3, addressed_above_humans=2
    )
    try:
        assert channel.effective_mode() == ("addressed", "3 people in the channel")
        channel.humans = 2
        assert channel.effective_mode() == ("conversation", "configured")
        channel.humans = 3
        h = await _say(channel, speech, "carol", "How far away is the moon?")
        await _settle(channel, [h])
        [turn] = await services.store.list_turns()
    finally:
        await cm.__aexit__(None, None, None)
    assert agent.payloads == [] and turn["flags"]["not_routed"] == "not_addressed"
    assert turn["flags"]["mode_reason"] == "3 people in the channel"


async def test_transcribe_mode_calls_no_agent_and_mirrors_transcripts(
    settings, stt, piper, speech, agent_server, nursery
):
    services, cm, channel, agent, sink, posted = await _room(
        settings, piper, stt, agent_server, nursery, mode="transcribe", mirror=True
    )
    try:
        a = await _say(channel, speech, "alice", "Let us start the weekly planning meeting.")
        b = await _say(channel, speech, "bob", "VoxBridge, please take notes.")
        await _settle(channel, [a, b])
        turns = await services.store.list_turns()
    finally:
        await cm.__aexit__(None, None, None)
    assert agent.payloads == []  # zero agent calls
    assert sorted(t["status"] for t in turns) == ["not_routed", "not_routed"]
    assert all(t["flags"]["not_routed"] == "transcribe_only" for t in turns)
    assert sorted(p.split("**")[1] for p in posted) == ["alice", "bob"]
    assert any(wer("Let us start the weekly planning meeting.", p.split(": ", 1)[1]) <= 0.25 for p in posted)
    assert sum(len(f) for f in sink.frames) == 0  # nothing spoken


async def test_the_bots_own_answer_fed_back_is_not_routed(settings, stt, piper, speech, agent_server, nursery):
    services, cm, channel, agent, sink, posted = await _room(settings, piper, stt, agent_server, nursery, mirror=True)
    try:
        a = await _say(channel, speech, "alice", "What is the capital of France?")
        await _settle(channel, [a])
        played = b"".join(sink.frames)  # exactly what the bot said into the channel
        assert len(played) > 48000 * 4
        bob = channel.add_speaker("bob", "bob")  # on speakers: his microphone hears the bot
        for frame in split_frames(played + bytes(48000 * 4 * 2)):
            await bob.send(frame)
        await _settle(channel, [bob])
        turns = {t["user_id"]: t for t in await services.store.list_turns()}
    finally:
        await cm.__aexit__(None, None, None)
    assert len(agent.payloads) == 1
    assert turns["bob"]["status"] == "not_routed" and turns["bob"]["flags"]["not_routed"] == "echo"
    assert services.metrics.counts()["not_routed_echo"] == 1
    assert not any(p.startswith("**bob**") for p in posted)  # echo is not mirrored either


async def test_opted_out_user_is_not_heard_and_the_choice_survives_a_restart(
    settings, stt, piper, speech, agent_server, nursery
):
    services, cm, channel, agent, sink, posted = await _room(settings, piper, stt, agent_server, nursery)
    try:
        control = Control(services, nursery)
        await control.set_ignored("dave", True)
        h = channel.add_speaker("dave", "dave")
        assert h is None  # no SpeakerSession: nothing is transcribed
        a = await _say(channel, speech, "alice", "What is two plus two?")
        await _settle(channel, [a])
        turns = await services.store.list_turns()
    finally:
        await cm.__aexit__(None, None, None)
    assert [t["user_id"] for t in turns] == ["alice"]  # no row for dave
    async with open_services(settings, stt=stt, tts=False) as again:  # a restart reads the opt-out back
        assert "dave" in again.ignored
        assert [t["user_id"] for t in await again.store.list_turns(user_id="dave")] == []


async def test_thinking_cue_plays_until_the_answer_is_ready(settings, stt, piper, speech, agent_server, nursery):
    gate = trio.Event()

    async def slow(req, resp):
        await gate.wait()
        await resp.respond(200, {"output": "Here is the answer."})

    url = await agent_server(slow)
    cfg = load_agents(settings.agents.file)
    cfg = cfg.with_urls({a.id: f"{url}/{a.id}" for a in cfg.agents})
    s = attrs.evolve(settings, conversation=attrs.evolve(settings.conversation, thinking_cue=True))
    async with open_services(s, agents=cfg, stt=stt, tts=piper) as services:
        buffer = PlayerBuffer(10)

        async def player():  # real time, as py-cord's player thread reads
            start = trio.current_time()
            for i in range(1, 100_000):
                await trio.sleep_until(start + i * 0.02)
                buffer.read()

        nursery.start_soon(player)
        channel = await nursery.start(ChannelSession(services, "g1", "c1", buffer).run)
        h = channel.add_speaker("alice", "alice")
        for frame in split_frames(SpeechMaker(piper).discord("Can you look this up for me?")):
            await h.send(frame)
        with trio.fail_after(30):
            while not (channel.playback.current and channel.playback.current.turn_id.startswith("cue-")):
                await trio.sleep(0.02)
        gate.set()  # the agent answers: the cue stops, the answer plays
        await _settle(channel, [h])
        played = [(a.turn_id.split("-")[0], a.frames) for a in channel.playback.played]
    assert played[0][0] == "cue" and 0 < played[0][1] < 8 * 75  # stopped before its 8 pulses ran out
    assert played[1][0] != "cue" and played[1][1] > 50  # then the answer played
