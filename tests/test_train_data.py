"""read.loader: the DALI pipeline on real shards, checked against the plain-Python shard reader."""

import json
import shutil

import numpy as np
import pytest
import torch

from echocmr.ingest.encode import decode_webm, encode_webm
from echocmr.model.contract import InputSpec, frames_to_clip
from echocmr.read.config import DataConfig
from echocmr.read.loader import ClipLoader, split_files
from echocmr.shards.format import FormatVersionError, Sample, ShardStats
from echocmr.shards.reader import iter_samples, read_manifest, read_stats
from echocmr.shards.writer import ShardSetWriter, WriterConfig

from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format
from _train_fixtures import make_tiny_shards

LEVELS = (0, 5, 10, 40, 128, 225, 250, 255)  # grey bands, 8 pixels wide: 64 across


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(str(tmp_path_factory.mktemp("shards")))


def loader(shards, split="train", train=True, rank=0, world=1, **data):
    stats = read_stats(shards)
    config = DataConfig(**{"frames": 4, "period": 2, "size": 32, "batch_size": 4,
                           "num_threads": 1, **data})
    spec = InputSpec.build(config, stats)
    return ClipLoader(shards, split, config, spec=spec, train=train, stats=stats, rank=rank,
                      world=world)


def valid_keys(batches):
    return [k for b in batches for k, v in zip(b.keys, b.valid.tolist(), strict=True) if v]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_partition_the_split_with_equal_batch_counts(shards, world):
    manifest = read_manifest(shards)
    expected = sorted(manifest.loc[manifest.split == "train", "key"])
    seen, counts = [], set()
    for rank in range(world):
        ld = loader(shards, rank=rank, world=world)
        batches = list(ld.epoch(0))
        counts.add(len(batches))
        keys = valid_keys(batches)
        assert len(keys) == len(set(keys)) == ld.shard_sizes[rank]  # read.assign.loads
        seen += keys
        for b in batches:
            assert b.clips.shape == (4, 1, 4, 32, 32) and b.clips.dtype == torch.float32
            # padding (repeats of a rank's last sample) only ever comes last
            assert b.valid.tolist() == sorted(b.valid.tolist(), reverse=True)
    assert len(counts) == 1  # every rank runs the same number of steps: no DDP hang
    assert sorted(seen) == expected


def test_labels_and_pixels_equal_the_plain_reader(shards):
    """Eval mode (centred clip, no augmentation) equals frames_to_clip on decode_webm's frames
    exactly: the round trip that frames_to_clip emulates leaves decoded values unchanged."""
    samples = {s.key: s for s in iter_samples(shards, "val")}
    ld = loader(shards, "val", train=False, frames=12)  # 12 x period 2 > 20 frames: padded
    checked = 0
    for batch in ld.epoch(0):
        for key, clip, labels, ok in zip(batch.keys, batch.clips, batch.labels, batch.valid,
                                         strict=True):
            if not ok:
                continue
            np.testing.assert_array_equal(labels.numpy(), samples[key].labels)
            y, _ = decode_webm(samples[key].video)
            expected = frames_to_clip(y, ld.spec)
            torch.testing.assert_close(clip, expected, rtol=0, atol=1e-5)
            # frames past the end are black: the normalised value of decoder output 0
            pad_value = -ld.spec.mean / ld.spec.std
            assert torch.allclose(clip[:, -1], torch.full_like(clip[:, -1], pad_value))
            checked += 1
    assert checked == len(samples)


def test_normalisation_uses_stats_of_luma(shards):
    """Train clips are ~zero-mean unit-std in Y units: stats.json's mean/std are of Y."""
    ld = loader(shards, "train", train=False, frames=8)
    x = torch.cat([b.clips[b.valid] for b in ld.epoch(0)])
    assert abs(float(x.mean())) < 0.15 and abs(float(x.std()) - 1) < 0.15


def test_epochs_replay_exactly_and_differ_from_each_other(shards):
    ld = loader(shards)
    first = list(ld.epoch(1))
    again = list(ld.epoch(1))
    assert [b.keys for b in first] == [b.keys for b in again]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.clips, b.clips)
    tail = list(ld.epoch(1, start_batch=2))  # resuming mid-epoch gives the same suffix
    assert [b.keys for b in tail] == [b.keys for b in first[2:]]
    assert torch.equal(tail[0].clips, first[2].clips)
    other = list(ld.epoch(2))
    assert [b.keys for b in other] != [b.keys for b in first]  # reshuffled per epoch


def test_augmentation_only_in_training(shards):
    plain = loader(shards, "val", train=False)
    assert [torch.equal(a.clips, b.clips) for a, b in zip(plain.epoch(0), plain.epoch(3),
                                                          strict=True)] == [True, True]
    off = loader(shards, "train", augment={"enabled": False})
    on = loader(shards, "train")
    a, b = next(iter(off.epoch(0))), next(iter(on.epoch(0)))
    assert a.keys == b.keys  # same samples and clip starts, only the pixels change
    assert not torch.equal(a.clips, b.clips)


def test_resize_and_errors(shards, tmp_path):
    ld = loader(shards, "val", train=False, size=16)
    batch = next(iter(ld.epoch(0)))
    assert batch.clips.shape == (4, 1, 4, 16, 16)
    with pytest.raises(FileNotFoundError, match="no train-"):
        ClipLoader(str(tmp_path), "train", DataConfig(), spec=ld.spec, train=True)
    with pytest.raises(ValueError, match="fewer than the 40 workers"):
        loader(shards, "val", rank=0, world=40)


# -- grey range: shards decode to the ingested grey levels, dark and bright included ------------


def _radius(t: int) -> np.ndarray:
    """Distance of each pixel from the centre of the echo clip's blood pool in frame ``t``."""
    yy, xx = np.mgrid[0:64, 0:64]
    return np.hypot(yy - 32, xx - 32 - t % 3)


def _grey_clips() -> dict[str, np.ndarray]:
    """Two 12-frame 64x64 clips: grey bands at `LEVELS`, and an echo-like clip: a dark speckled
    blood pool (mostly below 16) inside a bright wall (mostly above 235) on speckled tissue."""
    rng = np.random.default_rng(5)
    bands = np.broadcast_to(np.repeat(np.array(LEVELS, np.uint8), 8), (12, 64, 64)).copy()
    echo = np.empty((12, 64, 64), np.uint8)
    for t in range(12):
        r = _radius(t)
        pool, wall = r < 18, (r >= 19) & (r < 25)
        img = 120 + rng.normal(0, 20, size=(64, 64))
        img[pool] = rng.gamma(1.5, 4, size=int(pool.sum()))
        img[wall] = 245 + rng.normal(0, 4, size=int(wall.sum()))
        echo[t] = np.clip(img, 0, 255)
    return {"site_a-00000000000000b1": bands, "site_a-00000000000000e2": echo}


@pytest.fixture(scope="module")
def grey_set(tmp_path_factory):
    """The two clips as a train split, through the real encoder and writer."""
    out = str(tmp_path_factory.mktemp("grey"))
    clips = _grey_clips()
    writer = ShardSetWriter(out, config=WriterConfig(), clip_format=clip_format(64),
                            split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT)
    with writer:
        for i, (key, frames) in enumerate(clips.items()):
            meta = {"site": "site_a", "split": "train", "patient_hash": f"{i:016x}",
                    "study_hash": f"{i:016x}", "view": "A4C", "fps": 30.0,
                    "n_frames": len(frames)}
            pixels = frames.astype(np.float64)
            writer.add(Sample(key=key, video=encode_webm(frames, 30.0),
                              labels=np.zeros(5, np.float32), meta=meta),
                       pixel_stats=(pixels.mean(), pixels.std(), pixels.size))
    return out, clips


def _decoded_grey(shards) -> tuple[dict[str, np.ndarray], InputSpec]:
    """Centred 4-frame clips (period 2) from DALI's CPU pipeline, back on the 0-255 scale."""
    ld = loader(shards, "train", train=False, size=64, batch_size=2)
    grey = {}
    for batch in ld.epoch(0):
        for key, clip, ok in zip(batch.keys, batch.clips, batch.valid, strict=True):
            if ok:
                grey[key] = (clip[0] * ld.spec.std + ld.spec.mean).numpy()  # [T, H, W]
    return grey, ld.spec


def test_dark_and_bright_grey_levels_survive_the_shards(grey_set):
    """Levels 5 and 250 come out of DALI as 5 and 250, not as what 16 and 235 map to."""
    shards, _ = grey_set
    grey, _ = _decoded_grey(shards)
    bands = grey["site_a-00000000000000b1"]
    means = [bands[:, :, 8 * k + 2 : 8 * k + 6].mean() for k in range(len(LEVELS))]
    np.testing.assert_allclose(means, LEVELS, atol=3.0)


def test_frames_to_clip_on_raw_frames_matches_dali_dark_and_bright(grey_set):
    """Raw frames through frames_to_clip (predict) equal the DALI pipeline on their shard up to
    VP9's codec error, in the dark blood pool and the bright wall too, and both keep them."""
    shards, clips = grey_set
    grey, spec = _decoded_grey(shards)
    assert set(grey) == set(clips)
    picked = 2 + 2 * np.arange(4)  # the centred clip's frames
    for key, frames in clips.items():
        expected = (frames_to_clip(frames, spec)[0] * spec.std + spec.mean).numpy()
        raw = frames[picked].astype(np.float32)
        assert np.abs(expected - raw).max() <= 1.0 + 1e-3  # the round trip: one level at most
        # VP9 at crf 20 is ~2 levels off per pixel on this i.i.d. noise (0.7 on real echo).
        assert np.abs(grey[key] - expected).mean() < 3.0, key
    echo, raw = grey["site_a-00000000000000e2"], clips["site_a-00000000000000e2"][picked]
    r = np.stack([_radius(t) for t in picked])
    pool, wall = r < 16, (r >= 21) & (r < 23)  # 2 pixels inside the edges, where VP9 blurs
    assert np.median(raw[pool]) < 16 and np.median(raw[wall]) > 235
    for region in (pool, wall):
        # Region means agree; clipping at 16/235 would move them by ~10 levels.
        assert abs(echo[region].mean() - raw[region].mean()) < 1.5
        assert np.abs(echo[region] - raw[region]).mean() < 3.0


def test_an_older_format_version_is_refused_with_what_to_do(grey_set, tmp_path):
    shards, _ = grey_set
    old = tmp_path / "v1"
    shutil.copytree(shards, old)
    stats = json.loads((old / "stats.json").read_text())
    stats["format_version"] = 1
    (old / "stats.json").write_text(json.dumps(stats))
    stats = ShardStats.from_dict(stats)
    spec = InputSpec.build(DataConfig(), stats)
    with pytest.raises(FormatVersionError, match=r"version 1.*Re-run `echocmr ingest`"):
        ClipLoader(str(old), "train", DataConfig(), spec=spec, train=True, stats=stats)
    with pytest.raises(FormatVersionError, match="reshard` cannot fix this"):
        split_files(str(old), "train")  # eval reads through here too
