"""shards.stage against a real S3 server (moto, `_s3_fixtures`): a shard set at an ``s3://`` URL
copied onto local disk for DALI.

The copy is checked against the local original it was uploaded from (same bytes, verifies, same
samples); a re-run downloads nothing; an interrupted staging finishes on the next call; a
changed remote set replaces the copy; two processes staging at once download once. Then the
readers on top: the training loader gives the same batches from a staged set as from the
original, eval infers on an ``s3://`` URL (in process and as a Ray task would), and a training
worker stages its set and refuses one that changed since the run started. The lock's new
waiting mode is tested here too (``tests/test_shards_lock.py`` covers the refusing default).

Slow: a whole Ray training run on an ``s3://`` set.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch

import echocmr.shards.stage as stage_module
from echocmr.shards.format import MANIFEST_FILE, STATS_FILE
from echocmr.shards.lock import LOCK_FILE, OutputLocked, exclusive_output
from echocmr.shards.reader import IncompleteShardSetError, iter_samples, read_manifest, read_stats
from echocmr.shards.stage import (
    MARKER_FILE,
    StageError,
    default_cache_dir,
    stage,
    stage_report,
    staged_dir,
)
from echocmr.shards.storage import TEMP_MARK
from echocmr.shards.verify import verify

from _eval_model import make_checkpoint
from _s3_fixtures import child_env, remove_prefix, upload
from _shards_fixtures import make_shard_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make(path: str, seed: int, samples_per_shard: int) -> str:
    """8 patients x 2 clips of 16 frames at 32x32: 8 train, 4 val and 4 test clips."""
    return make_shard_set(path, seed=seed, n_patients=8, clips_per_patient=2, n_frames=16,
                          size=32, samples_per_shard=samples_per_shard)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The local set that the tests upload (3 clips per tar: 7 tars), with an ingest report."""
    path = _make(str(tmp_path_factory.mktemp("stage") / "set"), seed=0, samples_per_shard=3)
    with open(os.path.join(path, "ingest_report.parquet"), "wb") as f:
        f.write(b"site-local: never staged")
    return path


def set_files(directory: str) -> list[str]:
    """The files a staged copy of a whole set holds: manifest, stats, tars and indexes."""
    return sorted(n for n in os.listdir(directory)
                  if n in (MANIFEST_FILE, STATS_FILE) or n.endswith((".tar", ".idx")))


def read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


def test_staging_copies_the_set_and_a_rerun_downloads_nothing(s3_endpoint, original, tmp_path):
    url = upload(original, "s3://echo/whole")
    cache = str(tmp_path / "cache")
    first = stage_report(url, cache)
    local = first.directory
    assert local == staged_dir(url, cache) and os.path.dirname(local) == cache
    assert os.path.basename(local).startswith("echo_whole-")
    assert sorted(first.downloaded) == set_files(original) and first.present == 0
    assert first.bytes == sum(os.path.getsize(os.path.join(original, n))
                              for n in set_files(original))
    # Byte for byte the original; nothing else (no report, no lock, no temporaries).
    assert sorted(os.listdir(local)) == sorted([*set_files(original), MARKER_FILE])
    assert all(read(local, n) == read(original, n) for n in set_files(original))
    assert verify(local) == []
    ours = [(s.key, s.video, s.labels.tobytes()) for s in iter_samples(local)]
    assert ours == [(s.key, s.video, s.labels.tobytes()) for s in iter_samples(original)]

    again = stage_report(url + "/", cache)  # the same set, however the URL is written
    assert again.directory == local and again.downloaded == [] and again.removed == []
    assert again.present == len(set_files(original)) and not again.refreshed
    assert stage(url, cache) == local
    assert stage(original, cache) == original  # a local set is used where it is
    assert stage("file://" + original) == original


def test_the_default_cache_and_distinct_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHOCMR_CACHE", str(tmp_path / "env"))
    assert staged_dir("s3://b/x").startswith(str(tmp_path / "env") + os.sep)
    monkeypatch.delenv("ECHOCMR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "echocmr" / "shards")
    # Names that sanitise alike stay apart by the URL's hash; a trailing '/' is the same URL.
    assert staged_dir("s3://b/x y", "c") != staged_dir("s3://b/x_y", "c")
    assert staged_dir("s3://b/x", "c") != staged_dir("gs://b/x", "c")
    assert staged_dir("s3://b/x/", "c") == staged_dir("s3://b/x", "c")
    with pytest.raises(ValueError, match="splits must be among"):
        stage_report("s3://b/x", "c", splits=["training"])


def test_some_splits_then_more(s3_endpoint, original, tmp_path):
    url = upload(original, "s3://echo/splits")
    cache = str(tmp_path / "cache")
    test_only = stage_report(url, cache, splits=["test"])
    test_files = [n for n in set_files(original) if n.startswith("test-")]
    assert sorted(test_only.downloaded) == sorted([*test_files, MANIFEST_FILE, STATS_FILE])
    from echocmr.read.loader import split_files

    tars, indexes, counts = split_files(test_only.directory, "test")
    assert sum(counts) == (read_manifest(original)["split"] == "test").sum()
    with pytest.raises(FileNotFoundError):
        split_files(test_only.directory, "train")
    more = stage_report(url, cache, splits=("train", "val"))
    assert sorted(more.downloaded) == [n for n in set_files(original)
                                       if n.startswith(("train-", "val-"))]
    assert verify(more.directory) == []


def test_an_interrupted_staging_finishes_on_the_next_run(s3_endpoint, original, tmp_path,
                                                         monkeypatch):
    url = upload(original, "s3://echo/crash")
    cache = str(tmp_path / "cache")
    local = staged_dir(url, cache)
    real_fetch = stage_module._fetch

    def fetch_but_fail_one(url, directory, name):
        if name == "val-000001.tar":
            raise ConnectionError("network gone")
        return real_fetch(url, directory, name)

    monkeypatch.setattr(stage_module, "_fetch", fetch_but_fail_one)
    with pytest.raises(ConnectionError):
        stage(url, cache)
    monkeypatch.undo()
    with pytest.raises(IncompleteShardSetError):  # no manifest: no reader takes it for a set
        read_manifest(local)
    assert not os.path.exists(os.path.join(local, LOCK_FILE))
    # More damage, as a killed process leaves it: a temporary, a lost tar, a short file.
    staged = [n for n in set_files(local) if n.endswith(".tar")]
    assert len(staged) >= 2
    os.remove(os.path.join(local, staged[0]))
    with open(os.path.join(local, staged[1]), "r+b") as f:
        f.truncate(100)
    temp = os.path.join(local, f".train-000000.tar{TEMP_MARK}0123456789ab")
    with open(temp, "wb") as f:
        f.write(b"half a download")
    intact = {n for n in set_files(local) if read(local, n) == read(original, n)}

    report = stage_report(url, cache)
    assert sorted(report.downloaded) == sorted(set(set_files(original)) - intact)
    assert {"val-000001.tar", staged[0], staged[1]} <= set(report.downloaded)
    assert report.present == len(intact) and not report.refreshed
    assert not os.path.exists(temp)
    assert all(read(local, n) == read(original, n) for n in set_files(original))
    assert verify(local) == []


def test_a_changed_remote_set_replaces_the_staged_copy(s3_endpoint, original, tmp_path):
    url = upload(original, "s3://echo/changing")
    cache = str(tmp_path / "cache")
    local = stage(url, cache)
    # The set is rewritten at the same URL: other clips, 5 per tar (fewer tars).
    newer = _make(str(tmp_path / "newer"), seed=1, samples_per_shard=5)
    remove_prefix(url)
    upload(newer, url)
    report = stage_report(url, cache)
    assert report.refreshed and report.directory == local
    assert sorted(report.downloaded) == set_files(newer) and report.present == 0
    gone = set(set_files(original)) - set(set_files(newer))
    assert gone and gone <= set(report.removed)
    assert set_files(local) == set_files(newer)
    assert all(read(local, n) == read(newer, n) for n in set_files(newer))
    assert verify(local) == []


def test_a_set_that_changes_during_staging_is_an_error(s3_endpoint, original, tmp_path,
                                                       monkeypatch):
    url = upload(original, "s3://echo/racing")
    cache = str(tmp_path / "cache")
    newer = _make(str(tmp_path / "newer"), seed=2, samples_per_shard=3)
    real_fetch, rewritten = stage_module._fetch, []

    def fetch_while_a_writer_rewrites(url_, directory, name):
        if not rewritten:  # a writer publishes another manifest meanwhile
            rewritten.append(name)
            import fsspec

            fsspec.filesystem("s3").put_file(os.path.join(newer, MANIFEST_FILE),
                                             f"echo/racing/{MANIFEST_FILE}")
        return real_fetch(url_, directory, name)

    monkeypatch.setattr(stage_module, "_fetch", fetch_while_a_writer_rewrites)
    with pytest.raises(StageError, match="changed while it was being staged"):
        stage(url, cache, threads=1)
    assert not os.path.exists(os.path.join(staged_dir(url, cache), MANIFEST_FILE))


def test_two_processes_staging_one_set_download_it_once(s3_endpoint, original, tmp_path):
    url = upload(original, "s3://echo/shared")
    cache = str(tmp_path / "cache")
    code = textwrap.dedent(f"""
        import json, logging, sys
        sys.path.insert(0, {ROOT!r})
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
        from echocmr.shards.stage import stage_report
        report = stage_report({url!r}, {cache!r})
        print(json.dumps({{"directory": report.directory, "downloaded": report.downloaded}}))
    """)
    children = []
    # Hold the lock ourselves until both children wait for it, so they surely overlap.
    with exclusive_output(staged_dir(url, cache), "test"):
        for _ in range(2):
            children.append(subprocess.Popen(
                [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=child_env(s3_endpoint)))
        for child in children:
            seen = []
            for line in child.stderr:
                seen.append(line)
                if "waiting for the lock" in line:
                    break
            else:
                pytest.fail(f"the child never waited for the lock: {''.join(seen)}")
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["directory"] == results[1]["directory"] == staged_dir(url, cache)
    counts = sorted(len(r["downloaded"]) for r in results)
    assert counts == [0, len(set_files(original))]  # one downloaded all, the other nothing
    assert verify(staged_dir(url, cache)) == []


class _Waiting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for the lock" in record.getMessage():
            self.event.set()


def test_the_lock_waits_for_its_holder_when_asked(tmp_path):
    logger = logging.getLogger("echocmr.shards.lock")
    handler, level = _Waiting(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    got = []

    def waiter():
        with exclusive_output(str(tmp_path), "stage", wait_s=120):
            got.append(True)

    try:
        with exclusive_output(str(tmp_path), "stage"):
            thread = threading.Thread(target=waiter)
            thread.start()
            assert handler.event.wait(60), "the waiter never logged that it waits"
            assert not got  # still waiting while we hold it
        thread.join(60)
        assert got == [True]
        with exclusive_output(str(tmp_path), "stage"):  # a bounded wait gives up, naming it
            with pytest.raises(OutputLocked, match=r"echocmr stage, pid \d+ .* after waiting"):
                with exclusive_output(str(tmp_path), "stage", wait_s=0.3):
                    pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_training_loader_reads_a_staged_set_like_the_original(s3_endpoint, original,
                                                                  tmp_path):
    from echocmr.model.contract import InputSpec
    from echocmr.read.config import AugmentConfig, DataConfig
    from echocmr.read.loader import ClipLoader, split_files

    url = upload(original, "s3://echo/train")
    with pytest.raises(ValueError, match="stage it onto local disk first"):
        split_files(url, "train")
    local = stage(url, str(tmp_path / "cache"), splits=["train"])
    data = DataConfig(frames=4, period=2, size=32, batch_size=3, num_threads=1, prefetch=1,
                      augment=AugmentConfig(pad=4))
    stats = read_stats(original)
    spec = InputSpec.build(data, stats)

    def batches(shards):
        loader = ClipLoader(shards, "train", data, spec=spec, train=True, stats=stats)
        return list(loader.epoch(1))

    ours, theirs = batches(local), batches(original)
    assert len(ours) == len(theirs) == 3  # 8 clips, 3 a batch
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys == b.keys
        assert torch.equal(a.clips, b.clips) and torch.equal(a.valid, b.valid)
        assert torch.equal(torch.nan_to_num(a.labels, -1), torch.nan_to_num(b.labels, -1))


def test_eval_infers_on_an_s3_url(s3_endpoint, original, tmp_path):
    from echocmr.eval.infer import InferConfig, _ray_task, infer_split

    url = upload(original, "s3://echo/eval")
    ckpt = make_checkpoint(str(tmp_path / "ckpt"), read_stats(original))
    cache = str(tmp_path / "cache")
    config = InferConfig(cache_dir=cache)
    ours, spec = infer_split(url, "test", ckpt, config=config)
    theirs, _ = infer_split(original, "test", ckpt, config=config)
    pd.testing.assert_frame_equal(ours, theirs)
    assert set(ours["key"]) == set(read_manifest(original).query("split == 'test'")["key"])
    assert sorted(os.listdir(staged_dir(url, cache))) == sorted(
        [MANIFEST_FILE, STATS_FILE, MARKER_FILE,
         *[n for n in set_files(original) if n.startswith("test-")]])

    # A Ray task gets tar names of a set at a URL and stages the split where it runs.
    part, _ = _ray_task(ckpt, ["test-000001.tar"], [None], (32, 32),
                        asdict(InferConfig(cache_dir=str(tmp_path / "node2"))), None, url, "test")
    keys = {s.key for s in iter_samples([os.path.join(original, "test-000001.tar")])}
    assert set(part["key"]) == keys
    expected = theirs[theirs["key"].isin(keys)].reset_index(drop=True)
    part = part.sort_values(["key", "clip_index"], ignore_index=True)
    np.testing.assert_allclose(part["p_wma"], expected["p_wma"], rtol=1e-5, atol=1e-6)


def test_a_training_worker_stages_its_set_and_refuses_a_changed_one(s3_endpoint, original,
                                                                    tmp_path):
    from echocmr.model.tracking import manifest_digest
    from echocmr.train.config import ConfigError, TrainConfig
    from echocmr.train.loop import _local_shards

    with pytest.raises(ConfigError, match="cache_dir must be a local directory"):
        TrainConfig(cache_dir="s3://bucket/cache")
    url = upload(original, "s3://echo/worker")
    cache = str(tmp_path / "cache")
    digest = manifest_digest(url)
    assert _local_shards(original, cache, digest) == original
    local = _local_shards(url, cache, digest)
    assert local == staged_dir(url, cache) and manifest_digest(local) == digest
    assert not [n for n in os.listdir(local) if n.startswith("test-")]  # train and val only
    with pytest.raises(RuntimeError, match="changed after this run started"):
        _local_shards(url, cache, "0" * 64)


@pytest.mark.slow
def test_ray_training_on_an_s3_set(s3_endpoint, tmp_path, monkeypatch):
    import ray

    from echocmr.train.config import TrainConfig
    from echocmr.train.loop import run_training

    from _train_fixtures import make_tiny_shards, tiny_config

    url = upload(make_tiny_shards(str(tmp_path / "tiny")), "s3://echo/tiny")
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_endpoint)  # Ray's workers inherit it
    config = TrainConfig.from_dict(tiny_config(epochs=1, workers=2, cache_dir=cache,
                                               storage=str(tmp_path / "runs"), run_name="s3"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        outcome = run_training(config, url, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    finally:
        ray.shutdown()
    assert outcome.best_epoch == 0 and outcome.model_uri
    local = staged_dir(url, cache)
    assert read(local, MANIFEST_FILE) == read(str(tmp_path / "tiny"), MANIFEST_FILE)
    assert not [n for n in os.listdir(local) if n.startswith("test-")]
