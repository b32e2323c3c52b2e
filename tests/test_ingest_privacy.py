"""Burned-in text, keys, and every input accounted for: ingest tried as a hostile site would.

The pixel tests plant names and numbers in the pixels (white, mid-grey and dim; in the header band
and mid-sector; uncompressed and JPEG baseline; frozen and moving clips; pydicom's real
``examples_ybr_color.dcm`` as a base; a per-frame counter), run the real ``echocmr ingest`` and
check two ways: the text detector reads nothing in the shipped clips, and no planted glyph pixel
lies inside what preprocessing keeps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from pydicom.uid import JPEGBaseline8Bit

from echocmr.ingest.config import PreprocessConfig, SectorConfig, TextDetectorConfig
from echocmr.ingest.dicom_io import read_dicom
from echocmr.ingest.encode import decode_webm
from echocmr.ingest.sector import find_sector
from echocmr.ingest.synth.overlays import screen_font
from echocmr.ingest.synth.small import small_clip
from echocmr.ingest.text_detector import find_text
from echocmr.shards.format import INGEST_REPORT_FILE

from _ingest_fixtures import Identity, grey_to_rgb, write_us_dicom

LEVELS = (230, 128, 40)  # white, mid-grey, dim
PLANTED = ("DOE JANE", "19610203", "MRN 4711")


def _plant(frames: np.ndarray, rows: list[tuple[str, int, tuple[int, int]]], size: int):
    """Draw each (text, level, (x, y)) into every frame; returns frames and {level: mask}."""
    out, masks = frames.copy(), {}
    for text, level, xy in rows:
        layer = Image.new("L", (frames.shape[2], frames.shape[1]), 0)
        ImageDraw.Draw(layer).text(xy, text, fill=255, font=screen_font(size))
        mask = np.asarray(layer) > 100
        out[:, mask] = level
        masks[level] = mask
    return out, masks


def _mid_sector_text(frames: np.ndarray) -> np.ndarray:
    return _mid_sector_text_and_mask(frames)[0]


def _mid_sector_text_and_mask(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames with the three PLANTED lines mid-image, and where their glyphs are."""
    out, words = _mid_sector_text_and_words(frames)
    return out, np.logical_or.reduce(words)


def _mid_sector_text_and_words(frames: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames with the three PLANTED lines mid-image, and each line's glyph mask."""
    h, w = frames.shape[1:3]
    rows = [(text, level, (w // 4, h // 4 + i * h // 6))
            for i, (text, level) in enumerate(zip(PLANTED, LEVELS, strict=True))]
    out, masks = _plant(frames, rows, max(10, h // 9))
    return out, list(masks.values())


def _kept_mask(path) -> tuple[np.ndarray, np.ndarray]:
    """The source frames and what preprocessing keeps of them (the sector mask, frame-sized)."""
    clip, _ = read_dicom(path)
    coloured = None if clip.chroma_HW is None else clip.chroma_HW > 40
    sector = find_sector(clip.frames_THW, clip.regions, exclude_HW=coloured, lossy=clip.lossy)
    kept = np.zeros(clip.frames_THW.shape[1:], dtype=bool)
    y0, y1, x0, x1 = sector.box
    kept[y0:y1, x0:x1] = sector.mask_HW
    return clip.frames_THW, kept


def _kept_glyphs(path, glyphs_HW: np.ndarray) -> float:
    """Share of the planted glyph pixels that preprocessing keeps (inside the sector mask)."""
    kept = _kept_mask(path)[1]
    return float((kept & glyphs_HW).sum() / glyphs_HW.sum())


def _in_output(path, source_HW: np.ndarray, size: int) -> np.ndarray:
    """A source-frame mask carried to the output frame (crop to the sector box, centred square,
    resize), grown by 2 output pixels."""
    from PIL import Image
    from scipy import ndimage

    clip, _ = read_dicom(path)
    coloured = None if clip.chroma_HW is None else clip.chroma_HW > 40
    y0, y1, x0, x1 = find_sector(clip.frames_THW, clip.regions, exclude_HW=coloured,
                                 lossy=clip.lossy).box
    crop = source_HW[y0:y1, x0:x1]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop * 255
    out = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)) > 0
    return ndimage.binary_dilation(out, iterations=2)


def _letter_contrast(shown_THW: np.ndarray, word_HW: np.ndarray) -> float:
    """How far a blanked word's letter shapes stand out: inside the word's bounding box, the
    mean kept pixel on its glyph strokes against the mean on the pixels 3-4 pixels from a stroke
    (between and inside letters, beyond the blanking's margin; 1-2 pixels for small text). Blanking the glyphs alone leaves
    black letters on tissue (a large difference); a solid bar or box leaves none."""
    from scipy import ndimage

    ys, xs = np.nonzero(word_HW)
    in_box = np.zeros_like(word_HW)
    in_box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    ring = (ndimage.binary_dilation(word_HW, iterations=4)
            & ~ndimage.binary_dilation(word_HW, iterations=2) & in_box)
    if ring.sum() < 10:  # small text, letters packed tight: the 2 pixels next to the strokes
        ring = ndimage.binary_dilation(word_HW, iterations=2) & ~word_HW & in_box
    assert ring.sum() >= 10  # enough pixels for the mean to mean something
    return abs(float(shown_THW[:, word_HW].mean()) - float(shown_THW[:, ring].mean()))


def _ybr_with_text(path) -> np.ndarray:
    """pydicom's real JPEG-baseline YBR clip, names planted mid-image, written as JPEG again;
    returns each planted line's glyph mask."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    rgb = ds.pixel_array  # RGB
    planted, words = _mid_sector_text_and_words(rgb)
    write_us_dicom(path, planted, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit,
                   ident=Identity(patient_id="P5"))
    return words


@pytest.fixture(scope="module")
def planted(tmp_path_factory, module_split_key):
    """One export of planted-text clips, ingested once by the real CLI."""
    root = tmp_path_factory.mktemp("planted")
    dicom = root / "dicom"
    dicom.mkdir()
    moving = small_clip(24, 96, 128, seed=3).frames  # header-band text "ID 4711 DOE J" too
    frozen = np.repeat(moving[:1], 24, axis=0)
    counter = moving.copy()
    counter_glyphs = np.zeros(moving.shape[1:], dtype=bool)
    for t in range(len(counter)):  # a per-frame counter mid-sector
        planted_t, masks_t = _plant(counter[t:t + 1], [(f"{t + 10:02d}", 230, (56, 40))], 12)
        counter[t] = planted_t[0]
        counter_glyphs |= masks_t[230]
    words = _mid_sector_text_and_words(moving)[1]
    glyphs = np.logical_or.reduce(words)
    files = {
        "moving_native.dcm": ("native", _mid_sector_text(moving)),
        "moving_jpeg.dcm": ("jpeg", _mid_sector_text(moving)),
        "frozen_native.dcm": ("native", _mid_sector_text(frozen)),
        "frozen_jpeg.dcm": ("jpeg", _mid_sector_text(frozen)),
        "counter_jpeg.dcm": ("jpeg", counter),
    }
    for i, (name, (kind, frames)) in enumerate(sorted(files.items())):
        ident = Identity(patient_id=f"P{i}")
        if kind == "jpeg":
            write_us_dicom(dicom / name, grey_to_rgb(frames), photometric="YBR_FULL_422",
                           syntax=JPEGBaseline8Bit, ident=ident)
        else:
            write_us_dicom(dicom / name, frames, ident=ident)
    ybr_words = _ybr_with_text(dicom / "ybr_real.dcm")
    ybr_glyphs = np.logical_or.reduce(ybr_words)
    word_masks = {"moving_native.dcm": words, "moving_jpeg.dcm": words, "ybr_real.dcm": ybr_words}
    glyph_masks = {"moving_native.dcm": glyphs, "moving_jpeg.dcm": glyphs,
                   "ybr_real.dcm": ybr_glyphs, "counter_jpeg.dcm": counter_glyphs}
    labels = root / "cmr.csv"
    pd.DataFrame({"patient_id": [f"P{i}" for i in range(6)], "cmr_date": ["2023-05-08"] * 6,
                  "wma": [0] * 6}).to_csv(labels, index=False)
    out = root / "out"
    run = subprocess.run([sys.executable, "-m", "echocmr", "ingest", "--dicom", str(dicom),
                          "--labels", str(labels), "--out", str(out), "--workers", "2",
                          "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = pd.read_parquet(out / INGEST_REPORT_FILE).set_index("source")
    clips = {}
    for tar_name in sorted(n for n in os.listdir(out) if n.endswith(".tar")):
        with tarfile.open(out / tar_name) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".webm"):
                    clips[member.name[:-5]] = decode_webm(tar.extractfile(member).read())[0]
    return {"dicom": dicom, "report": report, "clips": clips, "stdout": run.stdout,
            "glyphs": glyph_masks, "words": word_masks}


def test_frozen_clips_are_rejected_not_kept_uncropped(planted):
    report = planted["report"]
    for name in ("frozen_native.dcm", "frozen_jpeg.dcm"):
        assert report.loc[name, "reason"] == "no_sector", report.loc[name].to_dict()
    kept = report[report["status"] == "kept"].index.tolist()
    assert sorted(kept) == ["counter_jpeg.dcm", "moving_jpeg.dcm", "moving_native.dcm",
                            "ybr_real.dcm"]
    assert "text detector (mask)" in planted["stdout"] and "rejected no_sector" in planted["stdout"]


def test_no_planted_text_survives_legibly(planted):
    report = planted["report"]
    detector = TextDetectorConfig(frames=6)
    kept = report.loc[report["status"] == "kept", "key"]
    for source, key in kept.drop("counter_jpeg.dcm").items():
        frames = planted["clips"][key]
        assert find_text(frames, detector).boxes == 0, source  # the detector reads nothing
        # Pixel comparison: every planted glyph pixel lies outside what preprocessing keeps.
        assert _kept_glyphs(planted["dicom"] / source, planted["glyphs"][source]) <= 0.01, source


def test_blanked_words_leave_no_letter_shapes(planted):
    """Blanking is not enough when the blanks are letter-shaped: where a word's still pixels join
    a large still area (pydicom's YBR clip), it must become a solid bar, not black letters."""
    report = planted["report"]
    detector = TextDetectorConfig(frames=6)
    for source, words in planted["words"].items():
        frames, kept = _kept_mask(planted["dicom"] / source)
        shown = frames * kept
        for text, word in zip(PLANTED, words, strict=True):
            assert _letter_contrast(shown, word) <= 4.0, (source, text)
        output = planted["clips"][report.loc[source, "key"]]
        assert find_text(output, detector).boxes == 0, source
        # Dark letters on a light ground: nothing is read where the words were. (Inverted
        # speckle elsewhere can give a chance read such as a "4" in tissue, which is not text.)
        where = _in_output(planted["dicom"] / source, np.logical_or.reduce(words), output.shape[1])
        inverted = find_text(255 - output, detector)
        assert not (inverted.mask_HW & where).any(), source


def _carried(path, frames_THW: np.ndarray) -> np.ndarray:
    """Source-sized frames carried to the output as preprocessing carries a clip (crop to the
    sector box, centred square, resize), without the sector mask or the codec."""
    from echocmr.ingest.preprocess import pad_to_square, resize_frames

    clip, _ = read_dicom(path)
    coloured = None if clip.chroma_HW is None else clip.chroma_HW > 40
    y0, y1, x0, x1 = find_sector(clip.frames_THW, clip.regions, exclude_HW=coloured,
                                 lossy=clip.lossy).box
    square, _ = pad_to_square(np.ascontiguousarray(frames_THW[:, y0:y1, x0:x1]))
    return resize_frames(square, PreprocessConfig().size)


def _letter_box_contrast(shown_THW: np.ndarray, glyphs_HW: np.ndarray) -> float:
    """How far letter shapes stand out in output pixels: the mean on the glyph strokes against the
    mean on the other pixels of each letter's own box (its counters and the gaps between its
    strokes: what makes a letter legible). Output glyphs are 1-2 pixels wide, so the ring of
    `_letter_contrast` (pixels 3-4 away, within the word's box) lands in the gaps between words,
    where a blanked bar's end meets tissue; a letter's own box does not."""
    from scipy import ndimage

    labels, _ = ndimage.label(glyphs_HW, structure=np.ones((3, 3), dtype=bool))
    boxes = np.zeros_like(glyphs_HW)
    for box in ndimage.find_objects(labels):
        boxes[box] = True
    inside = boxes & ~glyphs_HW
    assert inside.sum() >= 10  # enough pixels for the mean to mean something
    return abs(float(shown_THW[:, glyphs_HW].mean()) - float(shown_THW[:, inside].mean()))


def test_shipped_pixels_show_no_letter_shapes_where_words_were(planted):
    """`test_blanked_words_leave_no_letter_shapes` on what ships rather than on what
    preprocessing keeps: in the decoded output clip (resized, VP9-coded, text-detector masked),
    each blanked word's glyphs carried to the output against the rest of each letter's box. A
    pixel check, whatever the detector and its settings read there. The same measure on the
    planted frames carried without blanking sees the white and mid-grey words (it can fail; dim
    text at grey 40 is hardly brighter than the tissue around it, blanked or not)."""
    report = planted["report"]
    for source, words in planted["words"].items():
        path = planted["dicom"] / source
        output = planted["clips"][report.loc[source, "key"]]
        unblanked = _carried(path, read_dicom(path)[0].frames_THW)
        for text, level, word in zip(PLANTED, LEVELS, words, strict=True):
            glyphs = _carried(path, word[None].astype(np.uint8) * 255)[0] >= 128
            if level >= 128:
                assert _letter_box_contrast(unblanked, glyphs) >= 20.0, (source, text)
            assert _letter_box_contrast(output, glyphs) <= 4.0, (source, text)


def test_a_per_frame_counter_does_not_survive(planted):
    """A frame number mid-sector changes every frame, so still-overlay masking cannot see it;
    changing-overlay masking (`ingest.sector.changing_overlay_mask`) must blank it."""
    key = planted["report"].loc["counter_jpeg.dcm", "key"]
    frames = planted["clips"][key]
    every = TextDetectorConfig(frames=len(frames))  # every shipped frame, not a sample
    assert find_text(frames, every).boxes == 0
    dicom = planted["dicom"] / "counter_jpeg.dcm"
    assert _kept_glyphs(dicom, planted["glyphs"]["counter_jpeg.dcm"]) <= 0.01


def test_header_band_text_never_ships(planted):
    """small_clip's 'ID 4711 / DOE J' header sits outside the fan: the crop removes it."""
    for key, frames in planted["clips"].items():
        assert frames.shape[1:] == (PreprocessConfig().size,) * 2, key
    report = planted["report"]
    assert set(report["status"]) == {"kept", "rejected"}


def test_detector_action_reject_rejects_a_clip_with_text(tmp_path, split_key):
    from echocmr.ingest.config import IngestConfig
    from echocmr.ingest.job import run_ingest

    dicom = tmp_path / "dicom"
    dicom.mkdir()
    moving = small_clip(20, 96, 128, seed=4, overlays=False).frames
    counter = moving.copy()
    for t in range(len(counter)):
        counter[t] = _plant(counter[t:t + 1], [(f"DOE {t:02d}", 200, (40, 50))], 14)[0][0]
    write_us_dicom(dicom / "counter.dcm", counter, ident=Identity(patient_id="P0"))
    pd.DataFrame({"patient_id": ["P0"], "cmr_date": ["2023-05-08"], "wma": [0]}).to_csv(
        tmp_path / "cmr.csv", index=False)
    # Overlay masking off: the detector is the only defence, and it must refuse the clip.
    config = IngestConfig(text_detector=TextDetectorConfig(action="reject"),
                          preprocess=PreprocessConfig(sector=SectorConfig(
                              mask_static_overlays=False)))
    summary = run_ingest(dicom, tmp_path / "cmr.csv", tmp_path / "out", config=config,
                         progress=False, in_process=True)
    assert summary.rejected == {"burned_in_text": 1} and summary.kept == 0
    report = pd.read_parquet(tmp_path / "out" / INGEST_REPORT_FILE)
    assert "DOE" not in report["detail"][0]  # what was read is never written
    # the detector reads every frame (composites, follow-ups), not only the sampled ones
    assert re.search(r"text box\(es\) in the clip's \d+ output frames$", report["detail"][0]), \
        report["detail"][0]


# -- keys -------------------------------------------------------------------------------------


def _tiny_export(root) -> tuple[str, str]:
    dicom = os.path.join(root, "dicom")
    os.makedirs(dicom)
    write_us_dicom(os.path.join(dicom, "a.dcm"), small_clip(16, 48, 64, seed=1).frames,
                   ident=Identity(patient_id="P0"))
    labels = os.path.join(root, "cmr.csv")
    pd.DataFrame({"patient_id": ["P0"], "cmr_date": ["2023-05-08"], "wma": [1]}).to_csv(
        labels, index=False)
    return dicom, labels


def test_demo_key_is_refused_for_real_data_unless_the_flag_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("ECHOCMR_SPLIT_KEY", raising=False)  # a user who never set one
    dicom, labels = _tiny_export(tmp_path)
    argv = [sys.executable, "-m", "echocmr", "ingest", "--dicom", dicom, "--labels", labels,
            "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "ECHOCMR_SPLIT_KEY"}
    refused = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "ECHOCMR_SPLIT_KEY" in refused.stderr and "new split" in refused.stderr
    assert "--allow-public-demo-key" in refused.stderr
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    allowed = subprocess.run(argv + ["--allow-public-demo-key"], capture_output=True, text=True,
                             env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert "patient hashes are reversible" in allowed.stdout


def test_a_synth_cohort_is_recognised_and_a_copied_marker_is_not(tmp_path):
    import shutil

    from echocmr.ingest.splits import SYNTHETIC_MARKER, is_synthetic_cohort
    from echocmr.ingest.synth.generate import generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, patients=1, seed=1, workers=1, progress=False)
    assert is_synthetic_cohort(cohort / "dicom", cohort / "cmr_labels.parquet")
    assert is_synthetic_cohort(cohort / "dicom", cohort / "cmr_labels.csv")
    dicom, labels = _tiny_export(tmp_path / "real")
    shutil.copy(cohort / SYNTHETIC_MARKER, os.path.dirname(labels))
    assert not is_synthetic_cohort(dicom, labels)  # the digest does not match the real table
    assert not is_synthetic_cohort(tmp_path / "real" / "dicom", cohort / "cmr_labels.csv")


# -- every input accounted for ----------------------------------------------------------------


def test_every_path_met_gets_a_row_and_reason_codes_are_right(tmp_path, split_key):
    import pydicom

    dicom, labels = _tiny_export(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_us_dicom(elsewhere / "linked.dcm", small_clip(16, 48, 64, seed=2).frames,
                   ident=Identity(patient_id="P0"))
    os.symlink(elsewhere, os.path.join(dicom, "via_link"))  # a good clip behind a dir symlink
    os.symlink(dicom, os.path.join(dicom, "loop"))  # back to the top
    os.symlink("nowhere", os.path.join(dicom, "dangling"))
    os.mkfifo(os.path.join(dicom, "fifo"))
    good = os.path.join(dicom, "a.dcm")

    def variant(name, edit):
        ds = pydicom.dcmread(good)
        edit(ds)
        ds.save_as(os.path.join(dicom, name))

    from pydicom.dataelem import DataElement

    # A FrameTime that is not a number (stored as LO: pydicom refuses to write a bad DS).
    variant("frametime.dcm", lambda ds: ds.__setitem__(0x00181063,
                                                       DataElement(0x00181063, "LO", "fast")))
    variant("zero_frames.dcm", lambda ds: setattr(ds, "NumberOfFrames", 0))
    variant("huge.dcm", lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    from pydicom.fileset import FileSet

    fs = FileSet()
    fs.add(good)
    fs.write(tmp_path / "fs")
    os.replace(tmp_path / "fs" / "DICOMDIR", os.path.join(dicom, "DICOMDIR"))

    blocked = tmp_path / "blocked.txt"
    blocked.write_text("a file, not a directory")
    run = subprocess.run([sys.executable, "-m", "echocmr", "ingest", "--dicom", dicom,
                          "--labels", labels, "--out", str(blocked / "out"), "--no-progress"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "echocmr", "ingest", "--dicom", dicom,
                          "--labels", labels, "--out", str(out), "--no-progress",
                          "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = pd.read_parquet(out / INGEST_REPORT_FILE).set_index("source")
    reasons = {k: v if isinstance(v, str) else None for k, v in report["reason"].items()}
    assert reasons == {
        "DICOMDIR": "not_image",
        "a.dcm": None,
        "dangling": "broken_symlink",
        "fifo": "not_regular_file",
        "frametime.dcm": "duplicate_instance",  # read at the target rate; same SOP UID as a.dcm
        "huge.dcm": "bad_header",
        "loop": "symlink_loop",
        "via_link/linked.dcm": None,
        "zero_frames.dcm": "bad_header",
    }
    assert "rejected symlink_loop" in run.stdout and "rejected not_regular_file" in run.stdout


def test_an_unreadable_directory_gets_a_row(tmp_path, monkeypatch):
    from echocmr.ingest.inputs import scan_inputs

    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "f.dcm").write_bytes(b"x")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "g.dcm").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path):  # root reads every directory: simulate the permission error
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_inputs(str(tmp_path))
    assert scan.files == ["ok/f.dcm"]
    assert [(r.source, r.reason) for r in scan.skipped] == [("locked", "unreadable_directory")]


def _damaged_jpeg(path, frames: np.ndarray, k: int, ident: Identity, *,
                  turbo_blind: bool = False) -> None:
    """A JPEG-baseline file whose frame ``k`` has a run of zeroed bytes in its entropy-coded
    data: libjpeg (through Pillow) decodes it to garbage without an error. ``turbo_blind``: a
    damage libjpeg-turbo's strict mode decodes without a warning and pylibjpeg-libjpeg refuses
    (found by trying runs in a fixed order; about 1 in 14 random runs is such a damage)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    write_us_dicom(path, grey_to_rgb(frames), photometric="YBR_FULL_422",
                   syntax=JPEGBaseline8Bit, ident=ident)
    ds = pydicom.dcmread(path)
    codestreams = [bytearray(f) for f in generate_frames(ds.PixelData,
                                                          number_of_frames=len(frames))]
    sos = codestreams[k].find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(codestreams[k][sos + 2:sos + 4], "big")
    if turbo_blind:
        codestreams[k] = _turbo_blind_damage(bytes(codestreams[k]), start)
    else:
        mid = (start + len(codestreams[k]) - 2) // 2
        codestreams[k][mid - 40:mid + 40] = bytes(80)
    ds.PixelData = encapsulate([bytes(f) for f in codestreams])
    ds.save_as(path)


def _turbo_blind_damage(codestream: bytes, start: int) -> bytearray:
    import libjpeg
    import simplejpeg

    rng = np.random.default_rng(0)
    for _ in range(2000):
        damaged = bytearray(codestream)
        length = int(rng.choice([4, 16, 80]))
        at = int(rng.integers(start, len(damaged) - 2 - length))
        damaged[at:at + length] = rng.integers(0, 255, length, dtype=np.uint8).tobytes() \
            .replace(b"\xff", b"\x00")
        try:
            simplejpeg.decode_jpeg(bytes(damaged), colorspace="GRAY", strict=True)
        except ValueError:
            continue
        try:
            libjpeg.decode(bytes(damaged))
        except Exception:
            if damaged != bytearray(codestream):
                return damaged
    raise AssertionError("no damage found that only pylibjpeg-libjpeg sees")


def test_one_corrupt_jpeg_frame_is_decode_failed_and_colour_doppler_still_is(tmp_path, split_key):
    """A run of zeroed bytes in one frame's entropy-coded data: libjpeg (through Pillow) decodes
    it to garbage without an error, which could read as colour Doppler or be shipped."""
    from _ingest_fixtures import add_colour_doppler

    dicom = tmp_path / "dicom"
    dicom.mkdir()
    frames = small_clip(24, 96, 128, seed=3).frames
    k = 10  # a run libjpeg detects: not every damaged run is (baseline JPEG has no checksum)
    _damaged_jpeg(dicom / "corrupt.dcm", frames, k, Identity(patient_id="P0"))
    write_us_dicom(dicom / "doppler.dcm",
                   add_colour_doppler(grey_to_rgb(frames), (40, 70, 50, 80)),
                   photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit,
                   ident=Identity(patient_id="P1"))
    write_us_dicom(dicom / "good.dcm", grey_to_rgb(frames), photometric="YBR_FULL_422",
                   syntax=JPEGBaseline8Bit, ident=Identity(patient_id="P2"))
    labels = tmp_path / "cmr.csv"
    pd.DataFrame({"patient_id": ["P0", "P1", "P2"], "cmr_date": ["2023-05-08"] * 3,
                  "wma": [0] * 3}).to_csv(labels, index=False)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "echocmr", "ingest", "--dicom", str(dicom),
                          "--labels", str(labels), "--out", str(out), "--workers", "1",
                          "--no-progress"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = pd.read_parquet(out / INGEST_REPORT_FILE).set_index("source")
    reasons = {k: v if isinstance(v, str) else None for k, v in report["reason"].items()}
    assert reasons == {"corrupt.dcm": "decode_failed", "doppler.dcm": "colour_doppler",
                       "good.dcm": None}
    assert f"frame {k}" in report.loc["corrupt.dcm", "detail"]


def test_the_strict_jpeg_check_can_be_switched_off(tmp_path):
    """``preprocess.read.strict_jpeg_check_frames``: every frame is decoded strictly by
    libjpeg-turbo whatever the setting; the second decoder (pylibjpeg-libjpeg) on sampled frames
    catches a damage turbo decodes without a warning. 0 skips it: nothing else sees that damage
    (the marker structure is sound), and the clip is prepared from the garbage frame."""
    from echocmr.ingest.config import ReadConfig
    from echocmr.ingest.preprocess import preprocess_dicom
    from echocmr.ingest.reasons import RejectedInput

    frames = small_clip(24, 96, 128, seed=3).frames
    off = PreprocessConfig(read=ReadConfig(strict_jpeg_check_frames=0))
    seen = tmp_path / "seen.dcm"  # zeroed bytes: turbo's strict mode sees it in any frame
    _damaged_jpeg(seen, frames, 10, Identity(patient_id="P0"))
    with pytest.raises(RejectedInput, match="frame 10: corrupt codestream .Corrupt JPEG data"):
        preprocess_dicom(seen, off)

    path = tmp_path / "corrupt.dcm"
    _damaged_jpeg(path, frames, 10, Identity(patient_id="P0"), turbo_blind=True)
    with pytest.raises(RejectedInput) as caught:
        preprocess_dicom(path, PreprocessConfig())
    assert caught.value.reason == "decode_failed" and "frame 10" in caught.value.detail
    with pytest.raises(RejectedInput):  # every frame
        preprocess_dicom(path, PreprocessConfig(read=ReadConfig(strict_jpeg_check_frames=24)))
    preprocess_dicom(path, PreprocessConfig(read=ReadConfig(strict_jpeg_check_frames=3)))  # 0, 12, 23
    clip = preprocess_dicom(path, off)  # shipped: nothing else notices
    assert clip.n_frames == 24
    clean = tmp_path / "clean.dcm"
    write_us_dicom(clean, grey_to_rgb(frames), photometric="YBR_FULL_422",
                   syntax=JPEGBaseline8Bit, ident=Identity(patient_id="P0"))
    damaged = read_dicom(path, off.read)[0].frames_THW
    good = read_dicom(clean, off.read)[0].frames_THW
    assert np.abs(damaged[10].astype(int) - good[10]).max() > 50  # frame 10 decoded as garbage
    assert np.array_equal(np.delete(damaged, 10, axis=0), np.delete(good, 10, axis=0))
    with pytest.raises(ValueError, match="strict_jpeg_check_frames"):
        ReadConfig(strict_jpeg_check_frames=-1)
