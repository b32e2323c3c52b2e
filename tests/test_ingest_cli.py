"""``echocmr ingest`` argument handling: errors are one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

import echocmr.cli as echocmr_cli


def test_help_is_instant_and_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "echocmr", "ingest", "--help"], check=True,
                         capture_output=True, text=True).stdout
    for option in ("--dicom", "--labels", "--out", "--site", "--views", "--workers", "--config"):
        assert option in out
    # No heavy import at parse time: the ingest CLI module pulls in nothing but argparse.
    code = ("import argparse, sys, echocmr.ingest.cli as c; c.register(argparse.ArgumentParser()"
            ".add_subparsers()); print(sorted(m for m in ('pydicom', 'av', 'torch', 'ray', "
            "'nvidia.dali', 'scipy', 'numpy', 'pandas') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("extra, message", [
    (["--site", "Bad Site"], "site name 'Bad Site' is invalid"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--config", "CONFIG"], "unknown key 'preprocess.sizee'; did you mean 'preprocess.size'?"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, extra, message):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.dcm").write_bytes(b"not dicom")
    (tmp_path / "l.csv").write_text("patient_id,cmr_date\nA,2020-01-01\n")
    (tmp_path / "c.yaml").write_text("preprocess:\n  sizee: 3\n")
    extra = [str(tmp_path / "c.yaml") if e == "CONFIG" else e for e in extra]
    argv = ["ingest", "--dicom", str(tmp_path / "d"), "--labels", str(tmp_path / "l.csv"),
            "--out", str(tmp_path / "o"), "--no-progress", *extra]
    assert echocmr_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_inputs_exit_2(tmp_path, capsys):
    argv = ["ingest", "--dicom", str(tmp_path / "nope"), "--labels", str(tmp_path / "l.csv"),
            "--out", str(tmp_path / "o")]
    assert echocmr_cli.main(argv) == 2
    assert "is not a directory" in capsys.readouterr().err
