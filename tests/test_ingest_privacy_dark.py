"""Dark burned-in text read by a stronger reader (issue 22, "Pixels": dark text).

A name, a date of birth and an MRN, each drawn at grey 5 in every frame of pydicom's real
ultrasound cine (`examples_ybr_color.dcm`, 30 frames of 240 x 320) along its bright inferior wall,
raw and JPEG, are ingested by the real ``echocmr ingest`` twice: with the defaults, and with every
pixel defence against text off (the control: there the same reader must read the planted string,
or the test could not fail). Every shipped frame of the protected set, and the shipped clip's
per-pixel temporal minimum, maximum, median and mean, are then read by an OCR pass that shares
none of the detector's assumptions about contrast: RapidOCR's whole pipeline with its angle
classifier, 4x, each image as it is, contrast-stretched (1st-99th percentile), CLAHE-equalised
and both of those inverted (`bench.bench_text_detector.stretched_views`, the bench's readable
recall's reader). None of the planted strings may be read.

Dark text over a dim blood pool is tried in `test_ingest_privacy_dark_pool` (the dark-stroke
path, `ingest.text_dark_strokes`); the defence does not mask all of it (docs/ingest.md, "The text
detector", what the defence does not see; the bench's dark set measures it), and planted across
the walls and cavity of the synthetic vendor clip (480 x 640, glyphs of 30-80 source pixels) it
was legible to this reader in no view after the resize.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _bench_fixtures import load_bench
from PIL import Image
from test_ingest_privacy_motion import OFF, _ingest, _labels, _plant, _reader, _write, _ybr_example

# the bench's readable-recall reader's views (bench/ is scripts, not a package: `make test` runs
# .venv/bin/pytest, which does not put the checkout on sys.path)
stretched_views = load_bench("bench_text_detector").stretched_views

LINES = {"name": "GARCIA MARIA", "dob": "DOB 19710822", "mrn": "MRN 5093817"}
TOKENS = ("GARCIA", "MARIA", "197108", "710822", "509381", "093817")


def _clip(line: str) -> np.ndarray:
    """The real cine with one line drawn dark along its bright inferior wall."""
    return _plant(_ybr_example(), (line,), 18, (168, 100), levels=(5,))


def _images(clip_THW: np.ndarray):
    """(name, image) the reader reads: each shipped frame, then the clip's temporal minimum,
    maximum, median and mean; each 4x bicubic, as it is and in each stretched view."""
    def big(image):
        image = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
        return np.asarray(Image.fromarray(image).resize((image.shape[1] * 4, image.shape[0] * 4),
                                                        Image.Resampling.BICUBIC))

    sources = [(f"frame {t}", frame) for t, frame in enumerate(clip_THW)] + [
        ("temporal min", clip_THW.min(axis=0)), ("temporal max", clip_THW.max(axis=0)),
        ("temporal median", np.median(clip_THW, axis=0)), ("temporal mean", clip_THW.mean(axis=0))]
    for name, image in sources:
        image = big(image)
        yield name, image
        for how, view in stretched_views(image):
            yield f"{name}, {how}", view


def _planted_read(clip_THW: np.ndarray, first: bool = False) -> list[tuple[str, str]]:
    """(image, read text) for every read that holds a planted token (the first only when
    ``first``)."""
    hits = []
    for name, image in _images(clip_THW):
        result, _ = _reader()(np.repeat(image[..., None], 3, axis=-1))
        for line in result or []:
            if any(token in re.sub(r"[^A-Z0-9]", "", str(line[1]).upper()) for token in TOKENS):
                hits.append((name, str(line[1])))
                if first:
                    return hits
    return hits


@pytest.fixture(scope="module")
def dark_export(tmp_path_factory, module_split_key):
    root = tmp_path_factory.mktemp("dark")
    dicom = root / "dicom"
    dicom.mkdir()
    i = 0
    for what, line in LINES.items():
        frames = _clip(line)
        for kind in ("raw", "jpeg"):
            _write(dicom / f"dark_{what}_{kind}.dcm", frames, kind, f"P{i}")
            i += 1
    labels = _labels(root, i)
    off = root / "off.yaml"
    off.write_text(OFF)
    return {"on": _ingest(dicom, labels, root / "on"),
            "off": _ingest(dicom, labels, root / "off", off)}


# each line once in the default run (raw or JPEG in turn), the other codec among the slow tests:
# the stronger reader reads each shipped clip ~170 times
CASES = [pytest.param(what, kind, marks=[pytest.mark.slow] if (i + j) % 2 else [])
         for i, what in enumerate(LINES) for j, kind in enumerate(("raw", "jpeg"))]


@pytest.mark.parametrize(("what", "kind"), CASES)
def test_no_dark_planted_string_is_read_by_the_stronger_reader(dark_export, what, kind):
    source = f"dark_{what}_{kind}.dcm"
    # the control: unprotected, the reader reads the dark text in what ingest ships
    assert source in dark_export["off"]["clips"], f"{source} was not kept"
    assert _planted_read(dark_export["off"]["clips"][source], first=True), (source, "control")
    assert source in dark_export["on"]["clips"], f"{source} was not kept"
    assert _planted_read(dark_export["on"]["clips"][source]) == [], source
