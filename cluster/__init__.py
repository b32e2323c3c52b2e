"""Ray clusters for echocmr.

- ``cluster.configs``: the shipped KubeRay (RayCluster, RayJob, PVC) and ``ray up`` definitions;
  load, validate, render.
- ``cluster.local``: a multi-node Ray cluster on this machine (``echocmr cluster local/stop``).
- ``cluster.submit``: run a command on any cluster through the Ray Jobs API (``cluster submit``).

The end-to-end demo is ``echocmr.demo``.
"""
