"""Voice receive on the wire: UDP packet -> transport decrypt -> RTP extension and padding
stripped -> DAVE decrypt -> Opus decode per SSRC -> 48 kHz stereo PCM frame to trio.

VoxBridge's own pipeline, replacing py-cord 2.8.1's (`start_recording` is never called). As
released, that one drops every packet without DAVE (`decrypt_rtp` returns None), strips the RTP
extension twice with DAVE, dies on the first Opus error (and stops recording for good), never
applies a new secret key, and is fed late (see compat.py). Here:

- `on_packet` runs on py-cord's socket-reader thread (called directly, see
  `compat.install_pycord_fixes`), does the crypto and the Opus decode (~0.1 ms a frame), and hands
  each PCM frame to trio with `run_sync_soon`: it never blocks and never raises.
- The secret key and the mode are read from the connection on every packet, so a new Session
  Description (voice server change, resume) applies at once.
- Per SSRC: packets in sequence order; a packet that overtakes a missing one waits up to
  `HOLD_S` (or the next packet) for it; a packet that arrives after its slot was given up is
  dropped; small gaps are concealed (Opus FEC from the next packet, else PLC), so timing holds.
- Frames of an SSRC not yet mapped to a member (RTP can beat the op 5 that maps it) wait, up to a
  second, for the mapping.
- `tick()` (a trio task, every 20 ms) releases held packets, ends "speaking" after 200 ms without
  packets, and sends Discord's 8-byte UDP keepalive every 5 s (py-cord's own waits 5000 s).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("voxbridge.discord.receive")

OPUS_SILENCE = b"\xf8\xff\xfe"
DAVE_MAGIC = b"\xfa\xfa"  # the last two bytes of every DAVE-encrypted frame (its supplemental data)
SUPPORTED_MODE = "aead_xchacha20_poly1305_rtpsize"
HOLD_S = 0.04  # how long a packet that overtook a missing one waits for it
MAX_CONCEAL = 5  # frames of loss filled in (100 ms); a longer gap is a discontinuity
PENDING_MAX = 50  # frames kept for an SSRC that no member is mapped to yet (1 s)
SPEAKING_GAP_S = 0.2  # py-cord's (and Discord clients') speaking-stop gap
KEEPALIVE_S = 5.0


class RtpPacket:
    """The parts of an RTP packet the pipeline needs (RFC 3550 §5.1, Discord's rtpsize layout)."""

    __slots__ = ("padded", "extended", "seq", "timestamp", "ssrc", "header_end", "raw")

    def __init__(self, raw: bytes):
        if len(raw) < 16 or raw[0] >> 6 != 2:
            raise ValueError("not an RTP packet")
        self.raw = raw
        self.padded = bool(raw[0] & 0x20)
        self.extended = bool(raw[0] & 0x10)
        csrc = raw[0] & 0x0F
        self.seq, self.timestamp, self.ssrc = struct.unpack_from(">HII", raw, 2)
        self.header_end = 12 + 4 * csrc


def is_rtcp(data: bytes) -> bool:
    return len(data) > 1 and 200 <= data[1] <= 204


def open_rtpsize(packet: RtpPacket, box: Any) -> bytes:
    """Transport-decrypt an `aead_xchacha20_poly1305_rtpsize` packet and return the Opus frame
    (DAVE-encrypted or not): the header and the 4-byte extension preamble are the AEAD's
    additional data, the extension values are encrypted with the payload, the 4-byte nonce
    counter is appended to the packet. Padding (P bit) is inside the ciphertext."""
    raw = packet.raw
    aad_end = packet.header_end + (4 if packet.extended else 0)
    if len(raw) < aad_end + 16 + 4:
        raise ValueError("RTP packet too short")
    nonce = raw[-4:] + bytes(20)
    plain = box.decrypt(raw[aad_end:-4], raw[:aad_end], nonce)
    if packet.extended:
        words = struct.unpack_from(">H", raw, packet.header_end + 2)[0]
        plain = plain[4 * words :]
    if packet.padded and plain:
        plain = plain[: len(plain) - plain[-1]]
    return plain


class _Stream:
    """One SSRC: its decoder, sequence position, a packet held for reordering, pending frames."""

    __slots__ = ("ssrc", "decoder", "expected", "held", "held_at", "last_at", "speaking", "pending")

    def __init__(self, ssrc: int, decoder: Any):
        self.ssrc = ssrc
        self.decoder = decoder
        self.expected: int | None = None
        self.held: tuple[int, bytes] | None = None
        self.held_at = 0.0
        self.last_at = 0.0
        self.speaking = False
        self.pending: deque[bytes] = deque(maxlen=PENDING_MAX)  # opus frames awaiting a member


class VoiceReceiver:
    """Receive for one `discord.VoiceClient`. `deliver(user_id, pcm)` and
    `on_speaking(user_id, bool)` are called in trio (through `token.run_sync_soon`)."""

    def __init__(
        self,
        vc: Any,
        deliver: Callable[[int, bytes], None],
        token: trio.lowlevel.TrioToken,
        *,
        on_speaking: Callable[[int, bool], None] | None = None,
        decoder_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.vc = vc
        self._deliver = deliver
        self._on_speaking = on_speaking
        self._token = token
        self._clock = clock
        if decoder_factory is None:
            import discord.opus

            decoder_factory = discord.opus.Decoder
        self._decoder_factory = decoder_factory
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._key_source: Any = None
        self._box: Any = None
        self._listening = False
        self._keepalive_at = 0.0
        self._keepalive_counter = 0
        self.stats = {
            "packets": 0,
            "rtcp": 0,
            "frames": 0,
            "crypto_errors": 0,
            "dave_errors": 0,
            "opus_errors": 0,
            "late": 0,
            "concealed": 0,
            "unmapped_dropped": 0,
            "own": 0,
            "bad_packets": 0,
            "unsupported_mode": 0,
            "keepalives": 0,
            "key_changes": 0,
        }

    # lifetime -------------------------------------------------------------------------------
    def start(self) -> None:
        from .compat import install_pycord_fixes

        install_pycord_fixes()
        if not self._listening:
            self.vc._connection.add_socket_listener(self.on_packet)
            self._listening = True

    def stop(self) -> None:
        if self._listening:
            self._listening = False
            self.vc._connection.remove_socket_listener(self.on_packet)
        with self._lock:
            self._streams.clear()

    async def run(self) -> None:
        """The receiver's clock: held packets, speaking-stop, UDP keepalive. Runs until cancelled."""
        self.start()
        try:
            while True:
                await trio.sleep(0.02)
                self.tick()
        finally:
            self.stop()

    # the socket thread ---------------------------------------------------------------------
    def on_packet(self, data: bytes) -> None:
        """py-cord's socket-reader thread: one UDP datagram. Never blocks, never raises."""
        try:
            with self._lock:
                self._packet(data)
        except Exception:  # a packet must never take the receiver down
            self.stats["bad_packets"] += 1
            log.debug("event=voice_packet_error", exc_info=True)

    on_packet.__vox_threadsafe__ = True  # type: ignore[attr-defined]  # compat: call on the socket thread

    def _packet(self, data: bytes) -> None:
        if len(data) == 74 and data[1] == 0x02:
            return  # IP discovery answer (py-cord's own listener takes it)
        if len(data) == 8:
            return  # keepalive echo
        if is_rtcp(data):
            self.stats["rtcp"] += 1
            return
        try:
            packet = RtpPacket(data)
        except ValueError:
            self.stats["bad_packets"] += 1
            return
        self.stats["packets"] += 1
        conn = self.vc._connection
        if packet.ssrc == getattr(conn, "ssrc", None):
            self.stats["own"] += 1
            return
        if conn.mode != SUPPORTED_MODE:
            self.stats["unsupported_mode"] += 1
            return
        box = self._current_box(conn.secret_key)
        if box is None:
            return
        try:
            opus = open_rtpsize(packet, box)
        except Exception:
            self.stats["crypto_errors"] += 1
            return
        now = self._clock()
        stream = self._streams.get(packet.ssrc)
        if stream is None:
            stream = self._streams[packet.ssrc] = _Stream(packet.ssrc, self._decoder_factory())
        self._sequence(stream, packet.seq, opus, now)

    def _current_box(self, secret_key: Any) -> Any:
        if secret_key is self._key_source and self._box is not None:
            return self._box
        if not secret_key or len(secret_key) != 32:
            return None
        import nacl.secret

        if self._box is not None:
            self.stats["key_changes"] += 1
            log.info("event=voice_key_changed")
        self._box = nacl.secret.Aead(bytes(secret_key))
        self._key_source = secret_key
        return self._box

    # ordering, loss, reordering --------------------------------------------------------------
    def _sequence(self, s: _Stream, seq: int, opus: bytes, now: float) -> None:
        s.last_at = now
        if s.expected is None:
            s.expected = seq
        ahead = (seq - s.expected) & 0xFFFF
        if ahead >= 0x8000:  # behind: its slot was already played or concealed
            if s.held is not None and s.held[0] == seq:
                return
            self.stats["late"] += 1
            return
        if ahead == 0:
            self._emit(s, seq, opus)
            if s.held is not None and s.held[0] == s.expected:
                held_seq, held_opus = s.held
                s.held = None
                self._emit(s, held_seq, held_opus)
            return
        if s.held is None:  # overtook a missing packet: wait a little for it
            s.held = (seq, opus)
            s.held_at = now
            return
        self._release_held(s)  # a second packet past the gap: the missing one is lost
        self._sequence(s, seq, opus, now)

    def _release_held(self, s: _Stream) -> None:
        assert s.held is not None and s.expected is not None
        seq, opus = s.held
        s.held = None
        missing = (seq - s.expected) & 0xFFFF
        if missing <= MAX_CONCEAL:
            for _ in range(missing - 1):
                self._conceal(s, None)
            self._conceal(s, opus)  # Opus in-band FEC carries the previous frame
        s.expected = seq
        self._emit(s, seq, opus)

    def _conceal(self, s: _Stream, next_opus: bytes | None) -> None:
        self.stats["concealed"] += 1
        try:
            if next_opus is not None and next_opus != OPUS_SILENCE and not self._dave_active():
                pcm = s.decoder.decode(next_opus, fec=True)
            else:
                pcm = s.decoder.decode(None, fec=False)
        except Exception:
            self.stats["opus_errors"] += 1
            return
        self._hand_pcm(s, pcm)

    # DAVE and decoding -------------------------------------------------------------------------
    def _dave_active(self) -> bool:
        dave = getattr(self.vc._connection, "dave_session", None)
        return bool(dave is not None and dave.ready)

    def _emit(self, s: _Stream, seq: int, opus: bytes) -> None:
        s.expected = (seq + 1) & 0xFFFF
        user_id = self.vc._ssrc_to_id.get(s.ssrc)
        if user_id is None:
            if len(s.pending) == s.pending.maxlen:
                self.stats["unmapped_dropped"] += 1
            s.pending.append(opus)
            return
        while s.pending:
            self._decode(s, user_id, s.pending.popleft())
        self._decode(s, user_id, opus)

    def _decode(self, s: _Stream, user_id: int, opus: bytes) -> None:
        dave = getattr(self.vc._connection, "dave_session", None)
        frame: bytes | None = opus  # None: conceal (packet loss concealment)
        if dave is not None and dave.ready and opus != OPUS_SILENCE:
            try:
                import davey

                frame = dave.decrypt(user_id, davey.MediaType.audio, opus)
            except Exception:
                # the first ~100 ms after joining (no cryptor yet), or a frame of an old epoch:
                # conceal; never hand cipher bytes to Opus
                self.stats["dave_errors"] += 1
                frame = None
        elif opus.endswith(DAVE_MAGIC):
            # an E2EE frame while our session is not (yet, or again) ready: after op 31, before
            # the welcome. Concealed, never decoded as Opus.
            self.stats["dave_errors"] += 1
            frame = None
        try:
            pcm = s.decoder.decode(frame, fec=False)
        except Exception:
            self.stats["opus_errors"] += 1
            s.decoder = self._decoder_factory()  # a corrupt frame may leave the state unusable
            return
        self._hand_pcm(s, pcm, user_id)

    def _hand_pcm(self, s: _Stream, pcm: bytes, user_id: int | None = None) -> None:
        if user_id is None:
            user_id = self.vc._ssrc_to_id.get(s.ssrc)
            if user_id is None:
                return
        if not pcm:
            return
        self.stats["frames"] += 1
        try:
            if not s.speaking:
                s.speaking = True
                if self._on_speaking is not None:
                    self._token.run_sync_soon(self._on_speaking, user_id, True)
            self._token.run_sync_soon(self._deliver, user_id, pcm)
        except trio.RunFinishedError:
            pass

    # the clock ---------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self._clock()
        stopped: list[int] = []
        with self._lock:
            for s in list(self._streams.values()):
                if s.held is not None and now - s.held_at >= HOLD_S:
                    self._release_held(s)
                if s.pending and self.vc._ssrc_to_id.get(s.ssrc) is not None and s.held is None:
                    user_id = self.vc._ssrc_to_id[s.ssrc]
                    while s.pending:
                        self._decode(s, user_id, s.pending.popleft())
                if s.speaking and now - s.last_at >= SPEAKING_GAP_S:
                    s.speaking = False
                    uid = self.vc._ssrc_to_id.get(s.ssrc)
                    if uid is not None:
                        stopped.append(uid)
                if s.ssrc not in self.vc._ssrc_to_id and now - s.last_at > 30:
                    del self._streams[s.ssrc]  # a member that left: forget its decoder
        if self._on_speaking is not None:
            for uid in stopped:
                self._on_speaking(uid, False)
        if now - self._keepalive_at >= KEEPALIVE_S:
            self._keepalive_at = now
            self._send_keepalive()

    def _send_keepalive(self) -> None:
        conn = self.vc._connection
        sock = getattr(conn, "socket", None)
        if not self.vc.is_connected() or not sock or not conn.endpoint_ip or not conn.voice_port:
            return
        try:
            sock.sendto(self._keepalive_counter.to_bytes(8, "big"), (conn.endpoint_ip, conn.voice_port))
            self._keepalive_counter = (self._keepalive_counter + 1) & 0xFFFFFFFF
            self.stats["keepalives"] += 1
        except OSError:
            pass
