"""Cross-request batching for `voxbridge stt-serve`: utterances from many clients, one decode.

Requests that arrive within `window_s` of each other (up to `max_batch`) are turned into log-mel
features, padded to Whisper's 30 s window, encoded together and decoded together by
CTranslate2's `generate` (greedy). This is where a GPU gains most: one kernel launch sequence for
many utterances. Utterances over 30 s, or with a prompt, take the engine's normal path. Results go
through the same hallucination filter as unbatched decodes.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import trio

from ..audio import STT_RATE
from ..errors import SttError
from . import Transcript
from .filters import drop_reason

log = logging.getLogger("voxbridge.stt")
WINDOW_SAMPLES = 30 * STT_RATE


def decode_batch(model, audios: list[np.ndarray], language: str | None) -> list[tuple[str, float, float]]:
    """Blocking: (text, no_speech_prob, avg_logprob) for each <= 30 s clip, decoded as one batch."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    feats = np.stack([pad_or_trim(model.feature_extractor(a)) for a in audios]).astype(np.float32)
    encoder_output = model.encode(feats)
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language or "en")
    prompt = model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=True)
    results = model.model.generate(
        encoder_output,
        [list(prompt) for _ in audios],
        beam_size=1,
        max_length=448,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    out = []
    for r in results:
        tokens = r.sequences_ids[0]
        avg_logprob = r.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else -10.0
        out.append((tokenizer.decode(tokens), r.no_speech_prob, avg_logprob))
    return out


class _Pending:
    """One waiting request: the batcher sets `result` or `error`, then `done`."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Transcript | None = None
        self.error: SttError | None = None


class BatchingStt:
    """Wraps a loaded LocalWhisper; same `transcribe` interface."""

    name = "local-batched"

    def __init__(self, engine, *, max_batch: int = 8, window_s: float = 0.03):
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.limiter = engine.limiter
        self.device = engine.device
        self.model = engine.model
        self._send, self._receive = trio.open_memory_channel(1024)
        self.stats = {"batches": 0, "batched_requests": 0, "largest_batch": 0}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The batcher task: gather a window of requests, decode them together, hand results back."""
        task_status.started()
        async with trio.open_nursery() as nursery:  # bounds the decodes in flight
            while True:
                first = await self._receive.receive()
                batch = [first]
                with trio.move_on_after(self.window_s):
                    while len(batch) < self.max_batch:
                        batch.append(await self._receive.receive())
                nursery.start_soon(self._decode, batch)

    async def _decode(self, batch: list[tuple[np.ndarray, str | None, _Pending]]) -> None:
        language = batch[0][1]
        t0 = time.perf_counter()
        try:
            results = await trio.to_thread.run_sync(
                decode_batch, self.engine.model, [b[0] for b in batch], language, limiter=self.limiter
            )
        except Exception as exc:
            for _, _, box in batch:
                box.error = SttError(f"batched transcription failed: {type(exc).__name__}: {exc}")
                box.done.set()
            return
        elapsed = time.perf_counter() - t0
        self.stats["batches"] += 1
        self.stats["batched_requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        for (audio, lang, box), (text, nsp, logprob) in zip(batch, results, strict=True):
            reason = drop_reason([(text, nsp, logprob)], no_speech_threshold=self.engine.settings.no_speech_threshold)
            box.result = Transcript(
                text="" if reason else text.strip(),
                language=lang or "en",
                confidence=round(min(1.0, math.exp(logprob)), 3),
                duration_s=round(len(audio) / STT_RATE, 3),
                timings={"decode_s": round(elapsed, 4), "batch": len(batch)},
                dropped=reason,
            )
            box.done.set()

    async def transcribe(
        self, pcm16k_mono: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        lang = self.engine.settings.language if language is None else language
        if len(pcm16k_mono) > WINDOW_SAMPLES or prompt:
            return await self.engine.transcribe(pcm16k_mono, language=language, prompt=prompt)
        box = _Pending()
        await self._send.send((pcm16k_mono, lang, box))
        await box.done.wait()
        if box.error is not None:
            raise box.error
        assert box.result is not None  # done is set after one of the two
        return box.result

    async def aclose(self) -> None:
        await self.engine.aclose()
