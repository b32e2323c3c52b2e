"""The command line: one entry point, every subcommand listed and working."""

import subprocess
import sys

from echocmr.cli import build_parser


def test_help_lists_subcommands_without_heavy_imports():
    code = (
        "import sys, echocmr.cli; echocmr.cli.build_parser();"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'nvidia.dali', 'av') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imports heavy modules: {out.stdout}"


def test_every_subcommand_has_a_handler():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "echocmr_command")
    assert sub.choices, "no subcommands registered"
    for name, p in sub.choices.items():
        assert p.get_default("func") or any(
            getattr(a, "choices", None) for a in p._actions
        ), f"subcommand {name} has no handler"


# --------------------------------------------------------------------------------------------
# How the command line behaves, as a user meets it: the real `echocmr` script in a subprocess
# with a clean environment (its own HOME and TMPDIR, nothing the tests set).

import os  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from echocmr import __version__  # noqa: E402

ECHOCMR = str(Path(sys.executable).parent / "echocmr")


def _clean_env(tmp_path, **extra) -> dict:
    home, tmp = tmp_path / "home", tmp_path / "tmpdir"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return {"HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
            **extra}


def _echocmr(tmp_path, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([ECHOCMR, *args], cwd=tmp_path, env=env or _clean_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The error on stderr, which must be its last line and the only one that is not a
    one-line ``echocmr ...: warning:`` (no traceback, no log); returns it."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    rest = [line for line in lines[:-1] if not (line.startswith("echocmr")
                                                and ": warning: " in line)]
    assert lines and not rest, f"{len(lines)} lines on stderr:\n{result.stderr}"
    return lines[-1]


def test_version(tmp_path):
    result = _echocmr(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"echocmr {__version__}"


@pytest.mark.parametrize("argv", [
    ["train", "--shard", "x"],  # --shards
    ["ingest", "--dicom", "d", "--label", "l.csv", "--out", "o"],  # --labels
    ["models", "list", "--tracking", "sqlite:///x.db"],  # --tracking-uri
    ["cluster", "local", "--node", "2"],  # --nodes
    ["--verb", "cluster", "status"],  # the top-level --verbose
])
def test_abbreviated_flags_are_refused(tmp_path, argv):
    result = _echocmr(tmp_path, *argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unrecognized arguments" in _one_error_line(result)


def test_train_on_a_folder_that_is_no_shard_set_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _echocmr(tmp_path, "train", "--shards", "empty")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert line.startswith("echocmr train: error:") and "not a finished shard set" in line


def test_a_missing_input_file_is_one_line(tmp_path):
    result = _echocmr(tmp_path, "shards", "stats", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert "nowhere" in _one_error_line(result)


def test_a_mistyped_sqlite_store_is_an_error_and_is_not_created(tmp_path):
    typo = tmp_path / "typo" / "mlflow.db"
    result = _echocmr(tmp_path, "models", "list", "--tracking-uri", f"sqlite:///{typo}")
    assert result.returncode == 1
    assert f"no MLflow store at {typo}" in _one_error_line(result)
    assert not typo.parent.exists()  # MLflow would have made the directory and an empty store
    # The default store (./mlflow.db) that is not there is the same error, through the variable too.
    assert _echocmr(tmp_path, "models", "list").returncode == 1
    env = _clean_env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{typo}")
    assert "no MLflow store" in _one_error_line(_echocmr(tmp_path, "models", "list", env=env))
    assert not (tmp_path / "mlflow.db").exists()


def test_train_into_a_directory_that_does_not_exist_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _echocmr(tmp_path, "train", "--shards", "empty", "--tracking-uri",
                      f"sqlite:///{tmp_path}/no/such/dir/mlflow.db")
    assert result.returncode == 1
    assert "does not exist" in _one_error_line(result)
    assert not (tmp_path / "no").exists()


def test_a_wrong_model_alias_is_one_line(tmp_path):
    from mlflow import MlflowClient

    from _shards_fixtures import make_shard_set

    shards = make_shard_set(str(tmp_path / "shards"), n_patients=4, clips_per_patient=1,
                            n_frames=8, size=16, samples_per_shard=4, seed=0)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(store).search_experiments()  # an existing, empty store
    for argv in (["predict", "--model", "models:/nope@champion", "--out", "p.csv", "x.dcm"],
                 ["eval", "--shards", shards, "--split", "train", "--model", "models:/nope@champion",
                  "--out", "o"]):
        result = _echocmr(tmp_path, *argv, "--tracking-uri", store)
        assert result.returncode == 1, result.stdout + result.stderr
        line = _one_error_line(result)
        assert line.startswith(f"echocmr {argv[0]}:") and "nope" in line


def test_a_command_that_uses_no_store_never_checks_one(tmp_path):
    """`eval --no-track` of a local model, and `predict` of one, run with a tracking URI nobody
    answers (the store check is for commands that use the store)."""
    from echocmr.cli import _store_mode, build_parser

    dead = "http://127.0.0.1:9"
    parse = build_parser().parse_args
    assert _store_mode(parse(["eval", "--shards", "s", "--model", "pulled", "--out", "o",
                              "--no-track", "--tracking-uri", dead])) is None
    assert _store_mode(parse(["predict", "--model", "pulled", "--out", "p.csv", "x.dcm",
                              "--tracking-uri", dead])) is None
    assert _store_mode(parse(["eval", "--shards", "s", "--model", "models:/m@a", "--out", "o",
                              "--no-track", "--tracking-uri", dead])) == "read"
    assert _store_mode(parse(["eval", "--shards", "s", "--model", "pulled", "--out", "o",
                              "--tracking-uri", dead])) == "write"  # the eval run is logged
    assert _store_mode(parse(["train", "--shards", "s", "--tracking-uri", dead])) == "write"


def test_an_unreachable_tracking_server_is_an_error_at_once(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # MLflow's own client retries such a server for over two minutes; the check gives up in
    # seconds (the subprocess timeout turns a regression into a failure, not a hang).
    result = _echocmr(tmp_path, "models", "list", "--tracking-uri", f"http://127.0.0.1:{port}",
                      timeout=60)
    assert result.returncode == 1
    assert "cannot reach the MLflow tracking server" in _one_error_line(result)


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only errors the user can fix are shortened: anything else is a bug and says where."""
    code = ("import sys; from echocmr import cli\n"
            "def boom(args): raise ZeroDivisionError('a bug')\n"
            "p = cli.build_parser; cli.build_parser = lambda: _p()\n"
            "def _p():\n"
            "    parser = p(); sub = next(a for a in parser._actions "
            "if a.dest == 'echocmr_command')\n"
            "    sub.choices['synth'].set_defaults(func=boom); return parser\n"
            "sys.exit(cli.main(['synth', '--out', 'x']))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" in result.stderr and "a bug" in result.stderr


def test_a_tracking_server_with_basic_auth_wants_the_right_credentials(tmp_path):
    """The shipped cluster configs run MLflow with basic auth: a command without the user's
    credentials, or with wrong ones, is told so at once; with them it works."""
    from _mlflow_fixtures import start_mlflow_server

    password = "a-long-admin-password-1"
    server = start_mlflow_server(tmp_path, admin_password=password)
    try:
        url = server.wait()
        argv = ["models", "list", "--tracking-uri", url]
        result = _echocmr(tmp_path, *argv)
        assert result.returncode == 1 and "wants credentials" in _one_error_line(result)
        wrong = _clean_env(tmp_path, MLFLOW_TRACKING_USERNAME="admin",
                           MLFLOW_TRACKING_PASSWORD="not-it")
        result = _echocmr(tmp_path, *argv, env=wrong)
        assert result.returncode == 1 and "refused the credentials" in _one_error_line(result)
        # The admin creates echocmr's user as docs/train-on-many-nodes.md says, in a process
        # of its own (MLflow's client reads the credentials from the environment).
        create = ("import os\nfrom mlflow.server import get_app_client\n"
                  f"client = get_app_client('basic-auth', tracking_uri='{url}')\n"
                  "client.create_user('echocmr', os.environ['ECHOCMR_MLFLOW_PASSWORD'])\n")
        admin = _clean_env(tmp_path, MLFLOW_TRACKING_USERNAME="admin",
                           MLFLOW_TRACKING_PASSWORD=password,
                           ECHOCMR_MLFLOW_PASSWORD="the-echocmr-users-password")
        made = subprocess.run([sys.executable, "-c", create], env=admin, capture_output=True,
                              text=True, timeout=120)
        assert made.returncode == 0, made.stderr[-2000:]
        right = _clean_env(tmp_path, MLFLOW_TRACKING_USERNAME="echocmr",
                           MLFLOW_TRACKING_PASSWORD="the-echocmr-users-password")
        result = _echocmr(tmp_path, *argv, env=right)
        assert result.returncode == 0, result.stderr
        assert "no registered models" in result.stdout
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
