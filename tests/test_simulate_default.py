"""`voxbridge simulate` with no --say/--wav does what the README's first section says, every time:
three people talk over each other, so the channel is in addressed mode; the two who start with
"VoxBridge" are answered (with the name stripped), the third is stored but not answered.

Piper's synthesis is random (noise_scale, noise_w), so one run proves little: ten runs, each seed
drawing its own length/noise scales for every line, through the real pipeline (VAD, tiny.en with
the default settings, routing, demo agents; --fast and no spoken answers to keep it short)."""

import random

import attrs
import numpy as np
import pytest

from voxbridge.sim.simulate import DEFAULT_SCENARIO, parse_line, simulate
from voxbridge.tts import Speech

from .conftest import ROOT
from .helpers import wer


class SeededPiper:
    """The bundled Piper voice with per-seed length and noise scales (one rendition per seed)."""

    def __init__(self, voice, seed: int):
        self.voice = voice
        self.seed = seed

    async def synthesize(self, text: str, *, voice=None) -> Speech:
        from piper import SynthesisConfig

        rng = random.Random(f"{self.seed}|{text}")
        cfg = SynthesisConfig(
            length_scale=rng.uniform(0.9, 1.15),
            noise_scale=rng.uniform(0.45, 0.9),
            noise_w_scale=rng.uniform(0.55, 1.05),
        )
        audio = np.concatenate([c.audio_int16_array for c in self.voice.synthesize(text, syn_config=cfg)])
        return Speech(audio=audio.astype(np.float32) / 32768.0, rate=int(self.voice.config.sample_rate))


@pytest.mark.parametrize("seed", range(10))
async def test_default_scenario_answers_the_two_who_address_the_bot(seed, tmp_path, base_settings, piper, stt):
    # The shipped defaults (addressed above 2 people, name prompt on), state in a temp dir.
    settings = attrs.evolve(
        base_settings,
        general=attrs.evolve(base_settings.general, state_dir=str(tmp_path / "state")),
        agents=attrs.evolve(base_settings.agents, file=str(ROOT / "agents.toml")),
        tts=attrs.evolve(base_settings.tts, backend="none"),
    )
    lines = [parse_line(s, "say") for s in DEFAULT_SCENARIO]
    result = await simulate(
        settings,
        lines,
        out_dir=tmp_path / "out",
        fast=True,
        demo_agents=True,
        quiet=True,
        progress=False,
        stt=stt,
        tts=False,
        line_tts=SeededPiper(piper.voice, seed),
    )
    by_user = {t["user_id"]: t for t in result.turns}
    assert sorted(by_user) == ["alice", "bob", "carol"], [(t["user_id"], t["transcript"]) for t in result.turns]
    for user in ("alice", "bob"):
        assert by_user[user]["status"] == "answered", (user, by_user[user]["transcript"], by_user[user].get("flags"))
    carol = by_user["carol"]
    assert carol["status"] == "not_routed" and "moon" in carol["transcript"].lower()
    assert "not_addressed" in str(carol.get("flags")), carol
    payloads = [e for e in result.events if e["event"] == "turn_routed"]
    assert len(payloads) == 2
    # The name was stripped before routing: the answers echo the question, not "VoxBridge".
    answers = {e["user"]: e["text"] for e in result.events if e["event"] == "turn_answered"}
    for user, asked in (("alice", "what time is it in tokyo"), ("bob", "tell me a story about a dragon")):
        heard = answers[user].removeprefix("You asked ").split(". The ")[0]
        assert wer(asked, heard) <= 0.35, (user, heard)
