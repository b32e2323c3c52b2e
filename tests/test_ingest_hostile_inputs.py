"""Inputs that broke ingest, through the real ``echocmr ingest`` in a subprocess.

- File and folder names that are not UTF-8 (an old export's Latin-1 ``ü``), or hold a newline:
  every path gets its report row, the good files ship, and no text of the names reaches the
  shards or the command's output.
- A deflated-syntax file whose few hundred KB inflate to 512 MiB (declared by its header, or
  hidden behind a small header), and headers that declare more pixel data than
  ``preprocess.read.max_pixel_mb``: ``bad_header`` before anything is inflated or decoded, with
  the job's peak memory (``RUSAGE_CHILDREN`` of a wrapper around the command) no higher than a run
  without them, plus a margin far below what the data would take.
- BitsAllocated 12 (or BitsStored above BitsAllocated) is ``bad_header``, not ``decode_failed``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from echocmr.shards.format import INGEST_REPORT_FILE

from _ingest_fixtures import shipped_files, write_cohort, write_us_dicom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024


def _ingest(cohort, out: str, tmp_path, config: str = "") -> tuple[int, str, int]:
    """``echocmr ingest`` in a subprocess (one worker); returns (rc, stdout + stderr, peak RSS of
    the command and its workers in KiB)."""
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("text_detector: {enabled: false}\n" + config)
    cmd = [sys.executable, "-m", "echocmr", "ingest", "--dicom", cohort.dicom_dir, "--labels",
           cohort.labels_path, "--out", out, "--site", "site_a", "--workers", "1",
           "--config", str(cfg), "--no-progress"]
    # A wrapper whose only child is the command: its RUSAGE_CHILDREN peak is the command's own
    # or a worker's (the pool joins its workers), whichever is larger.
    wrapper = ("import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], "
               "capture_output=True); print(json.dumps([p.returncode, (p.stdout + p.stderr)"
               ".decode('utf-8', 'backslashreplace'), resource.getrusage("
               "resource.RUSAGE_CHILDREN).ru_maxrss]))")
    env = {**os.environ, "PYTHONPATH": REPO, "ECHOCMR_SPLIT_KEY": "hostile-inputs-test-key"}
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, check=True,
                          capture_output=True, timeout=600)
    rc, output, peak_kib = json.loads(done.stdout)
    return rc, output, peak_kib


def _report(out: str) -> dict[str, tuple[str, str | None, str | None]]:
    rows = pq.read_table(os.path.join(out, INGEST_REPORT_FILE)).to_pylist()
    return {row["source"]: (row["status"], row["reason"], row["detail"]) for row in rows}


def _copy_as_new_instance(src: str, dst: bytes) -> None:
    """``src`` saved at the byte path ``dst`` as another instance of the same study."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as f:
        ds.save_as(f, enforce_file_format=True)


def test_names_that_are_not_utf8_get_report_rows_and_ship_nothing_of_themselves(tmp_path):
    cohort = write_cohort(tmp_path / "export", n_patients=2, clips_per_study=1, n_frames=16,
                          shape=(48, 64), bad_files=False)
    root = os.fsencode(cohort.dicom_dir)
    folders = [os.fsencode(f) for f in cohort.patients.values()]
    first = os.path.join(cohort.dicom_dir, cohort.patients["MRN07300"], "study1", "clip0.dcm")
    second = os.path.join(cohort.dicom_dir, cohort.patients["MRN07301"], "study1", "clip0.dcm")
    latin1 = root + b"/" + folders[0] + b"/study1/M\xfcller^Hans.dcm"
    _copy_as_new_instance(first, latin1)
    in_latin1_folder = root + b"/Fran\xe7ois B\xe9rub\xe9/clip.dcm"
    _copy_as_new_instance(second, in_latin1_folder)
    newline = root + b"/" + folders[1] + b"/study1/line\nbreak.dcm"
    _copy_as_new_instance(second, newline)
    notes = root + b"/" + folders[0] + b"/notes \xff\xfe J\xf6rg.txt"
    with open(notes, "wb") as f:
        f.write("Befund: Jörg Müller, geb. 1965".encode("latin-1"))

    out = str(tmp_path / "set")
    rc, output, _ = _ingest(cohort, out, tmp_path)
    assert rc == 0, output[-3000:]
    report = _report(out)
    a, b = cohort.patients["MRN07300"], cohort.patients["MRN07301"]
    expected = {
        f"{a}/study1/clip0.dcm": ("kept", None),
        f"{a}/study1/M\\xfcller^Hans.dcm": ("kept", None),  # undecodable bytes as \xNN
        f"{a}/notes \\xff\\xfe J\\xf6rg.txt": ("rejected", "not_dicom"),
        f"{b}/study1/clip0.dcm": ("kept", None),
        f"{b}/study1/line\nbreak.dcm": ("kept", None),
        "Fran\\xe7ois B\\xe9rub\\xe9/clip.dcm": ("kept", None),
    }
    assert {s: (st, r) for s, (st, r, _) in report.items()} == expected

    # Nothing of the names in what ships, nor in what the command printed.
    needles = [b"M\xfcller", b"Hans", "Müller".encode(), b"Fran\xe7ois", "François".encode(),
               b"Fran\\xe7ois", b"J\xf6rg", "Jörg".encode(), b"line\nbreak", b"notes"]
    for name in shipped_files(out):
        data = open(os.path.join(out, name), "rb").read()
        if name.endswith(".parquet"):
            data += pd.read_parquet(os.path.join(out, name)).to_csv().encode()
        assert not [n for n in needles if n in data], name
    assert not [n for n in needles if n.decode("latin-1") in output or
                n.decode("utf-8", "backslashreplace") in output], output
    assert not os.path.exists(os.path.join(out, ".work"))


def _deflated_bomb(path: str, *, rows: int, cols: int, frames: int, pixel_mib: int) -> None:
    """A real US header (``rows`` x ``cols`` x ``frames`` declared) in the deflated syntax whose
    Pixel Data element holds ``pixel_mib`` MiB of zeros: a few hundred KB on disk. The zeros are
    one deflate segment of 1 MiB, repeated (a full flush makes each segment stand alone), so the
    file is made without ever holding its inflated data."""
    write_us_dicom(path, np.zeros((16, 8, 8), np.uint8), syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    f = io.BytesIO(raw)
    read_preamble(f, False)
    _read_file_meta_info(f)
    header = zlib.decompress(raw[f.tell():], -zlib.MAX_WBITS)
    pixel_element = b"\xe0\x7f\x10\x00OB\x00\x00" + (pixel_mib * MiB).to_bytes(4, "little")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflate.compress(header + pixel_element) + deflate.flush(zlib.Z_FULL_FLUSH)
    segment = deflate.compress(bytes(MiB)) + deflate.flush(zlib.Z_FULL_FLUSH)
    with open(path, "wb") as out:
        out.write(raw[:f.tell()] + head + segment * pixel_mib + deflate.flush())


def _with_header(src: str, dst: str, syntax=None, **values) -> None:
    """``src`` as another instance, with header ``values`` and transfer ``syntax`` changed."""
    ds = pydicom.dcmread(src)
    for name, value in values.items():
        setattr(ds, name, value)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst, enforce_file_format=True)


def test_headers_past_the_pixel_budget_are_refused_before_anything_is_inflated(tmp_path):
    cohort = write_cohort(tmp_path / "export", n_patients=2, clips_per_study=1, n_frames=16,
                          shape=(48, 64), bad_files=False)
    budget = "preprocess: {read: {max_pixel_mb: 64}}\n"
    baseline = str(tmp_path / "baseline")
    rc, output, baseline_kib = _ingest(cohort, baseline, tmp_path, budget)
    assert rc == 0, output[-3000:]

    folder = os.path.join(cohort.dicom_dir, cohort.patients["MRN07300"], "study1")
    clip = os.path.join(folder, "clip0.dcm")
    bombs = {"declares_512mib.dcm": dict(rows=1024, cols=1024, frames=512, pixel_mib=512),
             "hides_512mib.dcm": dict(rows=8, cols=8, frames=16, pixel_mib=512)}
    for name, spec in bombs.items():
        _deflated_bomb(os.path.join(folder, name), **spec)
        assert os.path.getsize(os.path.join(folder, name)) < 700_000
    # A deflated file inside the budget is read as before.
    _with_header(clip, os.path.join(folder, "deflated_ok.dcm"),
                 syntax=DeflatedExplicitVRLittleEndian)
    # Uncompressed headers: over the budget (the data is not there: the budget goes first),
    # and bit depths DICOM does not allow.
    _with_header(clip, os.path.join(folder, "declares_2gib.dcm"), NumberOfFrames=699051)
    _with_header(clip, os.path.join(folder, "bits_allocated_12.dcm"), BitsAllocated=12)
    _with_header(clip, os.path.join(folder, "bits_stored_9.dcm"), BitsStored=9, HighBit=8)

    out = str(tmp_path / "set")
    rc, output, peak_kib = _ingest(cohort, out, tmp_path, budget)
    assert rc == 0, output[-3000:]
    report = _report(out)
    rel = os.path.relpath(folder, cohort.dicom_dir)
    outcome = {os.path.basename(s): (st, r) for s, (st, r, _) in report.items()
               if s.startswith(rel)}
    assert outcome == {
        "clip0.dcm": ("kept", None), "deflated_ok.dcm": ("kept", None),
        "declares_512mib.dcm": ("rejected", "bad_header"),
        "hides_512mib.dcm": ("rejected", "bad_header"),
        "declares_2gib.dcm": ("rejected", "bad_header"),
        "bits_allocated_12.dcm": ("rejected", "bad_header"),
        "bits_stored_9.dcm": ("rejected", "bad_header"),
    }
    detail = {os.path.basename(s): d for s, (_, _, d) in report.items()}
    assert "declares 512.0 MB of pixel data" in detail["declares_512mib.dcm"]
    assert "max_pixel_mb 64" in detail["declares_512mib.dcm"]
    assert "inflates past" in detail["hides_512mib.dcm"]
    assert "declares 2048.0 MB" in detail["declares_2gib.dcm"]
    assert "BitsAllocated is 12" in detail["bits_allocated_12.dcm"]
    assert "BitsStored is 9" in detail["bits_stored_9.dcm"]
    # 512 MiB inflated would show; the two runs differ by the bounded header and zlib's buffers.
    assert peak_kib - baseline_kib < 64 * 1024, (peak_kib, baseline_kib)


def test_a_budget_that_is_not_positive_is_a_config_error():
    from echocmr.config import ConfigError
    from echocmr.ingest.config import ReadConfig

    for value in (0, -1.0):
        with pytest.raises(ConfigError, match="max_pixel_mb must be > 0"):
            ReadConfig(max_pixel_mb=value)


def test_a_deflated_header_longer_than_the_first_reads_is_still_checked(tmp_path):
    """The header is parsed from a growing prefix of the inflated data: a 300 KB element before
    the pixel data takes several rounds, and the verdict is the same as for a short header."""
    from echocmr.ingest.config import ReadConfig
    from echocmr.ingest.dicom_header import check_cine, load_dataset
    from echocmr.ingest.reasons import RejectedInput

    path = str(tmp_path / "long_header.dcm")
    write_us_dicom(path, np.zeros((16, 8, 8), np.uint8), syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "x")  # a private block, then a long private value
    ds.add_new(0x00091011, "OB", bytes(range(256)) * 1200)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    small = ReadConfig(max_pixel_mb=0.0005)  # 524 bytes; the clip declares 1024
    with pytest.raises(RejectedInput, match="declares 0.0 MB") as refused:
        load_dataset(path, small)
    assert refused.value.reason == "bad_header"
    check_cine(load_dataset(path, ReadConfig()), ReadConfig())  # within the default: read

    data = bytearray(open(path, "rb").read())
    data[-2000:-1000] = bytes(1000)  # a run of the deflated stream zeroed
    open(path, "wb").write(bytes(data))
    with pytest.raises(RejectedInput) as broken:
        load_dataset(path, ReadConfig())
    assert broken.value.reason == "unreadable" and "deflated dataset is corrupt" in str(broken.value)
