"""The served model, as an MLflow user meets it: ``mlflow models serve`` on loopback.

One tiny random-weight model (plumbing, not learning) is registered as ``echo@champion`` and
served from a virtual environment with no echocmr installed and the training stack (Ray, DALI,
webdataset, PyAV, OCR, scikit-learn) refused at import (`_serve_fixtures.serving_venv`): the
model brings its own code and needs only its serving requirements. The server runs with small
caps (the settings of `echocmr.model.serve_request`), and a second one with a 1 s request
timeout, so that:

* every request shape (``dataframe_split``, ``dataframe_records``, ``inputs`` as columns or as
  records) gives one row for a study and one row per clip;
* a study whose every file is rejected says so (``status: no_usable_file`` and why);
* bad input gets our 400, which names the field and repeats none of the request;
* caps on files, declared pixels and inflated size answer 400 before anything is decoded;
* a request that times out (504) stops, and its temporary files are removed.

About 60-90 s on two shared cores, most of it the server's start and the slow request.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _serve_fixtures import BLOCKED, ModelServer, child_env, serving_venv

from echocmr.model.example import example_dicom
from echocmr.model.publish import SERVING_DISTRIBUTIONS
from echocmr.shards.format import FORMAT_VERSION, TASKS

from _eval_model import register

pytestmark = pytest.mark.timeout(900)

JUNK = b"this is not a DICOM file, just some bytes a user sent by mistake\n" * 4
STATS = {"pixel_mean": 40.0, "pixel_std": 30.0, "format_version": FORMAT_VERSION,
         "clip": {"height": 64, "width": 64, "fps": 30.0}}
TIMEOUT_S, MAX_FILES, MAX_PIXEL_MB = 60, 41, 16


def real_dicom() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("examples_ybr_color.dcm")).read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``echo@champion`` served from a serving-only venv; this process's answers to compare."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from echocmr.model.tracking import sqlite_artifact_root

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("echocmr", artifact_location=sqlite_artifact_root(uri))
    register(uri, STATS, name="echo")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/echo@champion")
    clips = np.random.default_rng(0).normal(size=(2, 1, 8, 32, 32)).astype(np.float32)
    expected = SimpleNamespace(
        study=model.predict(pd.DataFrame({"dicom": [real_dicom(), JUNK], "view": ["A4C", None]})),
        clips=model.predict(pd.DataFrame({"clip": list(clips)})))
    python = serving_venv(root)
    server_tmp = root / "server-tmp"
    server_tmp.mkdir()
    env = child_env(python, uri, MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=str(TIMEOUT_S),
                    ECHOCMR_SERVE_MAX_FILES=str(MAX_FILES),
                    ECHOCMR_SERVE_MAX_PIXEL_MB=str(MAX_PIXEL_MB), TMPDIR=str(server_tmp))
    server = ModelServer(python, "models:/echo@champion", cwd=root, env=env)
    try:
        server.wait()
        yield SimpleNamespace(root=root, uri=uri, python=python, server=server, clips=clips,
                              expected=expected, tmp=server_tmp)
    finally:
        server.stop()


def post(served, body: dict) -> tuple[int, dict, bytes]:
    status, raw = served.server.post(json.dumps(body).encode())
    try:
        return status, json.loads(raw), raw
    except ValueError:
        return status, {}, raw


def check_study_row(row: dict, expected: pd.DataFrame) -> None:
    assert row["study"] == "study-1" and row["status"] == "ok" and row["message"] is None
    assert (row["n_files"], row["views"]) == (1, ["A4C"]) and row["n_clips"] >= 1
    for task in TASKS:
        assert row[f"p_{task}"] == pytest.approx(expected[f"p_{task}"].iloc[0], abs=1e-6)
    kept, junk = row["files"]
    assert (kept["index"], kept["status"], kept["view"]) == (0, "kept", "A4C")
    assert (junk["index"], junk["status"], junk["reason"]) == (1, "rejected", "not_dicom")
    text = json.dumps(row)
    assert "1.2.840" not in text and ".dcm" not in text and "/tmp" not in text  # no UIDs, paths


def test_every_request_shape_gives_one_row_per_study(served):
    real, junk = b64(real_dicom()), b64(JUNK)
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": ["dicom", "view"],
                                                "data": [[real, "A4C"], [junk, None]]}},
        "dataframe_records": {"dataframe_records": [{"dicom": real, "view": "A4C"},
                                                    {"dicom": junk, "view": None}]},
        "inputs as columns": {"inputs": {"dicom": [real, junk], "view": ["A4C", None]}},
        "inputs as records": {"inputs": [{"dicom": real, "view": "A4C"},
                                         {"dicom": junk, "view": None}]},
        "instances": {"instances": [{"dicom": real, "view": "A4C"},
                                    {"dicom": junk, "view": None}]},
    }
    for shape, body in bodies.items():
        status, answer, _ = post(served, body)
        assert status == 200, (shape, answer)
        assert len(answer["predictions"]) == 1, shape
        check_study_row(answer["predictions"][0], served.expected.study)


def test_clips_give_one_row_per_clip(served):
    for body in ({"dataframe_records": [{"clip": c.tolist()} for c in served.clips]},
                 {"inputs": [{"clip": c.tolist()} for c in served.clips]}):
        status, answer, _ = post(served, body)
        assert status == 200, answer
        rows = pd.DataFrame(answer["predictions"])
        assert len(rows) == len(served.clips)
        assert set(rows.columns) == {f"{k}_{t}" for k in ("logit", "p") for t in TASKS}
        np.testing.assert_allclose(rows.to_numpy(),
                                   served.expected.clips[rows.columns].to_numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_a_study_with_no_usable_file_says_so(served):
    status, answer, _ = post(served, {"dataframe_split": {
        "columns": ["dicom"], "data": [[b64(JUNK)], [b64(b"\0" * 200)]]}})
    assert status == 200, answer
    (row,) = answer["predictions"]
    assert row["status"] == "no_usable_file"
    assert "no file of the study could be used" in row["message"]
    assert "not_dicom: 2" in row["message"]
    assert all(row[f"p_{t}"] is None for t in TASKS) and row["n_files"] == 0
    assert [f["reason"] for f in row["files"]] == ["not_dicom", "not_dicom"]


def _no_data_in(raw: bytes, *files: bytes) -> None:
    """No 40-character piece of any file's base64 (nor the column names' cells) is echoed."""
    text = raw.decode(errors="replace")
    for data in files:
        encoded = b64(data)
        for start in range(0, max(len(encoded) - 40, 1), 997):
            assert encoded[start:start + 40] not in text
    assert len(raw) < 2000, raw[:300]


def other_study() -> bytes:
    """The example DICOM has its own fictional StudyInstanceUID."""
    return example_dicom()


def test_invalid_input_gets_our_error_naming_the_field_never_the_data(served):
    real = real_dicom()
    cases = [
        ({"dataframe_records": [{"dicom": b64(real), "clip": [[[[0.0]]]]}]},
         "either 'clip' rows", [real]),
        ({"dataframe_records": [{"view": "A4C SMITH^JOHN"}]}, "either 'clip' rows", []),
        ({"dataframe_split": {"columns": ["dicom"], "data": [[b64(real)], [b64(other_study())]]}},
         "send the files of one study per request", [real, other_study()]),
        ({"dataframe_records": [{"clip": [[[[1.0, 2.0]]]]}]}, "clip", []),
    ]
    for body, message, files in cases:
        status, answer, raw = post(served, body)
        assert status == 400, answer
        assert message in answer["message"], answer
        assert "Failed to predict data" not in answer["message"]
        assert "SMITH" not in raw.decode()
        _no_data_in(raw, *files)


def pixel_bomb() -> bytes:
    """The real clip with a header that declares 100,000 frames (the pixel data is unchanged)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(real_dicom()))
    ds.NumberOfFrames = 100_000
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def deflate_bomb() -> bytes:
    """A deflated-syntax file of a few KB whose dataset inflates to 40 MB (a private element of
    zeros) while its header declares a small image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows = ds.Columns = 64
    ds.NumberOfFrames = 16
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.add_new(0x00090010, "LO", "BOMB")
    ds.add_new(0x00091010, "OB", b"\0" * (40 << 20))
    ds.PixelData = b"\0" * (64 * 64 * 16)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_caps_answer_400_before_anything_is_decoded(served):
    bomb, deflated = pixel_bomb(), deflate_bomb()
    assert len(deflated) < 1 << 20  # a small request...
    cases = [
        ({"dataframe_split": {"columns": ["dicom"], "data": [[b64(JUNK)]] * (MAX_FILES + 1)}},
         "ECHOCMR_SERVE_MAX_FILES", [JUNK]),
        ({"dataframe_split": {"columns": ["dicom"], "data": [[b64(bomb)]]}},
         "ECHOCMR_SERVE_MAX_PIXEL_MB", [bomb]),
        ({"dataframe_split": {"columns": ["dicom"], "data": [[b64(deflated)]]}},
         "ECHOCMR_SERVE_MAX_PIXEL_MB", [deflated]),  # ...that would inflate to 40 MB
    ]
    for body, setting, files in cases:
        status, answer, raw = post(served, body)
        assert status == 400, answer
        assert setting in answer["message"], answer
        assert answer["message"].startswith("dicom"), answer  # the field it is about
        _no_data_in(raw, *files)


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("echocmr-serve-*"))


def test_a_request_that_times_out_stops_and_removes_its_files(served):
    """A server of its own with a 1 s request timeout, sent 64 copies of the real clip (each
    takes a sizeable fraction of a second to read and run on any CPU: the request needs many
    times its budget)."""
    tmp = served.root / "slow-tmp"
    tmp.mkdir()
    env = child_env(served.python, served.uri, MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT="1",
                    ECHOCMR_SERVE_MAX_FILES="64", TMPDIR=str(tmp))
    server = ModelServer(served.python, "models:/echo@champion", cwd=served.root, env=env)
    try:
        server.wait()
        real = b64(real_dicom())
        body = {"dataframe_split": {"columns": ["dicom"], "data": [[real]] * 64}}
        status, raw = server.post(json.dumps(body).encode())
        assert status == 504, raw[:300]
        # The server answered 504 at its timeout; our deadline is the same, so the request's
        # thread stops at its next file and says so. Wait for that line, then nothing is left.
        deadline = time.monotonic() + 120
        while "ran past its" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.5)
        assert _leftovers(tmp) == []
        status, raw = server.post(json.dumps({"dataframe_split": {
            "columns": ["dicom"], "data": [[b64(JUNK)]]}}).encode())
        assert status == 200, raw[:300]  # the server is still serving
        assert _leftovers(tmp) == []
    finally:
        server.stop()


def test_the_logged_model_installs_without_echocmr(served, tmp_path):
    """Loaded by MLflow's own API in the serving-only venv: the model's code comes with it,
    every distribution that loading and predicting imports (beyond what importing MLflow and
    downloading did) is one of its requirements (or theirs),
    and the MLmodel describes inputs, outputs and a DICOM example."""
    code = textwrap.dedent("""
        import base64, importlib.metadata as md, json, os, sys
        import mlflow, mlflow.pyfunc, pandas as pd
        from mlflow.models import Model
        local = mlflow.artifacts.download_artifacts("models:/echo@champion")
        before = set(sys.modules)  # what MLflow itself imported (some of it optional)
        model = mlflow.pyfunc.load_model("models:/echo@champion")
        example = json.load(open(os.path.join(local, "serving_input_example.json")))
        split = example["dataframe_split"]
        cells = dict(zip(split["columns"], split["data"][0]))
        row = model.predict(pd.DataFrame({"dicom": [base64.b64decode(cells["dicom"])],
                                          "view": [cells.get("view")]}))
        import echocmr
        req = open(os.path.join(local, "requirements.txt")).read().split()
        tops = {m.split(".")[0] for m in set(sys.modules) - before}
        dists = md.packages_distributions()
        imported = sorted({d for t in tops for d in dists.get(t, [])})
        mlmodel = Model.load(os.path.join(local, "MLmodel"))
        print(json.dumps({"status": row["status"].iloc[0], "echocmr": echocmr.__file__, "local": local, "requirements": req,
                          "imported": imported, "example_keys": list(example),
                          "example_bytes": os.path.getsize(os.path.join(local,
                                                           "serving_input_example.json")),
                          "outputs": mlmodel.signature.outputs.input_names(),
                          "code": mlmodel.flavors["python_function"].get("code")}))
    """)
    out = subprocess.run([str(served.python), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=child_env(served.python, served.uri), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == "ok"  # the example is a study the model answers
    assert got["echocmr"].startswith(got["local"])  # the model's own copy
    assert not any(r.split("==")[0] == "echocmr" for r in got["requirements"])
    assert {r.split("==")[0] for r in got["requirements"]} == set(SERVING_DISTRIBUTIONS)
    assert got["code"] == "code"
    assert {"study", "status", "message", "files", "p_wma", "logit_wma"} <= set(got["outputs"])
    assert got["example_keys"] == ["dataframe_split"] and got["example_bytes"] < 100_000
    needed = _closure(SERVING_DISTRIBUTIONS)
    missing = [d for d in got["imported"] if _norm(d) not in needed and d != "echocmr"]
    assert missing == [], missing
    assert not {_norm(b) for b in BLOCKED} & {_norm(d) for d in got["imported"]}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _closure(roots) -> set[str]:
    """The distributions ``roots`` need, transitively (their installed metadata's Requires-Dist
    without extras or environment markers that do not apply here)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen, todo = set(), [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen
