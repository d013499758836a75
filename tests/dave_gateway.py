"""The voice gateway's side of DAVE (Discord audio E2EE) protocol v1: the MLS external sender.

Test support for the loopback Discord voice server. Pure, synchronous, no I/O: every method takes
what the gateway received and returns the messages it must send (`Outbound`: recipients, opcode,
binary payload or JSON `d`). The voice server only moves bytes and encodes frames with the helpers
below; everything MLS lives here. Real counterparts: the members are `davey.DaveSession`s driven by
py-cord 2.8.1's own client code (`DaveMember` below), and openmls inside davey checks every byte
this module produces (signatures, proposal refs, key package refs, group id, epoch).

Wire framing (py-cord `discord/voice/gateway.py`):
  server -> client binary: uint16 seq (big endian) | uint8 op | payload   (`server_frame`)
  client -> server binary: uint8 op | payload                             (`parse_client_frame`)
  JSON ops: {"op": N, "d": {...}}; the server adds its "seq" like for every other JSON op.

Opcode flow (what the voice server calls, and when):
  identify (0) carries max_dave_protocol_version; announce dave_protocol_version 1 in op 4 and
  right after it (py-cord drops binary DAVE ops until op 4 has created its davey session):
    role.connect(uid)                  -> op 25 external sender package (binary) to uid
  op 26 key package (client, binary)   -> role.on_key_package(uid, payload)
    -> op 27 append proposals (binary) to the members that must commit them: the other pending
       members while no group is established (and uid gets the adds already in flight), the group's
       members once it is. A re-sent key package also revokes/removes the user's previous one.
  op 28 commit[+welcome] (client)      -> role.on_commit_welcome(uid, payload)
    -> the first valid commit for the epoch wins: op 29 (transition id + commit) to the members
       that were already in the group (the committer included), op 30 (transition id + the welcome
       cut down to that joiner's secrets) to each joiner. A stale/invalid commit returns [].
  op 23 ready for transition (JSON)    -> role.on_ready_for_transition(uid, transition_id)
    -> op 22 execute transition (JSON) to the group when every member is ready; a server that
       gives up waiting calls role.execute_transition(tid) itself (Discord: about 2 s).
  op 31 invalid commit/welcome (JSON)  -> role.on_invalid_commit_welcome(uid, transition_id)
    -> op 27 Remove proposal for uid's stale leaf to the rest of the group; uid is pending again
       and py-cord sends a fresh key package (op 26) right after, which re-adds it.
  client disconnect (op 13 to others)  -> role.disconnect(uid)
    -> op 27 Remove (or revoke of its in-flight Add); when one member would remain: the "sole
       member reset", op 24 {epoch: 1} then op 21 {transition_id: 0} to it.
  protocol version changes: role.prepare_downgrade() -> op 21 {protocol_version: 0} to all;
    role.prepare_upgrade() -> op 24 {protocol_version: 1, epoch: 1} to all (new group).

Caveats from py-cord 2.8.1: an exception in its op 27 handler (e.g. proposals before op 25 made
its local group) escapes `received_binary_message`, so keep op 25 first on every connection; it
passes no expected user ids to davey, so op 11 clients_connect is not needed for DAVE; it sends a
new key package on op 4, on op 24 with epoch 1, and after op 31.

Plugging into the loopback voice server: one `DaveGatewayRole(channel_id)` per call; send each
`Outbound` to every user in `.to` (skip users no longer connected) as `.frame(seq)` (binary) or
`.json(seq)` (JSON), with that connection's next seq. The fake members are `DaveMember`s (py-cord's
own DAVE handlers over a davey session): feed them the frames they receive (`receive_binary`,
`receive_json`), send what collects in `outbox`, `encrypt_opus` their Opus before transport
encryption and `decrypt(sender_id, frame)` the bot's after it. `DaveRouter` is the same loop without
sockets (the tests in test_dave_gateway.py use it).

MLS details (RFC 9420; DAVE protocol v1 = ciphersuite 2, P-256/SHA-256, basic credentials whose
identity is the user id as big-endian u64, group id = channel id as big-endian u64). The external
sender needs no group secrets: an external proposal is a PublicMessage with sender type external
(index 0), signed with SignWithLabel("FramedContentTBS") over version|wire_format|FramedContent
(no GroupContext for external senders) and carrying no membership tag. Proposal refs are
RefHash("MLS 1.0 Proposal Reference", wire_format|FramedContent|signature). Leaf indices are
tracked as MLS assigns them: the group creator is leaf 0, Removes are applied before Adds, each
Add takes the leftmost free leaf in commit order.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# Voice gateway opcodes (py-cord discord/voice/enums.py).
OP_SESSION_DESCRIPTION = 4
OP_PREPARE_TRANSITION = 21
OP_EXECUTE_TRANSITION = 22
OP_READY_FOR_TRANSITION = 23
OP_PREPARE_EPOCH = 24
OP_EXTERNAL_SENDER = 25
OP_KEY_PACKAGE = 26
OP_PROPOSALS = 27
OP_COMMIT_WELCOME = 28
OP_ANNOUNCE_COMMIT = 29
OP_WELCOME = 30
OP_INVALID_COMMIT_WELCOME = 31

PROPOSALS_APPEND = 0
PROPOSALS_REVOKE = 1

MLS10 = 1
CIPHERSUITE_P256 = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256
WF_PUBLIC_MESSAGE = 1
WF_KEY_PACKAGE = 5
SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
CONTENT_PROPOSAL = 2
CONTENT_COMMIT = 3
PROPOSAL_ADD = 1
PROPOSAL_REMOVE = 3
CREDENTIAL_BASIC = 1
MAX_LIFETIME = (0, 2**64 - 1)


class DaveProtocolError(ValueError):
    """A DAVE/MLS message the gateway refuses (what was wrong, and in which message)."""


# ---------------------------------------------------------------------------------------------
# Frames as py-cord reads and writes them


def server_frame(seq: int, op: int, payload: bytes) -> bytes:
    """Server -> client binary frame: uint16 seq | op | payload (py-cord reads msg[2] as op)."""
    return struct.pack(">HB", seq & 0xFFFF, op) + payload


def parse_server_frame(frame: bytes) -> tuple[int, int, bytes]:
    if len(frame) < 3:
        raise DaveProtocolError(f"server binary frame of {len(frame)} bytes: needs seq(2)+op(1)")
    seq, op = struct.unpack_from(">HB", frame)
    return seq, op, frame[3:]


def client_frame(op: int, payload: bytes) -> bytes:
    """Client -> server binary frame: op | payload (py-cord `send_as_bytes`)."""
    return bytes([op]) + payload


def parse_client_frame(frame: bytes) -> tuple[int, bytes]:
    if not frame:
        raise DaveProtocolError("empty client binary frame: expected an opcode byte")
    return frame[0], frame[1:]


def transition_payload(transition_id: int, body: bytes) -> bytes:
    """Payload of op 29/30: uint16 transition id | MLS bytes (py-cord reads msg[3:5], msg[5:])."""
    return struct.pack(">H", transition_id) + body


# ---------------------------------------------------------------------------------------------
# TLS presentation language with MLS variable-length vectors (RFC 9420 §2.1.2)


def varint(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack(">H", 0x4000 | n)
    if n < 1 << 30:
        return struct.pack(">I", 0x80000000 | n)
    raise DaveProtocolError(f"vector of {n} bytes is too long for an MLS varint")


def vec(data: bytes) -> bytes:
    return varint(len(data)) + data


class Reader:
    def __init__(self, data: bytes, what: str):
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise DaveProtocolError(
                f"{self.what}: truncated at byte {self.pos} (needs {n} more, has {len(self.data) - self.pos})"
            )

    def take(self, n: int) -> bytes:
        self._need(n)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def vec(self) -> bytes:
        first = self.u8()
        prefix = first >> 6
        if prefix == 0:
            n = first
        elif prefix == 1:
            n = ((first & 0x3F) << 8) | self.u8()
        elif prefix == 2:
            n = ((first & 0x3F) << 24) | int.from_bytes(self.take(3), "big")
        else:
            raise DaveProtocolError(f"{self.what}: invalid varint prefix at byte {self.pos - 1}")
        return self.take(n)

    def done(self) -> bool:
        return self.pos == len(self.data)

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def sign_content(label: str, content: bytes) -> bytes:
    """SignWithLabel's signed bytes: SignContent {label<V> = "MLS 1.0 " + label, content<V>}."""
    return vec(b"MLS 1.0 " + label.encode()) + vec(content)


def ref_hash(label: str, value: bytes) -> bytes:
    """RefHash (RFC 9420 §5.2) with SHA-256: Hash(RefHashInput {label<V>, value<V>})."""
    return hashlib.sha256(vec(label.encode()) + vec(value)).digest()


def u64_be(n: int) -> bytes:
    return struct.pack(">Q", n)


def _verify(public_point: bytes, signature: bytes, label: str, content: bytes, what: str) -> None:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_point)
        key.verify(signature, sign_content(label, content), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise DaveProtocolError(f"{what}: signature ({label}) does not verify: {exc!r}") from exc


# ---------------------------------------------------------------------------------------------
# MLS structures the gateway reads


@dataclass(frozen=True)
class LeafNode:
    encryption_key: bytes
    signature_key: bytes
    credential_type: int
    identity: bytes
    source: int
    lifetime: tuple[int, int] | None
    tbs: bytes  # everything before the signature (LeafNodeTBS for a key_package source)
    signature: bytes


def read_leaf_node(r: Reader) -> LeafNode:
    start = r.pos
    encryption_key = r.vec()
    signature_key = r.vec()
    credential_type = r.u16()
    if credential_type != CREDENTIAL_BASIC:
        raise DaveProtocolError(f"{r.what}: credential type {credential_type}, DAVE allows basic (1) only")
    identity = r.vec()
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, credentials
        r.vec()
    source = r.u8()
    lifetime = None
    if source == 1:
        lifetime = (r.u64(), r.u64())
    elif source == 3:
        r.vec()  # parent_hash
    elif source != 2:
        raise DaveProtocolError(f"{r.what}: unknown leaf node source {source}")
    r.vec()  # extensions
    tbs = r.data[start : r.pos]
    signature = r.vec()
    return LeafNode(encryption_key, signature_key, credential_type, identity, source, lifetime, tbs, signature)


@dataclass(frozen=True)
class KeyPackage:
    raw: bytes  # the KeyPackage struct as it goes into an Add proposal
    user_id: int
    leaf: LeafNode

    @property
    def ref(self) -> bytes:
        """KeyPackageRef, which names the joiner's entry in a Welcome's secrets."""
        return ref_hash("MLS 1.0 KeyPackage Reference", self.raw)


def read_key_package(r: Reader) -> KeyPackage:
    start = r.pos
    version = r.u16()
    suite = r.u16()
    if version != MLS10 or suite != CIPHERSUITE_P256:
        raise DaveProtocolError(f"{r.what}: MLS version {version} ciphersuite {suite}, DAVE v1 needs 1/2")
    r.vec()  # init_key
    leaf = read_leaf_node(r)
    r.vec()  # extensions
    tbs = r.data[start : r.pos]
    signature = r.vec()
    raw = r.data[start : r.pos]
    if leaf.source != 1:
        raise DaveProtocolError(f"{r.what}: leaf node source {leaf.source}, a key package needs 1")
    if len(leaf.identity) != 8:
        raise DaveProtocolError(f"{r.what}: credential identity of {len(leaf.identity)} bytes, expected a u64 user id")
    _verify(leaf.signature_key, leaf.signature, "LeafNodeTBS", leaf.tbs, r.what)
    _verify(leaf.signature_key, signature, "KeyPackageTBS", tbs, r.what)
    return KeyPackage(raw, struct.unpack(">Q", leaf.identity)[0], leaf)


def parse_key_package(data: bytes, what: str = "key package") -> KeyPackage:
    """Op 26 payload: a KeyPackage (davey sends it bare; an MLSMessage wrapper is accepted too)."""
    r = Reader(data, what)
    if len(data) >= 4 and struct.unpack_from(">HH", data) == (MLS10, WF_KEY_PACKAGE):
        r.take(4)
    kp = read_key_package(r)
    if not r.done():
        raise DaveProtocolError(f"{what}: {len(r.data) - r.pos} trailing bytes after the key package")
    return kp


def _skip_proposal(r: Reader) -> tuple[int, int | None]:
    """Skip an inline Proposal; returns (type, removed leaf for a Remove)."""
    kind = r.u16()
    if kind == PROPOSAL_ADD:
        read_key_package(r)
        return kind, None
    if kind == PROPOSAL_REMOVE:
        return kind, r.u32()
    raise DaveProtocolError(f"{r.what}: inline proposal type {kind}; DAVE commits carry refs only")


@dataclass(frozen=True)
class Commit:
    raw: bytes  # the MLSMessage as relayed in op 29
    group_id: bytes
    epoch: int
    sender_type: int
    sender_index: int
    refs: tuple[bytes, ...]
    inline: int  # inline proposals (DAVE forbids them)
    path_leaf: LeafNode | None


def read_commit_message(r: Reader) -> Commit:
    """An MLSMessage(PublicMessage(Commit)), as the first part of op 28."""
    start = r.pos
    version, wire_format = r.u16(), r.u16()
    if version != MLS10 or wire_format != WF_PUBLIC_MESSAGE:
        raise DaveProtocolError(f"{r.what}: MLS version {version} wire format {wire_format}, need a PublicMessage")
    group_id = r.vec()
    epoch = r.u64()
    sender_type = r.u8()
    sender_index = r.u32() if sender_type in (SENDER_MEMBER, SENDER_EXTERNAL) else -1
    r.vec()  # authenticated_data
    content_type = r.u8()
    if content_type != CONTENT_COMMIT:
        raise DaveProtocolError(f"{r.what}: content type {content_type}, expected a commit (3)")
    refs, inline = [], 0
    pr = Reader(r.vec(), r.what + " proposals")
    while not pr.done():
        kind = pr.u8()
        if kind == 2:
            refs.append(pr.vec())
        elif kind == 1:
            _skip_proposal(pr)
            inline += 1
        else:
            raise DaveProtocolError(f"{r.what}: ProposalOrRef type {kind}")
    path_leaf = None
    if r.u8():
        path_leaf = read_leaf_node(r)
        r.vec()  # UpdatePathNode nodes<V>
    r.vec()  # signature
    r.vec()  # confirmation_tag
    if sender_type == SENDER_MEMBER:
        r.vec()  # membership_tag
    return Commit(r.data[start : r.pos], group_id, epoch, sender_type, sender_index, tuple(refs), inline, path_leaf)


@dataclass(frozen=True)
class Welcome:
    cipher_suite: int
    secrets: tuple[tuple[bytes, bytes], ...]  # (KeyPackageRef, HPKECiphertext bytes)
    encrypted_group_info: bytes

    def for_joiner(self, key_package_ref: bytes) -> bytes:
        """The Welcome cut down to one joiner's group secrets (what op 30 carries)."""
        mine = [(ref, ct) for ref, ct in self.secrets if ref == key_package_ref]
        if not mine:
            raise DaveProtocolError("welcome has no group secrets for the joiner's key package")
        secrets = b"".join(vec(ref) + ct for ref, ct in mine)
        return struct.pack(">H", self.cipher_suite) + vec(secrets) + vec(self.encrypted_group_info)


def parse_welcome(data: bytes, what: str = "welcome") -> Welcome:
    r = Reader(data, what)
    suite = r.u16()
    sr = Reader(r.vec(), what + " secrets")
    secrets = []
    while not sr.done():
        ref = sr.vec()
        ct_start = sr.pos
        sr.vec()  # kem_output
        sr.vec()  # ciphertext
        secrets.append((ref, sr.data[ct_start : sr.pos]))
    info = r.vec()
    if not r.done():
        raise DaveProtocolError(f"{what}: {len(r.data) - r.pos} trailing bytes")
    return Welcome(suite, tuple(secrets), info)


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Op 28 payload -> (commit MLSMessage, Welcome or None): py-cord sends them back to back."""
    r = Reader(data, "commit/welcome (op 28)")
    commit = read_commit_message(r)
    rest = r.rest()
    return commit.raw, (rest or None)


# ---------------------------------------------------------------------------------------------
# The external sender


class ExternalSender:
    """The gateway's P-256 signing key and basic credential (one per call)."""

    def __init__(self, identity: bytes = b"voxbridge-loopback-gateway"):
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.identity = identity

    def package(self) -> bytes:
        """ExternalSender {signature_key<V>, Credential {credential_type = basic, identity<V>}}."""
        return vec(self.public_key) + struct.pack(">H", CREDENTIAL_BASIC) + vec(self.identity)

    def proposal(self, group_id: bytes, epoch: int, proposal: bytes) -> tuple[bytes, bytes]:
        """An external proposal as MLSMessage bytes, and its ProposalRef."""
        content = (
            vec(group_id)
            + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)
            + vec(b"")  # authenticated_data
            + bytes([CONTENT_PROPOSAL])
            + proposal
        )
        wire = struct.pack(">H", WF_PUBLIC_MESSAGE)
        tbs = struct.pack(">H", MLS10) + wire + content
        signature = self._key.sign(sign_content("FramedContentTBS", tbs), ec.ECDSA(hashes.SHA256()))
        auth = vec(signature)
        message = struct.pack(">H", MLS10) + wire + content + auth
        return message, ref_hash("MLS 1.0 Proposal Reference", wire + content + auth)


def add_proposal(kp: KeyPackage) -> bytes:
    return struct.pack(">H", PROPOSAL_ADD) + kp.raw


def remove_proposal(leaf: int) -> bytes:
    return struct.pack(">HI", PROPOSAL_REMOVE, leaf)


# ---------------------------------------------------------------------------------------------
# The gateway role


@dataclass(frozen=True)
class Outbound:
    """One message for the voice server to send: binary (op + payload) or JSON (op + d)."""

    to: tuple[int, ...]
    op: int
    payload: bytes | None = None
    d: dict | None = None

    def frame(self, seq: int) -> bytes:
        assert self.payload is not None, "JSON message: send {'op': op, 'd': d, 'seq': seq}"
        return server_frame(seq, self.op, self.payload)

    def json(self, seq: int | None = None) -> dict:
        assert self.d is not None, "binary message: use frame(seq)"
        msg = {"op": self.op, "d": self.d}
        if seq is not None:
            msg["seq"] = seq
        return msg


@dataclass
class _Proposal:
    ref: bytes
    message: bytes
    kind: int  # PROPOSAL_ADD / PROPOSAL_REMOVE
    user_id: int
    key_package: KeyPackage | None = None  # for adds
    leaf: int | None = None  # for removes
    sent_to: set[int] = field(default_factory=set)


@dataclass
class _Transition:
    tid: int
    protocol_version: int
    waiting: set[int]
    to: set[int]


class DaveGatewayRole:
    """The voice gateway as DAVE delivery service and MLS external sender for one channel.

    Holds what the DAVE spec says the gateway holds: group id, epoch, ciphersuite, each member's
    leaf index, the pending members' key packages, the proposals broadcast in the current epoch,
    and the open transitions. Not thread-safe; call it from the voice server's one task.
    """

    def __init__(self, channel_id: int, *, protocol_version: int = 1):
        self.channel_id = channel_id
        self.group_id = u64_be(channel_id)
        self.protocol_version = protocol_version
        self.sender = ExternalSender()
        self.connected: set[int] = set()
        self.key_packages: dict[int, KeyPackage] = {}  # pending members (sent op 26, not welcomed)
        self.members: dict[int, int] = {}  # established group: user id -> leaf index
        self.epoch = 0  # 0 while no group is established
        self.proposals: list[_Proposal] = []  # broadcast in the current epoch, not revoked
        self.transitions: dict[int, _Transition] = {}
        self.rejected: list[str] = []  # why commits were refused (for tests and logs)
        self._next_tid = 1

    # -- helpers --------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.epoch > 0

    def _tid(self) -> int:
        tid = self._next_tid
        self._next_tid = tid % 0xFFFF + 1  # 1..65535; 0 is reserved for (re)initialisation
        return tid

    def external_sender_package(self) -> bytes:
        """Op 25 payload."""
        return self.sender.package()

    def _propose(self, kind: int, body: bytes, user_id: int, **extra) -> _Proposal:
        message, ref = self.sender.proposal(self.group_id, self.epoch, body)
        p = _Proposal(ref, message, kind, user_id, **extra)
        self.proposals.append(p)
        return p

    def _append(self, to: Iterable[int], proposals: list[_Proposal]) -> list[Outbound]:
        to = tuple(sorted(set(to)))
        if not to or not proposals:
            return []
        for p in proposals:
            p.sent_to.update(to)
        payload = bytes([PROPOSALS_APPEND]) + vec(b"".join(p.message for p in proposals))
        return [Outbound(to, OP_PROPOSALS, payload)]

    def _revoke(self, proposals: list[_Proposal]) -> list[Outbound]:
        out = []
        for p in proposals:
            self.proposals.remove(p)
            if p.sent_to:
                payload = bytes([PROPOSALS_REVOKE]) + vec(vec(p.ref))
                out.append(Outbound(tuple(sorted(p.sent_to)), OP_PROPOSALS, payload))
        return out

    def _free_leaf(self, taken: set[int]) -> int:
        leaf = 0
        while leaf in taken:
            leaf += 1
        return leaf

    # -- connection events ----------------------------------------------------------------

    def connect(self, user_id: int) -> list[Outbound]:
        """A DAVE-capable client identified: send it the external sender package (op 25)."""
        self.connected.add(user_id)
        return [Outbound((user_id,), OP_EXTERNAL_SENDER, self.external_sender_package())]

    def disconnect(self, user_id: int) -> list[Outbound]:
        """A client left: revoke its in-flight Add, propose its removal, or reset a sole member."""
        self.connected.discard(user_id)
        self.key_packages.pop(user_id, None)
        out = self._revoke([p for p in self.proposals if p.kind == PROPOSAL_ADD and p.user_id == user_id])
        for t in list(self.transitions.values()):
            t.to.discard(user_id)
            t.waiting.discard(user_id)
            out += self._maybe_execute(t)
        if user_id in self.members:
            remaining = set(self.members) - {user_id} - self._removed_users()
            if len(remaining) == 1:
                return out + self._sole_member_reset(remaining.pop())
            if not remaining:
                return out + self._reset_group()
            leaf = self.members[user_id]  # stays in the tree until a commit removes it
            p = self._propose(PROPOSAL_REMOVE, remove_proposal(leaf), user_id, leaf=leaf)
            out += self._append(remaining, [p])
        return out

    def _reset_group(self) -> list[Outbound]:
        self.members.clear()
        self.epoch = 0
        self.proposals.clear()
        return []

    def _sole_member_reset(self, sole: int) -> list[Outbound]:
        self._reset_group()
        self.key_packages.pop(sole, None)
        d_epoch = {"protocol_version": self.protocol_version, "epoch": 1}
        d_transition = {"protocol_version": self.protocol_version, "transition_id": 0}
        return [
            Outbound((sole,), OP_PREPARE_EPOCH, d=d_epoch),
            Outbound((sole,), OP_PREPARE_TRANSITION, d=d_transition),
        ]

    # -- MLS handshake --------------------------------------------------------------------

    def on_key_package(self, user_id: int, data: bytes) -> list[Outbound]:
        """Op 26: validate the key package, then broadcast the Add (op 27) to those who commit."""
        kp = parse_key_package(data, f"key package (op 26) from user {user_id}")
        if kp.user_id != user_id:
            raise DaveProtocolError(f"key package from user {user_id} names user {kp.user_id} in its credential")
        if kp.leaf.lifetime != MAX_LIFETIME:
            raise DaveProtocolError(
                f"key package from user {user_id}: lifetime {kp.leaf.lifetime}, DAVE needs (0, 2^64-1)"
            )
        self.connected.add(user_id)
        self.key_packages[user_id] = kp
        out = self._revoke([p for p in self.proposals if p.kind == PROPOSAL_ADD and p.user_id == user_id])
        if not self.established:
            add = self._propose(PROPOSAL_ADD, add_proposal(kp), user_id, key_package=kp)
            others = set(self.key_packages) - {user_id}
            out += self._append(others, [add])
            in_flight = [p for p in self.proposals if p.kind == PROPOSAL_ADD and p.user_id != user_id]
            out += self._append({user_id}, in_flight)
            return out
        batch = []
        if user_id in self.members and not any(
            p.kind == PROPOSAL_REMOVE and p.user_id == user_id for p in self.proposals
        ):
            # Re-added with a new key package: its stale leaf goes in the same epoch.
            leaf = self.members[user_id]
            batch.append(self._propose(PROPOSAL_REMOVE, remove_proposal(leaf), user_id, leaf=leaf))
        batch.append(self._propose(PROPOSAL_ADD, add_proposal(kp), user_id, key_package=kp))
        committers = set(self.members) - {user_id} - self._removed_users()
        return out + self._append(committers, batch)

    def _removed_users(self) -> set[int]:
        return {p.user_id for p in self.proposals if p.kind == PROPOSAL_REMOVE}

    def _expected_refs(self, committer: int) -> set[bytes]:
        if self.established:
            return {p.ref for p in self.proposals}
        return {p.ref for p in self.proposals if p.user_id != committer}

    def on_commit_welcome(self, user_id: int, data: bytes) -> list[Outbound]:
        """Op 28: the first valid commit of the epoch wins; relay it (op 29) and the welcomes (op 30).

        A commit for another epoch or one that does not reference exactly the unrevoked proposals
        of this epoch is dropped (returns []), the reason appended to `self.rejected`.
        """
        r = Reader(data, f"commit/welcome (op 28) from user {user_id}")
        commit = read_commit_message(r)
        welcome_bytes = r.rest() or None
        why = self._check_commit(user_id, commit)
        if why:
            self.rejected.append(why)
            return []
        by_ref = {p.ref: p for p in self.proposals}
        used = [by_ref[ref] for ref in commit.refs]
        adds = [p for p in used if p.kind == PROPOSAL_ADD]
        if adds and welcome_bytes is None:
            self.rejected.append(f"commit from user {user_id} adds members but carries no welcome")
            return []
        welcome = parse_welcome(welcome_bytes, f"welcome (op 28) from user {user_id}") if adds else None

        old_members = set(self.members) if self.established else {user_id}
        if not self.established:
            self.members = {user_id: 0}
        for p in used:
            if p.kind == PROPOSAL_REMOVE:
                self.members = {u: leaf for u, leaf in self.members.items() if leaf != p.leaf}
        joined = []
        for p in adds:
            self.members[p.user_id] = self._free_leaf(set(self.members.values()))
            joined.append(p)
            self.key_packages.pop(p.user_id, None)
        self.key_packages.pop(user_id, None)
        self.epoch = commit.epoch + 1
        self.proposals.clear()

        tid = self._tid()
        group = set(self.members)
        self.transitions[tid] = _Transition(tid, self.protocol_version, set(group), set(group))
        # The commit goes to members that stay in the tree (a member removed and re-added in this
        # commit is a joiner: it has no group to apply the commit to), welcomes to the joiners.
        stay = (old_members & group) - {p.user_id for p in joined}
        out = []
        if stay:
            out.append(Outbound(tuple(sorted(stay)), OP_ANNOUNCE_COMMIT, transition_payload(tid, commit.raw)))
        for p in joined:
            body = welcome.for_joiner(p.key_package.ref)
            out.append(Outbound((p.user_id,), OP_WELCOME, transition_payload(tid, body)))
        # Members still pending (key package arrived after this commit was made) are proposed
        # again in the new epoch.
        for uid, kp in list(self.key_packages.items()):
            if uid not in self.members and uid in self.connected:
                add = self._propose(PROPOSAL_ADD, add_proposal(kp), uid, key_package=kp)
                out += self._append(group, [add])
        return out

    def _check_commit(self, user_id: int, commit: Commit) -> str | None:
        who = f"commit from user {user_id}"
        if commit.group_id != self.group_id:
            return f"{who}: group id {commit.group_id.hex()} is not channel {self.channel_id}"
        if commit.epoch != self.epoch:
            return f"{who}: epoch {commit.epoch}, the group is at epoch {self.epoch}"
        if commit.sender_type != SENDER_MEMBER:
            return f"{who}: sender type {commit.sender_type}, expected member (1)"
        if self.established:
            if user_id not in self.members:
                return f"{who}: not a member of the group"
            if commit.sender_index != self.members[user_id]:
                return f"{who}: sender leaf {commit.sender_index}, the gateway has it at {self.members[user_id]}"
        elif user_id not in self.key_packages:
            return f"{who}: no key package from this user for the new group"
        elif commit.sender_index != 0:
            return f"{who}: creator's leaf {commit.sender_index}, expected 0"
        if commit.inline:
            return f"{who}: {commit.inline} inline proposal(s); DAVE allows proposal refs only"
        if not commit.refs:
            return f"{who}: no proposal refs"
        expected = self._expected_refs(user_id)
        if set(commit.refs) != expected or len(commit.refs) != len(expected):
            return f"{who}: references {len(commit.refs)} proposal(s), the epoch has {len(expected)} unrevoked"
        if commit.path_leaf is not None:
            identity = u64_be(user_id)
            kp = self.key_packages.get(user_id) if not self.established else None
            if commit.path_leaf.identity != identity:
                return f"{who}: update path changes the committer's credential"
            if kp is not None and commit.path_leaf.signature_key != kp.leaf.signature_key:
                return f"{who}: update path changes the committer's signature key"
        return None

    def on_invalid_commit_welcome(self, user_id: int, transition_id: int) -> list[Outbound]:
        """Op 31: the flagging member could not process a commit/welcome; propose its removal.

        py-cord then resets its session and sends a new key package (op 26), which re-adds it.
        """
        self.key_packages.pop(user_id, None)
        out = self._revoke([p for p in self.proposals if p.kind == PROPOSAL_ADD and p.user_id == user_id])
        t = self.transitions.get(transition_id)
        if t is not None:
            t.waiting.discard(user_id)
            t.to.discard(user_id)
        if user_id in self.members:
            others = set(self.members) - {user_id}
            if not others:
                self._reset_group()
            elif not any(p.kind == PROPOSAL_REMOVE and p.user_id == user_id for p in self.proposals):
                leaf = self.members[user_id]
                p = self._propose(PROPOSAL_REMOVE, remove_proposal(leaf), user_id, leaf=leaf)
                out += self._append(others, [p])
        if t is not None:
            out += self._maybe_execute(t)
        return out

    # -- transitions ----------------------------------------------------------------------

    def on_ready_for_transition(self, user_id: int, transition_id: int) -> list[Outbound]:
        """Op 23: when every member is ready, execute the transition (op 22)."""
        t = self.transitions.get(transition_id)
        if t is None:
            return []
        t.waiting.discard(user_id)
        return self._maybe_execute(t)

    def _maybe_execute(self, t: _Transition) -> list[Outbound]:
        if t.waiting or self.transitions.get(t.tid) is not t:
            return []
        return self.execute_transition(t.tid)

    def execute_transition(self, transition_id: int) -> list[Outbound]:
        """Op 22 to everyone in the transition (also what a server does on its ready timeout)."""
        t = self.transitions.pop(transition_id, None)
        if t is None:
            return []
        self.protocol_version = t.protocol_version
        to = tuple(sorted(t.to & self.connected)) or tuple(sorted(t.to))
        return [Outbound(to, OP_EXECUTE_TRANSITION, d={"transition_id": transition_id})]

    def pending_transitions(self) -> list[int]:
        return sorted(self.transitions)

    def prepare_downgrade(self) -> list[Outbound]:
        """Announce protocol version 0 (op 21); op 22 follows when all are ready (op 23)."""
        tid = self._tid()
        everyone = set(self.connected)
        self.transitions[tid] = _Transition(tid, 0, set(everyone), set(everyone))
        self._reset_group()
        self.key_packages.clear()
        return [
            Outbound(tuple(sorted(everyone)), OP_PREPARE_TRANSITION, d={"protocol_version": 0, "transition_id": tid})
        ]

    def prepare_upgrade(self, protocol_version: int = 1) -> list[Outbound]:
        """Announce a new group for `protocol_version` (op 24, epoch 1): clients send key packages."""
        self._reset_group()
        self.key_packages.clear()
        self.protocol_version = protocol_version
        everyone = tuple(sorted(self.connected))
        return [Outbound(everyone, OP_PREPARE_EPOCH, d={"protocol_version": protocol_version, "epoch": 1})]


# ---------------------------------------------------------------------------------------------
# Members as py-cord runs them, and a synchronous router (the DAVE half of a voice server)


class _CapturingSocket:
    """Stands where py-cord's aiohttp websocket is: records what the client sends."""

    def __init__(self) -> None:
        self.sent: list[bytes | dict] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    async def send_str(self, data: str) -> None:
        self.sent.append(json.loads(data))


def _run(coro):
    """Run one of py-cord's handlers to completion: with our socket none of them ever suspends."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a py-cord DAVE handler suspended; it needs an event loop here")


def _pycord_state_class():
    from discord.voice.state import VoiceConnectionState

    class PyCordDaveState:
        """The DAVE part of py-cord's VoiceConnectionState, its own methods on our attributes."""

        reinit_dave_session = VoiceConnectionState.reinit_dave_session
        recover_dave_from_invalid_commit = VoiceConnectionState.recover_dave_from_invalid_commit
        execute_dave_transition = VoiceConnectionState.execute_dave_transition

        def __init__(self, user_id: int, channel_id: int) -> None:
            self.user = SimpleNamespace(id=user_id)
            self.channel_id = channel_id
            self.dave_session = None
            self.dave_protocol_version = 0
            self.dave_pending_transition = None
            self.downgraded_dave = False
            self.ws = None

    return PyCordDaveState


class DaveMember:
    """One call member running DAVE exactly as py-cord 2.8.1 does: `VoiceWebSocket`'s op 21-31
    handlers and `VoiceConnectionState`'s `reinit_dave_session` / `recover_dave_from_invalid_commit`
    / `execute_dave_transition`, over a real `davey.DaveSession`. What it would send to the
    gateway collects in `outbox` (binary frames as bytes, JSON ops as dicts)."""

    def __init__(self, user_id: int, channel_id: int) -> None:
        from discord.voice.gateway import VoiceWebSocket

        self.user_id = user_id
        self.socket = _CapturingSocket()
        self.state = _pycord_state_class()(user_id, channel_id)
        self.ws = VoiceWebSocket(self.socket, None, self.state)
        self.state.ws = self.ws

    @property
    def outbox(self) -> list[bytes | dict]:
        return self.socket.sent

    @property
    def session(self):
        return self.state.dave_session

    @property
    def ready(self) -> bool:
        return bool(self.session is not None and self.session.ready)

    def session_description(self, dave_protocol_version: int = 1) -> None:
        """The DAVE half of py-cord's op 4 handler (the rest needs a transport)."""
        self.state.dave_protocol_version = dave_protocol_version
        _run(self.state.reinit_dave_session())

    def receive_binary(self, frame: bytes) -> None:
        _run(self.ws.received_binary_message(frame))

    def receive_json(self, msg: dict) -> None:
        _run(self.ws.received_message(msg))

    def encrypt_opus(self, frame: bytes) -> bytes:
        return self.session.encrypt_opus(frame)

    def decrypt(self, sender_id: int, frame: bytes) -> bytes:
        import davey

        return self.session.decrypt(sender_id, davey.MediaType.audio, frame)


class DaveRouter:
    """Moves DAVE messages between a `DaveGatewayRole` and `DaveMember`s until nothing is left:
    what the loopback voice server does over its websockets, minus the sockets. `tamper(to, op,
    frame)` may return a changed frame (a fault on the wire) or None to drop it."""

    def __init__(self, role: DaveGatewayRole, tamper=None, rng=None) -> None:
        self.role = role
        self.rng = rng  # a random.Random: handle the members' messages in a shuffled order
        self.members: dict[int, DaveMember] = {}
        self.seq: dict[int, int] = {}
        self.tamper = tamper
        self.log: list[tuple[str, int, int]] = []  # (direction, user id, op)

    def join(self, member: DaveMember, dave_protocol_version: int = 1) -> None:
        self.members[member.user_id] = member
        self.seq[member.user_id] = 0
        member.session_description(dave_protocol_version)  # op 4: py-cord makes its session
        self.deliver(self.role.connect(member.user_id))  # op 25 right after op 4
        self.pump()

    def leave(self, user_id: int) -> None:
        self.members.pop(user_id)
        self.deliver(self.role.disconnect(user_id))
        self.pump()

    def deliver(self, outbound: list[Outbound]) -> None:
        for msg in outbound:
            for uid in msg.to:
                member = self.members.get(uid)
                if member is None:
                    continue
                self.seq[uid] += 1
                self.log.append(("out", uid, msg.op))
                if msg.payload is None:
                    member.receive_json(msg.json(self.seq[uid]))
                    continue
                frame = msg.frame(self.seq[uid])
                if self.tamper is not None:
                    frame = self.tamper(uid, msg.op, frame)
                    if frame is None:
                        continue
                member.receive_binary(frame)

    def pump(self, max_messages: int = 1000) -> None:
        """Feed the members' messages to the gateway (and its answers back) until all are quiet:
        member by member in join order, or one message of a random member at a time."""
        for _ in range(max_messages):
            busy = [uid for uid, m in self.members.items() if m.outbox]
            if not busy:
                return
            uid = self.rng.choice(busy) if self.rng is not None else busy[0]
            self.deliver(self._from_client(uid, self.members[uid].outbox.pop(0)))
        raise RuntimeError("DAVE handshake did not settle")

    def _from_client(self, uid: int, msg: bytes | dict) -> list[Outbound]:
        if isinstance(msg, dict):
            op, d = msg["op"], msg["d"]
            self.log.append(("in", uid, op))
            if op == OP_READY_FOR_TRANSITION:
                return self.role.on_ready_for_transition(uid, d["transition_id"])
            if op == OP_INVALID_COMMIT_WELCOME:
                return self.role.on_invalid_commit_welcome(uid, d["transition_id"])
            raise DaveProtocolError(f"unexpected JSON op {op} from user {uid}")
        op, payload = parse_client_frame(msg)
        self.log.append(("in", uid, op))
        if op == OP_KEY_PACKAGE:
            return self.role.on_key_package(uid, payload)
        if op == OP_COMMIT_WELCOME:
            return self.role.on_commit_welcome(uid, payload)
        raise DaveProtocolError(f"unexpected binary op {op} from user {uid}")
