"""Burned-in text that is not still: ingest tried with text shown in a few frames only, turned,
mirrored or level-alternating, dark over tissue, and a ticker (issue 22, "Pixels").

One export of planted clips is ingested twice by the real ``echocmr ingest``: with the defaults,
and with every pixel defence against text off (the text detector and the overlay masks: the
control; there, the same reader must read the planted strings, or the test could not fail). Every shipped frame of the protected set is then read by an
OCR pass of its own: RapidOCR's whole pipeline with its angle classifier on, each frame enlarged
4x, and turned and mirrored copies for the turned and mirrored cases. None of the planted strings may be
read. A ticker is tried with the defaults (its rows are a motion band, `ingest.text_motion`) and
with the second check (``text_detector.verify_every_frame``) alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from pydicom.uid import JPEGBaseline8Bit

from echocmr.ingest.encode import decode_webm
from echocmr.ingest.synth.overlays import screen_font
from echocmr.ingest.synth.small import small_clip
from echocmr.shards.format import INGEST_REPORT_FILE

from _ingest_fixtures import Identity, grey_to_rgb, write_us_dicom

LINES = ("SMITH JOHN", "DOB 19650304", "MRN 4711023")
# what counts as reading a planted string: any of these in the read text (upper case, letters
# and digits only)
TOKENS = ("SMITH", "JOHN", "196503", "650304", "471102", "711023")


def _layer(text: str, size: int) -> np.ndarray:
    """bool glyph mask of ``text`` in the screen font, cropped to its ink."""
    font = screen_font(size)
    image = Image.new("L", (size * len(text), size * 2), 0)
    ImageDraw.Draw(image).text((2, 2), text, fill=255, font=font)
    ink = np.asarray(image) > 100
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _plant(frames, lines, size, origin, *, shown=None, turn=None, levels=(235,), dx=0):
    """Draw ``lines`` (one below the other from ``origin`` = (row, col)) into the frames in
    ``shown`` (all by default): turned by ``turn`` (a function of a glyph mask), at ``levels``
    in turn frame by frame, moving ``dx`` pixels a frame. ``frames`` grey [T,H,W] or RGB."""
    out = frames.copy()
    shown = np.arange(len(frames)) if shown is None else np.asarray(shown)
    masks = []
    y = origin[0]
    for text in lines:
        mask = _layer(text, size)
        if turn is not None:
            mask = turn(mask)
        masks.append((y, mask))
        y += mask.shape[0] + size // 2
    for i, t in enumerate(shown):
        level = levels[t % len(levels)]
        for y, mask in masks:
            x = origin[1] + dx * i
            h, w = mask.shape
            window = out[t, y:y + h, max(x, 0):x + w]
            part = mask[:, max(-x, 0):max(-x, 0) + window.shape[1]][:window.shape[0]]
            window[part] = level
    return out


# a level that changes every frame (no level is held in 20 % of the frames, so the changing-overlay
# mask of `ingest.sector`, which looks for strokes at one level, does not take the text first)
CHANGING = tuple(130 + (37 * t) % 120 for t in range(30))


def _ybr_example() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")).pixel_array  # RGB


def _write(path, frames, kind, pid):
    """``frames`` grey or RGB, stored raw or as JPEG baseline."""
    rgb = frames if frames.ndim == 4 else grey_to_rgb(frames)
    if kind == "jpeg":
        write_us_dicom(path, rgb, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit,
                       ident=Identity(patient_id=pid))
    elif frames.ndim == 4:
        write_us_dicom(path, rgb, photometric="RGB", ident=Identity(patient_id=pid))
    else:
        write_us_dicom(path, frames, ident=Identity(patient_id=pid))


def _cases() -> dict[str, tuple[np.ndarray, str]]:
    """name -> (frames, what the reader must try: "plain" or "turned")."""
    ybr = _ybr_example()  # 30 frames of 240 x 320: a real ultrasound cine
    synthetic = small_clip(30, 480, 640, seed=5)  # a synthetic vendor clip, 480 x 640
    vendor = synthetic.frames
    big = max(10, 480 // 9)
    away = [4, 5, 6, 7, 8]  # 15 % of 30 frames, none of them the first, middle or last
    return {
        "ybr_intermittent": (_plant(ybr, LINES, 22, (70, 80), shown=[9, 10, 11, 12, 13]), "plain"),
        "vendor_intermittent": (_plant(vendor, LINES[::2], big, (170, 200), shown=away), "plain"),
        "turned_90": (_plant(vendor, LINES[:1], big, (120, 300), turn=np.rot90,
                             levels=CHANGING), "turned"),
        "upside_down": (_plant(vendor, LINES[:1], big, (270, 200), turn=lambda m: m[::-1, ::-1],
                               levels=CHANGING), "turned"),
        "mirrored": (_plant(vendor, LINES[:1], big, (200, 190), turn=lambda m: m[:, ::-1],
                            levels=CHANGING), "turned"),
        # on the bright inferior wall of the real cine (dark text over blood is legible to none)
        "dark_over_tissue": (_plant(ybr, LINES[:1], 18, (168, 100), levels=(5,)), "plain"),
    }


def _ticker() -> np.ndarray:
    """A ticker through the fan: 5 source pixels a frame, shown in frames 2-16 of 30."""
    vendor = small_clip(30, 480, 640, seed=6).frames
    return _plant(vendor, LINES[:1], max(10, 480 // 9), (220, 330), shown=range(2, 17), dx=-5)


def _env(root) -> dict[str, str]:
    """A clean environment: a HOME and TMPDIR of the test's own, the split key (the clips are
    hand-made, so ingest refuses the public demo key), nothing else inherited (a tracking URI
    another test left in this process's environment once sent these ingests to a dead server)."""
    home, tmp = root / "home", root / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return {"HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
            "ECHOCMR_SPLIT_KEY": os.environ["ECHOCMR_SPLIT_KEY"]}


def _labels(root, n: int):
    """``root/cmr.csv``: a CMR row (no WMA) for patients P0 .. P{n-1}; its path."""
    labels = root / "cmr.csv"
    pd.DataFrame({"patient_id": [f"P{j}" for j in range(n)], "cmr_date": ["2023-05-08"] * n,
                  "wma": [0] * n}).to_csv(labels, index=False)
    return labels


def _ingest(dicom, labels, out, config=None) -> dict[str, np.ndarray]:
    argv = [sys.executable, "-m", "echocmr", "ingest", "--dicom", str(dicom), "--labels",
            str(labels), "--out", str(out), "--workers", "2", "--no-progress"]
    if config:
        argv += ["--config", str(config)]
    run = subprocess.run(argv, capture_output=True, text=True, env=_env(out.parent), cwd=out.parent)
    assert run.returncode == 0, run.stderr
    report = pd.read_parquet(out / INGEST_REPORT_FILE).set_index("source")
    clips = {}
    for tar_name in sorted(n for n in os.listdir(out) if n.endswith(".tar")):
        with tarfile.open(out / tar_name) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".webm"):
                    clips[member.name[:-5]] = decode_webm(tar.extractfile(member).read())[0]
    kept = report[report["status"] == "kept"]
    return {"clips": {src: clips[key] for src, key in kept["key"].items()}, "stdout": run.stdout}


OFF = ("text_detector: {enabled: false}\n"
       "preprocess: {sector: {mask_static_overlays: false, mask_changing_overlays: false}}\n")


@pytest.fixture(scope="module")
def export(tmp_path_factory, module_split_key):
    root = tmp_path_factory.mktemp("motion")
    dicom = root / "dicom"
    dicom.mkdir()
    sources, i = {}, 0
    for name, (frames, reader) in _cases().items():
        for kind in ("raw", "jpeg"):
            source = f"{name}_{kind}.dcm"
            _write(dicom / source, frames, kind, f"P{i}")
            sources[source] = reader
            i += 1
    labels = _labels(root, i)
    # the control: every pixel defence against text off (the overlay masks of `ingest.sector`
    # too: over the wall of this clip they take part of the upside-down JPEG string's strokes
    # and leave it illegible to the reader; the control shows the plant survives ingest's crop,
    # resize and codec legibly, so the protected run's silence means something)
    off = root / "off.yaml"
    off.write_text(OFF)
    return {"root": root, "dicom": dicom, "labels": labels, "sources": sources,
            "on": _ingest(dicom, labels, root / "on"),
            "off": _ingest(dicom, labels, root / "off", off)}


@lru_cache(maxsize=1)
def _reader():
    import logging

    from rapidocr_onnxruntime import RapidOCR

    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return RapidOCR(use_cls=True)


def _read(frame_HW: np.ndarray, turned: bool) -> list[str]:
    """What an OCR pass of its own reads in one shipped frame (4x bicubic; when ``turned``, the
    frame turned 180° and mirrored either way as well: the angle classifier alone reads no
    mirrored text, and read no upside-down text of this test)."""
    big = np.asarray(Image.fromarray(frame_HW).resize((frame_HW.shape[1] * 4,
                                                       frame_HW.shape[0] * 4),
                                                      Image.Resampling.BICUBIC))
    texts = []
    for image in (big, big[::-1, ::-1], big[:, ::-1], big[::-1, :]) if turned else (big,):
        result, _ = _reader()(np.repeat(np.ascontiguousarray(image)[..., None], 3, axis=-1))
        texts += [str(line[1]) for line in result or []]
    return texts


def _planted_read(clip_THW: np.ndarray, turned: bool, frames=None) -> list[tuple[int, str]]:
    """(frame, read text) for every read that holds a planted token."""
    hits = []
    for t in range(len(clip_THW)) if frames is None else frames:
        for text in _read(clip_THW[t], turned):
            norm = re.sub(r"[^A-Z0-9]", "", text.upper())
            if any(token in norm for token in TOKENS):
                hits.append((t, text))
    return hits


CASES = ["ybr_intermittent", "vendor_intermittent", "turned_90", "upside_down", "mirrored",
         "dark_over_tissue"]


# Each case once in the default run (raw or JPEG in turn), the other codec among the slow tests:
# reading every frame of a clip with the whole OCR pipeline takes ~15 s of CPU.
PAIRS = [pytest.param(case, kind, marks=[pytest.mark.slow] if (i + j) % 2 else [])
         for i, case in enumerate(CASES) for j, kind in enumerate(("raw", "jpeg"))]


@pytest.mark.parametrize(("case", "kind"), PAIRS)
def test_no_planted_string_is_read_in_any_shipped_frame(export, case, kind):
    source = f"{case}_{kind}.dcm"
    turned = export["sources"][source] == "turned"
    # the control: unprotected, the same reader reads the planted text in the shipped frames
    assert source in export["off"]["clips"], f"{source} was not kept"
    assert _planted_read(export["off"]["clips"][source], turned), (source, "control")
    assert source in export["on"]["clips"], f"{source} was not kept"
    assert _planted_read(export["on"]["clips"][source], turned) == [], source


def test_the_summary_counts_the_clips_text_was_masked_in(export):
    """Before, the summary said "text masked in 0 kept clips" of intermittent text: now each of
    the four intermittent clips (text in none of the sampled frames) counts."""
    masked = re.search(r"text masked in (\d+) kept clip", export["on"]["stdout"])
    assert masked and int(masked.group(1)) >= 4, export["on"]["stdout"]


@pytest.fixture(scope="module")
def ticker(tmp_path_factory, module_split_key):
    """The ticker clip, raw and JPEG, and its control: ingested with the text detector off."""
    root = tmp_path_factory.mktemp("ticker")
    dicom = root / "dicom"
    dicom.mkdir()
    frames = _ticker()
    for i, kind in enumerate(("raw", "jpeg")):
        _write(dicom / f"ticker_{kind}.dcm", frames, kind, f"P{i}")
    labels = _labels(root, 2)
    off = root / "off.yaml"
    off.write_text("text_detector: {enabled: false}\n")
    return {"root": root, "dicom": dicom, "labels": labels,
            "plain": _ingest(dicom, labels, root / "off", off)["clips"]}


def _ticker_reads(ticker, kind: str, clips: dict) -> list[tuple[int, str]]:
    source = f"ticker_{kind}.dcm"
    # the control: without the detector the reader reads the ticker in the shipped frames
    assert _planted_read(ticker["plain"][source], False, frames=range(2, 17, 3)), source
    return _planted_read(clips[source], False)


@pytest.mark.parametrize("kind", ["raw", pytest.param("jpeg", marks=pytest.mark.slow)])
def test_a_ticker_is_masked_with_the_defaults(ticker, kind):
    """A ticker through the fan, shown in frames 2-16 of 30 (moving 5 source pixels a frame):
    with the defaults (its rows are a motion band, `ingest.text_motion`, read and followed) no
    shipped frame reads."""
    if "defaults" not in ticker:
        ticker["defaults"] = _ingest(ticker["dicom"], ticker["labels"],
                                     ticker["root"] / "defaults")["clips"]
    assert _ticker_reads(ticker, kind, ticker["defaults"]) == []


@pytest.mark.slow
def test_a_ticker_is_masked_by_the_every_frame_check(ticker):
    """The same ticker with the motion bands off and the second check on
    (``verify_every_frame``): the check alone, reading every frame, leaves no frame that reads."""
    every = ticker["root"] / "every.yaml"
    every.write_text("text_detector: {verify_every_frame: true, motion_bands: 0, stroke_reads: 0}\n")
    checked = _ingest(ticker["dicom"], ticker["labels"], ticker["root"] / "every", every)["clips"]
    for kind in ("raw", "jpeg"):
        assert _ticker_reads(ticker, kind, checked) == [], kind
