"""The real tiny.en model on Piper-made speech: word error rate, not exact strings."""

import numpy as np
import pytest
import trio

from voxbridge.audio import STT_RATE
from voxbridge.stt.local import LocalWhisper, resolve_model

from .helpers import wer

SENTENCES = [
    "What time is it in Tokyo right now?",
    "Please tell me a short story about a friendly dragon.",
    "How far away is the moon from the earth?",
    "Turn on the lights in the kitchen and play some music.",
]


@pytest.mark.parametrize("sentence", SENTENCES)
async def test_transcribes_speech_with_low_wer(stt, speech, sentence):
    tr = await stt.transcribe(speech.pcm16k(sentence))
    assert wer(sentence, tr.text) <= 0.25, tr.text
    assert tr.language == "en"
    assert 0.3 < tr.confidence <= 1.0
    assert tr.timings["decode_s"] > 0


async def test_concurrent_transcriptions_are_bounded_and_correct(stt, speech):
    results = {}

    async def one(sentence):
        results[sentence] = await stt.transcribe(speech.pcm16k(sentence))

    async with trio.open_nursery() as n:
        for s in SENTENCES:
            n.start_soon(one, s)
    assert all(wer(s, results[s].text) <= 0.25 for s in SENTENCES)
    assert stt.limiter.total_tokens == 2 and stt.limiter.borrowed_tokens == 0


async def test_silence_and_noise_produce_no_text(stt):
    silence = np.zeros(STT_RATE * 2, np.float32)
    noise = (np.random.default_rng(0).standard_normal(STT_RATE * 2) * 0.01).astype(np.float32)
    for audio in (silence, noise):
        tr = await stt.transcribe(audio)
        assert tr.text == "" and tr.dropped


async def test_cancelled_transcription_releases_its_slot(stt, speech):
    audio = speech.pcm16k(SENTENCES[1])
    with trio.move_on_after(0.01):
        await stt.transcribe(audio)
    with trio.fail_after(30):  # the abandoned decode finishes and gives the token back
        while stt.limiter.borrowed_tokens:
            await trio.sleep(0.05)
    tr = await stt.transcribe(audio)
    assert wer(SENTENCES[1], tr.text) <= 0.25


def test_model_resolution(tmp_path):
    assert resolve_model("").endswith("model")  # the bundled tiny.en directory
    assert resolve_model("small.en") == "small.en"  # a name is passed on to faster-whisper
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(Exception, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


def test_device_auto_picks_cpu_here(base_settings):
    engine = LocalWhisper(base_settings.stt)
    assert engine.device in ("cpu", "cuda")
    assert engine.compute_type == ("int8" if engine.device == "cpu" else "float16")
