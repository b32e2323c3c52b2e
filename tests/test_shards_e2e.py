"""Issue 4's first "done when", end to end through the real commands (slow: ~3 min on 2 cores).

Two synthetic cohorts (different seeds) are ingested as two sites, resharded into one set, and the
result verified with decoding. The default test run covers the same properties on the shards
fixture (tests/test_shards_toolkit.py); this one proves them on what ingest really writes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from echocmr.shards.reader import read_manifest
from echocmr.shards.verify import verify

pytestmark = pytest.mark.slow


def _echocmr(*args: str, cwd) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "echocmr", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_two_ingested_sites_reshard_into_one_verified_set(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sites = []
    for seed, site in ((11, "site_north"), (12, "site_south")):
        cohort = tmp_path / f"cohort{seed}"
        _echocmr(
            "synth",
            "--out",
            str(cohort),
            "--patients",
            "10",
            "--seed",
            str(seed),
            "--workers",
            "2",
            cwd=repo,
        )
        out = tmp_path / site
        _echocmr(
            "ingest",
            "--dicom",
            str(cohort / "dicom"),
            "--labels",
            str(cohort / "cmr_labels.parquet"),
            "--views",
            str(cohort / "views.csv"),
            "--out",
            str(out),
            "--site",
            site,
            "--workers",
            "2",
            "--no-progress",
            cwd=repo,
        )
        assert (out / "ingest_report.parquet").exists()
        sites.append(str(out))

    merged = str(tmp_path / "merged")
    _echocmr(
        "shards",
        "reshard",
        "--input",
        *sites,
        "--out",
        merged,
        "--samples-per-shard",
        "6",
        "--decode",
        cwd=repo,
    )
    assert verify(merged, decode=True) == []
    assert "ingest_report.parquet" not in os.listdir(merged)

    before = [read_manifest(s) for s in sites]
    after = read_manifest(merged)
    assert len(after) == sum(len(m) for m in before)
    assert set(after["key"]) == set().union(*(set(m["key"]) for m in before))
    old_split = {p: s for m in before for p, s in zip(m["patient_hash"], m["split"], strict=True)}
    assert all(
        old_split[p] == s for p, s in zip(after["patient_hash"], after["split"], strict=True)
    )
    # Where both sites have two or more samples per output shard of a split, every shard mixes.
    for split, rows in after.groupby("split"):
        n_shards = rows["shard"].nunique()
        if rows.groupby("site").size().min() >= 2 * n_shards and rows["site"].nunique() == 2:
            for shard, part in rows.groupby("shard"):
                assert part["site"].nunique() == 2, (split, shard)
