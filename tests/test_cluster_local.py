"""`echocmr cluster local / submit / status / stop` end to end, as a user runs them.

Two real `ray start` nodes on this machine, one job through the Jobs API that proves it sees both
nodes and lands work on each, one failing job whose exit code comes back, then stop, which must
leave no process of the cluster alive. ~30 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from echocmr.cluster.local import LocalClusterState, cluster_pids

ECHOCMR = str(Path(sys.executable).parent / "echocmr")

JOB = """
import os, ray
ray.init()
alive = [n for n in ray.nodes() if n["Alive"]]
print("ALIVE", len(alive))
where = lambda: ray.get_runtime_context().get_node_id()
ids = [ray.get(ray.remote(where).options(resources={f"node_{i}": 1}, num_cpus=1).remote())
       for i in range(2)]
print("DISTINCT", len(set(ids)))
print("CWD", os.getcwd())
print("SECRET", os.environ.get("ECHOCMR_TEST_ENV"))
"""


def _run(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ECHOCMR, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cluster_env(tmp_path):
    env = dict(os.environ, ECHOCMR_STATE_DIR=str(tmp_path / "state"))
    env.pop("RAY_ADDRESS", None)
    yield env
    state = LocalClusterState.load(tmp_path / "state")
    if state is not None:  # a failed test must not leave a cluster behind
        _run("cluster", "stop", env=env)


def test_local_cluster_submit_and_stop(cluster_env, tmp_path):
    started = _run("cluster", "local", "--nodes", "2", "--cpus-per-node", "1", env=cluster_env)
    assert started.returncode == 0, started.stdout + started.stderr
    state = LocalClusterState.load(tmp_path / "state")
    assert state is not None and len(state.nodes) == 2
    assert f"Ray address:  {state.address}" in started.stdout
    assert [n.resource for n in state.nodes] == ["node_0", "node_1"]
    assert len({n.pgid for n in state.nodes}) == 2  # separate processes per node
    pids = cluster_pids(state)
    assert pids

    status = _run("cluster", "status", env=cluster_env)
    assert status.returncode == 0 and "2 x 1 CPU" in status.stdout

    job = _run(
        "cluster", "submit", "--env", "ECHOCMR_TEST_ENV=seen", "--",
        sys.executable, "-c", JOB, env=cluster_env,
    )  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    assert "ALIVE 2" in job.stdout
    assert "DISTINCT 2" in job.stdout  # node_0 and node_1 are different raylets
    assert f"CWD {tmp_path}" in job.stdout  # a local cluster runs the job where we are
    assert "SECRET seen" in job.stdout
    assert "SUCCEEDED" in job.stdout + job.stderr

    failed = _run("cluster", "submit", "--", "python", "-c", "import sys; sys.exit(3)", env=cluster_env)
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "FAILED" in failed.stdout + failed.stderr

    stopped = _run("cluster", "stop", env=cluster_env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not cluster_pids(state)
    assert not {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state_of(p)}
    assert not Path(state.temp_dir).exists()
    assert LocalClusterState.load(tmp_path / "state") is None
    assert _run("cluster", "status", env=cluster_env).returncode == 1


def _state_of(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat[stat.rindex(")") + 2]


def test_submit_without_a_cluster_says_what_to_do(cluster_env):
    result = _run("cluster", "submit", "--", "true", env=cluster_env)
    assert result.returncode == 2
    assert "echocmr cluster local" in result.stderr and "--address" in result.stderr


def test_local_rejects_bad_sizes(cluster_env):
    result = _run("cluster", "local", "--nodes", "0", env=cluster_env)
    assert result.returncode == 1 and "--nodes must be at least 1" in result.stderr


@pytest.mark.slow
def test_submit_echocmr_train_to_a_local_two_node_cluster(cluster_env, mlflow_server, tmp_path):
    """The documented path: `cluster local`, then `cluster submit -- echocmr train ...` (~2 min)."""
    import yaml

    from _train_fixtures import make_tiny_shards, tiny_config

    shards = make_tiny_shards(str(tmp_path / "shards"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(epochs=1)))
    started = _run("cluster", "local", "--nodes", "2", env=cluster_env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        job = _run(
            "cluster", "submit", "--", "echocmr", "train", "--shards", shards,
            "--workers", "2", "--config", "tiny.yaml", "--storage", "runs",
            "--run-name", "submitted", "--register", "tiny",
            "--tracking-uri", mlflow_server.wait(),  # two nodes: a server, never an sqlite file
            env=cluster_env, timeout=900,
        )  # fmt: skip
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "registered tiny version 1" in job.stdout
        assert (tmp_path / "runs" / "submitted" / "epoch_0000").is_dir()  # relative to our cwd
    finally:
        _run("cluster", "stop", env=cluster_env)
