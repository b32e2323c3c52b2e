"""Reshard's plan spilled to disk (issue 26): the same bytes whatever the run size, nothing left
behind.

`shards.reshard_plan` builds the plan from rows sorted outside memory (`shards.external_sort`)
in runs of `RUN_ROWS` records; here the runs are cut to a few records, so that every sort spills
many runs and every merge, key group and shard cut crosses run and chunk boundaries, and the
output must be the pinned golden set's byte for byte (`test_shards_golden`), with sites excluded
the same as with one run, and a repeated key refused naming the same key. Each run gets its own
temporary directory (``tempfile.tempdir``, this process only), which must be empty afterwards,
on success and on failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from test_shards_golden import GOLDEN_RESHARD, digests, write_site

import echocmr.shards.reshard as reshard_module
from echocmr.shards import external_sort
from echocmr.shards.external_sort import ExternalSort, be_key
from echocmr.shards.reshard import ReshardConfig, ReshardError, reshard


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Where this test's spills go (only this process's `tempfile`): checked empty after."""
    where = tmp_path / "scratch"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    return [write_site(str(root / "a"), "site_a", 40), write_site(str(root / "b"), "site_b", 26),
            write_site(str(root / "c"), "site_c", 17)]


@pytest.mark.parametrize("run_rows", [1, 3, 16])
def test_the_plan_in_small_runs_writes_the_golden_bytes(sites, tmp_path, scratch, monkeypatch,
                                                        run_rows):
    monkeypatch.setattr(reshard_module, "_RUN_ROWS", run_rows)
    monkeypatch.setattr(external_sort, "MAX_RUNS", 4)  # runs merged on disk as they come
    out = str(tmp_path / "merged")
    reshard(sites[:2], out, config=ReshardConfig(samples_per_shard=9, seed=11))
    assert digests(out) == GOLDEN_RESHARD
    assert os.listdir(scratch) == []


def test_excluding_a_site_in_small_runs_writes_what_one_run_writes(sites, tmp_path, scratch,
                                                                    monkeypatch):
    config = ReshardConfig(samples_per_shard=5, seed=3, exclude_sites=("site_b",))
    whole = str(tmp_path / "whole")
    reshard(sites, whole, config=config)
    monkeypatch.setattr(reshard_module, "_RUN_ROWS", 4)
    spilled = str(tmp_path / "spilled")
    summary = reshard(sites, spilled, config=config)
    assert digests(spilled) == digests(whole)
    assert sum(summary.clips.values()) == 40 + 17
    assert os.listdir(scratch) == []


def test_a_repeated_key_is_refused_the_same_way_and_nothing_is_left(sites, tmp_path, scratch,
                                                                     monkeypatch):
    twice = str(tmp_path / "twice")
    shutil.copytree(sites[1], twice)
    messages = []
    for run_rows in (None, 2, 5):
        monkeypatch.setattr(reshard_module, "_RUN_ROWS", run_rows)
        with pytest.raises(ReshardError, match="is in more than one input") as caught:
            reshard([sites[0], sites[1], twice], str(tmp_path / f"out{run_rows}"),
                    config=ReshardConfig(samples_per_shard=9))
        messages.append(str(caught.value))
        assert os.listdir(scratch) == []
    assert len(set(messages)) == 1 and "(26 duplicate keys)" in messages[0], messages


@pytest.mark.parametrize(("n", "run_rows", "max_runs"), [
    (0, 4, 128), (1, 4, 128), (1000, 7, 128), (20_000, 300, 128), (5000, 10_000, 128),
    (3000, 5, 3), (20_000, 300, 4)])
def test_the_external_sort_orders_as_numpy_does(n, run_rows, max_runs, scratch, monkeypatch):
    """Composite keys with many ties in the first column, chunks added in odd sizes; with few
    runs allowed at once, runs are merged into one on disk as they come."""
    monkeypatch.setattr(external_sort, "MAX_RUNS", max_runs)
    rng = np.random.default_rng(n)
    first = rng.integers(0, 5, n).astype(np.uint64)
    second = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
    dtype = np.dtype([("k", "S16"), ("row", "<i8")])
    with ExternalSort(dtype, run_rows=run_rows) as sort:
        for start in range(0, n, 333):
            records = np.empty(min(333, n - start), dtype)
            records["k"] = be_key(first[start:start + 333], second[start:start + 333])
            records["row"] = np.arange(start, start + len(records))
            sort.add(records)
        chunks = list(sort)
    got = np.concatenate(chunks)["row"] if chunks else np.empty(0, np.int64)
    assert got.tolist() == np.lexsort((second, first)).tolist()
    assert all(len(c) for c in chunks)
    assert os.listdir(scratch) == []
