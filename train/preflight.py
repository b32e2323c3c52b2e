"""Checks the training driver runs on a multi-node Ray cluster before any worker starts.

Two settings that work on one machine break a run on several, and late: rank 0 logs to MLflow
and Ray Train writes checkpoints from whichever node their processes land on.

- An MLflow tracking URI that is a local sqlite file (the single-node default
  ``sqlite:///mlflow.db``): the file is on the driver's disk, rank 0 may run elsewhere, and
  sqlite over a network file system is not safe with writers on several hosts. Refused when the
  cluster has more than one alive node: start an MLflow server and pass its URL.
- A ``--storage`` that is a local path not visible from every node: the driver writes a marker
  file with a random token into it, and one task pinned to each other alive node
  (``NodeAffinitySchedulingStrategy``, hard) reads it back. A node that does not find that token
  at that path does not see the driver's directory; the run is refused, naming the nodes.

On one node neither check runs: the single-node defaults stay. What the storage check proves is
visibility at start: a mount that disappears later is Ray Train's failure to report.
"""

from __future__ import annotations

import logging
import os
import uuid

from echocmr.errors import EchocmrError

log = logging.getLogger(__name__)

MARKER_PREFIX = ".echocmr-storage-check-"
READ_TIMEOUT_S = 120.0  # a node that cannot even run a 0-CPU task in this time is reported


class PreflightError(EchocmrError, RuntimeError):
    """A setting that cannot work on this cluster; the message says what to use instead."""


def alive_nodes() -> list[dict]:
    """``ray.nodes()`` entries of the alive nodes of the connected cluster."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def is_local_sqlite(tracking_uri: str) -> bool:
    """True for ``sqlite:///PATH`` (a file on this machine); False for servers and databases."""
    return tracking_uri.startswith("sqlite:")


def check_tracking_uri(tracking_uri: str, nodes: int) -> None:
    """Refuse a local sqlite tracking URI on a cluster of more than one node."""
    if nodes > 1 and is_local_sqlite(tracking_uri):
        raise PreflightError(
            f"the MLflow tracking URI {tracking_uri} is an sqlite file on the driver's machine, "
            f"and this Ray cluster has {nodes} nodes: rank 0 logs to MLflow from whichever node "
            "it runs on, where that file is not (and sqlite is not safe over a network file "
            "system). Start a tracking server every node reaches, e.g. `mlflow server "
            "--backend-store-uri sqlite:///mlflow.db --artifacts-destination s3://BUCKET/mlflow "
            "--host 0.0.0.0 --port 5000` on one host, and pass --tracking-uri http://HOST:5000 "
            "(or set MLFLOW_TRACKING_URI); see docs/train-on-many-nodes.md")


def _read_marker(path: str) -> tuple[str, str | None]:
    """Runs on another node: (that node's id, the marker's text or None if it is not there)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        with open(path) as f:
            return node, f.read()
    except OSError:
        return node, None


def check_storage_visible(storage: str, nodes: list[dict]) -> None:
    """Refuse a local ``storage`` path that some alive node other than the driver's cannot see.

    URIs (``s3://``, ``gs://``) are not checked here: every node reaches them by name. A local
    path is checked by a marker file the driver writes and a task on every other node reads.
    """
    if "://" in storage or len(nodes) < 2:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in nodes if n["NodeID"] != here]
    if not others:
        return
    os.makedirs(storage, exist_ok=True)
    token = uuid.uuid4().hex
    marker = os.path.join(storage, MARKER_PREFIX + token)
    with open(marker, "w") as f:
        f.write(token)
    read = ray.remote(num_cpus=0, max_retries=0)(_read_marker)
    try:
        refs = {n["NodeID"]: read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(marker) for n in others}
        blind = []
        for node, ref in refs.items():
            try:
                ran_on, text = ray.get(ref, timeout=READ_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                ray.cancel(ref, force=True)
                blind.append(f"{_describe(nodes, node)} (no answer in {READ_TIMEOUT_S:.0f} s)")
                continue
            assert ran_on == node, (ran_on, node)  # hard affinity: it ran where it was sent
            if text != token:
                blind.append(_describe(nodes, node))
    finally:
        os.remove(marker)
    if blind:
        raise PreflightError(
            f"--storage {storage} is a local path that {len(blind)} of the cluster's "
            f"{len(nodes)} nodes cannot see (a marker the driver wrote there was not found "
            f"from: {', '.join(blind)}). Ray Train writes checkpoints from the workers' nodes "
            "and restores them on others: pass a directory every node mounts at the same path "
            "(NFS, a shared volume) or a URI, e.g. --storage s3://BUCKET/train_runs; see "
            "docs/train-on-many-nodes.md")
    log.info("--storage %s is visible from all %d nodes", storage, len(nodes))


def _describe(nodes: list[dict], node_id: str) -> str:
    for n in nodes:
        if n["NodeID"] == node_id:
            return f"node {node_id[:12]} at {n.get('NodeManagerAddress', '?')}"
    return f"node {node_id[:12]}"


def check_cluster(*, tracking_uri: str, storage: str) -> int:
    """Run both checks against the connected Ray cluster; return its number of alive nodes."""
    nodes = alive_nodes()
    check_tracking_uri(tracking_uri, len(nodes))
    check_storage_visible(storage, nodes)
    return len(nodes)
