"""Dark burned-in text over a dim blood pool, read by a stronger reader (issue 22, "Pixels": dark
text; the dark-stroke path, `ingest.text_dark_strokes`).

A name drawn at grey 3 in every frame over a fan of dim speckle (grey ~20, a blood pool's level,
with a bright wall below), stored raw, is ingested by the real ``echocmr ingest`` three times:
with the defaults; with the dark-stroke path off (``text_detector.dark_strokes: 0``, the rest of
the defence on: the defence before this path); and with every pixel defence against text off.
In the last two the reader of `test_ingest_privacy_dark` (RapidOCR's whole pipeline with its
angle classifier, 4x, each shipped frame and the temporal minimum, maximum, median and mean, as
they are, contrast-stretched, CLAHE-equalised and inverted) must read the planted name, or the
test could not fail; in the protected set it must read it nowhere.

The same plant stored as JPEG (baseline, YBR_FULL_422; slow tests): this pool loses most of its
frame-to-frame speckle to the codec (temporal std ~3.5), and the still-overlay mask
(`ingest.sector`, ``overlay_codec_noise_std``) blanks the pool and the name with it. So a
livelier pool (grey ~25, speckle smoothed over 3 pixels), which keeps its speckle through the
codec and the overlay mask, carries the name too, stored as JPEG: with both dark paths off
(``dark_composite: false, dark_strokes: 0``) the reader reads the name in what ingest ships;
with the dark strokes as the only dark path (``dark_composite: false``) and with the defaults
it reads it nowhere (with the dark strokes off, the temporal maximum's detector masks part of
its line and the reader reads nothing there either: not a control).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_ingest_privacy_dark import _planted_read
from test_ingest_privacy_motion import OFF, _ingest, _labels, _plant, _write

NAME = "GARCIA MARIA"  # `test_ingest_privacy_dark.TOKENS` holds its words


def _pool(frames: int = 30, height: int = 240, width: int = 320, seed: int = 0,
          level: float = 20, spread: float = 20 / 3, smooth: int = 5) -> np.ndarray:
    """A fan of moving speckle at grey ~``level`` (normal, ``spread`` levels, smoothed over
    ``smooth`` pixels), a bright pulsing wall along its lower edge, black outside: a dim cavity
    as a vendor's grey clip shows it."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    angle = np.degrees(np.arctan2(xx - width / 2, yy - 10))
    radius = np.hypot(xx - width / 2, yy - 10)
    fan = (np.abs(angle) < 40) & (radius < height - 20) & (radius > 15)
    out = np.zeros((frames, height, width), dtype=np.uint8)
    for t in range(frames):
        speckle = cv2.GaussianBlur(
            rng.normal(level, spread, (height, width)).astype(np.float32), (smooth, smooth), 0)
        wall = 120 + 60 * np.sin(radius / 9 + t / 3)
        image = np.where(radius > height - 50, wall, speckle)
        out[t] = np.where(fan, np.clip(image, 0, 255), 0).astype(np.uint8)
    return out


def _export(root, clips: dict[str, tuple[np.ndarray, str, str]],
            configs: dict[str, str]) -> dict:
    """Each clip (file name: frames, codec, patient) written as a DICOM under ``root``, then the
    real ``echocmr ingest`` run as ``on`` with the defaults and once per config (run name: the
    YAML's text): each run's result by name."""
    dicom = root / "dicom"
    dicom.mkdir()
    for name, (frames, codec, patient) in clips.items():
        _write(dicom / name, frames, codec, patient)
    labels = _labels(root, len({patient for *_, patient in clips.values()}))
    runs = {"on": _ingest(dicom, labels, root / "on")}
    for run, text in configs.items():
        (root / f"{run}.yaml").write_text(text)
        runs[run] = _ingest(dicom, labels, root / run, root / f"{run}.yaml")
    return runs


@pytest.fixture(scope="module")
def pool_export(tmp_path_factory, module_split_key):
    plant = _plant(_pool(), (NAME,), 18, (110, 100), levels=(3,))
    return _export(tmp_path_factory.mktemp("dark_pool"), {"pool_raw.dcm": (plant, "raw", "P0")},
                   {"before": "text_detector: {dark_strokes: 0}\n", "off": OFF})


def test_dark_text_over_the_pool_is_read_by_no_reader_in_what_ingest_ships(pool_export):
    source = "pool_raw.dcm"
    for run in ("off", "before", "on"):
        assert source in pool_export[run]["clips"], (run, "not kept")
    # the controls: unprotected, and protected by everything but the dark-stroke path, the
    # reader reads the name in what ingest ships
    assert _planted_read(pool_export["off"]["clips"][source], first=True), "control: off"
    assert _planted_read(pool_export["before"]["clips"][source], first=True), "control: before"
    assert _planted_read(pool_export["on"]["clips"][source]) == []


@pytest.fixture(scope="module")
def jpeg_export(tmp_path_factory, module_split_key):
    lively = _pool(level=25, spread=14, smooth=3)  # keeps its speckle through the codec
    clips = {"pool_jpeg.dcm": (_plant(_pool(), (NAME,), 18, (110, 100), levels=(3,)), "jpeg", "P0"),
             "lively_jpeg.dcm": (_plant(lively, (NAME,), 18, (110, 100), levels=(3,)), "jpeg",
                                 "P1")}
    return _export(tmp_path_factory.mktemp("dark_pool_jpeg"), clips,
                   {"no_dark": "text_detector: {dark_composite: false, dark_strokes: 0}\n",
                    "strokes": "text_detector: {dark_composite: false}\n", "off": OFF})


@pytest.mark.slow
@pytest.mark.parametrize("source", ["lively_jpeg.dcm", "pool_jpeg.dcm"])
def test_dark_text_over_the_pool_stored_as_jpeg_is_read_by_no_reader_in_what_ingest_ships(
        jpeg_export, source):
    for run in ("off", "no_dark", "strokes", "on"):
        assert source in jpeg_export[run]["clips"], (run, "not kept")
    # the control: unprotected, the reader reads the name in what ingest ships from the JPEG
    assert _planted_read(jpeg_export["off"]["clips"][source], first=True), "control: off"
    if source == "lively_jpeg.dcm":
        # ... and over the livelier pool, protected by everything but the two dark paths, too;
        # the dark strokes alone mask it
        assert _planted_read(jpeg_export["no_dark"]["clips"][source], first=True), \
            "control: no dark paths"
        assert _planted_read(jpeg_export["strokes"]["clips"][source]) == []
    assert _planted_read(jpeg_export["on"]["clips"][source]) == []
