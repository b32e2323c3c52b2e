"""ShardSetWriter and shards.reader, round-tripped through the real readers.

The set is built once per module with real VP9 clips (`tests/_shards_fixtures.py`) and read back
by the stock webdataset library, by DALI's ``fn.readers.webdataset`` + ``fn.decoders.video`` on
CPU, by GNU ``tar``, and by our own reader.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds

from echocmr.shards import storage
from echocmr.shards.format import TASKS, Sample, decode_labels, index_name
from echocmr.shards.reader import iter_samples, list_shards, read_manifest, read_stats
from echocmr.shards.stats import pooled_pixel_stats
from echocmr.shards.writer import ShardSetWriter, WriterConfig

from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format, make_shard_set


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    return make_shard_set(
        str(tmp_path_factory.mktemp("set") / "a"), n_patients=8, clips_per_patient=2, n_frames=12
    )


def _manifest_by_key(directory):
    return read_manifest(directory).set_index("key")


def test_layout_manifest_and_stats(shard_set):
    names = sorted(os.listdir(shard_set))
    tars = [n for n in names if n.endswith(".tar")]
    assert "manifest.parquet" in names and "stats.json" in names
    assert all(index_name(t) in names for t in tars)
    assert not [n for n in names if n.startswith(".")]  # no temporaries left
    manifest = read_manifest(shard_set)
    assert len(manifest) == 16 and manifest["key"].is_unique
    # Patients never straddle splits; shards hold only their split, <= 4 samples each.
    assert (manifest.groupby("patient_hash")["split"].nunique() == 1).all()
    assert (manifest["shard"].str.split("-").str[0] == manifest["split"]).all()
    assert manifest.groupby("shard").size().max() <= 4
    stats = read_stats(shard_set).to_dict()
    assert stats["split_key_fingerprint"] == FIXTURE_SPLIT_KEY_FINGERPRINT
    assert stats["clip"] == clip_format()
    assert sum(stats["splits"][s]["clips"] for s in ("train", "val", "test")) == 16
    train = manifest[manifest["split"] == "train"]
    mean, std = pooled_pixel_stats(train["pixel_mean"], train["pixel_std"], train["n_pixels"])
    assert stats["pixel_mean"] == pytest.approx(mean) and stats["pixel_std"] == pytest.approx(std)
    wma = train["wma"].to_numpy()
    assert stats["splits"]["train"]["positives"]["wma"] == int(np.nansum(wma))
    assert manifest[list(TASKS)].isna().to_numpy().any()  # the fixture has unknown labels


def test_stock_webdataset_reads_every_sample(shard_set):
    manifest = _manifest_by_key(shard_set)
    seen = {}
    for sample in wds.WebDataset(list_shards(shard_set), shardshuffle=False, empty_check=False):
        seen[sample["__key__"]] = sample
    assert set(seen) == set(manifest.index)
    for key, sample in seen.items():
        row = manifest.loc[key]
        np.testing.assert_array_equal(
            decode_labels(sample["labels"]), row[list(TASKS)].to_numpy(dtype=np.float32)
        )
        meta = json.loads(sample["json"])
        assert meta["key"] == key and meta["split"] == row["split"]
        assert len(sample["webm"]) == row["video_bytes"]


def test_dali_reader_and_cpu_video_decoder_read_the_set(shard_set):
    from nvidia.dali import fn, pipeline_def

    tars = list_shards(shard_set)
    manifest = _manifest_by_key(shard_set)

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        video, labels, meta = fn.readers.webdataset(
            paths=tars,
            index_paths=[t[:-4] + ".idx" for t in tars],
            ext=["webm", "labels", "json"],
            missing_component_behavior="error",
            name="reader",
        )
        return fn.decoders.video(video, device="cpu"), labels, meta

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == len(manifest)
    keys = []
    for _ in range(len(manifest) // 4):
        frames, labels, meta = p.run()
        for i in range(len(frames)):
            key = json.loads(bytes(np.asarray(meta[i])))["key"]
            keys.append(key)
            clip = np.asarray(frames[i])
            assert clip.shape == (manifest.loc[key, "n_frames"], 112, 112, 3)
            # Grey: the three channels agree (the chroma planes are neutral).
            assert np.abs(clip[..., 0].astype(int) - clip[..., 2]).max() <= 2
            np.testing.assert_array_equal(
                decode_labels(np.asarray(labels[i]).tobytes()),
                manifest.loc[key, list(TASKS)].to_numpy(dtype=np.float32),
            )
    assert sorted(keys) == sorted(manifest.index)


def test_gnu_tar_lists_members_with_fixed_attributes(shard_set):
    tar_path = list_shards(shard_set, "train")[0]
    listing = subprocess.run(
        ["tar", "-tvf", tar_path], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert len(listing) == 12  # 4 samples x (json, labels, webm)
    for line in listing:
        assert line.startswith("-r--r--r-- echocmr/echocmr") and "1970-01-01 00:00" in line
    names = [line.split()[-1] for line in listing]
    assert [n.rsplit(".", 1)[1] for n in names[:3]] == ["json", "labels", "webm"]


def test_idx_files_equal_wds2idx_output(shard_set, tmp_path):
    for tar_path in list_shards(shard_set):
        ref = tmp_path / "ref.idx"
        subprocess.run(
            [sys.executable, "-m", "wds2idx", tar_path, str(ref)], check=True, capture_output=True
        )
        assert ref.read_text() == open(tar_path[:-4] + ".idx").read(), tar_path


def test_iter_samples_round_trip_and_decode(shard_set):
    from echocmr.ingest.encode import decode_webm

    manifest = _manifest_by_key(shard_set)
    samples = list(iter_samples(shard_set, split="val"))
    assert {s.key for s in samples} == set(manifest.index[manifest["split"] == "val"])
    frames, fps = decode_webm(samples[0].video)
    assert frames.shape == (12, 112, 112) and fps == pytest.approx(30.0)
    assert samples[0].meta.n_frames == 12 and samples[0].labels.dtype == np.float32


def test_same_input_gives_byte_identical_set(shard_set, tmp_path):
    again = make_shard_set(str(tmp_path / "b"), n_patients=8, clips_per_patient=2, n_frames=12)
    names = sorted(os.listdir(shard_set))
    assert names == sorted(os.listdir(again))
    match, mismatch, errors = filecmp.cmpfiles(shard_set, again, names, shallow=False)
    assert not mismatch and not errors


def _one_sample(key="site_a-00000000000000aa", split="train", patient="p1", fps=30.0):
    meta = {
        "site": "site_a",
        "split": split,
        "patient_hash": patient,
        "study_hash": "s1",
        "view": "A4C",
        "fps": fps,
        "n_frames": 2,
    }
    return Sample(
        key=key, video=b"\x1a\x45\xdf\xa3 fake webm", labels=np.zeros(5, np.float32), meta=meta
    )


def _writer(out, **config):
    return ShardSetWriter(
        str(out),
        config=WriterConfig(**config),
        clip_format=clip_format(),
        split_key_fingerprint="f" * 16,
    )


def test_writer_refuses_inconsistent_samples(tmp_path):
    writer = _writer(tmp_path)
    writer.add(_one_sample(), pixel_stats=(1.0, 1.0, 10))
    with pytest.raises(ValueError, match="duplicate"):
        writer.add(_one_sample(), pixel_stats=(1.0, 1.0, 10))
    with pytest.raises(ValueError, match="already in split"):
        writer.add(_one_sample("site_a-00000000000000bb", split="test"), pixel_stats=(1, 1, 1))
    with pytest.raises(ValueError, match="fps"):
        writer.add(
            _one_sample("site_a-00000000000000cc", patient="p2", fps=25.0), pixel_stats=(1, 1, 1)
        )
    with pytest.raises(ValueError, match="key prefix"):
        writer.add(_one_sample("site_b-00000000000000dd", patient="p3"), pixel_stats=(1, 1, 1))
    writer.abort()


def test_crash_leaves_no_half_shard_and_rerun_completes(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), _writer(out, samples_per_shard=2) as writer:
        for i in range(3):
            writer.add(_one_sample(f"site_a-{i:016x}", patient=f"p{i}"), pixel_stats=(1, 1, 1))
        raise RuntimeError("boom")
    # The finished shard is whole; the open one and the manifest were never published.
    assert sorted(os.listdir(out)) == ["train-000000.idx", "train-000000.tar"]
    with tarfile.open(out / "train-000000.tar") as tar:
        assert len(tar.getnames()) == 6
    # A crash that kills the process leaves a hidden temp file; the next writer removes it and a
    # re-run with fewer samples drops the earlier run's extra shards.
    (out / f".train-000001.tar{storage.TEMP_MARK}dead").write_bytes(b"partial")
    (out / "train-000007.tar").write_bytes(b"old")
    with _writer(out, samples_per_shard=2) as writer:
        writer.add(_one_sample("site_a-00000000000000ff"), pixel_stats=(1, 1, 1))
    assert sorted(os.listdir(out)) == [
        "manifest.parquet",
        "stats.json",
        "train-000000.idx",
        "train-000000.tar",
    ]


def test_shard_mb_cuts_shards_by_size(tmp_path):
    out = tmp_path / "mb"
    with _writer(out, samples_per_shard=1000, shard_mb=0.008) as writer:
        for i in range(6):  # each sample takes 3 KB in the tar
            writer.add(_one_sample(f"site_a-{i:016x}", patient=f"p{i}"), pixel_stats=(1, 1, 1))
    sizes = [os.path.getsize(p) for p in list_shards(str(out))]
    assert len(sizes) == 3
    assert read_manifest(str(out)).groupby("shard").size().tolist() == [2, 2, 2]


@pytest.mark.parametrize("config", [{"samples_per_shard": 3}, {"samples_per_shard": 100,
                                                               "shard_mb": 0.03}])
def test_planned_shards_written_in_any_order_equal_the_sequential_set(shard_set, tmp_path,
                                                                      config):
    """`plan` + `write_shard` (one task per shard, any order) == `add` in order, byte for byte:
    what lets ingest write shard ranges in parallel."""
    from echocmr.shards.writer import SampleRef, write_shard

    manifest = _manifest_by_key(shard_set)
    samples = sorted(iter_samples(shard_set), key=lambda s: (s.meta.split, s.key))
    stats = {k: (manifest.loc[k, "pixel_mean"], manifest.loc[k, "pixel_std"],
                 int(manifest.loc[k, "n_pixels"])) for k in manifest.index}
    sequential, planned = tmp_path / "seq", tmp_path / "plan"
    with _writer(sequential, **config) as writer:
        for sample in samples:
            writer.add(sample, pixel_stats=stats[sample.key])
    writer = _writer(planned, **config)
    for sample in samples:
        writer.plan(SampleRef(key=sample.key, meta=sample.meta, labels=sample.labels,
                              video_size=len(sample.video),
                              video_sha256=hashlib.sha256(sample.video).hexdigest()),
                    pixel_stats=stats[sample.key])
    by_key = {s.key: s for s in samples}
    assert len(writer.planned) > 2
    with pytest.raises(RuntimeError, match="not written"):
        writer.close()  # before the tars exist
    for name, keys in reversed(list(writer.planned.items())):  # not the plan's order
        write_shard(str(planned), name, [by_key[k] for k in keys])
    writer.close()
    names = sorted(os.listdir(sequential))
    assert names == sorted(os.listdir(planned)) and any(n.endswith(".idx") for n in names)
    match, mismatch, errors = filecmp.cmpfiles(sequential, planned, names, shallow=False)
    assert not mismatch and not errors


def test_pooled_pixel_stats_equal_direct_computation():
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 256, size=rng.integers(50, 500)).astype(np.float64) for _ in range(7)]
    mean, std = pooled_pixel_stats(
        [c.mean() for c in clips], [c.std() for c in clips], [c.size for c in clips]
    )
    everything = np.concatenate(clips)
    assert mean == pytest.approx(everything.mean()) and std == pytest.approx(everything.std())


def test_fixture_signal_makes_wma_visible_as_motion(shard_set):
    """WMA-positive fixture clips stand still, negatives beat: training tests rely on this."""
    from echocmr.ingest.encode import decode_webm

    motion = {0.0: [], 1.0: []}
    for sample in iter_samples(shard_set):
        frames, _ = decode_webm(sample.video)
        frame_diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean()
        motion[float(sample.labels[0])].append(frame_diff)
    assert motion[0.0] and motion[1.0]
    assert max(motion[1.0]) < min(motion[0.0])


def test_file_urls_and_local_atomic_writes(tmp_path):
    url = f"file://{tmp_path}/viaurl"
    with _writer(url) as writer:
        writer.add(_one_sample(), pixel_stats=(1, 1, 1))
    assert list_shards(url) == [f"{url}/train-000000.tar"]
    assert [s.key for s in iter_samples(url)] == ["site_a-00000000000000aa"]
    assert storage.canonical(url) == storage.canonical(str(tmp_path / "viaurl") + "/")
    target = tmp_path / "x.bin"
    with pytest.raises(ValueError), storage.StagedFile(str(target)) as f:
        f.write(b"partial")
        raise ValueError("crash")
    assert os.listdir(tmp_path) == ["viaurl"]  # neither the target nor a temp file
    storage.atomic_write(str(target), b"whole")
    assert target.read_bytes() == b"whole"


def test_tar_bytes_equal_webdatasets_tarwriter_and_writing_imports_no_torch(shard_set, tmp_path):
    """`_TarStream` writes what webdataset's TarWriter wrote before it (sizes 0, 1, 511, 512, 513
    and real shards re-written member by member), and writing a shard set imports neither
    webdataset nor torch (which cost every ingest driver ~2 s)."""
    import io

    from echocmr.shards.writer import TAR_MODE, TAR_MTIME, TAR_USER, _TarStream

    rng = np.random.default_rng(0)
    samples = [{"__key__": f"s-{i:03d}", "json": rng.bytes(n), "labels": rng.bytes(20),
                "webm": rng.bytes(3 * n + 7)} for i, n in enumerate((0, 1, 511, 512, 513, 5000))]
    for tar_path in list_shards(shard_set):
        with tarfile.open(tar_path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        by_key: dict = {}
        for name, data in members:
            key, ext = name.split(".", 1)
            by_key.setdefault(key, {"__key__": key})[ext] = data
        samples.extend(by_key.values())
    ours, theirs = io.BytesIO(), io.BytesIO()
    stream = _TarStream(ours)
    with wds.TarWriter(theirs, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, mtime=TAR_MTIME,
                       encoder=False) as stock:
        for sample in samples:
            stream.write(sample)
            stock.write(sample)
    stream.close()
    assert len(ours.getvalue()) > 100_000
    assert ours.getvalue() == theirs.getvalue()
    code = ("import sys; from _shards_fixtures import make_shard_set; "
            f"make_shard_set({str(tmp_path / 'b')!r}, n_patients=2, clips_per_patient=1, "
            "n_frames=4); print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(__file__))
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
