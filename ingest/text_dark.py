"""The image the text detector reads for dark text that is in every frame: the clip's per-pixel
temporal maximum, its dark levels brightened (`ingest.text_detector`, ``dark_composite``).

Dark strokes held in every frame (a name drawn in black over tissue) stay dark in the maximum
while the tissue under and around them is at its brightest: they stand out where no single frame
shows them against moving speckle. Over a dim region (the blood pool, a dim wall, the edge of the
fan) the maximum is dim too: a string at grey 0-30 under a surround whose maximum is 40-90 differs
from it by a few tens of levels at the bottom of the range, where the detector and the
recogniser (trained on print) see little. A power curve (``gamma`` 0.5: ``255 * (v / 255) **
0.5``, a lookup table) spreads the dark levels (15 -> 62, 30 -> 87, 60 -> 124, 90 -> 151) and
compresses the bright ones, keeping their order: dark text stays darker than what surrounds it,
over the wall and over the pool alike.

Weighed on `bench/bench_text_detector.py` (the motion set's dark bucket and the dark set over
blood and dim tissue, 54 strings of 8 px and more, one detector read of each image alone; docs/
benchmarks.md, "Dark text, third pass"): the plain maximum 25, gamma 0.5 37, gamma 0.35 37,
gamma 0.7 32, a logarithm 35, a global percentile stretch 25, local histogram equalisation
(CLAHE) 27-29, the temporal median brightened 30. In the whole detector, on the motion set's dark
bucket (18 strings of 8 px and more), gamma 0.5 masks 13 against 11 for the plain maximum, but
not the same ones: it loses an 8-px date over tissue the plain maximum reads (the 8-px bucket
5 -> 4 of 6) and an intermittent 8-px date the plain maximum's line read masks (intermittent
18 -> 17 of 18); on the dark set 23 of 36 against 16. CLAHE in 9-pixel tiles masked 17 of those 18 and 12 of the dark set's 36 against 16
for the plain maximum: tuned on 18 strings, it did not carry. So ``dark_gamma`` is 1.0 (off) by
default; reading both images would cost one detector read more a clip (~0.1-0.15 CPU s), over
the ingest's cost budget (docs/ingest.md, "The text detector"). What neither sees: text that is
dark in some frames only (the maximum takes the frames without it), and text no darker than the
maximum of what surrounds it (the black above the apex, a pool whose speckle peaks at the text's
level).

Cost: the maximum over ``T`` x ``H`` x ``W`` bytes and a lookup (< 1 ms for 144 x 144); the
detector read is the one the plain maximum cost already.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def _curve(gamma: float) -> np.ndarray:
    return np.round(255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)


def brightened_maximum(frames_THW: np.ndarray, gamma: float = 0.5) -> np.ndarray:
    """``uint8[H, W]``: the per-pixel temporal maximum of ``uint8[T, H, W]`` through the power
    curve ``255 * (v / 255) ** gamma`` (``gamma`` 1: the maximum as it is)."""
    maximum_HW = frames_THW.max(axis=0)
    return maximum_HW if gamma == 1 else _curve(float(gamma))[maximum_HW]
