"""`echocmr loso` and `echocmr sweep --train`: real trainings (local Ray, sqlite MLflow) and real
evaluations over a two-site shard set, the reuse of finished runs on a re-run, and the lookup
that decides reuse, against runs the MLflow client really created."""

import contextlib
import io
import json
import os

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import echocmr.cli as echocmr_cli
from echocmr.model.checkpoint import read_checkpoint
from echocmr.model.tracking import EXCLUDE_SITES_TAG
from echocmr.train.config import TrainConfig
from echocmr.workflows.runs import find_finished_run, fingerprint, recipe_params

from _train_fixtures import tiny_config

EVAL_FLAGS = ["--bootstrap", "1000", "--permutations", "200", "--clips", "centre",
              "--min-patients", "3", "--min-positives", "3"]


def _training_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("echocmr")
    return client.search_runs([exp.experiment_id],
                              filter_string="tags.`echocmr.run_key` LIKE '%'")


def _cli(*argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert echocmr_cli.main(list(argv)) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def orchestrated(two_sites, tmp_path_factory):
    """`echocmr loso` twice, then `echocmr sweep --train --seeds 0 1` with site_b held out, on
    one real local Ray; the run list in MLflow after each."""
    import ray

    tmp = tmp_path_factory.mktemp("loso")
    uri = f"sqlite:///{tmp}/mlflow.db"
    config = tmp / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(epochs=1)))
    common = ["--shards", two_sites, "--config", str(config), "--tracking-uri", uri,
              "--storage", str(tmp / "runs"), *EVAL_FLAGS]
    cwd = os.getcwd()
    os.chdir(tmp)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        first = _cli("loso", *common, "--out", str(tmp / "loso1"))
        after_first = _training_runs(uri)
        second = _cli("loso", *common, "--out", str(tmp / "loso2"))
        after_second = _training_runs(uri)
        sweep = _cli("sweep", "--train", "--seeds", "0", "1", "--exclude-site", "site_b",
                     "--holdout-site", "site_b", *common, "--out", str(tmp / "sweep"))
        after_sweep = _training_runs(uri)
    finally:
        ray.shutdown()
        os.chdir(cwd)
    return {"tmp": tmp, "uri": uri, "first": first, "second": second, "sweep": sweep,
            "after_first": after_first, "after_second": after_second,
            "after_sweep": after_sweep}


def test_loso_trains_one_model_per_site_without_it_and_tables_both(orchestrated):
    runs = orchestrated["after_first"]
    assert sorted(r.data.tags[EXCLUDE_SITES_TAG] for r in runs) == ["site_a", "site_b"]
    for r in runs:
        left_out = r.data.tags[EXCLUDE_SITES_TAG]
        assert r.data.tags["echocmr.train_sites"] == {"site_a": "site_b",
                                                      "site_b": "site_a"}[left_out]
        assert r.info.run_name.startswith(f"loso-{left_out}-") and r.info.status == "FINISHED"
    doc = json.loads((orchestrated["tmp"] / "loso1" / "loso.json").read_text())
    assert [s["site"] for s in doc["sites"]] == ["site_a", "site_b"]
    assert {s["run_id"] for s in doc["sites"]} == {r.info.run_id for r in runs}
    assert not any(s["reused"] for s in doc["sites"])
    by_site = {s["site"]: s for s in doc["sites"]}
    # external: every study of the left-out site (8 and 10 patients, every split)
    assert by_site["site_b"]["external"]["wma"]["n_patients"] == 8
    assert by_site["site_a"]["external"]["wma"]["n_patients"] == 10
    assert by_site["site_b"]["external_splits"] == ["train", "val", "test"]
    # what each eval wrote is what the table holds
    metrics = json.loads((orchestrated["tmp"] / "loso1" / "site_b" / "metrics.json").read_text())
    assert by_site["site_b"]["external"]["wma"]["auc"] == pytest.approx(metrics["wma"]["auc"])
    # internal: the other site's test split, 2 patients: too few at --min-patients 3
    internal = by_site["site_b"]["internal"]["wma"]
    assert internal["auc"] is None and internal["verdict"] == "insufficient data"
    pooled = doc["pooled"]["wma"]
    ext = [by_site[s]["external"]["wma"]["auc"] for s in ("site_a", "site_b")]
    assert pooled["n_sites"] == 2 and pooled["mean"] == pytest.approx(sum(ext) / 2)
    md = (orchestrated["tmp"] / "loso1" / "loso.md").read_text()
    assert "| site_b | WMA | insufficient data | 2/2 |" in md
    assert f"{ext[1]:.3f} [" in md and "Pooled over sites" in md
    assert "not an AUC over pooled patients" in md
    assert "trained run loso-site_a-" in orchestrated["first"]


def test_loso_rerun_reuses_the_finished_runs(orchestrated):
    before = {r.info.run_id for r in orchestrated["after_first"]}
    assert {r.info.run_id for r in orchestrated["after_second"]} == before  # nothing trained
    doc = json.loads((orchestrated["tmp"] / "loso2" / "loso.json").read_text())
    assert all(s["reused"] for s in doc["sites"]) and {s["run_id"] for s in doc["sites"]} == before
    first = json.loads((orchestrated["tmp"] / "loso1" / "loso.json").read_text())
    assert doc["pooled"] == first["pooled"]  # same models, same deterministic evaluation
    assert "reused run loso-site_b-" in orchestrated["second"]


def test_sweep_train_gives_one_run_per_seed_and_the_spread(orchestrated):
    doc = json.loads((orchestrated["tmp"] / "sweep" / "sweep.json").read_text())
    runs = {r["seed"]: r for r in doc["runs"]}
    # seed 0 leaving site_b out is LOSO's site_b model (same recipe, seed, data): reused
    loso_b = [r for r in orchestrated["after_first"]
              if r.data.tags[EXCLUDE_SITES_TAG] == "site_b"][0]
    assert runs[0]["reused"] and runs[0]["run_id"] == loso_b.info.run_id
    assert not runs[1]["reused"]
    assert len(orchestrated["after_sweep"]) == len(orchestrated["after_second"]) + 1
    client = MlflowClient(orchestrated["uri"])
    seed1 = client.get_run(runs[1]["run_id"])
    assert seed1.data.params["data.seed"] == "1"
    assert seed1.data.tags[EXCLUDE_SITES_TAG] == "site_b"
    # the tag is the checkpoint's path inside the run storage (no machine path in a record)
    w0, w1 = (read_checkpoint(str(orchestrated["tmp"] / "runs" / client.get_run(
        runs[s]["run_id"]).data.tags["echocmr.model_checkpoint"]))["model"] for s in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # other seed, other weights
    assert doc["judged"] == "site site_b (external)"
    assert doc["spread"]["wma"]["n_runs"] == 2 and doc["spread"]["wma"]["sd"] is not None
    assert "SD over seeds" in (orchestrated["tmp"] / "sweep" / "sweep.md").read_text()
    # a seed whose task had too few patients is counted, not averaged in
    metrics = [json.loads((orchestrated["tmp"] / "sweep" / f"seed-{s}" / "metrics.json")
                          .read_text()) for s in (0, 1)]
    for task, spread in doc["spread"].items():
        short = sum(m[task]["verdict"] == "insufficient data" for m in metrics)
        assert spread["n_insufficient"] == short and spread["n_runs"] == 2 - short
    assert any(s["n_insufficient"] for s in doc["spread"].values())
    # the summary alone, as before: `echocmr sweep DIR...` over the two eval directories
    dirs = [r["eval_dir"] for r in doc["runs"]]
    printed = json.loads(_cli("sweep", *dirs, "--json"))
    assert printed["wma"]["aucs"] == doc["spread"]["wma"]["aucs"]


# --- the lookup that decides reuse, on runs the MLflow client creates (no training) ---


def _config(**data) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config(epochs=1, data={**tiny_config()["data"], **data}))


def _run(client, exp_id, config, digest, *, finished=True, model=True, excluded=None):
    tags = {"data_digest": digest,
            EXCLUDE_SITES_TAG: excluded if excluded is not None else
            ",".join(config.data.exclude_sites)}
    if model:
        tags["echocmr.model_uri"] = "runs:/x/model"
    run = client.create_run(exp_id, tags=tags)
    for k, v in recipe_params(config).items():
        client.log_param(run.info.run_id, k, v)
    if finished:
        client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_find_finished_run_matches_data_site_recipe_and_a_logged_model(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("echocmr")
    want = _config(exclude_sites=("site_b",))
    assert find_finished_run(uri, want, "d1") is None
    decoys = [
        _run(client, exp, want, "d1", finished=False),  # still running (or crashed)
        _run(client, exp, want, "d1", model=False),  # finished before its model was logged
        _run(client, exp, want, "d2"),  # another shard set
        _run(client, exp, want, "d1", excluded="site_a,site_b"),  # left out more
        _run(client, exp, _config(exclude_sites=("site_b",), seed=1), "d1"),  # another seed
        _run(client, exp, TrainConfig.from_dict(
            {**tiny_config(epochs=2), "data": {**tiny_config()["data"],
                                               "exclude_sites": ["site_b"]}}), "d1"),
    ]
    assert find_finished_run(uri, want, "d1") is None
    good = _run(client, exp, want, "d1")
    found = find_finished_run(uri, want, "d1")
    assert found.info.run_id == good and good not in decoys
    # where a run lives and what it is called are not its recipe
    moved = TrainConfig.from_dict({**want.to_dict(), "run_name": "x", "storage": "/elsewhere",
                                   "register": "m", "keep_checkpoints": 1})
    assert find_finished_run(uri, moved, "d1").info.run_id == good
    assert fingerprint(moved, "d1") == fingerprint(want, "d1") != fingerprint(want, "d2")
    everyone = _config()  # no site left out: another model, recorded with an empty tag
    assert find_finished_run(uri, everyone, "d1") is None
    all_sites = _run(client, exp, everyone, "d1")
    assert find_finished_run(uri, everyone, "d1").info.run_id == all_sites
    assert find_finished_run(uri, want, "d1").info.run_id == good


def test_sweep_and_loso_refuse_what_they_cannot_do(two_sites, tmp_path, capsys):
    assert echocmr_cli.main(["sweep"]) == 2
    assert "--train --seeds" in capsys.readouterr().err
    assert echocmr_cli.main(["sweep", "--train", "--seeds", "0", "1"]) == 2
    assert "needs --shards, --out" in capsys.readouterr().err
    assert echocmr_cli.main(["sweep", "d1", "--seeds", "0", "1"]) == 2
    assert "add --train" in capsys.readouterr().err
    assert echocmr_cli.main(["sweep", "--train", "--seeds", "0", "1", "--shards", two_sites,
                             "--out", str(tmp_path / "s"), "--holdout-site", "site_b"]) == 2
    assert "add --exclude-site site_b" in capsys.readouterr().err
    assert echocmr_cli.main(["sweep", "--train", "--seeds", "3", "--shards", two_sites,
                             "--out", str(tmp_path / "s"), "--tracking-uri",
                             f"sqlite:///{tmp_path}/m.db"]) == 1
    assert "two seeds or more" in capsys.readouterr().err
    assert echocmr_cli.main(["loso", "--shards", two_sites, "--sites", "site_c", "--out",
                             str(tmp_path / "l"), "--tracking-uri",
                             f"sqlite:///{tmp_path}/m.db"]) == 1
    assert "--sites site_c: no such site" in capsys.readouterr().err
    assert not (tmp_path / "l" / "loso.json").exists()
