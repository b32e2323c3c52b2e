"""Where text moves across the clip: rows that hold a translating transient pattern, and the
frame that shows it most (`ingest.text_detector` reads that frame there).

A ticker, or any string that slides along a line, is in none of the detector's sampled frames
when it shows between them, and its smear on the transient composite (`ingest.text_composite`)
often gives the detector no box to follow. What gives it away costs no model: its pixels are
bright against their temporal median, and the same bright pattern appears a few pixels to the
side ``lag`` frames later. Per row, the cross-correlation (along the row, summed over every pair
of frames ``lag`` apart) of each frame's bright residual (the frame above its per-pixel temporal
median) peaks at a shift of ``min_shift`` to ``max_shift`` pixels, well above its value at no
shift; tissue that moves in place, or not at all, peaks at no shift. Rows where the peak is
``min_ratio`` times the value at no shift (and the residual is not noise, ``min_energy``) make a
band; the frame whose residual in the band is largest is the one to read.

This is a proposal, not a verdict: the detector reads the band in that frame and only what it
reads as text is masked (then followed frame by frame, `TextDetectorConfig.track_step`), so a
band of moving tissue costs one small read and no pixels. What it does not see: text moving
vertically (the correlation is along rows), text moving less than ``min_shift`` pixels in
``lag`` frames (slower than ~1 output pixel a frame: the sampled frames and the composite see
that), dark moving text (only bright residuals are correlated).

Cost: one FFT of ``T`` x ``H`` rows of ``2 W`` samples and a product per frame pair (~10-30 ms for
40 frames of 144 x 144), then one detector read of each band proposed (at most ``max_bands``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAG = 2  # frames between the two frames of each pair correlated
MIN_SHIFT = 2  # output pixels: a pattern moving less than this in LAG frames is not "moving"
MAX_SHIFT = 8  # output pixels in LAG frames: the fastest motion looked for (4 px a frame)
ROWS_SMOOTH = 5  # rows the correlation is averaged over (a line of text is 6 or more high)


@dataclass(frozen=True)
class Band:
    """A band of rows with moving bright structure, and the frame to read it in."""

    rows: slice
    frame: int
    ratio: float  # the correlation's peak at a shift over its value at no shift


def moving_bands(frames_THW: np.ndarray, min_ratio: float = 1.3, min_energy: float = 20.0,
                 max_bands: int = 2, pad: int = 6,
                 median_HW: np.ndarray | None = None) -> list[Band]:
    """The bands of rows of ``uint8[T, H, W]`` frames whose bright transient structure moves
    along the rows (strongest first, at most ``max_bands``), each grown by ``pad`` rows;
    ``median_HW``: the frames' per-pixel temporal median, when the caller has it already."""
    from scipy import fft
    from scipy.ndimage import uniform_filter1d

    n_frames, height, width = frames_THW.shape
    if n_frames <= LAG:
        return []
    if median_HW is None:
        median_HW = np.median(frames_THW, axis=0)
    residual = np.clip(frames_THW.astype(np.float32) - median_HW.astype(np.float32), 0, None)
    size = 2 * width  # zero-padded: no wrap-around
    spectrum = fft.rfft(residual, n=size, axis=2)  # float32 in, complex64 out
    cross = np.einsum("thf,thf->hf", spectrum[LAG:], np.conj(spectrum[:-LAG]))
    corr = uniform_filter1d(fft.irfft(cross, n=size, axis=1), ROWS_SMOOTH, axis=0)
    corr /= (n_frames - LAG) * width  # the mean product of a pixel pair
    shifted = np.concatenate([corr[:, MIN_SHIFT:MAX_SHIFT + 1],
                              corr[:, size - MAX_SHIFT:size - MIN_SHIFT + 1]], axis=1).max(axis=1)
    still = np.maximum(corr[:, [0, 1, size - 1]].max(axis=1), 1e-6)
    ratio = shifted / still
    hot = (ratio >= min_ratio) & (shifted >= min_energy)
    bands = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hot.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        rows = slice(max(int(start) - pad, 0), min(int(stop) + pad, height))
        energy_T = residual[:, rows].sum(axis=(1, 2))
        bands.append(Band(rows, int(energy_T.argmax()), float(ratio[start:stop].max())))
    bands.sort(key=lambda b: -b.ratio)
    return bands[:max_bands]
