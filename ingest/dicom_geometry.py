"""Where the image is and how fast it runs, as the header states it: ultrasound regions,
pixel spacing and the source frame rate. A malformed value is treated as a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of SequenceOfUltrasoundRegions: a box in pixels and its physical scale."""

    x0: int
    y0: int
    x1: int  # inclusive, as DICOM states it
    y1: int
    spatial_format: int  # 1 = 2D (B-mode), 2 = M-mode, 3 = spectral, ...
    data_type: int  # 1 = tissue, 2 = colour flow, ...
    delta_x_mm: float | None  # mm per pixel, when the units are cm
    delta_y_mm: float | None

    @property
    def area(self) -> int:
        return max(self.x1 - self.x0 + 1, 0) * max(self.y1 - self.y0 + 1, 0)


def frame_rate(ds) -> float | None:
    """Source frames per second from FrameTime, FrameTimeVector, CineRate or the display rate.

    A malformed value (not a number) is skipped like a missing one; none usable: None.
    """
    candidates: list[float | None] = []
    frame_time = _number(ds, "FrameTime")
    if frame_time is not None:
        candidates.append(1000.0 / frame_time if frame_time > 0 else None)
    try:
        vector = ds.get("FrameTimeVector")
        if vector not in (None, "") and len(vector) > 1:
            mean_ms = float(np.mean([float(v) for v in list(vector)[1:]]))
            candidates.append(1000.0 / mean_ms if mean_ms > 0 else None)
    except (TypeError, ValueError):
        pass
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        candidates.append(_number(ds, tag))
    for fps in candidates:
        if fps is not None and 1.0 <= fps <= 1000.0:
            return fps
    return None


def _number(ds, tag: str) -> float | None:
    """A numeric element as float; None when absent, empty or malformed."""
    try:
        value = ds.get(tag)
        if value in (None, ""):
            return None
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def ultrasound_regions(ds) -> list[UltrasoundRegion]:
    """The items of SequenceOfUltrasoundRegions (empty when absent or malformed)."""
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            def mm(delta_tag: str, unit_tag: str, item=item) -> float | None:
                # Physical units 3 = cm; other units (seconds, Hz, ...) are not spatial.
                if int(item.get(unit_tag, 0) or 0) == 3 and item.get(delta_tag) is not None:
                    return abs(float(item.get(delta_tag))) * 10.0
                return None

            regions.append(UltrasoundRegion(
                x0=int(item.RegionLocationMinX0), y0=int(item.RegionLocationMinY0),
                x1=int(item.RegionLocationMaxX1), y1=int(item.RegionLocationMaxY1),
                spatial_format=int(item.get("RegionSpatialFormat", 0) or 0),
                data_type=int(item.get("RegionDataType", 0) or 0),
                delta_x_mm=mm("PhysicalDeltaX", "PhysicalUnitsXDirection"),
                delta_y_mm=mm("PhysicalDeltaY", "PhysicalUnitsYDirection"),
            ))
        except (AttributeError, TypeError, ValueError):
            continue
    return regions


def pixel_spacing(ds) -> tuple[float, float] | None:
    spacing = ds.get("PixelSpacing")
    try:
        if spacing is not None and len(spacing) == 2:
            row, col = float(spacing[0]), float(spacing[1])
            if row > 0 and col > 0:
                return row, col
    except (TypeError, ValueError):
        pass
    return None
