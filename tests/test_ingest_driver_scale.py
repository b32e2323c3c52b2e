"""The ingest driver at archive scale (issue 26): results held as columns, the work cache in
sub-directories (an older flat cache still resumes), one ``stat`` per file, batched pool tasks,
compact views and CMR maps for the workers. Each rewrite is checked against what it replaced:
the same report bytes, the same pairings, the same outputs."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from echocmr.ingest.config import IngestConfig, PairingConfig
from echocmr.ingest.inputs import scan_inputs
from echocmr.ingest.job import run_ingest
from echocmr.ingest.lookup import ViewLookup
from echocmr.ingest.pairing import STRIP_ZEROS_ATTR, CmrIndex
from echocmr.ingest.report import report_bytes
from echocmr.ingest.results import ResultColumns
from echocmr.ingest.workcache import WORK_DIR, FileResult, WorkCache, entry_id
from echocmr.shards.format import INGEST_REPORT_FILE, TASKS, IngestFacts, SampleMeta

from _ingest_fixtures import crash_cohort, die_on_crash_files, shipped_files, write_cohort


def _kept(source: str, key: str, *, split="train", view="a4c", view_source="table",
          confidence=None, detail=None, boxes=0) -> FileResult:
    meta = SampleMeta(
        key=key, site="site_a", split=split, patient_hash="p" * 16, study_hash="s" * 16,
        view=view, view_source=view_source, view_confidence=confidence, fps=30.0, n_frames=16,
        ingest=IngestFacts(source_sop_hash=key[-8:], height=64, width=64, orig_fps=50.0,
                           orig_n_frames=30, pixel_spacing_mm=None, echo_cmr_gap_days=2,
                           field_strength_t=1.5))
    return FileResult(source=source, status="kept", key=key, meta=meta,
                      labels=[1.0, None, 0.0, 0.0, 1.0], pixel_stats=[40.0, 20.0, 4096.0],
                      video_sha256="0" * 64, video_bytes=100, study_hash="s" * 16,
                      text_boxes=boxes, paired=True, detail=detail)


def _old_reject_duplicates(results: list[FileResult]) -> None:
    """The driver's duplicate rule before the columns (main at 05f4b9f), for comparison."""
    first: dict[str, str] = {}
    for result in results:
        if result.status != "kept":
            continue
        if result.key in first:
            result.status, result.reason = "rejected", "duplicate_instance"
            result.detail = f"same SOP Instance UID as {first[result.key]}"
            result.key = None
        else:
            first[result.key] = result.source


def test_columns_give_the_report_bytes_of_the_result_objects():
    """Arriving in any order, with skipped paths, duplicates, non-UTF-8 names, views and
    details: the columns' report is byte for byte the report of the sorted result objects."""
    rng = random.Random(5)
    results = []
    for i in range(300):
        source = f"p{i % 17}/s{i % 5}/clip {i}.dcm" if i % 11 else f"M\udcfcller/{i}"
        kind = i % 6
        if kind == 0:
            results.append(_kept(source, f"site_a-{i % 40:08x}", split=rng.choice(
                ["train", "val", "test"]), view=rng.choice(["a4c", "plax", "unknown"]),
                view_source=rng.choice(["table", "model", None]),
                confidence=rng.choice([None, 0.75, 0.5]), boxes=rng.choice([0, 2]),
                detail=rng.choice([None, "view disagrees: table a4c, model plax (0.75)"])))
        elif kind == 1:
            results.append(FileResult(source=source, status="rejected",
                                      reason="no_cmr_within_window", detail="no CMR",
                                      study_hash=f"st{i % 7}"))
        else:
            results.append(FileResult(source=source, status="rejected",
                                      reason=rng.choice(["not_dicom", "bad_header", "error"]),
                                      detail=rng.choice([None, f"why {i % 3}", "bad \udce9"])))
    skipped = [FileResult(source=f"link{i}", status="rejected", reason="broken_symlink",
                          detail="the symlink's target does not exist") for i in range(5)]
    files = sorted(r.source for r in results)
    entries = [hashlib.sha256(s.encode("utf-8", "surrogateescape")).hexdigest()[:24]
               for s in files]
    columns = ResultColumns(files, entries, skipped)
    assert [s for s, _ in columns.pending()] == files
    for r in rng.sample(results, len(results)):  # completion order
        columns.add(r)
    assert not list(columns.pending())
    columns.reject_duplicates()

    ordered = sorted(results + skipped, key=lambda r: r.source)
    _old_reject_duplicates(ordered)
    assert columns.report_bytes() == report_bytes(ordered)
    kept = [r for r in ordered if r.status == "kept"]
    assert columns.n_kept == len(kept)
    assert [(e, r.key) for e, r in columns.kept_in_plan_order()] == [
        (entries[files.index(r.source)], r.key)
        for r in sorted(kept, key=lambda r: (["train", "val", "test"].index(r.meta.split),
                                             r.key))]
    assert all(r.meta == next(k for k in kept if k.key == r.key).meta
               for _, r in columns.kept_in_plan_order())
    rejected: dict[str, int] = {}
    for r in ordered:
        if r.status == "rejected":
            rejected[r.reason] = rejected.get(r.reason, 0) + 1
    assert columns.rejected() == rejected
    assert columns.unpaired_studies == {r.study_hash for r in ordered
                                        if r.reason == "no_cmr_within_window"}
    from echocmr.ingest.views import ViewMix

    assert columns.view_mix() == ViewMix.of(ordered)
    assert columns.text_masked() == (sum(r.text_boxes > 0 for r in kept),
                                     sum(r.text_boxes for r in kept))
    with pytest.raises(KeyError):
        columns.add(FileResult(source="not/an/input", status="rejected", reason="error"))


def test_a_long_report_is_written_in_row_groups_with_the_same_rows(monkeypatch):
    """Beyond REPORT_ROWS rows the report is written a row group at a time: the same rows."""
    import io

    import pyarrow.parquet as pq

    import echocmr.ingest.results as results_module

    results = [FileResult(source=f"f{i:03d}", status="rejected", reason="not_dicom",
                          detail=None if i % 3 else f"d{i % 4}") for i in range(40)]
    results += [_kept(f"k{i}", f"site_a-{i:08x}", view="plax", confidence=0.5)
                for i in range(9)]
    files = sorted(r.source for r in results)
    columns = ResultColumns(files, [f"{i:024x}" for i in range(len(files))], [])
    for r in results:
        columns.add(r)
    whole = columns.report_bytes()
    monkeypatch.setattr(results_module, "REPORT_ROWS", 7)
    chunked = columns.report_bytes()
    assert pq.ParquetFile(io.BytesIO(chunked)).metadata.num_row_groups == 7
    assert pq.read_table(io.BytesIO(chunked)).equals(pq.read_table(io.BytesIO(whole)))
    assert whole == report_bytes(sorted(results, key=lambda r: r.source))


def test_view_lookup_answers_as_the_dict():
    rng = random.Random(3)
    views = {f"1.2.840.{rng.randrange(10**12)}.{i}": rng.choice(["a4c", "plax", "psax", "other"])
             for i in range(5000)}
    views["1.2.\udcff.odd"] = "a2c"
    lookup = pickle.loads(pickle.dumps(ViewLookup(views)))
    assert len(lookup) == len(views) and lookup.nbytes == 17 * len(views)
    for uid, view in views.items():
        assert lookup.get(uid) == view
    for i in range(5000):
        assert lookup.get(f"1.2.840.{i}.absent") is None
    assert lookup.get(None) is None and ViewLookup({}).get("1.2") is None


def _reference_pair(rows, patient_id, echo, window, strip):
    """The pairing rule as docs/ingest.md states it: the nearest CMR of the patient within the
    window; ties to the earlier CMR, then the earlier row."""
    patient_id = patient_id.strip()
    if strip:
        patient_id = patient_id.lstrip("0") or ("0" if patient_id else "")
    best = None
    for row, (pid, cmr_date, labels, field) in enumerate(rows):
        if pid != patient_id or abs((echo - cmr_date).days) > window:
            continue
        rank = (abs((echo - cmr_date).days), cmr_date, row)
        if best is None or rank < best[0]:
            best = (rank, ((echo - cmr_date).days, row, labels, field))
    return None if best is None else best[1]


@pytest.mark.parametrize("strip", [False, True])
def test_compact_cmr_index_pairs_as_the_rule_says(strip):
    rng = random.Random(7 + strip)
    start = date(2020, 1, 1)
    rows = []
    for _ in range(2000):
        pid = str(rng.randrange(300))
        labels = tuple(rng.choice([0.0, 1.0, float("nan")]) for _ in TASKS)
        rows.append((pid, start + timedelta(days=rng.randrange(120)), labels,
                     rng.choice([None, 1.5, 3.0])))
    table = pd.DataFrame({"patient_id": [r[0] for r in rows], "cmr_date": [r[1] for r in rows],
                          "field_strength_t": [np.nan if r[3] is None else r[3] for r in rows],
                          **{t: [r[2][j] for r in rows] for j, t in enumerate(TASKS)}})
    table.attrs[STRIP_ZEROS_ATTR] = strip
    index = pickle.loads(pickle.dumps(CmrIndex(table, PairingConfig(window_days=10))))
    assert len(index) == 2000 and index.n_patients == len({r[0] for r in rows})
    for _ in range(3000):
        pid = rng.choice([str(rng.randrange(320)), f" 00{rng.randrange(300)} ", "", "0"])
        echo = start + timedelta(days=rng.randrange(-15, 135))
        got = index.pair(pid, echo)
        want = _reference_pair(rows, pid, echo, 10, strip)
        if want is None:
            assert got is None, (pid, echo)
            continue
        gap, row, labels, field = want
        assert (got.gap_days, got.cmr_row, got.field_strength_t) == (gap, row, field)
        assert np.array_equal(got.label_array(), np.array(labels, np.float32), equal_nan=True)
    assert index.pair("1", None) is None


def test_the_scan_stats_each_file_once_and_keeps_the_cache_entries(tmp_path, monkeypatch):
    for d in range(3):
        (tmp_path / f"d{d}").mkdir()
        for f in range(4):
            (tmp_path / f"d{d}" / f"f{f}").write_bytes(b"x" * (d + f))
    (tmp_path / "d0" / "link").symlink_to(tmp_path / "d1" / "f1")
    expected = {s: entry_id(str(tmp_path), s) for s in
                [f"d{d}/f{f}" for d in range(3) for f in range(4)] + ["d0/link"]}
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    scan = scan_inputs(str(tmp_path))
    monkeypatch.setattr(os, "stat", real_stat)
    assert scan.files == sorted(expected)
    assert [e.decode() for e in scan.entries] == [expected[s] for s in scan.files]  # as before
    files_statted = [c for c in calls if os.path.isfile(c)]
    assert sorted(files_statted) == sorted(str(tmp_path / s) for s in expected)


def test_the_cache_is_sharded_and_a_flat_cache_of_before_still_resumes(tmp_path_factory,
                                                                       split_key):
    """A run interrupted under the flat layout of CACHE_VERSION 7 resumes under the new code:
    every file from the cache, outputs byte-identical to a fresh run."""
    root = tmp_path_factory.mktemp("flat")
    cohort = write_cohort(root, n_patients=3, clips_per_study=2, n_frames=16, bad_files=True,
                          seed=4, shape=(48, 64))
    fresh, resumed = str(root / "fresh"), str(root / "resumed")
    config = IngestConfig(site="site_a", keep_work_cache=True)
    first = run_ingest(cohort.dicom_dir, cohort.labels_path, fresh, config=config,
                       progress=False, in_process=True)
    assert first.kept > 0 and first.files > first.kept
    files = os.path.join(fresh, WORK_DIR, "files")
    subdirs = [d for d in os.listdir(files) if os.path.isdir(os.path.join(files, d))]
    assert len(subdirs) == 256 and not [n for n in os.listdir(files) if "." in n]
    cached = sorted(n for d in subdirs for n in os.listdir(os.path.join(files, d)))
    assert len([n for n in cached if n.endswith(".json")]) == first.files - first.rejected.get(
        "symlink_loop", 0) - first.rejected.get("broken_symlink", 0) - first.rejected.get(
        "not_regular_file", 0) - first.rejected.get("duplicate_directory", 0)
    done = WorkCache(os.path.join(fresh, WORK_DIR)).done()
    assert sum(done.values()) == len([n for n in cached if n.endswith(".webm")])

    # The same cache in the flat layout, as a run of before left it; one kept clip lost.
    shutil.copytree(fresh, resumed, ignore=shutil.ignore_patterns("*.lock"))
    flat = os.path.join(resumed, WORK_DIR, "files")
    for d in os.listdir(flat):
        for n in os.listdir(os.path.join(flat, d)):
            os.rename(os.path.join(flat, d, n), os.path.join(flat, n))
        os.rmdir(os.path.join(flat, d))
    lost = sorted(n for n in os.listdir(flat) if n.endswith(".webm"))[0]
    os.remove(os.path.join(flat, lost))
    for name in shipped_files(resumed) + [INGEST_REPORT_FILE]:
        os.remove(os.path.join(resumed, name))

    again = run_ingest(cohort.dicom_dir, cohort.labels_path, resumed, config=config,
                       progress=False, in_process=True)
    n_files = len([n for n in os.listdir(flat) if n.endswith(".json")])
    assert again.resumed_files == n_files - 1  # the kept file without its clip is redone
    assert shipped_files(resumed) == shipped_files(fresh)
    for name in shipped_files(fresh) + [INGEST_REPORT_FILE]:
        assert open(os.path.join(fresh, name), "rb").read() == \
            open(os.path.join(resumed, name), "rb").read(), name
    # the redone entry went to the sharded layout
    entry = lost[:-5]
    assert os.path.exists(os.path.join(flat, entry[:2], f"{entry}.webm"))


def test_batched_pool_tasks_give_each_file_one_result_around_a_crash(tmp_path):
    """Batches of files per task (more files than a batch): the file that kills its worker is
    still the only one rejected worker_crashed; every other file has exactly one result."""
    from echocmr.ingest.pool import MAX_BATCH, pool_results

    sources, ctx, _ = crash_cohort(tmp_path, IngestConfig(site="s"))
    assert ctx.before_file is die_on_crash_files
    junk = os.path.join(ctx.dicom_dir, "junk")
    os.makedirs(junk)
    for i in range(3 * MAX_BATCH * 2):
        with open(os.path.join(junk, f"x{i:04d}"), "wb") as f:
            f.write(b"not a dicom")
    crash = next(s for s in sources if "crash" in s)
    os.link(os.path.join(ctx.dicom_dir, crash), os.path.join(junk, "zz-crash.dcm"))
    tasks = [(s, f"e{i}") for i, s in enumerate(sources)]
    tasks += [(f"junk/{n}", f"j{i}") for i, n in enumerate(sorted(os.listdir(junk)))]
    results = list(pool_results(ctx, iter(tasks), workers=2))
    assert sorted(r.source for r in results) == sorted(s for s, _ in tasks)
    for r in results:
        if "crash" in r.source:
            assert r.reason == "worker_crashed", r
        elif r.source.startswith("junk/"):
            assert r.reason == "not_dicom", r
        else:
            assert r.reason == "no_cmr_within_window", r


def test_an_object_store_cache_resumes_from_its_listings(s3_endpoint):
    """On an object store (a real S3 server): results in sub-prefixes, an entry of the flat
    layout beside them, found by `done_groups` (listings, no request per entry) and read back
    concurrently by `load_many`, in order."""
    from echocmr.shards import storage

    cache = WorkCache("s3://echo/driver-scale/.work")
    cache.prepare("fingerprint")
    kept, video = _kept("a/kept.dcm", "site_a-00000001"), b"clip bytes"
    kept.video_sha256 = hashlib.sha256(video).hexdigest()
    entries = [f"{i:02x}" + "0" * 22 for i in range(0, 256, 37)]
    for i, entry in enumerate(entries):
        cache.store(entry, FileResult(source=f"r{i}", status="rejected", reason="not_dicom"),
                    None)
    cache.store("ab" + "1" * 22, kept, video)
    cache.store("ac" + "1" * 22, kept, None)  # kept, its clip lost: not usable
    flat = "cd" + "2" * 22  # an entry a run of before left in the flat layout
    storage.atomic_write(f"s3://echo/driver-scale/.work/files/{flat}.json", kept.to_json())
    storage.atomic_write(f"s3://echo/driver-scale/.work/files/{flat}.webm", video)

    groups = list(WorkCache(cache.path).done_groups())
    assert [p for p, _ in groups] == sorted({e[:2] for e in entries} | {"ab", "ac"}) + [None]
    fresh = WorkCache(cache.path)
    done = fresh.done()
    assert done == {**dict.fromkeys(entries, False), "ab" + "1" * 22: True,
                    "ac" + "1" * 22: False, flat: True}
    order = sorted(done)
    loaded = fresh.load_many([(e, done[e]) for e in order], threads=4)
    for entry, result in zip(order, loaded, strict=True):
        if entry.startswith("ac"):
            assert result is None
        elif entry.startswith(("ab", "cd")):
            assert result == kept
        else:
            assert result.reason == "not_dicom" and result.source == f"r{entries.index(entry)}"
    assert WorkCache(cache.path).video(flat, kept.video_sha256) == video  # another process
