"""A hostile site's export for the output-channel audit (`tests/test_privacy_channels.py`).

Identifiers are planted everywhere a site can put them: patient-named folders and file names
(spaces, ``^``, a Latin-1 byte that is not UTF-8), every free-text DICOM element (patient name
and IDs, institution, descriptions, physicians, operators, a private tag), a views table with a
free-text column and a free-text view cell, a CMR table with free-text columns, and files that
fail to decode, some with an identifier in the very element that fails (so the error paths and
their messages run). `needles` expands every planted string into the forms a leak could take
(upper and lower case, the parts of a ``^`` name, ``^`` as a space, the report's ``\\xNN``
escape of a byte that is not UTF-8); `find_needles` searches bytes for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from echocmr.ingest.synth.small import small_clip

from _ingest_fixtures import Identity, write_us_dicom

# What one patient's files carry (two patients: an ASCII one and one whose folder is Latin-1).
NAME, MRN, DOB = "SMITH^JOHN", "MRN4711", "19650304"
NAME2, MRN2 = "MUELLER^HANNA", "MRN4712"
FREE_TEXT = {  # DICOM keyword -> a planted value (both patients carry these)
    "OtherPatientIDs": "OTHERID8842",
    "InstitutionName": "ST QUIRINUS HOSPITAL",
    "StudyDescription": "ECHO FOR QUIRKE FOLLOWUP",
    "SeriesDescription": "SERIES ZEBEDEE",
    "ReferringPhysicianName": "WHITTAKER^ALBAN",
    "OperatorsName": "OPERATOR^VELMA",
    "PerformingPhysicianName": "PERFORMER^ODALYS",
    "AccessionNumber": "ACC99317",
}
PRIVATE_TEXT = "PRIVNOTE XANTHE"
STUDY_DATE, CMR_DATE = "20230510", "2023-05-07"
VIEW_NOTE = "sonographer note KESTREL"
LABEL_NOTE = "called back, see letter from LAVINIA"
FOLDER = f"{NAME} {MRN}"  # "SMITH^JOHN MRN4711"
FOLDER2 = b"M\xfcller^Hanna " + MRN2.encode()  # Latin-1 bytes, not UTF-8
PLANTED = [NAME, MRN, DOB, NAME2, MRN2, *FREE_TEXT.values(), PRIVATE_TEXT, STUDY_DATE, CMR_DATE,
           "1965-03-04", VIEW_NOTE, LABEL_NOTE, FOLDER]


# Words of the planted strings too common to be evidence of a leak by themselves.
COMMON_WORDS = {b"follow", b"followup", b"series", b"called", b"back,", b"letter", b"sonographer",
                b"hospital", b"from", b"note", b"echo", b"see", b"operator", b"performer"}


def needles(strings: list[str] = PLANTED) -> set[bytes]:
    """Every form of the planted strings a leak could take (module docstring)."""
    out: set[str] = set()
    for s in strings:
        forms = {s, s.replace("^", " "), *s.split("^"), *s.replace("^", " ").split(" ")}
        for form in forms:
            if len(form) >= 5 and not form.isdigit() or form.startswith("MRN"):
                out |= {form, form.upper(), form.lower()}
    # dates and numbers only whole (a bare "2023" is any log's year)
    out |= {s for s in strings if s.isdigit()}
    found = {s.encode() for s in out}
    found |= {b"M\xfcller", "Müller".encode(), b"M\\xfcller", b"Hanna", b"HANNA", b"JOHN",
              b"john", b"John"}
    return {n for n in found if n.lower() not in COMMON_WORDS}


def find_needles(blob: bytes, wanted: set[bytes] | None = None) -> list[str]:
    """The needles found in ``blob`` (decoded for the message)."""
    return sorted({n.decode("latin-1") for n in (wanted or needles()) if n in blob})


def scan_tree(root: Path | str, *, skip=()) -> dict[str, list[str]]:
    """Needles per file under ``root`` (names included), ``skip``: paths to leave out."""
    hits: dict[str, list[str]] = {}
    wanted = needles()
    root = os.fsencode(str(root))
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            if any(path.startswith(os.fsencode(str(s))) for s in skip):
                continue
            rel = os.path.relpath(path, root)
            found = find_needles(rel, wanted)
            if name in files and os.path.isfile(path) and not os.path.islink(path):
                try:
                    found += find_needles(open(path, "rb").read(), wanted)
                except OSError:
                    pass
            if found:
                hits[rel.decode("utf-8", "backslashreplace")] = sorted(set(found))
    return hits


@dataclass
class HostileExport:
    dicom_dir: Path
    labels: Path
    views: Path
    config: Path
    good: list[Path] = field(default_factory=list)  # files that ship a clip
    bad: list[Path] = field(default_factory=list)  # odd files, an identifier in each (all of
    # the first patient's study: the first good file and these are one study)


def _plant(path: Path, *, name: str, mrn: str, **raw: str) -> None:
    """Every free-text element and a private tag, into the file at ``path``; ``raw``: elements
    written as given, however invalid for their VR (a hostile site's header)."""
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID = name, mrn
    for keyword, value in FREE_TEXT.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0009, "ACME HOSTILE", create=True)
    block.add_new(0x01, "LO", PRIVATE_TEXT)
    block.add_new(0x02, "LT", f"{name} {mrn} DOB {DOB}")
    for keyword, value in raw.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        vr = pydicom.datadict.dictionary_VR(tag)
        ds[tag] = pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(tag), vr, len(value.encode()), value.encode(), 0, False, True)
    ds.save_as(path, enforce_file_format=True)


def write_hostile_export(root: Path, *, n_frames: int = 16, shape=(48, 64)) -> HostileExport:
    """Two patients' echo studies (one clip each that ships) and a file of every failing kind."""
    root = Path(root)
    dicom = root / "export"
    one = dicom / FOLDER / "study 1"
    two = Path(os.fsdecode(os.fsencode(str(dicom)) + b"/" + FOLDER2)) / "study 1"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    out = HostileExport(dicom_dir=dicom, labels=root / "cmr labels.csv",
                        views=root / "views.csv", config=root / "ingest.yaml")
    rows, views = [], []
    for n, (folder, name, mrn, fname) in enumerate((
            (one, NAME, MRN, f"{NAME.replace('^', ' ')} DOB 1965-03-04.dcm"),
            (two, NAME2, MRN2, os.fsdecode(b"Hanna M\xfcller.dcm")))):
        study_uid = generate_uid()
        ident = Identity(patient_id=mrn, patient_name=name, birth_date=DOB,
                         accession=FREE_TEXT["AccessionNumber"],
                         institution=FREE_TEXT["InstitutionName"], study_date=STUDY_DATE,
                         study_uid=study_uid)
        path = folder / fname
        write_us_dicom(path, small_clip(n_frames, *shape, seed=3 + n).frames, ident=ident)
        _plant(path, name=name, mrn=mrn)
        out.good.append(path)
        views.append({"sop_instance_uid": ident.sop_uid, "view": "A4C", "note": VIEW_NOTE})
        rows.append({"patient_id": mrn, "cmr_id": f"CMR{n}", "cmr_date": CMR_DATE,
                     "field_strength_t": 1.5, "wma": float(n), "lge": 0.0,
                     "t1_native_ms": 1100.0, "t2_ms": 50.0, "ecv_pct": 28.0,
                     "comment": f"{name} {mrn} {LABEL_NOTE}",
                     "referrer": FREE_TEXT["ReferringPhysicianName"]})
        if n == 0:
            good, study_one = path.read_bytes(), study_uid
    # Files that fail, each in a patient folder and named after the patient.
    bad = {
        f"{NAME} truncated.dcm": good[: len(good) * 2 // 3],
        f"{MRN} random.dcm": np.random.default_rng(0).bytes(5000),
        f"{NAME} not dicom.txt": f"{NAME} {MRN} DOB {DOB}\n".encode(),
    }
    for fname, data in bad.items():
        (one / fname).write_bytes(data)
        out.bad.append(one / fname)
    # Identifiers in the very elements whose parsing fails (values invalid for their VR).
    for fname, raw in ((f"{NAME} frame time.dcm", {"FrameTime": f"{NAME} {MRN}"}),
                       (f"{NAME} frames.dcm", {"NumberOfFrames": MRN}),
                       (f"{NAME} rows.dcm", {"Rows": "SMITH"}),
                       (f"{NAME} spacing.dcm", {"PixelSpacing": f"{MRN}\\{NAME}"})):
        path = one / fname
        ident = Identity(patient_id=MRN, patient_name=NAME, birth_date=DOB,
                         study_date=STUDY_DATE, study_uid=study_one)
        write_us_dicom(path, small_clip(n_frames, *shape, seed=9).frames, ident=ident)
        _plant(path, name=NAME, mrn=MRN, **raw)
        out.bad.append(path)
    # A transfer syntax no one registered, the patient in its UID (same length, so the file
    # meta's group length holds).
    path = one / f"{NAME} syntax.dcm"
    write_us_dicom(path, small_clip(n_frames, *shape, seed=10).frames,
                   ident=Identity(patient_id=MRN, patient_name=NAME, study_date=STUDY_DATE,
                                  study_uid=study_one))
    data = path.read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\0") == 1
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.MRN4711SMITH"))
    out.bad.append(path)
    # A JPEG clip whose codestream is corrupt after its header.
    path = one / f"{NAME} jpeg.dcm"
    write_us_dicom(path, small_clip(n_frames, *shape, seed=11).frames, syntax=JPEGBaseline8Bit,
                   ident=Identity(patient_id=MRN, patient_name=NAME, study_date=STUDY_DATE,
                                  study_uid=study_one))
    _plant(path, name=NAME, mrn=MRN)
    data = bytearray(path.read_bytes())
    start = data.rfind(b"\xff\xda")  # the last frame's scan: garble its entropy-coded data
    data[start + 20:start + 200] = bytes(range(180))
    path.write_bytes(bytes(data))
    out.bad.append(path)
    views.append({"sop_instance_uid": generate_uid(), "view": f"A4C {NAME} {MRN} DOB 1965-03-04",
                  "note": VIEW_NOTE})
    pd.DataFrame(views).to_csv(out.views, index=False)
    pd.DataFrame(rows).to_csv(out.labels, index=False)
    out.config.write_text("text_detector:\n  enabled: false\nviews:\n  unknown: unknown\n")
    return out
