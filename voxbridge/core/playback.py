"""One audio stream per voice channel: answers play one after another, never interleaved.

`Playback.run` is the channel's playback task. Turns hand it a `SpokenAnswer` once their first
clause is synthesized (so a slow agent never holds up a fast one), and keep feeding it PCM while
earlier clauses play. Barge-in cancels the answer being played for a speaker and drops that
speaker's waiting answers. Frames go to a `FrameSink`: `PlayerBuffer` for a real player thread
(py-cord's AudioSource.read, the simulator's clock) or `CollectSink` for the fast simulation.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Protocol

import trio

from ..audio import FRAME_BYTES, SILENT_FRAME


class FrameSink(Protocol):
    async def write(self, frame: bytes) -> None: ...
    def clear(self) -> None: ...


class PlayerBuffer:
    """Frames for a player thread that reads one every 20 ms and must never block.

    `read()` is called from that thread: it returns the next frame, or silence on underrun.
    `write()` is awaited by the playback task and waits while `capacity` frames are buffered,
    which paces synthesis to real time. The reader wakes a waiting writer through the trio token.
    """

    def __init__(self, capacity_frames: int = 10, token: trio.lowlevel.TrioToken | None = None):
        self._frames: collections.deque[bytes] = collections.deque()
        self._capacity = capacity_frames
        self._lock = threading.Lock()
        self._token = token or trio.lowlevel.current_trio_token()
        self._space = trio.Event()

    def read(self) -> bytes:
        """The next frame, or silence on underrun."""
        frame = self.read_frame()
        return SILENT_FRAME if frame is None else frame

    def read_frame(self) -> bytes | None:
        """The next frame, or None on underrun (the caller decides: silence, or end playback)."""
        with self._lock:
            frame = self._frames.popleft() if self._frames else None
        if frame is None:
            return None
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass
        return frame

    def _wake(self) -> None:
        self._space.set()

    async def write(self, frame: bytes) -> None:
        while True:
            with self._lock:
                if len(self._frames) < self._capacity:
                    self._frames.append(frame)
                    return
            self._space = trio.Event()
            await self._space.wait()

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


class CollectSink:
    """No player: frames are appended at once (the fast simulation, benchmarks)."""

    def __init__(self):
        self.frames: list[bytes] = []

    async def write(self, frame: bytes) -> None:
        self.frames.append(frame)
        await trio.lowlevel.checkpoint()

    def clear(self) -> None:
        pass


class SpokenAnswer:
    """A turn's answer as audio: the turn sends PCM chunks, the playback task plays them."""

    def __init__(self, turn_id: str, speaker_id: str, lookahead: int = 2):
        self.turn_id = turn_id
        self.speaker_id = speaker_id
        # PCM, or (clause text, its PCM): the text is told to on_clause as it starts playing
        self.send, self.receive = trio.open_memory_channel[bytes | tuple[str, bytes]](lookahead)
        self.started_at: float | None = None  # first frame handed to the sink (trio clock)
        self.frames = 0
        self.interrupted = False
        self.dropped = False
        self.done = trio.Event()
        self.scope = trio.CancelScope()

    def stop(self, *, interrupted: bool) -> None:
        self.interrupted = self.interrupted or interrupted
        self.scope.cancel()
        self.receive.close()  # the turn's TTS loop sees BrokenResourceError and stops
        self.done.set()


class Playback:
    def __init__(self, sink: FrameSink, max_queued: int = 16, on_clause: Callable[[str, float], None] | None = None):
        self.sink = sink
        # on_clause(text, seconds): told as each clause starts playing (the echo guard listens)
        self.on_clause = on_clause
        self.max_queued = max_queued
        self._queue: collections.deque[SpokenAnswer] = collections.deque()
        self._wakeup = trio.Event()
        self.current: SpokenAnswer | None = None
        self.played: list[SpokenAnswer] = []
        self._idle = trio.Event()
        self._idle.set()
        self.stats = {"answers_played": 0, "answers_interrupted": 0, "answers_dropped": 0, "frames": 0}

    def enqueue(self, answer: SpokenAnswer) -> None:
        if len(self._queue) >= self.max_queued:
            oldest = self._queue.popleft()
            oldest.dropped = True
            oldest.stop(interrupted=False)
            self.stats["answers_dropped"] += 1
        self._queue.append(answer)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wakeup.set()

    def barge_in(self, speaker_id: str) -> list[SpokenAnswer]:
        """The speaker talks again: stop what is playing for them and drop what waits."""
        stopped = [a for a in self._queue if a.speaker_id == speaker_id]
        self._queue = collections.deque(a for a in self._queue if a.speaker_id != speaker_id)
        if self.current is not None and self.current.speaker_id == speaker_id:
            stopped.append(self.current)
            self.sink.clear()
        for answer in stopped:
            answer.stop(interrupted=True)
        self.stats["answers_interrupted"] += len(stopped)
        return stopped

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self._queue)

    async def wait_idle(self) -> None:
        """Until nothing is playing or waiting to play."""
        await self._idle.wait()

    async def run(self) -> None:
        """The channel's playback task: plays queued answers in order until cancelled."""
        while True:
            while not self._queue:
                self._idle.set()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            answer = self._queue.popleft()
            self.current = answer
            try:
                with answer.scope:
                    async for item in answer.receive:
                        text, pcm = item if isinstance(item, tuple) else ("", item)
                        if text and self.on_clause is not None:
                            self.on_clause(text, len(pcm) / (FRAME_BYTES * 50))
                        for i in range(0, len(pcm), FRAME_BYTES):
                            frame = pcm[i : i + FRAME_BYTES]
                            if len(frame) < FRAME_BYTES:
                                frame += bytes(FRAME_BYTES - len(frame))
                            if answer.started_at is None:
                                answer.started_at = trio.current_time()
                            await self.sink.write(frame)
                            answer.frames += 1
                            self.stats["frames"] += 1
            except trio.ClosedResourceError:
                pass  # stopped by barge-in while waiting for the next clause
            finally:
                self.current = None
                answer.done.set()
            if not answer.interrupted:
                self.stats["answers_played"] += 1
            self.played.append(answer)
            del self.played[:-64]  # keep only recent history
