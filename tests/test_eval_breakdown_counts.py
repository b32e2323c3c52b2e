"""Breakdown rows (per view, per site) at their own resample counts (issue 26).

``SummaryConfig.breakdown_bootstrap`` / ``breakdown_permutations`` set the exploratory rows'
bootstrap resamples and permutations (1000 each by default, capped at the primary table's). These
tests check that the rows are computed with those counts and say so (``n_bootstrap``,
``n_permutations``), that the primary table does not move whatever they are, that setting them
to the primary's counts gives the breakdowns as they were before they had their own, that a
breakdown group with the primary table's studies takes the primary's result only when it is at
least as precise and then says so (report included), and that counts below the minimum are a
clear error — through ``echocmr eval --predictions`` in a subprocess where a user would meet it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _bench_fixtures import load_bench
from test_eval_scale import _assert_close  # equal, floats to 1e-9 (another BLAS)

from echocmr.eval.metrics import MetricsConfig
from echocmr.eval.report import ReportInputs, build_blocks
from echocmr.eval.signal import SignalConfig
from echocmr.eval.summary import (
    ResultCache,
    SummaryConfig,
    breakdown,
    detail_json,
    summarise,
)

REPO = Path(__file__).resolve().parents[1]


def _studies(n: int, sites: int):
    table = load_bench("bench_eval_scale").predictions_table(n, seed=3, n_sites=sites)
    return table.rename(columns={"patient": "patient_hash", "study": "study_hash"})


def _config(boot: int, perm: int, **breakdown_counts) -> SummaryConfig:
    return SummaryConfig(metrics=MetricsConfig(n_bootstrap=boot),
                         signal=SignalConfig(n_permutations=perm), **breakdown_counts)


def _rows(groups: dict) -> dict:
    return {g: detail_json(res) for g, res in groups.items()}


def test_breakdown_rows_are_computed_with_the_configured_counts():
    """Each site's rows equal an exploratory summary of that site computed at the breakdown's
    counts (not merely labelled with them), and differ from one at the primary's."""
    studies = _studies(1500, sites=3)
    config = _config(2000, 1500, breakdown_bootstrap=1000, breakdown_permutations=300)
    got = breakdown(studies, "site", config=config)
    assert set(got) == {"site_a", "site_b", "site_c"}
    moved = 0
    for site, group in studies.groupby("site"):
        want = summarise(group, config=_config(1000, 300), primary=False)
        assert _rows({site: got[site]}) == _rows({site: want})
        tested = [r for r in got[site].values() if r.p_value is not None]
        assert tested, site  # the cohort gives tested rows in every site
        for r in tested:
            assert (r.n_bootstrap, r.n_permutations) == (1000, 300)
            assert r.bootstrap_valid <= 1000
            assert r.p_value >= 1 / 301  # p = (1 + #) / (1 + permutations)
        for r in got[site].values():
            if r.p_value is None:
                assert (r.n_bootstrap, r.n_permutations) == (None, None)
        finer = summarise(group, config=config, primary=False)
        moved += sum(finer[t].ci_low != r.ci_low or finer[t].p_value != r.p_value
                     for t, r in got[site].items() if r.p_value is not None)
    assert moved  # the counts change the numbers: the rows above were not the primary's counts


def test_the_primary_table_does_not_depend_on_the_breakdown_counts():
    studies = _studies(1200, sites=2)
    want = summarise(studies, config=_config(1000, 500))
    for counts in ({}, {"breakdown_bootstrap": 1000, "breakdown_permutations": 100},
                   {"breakdown_bootstrap": 4000, "breakdown_permutations": 4000}):
        cache = ResultCache()
        got = summarise(studies, config=_config(1000, 500, **counts), cache=cache)
        breakdown(studies, "site", config=_config(1000, 500, **counts), cache=cache)
        assert _rows({"t": got}) == _rows({"t": want})
        assert {(r.n_bootstrap, r.n_permutations) for r in got.values()} <= {(1000, 500),
                                                                            (None, None)}


def test_breakdown_counts_at_the_primarys_give_the_breakdowns_as_before():
    """Before the breakdowns had counts of their own, a breakdown was `summarise(group,
    primary=False)` at the primary table's config; the breakdown fields at (or above: capped)
    the primary's counts give exactly that, cached or not."""
    studies = _studies(1200, sites=3)
    primary = _config(1000, 600)
    before = {str(s): summarise(g, config=primary, primary=False)
              for s, g in studies.groupby("site")}
    for counts in ((1000, 600), (5000, 5000)):
        config = _config(1000, 600, breakdown_bootstrap=counts[0],
                         breakdown_permutations=counts[1])
        assert _rows(breakdown(studies, "site", config=config)) == _rows(before)
        cache = ResultCache()
        summarise(studies, config=config, cache=cache)
        assert _rows(breakdown(studies, "site", config=config, cache=cache)) == _rows(before)


def test_a_group_with_the_primarys_studies_takes_its_finer_result_and_says_so():
    """One site: the site breakdown's group is the primary table's studies. After the primary
    table it is served the primary's result (more permutations than the breakdown's) with those
    counts in its rows and a note under its table in the report; before the primary table (or
    without it) it is computed at the breakdown's counts, and the primary table is never served
    that coarser result."""
    studies = _studies(800, sites=1)
    config = _config(1000, 400, breakdown_permutations=200)
    cache = ResultCache()
    primary = summarise(studies, config=config, cache=cache)
    rows = breakdown(studies, "site", config=config, cache=cache)["site_a"]
    assert cache.hits == len(primary)
    exploratory_primary = summarise(studies, config=config, primary=False)
    assert _rows({"a": rows}) == _rows({"a": exploratory_primary})
    assert {(r.n_bootstrap, r.n_permutations) for r in rows.values()
            if r.p_value is not None} == {(1000, 400)}
    assert any(r.p_value is not None for r in rows.values())

    other = _studies(900, sites=1).assign(site="site_b")  # a second group at the usual counts
    own = breakdown(other, "site", config=config)["site_b"]
    blocks = build_blocks(ReportInputs(studies=studies, results=primary, config=config,
                                       by_site={"site_a": rows, "site_b": own}), {})
    text = "\n".join(str(b[-1]) for b in blocks if b[0] == "p")
    assert "computed with 1000 bootstrap resamples and 200 permutations (the main table: " \
           "1000 and 400" in text
    tested = [t.upper() for t, r in rows.items() if r.p_value is not None]
    assert (f"{', '.join(tested)}: the main table's studies, shown with its results (1000 "
            "bootstrap resamples, 400 permutations).") in text
    assert text.count("the main table's studies, shown with its results") == 1  # not site_b

    first = ResultCache()  # the breakdown before the primary table: nothing finer to take
    coarse = breakdown(studies, "site", config=config, cache=first)["site_a"]
    assert first.hits == 0
    assert {(r.n_bootstrap, r.n_permutations) for r in coarse.values()
            if r.p_value is not None} == {(1000, 200)}
    assert _rows({"a": coarse}) == _rows({"a": summarise(studies, config=_config(1000, 200),
                                                         primary=False)})
    again = summarise(studies, config=config, cache=first)
    assert first.hits == 0  # the primary is not served the coarser result ...
    assert _rows({"a": again}) == _rows({"a": primary})  # ... and keeps its numbers


@pytest.mark.parametrize("field, value, least", [
    ("breakdown_bootstrap", 999, "1000"), ("breakdown_permutations", 99, "100"),
    ("breakdown_bootstrap", 0, "1000"), ("breakdown_permutations", -5, "100"),
])
def test_breakdown_counts_below_the_minimum_are_a_clear_error(field, value, least):
    with pytest.raises(ValueError, match=f"evaluation.summary.{field}={value}.*at least {least}"):
        SummaryConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field}.*whole number"):
        SummaryConfig(**{field: True})
    with pytest.raises(ValueError, match=f"{field}.*whole number"):
        SummaryConfig(**{field: 1000.5})


def _cli_table(n: int = 3000):
    """The pinned run's table (tests/test_eval_scale.py::_cli_table)."""
    table = load_bench("bench_eval_scale").predictions_table(n, seed=0)
    table["view"] = "A4C"
    second = table[np.arange(len(table)) % 3 == 0].assign(view="PLAX")
    second["p_wma"] = (0.5 * second["p_wma"] + 0.25).round(3)
    return pd.concat([table, second], ignore_index=True)


def _eval(tmp_path: Path, table: Path, out: str, *extra: str):
    # A user's shell: its own HOME and TMPDIR, none of our MLflow or echocmr settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "ECHOCMR"))}
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
    return subprocess.run([sys.executable, "-m", "echocmr", "eval", "--predictions", str(table),
                           "--out", str(tmp_path / out), *extra],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)


# What a row's role sets (the primary table's verdicts, its value over WMA and operating point)
_ROLE = ("verdict", "p_adjusted", "primary", "control", "operating", "operating_reason")


def _without_counts(part: dict) -> dict:
    return {g: {t: {k: v for k, v in row.items() if k not in ("n_bootstrap", "n_permutations")}
                for t, row in rows.items()} for g, rows in part.items()}


def test_eval_cli_breakdowns_at_1000_are_the_old_codes_and_the_primary_does_not_move(tmp_path):
    """The pinned table (the pre-rewrite code's metrics_detail.json at 1000 resamples and 1000
    permutations everywhere) evaluated with the primary table at 2000/2000: with the default
    breakdown counts every view and site row is the old code's 1000/1000 row, number for number,
    except the rows whose studies are the primary table's (A4C's LGE..ECV), which are the
    primary's 2000/2000 results; with the breakdown counts set to 2000/2000 the primary table is
    the same to the bit and every row is at 2000. The outputs say which counts each row has."""
    path = tmp_path / "preds.csv"
    _cli_table().to_csv(path, index=False)
    pinned = json.loads((REPO / "tests" / "data" / "eval_scale_pinned.json").read_text())
    primary = ("--bootstrap", "2000", "--permutations", "2000")
    run = _eval(tmp_path, path, "default", *primary)
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "default" / "metrics_detail.json").read_text())
    reused = []
    for part in ("by_view", "by_site"):
        assert got[part].keys() == pinned[part].keys()
        for group, rows in got[part].items():
            for t, row in rows.items():
                where = f"{part}.{group}.{t}"
                if row["n_bootstrap"] == 2000:  # the primary table's studies: its result
                    reused.append(where)
                    same = {k: v for k, v in got["tasks"][t].items() if k not in _ROLE}
                    _assert_close({k: v for k, v in row.items() if k not in _ROLE}, same, where)
                    assert row["n_permutations"] == 2000 and row["verdict"] == "exploratory"
                else:  # the old code's row at 1000/1000, counts included
                    _assert_close(row, pinned[part][group][t], where)
    # Only A4C's LGE..ECV: those tasks' per-view probability is the study's (PLAX differs in
    # WMA alone), so that group is the primary table's studies; every other row is at 1000.
    assert sorted(reused) == [f"by_view.A4C.{t}" for t in ("ecv", "lge", "t1", "t2")]
    assert any(row["n_bootstrap"] == 1000 for rows in got["by_view"].values()
               for row in rows.values())
    assert got["settings"]["summary"]["breakdown_bootstrap"] == 1000
    assert got["settings"]["summary"]["breakdown_permutations"] == 1000
    assert {(r["n_bootstrap"], r["n_permutations"]) for r in got["tasks"].values()
            if r["p_value"] is not None} == {(2000, 2000)}
    md = (tmp_path / "default" / "report.md").read_text()
    html = unescape((tmp_path / "default" / "report.html").read_text())
    for page in (md, html):
        assert ("computed with 1000 bootstrap resamples and 1000 permutations (the main table: "
                "2000 and 2000") in page
        assert page.count("Exploratory: p-values unadjusted") == 2  # per view, per site
        assert ("LGE, T1, T2, ECV: the main table's studies, shown with its results (2000 "
                "bootstrap resamples, 2000 permutations).") in page

    config = tmp_path / "breakdown.yaml"
    config.write_text(yaml.safe_dump({"evaluation": {"summary": {
        "breakdown_bootstrap": 2000, "breakdown_permutations": 2000}}}))
    run = _eval(tmp_path, path, "equal", *primary, "--config", str(config))
    assert run.returncode == 0, run.stderr
    equal = json.loads((tmp_path / "equal" / "metrics_detail.json").read_text())
    assert equal["tasks"] == got["tasks"]  # the primary table, bit for bit
    assert (tmp_path / "equal" / "metrics.json").read_bytes() == \
        (tmp_path / "default" / "metrics.json").read_bytes()
    for part in ("by_view", "by_site"):
        assert {(r["n_bootstrap"], r["n_permutations"]) for rows in equal[part].values()
                for r in rows.values() if r["p_value"] is not None} == {(2000, 2000)}
        assert equal[part] != got[part]
        assert _without_counts(equal[part]).keys() == _without_counts(got[part]).keys()
    assert "computed with 2000 bootstrap resamples and 2000 permutations (as many as the main " \
           "table" in (tmp_path / "equal" / "report.md").read_text()


def test_eval_cli_rejects_breakdown_counts_below_the_minimum(tmp_path):
    path = tmp_path / "preds.csv"
    _cli_table(300).to_csv(path, index=False)
    config = tmp_path / "low.yaml"
    config.write_text(yaml.safe_dump({"evaluation": {"summary": {"breakdown_bootstrap": 200}}}))
    run = _eval(tmp_path, path, "out", "--config", str(config))
    assert run.returncode != 0
    assert "evaluation.summary.breakdown_bootstrap=200" in run.stderr
    assert "at least 1000" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()
