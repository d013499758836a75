"""Speculative (early) decoding only on spare capacity, and cancelled decodes that stop early.

Real tiny.en on Piper speech; behaviour only, no timing targets."""

import threading

import attrs
import pytest
import trio

from voxbridge.agents.config import load_agents
from voxbridge.audio.convert import split_frames
from voxbridge.core.channel import ChannelSession
from voxbridge.core.playback import CollectSink
from voxbridge.core.services import open_services
from voxbridge.core.utterance import Decode, has_spare_capacity
from voxbridge.stt.local import DecodeDiscarded

from .helpers import SpeechMaker, wer

QUESTION = "Please tell me what the weather will be like tomorrow."


async def _wait_until(predicate, limit_s=60):
    with trio.fail_after(limit_s):  # a sanity bound, not a timing target
        while not predicate():
            await trio.sleep(0.01)


def test_spare_capacity_means_an_idle_worker_and_nobody_waiting():
    async def main():
        limiter = trio.CapacityLimiter(2)
        engine = type("Engine", (), {"limiter": limiter})()
        assert has_spare_capacity(engine)
        limiter.acquire_on_behalf_of_nowait("a")
        assert has_spare_capacity(engine)  # one of two workers is still idle
        limiter.acquire_on_behalf_of_nowait("b")
        assert not has_spare_capacity(engine)
        limiter.release_on_behalf_of("a")
        assert has_spare_capacity(engine)
        assert has_spare_capacity(object())  # no limiter (remote engines): their server decides

    trio.run(main)


async def _agents(settings, agent_server):
    async def handler(req, resp):
        await resp.respond(200, {"output": "Fine."})

    url = await agent_server(handler)
    cfg = load_agents(settings.agents.file)
    return cfg.with_urls({a.id: f"{url}/webhook/{a.id}" for a in cfg.agents})


async def test_no_early_decode_starts_while_every_worker_is_busy(settings, stt, piper, agent_server):
    cfg = await _agents(settings, agent_server)
    settings = attrs.evolve(settings, tts=attrs.evolve(settings.tts, backend="none"))
    pcm = SpeechMaker(piper).discord(QUESTION, 0.3, 1.3)
    async with (
        open_services(settings, agents=cfg, stt=stt, tts=False, observer=lambda k, f: None) as services,
        trio.open_nursery() as nursery,
    ):
        channel = await nursery.start(ChannelSession(services, "g1", "c1", CollectSink()).run)
        busy = [object() for _ in range(int(stt.limiter.total_tokens))]
        for owner in busy:  # every decode worker is taken by someone else
            stt.limiter.acquire_on_behalf_of_nowait(owner)
        h = channel.add_speaker("u1", "alice")
        for frame in split_frames(pcm):
            await h.send(frame)
        session = h.session
        await _wait_until(lambda: session.stats["utterances"] == 1)
        assert stt.stats["decodes"] == 0  # nothing speculative started on a busy engine
        assert session.stats["early_skipped"] >= 1 and session.stats["early_used"] == 0
        for owner in busy:
            stt.limiter.release_on_behalf_of(owner)
        await h.finish()
        await h.finished.wait()
        [turn] = await services.store.list_turns()
        channel.close()
    assert stt.stats["decodes"] == 1  # the final decode only: no wasted work
    assert turn["timings"]["early_decode"] is False
    assert wer(QUESTION, turn["transcript"]) <= 0.25


async def test_early_decode_runs_on_an_idle_worker(settings, stt, piper, agent_server):
    cfg = await _agents(settings, agent_server)
    pcm = SpeechMaker(piper).discord(QUESTION, 0.3, 1.3)
    async with (
        open_services(settings, agents=cfg, stt=stt, tts=False, observer=lambda k, f: None) as services,
        trio.open_nursery() as nursery,
    ):
        channel = await nursery.start(ChannelSession(services, "g1", "c1", CollectSink()).run)
        h = channel.add_speaker("u1", "alice")
        for frame in split_frames(pcm):
            await h.send(frame)
        await h.finish()
        await h.finished.wait()
        [turn] = await services.store.list_turns()
        channel.close()
    assert h.session.stats["early_used"] == 1 and h.session.stats["early_skipped"] == 0
    assert stt.stats["decodes"] == 1  # the early decode was the one used
    assert turn["timings"]["early_decode"] is True


async def test_adopted_early_decode_runs_even_when_workers_became_busy(stt, speech):
    """An early decode taken as the final one before it started must not be skipped."""
    audio = speech.pcm16k(QUESTION)
    busy = [object() for _ in range(int(stt.limiter.total_tokens))]
    for owner in busy:
        stt.limiter.acquire_on_behalf_of_nowait(owner)
    decode = Decode(stt, audio, utterance=1, early=True)
    decode.speculative = False  # what SpeakerSession does when the utterance ends with this audio

    async def release_later():
        await trio.sleep(0.2)
        for owner in busy:
            stt.limiter.release_on_behalf_of(owner)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(decode.run)
        nursery.start_soon(release_later)
    assert not decode.skipped
    assert wer(QUESTION, (await decode.wait()).text) <= 0.25


class _CountingModel:
    """Wraps the real CTranslate2 model: counts calls and raises a flag during encode."""

    def __init__(self, inner, on_encode):
        self.inner = inner
        self.on_encode = on_encode
        self.calls = {"encode": 0, "generate": 0}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, *args, **kwargs):
        self.calls["encode"] += 1
        out = self.inner.encode(*args, **kwargs)
        self.on_encode()  # the turn gives up while the encoder runs
        return out

    def generate(self, *args, **kwargs):
        self.calls["generate"] += 1
        return self.inner.generate(*args, **kwargs)


async def test_cancelled_decode_stops_at_the_next_step_and_releases_its_worker(stt, speech):
    audio = speech.pcm16k(QUESTION)
    checked = stt.model.model  # the step-checking wrapper around the CTranslate2 model
    in_encode, turn_gave_up = threading.Event(), threading.Event()

    def encoding():  # hold the worker inside the encoder step until the turn has given up
        in_encode.set()
        turn_gave_up.wait(30)

    spy = _CountingModel(checked._inner, encoding)
    checked._inner = spy
    try:
        async with trio.open_nursery() as nursery:

            async def decode():
                await stt.transcribe(audio)

            nursery.start_soon(decode)
            await _wait_until(in_encode.is_set)
            nursery.cancel_scope.cancel()  # e.g. speech resumed: the early decode is void
        turn_gave_up.set()
        await _wait_until(lambda: stt.limiter.borrowed_tokens == 0)  # the worker is free again
    finally:
        checked._inner = spy.inner
    assert spy.calls == {"encode": 1, "generate": 0}  # stopped before decoding a single token
    assert stt.stats["decodes"] == 1 and stt.stats["discarded"] == 1
    assert stt.stats["wasted_s"] > 0


async def test_a_decode_cancelled_before_it_starts_does_no_work(stt, speech):
    flag = threading.Event()
    flag.set()
    audio = speech.pcm16k(QUESTION)
    with pytest.raises(DecodeDiscarded):
        await trio.to_thread.run_sync(stt.transcribe_sync, audio, "en", None, flag)
    assert stt.stats["discarded"] == 1
    # the engine still works for the next decode
    tr = await stt.transcribe(audio)
    assert wer(QUESTION, tr.text) <= 0.25
