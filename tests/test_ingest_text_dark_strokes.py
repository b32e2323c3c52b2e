"""`ingest.text_dark_strokes`: lines of thin dark strokes in a clip's temporal maximum, the text
detector's proposals for dark text over the blood pool and dim tissue (``dark_strokes``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from echocmr.config import ConfigError
from echocmr.ingest.config import TextDetectorConfig
from echocmr.ingest.synth.overlays import screen_font
from echocmr.ingest.text_dark_strokes import (
    PAD,
    DarkLine,
    core_rows,
    dark_lines,
    dark_strokes,
    dark_view,
)
from echocmr.ingest.text_detector import find_text


def _ground(level: int, seed: int = 0, shape=(96, 144)) -> np.ndarray:
    """Speckle around ``level`` (uint8), smoothed over 3 pixels as an echo's is."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.normal(level, level / 4, shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (3, 3), 0), 0, 255).astype(np.uint8)


def _glyphs(text: str, size: int, shape, origin) -> np.ndarray:
    layer = Image.new("L", shape[::-1], 0)
    ImageDraw.Draw(layer).text(origin[::-1], text, fill=255, font=screen_font(size))
    return np.asarray(layer) >= 128


def test_thin_dark_strokes_are_found_and_broad_dark_regions_are_not():
    image = _ground(80)
    image[40:43, 20:100] = 5  # a stroke 3 pixels thick... wider than the 3 x 3 closing fills
    image[60, 20:100] = 5  # a 1-pixel stroke
    image[10:30, 110:140] = 5  # a dark blob (a cavity)
    found = dark_strokes(image)
    assert found[60, 20:100].mean() > 0.9
    assert not found[15:25, 115:135].any()  # inside the blob: nothing
    assert not found[41, 20:100].any()  # the middle of a 3-pixel band is not a thin stroke


def test_a_dark_string_over_a_dim_ground_is_the_densest_line_and_covered():
    for level in (40, 120):  # the blood pool's maximum, tissue's
        image = _ground(level, seed=level)
        glyphs = _glyphs("MRN 4711023", 16, image.shape, (50, 20))
        image[glyphs] = 8
        lines = dark_lines(image, 2)
        assert lines, level
        first = lines[0]
        box = np.zeros(image.shape, dtype=bool)
        box[first.rows, first.cols] = True
        assert box[glyphs].mean() > 0.9, (level, first)
        # the view the recogniser reads: the string dark on a white ground, whatever the level
        view = dark_view(image, first)
        inner = glyphs[first.rows, first.cols]
        assert np.median(view[~inner]) > 200 and np.median(view[inner]) < 80, level


def test_lines_are_distinct_at_most_n_and_none_on_a_flat_image():
    image = _ground(100)
    for row in (10, 50, 80):
        image[_glyphs("DOE JANE", 12, image.shape, (row, 30))] = 5
    lines = dark_lines(image, 5)
    assert len(dark_lines(image, 2)) == 2
    centres = sorted((ln.rows.start + ln.rows.stop) // 2 for ln in lines[:3])
    assert len({c // 20 for c in centres}) == 3  # three lines, not one line three times
    assert dark_lines(np.full((64, 64), 90, dtype=np.uint8), 3) == []


def _clip_with_dark_text() -> tuple[np.ndarray, np.ndarray]:
    """30 frames of moving speckle at the blood pool's level (grey ~20) with a name drawn at
    grey 15 in every frame: a few levels below the pool's maximum (text at grey 5 there, or over
    a ground of 30 or more, the temporal maximum's detector read finds already)."""
    frames = np.stack([_ground(20, seed=300 + t) for t in range(30)])
    glyphs = _glyphs("GARCIA MARIA", 13, frames.shape[1:], (40, 15))
    frames[:, glyphs] = 15
    return frames, glyphs


def test_the_detector_masks_dark_text_over_the_pool_only_with_dark_strokes_on():
    frames, glyphs = _clip_with_dark_text()
    on = find_text(frames, TextDetectorConfig())
    assert on.mask_HW[glyphs].mean() >= 0.9
    off = find_text(frames, TextDetectorConfig(dark_strokes=0))
    assert off.mask_HW[glyphs].mean() < 0.9  # the path is what masks it: the test can fail


def test_a_clip_without_text_gets_no_box_from_the_dark_lines():
    frames = np.stack([_ground(60, seed=500 + t) for t in range(20)])
    assert find_text(frames, TextDetectorConfig()).boxes == 0


def test_a_lines_core_rows_are_its_glyphs_band_without_the_texture_around_it():
    image = _ground(100)
    glyphs = _glyphs("MRN 4711023", 12, image.shape, (40, 10))
    image[glyphs] = 8
    top, bottom = np.flatnonzero(glyphs.any(axis=1))[[0, -1]]
    image[top - 6, 12:130:14] = 8  # sparse dark pits above and below the line (speckle's)
    image[bottom + 6, 16:130:14] = 8
    line = DarkLine(slice(top - 8, bottom + 9), slice(8, 136), 0.3)
    core = core_rows(dark_strokes(image), line)
    assert core.start > top - 6 and core.stop <= bottom + 6  # the pits' rows are left out
    assert core.start <= top and core.stop > bottom  # the glyphs' rows are kept whole
    assert core.start >= top - PAD and core.stop <= bottom + 1 + PAD
    # a line's proposals carry their core; the view of it is that band only
    first = dark_lines(image, 1)[0]
    assert first.core is not None and first.core.start >= first.rows.start
    view = dark_view(image, DarkLine(line.rows, line.cols, 0.3, core=core), core=True)
    assert view.shape == (core.stop - core.start, line.cols.stop - line.cols.start)
    # a box without strokes keeps its rows
    flat = np.full((40, 60), 90, dtype=np.uint8)
    box = DarkLine(slice(5, 20), slice(5, 50), 0.0)
    assert core_rows(dark_strokes(flat), box) == box.rows


def _jpeg(frame: np.ndarray) -> np.ndarray:
    import io

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=75)
    return np.asarray(Image.open(buffer).convert("L"))


def test_jpeg_coded_dark_text_over_the_pool_is_masked_by_the_rereads():
    """A date at grey 12 over the pool's speckle (grey ~20), each frame stored as JPEG: the
    codec blurs its strokes toward the pool; the first crop of its line does not read as text,
    its core rows in the maximum or the temporal median do."""
    frames = np.stack([_ground(20, seed=300 + t) for t in range(30)])
    glyphs = _glyphs("13/07/1998", 13, frames.shape[1:], (40, 10))
    frames[:, glyphs] = 12
    frames = np.stack([_jpeg(frame) for frame in frames])
    on = find_text(frames, TextDetectorConfig())
    assert on.mask_HW[glyphs].mean() >= 0.9
    # without the rereads it ships (the rereads are what masks it: the test can fail)
    off = find_text(frames, TextDetectorConfig(dark_stroke_rereads=False))
    assert off.mask_HW[glyphs].mean() < 0.9


@pytest.mark.parametrize(("field", "value"), [("dark_strokes", -1), ("dark_stroke_score", 1.5),
                                              ("dark_stroke_score", -0.1)])
def test_bad_dark_stroke_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TextDetectorConfig(**{field: value})
