"""WAV files in any PCM layout (8/16/24/32-bit, any rate and channel count)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from ..errors import VoxBridgeError


def read_wav_mono(path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV (a path or a binary file object) as mono float32 and its sample rate."""
    try:
        with wave.open(path if hasattr(path, "read") else str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise VoxBridgeError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise VoxBridgeError(f"{path}: not a PCM WAV file ({exc}); convert it, e.g. `sox in.mp3 out.wav`") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        i = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
        i = np.where(i >= 1 << 23, i - (1 << 24), i)
        x = i.astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    else:  # pragma: no cover - wave rejects other widths
        raise VoxBridgeError(f"{path}: unsupported sample width {width}")
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32), rate


def write_wav(path: str | Path, pcm16: bytes | np.ndarray, rate: int, channels: int = 1) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = pcm16.tobytes() if isinstance(pcm16, np.ndarray) else pcm16
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
