"""The clip resampler on awkward lengths (a synthesized clause is any number of samples): exact
output length, faithful waveform. It pads to FFT-friendly sizes; these pin that it stays exact."""

import numpy as np
import pytest

from voxbridge.audio.convert import resample


@pytest.mark.parametrize(
    ("src", "dst"), [(22050, 48000), (48000, 16000), (16000, 48000), (44100, 16000), (22051, 48000)]
)
@pytest.mark.parametrize("n", [1, 97, 48127, 70001])  # 48127 and 70001 are primes
def test_resample_length_and_waveform(src, dst, n):
    x = np.sin(np.arange(n) * 2 * np.pi * 440 / src).astype(np.float32)
    y = resample(x, src, dst)
    assert len(y) == int(round(n * dst / src))
    if n > 1000:
        ideal = np.sin(np.arange(len(y)) * 2 * np.pi * 440 / dst)
        assert np.max(np.abs(y - ideal)[300:-300]) < 0.005  # a 440 Hz tone stays a 440 Hz tone, in phase
