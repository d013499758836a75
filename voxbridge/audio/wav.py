"""WAV files: integer PCM (8/16/24/32-bit), IEEE float (32/64-bit), plain or WAVE_FORMAT_EXTENSIBLE,
any rate and channel count; read whole or streamed in chunks (an hour-long file in bounded memory).

The RIFF chunks are parsed here rather than by `wave` (Python 3.11's rejects float and
extensible files); a header that cannot describe audio (rate 0, no channels, a block size that
does not match) is a clear error naming the file and the field."""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import VoxBridgeError

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_HINT = "convert it, e.g. `sox in.xxx -b 16 out.wav`"


class WavReader:
    """An open WAV file: its layout, and its frames as mono float32 in [-1, 1], chunk by chunk."""

    def __init__(self, source):
        self.name = getattr(source, "name", None) or str(source)
        if hasattr(source, "read"):
            self._file, self._owned = source, False
        else:
            try:
                self._file, self._owned = open(source, "rb"), True  # noqa: SIM115 - closed by close()
            except FileNotFoundError:
                raise VoxBridgeError(f"{source}: no such file") from None
            except OSError as exc:
                raise VoxBridgeError(f"{source}: cannot read ({exc.strerror})") from None
        try:
            self._parse_header()
        except BaseException:
            self.close()
            raise

    def _fail(self, why: str) -> VoxBridgeError:
        return VoxBridgeError(f"{self.name}: {why}")

    def _parse_header(self) -> None:
        f = self._file
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            raise self._fail(f"not a WAV file (no RIFF/WAVE header); {_HINT}")
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise self._fail(
                    "no audio data (the file ends before its data chunk)" if fmt else f"no fmt chunk; {_HINT}"
                )
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                if size < 16 or size > 1024:
                    raise self._fail(f"fmt chunk of {size} bytes is not a WAV format header")
                fmt = f.read(size)
                if len(fmt) < size:
                    raise self._fail("truncated fmt chunk")
                if size % 2:
                    f.read(1)
            elif cid == b"data":
                if fmt is None:
                    raise self._fail("data chunk before the fmt chunk")
                self._set_format(fmt)
                self._remaining = size  # may be 0 or 0xFFFFFFFF when written as a stream: reading stops at EOF
                if size in (0, 0xFFFFFFFF):
                    self._remaining = None
                return
            else:
                skip = size + (size % 2)
                try:
                    f.seek(skip, 1)
                except (OSError, ValueError):
                    f.read(skip)

    def _set_format(self, fmt: bytes) -> None:
        tag, channels, rate, _byte_rate, block, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == _EXTENSIBLE:
            if len(fmt) < 40:
                raise self._fail("WAVE_FORMAT_EXTENSIBLE header is truncated")
            tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the format code
        if tag not in (_PCM, _FLOAT):
            raise self._fail(f"audio format {tag:#06x} is neither PCM nor IEEE float (compressed?); {_HINT}")
        if channels == 0:
            raise self._fail("the header says 0 channels")
        if rate == 0:
            raise self._fail(f"the header says sample rate 0 Hz: the file is corrupt; {_HINT}")
        width = bits // 8
        ok = {_PCM: (1, 2, 3, 4), _FLOAT: (4, 8)}[tag]
        if bits % 8 or width not in ok:
            kind = "PCM" if tag == _PCM else "float"
            raise self._fail(f"{bits}-bit {kind} samples are not supported (PCM 8/16/24/32, float 32/64); {_HINT}")
        if block != width * channels:
            raise self._fail(f"block size {block} does not match {channels} channel(s) of {bits}-bit samples")
        self.format = "float" if tag == _FLOAT else "pcm"
        self.channels, self.rate, self.width = channels, rate, width

    def frames(self, count: int) -> np.ndarray:
        """Up to `count` frames as mono float32; empty at the end of the data."""
        want = count * self.width * self.channels
        if self._remaining is not None:
            want = min(want, self._remaining)
        raw = self._file.read(want) if want > 0 else b""
        if self._remaining is not None:
            self._remaining -= len(raw)
        raw = raw[: len(raw) - len(raw) % (self.width * self.channels)]
        return _to_mono(raw, self.format, self.width, self.channels)

    def chunks(self, seconds: float) -> Iterator[np.ndarray]:
        n = max(1, int(self.rate * seconds))
        while (x := self.frames(n)).size:
            yield x

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_mono(raw: bytes, fmt: str, width: int, channels: int) -> np.ndarray:
    if fmt == "float":
        x = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float32)
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    elif width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        i = b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16)
        i = np.where(i >= 1 << 23, i - (1 << 24), i)
        x = i.astype(np.float32) / float(1 << 23)
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32, copy=False)


def read_wav_mono(path) -> tuple[np.ndarray, int]:
    """Read a WAV (a path or a binary file object) as mono float32 and its sample rate."""
    with WavReader(path) as reader:
        parts = list(reader.chunks(60.0))
        return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), reader.rate


def write_wav(path: str | Path, pcm16: bytes | np.ndarray, rate: int, channels: int = 1) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = pcm16.tobytes() if isinstance(pcm16, np.ndarray) else pcm16
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
