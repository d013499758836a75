"""Sample-rate and layout conversion, numpy only.

Two cases with different needs:
- the live path (48 kHz stereo s16le frames -> 16 kHz mono float32) is streamed frame by
  frame, so `Downsampler` keeps filter history and decimation phase across calls;
- whole clips (a WAV file, one synthesized clause) are converted at once with an FFT resampler.
"""

from __future__ import annotations

import math

import numpy as np

from . import DISCORD_CHANNELS, DISCORD_RATE, FRAME_BYTES, STT_RATE


def _lowpass_taps(num_taps: int, cutoff: float) -> np.ndarray:
    """Windowed-sinc low-pass; `cutoff` as a fraction of the input Nyquist frequency."""
    n = np.arange(num_taps) - (num_taps - 1) / 2
    taps = cutoff * np.sinc(cutoff * n) * np.blackman(num_taps)
    return (taps / taps.sum()).astype(np.float32)


def pcm16_to_float(data: bytes | np.ndarray) -> np.ndarray:
    """s16le bytes (or int16 array) to float32 in [-1, 1]; a trailing odd byte is ignored."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        usable = len(data) - (len(data) % 2)
        data = np.frombuffer(data[:usable], dtype="<i2")
    return data.astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


class Downsampler:
    """48 kHz interleaved stereo s16le -> 16 kHz mono float32, streamed.

    Averages the two channels, low-passes at 7.2 kHz and keeps every third sample. History and
    phase persist between calls, so frames of any length (odd ones included) give the same
    output as one long call.
    """

    RATIO = DISCORD_RATE // STT_RATE  # exactly 3

    def __init__(self, num_taps: int = 63):
        self._taps = _lowpass_taps(num_taps, cutoff=0.9 / self.RATIO)
        self._history = np.zeros(num_taps - 1, dtype=np.float32)
        self._phase = 0  # index into the next block of the first sample to keep
        self._leftover = b""  # half of a stereo sample pair from the previous call

    def process(self, frame: bytes) -> np.ndarray:
        data = self._leftover + bytes(frame)
        pair = 2 * DISCORD_CHANNELS
        usable = len(data) - (len(data) % pair)
        self._leftover = data[usable:]
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        stereo = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, DISCORD_CHANNELS)
        mono = stereo.mean(axis=1, dtype=np.float32) / 32768.0
        x = np.concatenate([self._history, mono])
        y = np.convolve(x, self._taps, mode="valid")
        out = y[self._phase :: self.RATIO]
        self._phase = (self._phase - len(mono)) % self.RATIO
        self._history = x[len(x) - len(self._history) :]
        return out.astype(np.float32, copy=False)


def _smooth_at_least(n: int) -> int:
    """The smallest number >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole mono float32 clip (band-limited, FFT based)."""
    if src_rate == dst_rate or len(x) == 0:
        return x.astype(np.float32, copy=False)
    n_out = int(round(len(x) * dst_rate / src_rate))
    # The padding and the padded length are multiples of src/gcd (so the clip starts on an output
    # sample and the output length is the exact rate ratio), the latter with a cofactor that has
    # only factors 2, 3, 5, so both FFT sizes are fast (a length with a large prime factor made a
    # 2 s clip take ~50 ms). The zero padding keeps the periodic FFT from wrapping the ends together.
    g = math.gcd(src_rate, dst_rate)
    unit = src_rate // g
    pad = unit * -(-min(len(x), 1024) // unit)
    n_padded = unit * _smooth_at_least(-(-(len(x) + 2 * pad) // unit))
    padded = np.concatenate(
        [np.zeros(pad, np.float32), x.astype(np.float32), np.zeros(n_padded - len(x) - pad, np.float32)]
    )
    n_padded_out = n_padded // unit * (dst_rate // g)
    spectrum = np.fft.rfft(padded)
    keep = min(len(spectrum), n_padded_out // 2 + 1)
    out_spec = np.zeros(n_padded_out // 2 + 1, dtype=complex)
    out_spec[:keep] = spectrum[:keep]
    y = np.fft.irfft(out_spec, n_padded_out) * (n_padded_out / len(padded))
    start = pad // unit * (dst_rate // g)
    return y[start : start + n_out].astype(np.float32)


def to_discord_pcm(mono: np.ndarray, rate: int) -> bytes:
    """A mono float32 clip at `rate` -> 48 kHz stereo s16le bytes (what py-cord plays)."""
    y = float_to_pcm16(resample(mono, rate, DISCORD_RATE))
    return np.repeat(y, DISCORD_CHANNELS).tobytes()


def discord_to_mono(pcm: bytes) -> np.ndarray:
    """48 kHz stereo s16le bytes -> 48 kHz mono float32 (for writing/inspecting output)."""
    usable = len(pcm) - len(pcm) % 4
    stereo = np.frombuffer(pcm[:usable], dtype="<i2").reshape(-1, 2)
    return stereo.mean(axis=1, dtype=np.float32) / 32768.0


def split_frames(pcm: bytes) -> list[bytes]:
    """Cut 48 kHz stereo PCM into 20 ms frames, padding the last one with silence."""
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] = frames[-1] + bytes(FRAME_BYTES - len(frames[-1]))
    return frames
