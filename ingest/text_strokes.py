"""Where a clip shows bright thin strokes that its other frames do not hold, and the frame that
shows them most: the text detector's view of text that moves vertically or slowly
(`ingest.text_detector` reads the line there, then follows it frame by frame).

Text that moves up or down through the fan (credits), or sideways or vertically at less than
~1 output pixel a frame (or in steps every few frames), in none of the frames the detector
samples, gives it nothing to read: the transient composite (`ingest.text_composite`) smears it,
and the motion bands (`ingest.text_motion`) look for a pattern that slides along rows by 2-8
pixels in 2 frames. Correlating along columns, or frames 6-8 apart, was measured first and does
not separate text from tissue on the bench's clips (tissue moves up and down and slowly too, and
decorrelates between frames far apart; docs/benchmarks.md, "Vertical and slow text"). What
does, whatever the motion: in the frames that show it, text is a cluster of thin strokes far
brighter than the pixel's temporal median. Per frame, a pixel is a **transient stroke** when it
is at least ``min_residual`` grey levels above its temporal median and at least ``min_tophat``
above the grey opening of its frame (a white top-hat, 5 x 5: a stroke narrower than 5 pixels);
the share of such pixels in a window of `WINDOW` (a line of text: 10 rows x 40 columns) is the
window's density. The densest window of the clip (in any frame, away from what is already
masked) is a proposal when its density is at least ``min_density``: on the bench, every string
of `bench.bench_text_detector.sliding_set` has its densest window on its glyphs in a frame that
shows it (density 0.29-0.58), and the 54 clean clips' densest windows reach 0.25.

This is a proposal, not a verdict: the detector reads the proposal's line (its rows, grown,
across the content) in its frame, and only what it reads as text is masked; a proposal in a
clean clip costs one small read and no pixels.

Cost: a median (shared), a 5 x 5 top-hat per frame and a box filter (~10 ms for 40 frames of
144 x 144), then one read per proposal (at most ``max_proposals``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW = (10, 40)  # rows x columns: the window the stroke density is taken over (a line of text)
TOPHAT = 5  # output pixels: strokes narrower than this are what the top-hat keeps


@dataclass(frozen=True)
class Proposal:
    """A window of transient bright strokes, and the frame that shows it most."""

    frame: int
    rows: slice  # the window's rows
    cols: slice  # the window's columns
    density: float  # the share of transient stroke pixels in the window


def stroke_density(frames_THW: np.ndarray, median_HW: np.ndarray | None = None,
                   min_residual: int = 40, min_tophat: int = 60) -> np.ndarray:
    """``float32[T, H, W]``: per frame, the share of transient stroke pixels in the `WINDOW`
    centred on each pixel (a stroke: ``min_residual`` above the temporal median, and
    ``min_tophat`` above the frame's 5 x 5 grey opening)."""
    import cv2

    if median_HW is None:
        median_HW = np.median(frames_THW, axis=0)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (TOPHAT, TOPHAT))
    median = np.asarray(median_HW).astype(np.int16)
    out = np.empty(frames_THW.shape, dtype=np.float32)
    for t, frame in enumerate(frames_THW):
        frame = np.ascontiguousarray(frame)
        strokes = ((frame.astype(np.int16) - median >= min_residual)
                   & (cv2.morphologyEx(frame, cv2.MORPH_TOPHAT, kernel) >= min_tophat))
        out[t] = cv2.boxFilter(strokes.astype(np.float32), -1, WINDOW[::-1], normalize=True,
                               borderType=cv2.BORDER_CONSTANT)
    return out


def densest_window(density_THW: np.ndarray, excluded_HW: np.ndarray | None = None,
                   min_density: float = 0.2) -> Proposal | None:
    """The window of `stroke_density`'s map with the most transient strokes in any frame,
    centred on no pixel of ``excluded_HW`` (what is masked already, windows proposed before),
    or None when none reaches ``min_density``."""
    best_HW = density_THW.max(axis=0)
    if excluded_HW is not None:
        best_HW = np.where(excluded_HW, 0, best_HW)
    y, x = np.unravel_index(int(best_HW.argmax()), best_HW.shape)
    if best_HW[y, x] < min_density:
        return None
    height, width = best_HW.shape
    half_h, half_w = WINDOW[0] // 2, WINDOW[1] // 2
    return Proposal(int(density_THW[:, y, x].argmax()),
                    slice(max(int(y) - half_h, 0), min(int(y) + half_h, height)),
                    slice(max(int(x) - half_w, 0), min(int(x) + half_w, width)),
                    float(best_HW[y, x]))
