"""Leaving a site out of training: the loader reads the other sites' clips only (shortened DALI
indexes over the same tars), the stats come from them, and a real ``echocmr train
--exclude-site`` (local Ray, sqlite MLflow) records the left-out site on the run, in the
checkpoint and in the model card."""

import os

import pytest
import yaml
from mlflow.tracking import MlflowClient

import echocmr.cli as echocmr_cli
from echocmr.shards.reader import read_manifest, read_stats
from echocmr.shards.reshard import ReshardConfig, reshard
from echocmr.shards.stats import pooled_pixel_stats
from echocmr.train.checkpoint import read_checkpoint
from echocmr.train.config import ConfigError, DataConfig
from echocmr.train.contract import InputSpec
from echocmr.train.data import ClipLoader, site_selection, split_files

from _shards_fixtures import make_shard_set
from _train_fixtures import TINY, tiny_config


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    parts = [make_shard_set(str(root / site), site=site, n_patients=n, clips_per_patient=3,
                            n_frames=20, size=32, samples_per_shard=4, seed=seed)
             for site, n, seed in (("site_a", 10, 0), ("site_b", 8, 1))]
    out = str(root / "merged")
    reshard(parts, out, config=ReshardConfig(samples_per_shard=5))
    return out


def _data(**kw) -> DataConfig:
    return DataConfig(**{**TINY["data"], **kw})


def _keys(loader: ClipLoader) -> list[str]:
    return [k for b in loader.epoch(0) for k, v in zip(b.keys, b.valid.tolist(), strict=True)
            if v]


@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_reads_only_the_other_sites(two_sites, split):
    manifest = read_manifest(two_sites)
    rows = manifest[manifest["split"] == split]
    assert set(rows["site"]) == {"site_a", "site_b"}  # both sites share every shard's split
    stats = read_stats(two_sites)
    data = _data(exclude_sites=("site_b",))
    spec = InputSpec.build(data, stats)
    loader = ClipLoader(two_sites, split, data, spec=spec, train=split == "train", stats=stats)
    want = sorted(rows.loc[rows["site"] == "site_a", "key"])
    assert loader.num_samples == len(want)
    assert sorted(_keys(loader)) == want
    full = ClipLoader(two_sites, split, _data(), spec=spec, train=False, stats=stats)
    assert full.num_samples == len(rows)
    # the tars are the set's own; only the indexes are shortened copies
    assert set(loader.tars) <= set(full.tars) and not set(loader.indexes) & set(full.indexes)


def test_split_files_keeps_only_named_sites_and_names_unknown_ones(two_sites, tmp_path):
    manifest = read_manifest(two_sites)
    test = manifest[(manifest["split"] == "test") & (manifest["site"] == "site_b")]
    tars, indexes, counts = split_files(two_sites, "test", sites=["site_b"],
                                        index_dir=str(tmp_path))
    assert sum(counts) == len(test) and all(os.path.dirname(i) == str(tmp_path) for i in indexes)
    with pytest.raises(ValueError, match="no such site; its sites are site_a, site_b"):
        split_files(two_sites, "train", exclude_sites=["site_c"], index_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="exclude_sites"):
        DataConfig(exclude_sites=("Site-B",))


def test_stats_without_the_site_come_from_the_other_sites_clips(two_sites):
    stats = read_stats(two_sites)
    manifest = read_manifest(two_sites)
    kept, sites = site_selection(two_sites, stats, ("site_b",))
    train = manifest[(manifest["split"] == "train") & (manifest["site"] == "site_a")]
    mean, std = pooled_pixel_stats(train["pixel_mean"], train["pixel_std"], train["n_pixels"])
    assert sites == ["site_a"]
    assert kept["pixel_mean"] == pytest.approx(mean, abs=1e-5) != stats["pixel_mean"]
    assert kept["pixel_std"] == pytest.approx(std, abs=1e-5)
    assert kept["splits"]["train"]["sites"] == ["site_a"]
    assert kept["excluded_sites"] == ["site_b"]
    assert site_selection(two_sites, stats, ()) == (stats, ["site_a", "site_b"])
    with pytest.raises(ValueError, match="leaves no train clips"):
        site_selection(two_sites, stats, ("site_a", "site_b"))


def test_train_cli_excludes_the_site_and_records_it(two_sites, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(epochs=1)))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert echocmr_cli.main([
            "train", "--shards", two_sites, "--config", str(config), "--tracking-uri", uri,
            "--exclude-site", "site_b", "--register", "echo_ab", "--run-name", "no_b",
            "--storage", str(tmp_path / "runs")]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("echocmr").experiment_id])[0]
    assert run.data.tags["echocmr.exclude_sites"] == "site_b"
    assert run.data.tags["echocmr.train_sites"] == "site_a"
    assert run.data.params["data.exclude_sites"] == "['site_b']"
    manifest = read_manifest(two_sites)
    val_a = ((manifest["split"] == "val") & (manifest["site"] == "site_a")).sum()
    assert run.data.metrics["val_clips"] == val_a  # validation left site_b out too
    version = client.get_model_version_by_alias("echo_ab", "champion")
    assert "**left out of training**" in version.description and "site_b" in version.description
    assert "trained on sites (train and val): site_a" in version.description
    best = printed.split("checkpoint ")[1].split("\n")[0].strip()
    assert read_checkpoint(best)["train_sites"] == ["site_a"]
    assert read_checkpoint(best)["config"]["data"]["exclude_sites"] == ["site_b"]
