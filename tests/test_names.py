"""The bot's name heard in addressed mode: the sound matcher on Whisper's spellings, and a small
version of scripts/bench_names.py (Piper and espeak-ng speech, clean and noisy, the real tiny.en
with the name prompt). The full benchmark holds the rates to the targets; this keeps the path
honest with a handful of syntheses and generous thresholds."""

import importlib.util
import random
import shutil

import numpy as np
import pytest

from voxbridge.core.conversation import addressed, name_prompt, sound_distance

from .conftest import ROOT
from .helpers import wer

NAME = ["VoxBridge"]

# How tiny.en writes Piper's and espeak-ng's "VoxBridge" (seen in scripts/bench_names.py runs).
HEARD_AS_NAME = [
    ("VoxBridge, what time is it in Tokyo?", "what time is it in Tokyo?"),
    ("Vox Bridge, what time is it?", "what time is it?"),
    ("Buck's Bridge. What time is it in Tokyo?", "What time is it in Tokyo?"),
    ("Box Bridge, tell me a story about a dragon.", "tell me a story about a dragon."),
    ("Boxbridge, tell me a story.", "tell me a story."),
    ("Block's Bridge, what time is it?", "what time is it?"),
    ("Fox Bridge, turn the music down.", "turn the music down."),
    ("Fuck, Sridge. What time is it in Tokyo?", "What time is it in Tokyo?"),
    ("Hey, Vox Bridge, turn the music down.", "turn the music down."),
    ("Hey VoxBridge. Turn the music down.", "Turn the music down."),
    ("OK, VoxBridge, what's up?", "what's up?"),
    ("VOXBRIDGE!", ""),
]
NOT_THE_NAME = [
    "How far away is the moon, do you think?",
    "Books bring me so much joy.",
    "Fox news is on later tonight.",
    "Bob's birthday is on Friday.",
    "Box up the old bridge parts tomorrow.",
    "Bridges in this city are beautiful.",
    "Back to the bridge of the ship, captain.",
    "Mocks and stubs make the tests faster.",
    "Vocal practice starts at seven.",
    "Hey everyone, sorry I'm late.",
    "What time is it, VoxBridge?",  # addressing is at the start
    "",
]


@pytest.mark.parametrize(("heard", "rest"), HEARD_AS_NAME)
def test_whispers_spellings_of_the_name_match(heard, rest):
    assert addressed(heard, NAME) == rest


@pytest.mark.parametrize("heard", NOT_THE_NAME)
def test_ordinary_speech_does_not_match(heard):
    assert addressed(heard, NAME) is None


def test_short_names_need_the_same_sound_and_wake_phrases_work():
    assert addressed("Bob, what time is it?", ["Bob"]) == "what time is it?"
    assert addressed("Rob, what time is it?", ["Bob"]) is None  # one edit is too much for a short key
    assert addressed("Hey computer, lights off.", ["VoxBridge", "hey computer"]) == "lights off."
    assert addressed("Computer science is hard.", ["VoxBridge", "hey computer"]) is None
    assert sound_distance("FKSPRJ", "PKSPRJ") == 0.5 and sound_distance("FKSPRJ", "PKSPRNK") == 2.5
    assert name_prompt(["VoxBridge", "hey computer", "VoxBridge"]) == "VoxBridge, hey computer."


def _bench():
    spec = importlib.util.spec_from_file_location("bench_names", ROOT / "scripts" / "bench_names.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_speech_small_bench(base_settings, piper, stt, tmp_path):
    assert shutil.which("espeak-ng"), "espeak-ng is missing: scripts/setup.sh --dev installs it (apt, as root)"
    bench = _bench()
    synth = bench.Synth(tmp_path, base_settings)
    synth._piper = piper.voice
    rng = np.random.default_rng(7)
    babble = [np.concatenate([synth.piper(t, 1.0, 0.667, 0.8) for t in bench.BABBLE_TEXT[:3]])] * 3
    r = random.Random(3)
    clips = []
    for i, (text, _rest) in enumerate(bench.ADDRESSED):
        clips.append(
            (
                "addressed",
                synth.piper(text, r.uniform(0.85, 1.2), r.uniform(0.4, 1.0), r.uniform(0.4, 1.1)),
                ["clean", "pink@10dB", "babble@10dB"][i],
            )
        )
        clips.append(("addressed", synth.espeak(text, ["en-us+m3", "en-gb-x-rp", "en-029+f2"][i], 160, 50), "clean"))
    for i, text in enumerate(bench.ORDINARY[:6]):
        clips.append(
            (
                "ordinary",
                synth.piper(text, 1.0, 0.667, 0.8) if i % 2 else synth.espeak(text, "en-us", 160, 50),
                ["clean", "pink@10dB"][i % 2],
            )
        )
    prompt = name_prompt(NAME)
    heard = [
        (kind, stt.transcribe_sync(bench.mix(audio, cond, rng, babble), "en", prompt).text)
        for kind, audio, cond in clips
    ]
    missed = [t for kind, t in heard if kind == "addressed" and addressed(t, NAME) is None]
    false = [t for kind, t in heard if kind == "ordinary" and addressed(t, NAME) is not None]
    assert len(missed) <= 1, heard  # 6 addressed utterances
    assert not false, heard  # 6 ordinary ones


def test_name_scoring_experiment_runs_on_the_decode_encoder_output(base_settings, piper, stt, tmp_path):
    """scripts/bench_names.py --variants spot (forced scoring of the name, measured and not adopted):
    it reuses the prompted decode's encoder output, scores the name said far above a sentence
    without it, and for a named transcript adds the unprompted decode and its likelihood delta."""
    bench = _bench()
    synth = bench.Synth(tmp_path, base_settings)
    synth._piper = piper.voice
    rng = np.random.default_rng(1)
    named = bench.mix(synth.piper("VoxBridge, what time is it in Tokyo?", 1.0, 0.667, 0.8), "clean", rng, [])
    other = bench.mix(synth.piper("Did anyone see the game last night?", 1.0, 0.667, 0.8), "clean", rng, [])
    scorer = bench.NameScorer(stt, NAME)
    try:
        said = scorer.run(named, name_prompt(NAME), 1)
        not_said = scorer.run(other, name_prompt(NAME), 1)
    finally:
        stt.model.model = scorer.inner  # the session's model: no wrapper left behind
    assert addressed(said["heard"], NAME) is not None and "delta" in said, said
    assert addressed(not_said["heard"], NAME) is None and "delta" not in not_said, not_said
    assert said["score"] > not_said["score"] + 5, (said, not_said)
    # the texts are the decodes' own (tiny.en may write "Toki-vo" for Tokyo: a word, not the point here)
    assert wer("Did anyone see the game last night?", not_said["text"]) <= 0.35, not_said
    assert wer("VoxBridge, what time is it in Tokyo?", said["text"]) <= 0.35, said
