"""`ingest.text_dark`: the temporal maximum the text detector reads for dark text, through a power
curve (``text_detector.dark_gamma``)."""

from __future__ import annotations

import numpy as np
import pytest

from echocmr.config import ConfigError
from echocmr.ingest.config import TextDetectorConfig
from echocmr.ingest.text_dark import brightened_maximum


def test_gamma_one_is_the_plain_temporal_maximum():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 12, 15), dtype=np.uint8)
    assert np.array_equal(brightened_maximum(frames, 1.0), frames.max(axis=0))


def test_the_curve_spreads_dark_levels_and_keeps_their_order():
    levels = np.arange(256, dtype=np.uint8)
    frames = np.stack([levels.reshape(16, 16), np.zeros((16, 16), np.uint8)])
    out = brightened_maximum(frames, 0.5).ravel().astype(int)
    assert (np.diff(out) >= 0).all() and out[0] == 0 and out[255] == 255
    # dark text at 15 under a surround whose maximum is 60: 45 levels apart, ~62 after the curve
    assert out[60] - out[15] > 60 - 15
    assert out[250] - out[200] < 250 - 200  # bright levels are compressed


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5])
def test_a_gamma_outside_zero_to_one_is_refused(gamma):
    with pytest.raises(ConfigError, match="dark_gamma"):
        TextDetectorConfig(dark_gamma=gamma)
