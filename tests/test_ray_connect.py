"""A command that starts its own Ray under a long ``$TMPDIR`` (`echocmr.ray_connect`).

Ray puts Unix sockets under its temp dir, and a socket path may not exceed 107 bytes on Linux;
a batch scheduler's or a test runner's ``$TMPDIR`` is often long enough that a plain
``ray.init()`` fails half-way through its start. Tried from the outside: the real CLI in a
subprocess with its own HOME and a long TMPDIR, against plain ``ray.init()`` under the same
TMPDIR (the control: it must fail, or the test could not).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from echocmr.ray_connect import (
    RayTempDirError,
    local_temp_dir,
    longest_socket_path,
    socket_path_limit,
)

from _shards_fixtures import make_shard_set


def _long_dir(base, total: int = 80) -> str:
    """A directory whose absolute path is ``total`` bytes or more (Ray's paths under it: +70)."""
    path = str(base)
    while len(path) < total:
        path = os.path.join(path, "scheduler_job_4711_tmp")
    os.makedirs(path, exist_ok=True)
    return path


def _env(home, tmpdir) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), TMPDIR=tmpdir)  # a user's shell: their own HOME, a long TMPDIR
    return env


def test_a_long_tmpdir_is_checked_before_ray_starts(tmp_path, monkeypatch):
    long_dir = _long_dir(tmp_path)
    assert longest_socket_path(long_dir) > socket_path_limit()
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", long_dir)  # this test's process only
    short = local_temp_dir()
    assert short == f"/tmp/echocmr-ray-{os.getuid()}"
    assert longest_socket_path(short) <= socket_path_limit()
    assert os.stat(short).st_uid == os.getuid()
    # a RAY_TMPDIR the user chose is not moved behind their back: a clear error instead
    monkeypatch.setenv("RAY_TMPDIR", long_dir)
    with pytest.raises(RayTempDirError, match="RAY_TMPDIR is .* bytes long.*shorter directory"):
        local_temp_dir()
    # a short TMPDIR is left to Ray
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.setenv("TMPDIR", "/tmp")
    assert local_temp_dir() is None


@pytest.mark.timeout(600)
def test_a_command_starts_its_own_ray_under_a_long_tmpdir(tmp_path):
    """`echocmr shards verify --address local` (one Ray task per shard on a Ray the command
    starts) under a 100-byte TMPDIR verifies the set; plain ``ray.init()`` there fails."""
    home = tmp_path / "home"
    home.mkdir()
    long_dir = _long_dir(tmp_path, 100)
    shards = make_shard_set(str(tmp_path / "set"), n_patients=4, clips_per_patient=1,
                            n_frames=8, size=64)
    env = _env(home, long_dir)
    control = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(include_dashboard=False); ray.shutdown()"],
        env=env, capture_output=True, text=True, timeout=300)
    assert control.returncode != 0 and "AF_UNIX path length" in control.stderr, \
        control.stderr[-2000:]
    echocmr = os.path.join(os.path.dirname(sys.executable), "echocmr")
    run = subprocess.run([echocmr, "shards", "verify", shards, "--address", "local"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "OK" in run.stdout, run.stdout
    assert f"/tmp/echocmr-ray-{os.getuid()}" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
