"""Training on a two-node Ray cluster, and surviving the loss of a node.

`ray.cluster_utils.Cluster` starts a head and a worker node (1 CPU each, custom resources
``node_0`` / ``node_1``) in this process's machine; `train.loop.run_training` connects to it as it
would to any cluster. One run shows both multi-node facts:

1. the 2 Ray Train workers are placed on both nodes (read from the placement groups Ray Train
   reserves for its worker group, one bundle per worker);
2. killing the worker node after the first checkpoint fails the worker group; Ray Train
   (``FailureConfig(max_failures)``) restarts it once a replacement node joins, as KubeRay or the
   autoscaler would provide, and the run finishes from the last checkpoint, not from scratch.

The run uses the train package's tiny config and shards (plumbing, not learning) and logs to a
real ``mlflow server`` on loopback: a local sqlite file is refused on several nodes. ~60-80 s.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from echocmr.cluster.inprocess import temporary_cluster

from _train_fixtures import make_tiny_shards, tiny_config

pytestmark = pytest.mark.timeout(400)

EPOCHS = 3


@pytest.fixture
def two_nodes():
    """A head and one worker node; Ray's files in a private temp dir so that no other
    `ray.init()` on this machine can find and join this cluster."""
    # A restart waits this long for the worker group's resources before it tries again.
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30"}
    with temporary_cluster([{"num_cpus": 1, "resources": {"node_0": 1}},
                            {"num_cpus": 1, "resources": {"node_1": 1}}], env=env) as c:
        yield c.cluster, c.nodes[1]


def _worker_group_placements() -> list[list[str]]:
    """Node ids of the bundles of every worker-group placement group, oldest first."""
    import ray.util

    groups = []
    for info in ray.util.placement_group_table().values():
        nodes = [n for _, n in sorted(info["bundles_to_node_id"].items())]
        if len(info["bundles"]) == 2 and nodes:  # our worker groups have one bundle per worker
            groups.append(nodes)
    return groups


def _registered_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint Ray Train has registered for the run (what a restart restores)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, json.JSONDecodeError):  # not written yet, or being replaced
        return None
    return latest["checkpoint_dir_name"] if latest else None


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_two_node_training_survives_losing_a_node(two_nodes, mlflow_server, tmp_path):
    import ray

    from echocmr.train.config import TrainConfig
    from echocmr.train.loop import run_training

    cluster, worker = two_nodes
    shards = make_tiny_shards(str(tmp_path / "shards"))
    config = TrainConfig.from_dict(
        tiny_config(epochs=EPOCHS, workers=2, cpus_per_worker=1, max_failures=2,
                    run_name="multinode", storage=str(tmp_path / "runs"))
    )
    # Several nodes: a tracking server, not an sqlite file (which `train.preflight` refuses).
    tracking = mlflow_server.wait()
    box: dict = {}

    def train() -> None:
        try:
            box["outcome"] = run_training(config, shards, tracking_uri=tracking)
        except BaseException as exc:  # surfaced by the main thread
            box["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    t0 = time.monotonic()
    thread.start()
    run_dir = Path(config.storage) / config.run_name
    # Both workers running, one per node, then the first checkpoint on shared storage.
    first = _wait_for(lambda: [g for g in _worker_group_placements() if all(g)], 180,
                      "the worker group to be placed")[0]
    head_id = cluster.head_node.node_id
    assert set(first) == {head_id, worker.node_id}  # spread over both nodes
    print(f"[test] worker group placed at {time.monotonic() - t0:.1f} s", flush=True)
    # A checkpoint counts once the controller has collected every rank's report of it and
    # recorded it in the run's snapshot (its files on disk alone are not enough): kill the node
    # only after that, else the restart rightly starts from scratch.
    registered = _wait_for(lambda: _registered_checkpoint(run_dir) or "error" in box, 180,
                           "a registered checkpoint")
    print(f"[test] removing node at {time.monotonic() - t0:.1f} s", flush=True)
    assert "error" not in box, box.get("error")

    cluster.remove_node(worker)  # the node dies: its raylet and both its workers' processes
    replacement = cluster.add_node(num_cpus=1, resources={"node_1": 1})  # e.g. a new pod

    # The restarted group is placed on the head and the new node, not on the dead one.
    second = _wait_for(
        lambda: [g for g in _worker_group_placements() if replacement.node_id in g and all(g)]
        or not thread.is_alive(), 240, "the worker group to restart")
    print(f"[test] restarted group placed at {time.monotonic() - t0:.1f} s", flush=True)
    thread.join(timeout=300)
    print(f"[test] training returned at {time.monotonic() - t0:.1f} s", flush=True)
    assert not thread.is_alive(), "training did not finish after the node was replaced"
    if "error" in box:
        raise box["error"]
    outcome = box["outcome"]
    metrics = outcome.last_metrics
    assert metrics["epoch"] == EPOCHS - 1
    # The restart restored the registered checkpoint (or a later one), not epoch 0.
    assert metrics["resumed_at_epoch"] >= int(registered.split("_")[1]) + 1, registered
    assert outcome.model_uri

    assert second is not True, "the worker group never ran on the replacement node"
    assert set(second[0]) == {head_id, replacement.node_id}  # spread again, on the new node
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    # Every epoch's checkpoint exists once: the restart went on from the last one.
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == [
        f"epoch_{e:04d}" for e in range(EPOCHS)
    ]
