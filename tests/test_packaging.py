"""Packaging: one namespace. A built wheel installs `echocmr` and nothing else at top level, and
every import inside the package is absolute under `echocmr.`."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("echocmr", "ingest", "shards", "train", "eval", "cluster")


@pytest.fixture
def wheel(echocmr_wheel) -> Path:
    return echocmr_wheel  # built once per session (conftest), shared with the deploy tests


def test_wheel_installs_only_the_echocmr_namespace(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert top_level == ["echocmr"]
    assert {n.split("/")[0] for n in names} == {"echocmr", dist_info}
    for sub in ("ingest", "ingest/synth", "shards", "train", "eval", "cluster"):
        assert f"echocmr/{sub}/__init__.py" in names, sub
    assert "echocmr/cluster/configs/rayjob.yaml" in names  # package data travels
    assert "echocmr = echocmr.cli:main" in entry_points


def test_no_import_outside_the_namespace():
    bare = re.compile(r"^\s*(from|import) (train|eval|ingest|shards|cluster|echocmr_cli)\b", re.M)
    offenders = []
    for folder in PACKAGE_DIRS + ("tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            offenders += [f"{path.relative_to(REPO)}: {m.group(0).strip()}"
                          for m in bare.finditer(path.read_text())]
    assert offenders == []


def test_the_source_folders_are_not_importable_on_their_own(tmp_path):
    """Outside the checkout only `echocmr.*` resolves: `import train` is somebody else's module."""
    code = ("import importlib.util as u, echocmr.model.network;"
            "print([m for m in ('train', 'eval', 'ingest', 'shards', 'cluster', 'echocmr_cli')"
            " if u.find_spec(m) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
