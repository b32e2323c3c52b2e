"""Sector geometry and scan conversion: from beams and depths to the pixels of a canvas.

A phased-array probe fires ~128 beams in a fan and samples each along depth; the machine then
"scan-converts" that polar image into the sector seen on screen. The phantom does the same: it
renders each frame on a small polar grid (cheap: a few tens of thousands of samples), doubles it
with a bilinear resize, and fills the sector's pixels with one precomputed gather. The lookup table
is built once per geometry and cached, so a clip costs one array copy per frame here.

Coordinates: the virtual apex (where the beams meet) is the origin; x grows to the screen's right
and y with depth, both in cm. ``cm_per_px`` is isotropic, as on real scanners.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

N_BEAMS = 128  # scan lines of the fictional probes


@dataclass(frozen=True, kw_only=True)
class SectorGeometry:
    """Where the fan sits on the canvas and how deep it reaches."""

    rows: int
    columns: int
    apex_x: int  # canvas column of the virtual apex
    apex_y: int  # canvas row of the virtual apex (may be above the canvas top edge)
    radius_px: int  # far edge of the fan, from the apex
    near_px: int  # near edge (probe face), from the apex
    half_angle_deg: int  # half the opening angle
    depth_cm: float  # physical depth at radius_px

    @property
    def cm_per_px(self) -> float:
        return self.depth_cm / self.radius_px

    @property
    def half_angle(self) -> float:
        return float(np.deg2rad(self.half_angle_deg))

    @property
    def n_depth(self) -> int:
        """Depth samples per beam: one per ~3.5 canvas pixels, at most 128 (~1 mm; finer detail
        would only cost time on the large canvases)."""
        return min(int(round((self.radius_px - self.near_px) / 3.5)), 128)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Bounding box (min_x, min_y, max_x, max_y), inclusive, of the fan on the canvas."""
        half = self.half_angle
        min_x = int(np.floor(self.apex_x - self.radius_px * np.sin(half)))
        max_x = int(np.ceil(self.apex_x + self.radius_px * np.sin(half)))
        min_y = int(np.floor(self.apex_y + self.near_px * np.cos(half)))
        max_y = int(np.ceil(self.apex_y + self.radius_px))
        return (max(min_x, 0), max(min_y, 0), min(max_x, self.columns - 1),
                min(max_y, self.rows - 1))

    def polar_grid_cm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Physical (r, theta, x, y) of every polar sample, each shaped [n_depth, N_BEAMS]."""
        r = np.linspace(self.near_px, self.radius_px, self.n_depth) * self.cm_per_px
        th = np.linspace(-self.half_angle, self.half_angle, N_BEAMS)
        rr, tt = np.meshgrid(r, th, indexing="ij")
        return rr, tt, rr * np.sin(tt), rr * np.cos(tt)

    def scan_convert(self, polar: np.ndarray, *, interpolation: str = "bilinear") -> np.ndarray:
        """Sector pixel values (in ``sector_pixels`` order) from a uint8 [n_depth, N_BEAMS] image.

        ``bilinear`` doubles the polar grid smoothly first; ``nearest`` repeats samples, giving the
        blocky far field of older scan converters (and runs that RLE can compress).
        """
        if polar.shape != (self.n_depth, N_BEAMS) or polar.dtype != np.uint8:
            raise ValueError(f"expected uint8 {(self.n_depth, N_BEAMS)}, got {polar.dtype} "
                             f"{polar.shape}")
        size = (2 * N_BEAMS, 2 * self.n_depth)
        if interpolation == "bilinear":
            fine = Image.fromarray(polar).resize(size, Image.BILINEAR)
        elif interpolation == "nearest":
            fine = Image.fromarray(polar).resize(size, Image.NEAREST)
        else:
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', not {interpolation!r}")
        return np.asarray(fine).ravel()[_lookup(*self._pixel_key)[1]]

    @property
    def sector_pixels(self) -> np.ndarray:
        """Flat canvas indices (row * columns + col) of the pixels inside the fan."""
        return _lookup(*self._pixel_key)[0]

    @property
    def _pixel_key(self) -> tuple[int, ...]:
        """What the lookup table depends on (not the depth in cm): the cache key."""
        return (self.rows, self.columns, self.apex_x, self.apex_y, self.radius_px, self.near_px,
                self.half_angle_deg)


@functools.lru_cache(maxsize=16)
def _lookup(rows: int, columns: int, apex_x: int, apex_y: int, radius_px: int, near_px: int,
            half_angle_deg: int) -> tuple[np.ndarray, np.ndarray]:
    """(canvas flat indices, fine-polar flat indices) of every pixel inside the fan."""
    geom = SectorGeometry(rows=rows, columns=columns, apex_x=apex_x, apex_y=apex_y,
                          radius_px=radius_px, near_px=near_px, half_angle_deg=half_angle_deg,
                          depth_cm=1.0)
    min_x, min_y, max_x, max_y = geom.box
    ys, xs = np.mgrid[min_y : max_y + 1, min_x : max_x + 1]
    dx = xs - geom.apex_x + 0.0
    dy = ys - geom.apex_y + 0.0
    r = np.hypot(dx, dy)
    th = np.arctan2(dx, dy)
    inside = (r >= geom.near_px) & (r <= geom.radius_px) & (np.abs(th) <= geom.half_angle)
    n_fine_d, n_fine_b = 2 * geom.n_depth, 2 * N_BEAMS
    ri = np.rint((r[inside] - geom.near_px) / (geom.radius_px - geom.near_px) * (n_fine_d - 1))
    ti = np.rint((th[inside] + geom.half_angle) / (2 * geom.half_angle) * (n_fine_b - 1))
    polar_idx = (ri.astype(np.int64) * n_fine_b + ti.astype(np.int64)).astype(np.int32)
    canvas_idx = (ys[inside] * geom.columns + xs[inside]).astype(np.int64)
    return canvas_idx, polar_idx


def draw_geometry(
    rng: np.random.Generator, *, rows: int, columns: int, depth_range: tuple[float, float]
) -> SectorGeometry:
    """A fan for this canvas, with the clip-to-clip variation of a sonographer's settings.

    The opening angle, zoom (radius), a small sideways offset and the imaging depth vary; they are
    quantised so that clips of one machine share cached lookup tables.
    """
    top = int(round(0.075 * rows))  # room for the header text
    bottom = int(round(0.14 * rows))  # room for the ECG trace
    half = int(rng.integers(33, 43))
    zoom = float(rng.choice([0.9, 0.95, 1.0]))
    radius = int(round((rows - top - bottom) * zoom))
    apex_x = columns // 2 + int(rng.choice([-8, 0, 8]))
    near = int(round(0.03 * radius))
    depth = float(np.round(rng.uniform(*depth_range), 1))
    return SectorGeometry(
        rows=rows, columns=columns, apex_x=apex_x, apex_y=top - near, radius_px=radius,
        near_px=near, half_angle_deg=half, depth_cm=depth,
    )
