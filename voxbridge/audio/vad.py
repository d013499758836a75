"""Voice activity detection on 32 ms windows of 16 kHz audio.

`SileroVad` runs the Silero v6 ONNX model that faster-whisper ships, incrementally: the
model's recurrent state (h, c) and the 64-sample context are carried between calls, so feeding
a stream in pieces gives the same probabilities as feeding it whole. One ONNX session is
shared by all speakers (ORT sessions are thread-safe); each speaker owns a `SileroVad` with its
own state. `EnergyVad` is the fallback when the model cannot be loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

WINDOW = 512  # samples at 16 kHz = 32 ms
CONTEXT = 64

log = logging.getLogger("voxbridge.vad")


def _window_dbfs(windows: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-6))


class Vad(Protocol):
    def probs(self, windows: np.ndarray) -> np.ndarray:
        """Speech probability for each row of `windows` (shape (n, 512), float32)."""
        ...


def silero_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class SileroSession:
    """The shared ONNX session; create one per process (loading takes ~50 ms)."""

    def __init__(self, path: Path | None = None):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(path or silero_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
        )


class SileroVad:
    def __init__(self, session: SileroSession, energy_floor_dbfs: float = -55.0):
        self._session = session.session
        self._floor = energy_floor_dbfs
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)

    def probs(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros(0, np.float32)
        if np.all(_window_dbfs(windows) < self._floor):
            # Nothing but near-silence: skip the model and start fresh, as after a pause.
            self.reset()
            return np.zeros(len(windows), np.float32)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]], axis=0)
        batch = np.concatenate([contexts, windows], axis=1).astype(np.float32)
        out, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -CONTEXT:].copy()
        return np.asarray(out, np.float32).reshape(-1)


class EnergyVad:
    """Speech when a window is 15 dB above the floor: crude, but needs no model."""

    def __init__(self, energy_floor_dbfs: float = -55.0):
        self._floor = energy_floor_dbfs

    def probs(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros(0, np.float32)
        return (_window_dbfs(windows) > self._floor + 15.0).astype(np.float32)


class VadFactory:
    """Makes one VAD per speaker from the configured backend, falling back to energy."""

    def __init__(self, backend: str = "silero", energy_floor_dbfs: float = -55.0):
        self.floor = energy_floor_dbfs
        self.session: SileroSession | None = None
        self.backend = backend
        if backend == "silero":
            try:
                self.session = SileroSession()
            except Exception as exc:  # missing onnxruntime or asset: keep working, say so
                log.warning("event=vad_fallback reason=%r backend=energy", str(exc))
                self.backend = "energy"

    def new(self) -> Vad:
        if self.session is not None:
            return SileroVad(self.session, self.floor)
        return EnergyVad(self.floor)
