"""A registered model deploys where echocmr's source tree is not.

One tiny random-weight model (width 4, 8x32x32 clips: plumbing, not learning) is registered as
``echo@champion`` in an sqlite store. Then, in a fresh virtual environment that has echocmr only
from a built wheel (`conftest.fresh_venv`, built once per session), run from a directory outside
the checkout with no ``PYTHONPATH`` and pickle loading disabled:

* ``mlflow.pyfunc.load_model("models:/echo@champion")`` loads and predicts both input forms, and
  gives what the same model gives in this process;
* ``python -m mlflow models serve -m models:/echo@champion --env-manager local`` on loopback
  answers ``POST /invocations`` with pydicom's real ultrasound clip and a junk file (one row for
  the study: probabilities, the junk file rejected ``not_dicom``), and a clip request with this
  process's logits (one row per clip). tests/test_serve.py attacks the server itself.

About 40-60 s on two shared cores (the venv takes ~5 s; most of the rest is importing torch and
MLflow in the child processes and the server's start).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from echocmr.shards.format import FORMAT_VERSION, TASKS

from _eval_model import register

REPO = Path(__file__).resolve().parent.parent
JUNK = b"this is not a DICOM file, just some bytes a user sent by mistake\n" * 4
STATS = {"pixel_mean": 40.0, "pixel_std": 30.0, "format_version": FORMAT_VERSION,
         "clip": {"height": 64, "width": 64, "fps": 30.0}}


def real_dicom() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("examples_ybr_color.dcm")).read_bytes()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """``echo@champion`` in ``ROOT/mlflow.db`` (artifacts beside it) and this process's answers."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from echocmr.model.tracking import sqlite_artifact_root

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("echocmr", artifact_location=sqlite_artifact_root(uri))
    register(uri, STATS, name="echo")
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(2, 1, 8, 32, 32)).astype(np.float32)
    np.save(root / "clips.npy", clips)
    (root / "real.dcm").write_bytes(real_dicom())
    (root / "junk.dcm").write_bytes(JUNK)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/echo@champion")
    expected_clips = model.predict(pd.DataFrame({"clip": list(clips)}))
    expected_study = model.predict(pd.DataFrame({"dicom": [real_dicom(), JUNK],
                                                 "view": ["A4C", None]}))
    return SimpleNamespace(root=root, uri=uri, clips=clips, expected_clips=expected_clips,
                           expected_study=expected_study)


def child_env(registry, venv_python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_TRACKING_URI=registry.uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false",
               PATH=f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return env


def check_study(answer: dict) -> None:
    """The study's one row: the real clip gives probabilities, the junk file a clear
    rejection, nothing identifying."""
    assert (answer["study"], answer["status"], answer["n_files"]) == ("study-1", "ok", 1)
    assert all(0.0 < answer[f"p_{t}"] < 1.0 for t in TASKS)
    kept, junk = answer["files"]
    assert (kept["index"], kept["status"], kept["view"]) == (0, "kept", "A4C")
    assert (junk["index"], junk["status"], junk["reason"]) == (1, "rejected", "not_dicom")
    assert answer["views"] == ["A4C"] and answer["n_clips"] >= 1
    text = json.dumps(answer)
    assert "1.2.840" not in text and ".dcm" not in text and "/tmp" not in text  # no UIDs, paths


def test_the_registered_model_works_in_a_fresh_venv(registry, fresh_venv, tmp_path):
    code = textwrap.dedent(f"""
        import importlib.util, json, sys
        import echocmr, mlflow, numpy as np, pandas as pd
        root = {str(registry.root)!r}
        model = mlflow.pyfunc.load_model("models:/echo@champion")
        clips = model.predict(pd.DataFrame({{"clip": list(np.load(root + "/clips.npy"))}}))
        study = model.predict(pd.DataFrame({{
            "dicom": [open(root + "/real.dcm", "rb").read(), open(root + "/junk.dcm", "rb").read()],
            "view": ["A4C", None]}}))
        print(json.dumps({{"echocmr": echocmr.__file__, "prefix": sys.prefix,
                          "bare_train": importlib.util.find_spec("train") is not None,
                          "clips": clips.to_dict(orient="list"),
                          "study": study.to_dict(orient="records")[0]}}))
    """)
    out = subprocess.run([str(fresh_venv), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=child_env(registry, fresh_venv), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["echocmr"].startswith(got["prefix"]) and str(REPO) not in got["echocmr"]
    assert not got["bare_train"]
    clips = pd.DataFrame(got["clips"])
    np.testing.assert_allclose(clips.to_numpy(), registry.expected_clips[clips.columns].to_numpy(),
                               rtol=1e-5, atol=1e-6)
    check_study(got["study"])
    for task in TASKS:
        assert got["study"][f"p_{task}"] == pytest.approx(
            registry.expected_study[f"p_{task}"].iloc[0], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mlflow_models_serve_answers_a_dicom_and_rejects_junk(registry, fresh_venv, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(fresh_venv), "-m", "mlflow", "models", "serve", "-m", "models:/echo@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=child_env(registry, fresh_venv), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"server exited: {log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no /health: {log_path.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        b64 = [base64.b64encode(real_dicom()).decode(), base64.b64encode(JUNK).decode()]
        status, answer = _post(f"{url}/invocations", {"dataframe_split": {
            "columns": ["dicom", "view"], "data": [[b64[0], "A4C"], [b64[1], None]]}})
        assert status == 200, answer
        (row,) = answer["predictions"]
        check_study(row)
        for task in TASKS:
            assert row[f"p_{task}"] == pytest.approx(
                registry.expected_study[f"p_{task}"].iloc[0], abs=1e-6)

        status, answer = _post(f"{url}/invocations", {"dataframe_records": [
            {"clip": clip.tolist()} for clip in registry.clips]})
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        np.testing.assert_allclose(served.to_numpy(),
                                   registry.expected_clips[served.columns].to_numpy(),
                                   rtol=1e-5, atol=1e-6)

        status, answer = _post(f"{url}/invocations", {"dataframe_records": [{"view": "A4C"}]})
        assert status == 400 and "either 'clip' rows" in answer.get("message", ""), answer
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert sys.executable  # the test's own interpreter was never the server's
