"""Ray token auth, end to end, as a user meets it (`echocmr.cluster.auth`).

The reported failure, reproduced from a plain shell: a HOME whose ``~/.ray/auth_token`` a plain
``ray.init()`` wrote, then ``echocmr cluster local --nodes 2`` and ``echocmr ingest ...
--address auto``. It failed with ``OwnerDiedError`` while the nodes ran without auth and the
client with it. Every command here runs as a subprocess with a clean environment: its own HOME
and TMPDIR, PATH to this installation, and only what a user sets (the split key ingest wants);
nothing the test harness sets. A second HOME without the token stands for a client that must be
refused. ~1.5 min on 2 shared cores.

The functions that choose a token are tested in this process with a HOME of their own.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from echocmr.cluster import auth

pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent
ECHOCMR = str(BIN / "echocmr")
SPLIT_KEY = "a-site-secret-for-this-test"  # what a user exports before ingesting (docs/ingest.md)


def _clean_env(home: Path, tmp: Path, **extra) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin"]), **extra}


@pytest.fixture
def short_tmp():
    """A short TMPDIR of the test's own: Ray puts Unix sockets under it (107-byte path limit),
    which pytest's tmp paths exceed."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ecau-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], env: dict, cwd: Path, timeout: float = 300):
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Choosing the token (in this process, HOME and variables of the test's own)


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in (auth.AUTH_MODE_ENV, auth.TOKEN_ENV, auth.TOKEN_PATH_ENV):
        monkeypatch.delenv(name, raising=False)
    return home


def test_ensure_token_writes_one_private_token_and_then_keeps_it(own_home):
    assert auth.find_token() is None
    source = auth.ensure_token()
    path = own_home / ".ray" / "auth_token"
    assert source.kind == "default" and source.path == path
    token = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)  # 256 bits, Ray's own format
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.ensure_token() == source and path.read_text() == token  # kept, not replaced
    assert auth.read_token() == token


def test_token_sources_follow_rays_order(own_home, tmp_path, monkeypatch):
    auth.ensure_token()  # a default file exists; the variables come first
    named = tmp_path / "cluster.token"
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(named))
    with pytest.raises(auth.RayAuthError, match="no readable"):
        auth.find_token()  # Ray aborts on a named file it cannot read: so do we
    assert auth.ensure_token().path == named  # `cluster local` writes the named file instead
    assert auth.read_token() == named.read_text()
    monkeypatch.setenv(auth.TOKEN_ENV, "from-the-environment")
    assert auth.find_token().kind == "env" and auth.read_token() == "from-the-environment"
    env = auth.node_env({}, auth=True)
    assert env == {auth.AUTH_MODE_ENV: "token"}  # the nodes inherit RAY_AUTH_TOKEN itself


def test_node_env_says_the_mode_on_every_node(own_home):
    env = auth.node_env({auth.TOKEN_ENV: "x", "OTHER": "1"}, auth=False)
    assert env == {auth.AUTH_MODE_ENV: "disabled", "OTHER": "1"}  # no token leaks to them
    env = auth.node_env({}, auth=True)
    assert env[auth.AUTH_MODE_ENV] == "token"
    assert env[auth.TOKEN_PATH_ENV] == str(own_home / ".ray" / "auth_token")


def test_a_client_uses_the_token_it_finds_and_an_explicit_mode_wins(own_home, monkeypatch):
    assert auth.configure_client() is None and auth.AUTH_MODE_ENV not in os.environ
    auth.ensure_token()
    assert auth.configure_client() == "token" and os.environ[auth.AUTH_MODE_ENV] == "token"
    monkeypatch.setenv(auth.AUTH_MODE_ENV, "disabled")  # the user's explicit choice
    assert auth.configure_client() == "disabled"
    monkeypatch.setenv(auth.AUTH_MODE_ENV, "tokn")
    with pytest.raises(auth.RayAuthError, match="not a Ray auth mode"):
        auth.configure_client()


# --------------------------------------------------------------------------------------------
# The reported journey, from a plain shell


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from _ingest_fixtures import write_cohort

    root = tmp_path_factory.mktemp("export")
    cohort = write_cohort(root, n_patients=2, clips_per_study=1, n_frames=16, shape=(48, 64),
                          seed=5)
    config = root / "ingest.yaml"
    config.write_text("text_detector:\n  enabled: false\n")  # seconds per file otherwise
    return cohort, config


def _ingest(export, out: Path, address: str, env: dict, cwd: Path):
    cohort, config = export
    return _run([ECHOCMR, "ingest", "--dicom", str(cohort.dicom_dir), "--labels",
                 str(cohort.labels_path), "--out", str(out), "--address", address,
                 "--config", str(config), "--no-progress"], env, cwd)


def test_cluster_local_after_a_plain_ray_init_then_ingest_from_a_plain_shell(export, tmp_path,
                                                                               short_tmp):
    user = _clean_env(tmp_path / "home", short_tmp / "a", ECHOCMR_SPLIT_KEY=SPLIT_KEY)
    # Any earlier local Ray use (`make demo` does one) leaves Ray's token in ~/.ray/auth_token.
    first = _run([sys.executable, "-c", "import ray; ray.init(num_cpus=1, "
                  "include_dashboard=False); ray.shutdown()"], user, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    token_file = tmp_path / "home" / ".ray" / "auth_token"
    token = token_file.read_text()

    started = _run([ECHOCMR, "cluster", "local", "--nodes", "2"], user, tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    state = json.loads((tmp_path / "home" / ".echocmr" / "cluster.json").read_text())
    try:
        assert state["auth"] == "token" and state["token"] == str(token_file)
        assert token_file.read_text() == token  # used, not replaced
        assert f"token in {token_file}" in started.stdout

        # The reported command: it failed with OwnerDiedError.
        auto = _ingest(export, tmp_path / "out_auto", "auto", user, tmp_path)
        assert auto.returncode == 0, auto.stdout[-3000:] + auto.stderr[-3000:]
        # `auto` is the cluster `cluster local` recorded, not whichever Ray runs on the machine
        assert f"Ray tasks at {state['address']}" in auto.stdout + auto.stderr
        assert "2 kept" in auto.stdout + auto.stderr
        # An explicit address: Ray's own client would not turn token auth on for it.
        explicit = _ingest(export, tmp_path / "out_addr", state["address"], user, tmp_path)
        assert explicit.returncode == 0, explicit.stdout[-3000:] + explicit.stderr[-3000:]
        same = sorted(p.name for p in (tmp_path / "out_auto").glob("*.tar"))
        assert same and same == sorted(p.name for p in (tmp_path / "out_addr").glob("*.tar"))

        # A client of the same cluster without the token is refused, by the GCS and by the
        # Jobs API, with a message and a non-zero exit.
        stranger = _clean_env(tmp_path / "home2", short_tmp / "b", ECHOCMR_SPLIT_KEY=SPLIT_KEY)
        refused = _ingest(export, tmp_path / "out_refused", state["address"], stranger, tmp_path)
        assert refused.returncode != 0
        assert "InvalidAuthToken" in refused.stderr or "connect" in refused.stderr.lower()
        assert not list((tmp_path / "out_refused").glob("*.tar"))
        job = _run([ECHOCMR, "cluster", "submit", "--address", state["dashboard_url"], "--",
                    "python", "-c", "print('RAN')"], stranger, tmp_path)
        assert job.returncode != 0 and "RAN" not in job.stdout
        assert "Ray refused this client" in job.stderr and "Traceback" not in job.stderr
        # ... and one with a wrong token too.
        wrong = dict(stranger, RAY_AUTH_TOKEN="0" * 64)
        job = _run([ECHOCMR, "cluster", "submit", "--address", state["dashboard_url"], "--",
                    "python", "-c", "print('RAN')"], wrong, tmp_path)
        assert job.returncode != 0 and "RAN" not in job.stdout

        # With the token, the Jobs API runs the job, whose driver reaches the cluster.
        job = _run([ECHOCMR, "cluster", "submit", "--", "python", "-c",
                    "import ray; ray.init(); print('NODES', len(ray.nodes()))"], user, tmp_path)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "NODES 2" in job.stdout
    finally:
        stopped = _run([ECHOCMR, "cluster", "stop"], user, tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_auth_off_is_an_explicit_choice(export, tmp_path, short_tmp):
    """``--no-auth`` runs the nodes without a token; a client says so with RAY_AUTH_MODE."""
    user = _clean_env(tmp_path / "home", short_tmp)
    started = _run([ECHOCMR, "cluster", "local", "--nodes", "1", "--no-auth"], user, tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert "auth:         OFF" in started.stdout
        assert not (tmp_path / "home" / ".ray" / "auth_token").exists()  # none was needed
        status = _run([ECHOCMR, "cluster", "status"], user, tmp_path)
        assert "auth:        disabled" in status.stdout
        job = _run([ECHOCMR, "cluster", "submit", "--", "python", "-c",
                    "import os; print('MODE', os.environ['RAY_AUTH_MODE'])"],
                   dict(user, RAY_AUTH_MODE="disabled"), tmp_path)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "MODE disabled" in job.stdout  # what the nodes run with
        # A token on the machine (any plain ray.init() writes one) does not make an echocmr
        # command talk token auth to this cluster: it reads the recorded choice.
        (tmp_path / "home" / ".ray").mkdir()
        (tmp_path / "home" / ".ray" / "auth_token").write_text("f" * 64)
        state = json.loads((tmp_path / "home" / ".echocmr" / "cluster.json").read_text())
        ingested = _ingest(export, tmp_path / "out", state["address"],
                           dict(user, ECHOCMR_SPLIT_KEY=SPLIT_KEY), tmp_path)
        assert ingested.returncode == 0, ingested.stdout[-3000:] + ingested.stderr[-3000:]
        assert list((tmp_path / "out").glob("*.tar"))
    finally:
        _run([ECHOCMR, "cluster", "stop"], user, tmp_path)
