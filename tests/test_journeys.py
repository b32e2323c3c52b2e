"""Every documented journey, run as a user runs it: the commands are read from the docs.

A guide marks the shell blocks a user types with an info string naming the journey,
```` ```bash journey=NAME ````; a journey is its blocks in the order of `JOURNEYS` (a guide,
then the next), joined into one ``bash -euo pipefail`` script. Each runs as a subprocess in a
clean environment — its own HOME and TMPDIR, PATH = the installed ``echocmr`` and the system,
nothing else: no split key, no Ray or MLflow settings, none of the test suite's variables — in
an empty working directory. So a command that only works with a setting the tests have, or a
doc that drifted from the CLI, fails here. The checks after each journey look at what a user
would look at (files, exit codes, printed lines).

Journeys that train or start clusters take minutes on two cores: they are marked ``slow``
(``make test-all``). A journey that continues another runs that one's blocks first, in the same
shell; a chain is tested once, at its end, with a check for each journey on the way
(`test_train_serve_evaluate` covers train-one-node, train-on-a-cluster, pull-a-model and
evaluate). Whatever a journey starts (a local Ray cluster, an MLflow server, a scoring server)
the test stops afterwards also when the journey failed half-way, through the same commands and
pid files a user has.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _proc import run_group

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```bash journey=(?P<name>[\w-]+)[^\n]*\n(?P<body>.*?)^```", re.M | re.S)

# journey -> (the journey it continues, or None; the guides holding its own blocks, in order)
JOURNEYS: dict[str, tuple[str | None, list[str]]] = {
    "ingest-one-site": (None, ["docs/ingest.md"]),
    "add-a-site": ("ingest-one-site", ["docs/add-a-site.md"]),
    "ingest-on-a-cluster": ("ingest-one-site", ["docs/ingest.md"]),
    "train-one-node": (None, ["docs/training.md"]),
    "train-on-a-cluster": ("train-one-node", ["docs/train-on-many-nodes.md"]),
    "pull-a-model": ("train-on-a-cluster", ["docs/pull-a-model.md"]),
    "evaluate": ("pull-a-model", ["docs/evaluation.md"]),
}

# Loopback ports the guides name: the MLflow tracking server of train-on-a-cluster and the
# scoring server of pull-a-model.
TRACKING_PORT, SERVE_PORT = 5071, 5078


def blocks(name: str) -> list[str]:
    """The journey's shell blocks as written: those of the journey it continues, then its own,
    guide by guide in document order."""
    after, docs = JOURNEYS[name]
    found = blocks(after) if after else []
    for doc in docs:
        found += [m.group("body") for m in BLOCK.finditer((ROOT / doc).read_text())
                  if m.group("name") == name]
    return found


def user_env(tmp: Path) -> dict[str, str]:
    """What a user's plain shell has: a HOME and a TMPDIR of its own and the installed tools.

    The TMPDIR is short, like a user's ``/tmp``: a local Ray puts its sockets under it, and an
    AF_UNIX path may not exceed 107 bytes, which one below pytest's ``tmp_path`` does
    (``.../test_train_serve_evaluate0/tmp/ray/session_<time>_<pid>/sockets/plasma_store``).
    """
    home = tmp / "home"
    tmpdir = Path("/tmp") / f"ej-{hashlib.sha256(str(tmp).encode()).hexdigest()[:10]}"
    home.mkdir(exist_ok=True)
    tmpdir.mkdir(exist_ok=True)
    bindir = str(Path(sys.executable).parent)
    return {"HOME": str(home), "TMPDIR": str(tmpdir), "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([bindir, "/usr/local/bin", "/usr/bin", "/bin"])}


def run_journey(name: str, tmp: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    script = "\n".join(blocks(name))
    assert script.strip(), f"no ```bash journey={name} blocks in {JOURNEYS[name][1]}"
    work = tmp / "work"
    work.mkdir()
    done = run_group(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=user_env(tmp),
                     timeout=timeout)
    assert done.returncode == 0, (f"journey {name} failed (exit {done.returncode})\n--- script\n"
                                  f"{script}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n"
                                  f"{done.stderr[-6000:]}")
    return done


def test_every_journey_is_in_its_guides():
    for name, (_after, docs) in JOURNEYS.items():
        own = [m for doc in docs for m in BLOCK.finditer((ROOT / doc).read_text())
               if m.group("name") == name]
        assert own, f"no ```bash journey={name} block in {docs}"
    marked = {m.group("name") for doc in ROOT.glob("docs/*.md")
              for m in BLOCK.finditer(doc.read_text())}
    marked |= {m.group("name") for m in BLOCK.finditer((ROOT / "README.md").read_text())}
    assert marked <= set(JOURNEYS), f"journeys marked in docs but never run: {marked - set(JOURNEYS)}"


def test_every_journey_is_run_by_a_test():
    """A journey in `JOURNEYS` is run by a test of this module, itself or as the start of a
    journey that continues it (a chain is run once, at its end)."""
    targets = set(re.findall(r'run_journey\("([\w-]+)"', Path(__file__).read_text()))
    covered = set()
    for name in targets:
        while name is not None:
            covered.add(name)
            name = JOURNEYS[name][0]
    assert covered == set(JOURNEYS), f"never run: {set(JOURNEYS) - covered}"


@pytest.mark.timeout(1800)
def test_ingest_one_site(tmp_path):
    """docs/ingest.md: a synthetic cohort, a split key of the user's own, one ingest, verify and
    stats — from a plain shell."""
    done = run_journey("ingest-one-site", tmp_path)
    shards = tmp_path / "work" / "sets" / "northfield"
    assert (shards / "manifest.parquet").is_file() and (shards / "stats.json").is_file()
    # shards of whichever splits the user's random key gave its 4 patients (0.3^4 of keys give
    # no train patient, about 1 key in 120: a check on train-*.tar failed so once)
    assert list(shards.glob("*-*.tar")) and (shards / "ingest_report.parquet").is_file()
    assert "OK" in done.stdout  # shards verify's verdict


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_add_a_site(tmp_path):
    """docs/add-a-site.md after docs/ingest.md: a second site with the same key, merged by
    reshard into a new set that verifies."""
    run_journey("add-a-site", tmp_path)
    merged = tmp_path / "work" / "sets" / "v2"
    assert (merged / "manifest.parquet").is_file()


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pid_file: Path) -> bool:
    """Whether any process of the process group named in ``pid_file`` (a guide's pid file) is
    left."""
    try:
        os.killpg(int(pid_file.read_text().strip()), 0)
    except ProcessLookupError:
        return False
    return True


def left_running(work: Path, ports: tuple[int, ...], grace_s: float = 30.0
                 ) -> tuple[dict[int, bool], dict[str, bool]]:
    """What still listens on ``ports``, and which pid files' process groups still have a
    process, once the processes a `kill` signalled have had ``grace_s`` to exit (a server shuts
    down gracefully, so not at once)."""
    deadline = time.monotonic() + grace_s
    while True:
        ports_open = {port: listening(port) for port in ports}
        groups = {f.name: group_alive(f) for f in work.glob("*.pid")}
        if not any(ports_open.values()) and not any(groups.values()) \
                or time.monotonic() > deadline:
            return ports_open, groups
        time.sleep(1)


def stop_what_a_journey_started(tmp: Path) -> None:
    """After a journey, passed or failed: `echocmr cluster stop` in the user's environment (a
    no-op when no cluster runs), and the process groups of the guides' pid files."""
    subprocess.run(["echocmr", "cluster", "stop"], cwd=tmp / "work", env=user_env(tmp),
                   capture_output=True, timeout=300)
    for pid_file in (tmp / "work").glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def user_cli(tmp: Path, *argv: str) -> subprocess.CompletedProcess:
    """One more command in the user's shell, in the journey's directory."""
    return subprocess.run(argv, cwd=tmp / "work", env=user_env(tmp), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_ingest_on_a_cluster(tmp_path):
    """docs/ingest.md, "Ingest a whole archive": `cluster local --nodes 2` with the user's default
    token auth (a fresh HOME: the token is written), `ingest --address auto` on it, byte-identical
    to the ingest without Ray, and the cluster stopped as the guide says."""
    try:
        done = run_journey("ingest-on-a-cluster", tmp_path, timeout=2100)
        after = user_cli(tmp_path, "echocmr", "cluster", "status")
    finally:
        stop_what_a_journey_started(tmp_path)
    # auth on by default: cluster local says so, with the token it wrote into the fresh HOME
    assert f"Ray token auth, token in {tmp_path / 'home' / '.ray' / 'auth_token'}" in done.stdout
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()
    assert "the same bytes as without Ray" in done.stdout
    assert (tmp_path / "work" / "sets" / "northfield-ray" / "manifest.parquet").is_file()
    # stopped: no cluster is recorded any more, and status says so with a non-zero exit
    assert after.returncode != 0, after.stdout


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_train_serve_evaluate(tmp_path):
    """docs/training.md -> train-on-many-nodes.md -> pull-a-model.md -> evaluation.md, in one
    shell: a one-node training, a second one submitted to a two-node local cluster (token auth)
    logging to a loopback MLflow server, list / pull / promote / predict, `mlflow models serve`
    with a POST of a DICOM and a junk file, the server stopped, `eval` and `loso`."""
    for port in (TRACKING_PORT, SERVE_PORT):
        assert not listening(port), f"port {port}, which the guides use, is taken on this machine"
    work = tmp_path / "work"
    try:
        done = run_journey("evaluate", tmp_path, timeout=5100)
        still, groups = left_running(work, (TRACKING_PORT, SERVE_PORT))
        listed = user_cli(tmp_path, "echocmr", "models", "list", "--json",
                          "--tracking-uri", "sqlite:///mlflow.db")
    finally:
        stop_what_a_journey_started(tmp_path)

    # train-one-node and train-on-a-cluster: two registered versions in the one store, the
    # second trained by a job on the cluster
    assert listed.returncode == 0, listed.stderr
    versions = {v["version"]: v for v in json.loads(listed.stdout)}
    assert sorted(versions) == ["1", "2"]
    # pull-a-model: the promotion by hand put champion back on version 1
    assert "champion" in versions["1"]["aliases"]
    assert (work / "models" / "echo-champion" / "checkpoint.pt").is_file()
    with open(work / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    studies = [r for r in rows if r["status"] == "ok"]
    assert len(studies) == 1 and 0.0 <= float(studies[0]["p_wma"]) <= 1.0
    # the served model: one row for the study, the junk file rejected with ingest's reason
    response = json.loads((work / "response.json").read_text())["predictions"]
    assert len(response) == 1 and response[0]["status"] == "ok", response
    assert response[0]["n_files"] == 1 and 0.0 <= response[0]["p_wma"] <= 1.0
    assert [f["status"] for f in response[0]["files"]] == ["kept", "rejected"]
    assert response[0]["files"][1]["reason"] == "not_dicom"
    # stopping as the guides say leaves nothing listening, no uvicorn or gunicorn child
    assert still == {TRACKING_PORT: False, SERVE_PORT: False}, still
    assert groups == {"serve.pid": False, "mlflow-server.pid": False}, groups
    # evaluate: eval's outputs and one loso row per site
    assert {"report.md", "metrics.json", "predictions.parquet"} <= {p.name for p in
                                                                   (work / "eval").iterdir()}
    loso = json.loads((work / "loso" / "loso.json").read_text())
    assert "northfield" in json.dumps(loso) and "riverside" in json.dumps(loso)
    # what the user read on the way: the one-node registration, the cluster's token auth
    assert "registered echo version 1 as @champion" in done.stdout
    assert re.search(r"^auth: +token \(token in ", done.stdout, re.M), "cluster status: auth"
    # a score listed under an AUC's name is an AUC (with too few val positives the rule falls
    # back to -val loss, and says so)
    for v in versions.values():
        assert "AUC" not in v["selection"].split("(no ")[0] or v["selection_score"] >= 0, v
