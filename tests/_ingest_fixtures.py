"""Small, real DICOM files for the ingest tests, made in the test (no downloads).

The frames come from the synthetic cohort's phantom (`ingest.synth.small.small_clip`: a tiny fan
with a beating heart, burned-in text, a marker inside the fan and an ECG trace below it, and masks
saying where each is). `write_us_dicom` stores frames as an ultrasound multi-frame
object in any transfer syntax / photometric interpretation the tests need, through the synthetic
cohort's writer (`ingest.synth.dicom_writer`); `write_cohort` lays out a small hospital-style
export (patient-named folders) plus a CMR table, with every PHI string recorded so a test can
search the outputs for them.
"""

from __future__ import annotations

import os
import tarfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echocmr.ingest.synth.dicom_writer import (
    DicomIdentity,
    base_dataset,
    region,
    set_image_pixel_module,
    write_pixels,
    write_text_sr,
)
from echocmr.ingest.synth.small import small_clip
from echocmr.shards.format import INGEST_REPORT_FILE

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


def grey_to_rgb(frames_THW: np.ndarray) -> np.ndarray:
    return np.repeat(frames_THW[..., None], 3, axis=-1)


def add_colour_doppler(rgb_THWC: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paint red/blue flow into ``box`` (rows, cols) of every other frame."""
    out = rgb_THWC.copy()
    r0, r1, c0, c1 = box
    for t in range(0, len(out), 2):
        out[t, r0:r1, c0:(c0 + c1) // 2] = (220, 30, 20)
        out[t, r0:r1, (c0 + c1) // 2:c1] = (20, 40, 230)
    return out


@dataclass
class Identity:
    """The PHI of one test file (so tests can search outputs for every string)."""

    patient_id: str = "PID-0001"
    patient_name: str = "DOE^JANE"
    birth_date: str = "19610203"
    accession: str = "ACC-778899"
    institution: str = "ST ELSEWHERE HOSPITAL"
    study_date: str = "20230510"
    study_uid: str = field(default_factory=generate_uid)
    sop_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)

    def phi_strings(self) -> list[str]:
        return [self.patient_id, self.patient_name, self.patient_name.replace("^", " "),
                self.birth_date, self.accession, self.institution, self.study_date]

    def dicom(self) -> DicomIdentity:
        """The writer's identity: these values, and fixed ones for what the tests do not vary."""
        return DicomIdentity(
            patient_name=self.patient_name, patient_id=self.patient_id,
            birth_date=self.birth_date, sex="O", study_uid=self.study_uid,
            study_date=self.study_date, study_time="101500", accession=self.accession,
            institution=self.institution, study_id="1", series_uid=self.series_uid,
            series_number=1, sop_uid=self.sop_uid, instance_number=1, heart_rate=70,
        )


def write_us_dicom(path, pixels: np.ndarray, *, ident: Identity | None = None,
                   photometric: str = "MONOCHROME2", syntax=ExplicitVRLittleEndian,
                   fps: float | None = 30.0, regions: list[dict] | None = None,
                   modality: str = "US", bits: int = 8, keep_rgb_jpeg: bool = False,
                   palette: np.ndarray | None = None) -> Identity:
    """Write ``pixels`` ([T,H,W] or [T,H,W,3]) as a US multi-frame file; returns its identity.

    ``pixels`` are given in the stored colour space: grey for MONOCHROME*, palette indices for
    PALETTE COLOR, RGB for RGB, YCbCr for YBR_FULL (YBR_FULL_422: give YCbCr, it is subsampled
    for native syntaxes; for JPEG baseline give RGB, Pillow converts). ``regions``: dicts of
    ``x0, y0, x1, y1`` and optionally ``delta_cm`` (0.03), ``spatial_format``, ``data_type``.
    """
    ident = ident or Identity()
    ds = base_dataset(ident.dicom(), sop_class=US_MULTIFRAME, modality=modality)
    if fps:
        ds.FrameTime = f"{1000.0 / fps:.3f}"
    ds.NumberOfFrames = len(pixels)
    if regions:
        ds.SequenceOfUltrasoundRegions = [
            region((r["x0"], r["y0"], r["x1"], r["y1"]), r.get("delta_cm", 0.03),
                   data_type=r.get("data_type", 1), spatial_format=r.get("spatial_format", 1))
            for r in regions]
    write_pixels(path, ds, pixels, n_frames=len(pixels), rows=pixels.shape[1],
                 columns=pixels.shape[2], transfer_syntax=syntax, photometric=photometric,
                 bits=bits, palette=palette, jpeg_keep_rgb=keep_rgb_jpeg)
    return ident


def write_non_image(path, kind: str, ident: Identity | None = None) -> Identity:
    """A structured report (``"sr"``), an encapsulated PDF (``"pdf"``) or a US object without
    pixel data (``"no_pixels"``)."""
    ident = ident or Identity()
    if kind == "sr":
        write_text_sr(path, ident=ident.dicom(), vendor=None, lines=[])
        return ident
    if kind == "pdf":
        ds = base_dataset(ident.dicom(), modality="DOC", sop_class=PDF_CLASS)
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%fake\n"
    elif kind == "no_pixels":
        ds = base_dataset(ident.dicom(), sop_class=US_MULTIFRAME)
        ds.FrameTime = f"{1000.0 / 30.0:.3f}"
        ds.NumberOfFrames = 20
        set_image_pixel_module(ds, rows=64, columns=64, photometric="MONOCHROME2")
    else:
        raise ValueError(kind)
    ds.save_as(path, enforce_file_format=True)
    return ident


# -- a small hospital-style export -------------------------------------------------------------


@dataclass
class Cohort:
    """What `write_cohort` made."""

    dicom_dir: str
    labels_path: str
    expected: dict[str, str | None]  # source -> None (kept) or the rejection reason
    phi: list[str]
    patients: dict[str, str]  # patient ID -> folder name


def write_cohort(root, *, n_patients: int = 4, clips_per_study: int = 2, n_frames: int = 18,
                 bad_files: bool = True, seed: int = 0, shape: tuple[int, int] = (72, 96)) -> Cohort:
    """Patients with one echo study each (paired with a CMR), plus deliberately bad files."""
    root = str(root)
    dicom_dir = os.path.join(root, "dicom")
    rows, expected, phi, patients = [], {}, [], {}
    base_date = date(2022, 3, 1)
    for p in range(n_patients):
        pid = f"MRN{7300 + p:05d}"
        name = f"SMITH{chr(65 + p)}^JOHN{chr(75 + p)}"
        folder = f"{name.replace('^', '_')}_{pid}"
        echo_date = base_date + timedelta(days=11 * p)
        study_uid = generate_uid()
        for c in range(clips_per_study):
            ident = Identity(patient_id=pid, patient_name=name, birth_date=f"19{50 + p}0{1 + p % 9}15",
                             accession=f"ACCN{9100 + p}", institution=f"MERCY GENERAL {p}",
                             study_date=echo_date.strftime("%Y%m%d"), study_uid=study_uid)
            rel = f"{folder}/study1/clip{c}.dcm"
            os.makedirs(os.path.join(dicom_dir, os.path.dirname(rel)), exist_ok=True)
            frames = small_clip(n_frames, *shape, seed=seed + 10 * p + c).frames
            write_us_dicom(os.path.join(dicom_dir, rel), frames, ident=ident)
            expected[rel] = None
            phi.extend(ident.phi_strings())
        phi.append(folder)
        patients[pid] = folder
        cmr_date = echo_date - timedelta(days=3)
        rows.append({"patient_id": pid, "cmr_id": f"CMR{p}", "cmr_date": cmr_date.isoformat(),
                     "field_strength_t": 1.5 if p % 2 else 3.0, "wma": float(p % 2),
                     "lge": np.nan if p == 0 else 0.0, "t1_native_ms": 1100.0 + p,
                     "t2_ms": np.nan, "ecv_pct": 28.0 + 2 * p})
    if bad_files:
        folder = patients[f"MRN{7300:05d}"]
        bad = os.path.join(dicom_dir, folder, "study1")
        good = os.path.join(bad, "clip0.dcm")
        data = open(good, "rb").read()
        with open(os.path.join(bad, "truncated.dcm"), "wb") as f:
            f.write(data[: len(data) * 2 // 3])
        expected[f"{folder}/study1/truncated.dcm"] = "truncated"
        with open(os.path.join(bad, "random.dcm"), "wb") as f:
            f.write(np.random.default_rng(seed).bytes(5000))
        expected[f"{folder}/study1/random.dcm"] = "not_dicom"
        ident = Identity(patient_id=f"MRN{7300:05d}", patient_name="SMITHA^JOHNK")
        write_non_image(os.path.join(bad, "nopixels.dcm"), "no_pixels", ident)
        expected[f"{folder}/study1/nopixels.dcm"] = "no_pixel_data"
        write_non_image(os.path.join(bad, "report.dcm"), "sr", ident)
        expected[f"{folder}/study1/report.dcm"] = "not_image"
        phi.extend(ident.phi_strings())
    labels_path = os.path.join(root, "cmr.csv")
    pd.DataFrame(rows).to_csv(labels_path, index=False)
    return Cohort(dicom_dir=dicom_dir, labels_path=labels_path, expected=expected,
                  phi=sorted(set(phi)), patients=patients)


def die_on_crash_files(source: str) -> None:
    """A worker hook for tests: the process dies (like a segfaulting decoder) on '*crash*'."""
    if "crash" in os.path.basename(source):
        os._exit(139)


@dataclass(frozen=True)
class StartLog:
    """A `run_ingest` ``before_file`` hook: note where each file task starts, then sleep.

    Tests of a node dying mid-run need tasks that last (``delay_s``) and need to see which node
    ran (or re-ran) which file: each start appends ``<node id> <source>`` to ``log`` (the Ray
    node's id, ``local`` outside Ray). Picklable, so it reaches pool and Ray workers alike (they
    import this module: tests/ is on their PYTHONPATH).
    """

    log: str
    delay_s: float = 0.0

    def __call__(self, source: str) -> None:
        node = "local"
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        # One short append per line: lines never interleave. A name need not be UTF-8.
        with open(self.log, "a", errors="surrogateescape") as f:
            f.write(f"{node} {source}\n")
        time.sleep(self.delay_s)


def echocmr_with_hook(argv: list[str], hook) -> int:
    """``echocmr ARGV`` as the console script runs it, with ``hook`` given to `run_ingest` as
    ``before_file`` (the one thing a command line cannot pass). For a subprocess::

        python -c "import sys, _ingest_fixtures as f; sys.exit(f.echocmr_with_hook(...))"
    """
    import functools

    from echocmr import cli
    from echocmr.ingest import job

    job.run_ingest = functools.partial(job.run_ingest, before_file=hook)
    return cli.main(argv)


def crash_cohort(root, config):
    """A 1-patient cohort with one extra file, ``crash.dcm``, that kills the worker processing
    it (`die_on_crash_files`), and a worker context for it with an empty CMR table (every other
    file is ``no_cmr_within_window``). Returns (sorted relative sources, the context, its
    prepared `WorkCache`); task ``i`` of ``sources`` is cache entry ``e{i}``."""
    from echocmr.ingest.pairing import CmrIndex
    from echocmr.ingest.workcache import WorkCache
    from echocmr.ingest.worker import WorkerContext
    from echocmr.shards.format import TASKS

    cohort = write_cohort(root, n_patients=1, clips_per_study=2, n_frames=16, bad_files=False,
                          shape=(48, 64))
    folder = next(iter(cohort.patients.values()))
    src = os.path.join(cohort.dicom_dir, folder, "study1", "clip0.dcm")
    os.link(src, os.path.join(cohort.dicom_dir, folder, "study1", "crash.dcm"))
    sources = sorted(os.path.relpath(os.path.join(d, f), cohort.dicom_dir)
                     for d, _, fs in os.walk(cohort.dicom_dir) for f in fs)
    work = WorkCache(os.path.join(str(root), "work"))
    work.prepare("test")
    empty = pd.DataFrame(columns=["patient_id", "cmr_date", "field_strength_t", *TASKS])
    ctx = WorkerContext(config=config, dicom_dir=cohort.dicom_dir, work_dir=work.path,
                        cmr=CmrIndex(empty), views={}, split_key=b"k",
                        before_file=die_on_crash_files)
    return sources, ctx, work


# -- checking outputs --------------------------------------------------------------------------

SHIPPED_SUFFIXES = (".tar", ".idx", ".parquet", ".json")


def shipped_files(out: str) -> list[str]:
    """What leaves the site: everything in the set but the report (and no work cache)."""
    return sorted(n for n in os.listdir(out) if n.endswith(SHIPPED_SUFFIXES) and n != INGEST_REPORT_FILE)


def find_phi(out: str, phi: list[str]) -> list[tuple[str, str]]:
    """(file, string) for every PHI string found in the shipped outputs.

    Raw bytes of every file (tars and indexes are uncompressed; stats is JSON) and, because
    Parquet pages are compressed, every decoded cell of the manifest too.
    """
    hits = []
    needles = {s for s in phi if s} | {s.lower() for s in phi if s} | {s.upper() for s in phi if s}
    for name in shipped_files(out):
        data = open(os.path.join(out, name), "rb").read()
        text = [data]
        if name.endswith(".parquet"):
            table = pd.read_parquet(os.path.join(out, name))
            text.append(" ".join(map(str, table.columns)).encode())
            text.append(table.to_csv(index=False).encode())
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out, name)) as tar:
                text.append(" ".join(tar.getnames()).encode())
        for needle in needles:
            if any(needle.encode() in blob for blob in text):
                hits.append((name, needle))
    return hits
