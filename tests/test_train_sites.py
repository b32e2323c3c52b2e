"""Leaving a site out of training: the loader reads the other sites' clips only (shortened DALI
indexes over the same tars), the stats come from them, and a real ``echocmr train
--exclude-site`` (local Ray, sqlite MLflow) records the left-out site on the run, in the
checkpoint and in the model card."""

import contextlib
import io
import json
import os

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

import echocmr.cli as echocmr_cli
from echocmr.config import ConfigError
from echocmr.model.checkpoint import model_from_state, read_checkpoint, save_checkpoint, save_model
from echocmr.model.contract import InputSpec
from echocmr.read.config import DataConfig
from echocmr.read.loader import ClipLoader, site_selection, split_files
from echocmr.shards.reader import read_manifest, read_stats
from echocmr.shards.stats import pooled_pixel_stats

from _train_fixtures import TINY, tiny_config


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
    tars, indexes, _ = loader.rank_files(0)
    full_tars, full_indexes, _ = full.rank_files(0)
    assert set(tars) <= set(full_tars) and not set(indexes) & set(full_indexes)


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
    assert kept.pixel_mean == pytest.approx(mean, abs=1e-5) != stats.pixel_mean
    assert kept.pixel_std == pytest.approx(std, abs=1e-5)
    assert kept.splits["train"].sites == ("site_a",)
    assert kept.excluded_sites == ("site_b",)
    assert kept.to_dict()["excluded_sites"] == ["site_b"]  # what the run logs as stats.json
    assert set(stats.view_mix) == {"site_a", "site_b"} and set(kept.view_mix) == {"site_a"}
    assert site_selection(two_sites, stats, ()) == (stats, ["site_a", "site_b"])
    with pytest.raises(ValueError, match="leaves no train clips"):
        site_selection(two_sites, stats, ("site_a", "site_b"))


@pytest.fixture(scope="module")
def trained(two_sites, tmp_path_factory):
    """``echocmr train --exclude-site site_b --register echo_ab`` once, on a real local Ray."""
    import ray

    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp}/mlflow.db"
    config = tmp / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(epochs=1)))
    cwd = os.getcwd()
    os.chdir(tmp)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert echocmr_cli.main([
                "train", "--shards", two_sites, "--config", str(config), "--tracking-uri", uri,
                "--exclude-site", "site_b", "--register", "echo_ab", "--run-name", "no_b",
                "--storage", str(tmp / "runs")]) == 0
    finally:
        ray.shutdown()
        os.chdir(cwd)
    best = out.getvalue().split("checkpoint ")[1].split("\n")[0].strip()
    return {"uri": uri, "tmp": tmp, "best": best}


def test_train_cli_excludes_the_site_and_records_it(two_sites, trained):
    client = MlflowClient(trained["uri"])
    run = client.search_runs([client.get_experiment_by_name("echocmr").experiment_id])[0]
    assert run.data.tags["echocmr.exclude_sites"] == "site_b"
    assert run.data.tags["echocmr.train_sites"] == "site_a"
    assert run.data.params["data.exclude_sites"] == "['site_b']"
    manifest = read_manifest(two_sites)
    val_a = ((manifest["split"] == "val") & (manifest["site"] == "site_a")).sum()
    assert run.data.metrics["val/clips"] == val_a  # validation left site_b out too
    version = client.get_model_version_by_alias("echo_ab", "champion")
    assert "**left out of training**" in version.description and "site_b" in version.description
    assert "trained on sites (train and val): site_a" in version.description
    state = read_checkpoint(trained["best"])
    assert state["train_sites"] == ["site_a"] and state["config"]["data"]["exclude_sites"] == [
        "site_b"]


def _eval(two_sites, trained, model, out, *extra):
    return echocmr_cli.main(["eval", "--shards", two_sites, "--model", model, "--out", str(out),
                             "--tracking-uri", trained["uri"], "--bootstrap", "1000",
                             "--permutations", "200", "--clips", "centre", *extra])


def test_eval_holdout_site_is_external_over_every_split_of_it(two_sites, trained, capsys):
    out = trained["tmp"] / "external"
    assert _eval(two_sites, trained, "models:/echo_ab@champion", out,
                 "--holdout-site", "site_b") == 0
    preds = pd.read_parquet(out / "predictions.parquet")
    manifest = read_manifest(two_sites)
    b = manifest[manifest["site"] == "site_b"]
    a_test = manifest[(manifest["site"] == "site_a") & (manifest["split"] == "test")]
    # every study of the left-out site (train, val and test), and the test split of the other
    assert set(preds.loc[preds["site"] == "site_b", "study_hash"]) == set(b["study_hash"])
    assert set(preds.loc[preds["site"] == "site_a", "study_hash"]) == set(a_test["study_hash"])
    detail = json.loads((out / "metrics_detail.json").read_text())
    assert detail["holdout_site"] == "site_b" and detail["internal"]["wma"]["n_studies"] == len(
        set(a_test["study_hash"]))
    report = (out / "report.md").read_text()
    assert "External validation: site site_b" in report and "internal AUC (95% CI)" in report
    assert "site site_b was never seen" in report and "train, val, test splits" in report
    version = MlflowClient(trained["uri"]).get_model_version_by_alias("echo_ab", "champion")
    assert "external_site_b_auc_wma" in version.tags and "test_auc_wma" not in version.tags


def test_eval_refuses_a_holdout_site_the_model_trained_on(two_sites, trained, tmp_path, capsys):
    seen = read_checkpoint(trained["best"])
    seen["train_sites"] = ["site_a", "site_b"]  # as a model trained on both records it
    save_checkpoint(str(tmp_path / "both"), {k: v for k, v in seen.items() if k != "format"})
    assert _eval(two_sites, trained, str(tmp_path / "both"), tmp_path / "no",
                 "--holdout-site", "site_b", "--no-track") == 1
    err = capsys.readouterr().err
    assert "trained on site site_b" in err and "--exclude-site site_b" in err
    assert not (tmp_path / "no" / "report.md").exists()


def test_eval_without_a_record_keeps_to_the_split_and_says_unverified(two_sites, trained,
                                                                       tmp_path):
    model, spec = model_from_state(read_checkpoint(trained["best"]))
    save_model(str(tmp_path / "bare"), model, spec)  # a network alone: no training record
    assert _eval(two_sites, trained, str(tmp_path / "bare"), tmp_path / "out",
                 "--holdout-site", "site_b", "--no-track") == 0
    preds = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert set(preds["split"]) == {"test"}
    assert "is NOT verified" in (tmp_path / "out" / "report.md").read_text()
