"""A loopback Discord voice server: the real voice protocol, for py-cord 2.8.1's real VoiceClient.

What runs for real: the voice gateway v8 over a TLS websocket (a certificate made here with
trustme; py-cord hard-codes `wss://{endpoint}/?v=8`), Hello / Identify / Ready / IP discovery /
Select Protocol / Session Description / heartbeats, op 5 speaking, op 11 clients connect, op 13
client disconnect; RTP over UDP both ways, transport-encrypted with
`aead_xchacha20_poly1305_rtpsize` exactly as Discord lays it out (12-byte header with the
extension bit, a `0xBEDE` one-byte-header extension whose 4-byte preamble is part of the AEAD
additional data while its values are encrypted with the Opus frame, optional RTP padding with
the P bit, a 4-byte big-endian nonce counter appended); members speak libopus frames paced at
20 ms and go quiet after a few silence frames, as Discord clients do; the bot's packets are
decrypted and Opus-decoded per SSRC. See ../shared/DESIGN.md §8 for the wire facts.

What is a stand-in: the main gateway (`MainGatewayStandIn`), the part of Discord we cannot run.
py-cord calls only its `voice_state(...)` when joining, moving or leaving; the answers are fed to
py-cord's own `ConnectionState.parse_voice_state_update` / `parse_voice_server_update`, the
functions the real gateway's VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE dispatches reach.

Everything here runs in trio, inside the test's trio run, which is a guest on py-cord's asyncio
loop (`voxbridge.discord.adapter.run_guest`): the parse functions are called on the loop's thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import socket
import ssl
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs
import discord
import nacl.exceptions
import nacl.secret
import numpy as np
import trio
import trustme
from discord import opus
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from .dave_gateway import DaveGatewayRole, DaveMember, DaveRouter, Outbound
from .discord_objects import BOT_ID, GUILD_ID, VOICE_ID, member_payload

MODE = "aead_xchacha20_poly1305_rtpsize"
OPUS_SILENCE = b"\xf8\xff\xfe"
BAD_OPUS = b"\xff" * 6  # libopus: "corrupted stream"
FRAME_BYTES = 3840  # 20 ms of 48 kHz stereo s16le
SAMPLES_PER_FRAME = 960
PAYLOAD_TYPE = 0x78


# Voice gateway opcodes (v8)
class Op:
    IDENTIFY, SELECT_PROTOCOL, READY, HEARTBEAT, SESSION_DESCRIPTION, SPEAKING = 0, 1, 2, 3, 4, 5
    HEARTBEAT_ACK, RESUME, HELLO, RESUMED, CLIENTS_CONNECT, CLIENT_DISCONNECT = 6, 7, 8, 9, 11, 13


# A stand-in DAVE layer: `(user_id, frame) -> frame`, applied to each member's Opus frame before
# transport encryption and to each of the bot's frames after transport decryption.
DaveHook = Callable[[int, bytes], bytes]


@attrs.define
class WireMember:
    uid: int
    name: str
    ssrc: int
    bot: bool
    channel_id: int
    encoder: Any = None
    seq: int = 0
    ts: int = 0
    nonce: int = 0


@attrs.define
class BotFrame:
    at: float  # time.perf_counter() on arrival
    seq: int
    ts: int
    ssrc: int
    opus: bytes
    pcm: bytes


def rtp_header(seq: int, ts: int, ssrc: int, *, extension: bool, padding: bool) -> bytes:
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0)
    return struct.pack(">BBHII", first, PAYLOAD_TYPE, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def encrypt_rtpsize(
    key: bytes, header: bytes, ext_values: bytes, payload: bytes, nonce: int, padding: int = 0
) -> bytes:
    """Discord's `aead_xchacha20_poly1305_rtpsize` packet: header (+ extension preamble) in the
    clear and authenticated, extension values + payload (+ RTP padding) encrypted, the 4-byte
    big-endian nonce counter appended (zero-padded to 24 bytes for XChaCha20-Poly1305)."""
    preamble = b"\xbe\xde" + struct.pack(">H", len(ext_values) // 4) if ext_values else b""
    pad = (bytes(padding - 1) + bytes([padding])) if padding else b""
    counter = struct.pack(">I", nonce & 0xFFFFFFFF)
    sealed = nacl.secret.Aead(key).encrypt(ext_values + payload + pad, header + preamble, counter + bytes(20))
    return header + preamble + sealed.ciphertext + counter


def decrypt_rtpsize(keys: list[bytes], packet: bytes) -> tuple[bytes, int, int, int]:
    """(payload with extension values and padding removed, seq, ts, ssrc); raises CryptoError."""
    first = packet[0]
    header_len = 12 + 4 * (first & 0x0F)
    aad_len = header_len + (4 if first & 0x10 else 0)
    nonce = packet[-4:] + bytes(20)
    error: Exception | None = None
    for key in keys:
        try:
            plain = nacl.secret.Aead(key).decrypt(packet[aad_len:-4], packet[:aad_len], nonce)
            break
        except nacl.exceptions.CryptoError as exc:
            error = exc
    else:
        raise error or nacl.exceptions.CryptoError("no key")
    if first & 0x10:
        words = struct.unpack_from(">H", packet, header_len + 2)[0]
        plain = plain[4 * words :]
    if first & 0x20 and plain:
        plain = plain[: len(plain) - plain[-1]]
    _, _, seq, ts, ssrc = struct.unpack_from(">BBHII", packet, 0)
    return plain, seq, ts, ssrc


def _audio_level(frame: bytes) -> int:
    """RFC 6464 one-byte value: voice-activity bit + level in -dBov (0 loudest, 127 silent)."""
    x = np.frombuffer(frame, "<i2").astype(np.float32) / 32768.0
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    level = 127 if rms <= 1e-6 else min(127, max(0, int(-20 * np.log10(rms))))
    return (0x80 if level < 60 else 0) | level


class DaveHub(DaveRouter):
    """DAVE (protocol v1) for the call: `tests/dave_gateway.py`'s gateway role (the MLS external
    sender) and one `DaveMember` (py-cord's own DAVE handlers over davey) per fake member; the
    messages for the bot are queued here and sent over its real voice websocket by the server."""

    def __init__(self, channel_id: int):
        super().__init__(DaveGatewayRole(channel_id))
        self.to_bot: list[Outbound] = []
        # `tamper_bot(op, payload)`: a fault on the wire for a binary DAVE message to the bot
        # (return the changed payload, or None to drop it); e.g. a corrupt commit (op 29).
        self.tamper_bot: Callable[[int, bytes], bytes | None] | None = None
        self.reader: int | None = None  # the member whose session decrypts the bot (None: any)
        self.e2ee_sent: Counter[int] = Counter()  # per member: Opus frames sent E2EE

    def deliver(self, outbound: list[Outbound]) -> None:
        for msg in outbound:
            if BOT_ID in msg.to:
                self.to_bot.append(msg)
            others = tuple(u for u in msg.to if u != BOT_ID)
            if others:
                super().deliver([dataclasses.replace(msg, to=others)])

    def from_bot(self, msg: bytes | dict) -> None:
        self.deliver(self._from_client(BOT_ID, msg))
        self.pump()

    @staticmethod
    def downgraded(member: DaveMember) -> bool:
        """The member executed a transition to protocol version 0: it sends transport-only Opus."""
        return member.state.dave_protocol_version == 0

    def encrypt(self, uid: int, frame: bytes) -> bytes:
        """A member's Opus frame, E2EE once its session is ready (silence frames stay clear),
        transport-only after a downgrade to protocol version 0."""
        member = self.members.get(uid)
        if member is None or not member.ready or frame == OPUS_SILENCE or self.downgraded(member):
            return frame
        self.e2ee_sent[uid] += 1
        return member.encrypt_opus(frame)

    def decrypt_bot(self, _uid: int, frame: bytes) -> bytes:
        """The bot's frame as a member hears it; frames without DAVE's 0xFAFA marker pass through.
        After a downgrade the members hear transport-only Opus: an E2EE frame then is an error."""
        if frame[-2:] != b"\xfa\xfa":
            return frame
        readers = [self.members[self.reader]] if self.reader in self.members else self.members.values()
        reader = next((m for m in readers if m.ready and not self.downgraded(m)), None)
        if reader is None:
            raise ValueError("a DAVE frame from the bot while no member's session is ready (or after a downgrade)")
        return reader.decrypt(BOT_ID, frame)


class MainGatewayStandIn:
    """Discord's main gateway websocket, as far as py-cord's voice path uses it: `voice_state`."""

    def __init__(self, server: DiscordVoiceServer):
        self.server = server
        self.calls: list[tuple[int, int | None, bool, bool]] = []
        self.latency = 0.0

    async def voice_state(
        self, guild_id: int, channel_id: int | None, self_mute: bool = False, self_deaf: bool = False
    ) -> None:
        self.calls.append((int(guild_id), channel_id, self_mute, self_deaf))
        # Discord answers asynchronously: the answer arrives after this send returned.
        asyncio_loop = self.server.bot.loop
        asyncio_loop.call_soon(self.server._bot_voice_state, channel_id, self_mute, self_deaf)

    def is_ratelimited(self) -> bool:
        return False


class DiscordVoiceServer:
    """One guild's voice server. `await server.start(nursery)` before the bot joins; the bot's
    HTTP client then trusts the server's certificate and its main gateway is the stand-in."""

    def __init__(
        self,
        bot: discord.Bot,
        guild: discord.Guild | None = None,
        *,
        dave_encrypt: DaveHook | None = None,
        dave_decrypt: DaveHook | None = None,
        silence_frames: int = 5,
        rtp_padding: int = 0,
        heartbeat_interval_ms: int = 41250,
        dave: bool = False,
    ):
        self.bot = bot
        self.guild = guild or bot.get_guild(GUILD_ID)
        self.state = bot._connection
        # dave=True: real DAVE v1 (MLS through davey) between the bot and the fake members;
        # else the optional stand-in hooks (`DaveHook`) are applied to the frames.
        self.dave = DaveHub(VOICE_ID) if dave else None
        self.dave_encrypt = self.dave.encrypt if dave else dave_encrypt
        self.dave_decrypt = self.dave.decrypt_bot if dave else dave_decrypt
        self.dave_protocol_version = 1 if dave else 0
        self.silence_frames = silence_frames
        self.rtp_padding = rtp_padding  # bytes of RTP padding (P bit) on each member packet; 0: none
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.members: dict[int, WireMember] = {}
        self.bot_channel_id: int | None = None
        self.bot_ssrc = 0x4000
        self.bot_addr: tuple[str, int] | None = None
        self.key = os.urandom(32)
        self._old_keys: list[bytes] = []
        self.token: str | None = None
        self.session_id: str | None = None
        self._next_ssrc = 0x1000
        self._ws = None
        self._ws_lock = trio.Lock()
        self._dave_lock = trio.Lock()
        self._ws_seq = 0
        self._connected = trio.Event()
        self._decoders: dict[int, opus.Decoder] = {}
        # what happened, for tests and the benchmark
        self.bot_frames: list[BotFrame] = []
        self.bot_speaking: list[int] = []
        self.packets_sent: Counter[int] = Counter()  # per member, put on the wire
        self.packets_lost: Counter[int] = Counter()  # per member, dropped by `loss`
        self.speech_starts: dict[int, list[float]] = defaultdict(list)  # perf_counter of each talk spurt's first packet
        self.counters: Counter[str] = Counter()  # heartbeats, keepalives, identifies, ...
        self.identified: list[dict] = []
        self.nursery: trio.Nursery | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> DiscordVoiceServer:
        """Listen (UDP + TLS websocket on 127.0.0.1) in `nursery`, and wire the bot to us."""
        self.nursery = nursery
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self.udp_port = self._sock.getsockname()[1]
        self._tsock = trio.socket.from_stdlib_socket(self._sock)
        nursery.start_soon(self._udp_loop)
        ws_server = await nursery.start(serve_websocket, self._handle_ws, "127.0.0.1", 0, server_ctx)
        self.ws_port = ws_server.port

        self.bot.ws = MainGatewayStandIn(self)
        self.http_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx))
        self.bot.http._HTTPClient__session = self.http_session
        if self.guild.get_member(BOT_ID) is None:  # py-cord looks up guild.me on Ready
            self.guild._add_member(
                discord.Member(data=self._member_data(BOT_ID, "voxbridge", True), guild=self.guild, state=self.state)
            )
        return self

    async def aclose(self) -> None:
        """Close the aiohttp session given to the bot (asyncio: call through the bridge)."""
        await self.http_session.close()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ws_port}"

    def _member_data(self, uid: int, name: str, bot: bool) -> dict:
        data = member_payload(uid, name, ["7"])
        data["user"]["bot"] = bot
        return data

    # --- main gateway (stand-in) -------------------------------------------------------------
    def _voice_state_payload(self, uid: int, name: str, bot: bool, channel_id: int | None, session_id: str) -> dict:
        return {
            "guild_id": str(self.guild.id),
            "channel_id": str(channel_id) if channel_id else None,
            "user_id": str(uid),
            "session_id": session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": False,
            "self_mute": False,
            "self_stream": False,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
            "member": self._member_data(uid, name, bot),
        }

    def _bot_voice_state(self, channel_id: int | None, self_mute: bool = False, self_deaf: bool = False) -> None:
        """The bot asked to join/move/leave: Discord answers with VOICE_STATE_UPDATE, then (when
        in a channel) VOICE_SERVER_UPDATE with a fresh token and the endpoint."""
        self.bot_channel_id = channel_id
        self.counters["main_gateway_voice_states"] += 1
        if channel_id is None:
            self.state.parse_voice_state_update(
                self._voice_state_payload(BOT_ID, "voxbridge", True, None, self.session_id or "")
            )
            return
        self.session_id = self.session_id or os.urandom(16).hex()
        data = self._voice_state_payload(BOT_ID, "voxbridge", True, channel_id, self.session_id)
        data["self_mute"], data["self_deaf"] = self_mute, self_deaf
        self.state.parse_voice_state_update(data)
        self.token = os.urandom(8).hex()
        self.state.parse_voice_server_update(
            {"token": self.token, "guild_id": str(self.guild.id), "endpoint": self.endpoint}
        )

    async def move_bot(self, channel_id: int) -> None:
        """A moderator drags the bot into another voice channel: VOICE_STATE_UPDATE for the bot with
        the new channel, then VOICE_SERVER_UPDATE (py-cord then reconnects its voice websocket)."""
        self.counters["moves"] += 1
        self._bot_voice_state(channel_id)
        await trio.lowlevel.checkpoint()

    # --- members -----------------------------------------------------------------------------
    def add_member(self, uid: int, name: str, *, bot: bool = False, channel_id: int | None = None) -> discord.Member:
        """A member joins the voice channel (default: the bot's, else the test guild's): a real
        discord.Member in the guild cache through VOICE_STATE_UPDATE, then op 11 on the voice
        websocket when the bot is in that channel."""
        channel_id = channel_id or self.bot_channel_id or VOICE_ID
        self._next_ssrc += 1
        enc = opus.Encoder()
        m = WireMember(
            uid,
            name,
            self._next_ssrc,
            bot,
            channel_id,
            enc,
            seq=random.Random(uid).randrange(65536),
            ts=random.Random(-uid).randrange(2**32),
        )
        self.members[uid] = m
        self.state.parse_voice_state_update(self._voice_state_payload(uid, name, bot, channel_id, f"member-{uid}"))
        if self._ws is not None and channel_id == self.bot_channel_id:
            self.nursery.start_soon(self._send, Op.CLIENTS_CONNECT, {"user_ids": [str(uid)]})
        if self.dave is not None and channel_id == self.dave.role.channel_id:
            self.dave.join(DaveMember(uid, channel_id))  # op 4 + op 25 to it, its key package in
            self.nursery.start_soon(self._flush_dave)
        return self.guild.get_member(uid)

    def dave_ready(self) -> bool:
        """DAVE on both ends: the bot's davey session and every fake member's are ready."""
        bot = self.bot.get_guild(self.guild.id).voice_client
        session = getattr(getattr(bot, "_connection", None), "dave_session", None)
        return bool(
            self.dave and session is not None and session.ready and all(m.ready for m in self.dave.members.values())
        )

    def dave_settled(self) -> bool:
        """`dave_ready()`, no transition open, and every fake member in the gateway's group."""
        role = self.dave.role
        return (
            self.dave_ready()
            and not role.pending_transitions()
            and set(self.dave.members) | {BOT_ID} == set(role.members)
        )

    async def downgrade_dave(self) -> None:
        """The call downgrades to protocol version 0 (transport encryption only): op 21 to all,
        op 23 back from each, then op 22 (the members are served by the DaveHub synchronously)."""
        self.dave_protocol_version = 0
        self.dave.deliver(self.dave.role.prepare_downgrade())
        self.dave.pump()
        self.counters["dave_downgrades"] += 1
        await self._flush_dave()

    async def _flush_dave(self) -> None:
        """Send what the DAVE role has for the bot, in order, over its voice websocket."""
        async with self._dave_lock:
            while self.dave.to_bot:
                msg = self.dave.to_bot.pop(0)
                if msg.payload is None:
                    await self._send(msg.op, msg.d)
                    continue
                if self.dave.tamper_bot is not None:
                    payload = self.dave.tamper_bot(msg.op, msg.payload)
                    if payload is None:
                        continue
                    msg = dataclasses.replace(msg, payload=payload)
                await self._send_binary(msg)

    async def member_leave(self, uid: int) -> None:
        """op 13 on the voice websocket, then VOICE_STATE_UPDATE with no channel."""
        m = self.members.pop(uid)
        await self._send(Op.CLIENT_DISCONNECT, {"user_id": str(uid)})
        if self.dave is not None and uid in self.dave.members:
            self.dave.leave(uid)
            await self._flush_dave()
        self.state.parse_voice_state_update(self._voice_state_payload(uid, m.name, m.bot, None, f"member-{uid}"))
        await trio.lowlevel.checkpoint()

    async def speak(
        self,
        uid: int,
        pcm: bytes,
        *,
        loss: float = 0.0,
        reorder: float = 0.0,
        seed: int = 0,
        padding: int | None = None,
    ) -> None:
        """`pcm` (48 kHz stereo s16le) as a Discord client sends it: op 5, then one Opus RTP
        packet every 20 ms; after `silence_frames` frames of silence (Opus silence frames) no
        packets until speech resumes; `loss` drops and `reorder` swaps packets (seeded)."""
        m = self.members[uid]
        rng = random.Random(seed)
        padding = self.rtp_padding if padding is None else padding
        await self.wait_connected()
        await self._send(Op.SPEAKING, {"user_id": str(uid), "ssrc": m.ssrc, "speaking": 1})
        if len(pcm) % FRAME_BYTES:
            pcm += bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
        frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        frames += [bytes(FRAME_BYTES)] * self.silence_frames  # ends like a client: silence frames
        quiet = self.silence_frames + 1  # not sending until the first sound
        held: bytes | None = None
        spurt = True
        start = trio.current_time()
        for i, frame in enumerate(frames):
            await trio.sleep_until(start + i * 0.02)
            silent = not np.any(np.abs(np.frombuffer(frame, "<i2").astype(np.int32)) > 1)
            quiet = quiet + 1 if silent else 0
            if quiet > self.silence_frames:
                m.ts += SAMPLES_PER_FRAME  # time goes on, nothing is sent
                spurt = True
                continue
            payload = OPUS_SILENCE if silent else m.encoder.encode(frame, SAMPLES_PER_FRAME)
            packet = self._member_packet(m, payload, _audio_level(frame), padding)
            if rng.random() < loss:
                self.packets_lost[uid] += 1
                continue
            if held is None and rng.random() < reorder:
                held = packet  # goes out after the next one
                continue
            if spurt and not silent:  # the first packet of a talk spurt (after quiet)
                self.speech_starts[uid].append(time.perf_counter())
                spurt = False
            self._send_udp(uid, packet)
            if held is not None:
                self._send_udp(uid, held)
                held = None
        if held is not None:
            self._send_udp(uid, held)

    def inject_bad_opus(self, uid: int) -> None:
        """One packet, correctly transport-encrypted and in sequence, whose payload is not Opus."""
        m = self.members[uid]
        self._send_udp(uid, self._member_packet(m, BAD_OPUS, 0x80 | 30, self.rtp_padding))
        self.counters["bad_opus_injected"] += 1

    async def new_session_description(self) -> bytes:
        """A fresh secret key mid-call (op 4), as after a voice server change; the old key is
        still accepted from the bot for its packets in flight."""
        self._old_keys = [self.key, *self._old_keys][:2]
        self.key = os.urandom(32)
        await self._send(Op.SESSION_DESCRIPTION, self._session_description())
        self.counters["session_descriptions"] += 1
        return self.key

    def _member_packet(self, m: WireMember, payload: bytes, level: int, padding: int) -> bytes:
        if self.dave_encrypt is not None:
            payload = self.dave_encrypt(m.uid, payload)
        header = rtp_header(m.seq, m.ts, m.ssrc, extension=True, padding=bool(padding))
        ext_values = bytes([0x10, level, 0, 0])  # one-byte element ID 1 (audio level), L=0; 2 pad bytes
        packet = encrypt_rtpsize(self.key, header, ext_values, payload, m.nonce, padding)
        m.seq = (m.seq + 1) & 0xFFFF
        m.ts = (m.ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        m.nonce = (m.nonce + 1) & 0xFFFFFFFF
        return packet

    def _send_udp(self, uid: int, packet: bytes) -> None:
        if self.bot_addr is None:
            self.counters["packets_without_bot"] += 1
            return
        with contextlib.suppress(BlockingIOError):
            self._sock.sendto(packet, self.bot_addr)
            self.packets_sent[uid] += 1

    # --- the bot's audio ---------------------------------------------------------------------
    def bot_audio(self, since: float = 0.0) -> bytes:
        """The bot's decoded audio (48 kHz stereo s16le), frames arrived after `since` (perf_counter)."""
        return b"".join(f.pcm for f in self.bot_frames if f.at >= since)

    def bot_speech_frames(self) -> int:
        return sum(1 for f in self.bot_frames if f.opus != OPUS_SILENCE)

    def _bot_rtp(self, data: bytes) -> None:
        try:
            payload, seq, ts, ssrc = decrypt_rtpsize([self.key, *self._old_keys], data)
        except nacl.exceptions.CryptoError:
            self.counters["bot_decrypt_failures"] += 1
            return
        if payload[-2:] == b"\xfa\xfa":
            self.counters["bot_e2ee_frames"] += 1  # DAVE's magic marker ends every E2EE frame
        if self.dave_decrypt is not None:
            try:
                payload = self.dave_decrypt(BOT_ID, payload)
            except Exception:
                self.counters["bot_dave_errors"] += 1
                return
        decoder = self._decoders.get(ssrc) or self._decoders.setdefault(ssrc, opus.Decoder())
        try:
            pcm = decoder.decode(payload, fec=False)
        except opus.OpusError:
            self.counters["bot_opus_errors"] += 1
            return
        self.counters["bot_packets"] += 1
        self.bot_frames.append(BotFrame(time.perf_counter(), seq, ts, ssrc, payload, pcm))

    async def _udp_loop(self) -> None:
        while True:
            data, addr = await self._tsock.recvfrom(4096)
            if len(data) == 74 and data[:4] == b"\x00\x01\x00\x46":  # IP discovery request
                self.bot_addr = addr
                reply = bytearray(74)
                struct.pack_into(">HHI", reply, 0, 2, 70, struct.unpack_from(">I", data, 4)[0])
                host = addr[0].encode()
                reply[8 : 8 + len(host)] = host
                struct.pack_into(">H", reply, 72, addr[1])
                self._sock.sendto(bytes(reply), addr)
                self.counters["ip_discoveries"] += 1
            elif len(data) == 8:
                self.counters["keepalives"] += 1
            elif len(data) > 16 and data[0] >> 6 == 2 and data[1] & 0x7F == PAYLOAD_TYPE:
                self._bot_rtp(data)
            else:
                self.counters["unknown_packets"] += 1

    # --- voice gateway -----------------------------------------------------------------------
    def _session_description(self) -> dict:
        return {
            "mode": MODE,
            "secret_key": list(self.key),
            "dave_protocol_version": self.dave_protocol_version,
            "audio_codec": "opus",
            "video_codec": None,
            "media_session_id": os.urandom(8).hex(),
        }

    async def _send(self, op: int, data: Any) -> None:
        """A JSON op to the bot, with the connection's next seq."""
        await self._send_raw(lambda seq: json.dumps({"op": op, "d": data, "seq": seq}))

    async def _send_binary(self, msg: Outbound) -> None:
        """A binary (DAVE) op to the bot: uint16 seq | op | payload."""
        await self._send_raw(lambda seq: msg.frame(seq & 0xFFFF))
        self.counters["dave_binary_sent"] += 1

    async def _send_raw(self, message: Callable[[int], str | bytes]) -> None:
        ws = self._ws
        if ws is None:
            self.counters["ws_sends_without_connection"] += 1
            return
        async with self._ws_lock:
            self._ws_seq += 1
            with contextlib.suppress(ConnectionClosed):
                await ws.send_message(message(self._ws_seq))

    async def wait_connected(self) -> None:
        """Until the bot has completed the handshake (Select Protocol answered); bounded at 30 s."""
        with trio.fail_after(30):
            await self._connected.wait()

    async def _handle_ws(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        self.counters["ws_connections"] += 1
        self._ws = ws
        self._connected = trio.Event()
        await self._send(Op.HELLO, {"heartbeat_interval": self.heartbeat_interval_ms, "v": 8})
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    self.counters["ws_binary"] += 1  # DAVE (MLS): key package, commit/welcome
                    if self.dave is not None:
                        self.dave.from_bot(message)
                        await self._flush_dave()
                    continue
                msg = json.loads(message)
                await self._on_message(msg["op"], msg.get("d"))
        except ConnectionClosed as exc:
            self.counters["ws_closed"] += 1
            self.last_close_code = exc.reason.code if exc.reason else None
        finally:
            if self._ws is ws:
                self._ws = None

    async def _on_message(self, op: int, d: Any) -> None:
        if op == Op.HEARTBEAT:
            self.counters["heartbeats"] += 1
            await self._send(Op.HEARTBEAT_ACK, {"t": (d or {}).get("t")})
        elif op == Op.IDENTIFY:
            self.counters["identifies"] += 1
            self.identified.append(d)
            if d.get("token") != self.token or str(d.get("user_id")) != str(BOT_ID):
                self.counters["bad_identify"] += 1
                await self._ws.aclose(4004)  # authentication failed
                return
            await self._send(
                Op.READY,
                {
                    "ssrc": self.bot_ssrc,
                    "ip": "127.0.0.1",
                    "port": self.udp_port,
                    "modes": ["aead_aes256_gcm_rtpsize", MODE],
                },
            )
        elif op == Op.SELECT_PROTOCOL:
            self.counters["select_protocol"] += 1
            data = d.get("data", {})
            if data.get("mode") != MODE:
                self.counters["bad_mode"] += 1
            await self._send(Op.SESSION_DESCRIPTION, self._session_description())
            if self.dave is not None:  # op 25 right after op 4 (py-cord's session exists by then)
                self.dave.deliver(self.dave.role.connect(BOT_ID))
                await self._flush_dave()
            others = [str(m.uid) for m in self.members.values() if m.channel_id == self.bot_channel_id]
            if others:
                await self._send(Op.CLIENTS_CONNECT, {"user_ids": others})
            self._connected.set()
        elif op == Op.SPEAKING:
            self.bot_speaking.append(int(d.get("speaking", 0)))
        elif op in (23, 31) and self.dave is not None:  # DAVE ready for transition / invalid commit
            self.counters[f"dave_op_{op}"] += 1
            self.dave.from_bot({"op": op, "d": d})
            await self._flush_dave()
        elif op == Op.RESUME:
            self.counters["resumes"] += 1
            await self._send(Op.RESUMED, None)
        else:
            self.counters[f"op_{op}"] += 1


# --- a VoxBridge app joined to the server through its own join path -------------------------------


@attrs.define
class WireSession:
    """A running VoxApp joined (VoxApp.join_voice, py-cord's real VoiceClient) to the server."""

    app: Any
    server: DiscordVoiceServer
    services: Any
    bridge: Any
    bot: discord.Bot
    guild: discord.Guild
    demo: Any
    vc: Any = None

    @property
    def session(self):
        return self.app.control.channel(str(self.guild.id))


@contextlib.asynccontextmanager
async def open_wire_session(
    loop,
    settings,
    *,
    stt,
    tts,
    agents: bool = True,
    server_options: dict | None = None,
    extra_channels: tuple[int, ...] = (),
    demo_delay_s: float = 0.01,
):
    """DemoAgents + services + a VoxApp wired as in `voxbridge run` (commands and listeners), the
    loopback voice server, and `VoxApp.join_voice(channel)`; leaves and closes everything after."""
    from voxbridge.agents.config import load_agents
    from voxbridge.core.control import Control
    from voxbridge.core.services import open_services
    from voxbridge.discord.adapter import Bridge, VoxApp, wire
    from voxbridge.sim.demo_agents import DemoAgents

    from .discord_objects import add_voice_channel, offline_bot

    async with trio.open_nursery() as nursery:
        demo = DemoAgents(token_delay_s=demo_delay_s)
        cfg = load_agents(settings.agents.file)
        if agents:
            await nursery.start(demo.serve)
            cfg = demo.answer_for(cfg)
        async with open_services(settings, agents=cfg, stt=stt, tts=tts) as services:
            bridge = Bridge(loop, trio.lowlevel.current_trio_token(), nursery)
            bot, guild = offline_bot()
            for cid in extra_channels:
                add_voice_channel(guild, cid, f"Voice {cid}")
            server = DiscordVoiceServer(bot, guild, **(server_options or {}))
            await server.start(nursery)
            app = VoxApp(settings, Control(services, nursery), bridge, bot)
            wire(app)
            ws = WireSession(app, server, services, bridge, bot, guild, demo)
            try:
                with trio.fail_after(60):
                    await bridge.aio(app.join_voice(guild.get_channel(VOICE_ID)))
                ws.vc = guild.voice_client
                yield ws
            finally:
                with trio.CancelScope(shield=True):
                    t0 = time.perf_counter()
                    with trio.move_on_after(15), contextlib.suppress(Exception):
                        await bridge.aio(app.leave_voice(guild))
                    server.leave_s = time.perf_counter() - t0
                    with trio.move_on_after(5), contextlib.suppress(Exception):
                        await bridge.aio(server.aclose())
        nursery.cancel_scope.cancel()


async def transcribe_pcm(stt, pcm48k_stereo: bytes) -> str:
    """Whisper's transcript of 48 kHz stereo s16le."""
    from voxbridge.audio import STT_RATE
    from voxbridge.audio.convert import discord_to_mono, resample

    mono = resample(discord_to_mono(pcm48k_stereo), 48000, STT_RATE)
    result = await stt.transcribe(mono)
    return result.text
