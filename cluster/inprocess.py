"""A throwaway multi-node Ray cluster started from this process, for tests and benchmarks.

``ray.cluster_utils.Cluster`` starts a head and further nodes (real raylets, real object stores)
on this machine; `temporary_cluster` wraps it with what every caller here needs and used to write
out by hand:

* Ray's files go to a fresh, short temp dir (``RAY_TMPDIR``): Unix socket paths have a ~100-byte
  limit, and a private dir means no other ``ray.init()`` on the machine finds and joins this
  cluster by accident;
* Ray token auth on, as for any cluster of ours (`echocmr.cluster.auth.node_env`: the user's
  token from ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, written when
  missing, as a plain ``ray.init()`` does), for the cluster's processes and this one; ``auth=False``
  turns it off for one cluster, for a caller that must prove something about a cluster without
  it. Usage stats off;
* extra environment variables the nodes must inherit (an S3 endpoint, a ``PYTHONPATH`` for test
  hooks), set before the first node starts;
* on exit, the driver disconnected, the nodes shut down, the temp dir removed and every
  environment variable it set put back as it was, also when the body raised.

For a cluster that outlives the command (``ray start`` processes, the Jobs API), see
`echocmr.cluster.local`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from echocmr.cluster.auth import TOKEN_ENV, TOKEN_PATH_ENV, node_env, reload_ray_auth


@dataclass
class TemporaryCluster:
    """What `temporary_cluster` yields."""

    cluster: Any  # ray.cluster_utils.Cluster
    nodes: list[Any] = field(default_factory=list)  # the node handles, head first
    temp_dir: str = ""

    @property
    def address(self) -> str:
        return self.cluster.address


@contextlib.contextmanager
def temporary_cluster(
    nodes: Sequence[Mapping[str, Any]] = ({"num_cpus": 1}, {"num_cpus": 1}),
    *,
    connect: bool = True,
    env: Mapping[str, str] | None = None,
    init_args: Mapping[str, Any] | None = None,
    prefix: str = "ecmr-",
    auth: bool = True,
) -> Iterator[TemporaryCluster]:
    """Start ``len(nodes)`` Ray nodes (``nodes[0]`` is the head; each mapping is passed to
    ``Cluster``'s node arguments: ``num_cpus``, ``resources``, ...), wait until all are up and,
    with ``connect``, ``ray.init`` this process to it (``init_args`` go to ``ray.init``)."""
    if not nodes:
        raise ValueError("a cluster needs at least a head node")
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Unix socket paths
    auth_env = node_env({}, auth=auth)  # RAY_AUTH_MODE, and the token's file when it is one
    settings = {"RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0", **auth_env, **(env or {})}
    saved = {k: os.environ.get(k) for k in (*settings, TOKEN_ENV, TOKEN_PATH_ENV)}
    if not auth:
        for k in (TOKEN_ENV, TOKEN_PATH_ENV):
            os.environ.pop(k, None)
    os.environ.update(settings)
    reload_ray_auth()
    cluster = None
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"include_dashboard": False, **nodes[0]})
        handles = [cluster.head_node] + [cluster.add_node(**dict(args)) for args in nodes[1:]]
        cluster.wait_for_nodes()
        if connect:
            ray.init(address=cluster.address, **dict(init_args or {}))
        yield TemporaryCluster(cluster=cluster, nodes=handles, temp_dir=temp)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reload_ray_auth()
