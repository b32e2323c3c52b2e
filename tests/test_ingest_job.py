"""The ingest job end to end on a small export: report, rejections, PHI, splits, readers, resume.

One module-scoped run (process pool of 2) on a hand-made export of 4 patients x 2 clips plus a
truncated file, random bytes named ``.dcm``, a DICOM without pixel data and a structured report.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from echocmr.ingest.config import IngestConfig
from echocmr.ingest.encode import decode_webm
from echocmr.ingest.job import run_ingest
from echocmr.ingest.splits import KeyedHasher, resolve_split_key
from echocmr.ingest.workcache import WORK_DIR
from echocmr.shards.format import INGEST_REPORT_FILE, TASKS, decode_labels
from echocmr.shards.reader import list_shards, read_manifest, read_stats

from _ingest_fixtures import find_phi, shipped_files, write_cohort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("export"), n_patients=4, clips_per_study=2)


@pytest.fixture(scope="module")
def ingested(cohort, tmp_path_factory, module_split_key):
    out = str(tmp_path_factory.mktemp("shards") / "set")
    config = IngestConfig(site="site_a", workers=2)
    summary = run_ingest(cohort.dicom_dir, cohort.labels_path, out, config=config, progress=False)
    return out, summary


def test_every_file_is_reported_with_the_expected_outcome(cohort, ingested):
    out, summary = ingested
    table = pq.read_table(os.path.join(out, INGEST_REPORT_FILE))
    assert table.column_names[:4] == ["source", "status", "reason", "key"]
    rows = table.to_pylist()
    assert [r["source"] for r in rows] == sorted(cohort.expected)
    for row in rows:
        want = cohort.expected[row["source"]]
        if want is None:
            assert row["status"] == "kept" and row["reason"] is None
            assert row["key"].startswith("site_a-")
        else:
            assert (row["status"], row["reason"], row["key"]) == ("rejected", want, None), row
            assert row["detail"]  # a readable explanation beside the code
    assert summary.kept == 8 and summary.files == len(cohort.expected)
    assert summary.rejected == {"truncated": 1, "not_dicom": 1, "no_pixel_data": 1, "not_image": 1}
    assert not os.path.exists(os.path.join(out, WORK_DIR))  # the work cache is cleaned up
    text = summary.format()
    assert "8 kept" in text and "truncated" in text


def test_manifest_stats_and_labels(cohort, ingested):
    out, _ = ingested
    manifest = read_manifest(out)
    stats = read_stats(out).to_dict()
    assert len(manifest) == 8 and set(manifest["n_frames"]) == {18}
    assert stats["clip"]["height"] == 144 and stats["clip"]["fps"] == 30.0
    key, _ = resolve_split_key(None, warn=False)
    hasher = KeyedHasher(key, site="site_a")
    assert stats["split_key_fingerprint"] == hasher.fingerprint
    labels = pd.read_csv(cohort.labels_path, dtype={"patient_id": str})
    for pid in cohort.patients:
        rows = manifest[manifest["patient_hash"] == hasher.patient_hash(pid)]
        assert len(rows) == 2 and set(rows["split"]) == {hasher.split(pid)}
        cmr = labels[labels["patient_id"] == pid].iloc[0]
        assert (rows["wma"] == cmr["wma"]).all()
        assert rows["lge"].isna().all() if np.isnan(cmr["lge"]) else (rows["lge"] == 0).all()
        assert rows["t2"].isna().all()  # no T2 measured: unknown, never 0
        cutoff = 1050 if cmr["field_strength_t"] == 1.5 else 1250
        assert (rows["t1"] == float(cmr["t1_native_ms"] > cutoff)).all()


def test_no_phi_in_shipped_outputs(cohort, ingested):
    out, _ = ingested
    assert len(cohort.phi) > 20
    assert find_phi(out, cohort.phi) == []
    # The test can fail: the report (which stays at the site) does name patient folders.
    report = open(os.path.join(out, INGEST_REPORT_FILE), "rb").read()
    table = pd.read_parquet(io.BytesIO(report)).to_csv().encode()
    assert any(folder.encode() in table for folder in cohort.patients.values())


def test_no_patient_in_two_splits(ingested):
    out, _ = ingested
    manifest = read_manifest(out)
    assert (manifest.groupby("patient_hash")["split"].nunique() == 1).all()
    for tar_path in list_shards(out):
        split = os.path.basename(tar_path).split("-")[0]
        assert set(manifest.loc[manifest["shard"] == os.path.basename(tar_path), "split"]) == {split}


def test_stock_webdataset_reads_the_shards(ingested):
    out, _ = ingested
    manifest = read_manifest(out).set_index("key")
    seen = 0
    for sample in wds.WebDataset(list_shards(out), shardshuffle=False, empty_check=False):
        key = sample["__key__"]
        meta = json.loads(sample["json"])
        assert meta["key"] == key and meta["split"] == manifest.loc[key, "split"]
        frames, fps = decode_webm(sample["webm"])
        assert frames.shape == (manifest.loc[key, "n_frames"], 144, 144) and fps == 30.0
        np.testing.assert_array_equal(decode_labels(sample["labels"]),
                                      manifest.loc[key, list(TASKS)].to_numpy(np.float32))
        assert set(meta) >= {"patient_hash", "study_hash", "source_sop_hash", "view", "orig_fps",
                             "orig_n_frames", "pixel_spacing_mm", "echo_cmr_gap_days"}
        assert meta["echo_cmr_gap_days"] == 3 and meta["view"] == "unknown"
        seen += 1
    assert seen == len(manifest)


def test_plain_tar_lists_and_extracts(ingested, tmp_path):
    out, _ = ingested
    tar_path = list_shards(out)[0]
    listing = subprocess.run(["tar", "-tf", tar_path], check=True, capture_output=True,
                             text=True).stdout.split()
    assert listing and all(n.rsplit(".", 1)[1] in ("json", "labels", "webm") for n in listing)
    subprocess.run(["tar", "-xf", tar_path, "-C", str(tmp_path)], check=True)
    webm = next(n for n in listing if n.endswith(".webm"))
    frames, _ = decode_webm((tmp_path / webm).read_bytes())
    assert frames.shape[1:] == (144, 144)


def test_dali_reads_and_decodes_on_cpu(ingested):
    from nvidia.dali import fn, pipeline_def

    out, _ = ingested
    tars = list_shards(out)
    manifest = read_manifest(out).set_index("key")

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        video, labels, meta = fn.readers.webdataset(
            paths=tars, index_paths=[t[:-4] + ".idx" for t in tars],
            ext=["webm", "labels", "json"], missing_component_behavior="error", name="reader")
        return fn.decoders.video(video, device="cpu"), labels, meta

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == len(manifest)
    keys = []
    for _ in range(len(manifest) // 2):
        frames, labels, meta = p.run()
        for i in range(len(frames)):
            key = json.loads(bytes(np.asarray(meta[i])))["key"]
            clip = np.asarray(frames[i])
            assert clip.shape == (manifest.loc[key, "n_frames"], 144, 144, 3)
            assert np.abs(clip[..., 0].astype(int) - clip[..., 1]).max() <= 2  # grey
            np.testing.assert_array_equal(decode_labels(np.asarray(labels[i]).tobytes()),
                                          manifest.loc[key, list(TASKS)].to_numpy(np.float32))
            keys.append(key)
    assert sorted(keys) == sorted(manifest.index)


def test_rerun_in_process_is_byte_identical(cohort, ingested, tmp_path, split_key):
    out, _ = ingested
    again = str(tmp_path / "again")
    run_ingest(cohort.dicom_dir, cohort.labels_path, again,
               config=IngestConfig(site="site_a"), progress=False, in_process=True)
    assert shipped_files(again) == shipped_files(out)
    for name in shipped_files(out) + [INGEST_REPORT_FILE]:
        assert open(os.path.join(out, name), "rb").read() == \
            open(os.path.join(again, name), "rb").read(), name


def _ingest_cmd(cohort, out: str) -> list[str]:
    return [sys.executable, "-m", "echocmr", "ingest", "--dicom", cohort.dicom_dir,
            "--labels", cohort.labels_path, "--out", out, "--site", "site_a", "--workers", "2",
            "--no-progress"]


def test_killed_run_resumes_to_byte_identical_shards(tmp_path_factory, split_key):
    cohort = write_cohort(tmp_path_factory.mktemp("kill"), n_patients=4, clips_per_study=3,
                          n_frames=16, bad_files=False, seed=11, shape=(56, 64))
    root = os.path.dirname(cohort.dicom_dir)
    clean, killed = os.path.join(root, "clean"), os.path.join(root, "killed")
    run_ingest(cohort.dicom_dir, cohort.labels_path, clean, config=IngestConfig(site="site_a"),
               progress=False, in_process=True)

    # The real command in a subprocess (process pool of 2), killed with SIGKILL half-way.
    proc = subprocess.Popen(_ingest_cmd(cohort, killed), env={**os.environ, "PYTHONPATH": REPO},
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    files = os.path.join(killed, WORK_DIR, "files")

    def results_cached() -> int:  # result files in the cache's sub-directories
        return sum(n.endswith(".json") for _, _, names in os.walk(files) for n in names)

    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results_cached() >= 3:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the job and its workers
        proc.wait()
    assert not os.path.exists(os.path.join(killed, "manifest.parquet")), "finished before the kill"
    n_done = results_cached()
    assert 0 < n_done < 12

    summary = run_ingest(cohort.dicom_dir, cohort.labels_path, killed,
                         config=IngestConfig(site="site_a"), progress=False, in_process=True)
    assert summary.resumed_files >= n_done
    assert shipped_files(killed) == shipped_files(clean)
    for name in shipped_files(clean) + [INGEST_REPORT_FILE]:
        assert open(os.path.join(clean, name), "rb").read() == \
            open(os.path.join(killed, name), "rb").read(), name
    assert not any(n.startswith(".") for n in os.listdir(killed))  # no temp files, no cache


def test_a_file_that_kills_its_worker_is_isolated_and_rejected(tmp_path):
    """A decoder crash (the worker dies) must neither hang nor stop the job."""
    from echocmr.ingest.pool import pool_results

    from _ingest_fixtures import crash_cohort

    sources, ctx, _ = crash_cohort(tmp_path, IngestConfig(site="s"))
    results = {r.source: r for r in pool_results(ctx, [(s, f"e{i}") for i, s in
                                                       enumerate(sources)], workers=2)}
    assert sorted(results) == sources
    for source, result in results.items():
        want = "worker_crashed" if "crash" in source else "no_cmr_within_window"
        assert result.reason == want, (source, result)
