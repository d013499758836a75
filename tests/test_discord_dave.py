"""DAVE (Discord's audio E2EE, protocol v1) end to end on the loopback voice server: the server
plays the voice gateway's MLS external-sender role (tests/dave_gateway.py), the fake members are
real davey sessions driven by py-cord's own DAVE handlers, and the bot is py-cord 2.8.1's real
VoiceClient joined through `VoxApp.join_voice`. No stand-in DAVE session: every frame a member
sends is E2EE by its davey session inside the transport encryption, and every answer the bot
sends is decrypted by a member's davey session before it is decoded and transcribed."""

import time

import trio

from .discord_objects import BOT_ID
from .discord_voice_server import transcribe_pcm
from .helpers import find_in_order
from .test_discord_wire import (
    LINES,
    WAIT_S,
    _speak_after,
    assert_heard,
    run_wire,
    wait_bot_done,
    wait_turns,
)

DAVE = {"dave": True}


async def settled(w, what="DAVE settled", *, check=None):
    """Until every session is ready, no transition is open and (optionally) `check()` holds."""
    with trio.fail_after(WAIT_S):
        while not (w.server.dave_settled() and (check is None or check())):
            await trio.sleep(0.05)
    return w.server.dave.role.epoch


def line(speech, uid):
    return speech.discord(LINES[uid][1], lead_silence_s=0.0, tail_silence_s=0.8)


async def exchange(w, stt, uid, pcm, n, played):
    """`uid` says `pcm` (its `n`-th turn): heard, answered, and the bot's answer (E2EE unless
    downgraded) decrypted by the reader's session and transcribed. Returns (turn, bot's words,
    the member's frames sent E2EE, the bot's E2EE frames) for this exchange."""
    srv = w.server
    e2ee_before, bot_before = srv.dave.e2ee_sent[uid], srv.counters["bot_e2ee_frames"]
    since = time.perf_counter()
    await srv.speak(uid, pcm)
    turns = await wait_turns(w, uid, n)
    await wait_bot_done(w, played=played)
    heard = await transcribe_pcm(stt, srv.bot_audio(since))
    return turns[n - 1], heard, srv.dave.e2ee_sent[uid] - e2ee_before, srv.counters["bot_e2ee_frames"] - bot_before


def assert_answered(result, said, *, e2ee=True):
    """The exchange (member saying LINES[said]) was heard and answered, E2EE both ways (or
    transport-only both ways)."""
    turn, heard, member_e2ee, bot_e2ee = result
    if e2ee:
        assert member_e2ee > 20 and bot_e2ee > 20, (member_e2ee, bot_e2ee)
    else:
        assert member_e2ee == 0 and bot_e2ee == 0, (member_e2ee, bot_e2ee)
    assert turn["status"] == "answered", turn
    assert_heard(LINES[said][1], [turn])
    find_in_order([turn["response"]], heard)


def test_dave_three_members_heard_and_answered_e2ee_both_ways(settings, stt, piper, speech):
    pcm = {uid: speech.discord(text, lead_silence_s=0.0, tail_silence_s=0.8) for uid, (_, text) in LINES.items()}

    async def body(w):
        for uid, (name, _) in LINES.items():
            w.server.add_member(uid, name)
        epoch = await settled(w)
        async with trio.open_nursery() as n:
            for i, uid in enumerate(LINES):
                n.start_soon(_speak_after, w, uid, pcm[uid], 0.4 * i, {})
        turns = {uid: await wait_turns(w, uid) for uid in LINES}
        await wait_bot_done(w, played=sum(len(t) for t in turns.values()))
        heard = await transcribe_pcm(stt, w.server.bot_audio())
        return (
            turns,
            heard,
            w.server.counters.copy(),
            w.server.dave.e2ee_sent.copy(),
            epoch,
            w.vc.is_dave_connection(),
            set(w.server.dave.role.members),
        )

    turns, heard, counters, e2ee, epoch, dave, group = run_wire(settings, stt, piper, body, server_options=DAVE)
    assert dave and group == {BOT_ID, *LINES} and epoch >= 1, (group, epoch)
    assert all(e2ee[uid] > 20 for uid in LINES), e2ee  # what the bot heard was E2EE
    assert counters["bot_e2ee_frames"] > 20 and counters["bot_dave_errors"] == 0, counters
    for uid, (_, text) in LINES.items():
        assert all(t["status"] == "answered" for t in turns[uid]), turns[uid]
        assert_heard(text, turns[uid])
        for t in turns[uid]:  # the bot's E2EE answer, decrypted by a member, says the agent's words
            find_in_order([t["response"]], heard)


def test_dave_member_joining_and_leaving_mid_call_new_epochs_audio_both_ways(settings, stt, piper, speech):
    a, c = line(speech, 11), line(speech, 13)

    async def body(w):
        srv = w.server
        srv.add_member(11, "alice")
        srv.add_member(12, "bob")
        e0 = await settled(w)
        srv.add_member(13, "carol")  # joins mid-call: Add, commit, welcome -> a new epoch
        e1 = await settled(w, check=lambda: srv.dave.role.epoch > e0 and 13 in srv.dave.role.members)
        srv.dave.reader = 13  # the joiner's session must decrypt the bot's answer
        joined = await exchange(w, stt, 13, c, 1, played=1)
        await srv.member_leave(12)  # leaves: Remove, commit -> another epoch
        e2 = await settled(w, check=lambda: srv.dave.role.epoch > e1 and 12 not in srv.dave.role.members)
        srv.dave.reader = 11
        after_leave = await exchange(w, stt, 11, a, 1, played=2)
        return (e0, e1, e2), joined, after_leave, srv.counters.copy()

    epochs, joined, after_leave, counters = run_wire(settings, stt, piper, body, server_options=DAVE)
    assert epochs[0] < epochs[1] < epochs[2], epochs
    assert_answered(joined, 13)  # the joiner heard, and it decrypts the bot in the new epoch
    assert_answered(after_leave, 11)  # and again after the removal's epoch
    assert counters["bot_dave_errors"] == 0, counters


def test_dave_downgrade_to_transport_only_mid_call_both_ways(settings, stt, piper, speech):
    before, after = line(speech, 11), line(speech, 13)

    async def body(w):
        srv = w.server
        srv.add_member(11, "alice")
        await settled(w)
        first = await exchange(w, stt, 11, before, 1, played=1)
        await srv.downgrade_dave()  # op 21 (v0) -> op 23 from everyone -> op 22
        conn = w.vc._connection
        with trio.fail_after(WAIT_S):
            while not (
                conn.dave_protocol_version == 0 and conn.downgraded_dave and not srv.dave.role.pending_transitions()
            ):
                await trio.sleep(0.05)
        then = await exchange(w, stt, 11, after, 2, played=2)
        return first, then, srv.counters.copy()

    first, then, counters = run_wire(settings, stt, piper, body, server_options=DAVE)
    assert_answered(first, 11)
    # transport-only both ways after the transition (py-cord kept E2EE-encrypting: compat.py)
    assert_answered(then, 13, e2ee=False)
    assert counters["dave_downgrades"] == 1 and counters["dave_op_23"] >= 1 and counters["bot_dave_errors"] == 0


def test_dave_commit_rejected_by_the_bot_op31_then_recovers(settings, stt, piper, speech):
    pcm = line(speech, 12)

    async def body(w):
        srv = w.server
        srv.add_member(11, "alice")
        e0 = await settled(w)
        broken = []

        def corrupt_commit(op, payload):  # the first commit (op 29) the bot gets: tag broken
            if op == 29 and not broken:
                broken.append(payload)
                return payload[:-3] + bytes(b ^ 0x55 for b in payload[-3:])
            return payload

        srv.dave.tamper_bot = corrupt_commit
        srv.add_member(12, "bob")  # bob's Add -> a commit the bot cannot process -> op 31
        await settled(w, check=lambda: srv.counters["dave_op_31"] >= 1 and 12 in srv.dave.role.members)
        srv.dave.reader = 12  # the new member's session decrypts the bot after the recovery
        result = await exchange(w, stt, 12, pcm, 1, played=1)
        return broken, e0, srv.dave.role.epoch, result, srv.counters.copy()

    broken, e0, e1, result, counters = run_wire(settings, stt, piper, body, server_options=DAVE)
    # op 31, then the bot's stale leaf removed and its new key package added: more epochs
    assert broken and counters["dave_op_31"] >= 1 and e1 > e0 + 1, (counters, e0, e1)
    assert_answered(result, 12)
    assert counters["bot_dave_errors"] == 0, counters
