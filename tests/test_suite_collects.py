"""The suite collects the way CI runs it: ``make test`` is ``.venv/bin/pytest -q``, a console
script, which (unlike ``python -m pytest``) does not put the checkout on ``sys.path``. A test
module that imports ``bench.…`` (bench/ is scripts, not a package: tests load them with
``_bench_fixtures.load_bench``) or anything else only the checkout's folder provides collects
under ``python -m pytest`` and fails CI at collection, before a single test runs (stop 30).

So collect the whole suite with the venv's own ``pytest`` script, from a folder outside the
checkout, with no ``PYTHONPATH``: every module must import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_module_imports_under_the_ci_entry_point(tmp_path):
    pytest_script = Path(sys.executable).parent / "pytest"
    assert pytest_script.exists(), f"no pytest console script beside {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [str(pytest_script), "--collect-only", "-q", "-m", "", "-p", "no:cacheprovider",
         str(ROOT / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "error" not in out.splitlines()[-1].lower(), out[-4000:]
    assert "tests collected" in out or "collected" in out.splitlines()[-1], out[-2000:]
