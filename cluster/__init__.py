"""Ray clusters for echocmr, and the end-to-end demo.

- ``cluster.configs``: the shipped KubeRay (RayCluster, RayJob, PVC) and ``ray up`` definitions;
  load, validate, render.
- ``cluster.local``: a multi-node Ray cluster on this machine (``echocmr cluster local/stop``).
- ``cluster.submit``: run a command on any cluster through the Ray Jobs API (``cluster submit``).
- ``cluster.demo``: synth -> ingest -> verify -> train -> eval in one resumable command.
"""
