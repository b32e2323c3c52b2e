"""The image the text detector reads for dark text that is in every frame: the clip's per-pixel
temporal maximum, locally equalised (`ingest.text_detector`, ``dark_composite``).

Dark strokes held in every frame (a name drawn in black over tissue) stay dark in the maximum
while the tissue under and around them is at its brightest: they stand out where no single frame
shows them against moving speckle. Over a dim region (the blood pool, the edge of the fan, the
black above the apex) the maximum is dark too, and a string drawn at grey 0-25 there differs from
its surroundings by 5-15 grey levels only: the detector, which reads contrast of the whole image
range, sees nothing there. Contrast-limited adaptive histogram equalisation (CLAHE, OpenCV) of
the maximum stretches each small tile (`TILE_PX` output pixels) over the whole grey range, its
amplification capped (`CLIP_LIMIT`) so flat regions are not blown up to noise: the string over
the blood pool is then as legible to the recogniser as the string over the bright wall, with the
same polarity (dark on brighter), and the bright wall stays bright.

Measured on `bench/bench_text_detector.py`'s dark bucket (docs/benchmarks.md, "Dark text, third
pass"): the plain maximum found 11 of the 18 dark strings of 8 px and more, the equalised one 17
at the same cost (one detector read); no false box on the bench's clean clips. What it does not
see: text that is dark in some frames only (the maximum takes the frames without it), and text
brighter than the black around it but dimmer than 25 (grey on the black above the apex: in the
maximum, speckle of other frames outshines it).

Cost: the maximum over ``T`` x ``H`` x ``W`` bytes and one CLAHE of ``H`` x ``W`` (< 1 ms for
144 x 144); the detector read is the one the plain maximum cost already.
"""

from __future__ import annotations

import numpy as np

TILE_PX = 9  # output pixels a CLAHE tile spans (16 tiles across a 144-pixel clip)
CLIP_LIMIT = 3.0  # OpenCV's contrast limit per tile (histogram bins clipped at 3x the mean)


def equalised_maximum(frames_THW: np.ndarray, tile_px: int = TILE_PX,
                      clip_limit: float = CLIP_LIMIT) -> np.ndarray:
    """``uint8[H, W]``: the per-pixel temporal maximum of ``uint8[T, H, W]``, CLAHE-equalised in
    tiles of about ``tile_px`` pixels (``tile_px`` 0: the maximum as it is)."""
    maximum_HW = np.ascontiguousarray(frames_THW.max(axis=0))
    if not tile_px:
        return maximum_HW
    import cv2

    h, w = maximum_HW.shape
    tiles = (max(1, round(w / tile_px)), max(1, round(h / tile_px)))
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tiles).apply(maximum_HW)
