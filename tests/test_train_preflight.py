"""`echocmr train` on a cluster of several nodes refuses, before any worker starts, a local sqlite
tracking URI and a ``--storage`` path another node cannot see (`train.preflight`).

One machine, real Ray nodes: ``ray.cluster_utils.Cluster`` starts a head and a worker node, and a
third node joins through ``ray start`` inside its own mount namespace (``unshare -m``) in which
the storage directory is covered by an empty tmpfs. That node runs on this machine's kernel and
network like the others, but a path under that directory is node-local to it, as a head's local
disk is to the other hosts of a real cluster: the driver's marker is not there. What this proves:
the check runs a task on every other node and refuses when one of them does not read the
driver's file. It does not prove anything about a particular network file system.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import echocmr.cli as echocmr_cli
from echocmr.cluster.inprocess import temporary_cluster
from echocmr.train.preflight import (
    MARKER_PREFIX,
    PreflightError,
    alive_nodes,
    check_storage_visible,
    check_tracking_uri,
)

from _train_fixtures import make_tiny_shards, tiny_config

pytestmark = pytest.mark.timeout(300)


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + one worker node (shared filesystem), connected; Ray files in a private temp dir."""
    with temporary_cluster(prefix="ecmp-") as c:
        yield c.cluster, c.temp_dir


def _wait_alive(count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while len(alive_nodes()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} alive nodes not reached in {timeout_s} s")
        time.sleep(0.5)


def _wait_gone(count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(alive_nodes()) > count and time.monotonic() < deadline:
        time.sleep(0.5)


def test_sqlite_refused_on_several_nodes_before_anything_starts(cluster, tmp_path, capsys):
    shards = make_tiny_shards(str(tmp_path / "shards"))
    (tmp_path / "tiny.yaml").write_text(json.dumps(tiny_config(epochs=1)))
    db = tmp_path / "mlflow.db"
    rc = echocmr_cli.main(["train", "--shards", shards, "--config", str(tmp_path / "tiny.yaml"),
                           "--workers", "2", "--run-name", "refused",
                           "--storage", str(tmp_path / "runs"),
                           "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"sqlite:///{db} is an sqlite file" in err and "has 2 nodes" in err
    assert "mlflow server" in err and "--tracking-uri http://HOST:5000" in err
    assert not db.exists()  # no MLflow run was opened
    assert not (tmp_path / "runs" / "refused").exists()  # no Ray Train run was started
    # the single-node default is not refused; a server URI is not refused on several nodes
    check_tracking_uri(f"sqlite:///{db}", 1)
    check_tracking_uri("http://mlflow:5000", 2)


def test_storage_seen_by_every_node_passes(cluster, tmp_path):
    nodes = alive_nodes()
    assert len(nodes) == 2
    check_storage_visible(str(tmp_path / "shared-runs"), nodes)  # same filesystem: visible
    assert os.listdir(tmp_path / "shared-runs") == []  # the marker is removed
    check_storage_visible("s3://bucket/runs", nodes)  # URIs are every node's by name


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (root or user namespaces) "
                                               "to give one node its own view of a directory")
def test_storage_another_node_cannot_see_is_refused(cluster, tmp_path, capsys, mlflow_server):
    c, temp = cluster
    hidden = tmp_path / "node-local"
    hidden.mkdir()
    # The third node sees an empty tmpfs at `hidden`, whatever the driver writes there.
    start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", c.address,
             "--num-cpus", "0", "--temp-dir", temp, "--disable-usage-stats"]
    script = f"mount -t tmpfs tmpfs {hidden} && exec {' '.join(start)}"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        _wait_alive(3)
        storage = hidden / "runs"
        with pytest.raises(PreflightError) as refused:
            check_storage_visible(str(storage), alive_nodes())
        message = str(refused.value)
        assert f"--storage {storage} is a local path that 1 of the cluster's 3 nodes" in message
        assert "s3://BUCKET/train_runs" in message
        assert not any(n.startswith(MARKER_PREFIX) for n in os.listdir(storage))

        # through the command: refused before an MLflow run or a Ray Train run exists (the
        # command checks that the tracking server answers first, so it is a live one; no run
        # may appear in it)
        shards = make_tiny_shards(str(tmp_path / "shards"))
        (tmp_path / "tiny.yaml").write_text(json.dumps(tiny_config(epochs=1)))
        rc = echocmr_cli.main(["train", "--shards", shards, "--config",
                               str(tmp_path / "tiny.yaml"), "--workers", "1",
                               "--run-name", "blind", "--storage", str(storage),
                               "--tracking-uri", mlflow_server.wait()])
        err = capsys.readouterr().err
        assert rc == 2 and "cannot see" in err and "1 of the cluster's 3 nodes" in err
        assert os.listdir(storage) == []
        from mlflow import MlflowClient

        assert MlflowClient(mlflow_server).search_runs(
            [e.experiment_id for e in MlflowClient(mlflow_server).search_experiments()]) == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the third node's daemons share its process group
        time.sleep(2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(2)
