"""The toolkit reads the manifest as Arrow columns, shard by shard (issue 26): the same answers as
the pandas computations they replace, on manifests laid out in ways the writers never produce,
and reshard checks every sample it copies against its input's manifest."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import echocmr.shards.manifest as manifest_module
from echocmr.shards.manifest import iter_by_shard, open_manifest, read_columns
from echocmr.shards.reader import read_manifest, read_stats
from echocmr.shards.reshard import ReshardConfig, ReshardError, reshard
from echocmr.shards.stats import compute_stats, describe
from echocmr.shards.verify import verify
from echocmr.shards.writer import manifest_bytes

from _shards_fixtures import make_shard_set


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    return [make_shard_set(str(root / site), site=site, seed=seed, n_patients=10, n_frames=6,
                           samples_per_shard=3)
            for seed, site in enumerate(("site_a", "site_b"))]


def _rewrite_manifest(directory: str, order: np.ndarray) -> None:
    table = pq.read_table(os.path.join(directory, "manifest.parquet"))
    with open(os.path.join(directory, "manifest.parquet"), "wb") as f:
        f.write(manifest_bytes(table.take(pa.array(order))))


def test_shards_rows_scattered_over_many_batches_are_all_collected(sites, tmp_path,
                                                                   monkeypatch):
    directory = str(tmp_path / "scattered")
    shutil.copytree(sites[0], directory)
    n = len(read_manifest(directory))
    _rewrite_manifest(directory, np.random.default_rng(3).permutation(n))
    monkeypatch.setattr(manifest_module, "_BATCH_ROWS", 2)  # a shard's rows span batches
    groups = dict(iter_by_shard(open_manifest(directory), ["key", "shard"]))
    reference = read_manifest(directory).groupby("shard")["key"].apply(sorted).to_dict()
    assert {s: sorted(t.column("key").to_pylist()) for s, t in groups.items()} == reference
    assert verify(directory) == []
    # ... and a row lost from the middle of a scattered shard is still missed by verify.
    _rewrite_manifest(directory, np.arange(n - 1))
    problems = verify(directory)
    assert any("not in manifest.parquet" in p.what for p in problems), problems


def test_stats_from_arrow_columns_equal_the_pandas_computation(sites):
    stats = read_stats(sites[0])
    args = dict(clip_format=stats["clip"], split_key_fingerprint=stats["split_key_fingerprint"],
                label_rules=stats.get("label_rules"))
    frame, columns = read_manifest(sites[0]), read_columns(sites[0])
    assert compute_stats(frame, **args) == compute_stats(columns, **args)
    assert compute_stats(columns, **args)["splits"] == stats["splits"]
    report = describe(sites[0])
    for split, rows in frame.groupby("split"):  # the pandas reference for the per-split tables
        summary = report["splits"][split]
        for column, name in (("site", "by_site"), ("view", "by_view")):
            expected = {str(v): {"clips": len(g), "studies": g["study_hash"].nunique(),
                                 "patients": g["patient_hash"].nunique()}
                        for v, g in rows.groupby(column)}
            assert summary[name] == expected
        per_shard = rows.groupby("shard").size()
        assert summary["shards"] == len(per_shard)
        assert summary["clips_per_shard"]["max"] == per_shard.max()
        assert summary["frames_per_clip"]["median"] == rows["n_frames"].median()


def test_reshard_refuses_an_input_sample_that_does_not_match_its_manifest(sites, tmp_path):
    damaged = str(tmp_path / "damaged")
    shutil.copytree(sites[1], damaged)
    table = pq.read_table(os.path.join(damaged, "manifest.parquet"))
    views = table.column("view").to_pylist()
    views[4] = "PLAX" if views[4] != "PLAX" else "A4C"  # the manifest no longer says the .json's
    table = table.set_column(table.column_names.index("view"), "view", pa.array(views))
    with open(os.path.join(damaged, "manifest.parquet"), "wb") as f:
        f.write(manifest_bytes(table))
    key = table.column("key")[4].as_py()
    with pytest.raises(ReshardError, match=f"{key}: .json view"):
        reshard([sites[0], damaged], str(tmp_path / "out"), config=ReshardConfig())


def test_reshard_gives_an_input_written_before_json_sha256_its_hashes(sites, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(sites[1], old)
    table = pq.read_table(os.path.join(old, "manifest.parquet")).drop_columns(["json_sha256"])
    pq.write_table(table, os.path.join(old, "manifest.parquet"))
    assert any("lacks column(s) ['json_sha256']" in p.what for p in verify(old))
    out = str(tmp_path / "out")
    reshard([sites[0], old], out, config=ReshardConfig(samples_per_shard=4))
    assert verify(out) == []
    merged = read_manifest(out)
    from echocmr.shards.reader import iter_samples

    hashes = {s.key: hashlib.sha256(s.meta.to_json()).hexdigest() for s in iter_samples(out)}
    assert dict(zip(merged["key"], merged["json_sha256"], strict=True)) == hashes
