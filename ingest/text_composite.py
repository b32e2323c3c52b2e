"""One image per clip that holds what any of its frames shows only briefly: the text detector's
view of every frame (`ingest.text_detector`).

The detector reads a few sampled frames of a clip; text drawn in other frames only (a name shown
for a few frames, a ticker, a flash) is not in them. Reading every frame costs ~0.12 CPU s a frame,
~5 s for a 40-frame clip. Instead, per pixel, the frame in which it differs most from its temporal
median (up or down) lends the composite its value: a string shown in 5 of 30 frames at one place
is held by the same frames at each of its pixels, so it shows whole and legible (bright on
whatever, or dark), among a patchwork of tissue from other frames; text that is in every frame
is there too (its pixels do not deviate, and the first frame lends them). The map of which frame
lent each pixel says where to look further: a box the detector finds on the composite but cannot
read (moving text smears) is read again in the frames its pixels came from, and what is read in a
frame is then followed frame by frame (`TextDetectorConfig.track_step`).

What the composite cannot show: text that moves (it smears; the frames it points to are read,
then followed), text that deviates less from the median than the tissue around it (dim text over
bright, moving tissue), and two strings overlapping one place in different frames.

Cost: the median and argmax over ``T`` x ``H`` x ``W`` bytes (~10 ms for 40 frames of 144 x 144)
and one detector read of the composite.
"""

from __future__ import annotations

import numpy as np


def transient_composite(frames_THW: np.ndarray,
                        median_HW: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(``uint8[H, W]`` composite, ``int[H, W]`` frame each pixel came from) of ``uint8[T, H, W]``.

    Each pixel takes its value from the frame where it is farthest from its temporal median
    (the earliest such frame on a tie, so a pixel that never changes comes from frame 0);
    ``median_HW``: that median, when the caller has it already."""
    median_HW = (np.median(frames_THW, axis=0) if median_HW is None else median_HW).astype(np.int16)
    deviation = np.abs(frames_THW.astype(np.int16) - median_HW)
    source_HW = deviation.argmax(axis=0)
    composite_HW = np.take_along_axis(frames_THW, source_HW[None], axis=0)[0]
    return np.ascontiguousarray(composite_HW), source_HW
