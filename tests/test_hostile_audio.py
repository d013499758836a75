"""Hostile audio input (issue 14, item 16): WAV headers that lie, float and extensible WAVs, an
hour of digital silence through `voxbridge transcribe` in bounded memory, one bad file among good."""

import struct
import subprocess
import sys

import numpy as np
import pytest

from voxbridge.audio.wav import read_wav_mono
from voxbridge.errors import VoxBridgeError
from voxbridge.stt.filters import drop_reason

from .helpers import wer

SENTENCE = "Please check the weather for tomorrow morning."


def wav_bytes(samples: bytes, *, rate: int, channels: int, bits: int, tag: int = 1, extensible: bool = False) -> bytes:
    """A WAV file as its writer would lay it out (what `wave` cannot write: float, extensible)."""
    block = channels * bits // 8
    if extensible:  # cbSize 22, valid bits, channel mask, sub-format GUID (format code first)
        guid = struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0x3) + guid
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    chunks += b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.fixture(scope="module")
def sentence(piper):
    from .helpers import SpeechMaker

    audio, rate = SpeechMaker(piper).native(SENTENCE)
    return audio.astype(np.float32), rate


def test_sample_rate_zero_and_other_lying_headers_are_clear_errors(tmp_path):
    pcm = np.zeros(1600, "<i2").tobytes()
    cases = {
        "rate0.wav": (wav_bytes(pcm, rate=0, channels=1, bits=16), "sample rate 0"),
        "nochan.wav": (
            wav_bytes(pcm, rate=16000, channels=1, bits=16).replace(
                struct.pack("<HH", 1, 1), struct.pack("<HH", 1, 0), 1
            ),
            "0 channels",
        ),
        "alaw.wav": (wav_bytes(pcm, rate=8000, channels=1, bits=16, tag=6), "neither PCM nor IEEE float"),
        "text.wav": (b"hello, I am not audio at all", "not a WAV file"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(VoxBridgeError, match=reason) as err:
            read_wav_mono(tmp_path / name)
        assert name in str(err.value)


def test_float32_and_extensible_wavs_read_like_pcm(sentence, tmp_path):
    audio, rate = sentence
    pcm16 = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    stereo16 = np.repeat(pcm16, 2)  # the same signal on both channels
    files = {
        "float32.wav": wav_bytes(audio.astype("<f4").tobytes(), rate=rate, channels=1, bits=32, tag=3),
        "float64_ext.wav": wav_bytes(
            audio.astype("<f8").tobytes(), rate=rate, channels=1, bits=64, tag=3, extensible=True
        ),
        "pcm16_ext_stereo.wav": wav_bytes(stereo16.tobytes(), rate=rate, channels=2, bits=16, extensible=True),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        got, got_rate = read_wav_mono(tmp_path / name)
        assert got_rate == rate and len(got) == len(audio), name
        assert float(np.max(np.abs(got - audio))) < 1e-3, name  # 16-bit quantisation at most


def test_repeated_phantom_phrase_is_dropped_whatever_the_confidence():
    assert drop_reason([("you " * 120, 0.0, -0.05)], no_speech_threshold=0.6) == "phantom_phrase"
    assert drop_reason([("Thank you. Thank you. Thank you.", 0.0, -0.05)], no_speech_threshold=0.6) == "phantom_phrase"
    assert drop_reason([("Bye bye, see you tomorrow.", 0.0, -0.05)], no_speech_threshold=0.6) == ""


def _transcribe(tmp_path, *files) -> tuple[subprocess.CompletedProcess, int]:
    """`voxbridge transcribe` in a child that reports its own peak RSS (MiB) last on stderr."""
    script = (
        "import resource, sys\nfrom voxbridge.cli import main\ncode = main(['transcribe', *sys.argv[1:]])\n"
        "print(f'peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}', file=sys.stderr)\n"
        "sys.exit(code)"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, *map(str, files)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    peak = int(r.stderr.rsplit("peak_rss_mib=", 1)[1].split()[0]) if "peak_rss_mib=" in r.stderr else -1
    return r, peak


def test_transcribe_an_hour_of_silence_prints_nothing_in_bounded_memory_and_bad_files_do_not_stop_the_rest(
    sentence, tmp_path
):
    audio, rate = sentence
    speech = tmp_path / "speech_float32.wav"
    speech.write_bytes(wav_bytes(audio.astype("<f4").tobytes(), rate=rate, channels=1, bits=32, tag=3))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(wav_bytes(np.zeros(800, "<i2").tobytes(), rate=0, channels=1, bits=16))
    minute, hour = tmp_path / "minute_silence.wav", tmp_path / "hour_silence.wav"
    minute.write_bytes(wav_bytes(bytes(16000 * 2 * 60), rate=16000, channels=1, bits=16))
    with open(hour, "wb") as f:  # 115 MB of zeros, written in pieces
        f.write(wav_bytes(b"", rate=16000, channels=1, bits=16)[:-4] + struct.pack("<I", 16000 * 2 * 3600))
        for _ in range(60):
            f.write(bytes(16000 * 2 * 60))

    r, peak_all = _transcribe(tmp_path, speech, broken, hour)
    out = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in r.stdout.splitlines() if ": " in line}
    assert r.returncode == 1, r.stderr[-3000:]  # one file failed ...
    assert "broken.wav" in r.stderr and "sample rate 0" in r.stderr and "Traceback" not in r.stderr
    assert wer(SENTENCE, out[str(speech)]) <= 0.25, out  # ... the files after it were still transcribed
    assert out[str(hour)].startswith("<nothing"), out[str(hour)][:300]  # not "you" x120
    _, peak_minute = _transcribe(tmp_path, speech, minute)
    # An hour costs what a minute costs: the file is streamed (3.4 GB for the hour before).
    assert peak_all > 0 and peak_minute > 0
    print(f"\ntranscribe peak RSS: speech + hour of silence {peak_all} MiB, speech + minute {peak_minute} MiB")
    assert peak_all < peak_minute + 200, (peak_all, peak_minute)
