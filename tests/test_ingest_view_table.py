"""``--views`` cells never go out as written: a view is a name from the vocabulary
(`ingest.view_table`), through the real ``echocmr ingest`` in a subprocess.

The hostile table: one cell carries a name, an MRN and a date of birth after the view, another
holds the StudyInstanceUID (swapped columns). By default the job stops before any shard is written,
naming the file, the column and the row, never the cell; with ``views.unknown: unknown`` it runs,
those clips are ``unknown`` and the summary counts them. Either way nothing of the cells reaches the
shards, the manifest or the command's output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pydicom
import pytest

from echocmr.config import ConfigError
from echocmr.ingest.view_table import VIEWS, ViewConfig, read_views

from _ingest_fixtures import shipped_files, write_cohort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTILE = "A4C SMITH^JOHN MRN4711 DOB 1965-03-04"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """4 clips of 2 patients and a views table: two hostile rows, three spellings of views."""
    root = tmp_path_factory.mktemp("views")
    cohort = write_cohort(root / "export", n_patients=2, clips_per_study=2, n_frames=16,
                          shape=(48, 64), bad_files=False)
    clips = sorted(os.path.join(d, n) for d, _, ns in os.walk(cohort.dicom_dir) for n in ns)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in clips]
    study = str(pydicom.dcmread(clips[1], stop_before_pixels=True).StudyInstanceUID)
    table = pd.DataFrame({"sop_instance_uid": sops,
                          "view": ["apical 4-chamber", study, HOSTILE, "4 Kammer"]})
    views = root / "views.csv"
    table.to_csv(views, index=False)
    secrets = [HOSTILE, "SMITH^JOHN", "SMITH", "MRN4711", "1965-03-04", study]
    return cohort, str(views), secrets


def _ingest(cohort, views: str, out: str, config: str) -> subprocess.CompletedProcess:
    cfg = os.path.join(os.path.dirname(out), os.path.basename(out) + ".yaml")
    with open(cfg, "w") as f:
        f.write("text_detector: {enabled: false}\n" + config)
    env = {**os.environ, "PYTHONPATH": REPO, "ECHOCMR_SPLIT_KEY": "views-test-key"}
    return subprocess.run(
        [sys.executable, "-m", "echocmr", "ingest", "--dicom", cohort.dicom_dir, "--labels",
         cohort.labels_path, "--views", views, "--out", out, "--site", "site_a", "--workers", "1",
         "--config", cfg, "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600)


def _leaks(out: str, text: str, secrets: list[str]) -> list[str]:
    blobs = [text]
    for name in shipped_files(out) if os.path.isdir(out) else []:
        data = open(os.path.join(out, name), "rb").read()
        blobs.append(data.decode("latin-1"))
        if name.endswith(".parquet"):
            blobs.append(pd.read_parquet(os.path.join(out, name)).to_csv())
    return [s for s in secrets if any(s in b for b in blobs)]


def test_a_cell_that_is_not_a_view_stops_the_job_naming_file_column_and_row(export, tmp_path):
    cohort, views, secrets = export
    out = str(tmp_path / "set")
    done = _ingest(cohort, views, out, "")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"views file {views}: column 'view', row 2 (and 2 more row(s)): not a view" \
        in done.stderr
    assert "views.unknown: unknown" in done.stderr  # says what to do ('4 Kammer' is row 4)
    assert not os.path.exists(os.path.join(out, "manifest.parquet"))
    assert _leaks(out, done.stdout + done.stderr, secrets) == []


def test_with_views_unknown_those_clips_are_unknown_and_counted(export, tmp_path):
    cohort, views, secrets = export
    out = str(tmp_path / "set")
    done = _ingest(cohort, views, out,
                   "views: {unknown: unknown, aliases: {'4 kammer': A4C}}\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "views table: 2 row(s) named no known view: their clips are unknown" in done.stdout
    manifest = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    assert sorted(manifest["view"]) == ["A4C", "A4C", "unknown", "unknown"]
    assert set(manifest["view"]) <= {*VIEWS, "other", "unknown"}
    assert _leaks(out, done.stdout + done.stderr, secrets) == []


def test_spellings_and_aliases_name_one_view(tmp_path):
    table = tmp_path / "v.csv"
    pd.DataFrame({"sop_instance_uid": ["1", "2", "3", "4", "5", "6", "7", "8"],
                  "view": ["a4c", "AP2", "Apical long axis", "PSAX (AV)", "unknown", "",
                           "Other", "vierkammer"]}).to_csv(table, index=False)
    got = read_views(str(table), ViewConfig(aliases={"Vierkammer": "a4c"})).views
    assert got == {"1": "A4C", "2": "A2C", "3": "A3C", "4": "PSAX_AV", "7": "other", "8": "A4C"}
    with pytest.raises(ValueError, match=r"column 'view', row 8: not a view"):
        read_views(str(table))
    with pytest.raises(ConfigError, match="'SMITH' is not a view|which is not a view"):
        ViewConfig(aliases={"x": "SMITH"})
    with pytest.raises(ConfigError):
        ViewConfig(unknown="skip")
