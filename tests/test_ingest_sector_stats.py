"""The fast per-clip statistics of `ingest.sector` and `ingest.colour` against plain numpy.

`find_sector` and the chroma map used to be written as float32 copies of every sampled frame
reduced with numpy; the fast versions must give the same values bit for bit (so sectors, masks
and shards do not change), including at ties with the thresholds. Each test builds the plain
numpy reference next to the fast function, on random clips with constructed ties.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from echocmr.ingest.colour import chroma_rgb, chroma_ybr, over_frames, rgb_to_luma
from echocmr.ingest.config import SectorConfig
from echocmr.ingest.sector import _dilate, _erode, changing_overlay_mask, temporal_mean_std


def _tied_clip(rng: np.random.Generator, n: int, h: int = 24, w: int = 40) -> np.ndarray:
    """Random frames with columns whose std sits exactly on a threshold (0.5, 1, 4) or near it."""
    x = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    x[:, :, 0] = 200  # constant: std 0
    x[:, :, 1] = 100 + np.arange(n)[:, None] % 2  # alternating by 1: std 0.5 (n even)
    x[:, :, 2] = 100 + 2 * (np.arange(n)[:, None] % 2)  # alternating by 2: std 1 (n even)
    x[:, :, 3] = 100 + 8 * (np.arange(n)[:, None] % 2)  # std 4 (n even)
    x[:, :, 4] = 63 + rng.integers(0, 3, (n, h))  # means straddling 64 (float32 binade)
    x[: n // 2, :, 5] = 16  # a mean at 16 (the overlay level floor) and off it
    x[n // 2:, :, 5] = 15 + (n % 2)
    return x


@pytest.mark.parametrize("n", [2, 3, 17, 40, 63, 64, 70])
def test_temporal_mean_std_is_numpys_float32_bit_for_bit(n):
    rng = np.random.default_rng(n)
    frames = _tied_clip(rng, n)
    mean, std = temporal_mean_std(frames)
    reference = frames.astype(np.float32)
    assert mean.dtype == std.dtype == np.float32
    assert np.array_equal(mean, reference.mean(axis=0))
    assert np.array_equal(std, reference.std(axis=0))
    # and so every threshold comparison of find_sector comes out the same
    for limit in (0.5, 1.0, 4.0):
        assert np.array_equal(std <= limit, reference.std(axis=0) <= limit)


def test_box_morphology_matches_scipy_binary_morphology():
    rng = np.random.default_rng(3)
    s3 = np.ones((3, 3), dtype=bool)
    for density in (0.05, 0.5, 0.95):
        mask = rng.random((37, 53)) < density
        mask[0, :] = True  # touching the border: erosion must treat outside as unset
        assert np.array_equal(_dilate(mask, (7, 7)), ndimage.binary_dilation(mask, s3, iterations=3))
        assert np.array_equal(_dilate(_erode(mask, (5, 5)), (5, 5)),
                              ndimage.binary_opening(mask, s3, iterations=2))
        assert np.array_equal(_erode(mask, (3, 3)), ndimage.binary_erosion(mask, s3))
        for size in ((1, 9), (7, 1)):
            box = np.ones(size, dtype=bool)
            assert np.array_equal(_erode(_dilate(mask, size), size), ndimage.binary_closing(mask, box))
        assert np.array_equal(_dilate(mask, (3, 3)), ndimage.binary_dilation(mask, s3))
        # a strided view (a crop of a larger mask) works the same
        assert np.array_equal(_dilate(mask[3:30, 5:40], (7, 7)),
                              ndimage.binary_dilation(mask[3:30, 5:40], s3, iterations=3))


def _changing_reference(frames_THW, config, lossy, inside_HW):
    """The stroke rule of `changing_overlay_mask` written plainly: int16, a frame at a time."""
    _, h, w = frames_THW.shape
    r, contrast = 2, 32
    count = np.zeros((h, w), dtype=np.int32)
    s1 = np.zeros((h, w))
    s2 = np.zeros((h, w))
    for frame in frames_THW:
        v = frame.astype(np.int16)
        padded = np.pad(np.where(inside_HW, v, 255), r, mode="edge")

        def darker(dy, dx, padded=padded, v=v):
            out = np.zeros((h, w), dtype=bool)
            for k in range(1, r + 1):
                out |= padded[r + k * dy:r + k * dy + h, r + k * dx:r + k * dx + w] <= v - contrast
            return out

        stroke = np.zeros((h, w), dtype=bool)
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            stroke |= darker(dy, dx) & darker(-dy, -dx)
        stroke &= v >= config.overlay_min_level + contrast
        count += stroke
        s1 += np.where(stroke, v, 0)
        s2 += np.where(stroke, v, 0).astype(np.float64) ** 2
    n = np.maximum(count, 1)
    std = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))
    limit = config.overlay_codec_noise_std if lossy else config.overlay_max_std
    t = len(frames_THW)
    found = (count >= max(2, int(np.ceil(0.2 * t)))) & (count <= 0.9 * t) & (std <= limit)
    labels, _ = ndimage.label(found, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return sizes[labels] >= 4


@pytest.mark.parametrize("seed", range(6))
def test_changing_overlay_mask_matches_the_plain_rule(seed):
    """Digits that come and go (exactly one level, or with codec noise) on random tissue, inside
    sector masks that touch the frame's edges or not, with holes; dark frames below the contrast."""
    rng = np.random.default_rng(seed)
    t, h, w = 30, 40, 56
    frames = (rng.random((t, h, w)) * rng.choice([30, 120, 255])).astype(np.uint8)
    frames[:, 10:13, 10:30] = 5
    frames[:, 26:29, 8:26] = 5
    for i in range(0, t, 3):  # thin strokes drawn in every third frame: bright, dim, too dim
        frames[i, 11, 12:28] = 180 + (rng.integers(0, 3) if seed % 2 else 0)
        frames[i, 27, 10:17] = 40  # a stroke when overlay_min_level is 0, not at 16
        frames[i, 27, 18:24] = 20  # never: less than the contrast above black
    inside = np.zeros((h, w), dtype=bool)
    y0, x0 = (0, 0) if seed % 3 == 0 else (4, 6)
    inside[y0:h - 3, x0:w - 2] = True
    inside[20:24, 30:40] = False  # a masked overlay box: a hole
    for level in (16, 0):
        config = SectorConfig(overlay_min_level=level)
        for lossy in (False, True):
            got = changing_overlay_mask(frames, config, lossy=lossy, inside_HW=inside)
            assert np.array_equal(got, _changing_reference(frames, config, lossy, inside))
            assert got[11, 14:26].all() and not got[27, 18:24].any()
            assert got[27, 11:16].all() == (level == 0)
    assert not changing_overlay_mask(frames, SectorConfig(), inside_HW=np.zeros((h, w), bool)).any()


@pytest.mark.parametrize("n", [1, 2, 3, 32, 33])
def test_chroma_maps_match_the_stacked_float32_formulas(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, (n, 20, 30, 3), dtype=np.uint8)
    x[:, :4] = 128  # grey: equal chroma in every frame (ties for the top-2)
    x[-1, 4:6] = x[0, 4:6]
    picks = np.unique(np.linspace(0, n - 1, min(n, 32)).round().astype(int))

    def second_largest(stack):
        return stack.max(axis=0) if len(stack) < 2 else np.partition(stack, len(stack) - 2, axis=0)[-2]

    ybr = x[picks].astype(np.float32)
    cb, cr = ybr[..., 1] - 128.0, ybr[..., 2] - 128.0
    assert np.array_equal(chroma_ybr(x), second_largest(np.sqrt(cb * cb + cr * cr)))
    r, g, b = ybr[..., 0], ybr[..., 1], ybr[..., 2]
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    assert np.array_equal(chroma_rgb(x), second_largest(np.sqrt(cb * cb + cr * cr)))
    wide = x.astype(np.uint32)
    luma = (wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 32768) >> 16
    assert np.array_equal(rgb_to_luma(x), luma.astype(np.uint8))
    stack = rng.random((n, 5, 6)).astype(np.float32)
    assert np.array_equal(over_frames(stack), second_largest(stack))
