"""Ingest of a synthetic cohort from `ingest.synth`: the generator's ground truth is the oracle.

Every input file must be in the report with the status and reason the generator planned, the
kept count must equal the generator's, labels/views/gaps must match its truth table, and no PHI
string of the input (read back from the DICOM headers and the folder names) may leave ingest.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest

from echocmr.ingest.config import IngestConfig
from echocmr.ingest.job import run_ingest
from echocmr.ingest.splits import KeyedHasher, resolve_split_key
from echocmr.ingest.synth import generate as synth_pkg
from echocmr.shards.format import INGEST_REPORT_FILE, TASKS
from echocmr.shards.reader import iter_samples, read_manifest

from _ingest_fixtures import find_phi, shipped_files

PHI_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
            "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "ReferringPhysicianName",
            "OperatorsName", "InstitutionAddress", "StationName", "StudyID")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth_pkg.generate_cohort(root, patients=2, seed=20240607, workers=2, progress=False)
    out = str(root / "shards")
    summary = run_ingest(root / "dicom", root / "cmr_labels.parquet", out,
                         config=IngestConfig(site="synth_site"),
                         views_path=root / "views.csv", progress=False, in_process=True)
    truth = pd.read_parquet(root / "synth_truth.parquet")
    return root, out, summary, truth


def test_report_matches_the_generators_truth(synth):
    root, out, summary, truth = synth
    on_disk = sorted(os.path.relpath(os.path.join(d, f), root / "dicom")
                     for d, _, files in os.walk(root / "dicom") for f in files)
    report = pq.read_table(os.path.join(out, INGEST_REPORT_FILE)).to_pylist()
    assert [r["source"] for r in report] == on_disk  # every input file, once
    assert sorted(truth["source"]) == on_disk
    expected = truth.set_index("source")
    for row in report:
        want = expected.loc[row["source"]]
        assert row["status"] == want["expected_status"], (row, want["expected_reason"])
        if want["expected_status"] == "rejected":
            assert row["reason"] == want["expected_reason"], row
    n_kept = int((truth["expected_status"] == "kept").sum())
    assert summary.kept == n_kept == len(read_manifest(out))
    assert set(truth["expected_reason"].dropna()) >= {"single_frame", "colour_doppler",
                                                      "not_image", "too_few_frames"}


def test_labels_views_and_gaps_match_the_truth(synth):
    root, out, _, truth = synth
    key, _ = resolve_split_key(None, warn=False)
    hasher = KeyedHasher(key, site="synth_site")
    kept = truth[truth["expected_status"] == "kept"]
    by_key = {f"synth_site-{hasher.clip_hash(uid)}": row for uid, row in
              zip(kept["sop_uid"], kept.itertuples(), strict=True)}
    samples = list(iter_samples(out))
    assert sorted(s.key for s in samples) == sorted(by_key)
    for sample in samples:
        want = by_key[sample.key]
        np.testing.assert_array_equal(
            sample.labels, np.array([getattr(want, t) for t in TASKS], dtype=np.float32))
        assert sample.meta.view == want.view
        assert sample.meta.vendor == want.vendor  # every synthetic machine has its vendor name
        assert sample.meta.ingest.echo_cmr_gap_days == want.echo_cmr_gap_days
        assert sample.meta.patient_hash == hasher.patient_hash(want.patient_id)
        assert sample.meta.split == hasher.split(want.patient_id)
        assert sample.meta.ingest.orig_n_frames == want.n_frames
    manifest = read_manifest(out)
    assert (manifest.groupby("patient_hash")["split"].nunique() == 1).all()


def test_no_input_phi_leaves_ingest(synth):
    root, out, _, _ = synth
    phi = set()
    for dirpath, _, files in os.walk(root / "dicom"):
        rel = os.path.relpath(dirpath, root / "dicom").split(os.sep)
        if len(rel) >= 3:  # dicom/<site>/<machine>/<patient>/<study>/: the patient folder
            phi.add(rel[2])  # (the machine folder is the vendor key, which ships as a vendor)
        for name in files:
            ds = pydicom.dcmread(os.path.join(dirpath, name), stop_before_pixels=True, force=True)
            for tag in PHI_TAGS:
                value = str(ds.get(tag, "") or "").strip()
                if len(value) >= 4:
                    phi.add(value)
                    phi.update(p for p in value.replace("^", " ").split() if len(p) >= 4)
    assert len(phi) > 10
    assert shipped_files(out) and find_phi(out, sorted(phi)) == []
