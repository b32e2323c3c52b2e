"""Shard sets in an object store: write, read, verify and reshard against a real S3 server.

The server is moto's standalone server (real HTTP on loopback, started in a thread; the fixture
is in ``conftest.py``); the client side is the ordinary s3fs/botocore stack, configured only by
endpoint and credentials, exactly as a user would point it at MinIO or AWS. Nothing is patched.
"""

from __future__ import annotations

import pytest

from echocmr.shards import storage
from echocmr.shards.reader import iter_samples, list_shards, read_manifest, read_stats
from echocmr.shards.reshard import ReshardConfig, reshard
from echocmr.shards.verify import verify

from _shards_fixtures import make_shard_set


def test_storage_helpers_on_s3(s3_endpoint):
    url = "s3://echo/helpers"
    assert storage.is_url(url) and not storage.is_local("s3://x") and storage.is_local("file:///x")
    assert storage.join(url, "a.tar") == "s3://echo/helpers/a.tar"
    storage.atomic_write(storage.join(url, "a.bin"), b"hello")
    assert storage.exists(storage.join(url, "a.bin"))
    assert storage.listdir(url) == ["a.bin"]
    assert storage.read_bytes(storage.join(url, "a.bin")) == b"hello"
    assert storage.read_range(storage.join(url, "a.bin"), 1, 3) == b"ell"
    # A staged write that fails publishes nothing.
    with pytest.raises(RuntimeError), storage.StagedFile(storage.join(url, "b.bin")) as f:
        f.write(b"half")
        raise RuntimeError("crash")
    assert storage.listdir(url) == ["a.bin"]


def test_write_verify_and_reshard_through_s3(s3_endpoint, tmp_path):
    site_a = make_shard_set(
        "s3://echo/site_a",
        site="site_a",
        seed=0,
        n_patients=6,
        clips_per_patient=2,
        n_frames=8,
        samples_per_shard=3,
    )
    site_b = make_shard_set(
        str(tmp_path / "site_b"),
        site="site_b",
        seed=1,
        n_patients=6,
        clips_per_patient=2,
        n_frames=8,
        samples_per_shard=3,
    )
    (tmp_path / "site_b" / "ingest_report.parquet").write_bytes(b"site-local, never copied")
    assert verify(site_a) == []
    assert {s.key for s in iter_samples(site_a)} == set(read_manifest(site_a)["key"])
    assert all(p.startswith("s3://echo/site_a/") for p in list_shards(site_a))

    out = "s3://echo/merged"
    summary = reshard([site_a, site_b], out, config=ReshardConfig(samples_per_shard=4))
    assert sum(summary.clips.values()) == 24
    assert verify(out, decode=True) == []
    merged = read_manifest(out)
    expected = set(read_manifest(site_a)["key"]) | set(read_manifest(site_b)["key"])
    assert set(merged["key"]) == expected and len(merged) == len(expected)
    names = storage.listdir(out)
    assert "ingest_report.parquet" not in names and not [n for n in names if n.startswith(".")]
    assert read_stats(out).splits["train"].sites == ("site_a", "site_b")
