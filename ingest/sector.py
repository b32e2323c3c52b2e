"""Find the ultrasound sector of a clip and what inside it is burned-in overlay.

Echo exports are screen captures: the scan sector sits among text (patient data, settings, depth
scale), an ECG trace, markers and logos. A network must see only the sector, or it learns the
vendor's screen layout. Two sources tell us where the sector is:

1. ``SequenceOfUltrasoundRegions`` (when it fits inside the image): the largest 2D region is the
   crop box. Some exports copy the regions of a larger original into a downscaled file; a box
   that does not fit the image is ignored rather than clipped.
2. The pixels: inside the box, tissue moves (speckle changes every frame) while overlays do not.
   Pixels whose temporal std exceeds ``motion_threshold`` are opened (drops thin moving traces
   such as an ECG sweep and isolated noise) and closed; the largest connected component's convex
   hull is the sector (a fan, a trapezoid or a rectangle are all convex).

Strongly coloured pixels (ECG traces, cursors and logos on colour machines) can be excluded from
the motion map so that they never join the sector.

A clip in which nothing moves (a frozen or paused loop, a still screen saved as a cine) has no
sector to find: `find_sector` raises `RejectedInput("no_sector")` rather than keep the frame
uncropped, because everything outside a located sector (the header band with the patient's name,
ID and birth date) must never reach a shard. The region sequence alone gives a crop box, not a
sector: the sector inside it must be confirmed by motion.

Inside the hull, burned-in overlay (text, focus/depth markers, the orientation dot, a frame
counter's static parts) is masked as the bounding box of each word (`overlay_boxes`: blanking
the glyph pixels alone leaves legible black letters in bright tissue). A pixel
is overlay when its temporal mean is at least ``overlay_min_level`` and it is *still*:

* its temporal std is at most ``overlay_max_std`` (lossless data: text is exactly constant), or
* in a clip that was lossy-compressed (`DicomClip.lossy`: a lossy transfer syntax or
  LossyImageCompression "01"), its temporal std is at most ``overlay_codec_noise_std`` (JPEG adds
  2-3 grey levels of noise to constant text next to moving speckle) **and** it lies in a flat patch:
  at least two of its 8 neighbours are still too and have a temporal mean within
  ``overlay_flat_delta`` grey levels of its own. Glyph strokes are runs of one level; speckle,
  even where it barely moves, is granular. This is the temporal-plus-spatial structure a raw std
  cut misses.

Dim text (grey ~40) is caught because the level floor is low (16): dark still pixels that are
not text cost nothing to mask. Text that changes every frame (a frame counter, a clock) is not
still; `changing_overlay_mask` finds it as thin strokes that come and go at one grey level
(``mask_changing_overlays``). What neither catches the text detector (`ingest.text_detector`)
looks for in the output frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echocmr.ingest.config import SectorConfig
from echocmr.ingest.dicom_geometry import UltrasoundRegion
from echocmr.ingest.reasons import RejectedInput

_STRUCT3 = np.ones((3, 3), dtype=bool)


@dataclass
class Sector:
    """Where the sector is: a crop box of the frame and a mask inside it."""

    box: tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in frame pixels
    mask_HW: np.ndarray  # bool, box-sized: True = keep (in the sector, not an overlay)
    spacing_mm: tuple[float, float] | None  # (row, col) mm per source pixel, when known
    source: str  # "region+pixels" or "pixels": how the sector was found

    @property
    def shape(self) -> tuple[int, int]:
        return self.box[1] - self.box[0], self.box[3] - self.box[2]


def region_box(regions: list[UltrasoundRegion], height: int, width: int) -> UltrasoundRegion | None:
    """The largest 2D region that lies inside a ``height`` x ``width`` image, if any."""
    inside = [
        r for r in regions
        if r.spatial_format == 1 and 0 <= r.x0 < r.x1 < width and 0 <= r.y0 < r.y1 < height
    ]
    return max(inside, key=lambda r: (r.area, -r.y0, -r.x0), default=None)


def find_sector(
    frames_THW: np.ndarray,
    regions: list[UltrasoundRegion] | None = None,
    config: SectorConfig | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    exclude_HW: np.ndarray | None = None,
    lossy: bool = False,
) -> Sector:
    """Locate the sector of ``uint8[T, H, W]`` frames (see the module docstring).

    ``exclude_HW`` marks pixels that must not count as moving tissue; preprocessing passes the
    strongly coloured ones, so a colour ECG trace touching the fan cannot join the sector.
    ``lossy`` turns on the codec-noise rule for overlays. Raises `RejectedInput("no_sector")` when no moving sector can be found.
    """
    from scipy import ndimage

    config = config or SectorConfig()
    _, height, width = frames_THW.shape
    box = (0, height, 0, width)
    spacing = pixel_spacing_mm
    source = "none"
    region = region_box(regions or [], height, width) if config.use_region_sequence else None
    if region is not None:
        box = (region.y0, region.y1 + 1, region.x0, region.x1 + 1)
        if region.delta_x_mm and region.delta_y_mm:
            spacing = (region.delta_y_mm, region.delta_x_mm)
        source = "region"
    y0, y1, x0, x1 = box
    crop = frames_THW[:, y0:y1, x0:x1]
    full = np.ones(crop.shape[1:], dtype=bool)

    picks = np.unique(np.linspace(0, len(crop) - 1, min(len(crop), config.stats_frames)).round())
    sample = crop[picks.astype(int)]
    mean_HW, std_HW = temporal_mean_std(sample)

    # Smoothing joins speckle into one blob (dark cavities barely move) and lets isolated
    # flicker fall below the threshold; opening (two 3x3 erosions, then two dilations) then
    # removes thin moving traces (ECG sweeps).
    moving = ndimage.uniform_filter(std_HW, size=5, mode="constant") > config.motion_threshold
    if exclude_HW is not None:
        excluded = exclude_HW[y0:y1, x0:x1]
        moving &= ~_dilate(excluded, (7, 7))  # a 3x3 dilation, three times
    moving = _dilate(_erode(moving, (5, 5)), (5, 5))
    labels, n = ndimage.label(moving, structure=_STRUCT3)
    where = "inside the region sequence's box" if source == "region" else "in the frame"
    if n == 0:
        raise RejectedInput("no_sector", f"nothing moves {where} (a frozen or still clip): the "
                            "sector cannot be located, and an uncropped frame may show text")
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    fraction = sizes[biggest - 1] / full.size
    if fraction < config.min_sector_fraction:
        raise RejectedInput("no_sector", f"the largest moving area {where} is {fraction:.1%} of "
                            f"it (< sector.min_sector_fraction {config.min_sector_fraction:.0%})")

    mask = convex_hull_mask(labels == biggest)
    if config.mask_static_overlays:
        sector_pixels = int(mask.sum())
        overlay = mask & overlay_mask(std_HW, mean_HW, config, lossy=lossy)
        if overlay.any():
            mask &= ~overlay_boxes(overlay, sector_pixels)
        if config.mask_changing_overlays:
            # Grouped into words on their own, among what is left: a counter's boxes must not
            # merge with still pixels (a marker, a still wall) into one large box.
            changing = mask & changing_overlay_mask(sample, config, lossy=lossy, inside_HW=mask)
            if changing.any():
                mask &= ~overlay_boxes(changing, sector_pixels)
    source = "region+pixels" if source == "region" else "pixels"

    kept = grown_bbox(mask, 0)
    if kept is None:
        raise RejectedInput("no_sector", "the whole moving area is static overlay")
    rows, cols = kept
    tight = (y0 + int(rows.start), y0 + int(rows.stop), x0 + int(cols.start), x0 + int(cols.stop))
    return Sector(box=tight, mask_HW=mask[kept].copy(), spacing_mm=spacing, source=source)


def temporal_mean_std(frames_THW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std over frames of ``uint8[T, H, W]``, as float32 arrays.

    Bit for bit what ``frames_THW.astype(np.float32)`` then ``.mean(axis=0)`` and ``.std(axis=0)``
    give (tests/test_ingest_sector_stats.py), without the float32 copy of every frame (4 bytes a
    pixel a frame; this was a third of `find_sector`'s time). The sum of uint8 values is exact in
    integers, and numpy's float32 sum of them is exact too (below 2**24), so the mean is that sum
    divided once and rounded to float32. The squared deviations from that mean are then added in
    float32 one frame at a time, in frame order: the order numpy's reduction over the first axis
    uses, and an order fixed here rather than left to numpy.
    """
    n, h, w = frames_THW.shape
    total = np.zeros((h, w), dtype=np.uint32)
    for start in range(0, n, 16):  # 16 x 255 fits uint16: sum each chunk narrow, add it wide
        total += frames_THW[start:start + 16].sum(axis=0, dtype=np.uint16)
    mean = (total / n).astype(np.float32)
    squares = np.zeros((h, w), dtype=np.float32)
    deviation = np.empty((h, w), dtype=np.float32)
    for frame in frames_THW:
        np.subtract(frame, mean, out=deviation, dtype=np.float32)
        np.multiply(deviation, deviation, out=deviation)
        squares += deviation
    return mean, np.sqrt((squares / n).astype(np.float32))


def _dilate(mask_HW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary dilation by a ``size`` box (odd sides), as a separable max filter.

    The same pixels as ``ndimage.binary_dilation`` with that box (or with a 3x3 square iterated
    (side - 1) / 2 times) at a third of the cost; nothing outside the image is set.
    """
    from scipy import ndimage

    out = ndimage.maximum_filter(mask_HW.view(np.uint8), size=size, mode="constant", cval=0)
    return out.view(bool)


def _erode(mask_HW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary erosion by a ``size`` box (odd sides), as a separable min filter.

    The same pixels as ``ndimage.binary_erosion`` with that box (or a 3x3 square iterated):
    pixels outside the image count as unset (its default ``border_value=0``), so the border erodes.
    """
    from scipy import ndimage

    out = ndimage.minimum_filter(mask_HW.view(np.uint8), size=size, mode="constant", cval=0)
    return out.view(bool)


def overlay_boxes(overlay_HW: np.ndarray, sector_pixels: int) -> np.ndarray:
    """What to blank for the overlay pixels: the bounding box of each word, not its glyphs.

    Blanking glyph pixels alone leaves their shapes as black holes in bright tissue, which read
    as well as the text did; blanking each letter's box leaves blocky letters. Overlay pixels are
    dilated by two pixels (anti-aliased edges), grouped along rows (pixels up to 8 apart
    horizontally join: letters of a word and words of a line), and each group that looks like
    text (it fills 40 % of its bounding box, or the box is at least twice as wide as high) and
    whose box is at most 30 % of the sector is blanked as that box; anything else (ragged or large
    still tissue, with any word that joins it) is made solid (`solid_overlay`), so a word there
    becomes a bar rather than black letters.
    """
    from scipy import ndimage

    grown = _dilate(overlay_HW, (5, 5))  # a 3x3 dilation, twice
    groups = _dilate(grown, (1, 9))
    labels, _ = ndimage.label(groups, structure=_STRUCT3)
    out = np.zeros_like(grown)
    rest = grown.copy()
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        area = height * width
        members = grown[box] & (labels[box] == i)
        textlike = members.sum() >= 0.4 * area or width >= 2 * height
        if area <= 0.3 * sector_pixels and textlike:
            out[box] = True
            rest[box] &= labels[box] != i
    return out | solid_overlay(rest)


def solid_overlay(overlay_HW: np.ndarray) -> np.ndarray:
    """Overlay pixels made solid: what `overlay_boxes` blanks where a word is part of a large
    still area and cannot be boxed alone.

    Blanking the glyph pixels alone leaves letter-shaped holes that read as well as the letters
    did. Gaps along rows of up to 9 pixels and along columns of up to 7 are closed (the space
    inside and between letters of screen text, not the width of a heart chamber), enclosed holes
    of at most 400 pixels are filled, and what was added grows by one pixel (anti-aliased edges), so
    a word becomes a solid bar.
    """
    from scipy import ndimage

    if not overlay_HW.any():
        return overlay_HW.copy()
    # Pad so that closing does not erode at the border of the box.
    pad = 9
    padded = np.pad(overlay_HW, pad)
    closed = _erode(_dilate(padded, (1, 9)), (1, 9))  # closing along rows, then columns
    closed = _erode(_dilate(closed, (7, 1)), (7, 1))
    closed |= padded
    holes = ndimage.binary_fill_holes(closed) & ~closed
    labels, n = ndimage.label(holes)
    if n:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        closed |= (sizes <= _SOLID_MAX_HOLE)[labels] & holes
    # Grow what closing added by a pixel (the anti-aliased edges of the strokes around it), but
    # not the still pixels themselves: a large ragged still area would lose a rim of tissue.
    closed = padded | _dilate(closed & ~padded, (3, 3))
    return closed[pad:-pad, pad:-pad]


# Changing overlay (`changing_overlay_mask`): a stroke is brighter than both sides by this much
# within this many pixels, in at least this share of the sampled frames (and 2 of them).
_SOLID_MAX_HOLE = 400  # pixels: enclosed holes up to this size are filled (`solid_overlay`)
_STROKE_CONTRAST = 32
_STROKE_REACH = 2
_STROKE_MIN_SHARE = 0.2
_STROKE_MAX_SHARE = 0.9
_STROKE_MIN_PIXELS = 4  # connected pixels (8-neighbours): single flecks of tissue are dropped
_STROKE_CHUNK = 8  # frames compared at once (`_stroke_sums`): small enough to stay in cache


def changing_overlay_mask(frames_THW: np.ndarray, config: SectorConfig, *, lossy: bool = False,
                          inside_HW: np.ndarray | None = None) -> np.ndarray:
    """Pixels of overlay that changes from frame to frame (a frame counter, a clock, a moving
    cursor or ECG sweep): thin strokes drawn at one grey level.

    A pixel is a stroke pixel in a frame when it is at least ``overlay_min_level`` +
    ``_STROKE_CONTRAST`` and, along some direction (row, column or a diagonal), there are pixels
    at least ``_STROKE_CONTRAST`` darker on both sides within ``_STROKE_REACH`` pixels. It is
    changing overlay when it is a stroke pixel in at least ``_STROKE_MIN_SHARE`` of the frames
    (2 at least) but not in more than ``_STROKE_MAX_SHARE`` of them (it comes and goes) and, in those frames, always at the same level: the std of its level over them
    is at most ``overlay_max_std`` (``overlay_codec_noise_std`` in a lossy clip). Glyphs are
    drawn in one colour, so a digit that comes and goes returns at exactly its level; bright
    tissue edges pass the stroke test too, but at a level that changes with the heart. Only pixels
    of ``inside_HW`` (the sector) count as the darker sides, so the narrow tip of a fan between
    its black edges is not a stroke. Groups of
    fewer than ``_STROKE_MIN_PIXELS`` such pixels are dropped (flecks of tissue that pass by chance).

    Only a pixel within ``_STROKE_REACH`` of ``inside_HW`` can have darker sides, so the work is
    done on the bounding box of ``inside_HW`` grown by twice the reach (those pixels and their
    sides); the rest of the frame is known to hold none.
    """
    from scipy import ndimage

    t, h, w = frames_THW.shape
    found = np.zeros((h, w), dtype=bool)
    window = (slice(0, h), slice(0, w))
    if inside_HW is not None:
        window = grown_bbox(inside_HW, 2 * _STROKE_REACH)
        if window is None:
            return found
    inside = None if inside_HW is None else inside_HW[window]
    count, total, squares = _stroke_sums(frames_THW[:, window[0], window[1]],
                                         config.overlay_min_level, inside)
    n = np.maximum(count, 1)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
    limit = config.overlay_codec_noise_std if lossy else config.overlay_max_std
    needed = max(2, int(np.ceil(_STROKE_MIN_SHARE * t)))
    # A stroke in (nearly) every frame is still overlay's business, or bright tissue that never
    # dims (a saturated near-field streak): changing overlay comes and goes.
    comes_and_goes = count <= _STROKE_MAX_SHARE * t
    found[window] = (count >= needed) & comes_and_goes & (std <= limit)
    labels, n_groups = ndimage.label(found, structure=_STRUCT3)
    if n_groups == 0:
        return found
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return sizes[labels] >= _STROKE_MIN_PIXELS


def _stroke_sums(frames_THW: np.ndarray, min_level: int, inside_HW: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, over frames: how often it is a stroke pixel (`changing_overlay_mask`), and the
    sum and the sum of squares of its level in those frames (exact integers).

    Done on chunks of frames in uint8. "Some pixel within the reach on each side is at least the
    contrast darker" is "the brighter of the two sides' darkest pixels is", and "along some
    direction" is the darkest such side over the four directions: one comparison a pixel.
    Comparing ``side <= v - contrast`` in uint8 wraps where ``v < contrast``, but such a pixel
    can never have a darker side (and is below ``min_level + contrast``): it is left out.
    """
    t, h, w = frames_THW.shape
    r, contrast = _STROKE_REACH, _STROKE_CONTRAST
    level = max(min_level, 0) + contrast
    count = np.zeros((h, w), dtype=np.int32)
    total = np.zeros((h, w), dtype=np.int64)
    squares = np.zeros((h, w), dtype=np.int64)
    # Pixels outside the sector never count as the darker side: they are raised to 255.
    outside = None if inside_HW is None else np.where(inside_HW, 0, 255).astype(np.uint8)
    for start in range(0, t, _STROKE_CHUNK):
        v = frames_THW[start:start + _STROKE_CHUNK]
        sides = v if outside is None else np.maximum(v, outside)
        padded = np.pad(sides, ((0, 0), (r, r), (r, r)), mode="edge")

        def darkest(dy: int, dx: int, padded=padded) -> np.ndarray:
            """The darkest side pixel 1..r away in direction (dy, dx)."""
            out = None
            for k in range(1, r + 1):
                shifted = padded[:, r + k * dy:r + k * dy + h, r + k * dx:r + k * dx + w]
                out = shifted if out is None else np.minimum(out, shifted)
            return out

        sides_max = None
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            both = np.maximum(darkest(dy, dx), darkest(-dy, -dx))
            sides_max = both if sides_max is None else np.minimum(sides_max, both, out=sides_max)
        stroke = (sides_max <= v - np.uint8(contrast)) & (v >= level)
        count += stroke.view(np.uint8).sum(axis=0, dtype=np.uint8)  # a chunk is < 256 frames
        values = np.multiply(v, stroke, dtype=np.uint16)
        total += values.sum(axis=0, dtype=np.uint32)
        np.multiply(values, values, out=values)  # 255 ** 2 fits uint16
        squares += values.sum(axis=0, dtype=np.uint32)
    return count, total, squares


def grown_bbox(mask_HW: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The bounding box of a mask's True pixels grown by ``margin`` (within the image), as
    (rows, columns) slices, or None when no pixel is set."""
    rows = np.flatnonzero(mask_HW.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask_HW.any(axis=0))
    h, w = mask_HW.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)))


def overlay_mask(std_HW: np.ndarray, mean_HW: np.ndarray, config: SectorConfig, *,
                 lossy: bool = False) -> np.ndarray:
    """Pixels that are burned-in overlay by their temporal statistics (module docstring)."""
    bright = mean_HW >= config.overlay_min_level
    exact = bright & (std_HW <= config.overlay_max_std)
    if not lossy:
        return exact
    noisy = bright & (std_HW <= config.overlay_codec_noise_std)
    # Count the 8-neighbours that are noisy-still too and of nearly the same mean level.
    h, w = mean_HW.shape
    mean_p = np.pad(mean_HW, 1, mode="edge")
    still_p = np.pad(noisy, 1)
    flat_neighbours = np.zeros((h, w), dtype=np.int8)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            nb_mean = mean_p[dy:dy + h, dx:dx + w]
            nb_still = still_p[dy:dy + h, dx:dx + w]
            flat_neighbours += nb_still & (np.abs(nb_mean - mean_HW) <= config.overlay_flat_delta)
    return exact | (noisy & (flat_neighbours >= 2))


def convex_hull_mask(points_HW: np.ndarray) -> np.ndarray:
    """Fill the convex hull of the True pixels of a 2D mask (pixel centres, half-pixel margin)."""
    from scipy.spatial import ConvexHull, QhullError

    edge = points_HW & ~_erode(points_HW, (3, 3))
    ys, xs = np.nonzero(edge)
    if len(ys) < 3:
        return points_HW.copy()
    pts = np.column_stack([xs, ys]).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # all points on a line
        return points_HW.copy()
    vertices = pts[hull.vertices]  # counter-clockwise in (x, y)
    # A convex polygon meets each row in one interval. Each edge's half-plane (with a half-pixel
    # margin) bounds x from below or above for a given row; intersect them row by row.
    h, w = points_HW.shape
    ys_row = np.arange(h, dtype=np.float64)[:, None]
    a = vertices
    e = np.roll(vertices, -1, axis=0) - vertices
    ex, ey = e[:, 0][None, :], e[:, 1][None, :]
    margin = 0.5 * np.hypot(ex, ey)
    # inside: ex * (y - ay) - ey * (x - ax) >= -margin  <=>  ey * x <= ex * (y - ay) + ey * ax + margin
    rhs = ex * (ys_row - a[:, 1][None, :]) + ey * a[:, 0][None, :] + margin
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / ey
    upper = np.where(ey > 0, bound, np.inf).min(axis=1)
    lower = np.where(ey < 0, bound, -np.inf).max(axis=1)
    flat_ok = np.where(ey == 0, rhs >= 0, True).all(axis=1)
    xs = np.arange(w, dtype=np.float64)[None, :]
    out = (xs >= lower[:, None]) & (xs <= upper[:, None]) & flat_ok[:, None]
    return out | points_HW
