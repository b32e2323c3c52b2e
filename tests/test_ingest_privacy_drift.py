"""Burned-in text that moves vertically or slowly: ingest tried through the real ``echocmr
ingest`` (a subprocess with a clean environment and a HOME of its own) with a name and date of
birth scrolling up through the fan (credits), and an ID creeping sideways at ~0.6 output pixels
a frame, each in none of the frames the detector samples, raw and JPEG (issue 22).

With the defaults, the stroke reads (`ingest.text_strokes`) find them; every shipped frame of the
protected set is read by an OCR pass of its own (RapidOCR's whole pipeline with its angle
classifier, each frame enlarged 4x) and none of the planted strings may be read. The control:
the same export with every pixel defence against text off, where the same reader must read the
planted strings in the shipped frames, or the test could not fail; and the detector as it was
before (``stroke_reads: 0``, and the later dark strokes off), which must leave one readable (what
the stroke reads add).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydicom.uid import JPEGBaseline8Bit
from test_ingest_privacy_motion import OFF, _labels, _layer, _read
from test_ingest_privacy_motion import _ingest as _motion_ingest

from echocmr.ingest.synth.small import small_clip

from _ingest_fixtures import Identity, grey_to_rgb, write_us_dicom

NAME, DOB, MRN = "SMITH JOHN", "DOB 19650304", "MRN 4711023"
TOKENS = {"credits": ("SMITH", "JOHN", "196503", "650304"), "slow_id": ("471102", "711023")}
SIZE = 480 // 9  # source pixels, as the other privacy tests plant: ~14 output pixels


def _draw(frames, text, yx_of_frame):
    """``text`` drawn (level 235) into each frame ``t`` of ``yx_of_frame`` at its (row, col)."""
    mask = _layer(text, SIZE)
    h, w = mask.shape
    for t, (y, x) in yx_of_frame.items():
        window = frames[t, y:y + h, x:x + w]
        window[mask[:window.shape[0], :window.shape[1]]] = 235
    return frames


def _cases() -> dict[str, np.ndarray]:
    """Two clips of 30 frames of 480 x 640; the detector samples output frames 0, 14 and 29."""
    credits = small_clip(30, 480, 640, seed=7).frames.copy()
    shown = range(2, 13)  # moving up 12 source pixels (~3.6 output pixels) a frame
    for line, dy in ((NAME, 0), (DOB, SIZE * 3 // 2)):
        _draw(credits, line, {t: (330 + dy - 12 * i, 220) for i, t in enumerate(shown)})
    slow = small_clip(30, 480, 640, seed=8).frames.copy()
    shown = range(16, 29)  # moving right 2 source pixels (~0.6 output pixels) a frame
    _draw(slow, MRN, {t: (260, 200 + 2 * i) for i, t in enumerate(shown)})
    return {"credits": credits, "slow_id": slow}


def _ingest(root, out, config=None) -> dict[str, np.ndarray]:
    """Every kept clip of ``echocmr ingest`` of the export (source name -> shipped frames), run
    as the motion test runs it (a clean environment of the test's own)."""
    path = None
    if config:
        path = root / f"{out.name}.yaml"
        path.write_text(config)
    return _motion_ingest(root / "dicom", root / "cmr.csv", out, path)["clips"]


@pytest.fixture(scope="module")
def export(tmp_path_factory, module_split_key):
    root = tmp_path_factory.mktemp("drift")
    (root / "dicom").mkdir()
    i = 0
    for name, frames in _cases().items():
        for kind in ("raw", "jpeg"):
            rgb = grey_to_rgb(frames)
            path = root / "dicom" / f"{name}_{kind}.dcm"
            if kind == "jpeg":
                write_us_dicom(path, rgb, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit,
                               ident=Identity(patient_id=f"P{i}"))
            else:
                write_us_dicom(path, frames, ident=Identity(patient_id=f"P{i}"))
            i += 1
    _labels(root, i)
    return {"root": root, "on": _ingest(root, root / "on"),
            "off": _ingest(root, root / "off", OFF),
            "before": _ingest(root, root / "before",
                              "text_detector: {stroke_reads: 0, dark_strokes: 0}\n")}


def _hits(clip_THW: np.ndarray, case: str, first: bool = False) -> list[tuple[int, str]]:
    """(frame, read text) for every read of a shipped frame that holds a planted token (only
    the first, when ``first``: a control needs one)."""
    hits = []
    for t in range(len(clip_THW)):
        for text in _read(clip_THW[t], False):
            if any(token in re.sub(r"[^A-Z0-9]", "", text.upper()) for token in TOKENS[case]):
                hits.append((t, text))
                if first:
                    return hits
    return hits


@pytest.mark.parametrize("kind", ["raw", "jpeg"])
@pytest.mark.parametrize("case", ["credits", "slow_id"])
def test_no_vertical_or_slow_string_is_read_in_any_shipped_frame(export, case, kind):
    source = f"{case}_{kind}.dcm"
    for run in ("off", "before", "on"):
        assert source in export[run], f"{source} was not kept ({run})"
    # the control: unprotected, the same reader reads the planted text in the shipped frames
    assert _hits(export["off"][source], case, first=True), (source, "control")
    assert _hits(export["on"][source], case) == [], source


def test_the_detector_of_before_leaves_one_of_them_readable(export):
    """Without the stroke reads (the defaults before them), at least one of the four clips
    ships a frame that reads: the step the other test relies on is the one that masks."""
    left = [source for source in sorted(export["before"])
            if _hits(export["before"][source], source.rsplit("_", 1)[0], first=True)]
    assert left, "every clip masked without the stroke reads: the test does not test them"
