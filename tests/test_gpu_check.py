"""bench/gpu_check.py end to end on the CPU (``--device cpu``, tiny shards), with every package the
device machine lacks blocked: what can run without a GPU runs here, so the device's 15 minutes go
on what needs one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.py")

# Runs the check in a fresh interpreter where every top-level package that is neither standard
# library nor on the device (gpu_check.DEVICE_PACKAGES) is missing, as it would be there: every
# import finder is wrapped to find nothing for such a name (so ``import x`` raises
# ModuleNotFoundError and ``importlib.util.find_spec("x")`` is None, as for a missing package).
BLOCKED_RUN = """
import runpy, sys
sys.path.insert(0, {bench!r})
from gpu_check import DEVICE_PACKAGES

def hidden(name):
    top = name.split(".")[0]
    # "_..." are interpreter internals (_sysconfigdata_..., extension helpers)
    return not (top.startswith("_") or top in sys.stdlib_module_names or top in DEVICE_PACKAGES)

class Hide:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if hidden(name):
            return None
        return self.inner.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
sys.argv = ["gpu_check.py", *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def _gpu_check():
    """bench/gpu_check.py as a module (a script, not an installed package)."""
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    gpu_check = _gpu_check()
    tmp = tmp_path_factory.mktemp("gpu_check")
    gpu_check.make_data(str(tmp / "data"), patients=6, frames=20, old_patients=6)
    argv = ["--shards", str(tmp / "data"), "--out", str(tmp / "out"), "--device", "cpu"]
    code = BLOCKED_RUN.format(bench=os.path.dirname(SCRIPT), argv=argv, script=SCRIPT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp / "out" / "gpu_check.json").read_text())
    return gpu_check, record, done.stdout


def test_every_section_runs_on_cpu_without_the_missing_packages(cpu_run):
    gpu_check, record, stdout = cpu_run
    sections = record["sections"]
    assert set(sections) == {"nvdec", "peak", "decode", "loader", "train", "rebuilds", "eval"}
    assert not [n for n, v in sections.items() if "error" in v], json.dumps(sections)[:3000]
    for package in ("ray", "mlflow", "webdataset", "pydicom", "av"):
        assert package not in record["imported_packages"]
    # cython_runtime: put in sys.modules by Cython extensions; gpu_check: the harness above
    extra = set(record["imported_packages"]) - {"cython_runtime", "gpu_check"}
    assert extra <= gpu_check.DEVICE_PACKAGES
    assert "section" in stdout and "gpu_check.json written" in stdout  # the table, then where


def test_cpu_figures_and_what_is_skipped_without_cuda(cpu_run):
    _, record, _ = cpu_run
    s = record["sections"]
    assert s["nvdec"] == {"skipped": "no CUDA", "seconds": s["nvdec"]["seconds"]}
    for label, size in (("default", 144), ("old", 112)):
        assert s["decode"][label]["clip_size"] == [size, size]
        assert s["decode"][label]["cpu"]["status"] == "ok"
        assert s["decode"][label]["mixed"]["status"] == "skipped: no CUDA"
    assert s["loader"]["cpu, 2 threads"]["clips_per_s"] > 0
    assert s["loader"]["mixed, 1 threads"]["status"] == "skipped: no CUDA"
    runs = {r["compile"]: r for r in s["train"]["runs"]}
    assert runs[True]["status"] == "skipped on cpu"
    assert runs[False]["status"] == "ok" and runs[False]["loader"]["clips_per_s"] > 0
    assert 0 <= runs[False]["loader"]["data_wait_share"] < 1
    assert s["train"]["flops_per_clip_fwd_bwd"] > 0
    for key in ("without_release", "with_release"):
        assert [r["epoch"] for r in s["rebuilds"][key]] == [0, 1, 2, 3, 4]
    assert s["eval"]["cpu"]["status"] == "ok" and s["eval"]["gpu"]["status"] == "skipped: no CUDA"


def test_the_table_shows_errors_without_hiding_other_sections():
    gpu_check = _gpu_check()
    record = {"device": "cuda", "elapsed_s": 1.0, "meta": {"gpu": "X"}, "sections": {
        "nvdec": {"vp9": {"min": [128, 128], "assumed_min": 128}},
        "decode": {"old": {"clip_size": [112, 112], "cpu": {"status": "ok", "clips_per_s": 9},
                           "mixed": {"status": "error", "error": "Video is too small"}}},
        "train": {"error": "RuntimeError: boom"},
        "eval": {"gpu": {"status": "ok", "windows": 4, "windows_per_s": 2.0}},
    }}
    table = gpu_check.format_table(record)
    assert "Video is too small" in table and "RuntimeError: boom" in table
    assert "128x128 (128)" in table and "2.0 windows/s" in table
