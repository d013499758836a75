"""Conversion, VAD and segmentation on real (Piper-made) speech."""

import numpy as np

from voxbridge.audio import FRAME_BYTES, STT_RATE
from voxbridge.audio.convert import Downsampler, resample, split_frames, to_discord_pcm
from voxbridge.audio.segmenter import (
    Segmenter,
    SilenceStarted,
    SpeechResumed,
    SpeechStarted,
    UtteranceDropped,
    UtteranceEnded,
)
from voxbridge.audio.vad import EnergyVad, VadFactory


def _tone(freq, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_downsampler_streams_like_one_call_and_keeps_tones():
    pcm = to_discord_pcm(_tone(440, 1.0, 48000), 48000)
    whole = Downsampler().process(pcm)
    ds = Downsampler()
    # odd-sized pieces, including half a stereo sample pair
    pieces, i, sizes = [], 0, [3, 3840, 1001, 7, 3840 * 3]
    while i < len(pcm):
        n = sizes[len(pieces) % len(sizes)]
        pieces.append(ds.process(pcm[i : i + n]))
        i += n
    streamed = np.concatenate(pieces)
    assert len(whole) == 16000 and len(streamed) == 16000
    assert np.allclose(whole, streamed, atol=1e-6)
    spectrum = np.abs(np.fft.rfft(whole))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins


def test_downsampler_removes_content_above_8khz():
    pcm = to_discord_pcm(_tone(12000, 0.5, 48000), 48000)
    out = Downsampler().process(pcm)
    assert np.sqrt(np.mean(out[200:] ** 2)) < 0.01  # a 12 kHz tone would alias without the filter


def test_resample_keeps_duration_and_pitch():
    y = resample(_tone(300, 2.0, 22050), 22050, 16000)
    assert len(y) == 32000
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) / 2.0 - 300) <= 1


def test_split_frames_pads_last_frame():
    frames = split_frames(bytes(FRAME_BYTES * 2 + 10))
    assert [len(f) for f in frames] == [FRAME_BYTES] * 3


def _segment(segmenter, audio, chunk=320):
    events = []
    for i in range(0, len(audio), chunk):
        events += segmenter.process(audio[i : i + chunk])
    return events


def _seg(**kw):
    return Segmenter(VadFactory("silero").new(), **kw)


def test_segmenter_cuts_real_speech_with_early_decode_audio_identical(speech):
    voice = speech.pcm16k("What time is it in Tokyo right now?")
    silence = np.zeros(STT_RATE, np.float32)
    events = _segment(_seg(), np.concatenate([silence, voice, silence, silence]))
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) == 1 and ends[0].reason == "silence" and ends[0].early
    early = [e for e in events if isinstance(e, SilenceStarted)][-1]
    assert np.array_equal(early.audio, ends[0].audio)  # the early decode saw exactly the final audio
    # The cut keeps the whole utterance: within 0.5 s of the real speech length, pre-roll included.
    assert abs(len(ends[0].audio) - len(voice)) < STT_RATE // 2


def test_segmenter_resumes_and_cuts_two_utterances(speech):
    a = speech.pcm16k("Tell me a story.")
    b = speech.pcm16k("About a dragon please.")
    pause = np.zeros(int(0.45 * STT_RATE), np.float32)  # longer than early_ms, shorter than silence_ms
    gap = np.zeros(STT_RATE * 2, np.float32)
    events = _segment(_seg(), np.concatenate([a, pause, b, gap, a, gap]))
    assert any(isinstance(e, SpeechResumed) for e in events)
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) == 2
    assert len(ends[0].audio) > len(a) + len(b) - STT_RATE // 4  # the pause did not split it


def test_segmenter_max_length_and_short_noise():
    loud = np.tile(_tone(200, 1.0, STT_RATE), 5)  # 5 s of "speech" for the energy VAD
    seg = Segmenter(EnergyVad(), max_utterance_ms=2000, silence_ms=500, early_ms=200, tail_ms=100)
    events = _segment(seg, np.concatenate([loud, np.zeros(STT_RATE, np.float32)]))
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert [e.reason for e in ends][:2] == ["max_length", "max_length"]
    assert all(len(e.audio) <= 2 * STT_RATE for e in ends)
    click = np.concatenate([np.zeros(STT_RATE, np.float32), _tone(200, 0.06, STT_RATE), np.zeros(STT_RATE, np.float32)])
    events = _segment(Segmenter(EnergyVad(), min_speech_ms=200), click)
    assert not [e for e in events if isinstance(e, UtteranceEnded)]
    assert [e for e in events if isinstance(e, UtteranceDropped)]


def test_segmenter_flush_closes_open_utterance(speech):
    seg = _seg()
    events = _segment(seg, speech.pcm16k("Hello there, how are you"))
    assert not [e for e in events if isinstance(e, UtteranceEnded)]
    ends = seg.flush()
    assert len(ends) == 1 and ends[0].reason == "flush"


def test_silero_ignores_noise_and_silence():
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(STT_RATE * 3) * 0.02).astype(np.float32)
    events = _segment(_seg(), noise) + _segment(_seg(), np.zeros(STT_RATE * 3, np.float32))
    assert not [e for e in events if isinstance(e, UtteranceEnded)]
