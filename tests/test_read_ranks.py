"""Each rank reads only its own shards (`read.assign`, `read.loader.ClipLoader`).

The loaders of ranks 0..w-1 are built as Ray Train's workers build them (from one plan the driver
made, `read.assign.plan_reading`) over a real merged two-site set whose manifest has many small
row groups; the tars each rank's DALI pipeline opens are recorded, and the samples DALI actually
decodes are compared with the manifest.
"""

from __future__ import annotations

import os
from collections import Counter

import pyarrow.parquet as pq
import pytest

import echocmr.read.loader as loader_module
from echocmr.model.contract import InputSpec
from echocmr.read.assign import assign, loads, plan_reading
from echocmr.read.config import DataConfig
from echocmr.read.loader import ClipLoader
from echocmr.shards.format import index_name
from echocmr.shards.index import format_index, parse_index
from echocmr.shards.reader import list_shards, read_manifest, read_stats

from _train_fixtures import TINY

GROUP_ROWS = 5  # manifest rows per row group in the set below (the writers' default is 65 536)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two sites merged into shards of 5 clips, the manifest in row groups of 5 rows (the
    driver's plan streams it across many of them)."""
    from echocmr.shards.reshard import ReshardConfig, reshard

    from _shards_fixtures import make_shard_set

    root = tmp_path_factory.mktemp("ranks")
    parts = [make_shard_set(str(root / site), site=site, n_patients=n, clips_per_patient=3,
                            n_frames=20, size=32, samples_per_shard=4, seed=seed)
             for site, n, seed in (("site_a", 12, 0), ("site_b", 10, 1))]
    out = str(root / "merged")
    with pytest.MonkeyPatch.context() as mp:  # only this set's manifest: small row groups
        mp.setattr("echocmr.shards.reshard._MANIFEST_ROW_GROUP", GROUP_ROWS)
        reshard(parts, out, config=ReshardConfig(samples_per_shard=5))
    assert pq.ParquetFile(os.path.join(out, "manifest.parquet")).num_row_groups > 8
    return out


def _data(**kw) -> DataConfig:
    return DataConfig(**{**TINY["data"], "batch_size": 3, **kw})


def _ranks(shards, split, world, data, *, no_manifest=True, monkeypatch=None, plan=None):
    """The loaders of ranks 0..world-1 built from one driver plan. With ``no_manifest`` a rank
    that planned for itself or opened the manifest at all would fail."""
    plan = plan or plan_reading(shards, ("train", "val"), exclude_sites=data.exclude_sites,
                                views=data.views)
    if no_manifest:
        def refuse(*_a, **_k):
            raise AssertionError("a rank read the whole manifest")
        monkeypatch.setattr(loader_module, "plan_reading", refuse)
        monkeypatch.setattr(loader_module, "read_columns", refuse)
        monkeypatch.setattr("echocmr.read.assign.open_manifest", refuse)
        monkeypatch.setattr("echocmr.shards.manifest.open_manifest", refuse)
    stats = read_stats(shards)
    spec = InputSpec.build(data, stats)
    return [ClipLoader(shards, split, data, spec=spec, train=split == "train", stats=stats,
                       rank=r, world=world, plan=plan) for r in range(world)]


def _valid(batches):
    return [k for b in batches for k, v in zip(b.keys, b.valid.tolist(), strict=True) if v]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("split", ["train", "val"])
def test_each_rank_opens_only_its_own_tars_and_every_clip_is_read_once(archive, split, world,
                                                                       monkeypatch):
    manifest = read_manifest(archive)
    want = sorted(manifest.loc[manifest["split"] == split, "key"])
    every_tar = sorted(os.path.abspath(t) for t in list_shards(archive, split))
    ranks = _ranks(archive, split, world, _data(views=("A4C", "A2C", "PLAX", "other",
                                                        "unknown")),
                   monkeypatch=monkeypatch)
    deals = []
    for epoch in (0, 1):
        opened, seen, steps = [], [], set()
        for ld in ranks:
            batches = list(ld.epoch(epoch))
            steps.add(len(batches))
            opened.append(list(ld.opened))
            keys = _valid(batches)
            assert len(keys) == ld.shard_sizes[ld.rank]
            # the samples DALI decoded are exactly the manifest's rows of the tars it was given
            mine = manifest[manifest["shard"].isin([os.path.basename(t) for t in ld.opened])]
            assert set(keys) <= set(mine["key"])
            seen += keys
        assert len(steps) == 1  # every rank runs the same number of batches: no DDP hang
        assert Counter(seen) == Counter(want)  # every clip of the split once per epoch
        flat = [t for tars in opened for t in tars]
        assert sorted(set(flat)) == every_tar  # together they open the whole split ...
        assert len(flat) == len(set(flat))  # ... and no tar in two ranks
        deals.append(opened)
    if split == "train":
        assert deals[0] != deals[1]  # a new deal per epoch ...
        again = _ranks(archive, split, world, ranks[0].config, no_manifest=False,
                       plan=ranks[0].plan)
        assert [ld.rank_files(1)[0] for ld in again] == deals[1]  # ... from (seed, epoch)
    else:
        assert deals[0] == deals[1]  # validation reads the same way every epoch


def test_a_split_with_fewer_shards_than_ranks_is_cut_by_samples(archive, monkeypatch):
    plan = plan_reading(archive, ("val",))
    world = len(plan.split("val").names) + 2
    manifest = read_manifest(archive)
    want = sorted(manifest.loc[manifest["split"] == "val", "key"])
    seen = []
    for ld in _ranks(archive, "val", world, _data(), monkeypatch=monkeypatch):
        seen += _valid(ld.epoch(0))
    assert Counter(seen) == Counter(want)


def test_a_left_out_site_is_resolved_by_the_plan_and_ranks_read_no_manifest(archive,
                                                                          monkeypatch):
    manifest = read_manifest(archive)
    world = 2
    data = _data(exclude_sites=("site_b",))
    ranks = _ranks(archive, "train", world, data, monkeypatch=monkeypatch)  # manifest refused
    plan = ranks[0].plan
    assert plan.selective and all(plan.split("train").masks)  # every shard mixes both sites
    seen, opened = [], []
    for ld in ranks:
        seen += _valid(ld.epoch(0))
        _, indexes, _ = ld.rank_files(0)
        assert all(os.path.dirname(i) != archive for i in indexes)  # shortened copies
        opened += ld.opened
    rows = manifest[(manifest["split"] == "train") & (manifest["site"] == "site_a")]
    assert Counter(seen) == Counter(rows["key"])  # site_b never decoded, site_a once
    assert len(opened) == len(set(opened))


def test_an_index_whose_keys_are_not_the_plans_stops_its_rank(archive, tmp_path, monkeypatch):
    import shutil

    damaged = str(tmp_path / "swapped")
    shutil.copytree(archive, damaged)
    name = os.path.basename(list_shards(damaged, "train")[0])
    idx = os.path.join(damaged, index_name(name))
    text = open(idx, encoding="utf-8").read()
    key = read_manifest(damaged).query("shard == @name")["key"].iloc[0]
    fake = key[:-4] + ("0000" if not key.endswith("0000") else "1111")
    with open(idx, "w", encoding="utf-8") as f:
        f.write(text.replace(key, fake))  # same count, one key the manifest does not have
    data = _data(exclude_sites=("site_b",))
    (ld,) = _ranks(damaged, "train", 1, data, monkeypatch=monkeypatch)
    with pytest.raises(ValueError, match="not those manifest.parquet lists for it.*verify"):
        ld.rank_files(0)


def test_the_plan_refuses_an_unknown_site_and_skips_a_selection_that_selects_all(archive):
    with pytest.raises(ValueError, match="site_z: shard set .* its sites are site_a, site_b"):
        plan_reading(archive, exclude_sites=("site_z",))
    plan = plan_reading(archive, views=tuple(sorted(set(read_manifest(archive)["view"]))))
    assert plan.views is None and not plan.selective
    narrow = plan_reading(archive, views=("A4C",))
    assert narrow.selective and narrow.split("train").samples < plan.split("train").samples


def test_loads_are_the_same_every_epoch_and_differ_by_at_most_one_shard(archive):
    shards = plan_reading(archive, ("train",)).split("train")
    for world in (2, 3, 4):
        per_epoch = [[sum(p.count for p in assign(shards, r, world, seed=5, epoch=e,
                                                  shuffle=True)) for r in range(world)]
                     for e in range(4)]
        assert all(x == loads(shards, world) for x in per_epoch)
        assert sum(per_epoch[0]) == shards.samples
        assert max(per_epoch[0]) - min(per_epoch[0]) <= max(shards.kept)


def test_an_index_that_disagrees_with_the_manifest_stops_the_rank_that_reads_it(archive, tmp_path,
                                                                                monkeypatch):
    import shutil

    damaged = str(tmp_path / "damaged")
    shutil.copytree(archive, damaged)
    name = os.path.basename(list_shards(damaged, "train")[0])
    idx = os.path.join(damaged, index_name(name))
    with open(idx, encoding="utf-8") as f:
        samples = parse_index(f.read())
    with open(idx, "w", encoding="utf-8") as f:
        f.write(format_index(samples[:-1]))  # one sample fewer than the manifest says
    ranks = _ranks(damaged, "train", 2, _data(), monkeypatch=monkeypatch)
    failures = []
    for ld in ranks:
        pieces = [p.name for p in assign(ld.shards, ld.rank, 2, seed=ld.config.seed, epoch=0,
                                         shuffle=True)]
        if name in pieces:
            with pytest.raises(ValueError, match="shards verify"):
                ld.rank_files(0)
            failures.append(ld.rank)
        else:
            ld.rank_files(0)  # the other rank never looks at that index
    assert len(failures) == 1


def test_a_missing_tar_stops_the_rank_that_owns_it_with_what_to_do(archive, tmp_path, monkeypatch):
    import shutil

    damaged = str(tmp_path / "missing")
    shutil.copytree(archive, damaged)
    name = os.path.basename(list_shards(damaged, "val")[-1])
    os.remove(os.path.join(damaged, name))
    ranks = _ranks(damaged, "val", 1, _data(), monkeypatch=monkeypatch)
    with pytest.raises(FileNotFoundError, match=f"{name} is missing.*shards verify"):
        ranks[0].rank_files(0)
