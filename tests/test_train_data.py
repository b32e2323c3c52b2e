"""train.data: the DALI pipeline on real shards, checked against the plain-Python shard reader."""

import numpy as np
import pytest
import torch
from _train_fixtures import make_tiny_shards

from ingest.encode import decode_webm
from shards.reader import iter_samples, read_manifest, read_stats
from train.config import DataConfig
from train.data import ClipLoader, InputSpec, decoded_mean_std, frames_to_clip, shard_sizes


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
        batches = list(loader(shards, rank=rank, world=world).epoch(0))
        counts.add(len(batches))
        keys = valid_keys(batches)
        assert len(keys) == len(set(keys)) == shard_sizes(len(expected), world)[rank]
        seen += keys
        for b in batches:
            assert b.clips.shape == (4, 1, 4, 32, 32) and b.clips.dtype == torch.float32
            # padding (repeats of a rank's last sample) only ever comes last
            assert b.valid.tolist() == sorted(b.valid.tolist(), reverse=True)
    assert len(counts) == 1  # every rank runs the same number of steps: no DDP hang
    assert sorted(seen) == expected


def test_labels_and_pixels_equal_the_plain_reader(shards):
    """Eval mode (centred clip, no augmentation) equals frames_to_clip on the decoded Y plane."""
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
            pad_value = -decoded_mean_std(ld.spec)[0] / decoded_mean_std(ld.spec)[1]
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
