"""Text that moves vertically or slowly, at the output size (`ingest.text_strokes`, the stroke
reads of `ingest.text_detector`): each case planted in none of the sampled frames (0, 14, 29 of
30), with the same clip and the stroke reads off as the control."""

from __future__ import annotations

import numpy as np
import pytest
from test_ingest_text_motion import _clip, _covered, _glyphs

from echocmr.ingest.config import TextDetectorConfig
from echocmr.ingest.text_detector import find_text
from echocmr.ingest.text_strokes import WINDOW, densest_window, stroke_density

# the stroke reads alone beside the sampled frames (the composites, the temporal maximum and the
# motion bands see some of these strings on this dim phantom; on the bench's clips they do not,
# docs/benchmarks.md, "Vertical and slow text")
ALONE = dict(composites=False, dark_composite=False, motion_bands=0, line_reads=False,
             dark_strokes=0)


def _slide(frames, glyphs, yx, shown, velocity, level=235):
    """``glyphs`` from ``yx`` in the frames ``shown``, moving ``velocity`` (dy, dx) output
    pixels a frame (rounded to whole pixels); the frames and every pixel a glyph covers."""
    out, union = frames.copy(), np.zeros(frames.shape[1:], dtype=bool)
    h, w = glyphs.shape
    for i, t in enumerate(shown):
        y, x = (int(round(yx[0] + velocity[0] * i)), int(round(yx[1] + velocity[1] * i)))
        where = np.zeros(frames.shape[1:], dtype=bool)
        where[y:y + h, x:x + w] = glyphs
        out[t][where] = level
        union |= where
    return out, union


CASES = {  # name -> (glyph text, size, origin, shown frames, velocity)
    "credits up 4 px a frame": ("SMITH JOHN", 10, (110, 20), range(2, 13), (-4, 0)),
    "down 6 px a frame": ("DOB 19650304", 10, (20, 10), range(16, 28), (6, 0)),
    "sideways 0.4 px a frame": ("MRN 4711023", 10, (70, 20), range(16, 29), (0, 0.4)),
    "up 0.5 px a frame": ("SMITH JOHN", 10, (90, 30), range(1, 14), (-0.5, 0)),
    "steps of 2 px every 4 frames": ("MRN 4711023", 10, (60, 15), range(16, 29), None),
}


def _case(name):
    text, size, yx, shown, velocity = CASES[name]
    if velocity is None:  # 2 pixels to the right every 4 frames
        frames, union = _clip(), np.zeros((144, 144), dtype=bool)
        for i, t in enumerate(shown):
            frames, where = _slide(frames, _glyphs(text, size), (yx[0], yx[1] + 2 * (i // 4)),
                                   [t], (0, 0))
            union |= where
        return frames, union, shown
    frames, union = _slide(_clip(), _glyphs(text, size), yx, shown, velocity)
    return frames, union, shown


@pytest.mark.parametrize("name", list(CASES))
def test_vertical_and_slow_text_is_masked_by_the_stroke_reads(name):
    frames, where, _ = _case(name)
    # the control: in none of the sampled frames, nothing else reads it
    assert _covered(find_text(frames, TextDetectorConfig(**ALONE, stroke_reads=0)), where) < 0.9
    alone = find_text(frames, TextDetectorConfig(**ALONE))
    assert alone.boxes >= 1 and _covered(alone, where) >= 0.99
    assert _covered(find_text(frames), where) >= 0.99  # and with the defaults


@pytest.mark.parametrize("name", list(CASES))
def test_the_densest_window_lies_on_the_text_in_a_frame_that_shows_it(name):
    frames, where, shown = _case(name)
    proposal = densest_window(stroke_density(frames))
    assert proposal is not None and proposal.frame in shown
    assert where[proposal.rows, proposal.cols].any()


def test_a_window_already_masked_is_not_proposed_again():
    frames, where, _ = _case("credits up 4 px a frame")
    assert densest_window(stroke_density(frames), excluded_HW=np.ones_like(where)) is None
    first = densest_window(stroke_density(frames))
    excluded = np.zeros_like(where)
    excluded[first.rows.start - WINDOW[0]:first.rows.stop + WINDOW[0]] = True
    second = densest_window(stroke_density(frames), excluded_HW=excluded)
    assert second is None or second.rows.start >= first.rows.stop or \
        second.rows.stop <= first.rows.start


def test_still_text_proposes_nothing_and_a_clean_clip_reads_nothing():
    """Text in every frame does not stray from its temporal median; where the phantom's tissue
    gives a window of strokes (seeds 2 and 3 do), its read finds no text."""
    still, _ = _slide(_clip(seed=1), _glyphs("SMITH JOHN"), (60, 20), range(30), (0, 0))
    assert densest_window(stroke_density(still)) is None
    proposed = 0
    for seed in (1, 2, 3):
        proposed += densest_window(stroke_density(_clip(seed=seed))) is not None
        assert find_text(_clip(seed=seed), TextDetectorConfig(**ALONE)).boxes == 0
    assert proposed >= 1  # the read is tried, not skipped

