"""Discord voice on the real wire: VoxBridge's own join path (`VoxApp.join_voice`) with py-cord
2.8.1's real `VoiceClient` against the loopback voice server (tests/discord_voice_server.py):
TLS voice gateway v8, IP discovery, `aead_xchacha20_poly1305_rtpsize` RTP with header extensions
both ways, libopus. Members speak Piper speech; the real tiny.en transcribes what VoxBridge heard
and what the bot said (decrypted and decoded from its RTP). No stand-in voice client."""

import time

import trio

from voxbridge.discord.adapter import run_guest
from voxbridge.sim.demo_agents import demo_answer

from .discord_objects import BOT_ID, GUILD_ID
from .discord_voice_server import MODE, open_wire_session, transcribe_pcm
from .helpers import find_in_order, wer

LINES = {
    11: ("alice", "What time is it in Tokyo?"),
    12: ("bob", "Tell me a story about a dragon."),
    13: ("carol", "How far away is the moon?"),
}
OTHER_LINE = "Please write down the number seven."
WAIT_S = 45  # a sanity bound on each wait, ~10x what it takes


def run_wire(settings, stt, tts, body, **options):
    async def main(loop):
        async with open_wire_session(loop, settings, stt=stt, tts=tts, **options) as w:
            return await body(w)

    return run_guest(main)


async def turns_of(w, uid) -> list[dict]:
    return sorted(
        [t for t in await w.services.store.list_turns() if t["user_id"] == str(uid)], key=lambda t: t["number"]
    )


async def wait_turns(w, uid, n=1, *, status=("answered",)) -> list[dict]:
    """Until `uid` has `n` turns in one of `status`; fails after WAIT_S with what there is."""
    with trio.move_on_after(WAIT_S):
        while True:
            turns = [t for t in await turns_of(w, uid) if t["status"] in status]
            if len(turns) >= n:
                return turns
            await trio.sleep(0.1)
    raise AssertionError(
        f"member {uid}: expected {n} turn(s) {status} within {WAIT_S}s; turns: "
        f"{await turns_of(w, uid)}; wire: {w.server.counters.copy()}, packets sent "
        f"{w.server.packets_sent.copy()}; receive {_receive_stats(w)}"
    )


def _receive_stats(w):
    """What the bot's receive side counted (for failure messages): its receiver's or its sink's."""
    held = getattr(w.app, "guild_voice", {}).get(w.guild.id)
    if held is not None:
        return getattr(held.receiver, "stats", None)
    reader = getattr(w.vc, "_reader", None)
    return {"sink_frames": getattr(getattr(reader, "sink", None), "frames", None)}


async def wait_bot_done(w, played=0, quiet_s=0.8):
    """Until `played` answers were played (a turn is "answered" before its speech is), nothing is
    left to play and the bot's RTP has been quiet for `quiet_s`."""
    with trio.fail_after(WAIT_S):
        while w.services.metrics.counts()["event.turn_played"] < played:
            await trio.sleep(0.1)
        while True:
            frames = w.server.bot_frames
            busy = w.session is not None and w.session.playback.busy
            if not busy and (not frames or time.perf_counter() - frames[-1].at > quiet_s):
                return
            await trio.sleep(0.1)


async def rekey(w):
    """A new Session Description (fresh secret key); until py-cord's client holds it."""
    key = await w.server.new_session_description()
    with trio.fail_after(WAIT_S):
        while bytes(w.vc.secret_key) != key:
            await trio.sleep(0.05)


def assert_heard(text, turns):
    heard = " ".join(t["transcript"] for t in turns)
    assert wer(text, heard) <= 0.25, (text, heard)


def test_fixture_handshake_heartbeat_and_playback_through_real_voice_client(settings, stt, piper):
    """The fixture itself: the real VoiceClient completes the handshake (TLS websocket, IP
    discovery, Select Protocol, Session Description), heartbeats are acknowledged, and what
    VoxBridge says goes out as encrypted Opus RTP that decodes back to the words."""
    text = "The weather in Paris is sunny today."

    async def body(w):
        srv, vc = w.server, w.vc
        assert vc.is_connected() and vc.mode == MODE and vc.ssrc == srv.bot_ssrc
        assert bytes(vc.secret_key) == srv.key
        assert srv.counters["identifies"] == 1 and srv.counters["ip_discoveries"] == 1
        assert srv.counters["bad_identify"] == 0 and srv.counters["bad_mode"] == 0
        assert srv.identified[0]["session_id"] == srv.session_id and srv.bot_addr[1] == vc._connection.port
        w.app.control.speak(str(GUILD_ID), text)
        with trio.fail_after(WAIT_S):
            while srv.bot_speech_frames() == 0:
                await trio.sleep(0.05)
        await wait_bot_done(w)
        with trio.fail_after(WAIT_S):  # py-cord heartbeats every min(interval, 5 s)
            while srv.counters["heartbeats"] < 1 or vc.latency == float("inf"):
                await trio.sleep(0.1)
        heard = await transcribe_pcm(stt, srv.bot_audio())
        scraped = w.services.metrics.render().decode()  # the receiver's counts are on /metrics while it runs
        assert f'component="discord_receive:{GUILD_ID}",stat="rtcp"' in scraped, scraped[-2000:]
        return heard, srv.counters.copy(), srv.bot_speaking, [f.ssrc for f in srv.bot_frames]

    heard, counters, speaking, ssrcs = run_wire(settings, stt, piper, body, agents=False)
    assert wer(text, heard) <= 0.25, heard
    assert counters["bot_decrypt_failures"] == 0 and counters["bot_opus_errors"] == 0
    assert set(ssrcs) == {0x4000} and 1 in speaking  # op 5 speaking before the audio
    assert counters["keepalives"] >= 1  # the 8-byte UDP keepalive


def test_three_members_overlapping_heard_and_answered_on_the_wire(settings, stt, piper, speech):
    pcm = {uid: speech.discord(text, lead_silence_s=0.0, tail_silence_s=0.8) for uid, (_, text) in LINES.items()}

    async def body(w):
        for uid, (name, _) in LINES.items():
            w.server.add_member(uid, name)
        async with trio.open_nursery() as n:
            for i, uid in enumerate(LINES):
                n.start_soon(_speak_after, w, uid, pcm[uid], 0.4 * i, {"padding": 4 if uid == 12 else 0})
        turns = {uid: await wait_turns(w, uid) for uid in LINES}
        await wait_bot_done(w, played=sum(len(t) for t in turns.values()))
        turns = {uid: await turns_of(w, uid) for uid in LINES}
        heard = await transcribe_pcm(stt, w.server.bot_audio())
        return turns, heard, w.demo.calls, set(w.session.speakers)

    turns, heard, calls, speakers = run_wire(settings, stt, piper, body)
    for uid, (_, text) in LINES.items():
        assert all(t["status"] == "answered" for t in turns[uid])
        assert_heard(text, turns[uid])
        for t in turns[uid]:  # the bot said what the agent answered: decoded from its RTP
            assert t["response"] == demo_answer(t["agent_id"].split(",")[0], t["transcript"])
            find_in_order([t["response"]], heard)
    assert str(BOT_ID) not in speakers and len(calls) == sum(len(t) for t in turns.values())


async def _speak_after(w, uid, pcm, delay, kwargs):
    await trio.sleep(delay)
    await w.server.speak(uid, pcm, **kwargs)


def test_member_leaving_cancels_only_their_turns_and_connection_keeps_working(settings, stt, piper, speech):
    long_a = speech.discord("Explain in detail how a steam engine works.", lead_silence_s=0.0, tail_silence_s=0.8)
    b1 = speech.discord(LINES[12][1], lead_silence_s=0.0, tail_silence_s=0.8)
    b2 = speech.discord(LINES[13][1], lead_silence_s=0.0, tail_silence_s=0.8)

    async def body(w):
        w.server.add_member(11, "alice")
        w.server.add_member(12, "bob")
        async with trio.open_nursery() as n:
            n.start_soon(w.server.speak, 11, long_a)
            n.start_soon(w.server.speak, 12, b1)
        # both turns exist (transcribed, the agents answer slowly): alice leaves now
        await wait_turns(w, 11, status=("transcribed", "routed"))
        await w.server.member_leave(11)
        with trio.fail_after(WAIT_S):
            while "11" in w.session.speakers:
                await trio.sleep(0.05)
        bob_first = await wait_turns(w, 12)
        alice = await wait_turns(w, 11, status=("failed", "answered"))
        await rekey(w)  # the voice websocket is still served: a new key reaches the client
        await w.server.speak(12, b2)
        bob = await wait_turns(w, 12, 2)
        return alice, bob_first, bob, w.vc.is_connected()

    alice, bob_first, bob, connected = run_wire(settings, stt, piper, body, demo_delay_s=0.4)
    assert all(t["status"] == "failed" and t["error"].startswith("cancelled") for t in alice), alice
    assert bob_first[0]["status"] == "answered"
    assert_heard(LINES[12][1], bob[:1])
    assert_heard(LINES[13][1], bob[1:])
    assert connected


def test_new_session_description_key_mid_call_still_heard(settings, stt, piper, speech):
    before = speech.discord(LINES[11][1], lead_silence_s=0.0, tail_silence_s=0.8)
    after = speech.discord(LINES[13][1], lead_silence_s=0.0, tail_silence_s=0.8)

    async def body(w):
        w.server.add_member(11, "alice")
        await w.server.speak(11, before)
        await wait_turns(w, 11, 1, status=("transcribed", "routed", "answered"))
        await rekey(w)
        await w.server.speak(11, after)
        turns = await wait_turns(w, 11, 2)
        await wait_bot_done(w, played=2)
        return turns, w.server.counters.copy()

    turns, counters = run_wire(settings, stt, piper, body)
    assert_heard(LINES[11][1], turns[:1])
    assert_heard(LINES[13][1], turns[1:])
    assert counters["bot_decrypt_failures"] == 0  # the bot's answers use the new key too


def test_bad_opus_packet_then_still_heard(settings, stt, piper, speech):
    first = speech.discord(LINES[12][1], lead_silence_s=0.0, tail_silence_s=0.8)
    then = speech.discord(LINES[13][1], lead_silence_s=0.0, tail_silence_s=0.8)

    async def body(w):
        w.server.add_member(11, "alice")
        async with trio.open_nursery() as n:
            n.start_soon(w.server.speak, 11, first)
            await trio.sleep(0.5)
            w.server.inject_bad_opus(11)  # in sequence, mid-utterance
        await trio.sleep(0.5)
        w.server.inject_bad_opus(11)  # and between utterances
        await w.server.speak(11, then)
        with trio.move_on_after(WAIT_S):
            while True:
                turns = [t for t in await turns_of(w, 11) if t["status"] == "answered"]
                if turns and wer(LINES[13][1], turns[-1]["transcript"]) <= 0.25:
                    break
                await trio.sleep(0.1)
        return await turns_of(w, 11), w.server.counters.copy()

    turns, counters = run_wire(settings, stt, piper, body)
    assert counters["bad_opus_injected"] == 2
    assert turns and turns[-1]["status"] == "answered", turns
    assert_heard(LINES[13][1], turns[-1:])


def test_packet_loss_and_reordering_transcript_still_right(settings, stt, piper, speech):
    # Not "... a dragon and a knight": with 5% loss even libopus's own concealment fed straight
    # to whisper hears "in the night" for some of Piper's (randomized) renditions.
    text = "Please tell me a story about a dragon who lives in a cave."
    pcm = speech.discord(text, lead_silence_s=0.0, tail_silence_s=0.8)

    async def body(w):
        w.server.add_member(11, "alice")
        await w.server.speak(11, pcm, loss=0.05, reorder=0.05, seed=7)
        turns = await wait_turns(w, 11)
        return turns, w.server.packets_lost.copy()

    turns, lost = run_wire(settings, stt, piper, body)
    assert lost[11] > 0  # the seed really drops packets
    assert_heard(text, turns)


def test_moderator_move_channel_session_follows(settings, stt, piper, speech):
    other = 300
    pcm = speech.discord(LINES[13][1], lead_silence_s=0.0, tail_silence_s=0.8)

    async def body(w):
        w.server.add_member(11, "alice")
        await w.server.move_bot(other)
        with trio.fail_after(WAIT_S):  # py-cord reconnects its voice websocket to the new server
            while not (w.server.counters["identifies"] >= 2 and w.vc.is_connected() and w.vc.channel.id == other):
                await trio.sleep(0.05)
        await w.server.wait_connected()
        w.server.add_member(13, "carol", channel_id=other)
        await w.server.speak(13, pcm)
        turns = await wait_turns(w, 13)
        return w.session.channel_id if w.session else None, turns

    channel_id, turns = run_wire(settings, stt, piper, body, extra_channels=(other,))
    assert channel_id == str(other)
    assert_heard(LINES[13][1], turns)


def test_other_bot_in_channel_is_not_heard(settings, stt, piper, speech):
    human = speech.discord(LINES[11][1], lead_silence_s=0.0, tail_silence_s=0.8)
    robot = speech.discord(OTHER_LINE, lead_silence_s=0.0, tail_silence_s=0.8)

    async def body(w):
        w.server.add_member(11, "alice")
        w.server.add_member(21, "musicbot", bot=True)
        async with trio.open_nursery() as n:
            n.start_soon(w.server.speak, 21, robot)
            n.start_soon(_speak_after, w, 11, human, 0.3, {})
        alice = await wait_turns(w, 11)
        await trio.sleep(1.0)  # time for a turn of the other bot to appear, if it were heard
        return alice, await turns_of(w, 21), set(w.session.speakers), w.server.packets_sent[21]

    alice, robot_turns, speakers, robot_packets = run_wire(settings, stt, piper, body)
    assert robot_packets > 50  # it did speak on the wire
    assert_heard(LINES[11][1], alice)
    assert robot_turns == [] and "21" not in speakers
