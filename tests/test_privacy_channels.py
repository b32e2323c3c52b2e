"""No patient text in any output channel: the audit of docs/privacy.md, attacked from outside.

A hostile site's export (`_leak_fixtures.write_hostile_export`: patient-named folders and files
with spaces, ``^`` and a Latin-1 byte; every free-text DICOM element and a private tag filled;
a views table and a CMR table with free-text columns; files that fail in every way, some with
the patient in the very element that fails) goes through the real CLI in subprocesses, each with
a clean environment and a HOME and TMPDIR of its own. Then every planted string, in every form
a leak could take (`_leak_fixtures.needles`), is searched for in: each command's stdout and
stderr, every file the commands wrote (shards, manifest cells, stats, indexes, the work cache,
HOME, TMPDIR), and, in the slow test, Ray's session logs (driver, raylets, GCS, every worker's
stdout and stderr), ``shards verify/stats/reshard``, ``echocmr predict``, and the served model's
answers and log.

The only place the strings may be is what docs/privacy.md calls site-local, by design: the
``source`` column of ``ingest_report.parquet`` (how a site finds its bad files) and the
``files`` column of ``echocmr predict``'s output (the paths the user passed). Everything else is
a vocabulary, a number, a keyed hash, or a refusal.

The default run keeps one representative: ingest on a process pool (~20 s), and the refusals of
bad table cells. The slow test adds Ray (``echocmr cluster local``, token auth on, as users run
it), the shard tools, predict and serve (~5 min on two shared cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _leak_fixtures import (
    CMR_DATE,
    MRN,
    NAME,
    find_needles,
    scan_tree,
    write_hostile_export,
)

from echocmr.shards.format import INGEST_REPORT_FILE, MANIFEST_FILE

pytestmark = pytest.mark.timeout(1500)

BIN = Path(sys.executable).parent
SPLIT_KEY = "a-site-secret-for-the-privacy-audit-0123456789"


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """A user's shell: its own HOME and TMPDIR, echocmr on PATH, the split key; nothing else."""
    home, tmp = root / "home", root / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return {"HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin"]),
            "ECHOCMR_SPLIT_KEY": SPLIT_KEY, **extra}


def run(argv: list, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Bytes in and out: a path that is not UTF-8 is passed and read as it is."""
    return subprocess.run([os.fsencode(str(a)) if isinstance(a, Path) else a for a in argv],
                          env=env, cwd=cwd, capture_output=True, timeout=timeout)


class Audit:
    """Every channel looked at, and the planted strings each one held."""

    def __init__(self) -> None:
        self.looked: list[str] = []
        self.leaks: dict[str, list[str]] = {}

    def text(self, channel: str, blob: bytes) -> None:
        self.looked.append(channel)
        if found := find_needles(blob):
            at = blob.find(found[0].encode("latin-1"))  # where, to say what leaked it
            self.leaks[channel] = [*found, blob[max(0, at - 120):at + 60].decode(errors="replace")]

    def command(self, name: str, proc: subprocess.CompletedProcess) -> None:
        self.text(f"{name}: stdout", proc.stdout)
        self.text(f"{name}: stderr", proc.stderr)

    def tree(self, name: str, root: Path, *, skip=()) -> None:
        self.looked.append(f"{name}: every file under {root}")
        for path, found in scan_tree(root, skip=skip).items():
            self.leaks[f"{name}: {path}"] = found

    def table(self, name: str, path: Path, *, site_local_columns=()) -> None:
        """A Parquet or CSV file's decoded cells (Parquet pages are compressed), but for the
        columns that are site-local by design."""
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        table = table.drop(columns=list(site_local_columns))
        self.text(f"{name}: cells of {path.name}", table.to_csv(index=False).encode()
                  + json.dumps(table.columns.tolist()).encode())

    def check(self) -> None:
        assert not self.leaks, "patient text reached:\n" + "\n".join(
            f"  {channel}: {found}" for channel, found in self.leaks.items())


def ingest_argv(export, out: Path, *more: str) -> list:
    return [BIN / "echocmr", "-v", "ingest", "--dicom", export.dicom_dir, "--labels",
            export.labels, "--views", export.views, "--config", export.config, "--site",
            "hostile", "--out", out, "--no-progress", *more]


def audit_ingest(audit: Audit, name: str, export, out: Path, proc) -> None:
    """What one ingest wrote and printed; its report holds the paths, and only in ``source``."""
    assert proc.returncode == 0, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    audit.command(name, proc)
    report = out / INGEST_REPORT_FILE
    audit.tree(name, out, skip=[report])
    audit.table(name, out / MANIFEST_FILE)
    audit.table(name, report, site_local_columns=["source"])
    rows = pd.read_parquet(report)
    inputs = len(export.good) + len(export.bad)
    assert len(rows) == inputs and (rows["status"] == "kept").sum() >= len(export.good)
    assert any(MRN in s for s in rows["source"])  # the report does name paths (site-local)
    assert not (out / ".work").exists()  # the work cache is gone after a good run


# --------------------------------------------------------------------------------------------
# The default suite's representative


def test_ingest_on_a_process_pool_prints_and_writes_no_patient_text(tmp_path):
    export = write_hostile_export(tmp_path / "site")
    env = clean_env(tmp_path)
    out = tmp_path / "sets" / "hostile"
    proc = run(ingest_argv(export, out, "--workers", "2"), env, tmp_path)
    audit = Audit()
    audit_ingest(audit, "ingest --workers 2", export, out, proc)
    # Nothing else anywhere: HOME, TMPDIR and whatever a command left beside its output.
    audit.tree("files written", tmp_path, skip=[tmp_path / "site", out / INGEST_REPORT_FILE])
    audit.check()


@pytest.mark.parametrize(("column", "cell", "says"), [
    ("t1_native_ms", f"{NAME} {MRN} 1100", "'t1_native_ms': row 2 hold text where a number"),
    ("cmr_date", f"{NAME} {CMR_DATE}", "'cmr_date': row 2 hold dates that do not parse"),
    ("wma", f"{NAME} {MRN}", "'wma': row 2: binary label must be"),
    ("view", f"A4C {NAME} {MRN} DOB 1965-03-04", "column 'view', row 3: not a view"),
])
def test_a_refused_table_cell_is_named_by_its_row_never_by_its_text(tmp_path, column, cell,
                                                                     says):
    export = write_hostile_export(tmp_path / "site")
    table = export.views if column == "view" else export.labels
    rows = pd.read_csv(table, dtype=str, keep_default_na=False)
    rows.loc[1 if column != "view" else 2, column] = cell  # (the views table's row 3 is bad)
    rows.to_csv(table, index=False)
    if column == "view":
        export.config.write_text("text_detector:\n  enabled: false\n")  # views.unknown: error
    proc = run(ingest_argv(export, tmp_path / "out", "--workers", "1"), clean_env(tmp_path),
               tmp_path)
    assert proc.returncode != 0 and says in proc.stderr.decode(), proc.stderr.decode()[-2000:]
    audit = Audit()
    audit.command("ingest refusing a table", proc)
    audit.check()


# --------------------------------------------------------------------------------------------
# The whole flow: Ray, the shard tools, predict, serve


@pytest.mark.slow
def test_every_channel_of_the_whole_flow_is_free_of_patient_text(tmp_path):
    import shutil
    import tempfile

    from _serve_fixtures import ModelServer, child_env, serving_venv

    from echocmr.model.tracking import sqlite_artifact_root

    from _eval_model import register

    export = write_hostile_export(tmp_path / "site")
    export.config.write_text("views:\n  unknown: unknown\n")  # the text detector on, as shipped
    env = clean_env(tmp_path)
    audit = Audit()

    # -- ingest on a process pool and on a local Ray cluster (token auth on) ------------------
    pool = tmp_path / "sets" / "pool"
    audit_ingest(audit, "ingest --workers 2", export, pool,
                 run(ingest_argv(export, pool, "--workers", "2"), env, tmp_path))
    # Ray's sockets need a short TMPDIR (107-byte limit); its logs are audited before stop.
    short = Path(tempfile.mkdtemp(prefix="ecpv-", dir="/tmp"))
    ray_env = dict(env, TMPDIR=str(short))
    started = run([BIN / "echocmr", "cluster", "local", "--nodes", "2"], ray_env, tmp_path)
    assert started.returncode == 0, started.stdout.decode() + started.stderr.decode()
    try:
        state = json.loads((tmp_path / "home" / ".echocmr" / "cluster.json").read_text())
        assert state["auth"] == "token"
        ray_out = tmp_path / "sets" / "ray"
        proc = run(ingest_argv(export, ray_out, "--address", state["address"]), ray_env,
                   tmp_path)
        audit_ingest(audit, "ingest --address", export, ray_out, proc)
        assert f"Ray tasks at {state['address']}" in proc.stderr.decode()
        logs = list(Path(state["temp_dir"]).rglob("*.log")) + list(
            Path(state["temp_dir"]).rglob("worker-*"))
        assert any(p.name.startswith("worker-") for p in logs)  # the workers' own output
        audit.tree("Ray session dir", Path(state["temp_dir"]))
    finally:
        stopped = run([BIN / "echocmr", "cluster", "stop"], ray_env, tmp_path)
        audit.command("cluster stop", stopped)
        audit.tree("the Ray commands' TMPDIR", short)
        shutil.rmtree(short, ignore_errors=True)
    assert sorted(p.name for p in pool.glob("*.tar")) == sorted(p.name for p in ray_out.glob("*.tar"))

    # -- the shard tools ----------------------------------------------------------------------
    merged = tmp_path / "sets" / "merged"
    for name, argv in (("shards verify", ["verify", ray_out, "--decode"]),
                       ("shards verify --json", ["verify", ray_out, "--json"]),
                       ("shards stats", ["stats", ray_out]),
                       ("shards stats --json", ["stats", ray_out, "--json"]),
                       ("shards reshard", ["reshard", "--input", ray_out, "--out", merged])):
        proc = run([BIN / "echocmr", "shards", *argv], env, tmp_path)
        assert proc.returncode == 0, (name, proc.stderr.decode()[-3000:])
        audit.command(name, proc)
    assert not (merged / INGEST_REPORT_FILE).exists()  # what ships: the set, never the report
    audit.tree("reshard output", merged)
    audit.table("reshard output", merged / MANIFEST_FILE)

    # -- predict on the DICOMs, with a registered model ---------------------------------------
    stats = json.loads((ray_out / "stats.json").read_text())
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).create_experiment("echocmr", artifact_location=sqlite_artifact_root(uri))
    register(uri, stats, name="echo")
    files = [*export.good, *export.bad]
    predicted = tmp_path / "predictions.csv"
    proc = run([BIN / "echocmr", "-v", "predict", "--model", "models:/echo@champion",
                "--tracking-uri", uri, "--out", predicted, *files], env, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    audit.command("predict", proc)
    audit.table("predict", predicted, site_local_columns=["files"])

    # -- the served model: a bad request and a good one ---------------------------------------
    import base64

    python = serving_venv(tmp_path)
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    server = ModelServer(python, "models:/echo@champion", cwd=tmp_path,
                         env=child_env(python, uri, TMPDIR=str(server_tmp), HOME=env["HOME"]))
    try:
        server.wait()
        cells = [base64.b64encode(p.read_bytes()).decode() for p in files]
        # Patient text where a request may put any: a column's name, a cell that is not base64,
        # a view cell, a cell beside a clip. Ours is a 400 naming the field, or (an extra
        # column, which MLflow's schema drops) an answer without it.
        odd_requests = [
            ({"dataframe_split": {"columns": ["dicom", f"{NAME} {MRN}"],
                                  "data": [[cells[0], f"{NAME} {MRN}"]]}}, {200, 400}),
            ({"dataframe_records": [{"dicom": f"{NAME} {MRN} is not base64", "view": "A4C"}]},
             {400}),
            ({"inputs": {"dicom": cells[:1], "view": [f"A4C {NAME} {MRN}"]}}, {200, 400}),
            ({"dataframe_records": [{"dicom": cells[0], "clip": [[[[0.0]]]],
                                     "view": f"{NAME} {MRN}"}]}, {400}),
        ]
        for i, (body, expected) in enumerate(odd_requests):
            status, answer = server.post(json.dumps(body).encode())
            assert status in expected, (i, status, answer[:2000])
            audit.text(f"served answer to odd request #{i} ({status})", answer)
        # One study per request: the first patient's (its good file and every odd one), then
        # the second's.
        studies = [cells[:1] + cells[len(export.good):], cells[1:len(export.good)]]
        rows = []
        for i, study in enumerate(studies):
            body = {"dataframe_split": {"columns": ["dicom", "view"],
                                        "data": [[c, "A4C"] for c in study]}}
            status, answer = server.post(json.dumps(body).encode())
            assert status == 200, answer[:3000]
            rows.append(json.loads(answer)["predictions"][0])
            assert rows[-1]["status"] == "ok" and rows[-1]["n_files"] >= 1
            audit.text(f"served answer to study {i + 1}", answer)
        rejected = {f["reason"] for f in rows[0]["files"] if f["status"] == "rejected"}
        assert {"not_dicom", "truncated", "decode_failed", "error"} <= rejected, rows[0]["files"]
    finally:
        server.stop()
    audit.text("server log", server.log_path.read_bytes())
    assert not list(server_tmp.iterdir())  # every request's files removed

    # -- and nothing anywhere else the commands wrote -----------------------------------------
    audit.tree("files written", tmp_path, skip=[
        tmp_path / "site", pool / INGEST_REPORT_FILE, ray_out / INGEST_REPORT_FILE, predicted,
        tmp_path / "serve-venv", tmp_path / "mlruns"])
    audit.check()


# --------------------------------------------------------------------------------------------
# The helpers each channel uses, on the values the hostile export plants


def test_an_exception_detail_keeps_its_wording_and_drops_every_quoted_value():
    from echocmr.ingest.reasons import exception_detail

    raw = ("Expected total bytes to be an even multiple of bytes per value. Instead received "
           f"b'{NAME}' with length 10; could not convert string to float: \"{MRN}\"")
    detail = exception_detail(ValueError(raw))
    assert detail.startswith("ValueError: Expected total bytes") and "length 10" in detail
    assert not find_needles(detail.encode()), detail
    assert not find_needles(exception_detail(FileNotFoundError(2, "gone", f"/x/{NAME}.dcm"))
                            .encode())


def test_a_cell_is_shown_by_its_shape():
    from echocmr.ingest.labels import cell_shape

    assert cell_shape("08/05/2023") == "'99/99/9999'" and cell_shape("1,5 T") == "'9,9 A'"
    assert not find_needles(cell_shape(f"{NAME} {MRN}").encode())


def test_a_served_view_is_a_name_of_the_vocabulary_or_a_400_without_the_cell():
    from echocmr.model.serve_request import ServingError
    from echocmr.model.serving import _view

    assert (_view("ap4", 0), _view(" A4C ", 1), _view(None, 2), _view("None", 3)) == (
        "A4C", "A4C", None, None)
    with pytest.raises(ServingError) as refused:
        _view(f"A4C {NAME} {MRN}", 4)
    assert "view: row 4" in str(refused.value) and not find_needles(str(refused.value).encode())


def test_mlflows_warning_about_extra_columns_is_logged_without_their_names():
    import logging

    from echocmr.model.serve_request import quiet_request_names

    quiet_request_names()
    quiet_request_names()  # once per process, however often a model loads
    logger = logging.getLogger("mlflow.models.utils")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0,
                               f"Found extra inputs in the model input that are not defined in "
                               f"the model signature: `['{NAME} {MRN}']`.", (), None)
    assert logger.filter(record) and len(logger.filters) == 1
    assert "extra inputs" in record.getMessage()
    assert not find_needles(record.getMessage().encode())
