"""The voice gateway's DAVE role (MLS external sender) against real davey sessions run by py-cord.

Every member here is a `davey.DaveSession` driven by py-cord 2.8.1's own DAVE handlers
(`DaveMember`), so openmls checks each proposal signature, proposal ref, commit and welcome the
gateway role produces, and py-cord parses every frame. No voice server is involved.
"""

from __future__ import annotations

import random
import struct

import davey
import pytest

from .dave_gateway import (
    OP_ANNOUNCE_COMMIT,
    OP_EXECUTE_TRANSITION,
    OP_EXTERNAL_SENDER,
    OP_INVALID_COMMIT_WELCOME,
    OP_KEY_PACKAGE,
    OP_PREPARE_EPOCH,
    OP_PREPARE_TRANSITION,
    OP_PROPOSALS,
    OP_WELCOME,
    PROPOSALS_APPEND,
    PROPOSALS_REVOKE,
    DaveGatewayRole,
    DaveMember,
    DaveProtocolError,
    DaveRouter,
    Reader,
    client_frame,
    parse_client_frame,
    parse_key_package,
    parse_server_frame,
    parse_welcome,
    server_frame,
    split_commit_welcome,
    varint,
    vec,
)

CHANNEL = 927310423890473011
BOT = 1_300_000_000_000_000_001
ALICE = 158049329150427136
BOB = 158533742254751744
CAROL = 1_090_123_456_789_012_345
DAVE = 1_200_000_000_000_000_777

# An Opus voice frame (TOC 0xFC: CELT fullband 20 ms) with some payload; DAVE leaves silence
# frames (F8 FF FE) unencrypted, so use a real-looking one.
OPUS = bytes([0xFC]) + bytes(range(1, 120))


def call(*user_ids, tamper=None, rng=None):
    role = DaveGatewayRole(CHANNEL)
    router = DaveRouter(role, tamper=tamper, rng=rng)
    for uid in user_ids:
        router.join(DaveMember(uid, CHANNEL))
    return role, router


def assert_one_group(role: DaveGatewayRole, router: DaveRouter) -> None:
    """Everybody ready, in the same epoch and group as the gateway's own view of it."""
    members = router.members
    assert set(role.members) == set(members), "gateway and connected members disagree"
    codes = set()
    for uid, m in members.items():
        s = m.session
        assert m.ready, f"user {uid} not ready ({s.status})"
        assert s.status == davey.SessionStatus.active
        assert s.epoch == role.epoch, f"user {uid} at epoch {s.epoch}, gateway at {role.epoch}"
        assert s.own_leaf_index == role.members[uid], (
            f"user {uid}: leaf {s.own_leaf_index} vs gateway {role.members[uid]}"
        )
        assert sorted(int(u) for u in s.get_user_ids()) == sorted(members)
        codes.add(s.voice_privacy_code)
    assert len(codes) == 1, f"members see different epoch authenticators: {codes}"
    assert not role.pending_transitions(), "a transition was never executed"


def assert_everyone_hears_everyone(router: DaveRouter) -> None:
    members = router.members
    for sender_id, sender in members.items():
        frame = OPUS + sender_id.to_bytes(8, "big")
        encrypted = sender.encrypt_opus(frame)
        assert encrypted != frame and len(encrypted) > len(frame)
        for uid, m in members.items():
            if uid != sender_id:
                assert m.decrypt(sender_id, encrypted) == frame, f"{uid} cannot decrypt {sender_id}"


def test_bot_and_three_members_build_one_group_and_decrypt_each_other():
    role, router = call(BOT, ALICE, BOB, CAROL)
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)
    # Three commits made the group (creation + two joins), each executed after all were ready.
    assert role.epoch == 4 - 1
    assert [op for d, _, op in router.log if d == "out" and op == OP_EXECUTE_TRANSITION]
    # The group's creator (leaf 0) made it with its own commit; everyone else was welcomed.
    creator = next(uid for uid, leaf in role.members.items() if leaf == 0)
    welcomed = {uid for d, uid, op in router.log if d == "out" and op == OP_WELCOME}
    assert welcomed == {BOT, ALICE, BOB, CAROL} - {creator}


def test_member_joining_later_and_leaving_move_the_epoch_and_keep_audio_flowing():
    role, router = call(BOT, ALICE, BOB)
    assert_one_group(role, router)
    epoch = role.epoch

    router.join(DaveMember(CAROL, CHANNEL))
    assert role.epoch == epoch + 1
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)

    leaver = router.members[ALICE]
    router.leave(ALICE)
    assert role.epoch == epoch + 2
    assert ALICE not in role.members
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)
    # The member who left holds the old epoch's keys only: new-epoch audio is closed to it.
    encrypted = router.members[BOT].encrypt_opus(OPUS)
    with pytest.raises(Exception, match="(?i)decrypt"):
        leaver.decrypt(BOT, encrypted)

    # The freed leaf is reused by the next joiner, and the gateway knows it.
    freed = {0, 1, 2, 3} - set(role.members.values())
    router.join(DaveMember(DAVE, CHANNEL))
    assert role.members[DAVE] == min(freed)
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)


@pytest.mark.parametrize("seed", range(6))
def test_races_between_members_settle_on_one_group(seed):
    """Members' key packages, commits and acks reach the gateway in a shuffled order: competing
    commits, commits made before the latest proposals, joins during a transition."""
    rng = random.Random(seed)
    role = DaveGatewayRole(CHANNEL)
    router = DaveRouter(role, rng=rng)
    for uid in (BOT, ALICE, BOB):  # all connect before any of their messages is handled
        member = DaveMember(uid, CHANNEL)
        router.members[uid] = member
        router.seq[uid] = 0
        member.session_description()
        router.deliver(role.connect(uid))
    router.pump()
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)
    router.join(DaveMember(CAROL, CHANNEL))
    router.members.pop(ALICE)
    router.deliver(role.disconnect(ALICE))
    router.pump()
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)


def test_bot_and_member_hear_each_other_through_pycord_frames():
    """Two sessions: the smallest call. Frames are exactly what py-cord reads (seq_ack, op byte)."""
    role, router = call(BOT, ALICE)
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)
    bot, alice = router.members[BOT], router.members[ALICE]
    assert bot.ws.seq_ack == router.seq[BOT] and alice.ws.seq_ack == router.seq[ALICE]


def test_invalid_welcome_is_flagged_and_the_member_is_re_added():
    broken = []

    def tamper(uid, op, frame):
        if op == OP_WELCOME and uid == CAROL and not broken:
            broken.append(frame)
            return frame[:-5] + bytes(b ^ 0xFF for b in frame[-5:])  # corrupt encrypted_group_info
        return frame

    role, router = call(BOT, ALICE, tamper=tamper)
    router.join(DaveMember(CAROL, CHANNEL))
    assert broken, "the welcome for CAROL never went out"
    ins = [(uid, op) for d, uid, op in router.log if d == "in"]
    assert (CAROL, OP_INVALID_COMMIT_WELCOME) in ins
    # After op 31 CAROL sent a fresh key package, was removed and re-added in one more epoch.
    assert ins.index((CAROL, OP_INVALID_COMMIT_WELCOME)) < len(ins) - 1 - ins[::-1].index((CAROL, OP_KEY_PACKAGE))
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)


def test_invalid_commit_is_flagged_and_the_member_recovers():
    broken, armed = [], []

    def tamper(uid, op, frame):
        if armed and op == OP_ANNOUNCE_COMMIT and uid == ALICE and not broken:
            broken.append(frame)
            return frame[:-3] + bytes(b ^ 0x55 for b in frame[-3:])  # membership tag no longer verifies
        return frame

    role, router = call(BOT, ALICE, tamper=tamper)
    armed.append(True)
    router.join(DaveMember(BOB, CHANNEL))
    assert broken
    assert ("in", ALICE, OP_INVALID_COMMIT_WELCOME) in router.log
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)


def test_sole_member_reset_then_a_new_group_with_the_next_joiner():
    role, router = call(BOT, ALICE)
    router.leave(ALICE)
    # The bot alone: the gateway drops the group, the bot resets (op 24 epoch 1, op 21 id 0).
    outs = [op for d, uid, op in router.log if d == "out" and uid == BOT]
    assert outs[-2:] == [OP_PREPARE_EPOCH, OP_PREPARE_TRANSITION]
    assert not role.established and not role.members
    assert router.members[BOT].session.status == davey.SessionStatus.pending
    router.join(DaveMember(BOB, CHANNEL))
    assert role.epoch == 1
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)


def test_in_flight_add_is_revoked_when_the_joiner_leaves_first():
    role, router = call(BOT, ALICE, BOB)
    epoch = role.epoch
    carol = DaveMember(CAROL, CHANNEL)
    carol.session_description()
    connect = role.connect(CAROL)
    assert connect[0].op == OP_EXTERNAL_SENDER
    (kp_frame,) = carol.outbox
    op, kp = parse_client_frame(kp_frame)
    assert op == OP_KEY_PACKAGE
    add = role.on_key_package(CAROL, kp)
    revoke = role.disconnect(CAROL)  # gone before anyone saw the Add
    assert [(o.op, o.payload[0]) for o in add] == [(OP_PROPOSALS, PROPOSALS_APPEND)]
    assert [(o.op, o.payload[0]) for o in revoke] == [(OP_PROPOSALS, PROPOSALS_REVOKE)]
    assert set(revoke[0].to) == {BOT, ALICE, BOB}
    # Members get the Add, commit it, then the revoke: davey drops the proposal by its ref
    # (it raises if the ref does not match one it holds) and the stale commits are refused.
    rejected = len(role.rejected)
    router.deliver(add)
    router.deliver(revoke)
    router.pump()
    assert role.epoch == epoch
    assert len(role.rejected) == rejected + 3  # each member's commit of the revoked Add
    assert all("the epoch has 0 unrevoked" in why for why in role.rejected[rejected:])
    # The check has teeth: a ref davey does not hold makes it raise.
    bogus = bytes([PROPOSALS_REVOKE]) + vec(vec(b"\x01" * 32))
    with pytest.raises(ValueError, match="ProposalNotFound"):
        router.members[BOT].receive_binary(server_frame(99, OP_PROPOSALS, bogus))
    for uid in (BOT, ALICE, BOB):
        assert router.members[uid].session.status == davey.SessionStatus.active
    assert_one_group(role, router)
    assert_everyone_hears_everyone(router)


def test_downgrade_to_transport_only_and_upgrade_back_to_a_new_group():
    role, router = call(BOT, ALICE, BOB)
    before = router.members[BOT].session.voice_privacy_code
    router.deliver(role.prepare_downgrade())
    router.pump()
    for uid, m in router.members.items():
        assert m.state.dave_protocol_version == 0 and m.state.downgraded_dave
        # Receivers pass transport-only (unencrypted) Opus through while downgraded.
        other = next(u for u in router.members if u != uid)
        assert m.session.can_passthrough(other)
        assert m.decrypt(other, OPUS) == OPUS
    assert not role.pending_transitions()

    router.deliver(role.prepare_upgrade())
    router.pump()
    for m in router.members.values():
        assert m.state.dave_protocol_version == 1 and not m.state.downgraded_dave
    # A fresh group: made at epoch 1 (plus one Add if the last key package came after that commit).
    assert role.epoch in (1, 2)
    assert_one_group(role, router)
    assert router.members[BOT].session.voice_privacy_code != before
    assert_everyone_hears_everyone(router)


def test_gateway_refuses_replayed_and_foreign_commits():
    role, router = call(BOT, ALICE)
    commits = []
    router.tamper = lambda uid, op, frame: (commits.append(frame) or frame) if op == OP_ANNOUNCE_COMMIT else frame
    router.join(DaveMember(BOB, CHANNEL))
    assert commits
    _, _, payload = parse_server_frame(commits[0])
    old_commit = payload[2:]
    epoch = role.epoch
    # The same commit again (the epoch it was made for is over): not relayed.
    assert role.on_commit_welcome(BOB, old_commit) == []
    assert "epoch" in role.rejected[-1]
    # A commit for another channel's group.
    other = DaveGatewayRole(CHANNEL + 1)
    assert other.on_commit_welcome(BOB, old_commit) == []
    assert "group id" in other.rejected[-1]
    assert role.epoch == epoch
    assert_everyone_hears_everyone(router)


def test_key_package_validation():
    member = DaveMember(ALICE, CHANNEL)
    member.session_description()
    _, kp = parse_client_frame(member.outbox[0])
    parsed = parse_key_package(kp)
    assert parsed.user_id == ALICE
    role = DaveGatewayRole(CHANNEL)
    with pytest.raises(DaveProtocolError, match=f"from user {BOB} names user {ALICE}"):
        role.on_key_package(BOB, kp)
    forged = bytearray(kp)
    forged[-10] ^= 1  # in the key package signature
    with pytest.raises(DaveProtocolError, match="KeyPackageTBS"):
        role.on_key_package(ALICE, bytes(forged))
    with pytest.raises(DaveProtocolError, match="truncated"):
        role.on_key_package(ALICE, kp[:100])
    with pytest.raises(DaveProtocolError, match="trailing"):
        role.on_key_package(ALICE, kp + b"\0")


def test_wire_helpers_match_pycord_framing():
    assert server_frame(0x1234, 27, b"\x01xyz") == b"\x12\x34\x1b\x01xyz"
    assert parse_server_frame(b"\x00\x05\x19abc") == (5, 25, b"abc")
    assert client_frame(26, b"kp") == b"\x1akp"
    assert parse_client_frame(b"\x1ccw") == (28, b"cw")
    with pytest.raises(DaveProtocolError):
        parse_client_frame(b"")
    for n in (0, 63, 64, 16383, 16384, 70000):
        r = Reader(varint(n) + b"\0" * n, "v")
        assert len(r.vec()) == n and r.done()
    assert varint(2**30 - 1) == b"\xbf\xff\xff\xff"
    with pytest.raises(DaveProtocolError):
        varint(2**30)


def test_commit_welcome_split_and_per_joiner_welcome():
    """Op 28 = commit MLSMessage + Welcome; op 30 carries only the joiner's own secrets."""
    role, router = call(BOT, ALICE)
    received, sent = [], {}
    relay = role.on_commit_welcome

    def on_commit_welcome(uid, data):
        received.append(data)
        return relay(uid, data)

    def tamper(uid, op, frame):
        sent.setdefault(op, []).append((uid, parse_server_frame(frame)[2]))
        return frame

    role.on_commit_welcome = on_commit_welcome
    router.tamper = tamper
    # Both key packages in before anyone commits: one commit adds two members.
    adds = []
    for uid in (BOB, CAROL):
        joiner = DaveMember(uid, CHANNEL)
        router.members[uid] = joiner
        router.seq[uid] = 0
        joiner.session_description()
        router.deliver(role.connect(uid))
        adds += role.on_key_package(uid, parse_client_frame(joiner.outbox.pop(0))[1])
    router.deliver(adds)
    router.pump()
    assert_one_group(role, router)

    winner = next(
        data
        for data in received
        if split_commit_welcome(data)[1] is not None and len(parse_welcome(split_commit_welcome(data)[1]).secrets) == 2
    )
    commit, welcome = split_commit_welcome(winner)
    assert winner == commit + welcome
    ((_, announced),) = [(u, p) for u, p in sent[OP_ANNOUNCE_COMMIT] if u == BOT][-1:]
    tid = struct.unpack(">H", announced[:2])[0]
    assert tid != 0
    welcomes = {uid: payload for uid, payload in sent[OP_WELCOME] if uid in (BOB, CAROL)}
    assert set(welcomes) == {BOB, CAROL}
    for payload in welcomes.values():
        assert struct.unpack(">H", payload[:2])[0] == tid
        assert len(parse_welcome(payload[2:]).secrets) == 1
    assert welcomes[BOB][2:] != welcomes[CAROL][2:]
    assert_everyone_hears_everyone(router)
