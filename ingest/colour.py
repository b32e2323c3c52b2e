"""Colour to grey, and the chroma map that tells colour Doppler from grey echo.

Grey echo is luma: RGB becomes BT.601 luma in integer arithmetic (`rgb_to_luma`). Chroma is kept
only as a per-pixel map (the second largest chroma magnitude over sampled frames, `over_frames`:
one odd frame cannot make a pixel coloured), which `ingest.preprocess` compares with the sector
to reject colour Doppler.
"""

from __future__ import annotations

import numpy as np

CHROMA_FRAMES = 32  # frames sampled for the chroma map


def upsample(small_HW: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a reduced-size map to ``rows`` x ``cols``."""
    ry = -(-rows // small_HW.shape[0])
    rx = -(-cols // small_HW.shape[1])
    return np.repeat(np.repeat(small_HW, ry, axis=0), rx, axis=1)[:rows, :cols]


def rgb_to_luma(rgb_THWC: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB in integer arithmetic (weights sum to 2^16), a frame at a time
    (a frame's uint32 temporaries stay in cache; 16 frames' did not)."""
    out = np.empty(rgb_THWC.shape[:-1], dtype=np.uint8)
    y = np.empty(rgb_THWC.shape[1:-1], dtype=np.uint32)
    term = np.empty_like(y)
    for frame, dest in zip(rgb_THWC, out, strict=True):
        np.multiply(frame[..., 0], 19595, out=y, dtype=np.uint32)
        y += np.multiply(frame[..., 1], 38470, out=term, dtype=np.uint32)
        y += np.multiply(frame[..., 2], 7471, out=term, dtype=np.uint32)
        y += 32768
        y >>= 16
        dest[...] = y
    return out


def sample_frames(n: int, k: int = CHROMA_FRAMES) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def over_frames(chroma_frames) -> np.ndarray:
    """The second largest value over frames (the largest when there is one frame): a pixel counts
    as coloured only when it is coloured in at least two sampled frames, so one corrupt or odd
    frame cannot make a clip colour Doppler (colour flow is in every other frame at least).

    ``chroma_frames`` is an iterable of 2D maps (one at a time: the chroma functions compute
    each frame's map in cache rather than a float32 stack of all of them). The running pair
    (largest, second largest) is exactly ``np.partition(stack, n - 2, axis=0)[n - 2]``.
    """
    first = second = None
    for chroma_HW in chroma_frames:
        if first is None:
            first = chroma_HW.copy()
        elif second is None:
            second = np.minimum(first, chroma_HW)
            np.maximum(first, chroma_HW, out=first)
        else:
            np.maximum(second, np.minimum(first, chroma_HW), out=second)
            np.maximum(first, chroma_HW, out=first)
    if first is None:
        raise ValueError("no frames to take the chroma of")
    return first if second is None else second


def chroma_ybr(ybr_THWC: np.ndarray) -> np.ndarray:
    """Second largest (`over_frames`) over sampled frames of sqrt((Cb-128)^2 + (Cr-128)^2)."""
    def per_frame():
        for i in sample_frames(len(ybr_THWC)):  # a frame at a time: no copy of the sample
            frame = ybr_THWC[i]
            cb = frame[..., 1].astype(np.float32) - 128.0
            cr = frame[..., 2].astype(np.float32) - 128.0
            yield np.sqrt(cb * cb + cr * cr)

    return over_frames(per_frame())


def chroma_rgb(rgb_THWC: np.ndarray) -> np.ndarray:
    """The same chroma magnitude for RGB input (BT.601 full-range Cb/Cr)."""
    def per_frame():
        for i in sample_frames(len(rgb_THWC)):  # a frame at a time: no copy of the sample
            f = rgb_THWC[i].astype(np.float32)
            r, g, b = f[..., 0], f[..., 1], f[..., 2]
            cb = -0.168736 * r - 0.331264 * g + 0.5 * b
            cr = 0.5 * r - 0.418688 * g - 0.081312 * b
            yield np.sqrt(cb * cb + cr * cr)

    return over_frames(per_frame())
