"""The receive pipeline's packet handling, packet by packet, with real crypto (PyNaCl's
XChaCha20-Poly1305) and real libopus. The whole path through py-cord's own VoiceClient and a
loopback Discord voice server is in test_discord_wire.py; these pin the byte layout and the
ordering rules deterministically (a clock we step, packets we order)."""

import struct

import nacl.secret
import numpy as np
import pytest
import trio
from discord import opus

from voxbridge.discord.receive import HOLD_S, OPUS_SILENCE, RtpPacket, VoiceReceiver, open_rtpsize

KEY = bytes(range(32))
SSRC, USER = 4242, 11


class Conn:
    def __init__(self):
        self.mode = "aead_xchacha20_poly1305_rtpsize"
        self.secret_key = list(KEY)
        self.ssrc = 1
        self.dave_session = None
        self.listeners = []

    def add_socket_listener(self, cb):
        self.listeners.append(cb)

    def remove_socket_listener(self, cb):
        self.listeners.remove(cb)


class VC:
    """Only the attributes of discord.VoiceClient that the receiver reads."""

    def __init__(self):
        self._connection = Conn()
        self._ssrc_to_id = {SSRC: USER}

    def is_connected(self):
        return True


def seal(seq: int, opus_frame: bytes, *, key=KEY, nonce=0, ext=(b"\x10\xff",), padding=0, ssrc=SSRC) -> bytes:
    """A packet as Discord sends it: RTP header with a 0xBEDE one-byte extension, AEAD over
    header + extension preamble, extension values and Opus (and padding) encrypted, nonce appended."""
    values = b"".join(ext)
    values += bytes(-len(values) % 4)
    first = 0x80 | 0x10 | (0x20 if padding else 0)
    header = struct.pack(">BBHII", first, 0x78, seq, seq * 960, ssrc) + struct.pack(">HH", 0xBEDE, len(values) // 4)
    body = values + opus_frame + (bytes(padding - 1) + bytes([padding]) if padding else b"")
    n = struct.pack(">I", nonce)
    return header + nacl.secret.Aead(key).encrypt(body, header, n + bytes(20)).ciphertext + n


def tone_frames(n: int, freq: float = 440.0) -> list[bytes]:
    enc = opus.Encoder()
    t = np.arange(960 * n) / 48000
    mono = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    stereo = np.repeat(mono, 2).tobytes()
    return [enc.encode(stereo[i * 3840 : (i + 1) * 3840], 960) for i in range(n)]


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


async def make_receiver():
    got: list[tuple[int, bytes]] = []
    clock = Clock()
    vc = VC()
    rx = VoiceReceiver(vc, lambda uid, pcm: got.append((uid, pcm)), trio.lowlevel.current_trio_token(), clock=clock)
    return rx, vc, got, clock


async def settle():
    for _ in range(3):
        await trio.lowlevel.checkpoint()


def test_open_rtpsize_strips_extension_and_padding():
    frame = tone_frames(1)[0]
    for padding in (0, 1, 7):
        raw = seal(5, frame, ext=(b"\x10\xff", b"\x21\x01\x02"), padding=padding)
        assert open_rtpsize(RtpPacket(raw), nacl.secret.Aead(KEY)) == frame


async def test_in_order_packets_decode_to_stereo_frames():
    rx, vc, got, clock = await make_receiver()
    for i, f in enumerate(tone_frames(10)):
        rx.on_packet(seal(100 + i, f, nonce=i))
    await settle()
    assert [uid for uid, _ in got] == [USER] * 10 and all(len(pcm) == 3840 for _, pcm in got)
    assert rx.stats["crypto_errors"] == rx.stats["opus_errors"] == 0


async def test_reordered_packet_waits_for_the_missing_one():
    rx, vc, got, clock = await make_receiver()
    frames = tone_frames(4)
    for seq in (0, 2, 1, 3):  # 1 and 2 swapped
        rx.on_packet(seal(seq, frames[seq], nonce=seq))
    await settle()
    assert len(got) == 4 and rx.stats["concealed"] == 0 and rx.stats["late"] == 0


async def test_lost_packet_is_concealed_after_the_hold_and_a_late_one_dropped():
    rx, vc, got, clock = await make_receiver()
    frames = tone_frames(5)
    rx.on_packet(seal(0, frames[0]))
    rx.on_packet(seal(2, frames[2], nonce=2))  # 1 is missing: 2 is held
    await settle()
    assert len(got) == 1
    clock.now += HOLD_S
    rx.tick()
    await settle()
    assert len(got) == 3 and rx.stats["concealed"] == 1  # 1 concealed (FEC/PLC), then 2
    rx.on_packet(seal(1, frames[1], nonce=1))  # too late: its slot was concealed
    assert rx.stats["late"] == 1
    rx.on_packet(seal(3, frames[3], nonce=3))
    await settle()
    assert len(got) == 4


async def test_new_secret_key_applies_at_once_and_bad_packets_do_not_stop_it():
    rx, vc, got, clock = await make_receiver()
    frames = tone_frames(6)
    rx.on_packet(seal(0, frames[0]))
    rx.on_packet(seal(1, b"\xff" * 40, nonce=1))  # decrypts, but is not Opus
    rx.on_packet(b"\x80\x78" + bytes(30))  # garbage that fails authentication
    rx.on_packet(b"\x01\x02")  # not RTP at all
    new_key = bytes(reversed(KEY))
    vc._connection.secret_key = list(new_key)  # a new Session Description
    rx.on_packet(seal(2, frames[2], key=new_key, nonce=2))
    rx.on_packet(seal(3, frames[3], key=new_key, nonce=3))
    await settle()
    assert len(got) >= 3 and rx.stats["key_changes"] == 1
    assert rx.stats["crypto_errors"] == 1 and rx.stats["bad_packets"] >= 1


async def test_frames_of_an_unmapped_ssrc_wait_for_the_member():
    rx, vc, got, clock = await make_receiver()
    vc._ssrc_to_id = {}
    frames = tone_frames(3)
    for i in range(3):
        rx.on_packet(seal(i, frames[i], nonce=i))
    await settle()
    assert got == []
    vc._ssrc_to_id = {SSRC: USER}  # op 5 arrives
    rx.tick()
    await settle()
    assert len(got) == 3


async def test_own_packets_and_silence_and_rtcp():
    rx, vc, got, clock = await make_receiver()
    rx.on_packet(seal(0, tone_frames(1)[0], ssrc=1))  # the bot's own SSRC
    rx.on_packet(b"\x81\xc9" + bytes(30))  # RTCP receiver report
    rx.on_packet(seal(0, OPUS_SILENCE))
    await settle()
    assert rx.stats["own"] == 1 and rx.stats["rtcp"] == 1 and len(got) == 1


@pytest.mark.parametrize("mode", ["xsalsa20_poly1305_lite"])
async def test_unsupported_mode_is_counted_not_decoded(mode):
    rx, vc, got, clock = await make_receiver()
    vc._connection.mode = mode
    rx.on_packet(seal(0, tone_frames(1)[0]))
    await settle()
    assert got == [] and rx.stats["unsupported_mode"] == 1


async def test_e2ee_frame_without_a_ready_dave_session_is_concealed_not_decoded():
    rx, vc, got, clock = await make_receiver()
    frames = tone_frames(3)
    rx.on_packet(seal(0, frames[0]))
    rx.on_packet(seal(1, b"\x91" * 37 + b"\x05\xfa\xfa", nonce=1))  # DAVE layout, no session to open it
    rx.on_packet(seal(2, frames[2], nonce=2))
    await settle()
    assert len(got) == 3 and rx.stats["dave_errors"] == 1 and rx.stats["opus_errors"] == 0
