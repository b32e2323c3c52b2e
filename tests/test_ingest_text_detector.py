"""The text detector (`ingest.text_detector`) on frames with words planted at known places.

The real OCR model reads every frame here. The checks are geometric: a planted word's glyphs are
masked, and little else (a box carried back to the wrong output pixels, a box clipped to the
wrong tile or one leaking into a neighbouring tile of the mosaic fails them), for one detector
call per frame and for the mosaic, and for 1, 2, 3 and 6 sampled frames.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from echocmr.ingest.config import ConfigError, TextDetectorConfig
from echocmr.ingest.synth.overlays import screen_font
from echocmr.ingest.text_detector import find_text, mosaic_grid, sample_indices

SIZE = 144  # output frames, as ingest writes them


def _background(n_frames: int = 12) -> np.ndarray:
    """A smooth grey 'sector' on black (nothing a detector reads), frame-to-frame varying."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    frames = np.zeros((n_frames, SIZE, SIZE), dtype=np.uint8)
    for t in range(n_frames):
        level = 30 + 20 * np.sin(yy / 17 + t / 3) * np.cos(xx / 23)
        frames[t, 12:132, 8:136] = level[12:132, 8:136].astype(np.uint8)
    return frames


def _word(text: str, xy: tuple[int, int], size: int = 12) -> np.ndarray:
    """The glyph pixels of ``text`` drawn with its top-left at ``xy`` (output pixels)."""
    layer = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(layer).text(xy, text, fill=255, font=screen_font(size))
    return np.asarray(layer) > 100


def _grown_box(glyphs_HW: np.ndarray, by: int, along: int = 0) -> np.ndarray:
    """The glyphs' box grown by ``by``, and by ``along`` more at both ends of the line."""
    ys, xs = np.nonzero(glyphs_HW)
    box = np.zeros_like(glyphs_HW)
    box[max(ys.min() - by, 0):ys.max() + by + 1,
        max(xs.min() - by - along, 0):xs.max() + by + along + 1] = True
    return box


def _allowance(glyphs_HW: np.ndarray, margin: int) -> int:
    """How far a correct mask may reach beyond a word's glyphs: the detector's box is the text
    line's core grown by about 0.4 of its height each side (DB's unclip), then ``margin``."""
    rows = np.flatnonzero(glyphs_HW.any(axis=1))
    return margin + (rows[-1] - rows[0] + 1) // 2 + 2


def _check(mask_HW: np.ndarray, glyphs_HW: np.ndarray, config: TextDetectorConfig) -> None:
    """The glyphs are covered, and nothing beyond their box grown by the allowance (and, along
    the line only, by ``line_extend`` times the detector box's height at each end)."""
    assert mask_HW[glyphs_HW].mean() >= 0.95
    by = _allowance(glyphs_HW, config.margin)
    rows = np.flatnonzero(glyphs_HW.any(axis=1))
    along = int(np.ceil(config.line_extend * (rows[-1] - rows[0] + 1 + 2 * (by - config.margin))))
    stray = mask_HW & ~_grown_box(glyphs_HW, by, along)
    assert not stray.any(), f"{stray.sum()} masked pixels away from the word"


LAYOUTS = {
    "default": dict(),
    "per frame": dict(detector_side=0, crop_to_content=False),
    # (the mosaic's boxes not grown along their line: a box leaking into the next tile shows)
    "mosaic": dict(detector_side=0, mosaic=True, crop_to_content=False, line_extend=0),
    "mosaic, cropped": dict(detector_side=0, mosaic=True, crop_to_content=True, line_extend=0),
    "old default": dict(upscale=4, detector_side=736, crop_to_content=False),
}


def test_the_background_holds_no_text():
    for fields in LAYOUTS.values():
        assert find_text(_background(), TextDetectorConfig(**fields)).boxes == 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_planted_id_is_masked_where_it_is_and_little_else(layout):
    frames = _background()
    glyphs = _word("MRN 4471023", (30, 60))
    frames[:, glyphs] = 230
    config = TextDetectorConfig(**LAYOUTS[layout])
    findings = find_text(frames, config)
    assert findings.boxes >= config.frames  # read in every sampled frame
    _check(findings.mask_HW, glyphs, config)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_masked_clip_reads_clean_with_the_same_settings(layout):
    """What ingest ships when the detector finds text: its mask (boxes grown by ``margin``)
    zeroed in every frame. Read again with the same settings, on the frames ingest read and on
    twice as many, nothing is found: a box then would be text, or the edge of one, that the
    mask left."""
    from dataclasses import replace

    frames = _background()
    words = [_word("DOE JANE", (20, 24)), _word("MRN 4471023", (30, 62), 10),
             _word("12/03/1961", (24, 100))]
    for word, level in zip(words, (230, 200, 90), strict=True):
        frames[:, word] = level
    config = TextDetectorConfig(**LAYOUTS[layout])
    findings = find_text(frames, config)
    for word in words:
        assert findings.mask_HW[word].mean() >= 0.95
    frames[:, findings.mask_HW] = 0
    assert find_text(frames, config).boxes == 0
    assert find_text(frames, replace(config, frames=2 * config.frames)).boxes == 0


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_each_sampled_frame_maps_back_to_its_own_words(n):
    """Word k is in sampled frame k only, each at its own place: every one is masked, one box
    each, and nothing else (a mosaic of 1 x 1 up to 2 x 3 or 3 x 2 tiles)."""
    frames = _background()
    picked = sample_indices(len(frames), n)
    glyphs = []
    for k, t in enumerate(picked):
        word = _word(f"ID {4471 + k}", (12 + 60 * (k % 2), 16 + 20 * (k // 2)))
        frames[t, word] = 230
        glyphs.append(word)
    # the sampled frames' mosaic only: the composite and the follow-up reads find the same
    # words again, and a part of one may count as a box of its own
    config = TextDetectorConfig(frames=n, detector_side=0, mosaic=True, crop_to_content=True,
                                composites=False, track_step=0, dark_composite=False,
                                line_extend=0)
    findings = find_text(frames, config)
    assert findings.boxes == n
    everything = np.zeros_like(findings.mask_HW)
    for word in glyphs:
        assert findings.mask_HW[word].mean() >= 0.95
        everything |= _grown_box(word, _allowance(word, config.margin))
    assert not (findings.mask_HW & ~everything).any()


@pytest.mark.parametrize("edge", ["right", "bottom"])
def test_a_word_at_a_tile_edge_stays_in_its_tile(edge):
    """A word touching the frame's edge in the first sampled frame of six: its neighbour in the
    mosaic (the next tile to the right or below) is text-free, so one box, on the word."""
    frames = _background()
    if edge == "right":
        glyphs = _word("DOE JANE", (0, 70))
        cols = np.flatnonzero(glyphs.any(axis=0))
        glyphs = np.roll(glyphs, SIZE - 1 - cols[-1], axis=1)  # last glyph column at x = 143
    else:
        glyphs = _word("DOE JANE", (40, 0))
        rows = np.flatnonzero(glyphs.any(axis=1))
        glyphs = np.roll(glyphs, SIZE - 1 - rows[-1], axis=0)  # last glyph row at y = 143
    frames[0, glyphs] = 230
    config = TextDetectorConfig(frames=6, detector_side=0, mosaic=True, line_extend=0)
    assert mosaic_grid(6, (SIZE * 4, SIZE * 4)) in ((2, 3), (3, 2))
    findings = find_text(frames, config)
    assert findings.boxes == 1
    _check(findings.mask_HW, glyphs, config)
    # a box leaking into the neighbour would show on the opposite edge of the output frame
    opposite = findings.mask_HW[:, :8] if edge == "right" else findings.mask_HW[:8, :]
    assert not opposite.any()


def test_words_facing_each_other_across_a_tile_boundary_stay_two():
    """Sampled frame 0 has a word ending at its right edge, frame 1 one starting at its left
    edge, on the same rows: side by side in the mosaic they would read as one line (one box,
    carried back as a single word) if the gutter did not keep them apart."""
    frames = _background()
    right = _word("DOE JANE", (0, 70))
    right = np.roll(right, SIZE - 1 - np.flatnonzero(right.any(axis=0))[-1], axis=1)
    left = _word("MRN 4471", (0, 70))
    left = np.roll(left, -np.flatnonzero(left.any(axis=0))[0], axis=1)
    picked = sample_indices(len(frames), 2)
    frames[picked[0], right] = 230
    frames[picked[1], left] = 230
    # (boxes not grown along their line: the gap between the words is what is checked)
    config = TextDetectorConfig(frames=2, detector_side=0, mosaic=True, line_extend=0)
    assert mosaic_grid(2, (SIZE * 4, SIZE * 4)) == (1, 2)  # side by side
    findings = find_text(frames, config)
    assert findings.boxes == 2
    for word in (left, right):
        assert findings.mask_HW[word].mean() >= 0.95
    middle = np.zeros_like(findings.mask_HW)
    middle[:, 60:84] = True  # between the words, in output pixels
    assert not (findings.mask_HW & middle).any()


def test_black_frames_are_not_read():
    findings = find_text(np.zeros((8, SIZE, SIZE), dtype=np.uint8),
                         TextDetectorConfig(crop_to_content=True))
    assert findings.boxes == 0 and not findings.mask_HW.any()


def test_mosaic_grid_is_the_fewest_pixels():
    assert mosaic_grid(1, (576, 576)) == (1, 1)
    assert mosaic_grid(2, (576, 576)) == (1, 2)  # a row, not a 2 x 2 with a hole
    assert mosaic_grid(3, (576, 576)) == (1, 3)
    assert mosaic_grid(6, (576, 576)) in ((2, 3), (3, 2))
    rows, cols = mosaic_grid(24, (576, 576))
    assert rows * cols >= 24 and max(rows, cols) <= 6
    assert mosaic_grid(2, (100, 1000)) == (2, 1)  # wide tiles stack


@pytest.mark.parametrize("fields, message", [
    (dict(detector_side=700), "multiple of 32"),
    (dict(detector_side=-32), "multiple of 32"),
    (dict(margin=-1), "margin"),
    (dict(upscale=0), "upscale"),
])
def test_bad_detector_settings_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        TextDetectorConfig(**fields)


def test_the_mask_is_the_same_for_the_same_frames():
    frames = _background()
    frames[:, _word("12/03/1961", (20, 90))] = 200
    config = TextDetectorConfig(detector_side=0, mosaic=True, crop_to_content=True)
    first, second = find_text(frames, config), find_text(frames.copy(), config)
    assert first.boxes == second.boxes > 0
    assert np.array_equal(first.mask_HW, second.mask_HW)
