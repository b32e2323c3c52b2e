"""Shard format 3: each clip's vendor, from a fixed vocabulary, in ``KEY.json``, the manifest and
stats.json's ``view_mix``; and format-2 sets (written by main at 05f4b9f, before the vendor) that
still read, verify and reshard.

The sets here are written through the project's writer with clip bytes made from the key (no
codec: verify does not decode unless asked), so every test is quick; the commands run as a user
runs them, in a subprocess. ``tests/data/shards_format2/set`` is a real format-2 set (its
``make.py`` says how it was made).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echocmr.shards.format import (
    FORMAT_VERSION,
    MANIFEST_SCHEMA,
    VENDOR_VOCABULARY,
    FormatVersionError,
    Sample,
    SampleMeta,
    ShardStats,
    check_format_version,
    clip_encoding,
    manifest_schema,
)
from echocmr.shards.manifest import expected_metadata
from echocmr.shards.writer import ShardSetWriter, WriterConfig

from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format, rewrite_first_member

FORMAT2 = os.path.join(os.path.dirname(__file__), "data", "shards_format2", "set")
# What main at 05f4b9f wrote for `reshard([FORMAT2], samples_per_shard=4, seed=3)` (make.py
# prints them): the tars and indexes, which format 3 must write byte for byte the same.
FORMAT2_RESHARDED = {
    "test-000000.idx": "cc1fa1851fa07ae9", "test-000000.tar": "9234d931eeb560a2",
    "train-000000.idx": "289c126a69050003", "train-000000.tar": "590d3b2803ef8cd4",
    "train-000001.idx": "af5ebf5a23f40d20", "train-000001.tar": "458cae4b69aced22",
    "val-000000.idx": "674e7df0c8a5cee7", "val-000000.tar": "b9f6fd62b2ed37f2",
}
PATIENT_TEXT = "ZEBULON^QUARTZ MRN99887766"
VENDOR_CYCLE = ("ge", "philips", "other", "unknown", "elara")
VIEW_CYCLE = ("A4C", "A2C", "PLAX", "PSAX")


def write_vendor_set(out: str, site: str = "site_v", n: int = 20) -> str:
    """``n`` clips of ``site`` (two per patient) with vendors and views in fixed cycles."""
    rows = []
    for i in range(n):
        patient = i // 2
        split = ("train", "train", "train", "val", "test")[patient % 5]
        rows.append((split, f"{site}-{hashlib.sha256(f'{site}|{i}'.encode()).hexdigest()[:16]}",
                     i, patient))
    rows.sort(key=lambda r: (("train", "val", "test").index(r[0]), r[1]))
    with ShardSetWriter(out, config=WriterConfig(samples_per_shard=6),
                        clip_format=clip_format(32, 30.0),
                        split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT) as writer:
        for split, key, i, patient in rows:
            meta = SampleMeta(
                key=key, site=site, split=split,
                patient_hash=hashlib.sha256(f"p|{site}|{patient}".encode()).hexdigest()[:16],
                study_hash=hashlib.sha256(f"s|{site}|{patient}".encode()).hexdigest()[:16],
                view=VIEW_CYCLE[i % 4], n_frames=20, fps=30.0, vendor=VENDOR_CYCLE[i % 5])
            writer.add(Sample(key=key, video=hashlib.sha512(key.encode()).digest() * 3,
                              labels=[float(i % 2), 0.0, float("nan"), 1.0, 0.0], meta=meta),
                       pixel_stats=(40.0 + i, 20.0, 32 * 32 * 20))
    return out


def expected_mix(n: int = 20) -> dict[str, dict[str, int]]:
    """The view mix `write_vendor_set` plants: vendor -> view class -> clips (PSAX is other)."""
    mix: dict[str, dict[str, int]] = {}
    for i in range(n):
        view = {"PSAX": "other"}.get(VIEW_CYCLE[i % 4], VIEW_CYCLE[i % 4])
        views = mix.setdefault(VENDOR_CYCLE[i % 5], {})
        views[view] = views.get(view, 0) + 1
    return mix


def echocmr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echocmr", *args], capture_output=True,
                          text=True)


def digests(directory: str) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest()[:16]
            for n in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def vendor_set(tmp_path_factory) -> str:
    return write_vendor_set(str(tmp_path_factory.mktemp("v3") / "set"))


@pytest.fixture
def copy(vendor_set, tmp_path) -> str:
    out = str(tmp_path / "set")
    shutil.copytree(vendor_set, out)
    return out


def _manifest(directory: str) -> pa.Table:
    return pq.read_table(os.path.join(directory, "manifest.parquet"))


def _write_manifest(directory: str, table: pa.Table) -> None:
    pq.write_table(table, os.path.join(directory, "manifest.parquet"), compression="zstd")


def _set_vendor(table: pa.Table, row: int, value) -> pa.Table:
    vendors = table.column("vendor").to_pylist()
    vendors[row] = value
    return table.set_column(table.column_names.index("vendor"), "vendor",
                            pa.array(vendors, pa.string()))


# -- the format ------------------------------------------------------------------------------


def test_the_vendor_is_optional_in_key_json_and_keeps_old_bytes_without_it():
    base = dict(key="site_a-0123456789abcdef", site="site_a", split="train",
                patient_hash="p" * 16, study_hash="s" * 16, view="A4C", fps=30.0, n_frames=20)
    plain = SampleMeta(**base)
    assert b"vendor" not in plain.to_json()  # a sample without one has format 2's bytes
    with_vendor = SampleMeta(**base, vendor="philips")
    assert SampleMeta.from_json(with_vendor.to_json()) == with_vendor
    assert json.loads(with_vendor.to_json())["vendor"] == "philips"
    for bad in (PATIENT_TEXT, "GE Healthcare", "GE", 7):
        with pytest.raises(ValueError, match="not a name of the vendor vocabulary") as err:
            SampleMeta.from_dict({**base, "vendor": bad})
        assert "ZEBULON" not in str(err.value) and "Healthcare" not in str(err.value)


def test_the_vocabulary_holds_the_synthetic_machines_and_other_and_unknown():
    from echocmr.ingest.synth.vendors import VENDORS as SYNTHETIC

    assert {v.key for v in SYNTHETIC} <= set(VENDOR_VOCABULARY)
    assert VENDOR_VOCABULARY[-2:] == ("other", "unknown")
    assert all(v.isidentifier() and v == v.lower() for v in VENDOR_VOCABULARY)


def test_format_2_is_read_format_1_and_4_are_refused():
    assert FORMAT_VERSION == 3 and clip_encoding(2) == clip_encoding(3) != clip_encoding(1)
    for version in (2, 3):
        check_format_version(ShardStats(format_version=version), "the set")
    with pytest.raises(FormatVersionError, match="Re-run `echocmr ingest`"):
        check_format_version(ShardStats(format_version=1), "the set")
    with pytest.raises(FormatVersionError, match="update echocmr"):
        check_format_version(ShardStats(format_version=4), "the set")


def test_the_format_2_manifest_schema_is_format_3_less_the_vendor():
    assert manifest_schema(3) == MANIFEST_SCHEMA
    assert manifest_schema(2).names == [n for n in MANIFEST_SCHEMA.names if n != "vendor"]
    written = pq.ParquetFile(os.path.join(FORMAT2, "manifest.parquet"))
    assert written.schema_arrow.names == manifest_schema(2).names
    assert dict(written.metadata.metadata) == expected_metadata(2)


# -- a format-3 set: stats.json, shards stats, verify ----------------------------------------


def test_stats_json_and_shards_stats_give_the_view_mix_per_site_and_vendor(vendor_set):
    stats = json.load(open(os.path.join(vendor_set, "stats.json")))
    assert stats["format_version"] == 3
    assert stats["view_mix"] == {"site_v": expected_mix()}
    assert list(stats["view_mix"]["site_v"]) == ["ge", "philips", "elara", "other", "unknown"]
    run = echocmr("shards", "stats", vendor_set)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "  ge: 4 clips: A4C 1 (25 %), A2C 1 (25 %), PLAX 1 (25 %), other 1 (25 %)" in lines
    assert "  unknown: 4 clips: A4C 1 (25 %), A2C 1 (25 %), PLAX 1 (25 %), other 1 (25 %)" in lines
    described = json.loads(echocmr("shards", "stats", "--json", vendor_set).stdout)
    assert described["view_mix"]["site_v"]["vendors"] == expected_mix()
    run = echocmr("shards", "verify", vendor_set)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_manifest_vendor_that_disagrees_with_the_json_fails(copy):
    table = _manifest(copy)
    was = table.column("vendor")[0].as_py()
    other = "siemens" if was != "siemens" else "ge"
    _write_manifest(copy, _set_vendor(table, 0, other))
    run = echocmr("shards", "verify", copy)
    assert run.returncode == 1
    assert f".json vendor {was!r} but manifest {other!r}" in run.stdout
    assert "view_mix does not match the manifest" in run.stdout  # stats.json recomputed


def test_patient_text_in_the_manifest_vendor_fails_and_is_not_shown(copy):
    _write_manifest(copy, _set_vendor(_manifest(copy), 0, PATIENT_TEXT))
    run = echocmr("shards", "verify", copy)
    assert run.returncode == 1
    assert "manifest vendor is not a name of the vendor vocabulary" in run.stdout
    assert "ZEBULON" not in run.stdout + run.stderr


def test_a_nulled_manifest_vendor_fails_and_a_dropped_column_fails(copy, tmp_path):
    _write_manifest(copy, _set_vendor(_manifest(copy), 0, None))
    run = echocmr("shards", "verify", copy)
    assert run.returncode == 1 and "but manifest None" in run.stdout
    dropped = str(tmp_path / "dropped")
    shutil.copytree(copy, dropped)
    _write_manifest(dropped, _manifest(dropped).drop_columns(["vendor"]))
    run = echocmr("shards", "verify", dropped)
    assert run.returncode == 1 and "lacks column(s) ['vendor']" in run.stdout


def test_a_changed_view_mix_in_stats_json_fails(copy):
    path = os.path.join(copy, "stats.json")
    stats = json.load(open(path))
    stats["view_mix"]["site_v"]["ge"]["A4C"] += 1
    open(path, "w").write(json.dumps(stats, indent=2) + "\n")
    run = echocmr("shards", "verify", copy)
    assert run.returncode == 1 and "view_mix does not match the manifest" in run.stdout


def test_patient_text_as_the_json_vendor_fails_and_is_not_shown(copy):
    """The attack: a ``.json`` whose vendor is free text, with the manifest and hashes made to
    agree with it."""
    def with_vendor(data: bytes) -> bytes:
        meta = json.loads(data)
        meta["vendor"] = PATIENT_TEXT
        return json.dumps(meta, separators=(",", ":")).encode()

    _, key, edited = rewrite_first_member(os.path.join(copy, "train-000000.tar"), with_vendor,
                                          tar_format=tarfile.USTAR_FORMAT)
    table = _manifest(copy)
    row = table.column("key").to_pylist().index(key)
    hashes = table.column("json_sha256").to_pylist()
    hashes[row] = hashlib.sha256(edited).hexdigest()
    table = table.set_column(table.column_names.index("json_sha256"), "json_sha256",
                             pa.array(hashes, pa.string()))
    _write_manifest(copy, _set_vendor(table, row, PATIENT_TEXT))
    run = echocmr("shards", "verify", copy)
    assert run.returncode == 1
    assert f"{key}: .json: sample {key}: vendor is not a name of the vendor vocabulary" \
        in run.stdout
    assert "ZEBULON" not in run.stdout + run.stderr
    out = os.path.join(os.path.dirname(copy), "resharded")
    run = echocmr("shards", "reshard", "--input", copy, "--out", out)
    assert run.returncode == 1 and "ZEBULON" not in run.stdout + run.stderr
    assert not os.path.exists(os.path.join(out, "manifest.parquet"))


# -- format-2 sets ---------------------------------------------------------------------------


def test_a_format_2_set_verifies_and_describes_its_clips_as_of_unknown_vendor():
    run = echocmr("shards", "verify", FORMAT2)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.load(open(os.path.join(FORMAT2, "stats.json")))["format_version"] == 2
    described = json.loads(echocmr("shards", "stats", "--json", FORMAT2).stdout)
    assert described["view_mix"]["old_site"]["vendors"] == {
        "unknown": {"A4C": 3, "A2C": 3, "PLAX": 2, "other": 2, "unknown": 2}}


def test_a_format_2_set_with_a_vendor_column_is_not_format_2(tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(FORMAT2, old)
    table = _manifest(old)
    _write_manifest(old, table.append_column("vendor", pa.array(["ge"] * len(table))))
    run = echocmr("shards", "verify", old)
    assert run.returncode == 1
    assert "column(s) the format does not have: ['vendor']" in run.stdout


def test_resharding_a_format_2_set_writes_the_same_shards_in_format_3(tmp_path):
    out = str(tmp_path / "out")
    run = echocmr("shards", "reshard", "--input", FORMAT2, "--out", out,
                  "--samples-per-shard", "4", "--seed", "3")
    assert run.returncode == 0, run.stderr
    got = digests(out)
    assert {n: d for n, d in got.items() if n in FORMAT2_RESHARDED} == FORMAT2_RESHARDED
    assert set(got) == {*FORMAT2_RESHARDED, "manifest.parquet", "stats.json"}
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["format_version"] == 3
    assert stats["view_mix"] == {"old_site": {"unknown": {"A4C": 3, "A2C": 3, "PLAX": 2,
                                                          "other": 2, "unknown": 2}}}
    manifest = _manifest(out)
    assert manifest.schema == MANIFEST_SCHEMA
    assert manifest.column("vendor").null_count == manifest.num_rows
    assert echocmr("shards", "verify", out).returncode == 0


def test_a_format_2_set_and_a_format_3_site_merge(vendor_set, tmp_path):
    out = str(tmp_path / "merged")
    run = echocmr("shards", "reshard", "--input", FORMAT2, vendor_set, "--out", out)
    assert run.returncode == 0, run.stderr
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["view_mix"] == {
        "old_site": {"unknown": {"A4C": 3, "A2C": 3, "PLAX": 2, "other": 2, "unknown": 2}},
        "site_v": expected_mix()}
    manifest = _manifest(out).to_pandas()
    assert manifest.loc[manifest["site"] == "site_v", "vendor"].notna().all()
    assert manifest.loc[manifest["site"] == "old_site", "vendor"].isna().all()
    run = echocmr("shards", "stats", out)
    assert "views at old_site" in run.stdout and "  elara: 4 clips" in run.stdout
    assert echocmr("shards", "verify", out).returncode == 0


def test_the_view_mix_counted_batch_by_batch_is_the_whole_tables(vendor_set):
    """What a streaming reader of the manifest gets (`VendorViewCounts.add` per record batch)
    equals the mix of the whole table, and a format-2 manifest's clips are all of unknown
    vendor."""
    from echocmr.shards.stats import VendorViewCounts, view_mix_by_vendor

    table = _manifest(vendor_set)
    counts = VendorViewCounts()
    for batch in table.to_batches(max_chunksize=3):
        counts.add(batch)
    assert counts.result() == view_mix_by_vendor(table) == {"site_v": expected_mix()}
    old = VendorViewCounts()
    for batch in pq.ParquetFile(os.path.join(FORMAT2, "manifest.parquet")).iter_batches(5):
        old.add(batch)
    assert old.result() == {"old_site": {"unknown": {"A4C": 3, "A2C": 3, "PLAX": 2, "other": 2,
                                                     "unknown": 2}}}
