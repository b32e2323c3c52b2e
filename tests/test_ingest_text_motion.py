"""The text detector's view of every frame (`ingest.text_composite`, `ingest.text_motion`,
`ingest.text_detector`):
each step tried on output-sized frames with text planted where that step, and only that step,
can see it; where it can be, the same clip with the step switched off is the control."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from echocmr.config import ConfigError
from echocmr.ingest.config import TextDetectorConfig
from echocmr.ingest.synth.overlays import screen_font
from echocmr.ingest.synth.small import small_clip
from echocmr.ingest.text_composite import transient_composite
from echocmr.ingest.text_detector import find_text, sample_indices
from echocmr.ingest.text_motion import moving_bands

# every step after the sampled frames off (`ingest.text_detector`'s steps 2-7; each control
# below also switches off the later steps that would find its plant by another way)
SAMPLED_ONLY = dict(composites=False, track_step=0, orientations=False, dark_composite=False,
                    motion_bands=0, line_reads=False, stroke_reads=0, dark_strokes=0)


def _glyphs(text: str, size: int = 16) -> np.ndarray:
    image = Image.new("L", (size * len(text), size * 2), 0)
    ImageDraw.Draw(image).text((2, 2), text, fill=255, font=screen_font(size))
    ink = np.asarray(image) > 100
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _clip(n: int = 30, seed: int = 4) -> np.ndarray:
    """A beating phantom at the output size, no overlays (nothing to read in it)."""
    return small_clip(n, 144, 144, seed=seed, overlays=False).frames


def _plant(frames, glyphs, yx, shown, level=235, dx=0):
    """``glyphs`` at ``yx`` in the frames ``shown`` (moving ``dx`` a frame); returns the frames
    and every pixel a glyph covers in any frame."""
    out, union = frames.copy(), np.zeros(frames.shape[1:], dtype=bool)
    h, w = glyphs.shape
    for i, t in enumerate(shown):
        y, x = yx[0], yx[1] + dx * i
        where = np.zeros(frames.shape[1:], dtype=bool)
        where[y:y + h, x:x + w] = glyphs
        out[t][where] = level[t % len(level)] if isinstance(level, tuple) else level
        union |= where
    return out, union


def _covered(findings, glyphs_HW) -> float:
    return float(findings.mask_HW[glyphs_HW].mean())


def test_the_composite_shows_a_string_from_a_few_frames_whole():
    frames = _clip()
    glyphs = _glyphs("MRN 4711")
    planted, where = _plant(frames, glyphs, (60, 20), shown=[4, 5, 6, 7])
    composite, source = transient_composite(planted)
    # the glyph pixels come from the frames that show them (but where tissue strays farther
    # in another frame: the composite's documented blind spot)
    shown = np.isin(source[where], [4, 5, 6, 7])
    assert shown.mean() >= 0.9 and (composite[where][shown] == 235).all()
    still = np.repeat(frames[:1], 5, axis=0)
    composite, source = transient_composite(still)
    assert (composite == still[0]).all() and (source == 0).all()  # nothing strays: frame 0


def test_text_in_a_few_frames_away_from_the_sampled_ones_is_masked():
    frames = _clip()
    assert set(sample_indices(30, 3)) == {0, 14, 29}
    planted, where = _plant(frames, _glyphs("SMITH JOHN"), (60, 15), shown=[4, 5, 6, 7, 8])
    assert _covered(find_text(planted, TextDetectorConfig(**SAMPLED_ONLY)), where) < 0.1  # control
    found = find_text(planted)
    assert found.boxes >= 1 and _covered(found, where) >= 0.99


@pytest.mark.parametrize("turn", ["upside_down", "mirrored_lr", "mirrored_tb"])
def test_turned_and_mirrored_text_at_an_alternating_level_is_masked(turn):
    glyphs = _glyphs("SMITH JOHN")
    glyphs = {"upside_down": glyphs[::-1, ::-1], "mirrored_lr": glyphs[:, ::-1],
              "mirrored_tb": glyphs[::-1, :]}[turn]
    # (no control with `orientations` off: at this glyph size the recogniser reads some turned
    # strings as they are, at other sizes not; bench_text_detector's rotated and mirrored
    # buckets measure what turning adds)
    planted, where = _plant(_clip(), glyphs, (60, 15), shown=range(30), level=(235, 150))
    assert _covered(find_text(planted), where) >= 0.99


def test_a_ticker_read_in_one_frame_is_followed_along_its_path():
    """Shown in frames 10-21 (the middle frame, 14, among them), moving 2 pixels a frame."""
    planted, where = _plant(_clip(), _glyphs("SMITH JOHN"), (60, 40), shown=range(10, 22), dx=-2)
    # (line_extend 0: grown along the line, frame 15's box alone would reach over the path)
    # (motion_bands and stroke_reads 0 in both: the band of this ticker is read, then followed
    # by the same tracking, `test_a_ticker_in_none_of_the_sampled_frames_is_masked_by_its_band`)
    untracked = find_text(planted, TextDetectorConfig(composites=False, track_step=0,
                                                      line_extend=0, motion_bands=0,
                                                      stroke_reads=0, dark_strokes=0))
    assert _covered(untracked, where) < 0.9  # control: only frame 15's place
    assert _covered(find_text(planted, TextDetectorConfig(motion_bands=0, stroke_reads=0)),
                    where) >= 0.99


def test_rows_with_a_sliding_pattern_are_a_band_read_where_it_shows_most():
    """A ticker moving 2 pixels a frame to the left in frames 2-11, then the same string moving
    to the right, 3 pixels a frame: each time one band over its rows, in a frame that shows
    it. Still text, text that flashes in place and the clip alone give no band."""
    glyphs = _glyphs("SMITH JOHN")
    for shown, yx, dx in ((range(2, 12), (60, 40), -2), (range(15, 25), (90, 10), 3)):
        planted, where = _plant(_clip(), glyphs, yx, shown=shown, dx=dx)
        bands = moving_bands(planted)
        rows = np.flatnonzero(where.any(axis=1))
        assert len(bands) == 1, bands
        assert bands[0].rows.start <= rows[0] and bands[0].rows.stop > rows[-1]
        assert bands[0].frame in shown
    still, _ = _plant(_clip(), glyphs, (60, 40), shown=range(30))
    flash, _ = _plant(_clip(), glyphs, (60, 40), shown=range(4, 9))
    for frames in (still, flash, _clip(seed=1), _clip(seed=2), _clip(seed=3)):
        assert moving_bands(frames) == []
    assert moving_bands(_clip()[:2]) == []  # too short to hold a pair of frames LAG apart


def test_a_ticker_in_none_of_the_sampled_frames_is_masked_by_its_band():
    """A ticker in frames 2-11 only (none of the sampled frames), whose smear on the composite
    the detector does not box: found by its band (`motion_bands`); the control is the same
    clip with the bands off (and the stroke reads, which find it too)."""
    planted, where = _plant(_clip(), _glyphs("SMITH JOHN"), (60, 40), shown=range(2, 12), dx=-2)
    assert _covered(find_text(planted, TextDetectorConfig(motion_bands=0, stroke_reads=0,
                                                          dark_strokes=0)), where) < 0.9
    assert _covered(find_text(planted, TextDetectorConfig(stroke_reads=0)), where) >= 0.99


def test_the_every_frame_check_finds_what_the_other_steps_miss():
    """A ticker in frames 2-11 only (none of the sampled frames), with the band reads off: the
    second check, reading every frame, finds it wherever it goes."""
    planted, where = _plant(_clip(), _glyphs("SMITH JOHN"), (60, 40), shown=range(2, 12), dx=-2)
    checked = find_text(planted, TextDetectorConfig(verify_every_frame=True, motion_bands=0,
                                                    stroke_reads=0, dark_strokes=0))
    assert _covered(checked, where) >= 0.99


def test_dark_text_over_moving_tissue_is_masked():
    """Grey 10 in every frame where the tissue is dim on average but bright at its brightest:
    no frame's read sees it; the clip's temporal maximum (`dark_composite`) does."""
    planted, where = _plant(_clip(), _glyphs("SMITH JOHN", 14), (42, 36), shown=range(30),
                            level=10)
    control = find_text(planted, TextDetectorConfig(dark_composite=False, dark_strokes=0))
    assert _covered(control, where) < 0.1
    assert _covered(find_text(planted), where) >= 0.99


def test_a_line_read_in_part_is_masked_whole():
    """Dark text over bright tissue, read in part (the recogniser's box ends inside the line):
    the mask is grown along the line (`line_extend`) and covers all of it."""
    planted, where = _plant(_clip(), _glyphs("SMITH JOHN", 14), (32, 56), shown=range(30),
                            level=10)
    assert _covered(find_text(planted, TextDetectorConfig(line_extend=0, dark_strokes=0)),
                    where) < 0.9
    assert _covered(find_text(planted), where) >= 0.99


def test_a_clean_clip_reads_nothing():
    for seed in (1, 2, 3):
        assert find_text(_clip(seed=seed)).boxes == 0


@pytest.mark.parametrize("field", ["candidate_boxes", "candidate_frames", "track_step",
                                   "track_context", "max_reads", "line_extend", "motion_bands",
                                   "stroke_reads"])
def test_negative_settings_are_refused(field):
    with pytest.raises(ConfigError, match=field):
        TextDetectorConfig(**{field: -1})
