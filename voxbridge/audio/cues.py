"""Non-speech sounds the bot plays: the "thinking" cue while an answer is on its way."""

from __future__ import annotations

import functools

import numpy as np

from .convert import to_discord_pcm

CUE_RATE = 24_000


@functools.cache
def thinking_cue_pcm() -> bytes:
    """One period of the thinking cue as Discord PCM: a soft 660 Hz then 880 Hz pulse (0.12 s each,
    50 ms apart, sine-squared envelope, -30 dBFS), then 1.2 s of silence. Made once: it never changes."""
    rate = CUE_RATE
    t = np.arange(int(0.12 * rate)) / rate
    env = np.sin(np.pi * t / t[-1]) ** 2
    pulse = np.concatenate(
        [
            0.03 * np.sin(2 * np.pi * 660 * t) * env,
            np.zeros(int(0.05 * rate)),
            0.03 * np.sin(2 * np.pi * 880 * t) * env,
        ]
    ).astype(np.float32)
    gap = np.zeros(int(1.2 * rate), np.float32)
    return to_discord_pcm(np.concatenate([pulse, gap]), rate)
