"""`echocmr demo`: its commands match the real parsers, and it resumes as documented.

The default tests replace the step runner with a recorder (the real steps take minutes), so they
check the demo's own logic: which steps run, which are skipped, what is cleaned when parameters
change, and what a failure leaves behind. The whole flow on a tiny cohort is the slow test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import echocmr.cli as echocmr_cli
from echocmr import demo
from echocmr.train import config as train_config

SITES = ["northfield", "riverside", "st_elsewhere"]
INGESTS = [f"ingest_{site}" for site in SITES]
# The held-out site is ingested last, with a view model trained on the other sites' views.
ALL = ["synth", *INGESTS[:-1], "reshard_internal", "views_train", INGESTS[-1], "reshard",
       "verify", "train", "eval"]


@pytest.fixture
def recorder(monkeypatch):
    """Replace `run_step` with one that records the steps and fakes their outputs."""
    calls: list[str] = []
    fail: dict[str, int] = {}

    def fake_run_step(step, config, log_file, env):
        calls.append(step.name)
        for output in step.outputs:
            output.mkdir(parents=True, exist_ok=True)
            (output / "made").write_text(step.name)
        log_file.write_text(f"$ echocmr {' '.join(step.argv)}\n")
        if step.name == "eval":  # what `echocmr eval` writes: the demo's table comes from it
            report = demo._paths(config)["report"]  # noqa: SLF001
            report.mkdir(parents=True, exist_ok=True)
            (report / "metrics.json").write_text(json.dumps(
                {"wma": {"auc": 0.9, "ci_low": 0.8, "ci_high": 0.95, "verdict": "signal"}}))
            (report / "metrics_detail.json").write_text(json.dumps(
                {"holdout_site": "st_elsewhere",
                 "internal": {"wma": {"auc": 0.8, "ci_low": 0.7, "ci_high": 0.85}}}))
        assert env["MLFLOW_TRACKING_URI"] == demo.tracking_uri(config)
        return fail.get(step.name, 0)

    monkeypatch.setattr(demo, "run_step", fake_run_step)
    monkeypatch.setattr(demo, "detect_gpus", lambda: 0)
    return calls, fail


def test_every_step_parses_with_the_real_command_line(tmp_path):
    parser = echocmr_cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    steps = demo.plan(demo.DemoConfig(out=tmp_path), gpu=True)
    assert [s.name for s in steps] == ALL
    for step in steps:
        assert step.argv[0] in commands, f"`echocmr {step.argv[0]}` is not registered"
        try:
            args = parser.parse_args(step.argv)
        except SystemExit as exc:
            pytest.fail(f"`echocmr {' '.join(step.argv)}` is rejected by its parser ({exc.code})")
        assert callable(args.func)
    train = next(s for s in steps if s.name == "train")
    assert "--workers" in train.argv and train.argv[train.argv.index("--workers") + 1] == "2"
    assert "--gpu" in train.argv
    # each site ingested on its own, merged; training leaves one out, eval validates on it
    ingests = [s for s in steps if s.name.startswith("ingest_")]
    assert [s.argv[s.argv.index("--site") + 1] for s in ingests] == SITES
    assert all(s.argv[s.argv.index("--dicom") + 1].endswith(f"dicom/{site}")
               for s, site in zip(ingests, SITES, strict=True))
    reshard = next(s for s in steps if s.name == "reshard")
    assert [Path(x).name for x in reshard.argv[reshard.argv.index("--input") + 1:
                                               reshard.argv.index("--out")]] == SITES
    # the held-out site has no views table: the view model trained on the others labels it
    internal = next(s for s in steps if s.name == "reshard_internal")
    assert [Path(x).name for x in internal.argv[internal.argv.index("--input") + 1:
                                                internal.argv.index("--out")]] == SITES[:-1]
    views = next(s for s in steps if s.name == "views_train")
    assert views.argv[views.argv.index("--shards") + 1] == internal.argv[-1]
    name = views.argv[views.argv.index("--register") + 1]
    for s in ingests:
        external = s.argv[s.argv.index("--site") + 1] == demo.DEMO_HOLDOUT
        assert ("--views" in s.argv) != external
        assert (s.argv[s.argv.index("--view-model") + 1] == f"models:/{name}@champion"
                if external else "--view-model" not in s.argv)
    assert train.argv[train.argv.index("--exclude-site") + 1] == demo.DEMO_HOLDOUT
    evaluate = next(s for s in steps if s.name == "eval")
    assert evaluate.argv[evaluate.argv.index("--holdout-site") + 1] == demo.DEMO_HOLDOUT


def test_demo_seed_is_the_lowest_that_meets_its_rule():
    """DEMO_SEED's comment, counted from the cohort plan: the test split, the held-out site and
    the internal column all have enough patients; no lower seed does."""
    counts = demo.seed_counts(demo.DEMO_SEED)
    assert demo.seed_qualifies(counts)
    assert min(counts["external"]["wma"][2:]) >= 10 and min(counts["internal_test"]["wma"][2:]) >= 10
    # every task can get a verdict at the held-out site (none is "insufficient data" there)
    assert all(min(counts["external"][t][2:]) >= 10 for t in ("wma", "lge", "t1", "t2", "ecv"))
    assert min(counts["internal_val"]["wma"][2:]) >= 5
    assert not any(demo.seed_qualifies(demo.seed_counts(s)) for s in range(demo.DEMO_SEED))


def test_the_demo_synthesises_with_the_label_model_its_seed_was_chosen_for():
    """The synth step draws labels from DEMO_LABEL_MODEL, the model `seed_counts` plans with:
    under the default "study" model DEMO_SEED's held-out site could not judge T2."""
    synth = next(s for s in demo.plan(demo.DemoConfig(), gpu=False) if s.name == "synth")
    assert synth.argv[synth.argv.index("--label-model") + 1] == demo.DEMO_LABEL_MODEL == "demo"
    assert synth.params["labels"] == "demo"  # a change of label model re-synthesises
    from echocmr.ingest.synth.cohort import CohortConfig, latent_for_study, plan_cohort

    study = plan_cohort(CohortConfig(patients=200, seed=demo.DEMO_SEED, problem_files=False))
    t2 = {p.patient_id for p in study if p.site == demo.DEMO_HOLDOUT for st in p.studies
          if st.in_window and latent_for_study(p, st)["t2"] == 1}
    assert len(t2) < 10 <= demo.seed_counts(demo.DEMO_SEED)["external"]["t2"][2]


def test_train_config_is_a_valid_train_config(tmp_path):
    config = train_config.TrainConfig.from_dict(demo.train_config(demo.DemoConfig(), gpu=False))
    assert config.model.width == 16 and config.data.size == 64 and not config.gpu


def test_the_demo_trains_the_demo_preset():
    """`--preset demo` holds what the demo trains: cpu-small, 8 epochs of batches of 4 per worker
    (global 8 with the demo's 2 workers)."""
    assert demo.train_config(demo.DemoConfig(), gpu=False) == {
        "epochs": 8, "model": {"width": 16},
        "data": {"frames": 16, "period": 2, "size": 64, "batch_size": 4, "augment": {"pad": 4}},
        "optim": {"lr": 3e-3, "warmup_epochs": 0.25}, "min_positives": 3,
        "keep_checkpoints": 2, "gpu": False}
    train = next(s for s in demo.plan(demo.DemoConfig(), gpu=False) if s.name == "train")
    assert train.argv[train.argv.index("--preset") + 1] == "demo"


def test_resume_skips_finished_steps_and_reruns_changed_ones(tmp_path, recorder, capsys):
    calls, _ = recorder
    out = tmp_path / "demo_out"
    assert demo.run_demo_flow(demo.DemoConfig(out=out, patients=30)) == 0
    assert calls == ALL
    resolved = train_config.load_config(str(out / "train.yaml"), preset=demo.DEMO_PRESET)
    assert resolved.epochs == train_config.PRESETS["demo"]["epochs"] == 8
    assert resolved == train_config.TrainConfig.from_dict(demo.train_config(
        demo.DemoConfig(out=out, patients=30), gpu=False))
    printed = capsys.readouterr().out
    assert "study-level AUCs" in printed and "mlflow ui --backend-store-uri sqlite:///" in printed
    table = printed[printed.index("study-level AUCs"):]
    assert "0.800 (0.700–0.850)" in table and "0.900 (0.800–0.950)" in table  # both columns
    assert "signal" in table and "0.873" in table  # the verdict and the published WMA AUC

    calls.clear()
    assert demo.run_demo_flow(demo.DemoConfig(out=out, patients=30)) == 0
    assert calls == []  # everything was done with the same parameters
    assert "study-level AUCs" in capsys.readouterr().out  # the table still ends the output

    (out / "ray_runs" / "stale").write_text("old run")
    calls.clear()
    assert demo.run_demo_flow(demo.DemoConfig(out=out, patients=30, epochs=2)) == 0
    assert calls == ["train", "eval"]  # new training parameters: train and what follows
    assert not (out / "ray_runs" / "stale").exists()  # its old output was removed first
    assert (out / "cohort" / "made").exists()

    calls.clear()
    assert demo.run_demo_flow(demo.DemoConfig(out=out, patients=40, epochs=2)) == 0
    assert calls == ALL


def test_a_failed_step_stops_the_demo_and_the_rerun_starts_there(tmp_path, recorder, capsys):
    calls, fail = recorder
    out = tmp_path / "d"
    fail["train"] = 3
    assert demo.run_demo_flow(demo.DemoConfig(out=out)) == 3
    assert calls == ALL[:-1]
    assert "train FAILED (exit 3)" in capsys.readouterr().out
    (out / "ray_runs" / "checkpoint").write_text("kept")

    del fail["train"]
    calls.clear()
    assert demo.run_demo_flow(demo.DemoConfig(out=out)) == 0
    assert calls == ["train", "eval"]
    assert (out / "ray_runs" / "checkpoint").exists()  # same parameters: the run resumes

    calls.clear()
    assert demo.run_demo_flow(demo.DemoConfig(out=out, fresh=True)) == 0
    assert calls == ALL
    assert not (out / "ray_runs" / "checkpoint").exists()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 20"):
        demo.DemoConfig(patients=5)
    with pytest.raises(ValueError, match="--workers"):
        demo.DemoConfig(workers=0)


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_demo_end_to_end_on_a_small_cohort(tmp_path):
    """The real flow, small: 20 patients at three sites, one epoch, one site left out of
    training and validated on externally. Longer than the suite's 900 s per test: the view
    classifier alone trains its 400 steps for ~13 min at load ~6 on 2 cores (200 epochs of 2
    batches; session 9), beside ~2 min of synth and ingest before it."""
    from _proc import run_group

    out = tmp_path / "demo_out"
    result = run_group(
        [str(Path(sys.executable).parent / "echocmr"), "demo", "--out", str(out),
         "--patients", "20", "--epochs", "1"],
        timeout=2400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "study-level AUCs" in result.stdout
    assert f"beside external (site {demo.DEMO_HOLDOUT}" in result.stdout
    report = (out / "report" / "report.md").read_text()
    assert f"External validation: site {demo.DEMO_HOLDOUT}" in report
    assert f"site {demo.DEMO_HOLDOUT} was never seen" in report
    assert (out / "shards" / "manifest.parquet").exists()
    assert (out / "mlflow.db").exists()
    assert "models:/echocmr-demo@champion" in result.stdout


def test_gpu_choice(tmp_path, recorder, monkeypatch, capsys):
    calls, _ = recorder
    seen: list[list[str]] = []
    real_plan = demo.plan

    def spy(config, *, gpu):
        steps = real_plan(config, gpu=gpu)
        seen.append(next(s for s in steps if s.name == "train").argv)
        return steps

    monkeypatch.setattr(demo, "plan", spy)
    monkeypatch.setattr(demo, "detect_gpus", lambda: 1)
    assert demo.run_demo_flow(demo.DemoConfig(out=tmp_path / "a")) == 0
    train = seen[-1]
    assert "--gpu" in train and train[train.index("--workers") + 1] == "1"  # one per GPU
    assert "1 GPU(s) found" in capsys.readouterr().out

    assert demo.run_demo_flow(demo.DemoConfig(out=tmp_path / "b", gpu=False)) == 0
    assert "--gpu" not in seen[-1] and seen[-1][seen[-1].index("--workers") + 1] == "2"

    assert demo.run_demo_flow(demo.DemoConfig(out=tmp_path / "c", gpu=True)) == 2  # 2 > 1 GPU
    assert "needs 2 GPUs" in capsys.readouterr().out


def test_children_split_with_the_public_demo_key(tmp_path, monkeypatch):
    """DEMO_SEED was chosen for the splits of the public demo key: a site key in the user's
    environment (the test suite sets one) must not re-split the demo's synthetic cohort."""
    monkeypatch.setenv("ECHOCMR_SPLIT_KEY", "a-site-key")
    env = demo._child_env(demo.DemoConfig(out=tmp_path))
    assert "ECHOCMR_SPLIT_KEY" not in env
    assert env["MLFLOW_TRACKING_URI"] == demo.tracking_uri(demo.DemoConfig(out=tmp_path))
