"""Ray cluster definitions shipped with echocmr: load, check and render them.

The YAML files in ``cluster/configs/`` are package data, so a platform team gets them from an
installed package (``echocmr cluster configs --out DIR``) as well as from the repository:

- ``raycluster.yaml``: a KubeRay ``RayCluster`` (head + GPU worker group, shared claim at /data,
  ``MLFLOW_TRACKING_URI`` from a Secret);
- ``rayjob.yaml``: a KubeRay ``RayJob`` that runs ``echocmr train`` on such a cluster;
- ``pvc.yaml``: the ReadWriteMany claim both mount;
- ``ray-up.yaml``: the Ray cluster launcher's YAML for cloud VMs (head + GPU worker node type).

``validate_config`` checks the fields our commands rely on, not the whole Kubernetes schema: GPU
limits on the worker group, the MLflow variable on every Ray container, the data volume mounted
where the train entrypoint reads shards and writes checkpoints, and the launcher's setup commands.
It runs on the shipped files in the tests and on a team's edited copies via
``echocmr cluster validate FILE...``, so an edit that breaks a path our commands use is caught
before ``kubectl apply``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from echocmr.errors import EchocmrError

CONFIG_FILES = {
    "raycluster": "raycluster.yaml",
    "rayjob": "rayjob.yaml",
    "pvc": "pvc.yaml",
    "ray-up": "ray-up.yaml",
}
IMAGE_PLACEHOLDER = "registry.example.com/echocmr:0.1.0"
MLFLOW_ENV = "MLFLOW_TRACKING_URI"
# Credentials MLflow's client sends to a server with auth (basic auth, or a bearer token).
MLFLOW_CREDENTIALS = (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
                      ("MLFLOW_TRACKING_TOKEN",))
RAY_AUTH_MODES = ("token", "disabled")  # `disabled` only as a written-down choice
GPU_RESOURCE = "nvidia.com/gpu"
DATA_VOLUME = "echocmr-data"
DATA_MOUNT = "/data"


class ClusterConfigError(EchocmrError, ValueError):
    """A cluster definition lacks a field that echocmr's commands rely on."""


def config_text(name: str) -> str:
    """The shipped YAML text of config ``name`` (a key of ``CONFIG_FILES``)."""
    if name not in CONFIG_FILES:
        raise ClusterConfigError(f"unknown config {name!r}; choose one of {sorted(CONFIG_FILES)}")
    return (resources.files("echocmr.cluster") / "configs" / CONFIG_FILES[name]).read_text()


def load_config(name: str) -> dict[str, Any]:
    """The shipped config ``name`` parsed into a dict."""
    return yaml.safe_load(config_text(name))


def kind_of(doc: dict[str, Any]) -> str:
    """Which of our config kinds ``doc`` is: a key of ``CONFIG_FILES``."""
    kind = doc.get("kind")
    if kind == "RayCluster":
        return "raycluster"
    if kind == "RayJob":
        return "rayjob"
    if kind == "PersistentVolumeClaim":
        return "pvc"
    if "available_node_types" in doc and "provider" in doc:
        return "ray-up"
    raise ClusterConfigError(
        "not a RayCluster, RayJob, PersistentVolumeClaim or `ray up` cluster YAML "
        f"(kind={kind!r}, keys={sorted(doc)[:8]})"
    )


# --------------------------------------------------------------------------------------------
# Walking KubeRay specs


def pod_specs(cluster_spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) for the head group and every worker group of a RayCluster spec."""
    head = cluster_spec.get("headGroupSpec") or {}
    yield "head", (head.get("template") or {}).get("spec") or {}
    for group in cluster_spec.get("workerGroupSpecs") or []:
        yield group.get("groupName", "?"), (group.get("template") or {}).get("spec") or {}


def ray_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The Ray container of a pod: KubeRay runs Ray in the first container."""
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ClusterConfigError("a Ray pod template has no containers")
    return containers[0]


def worker_gpus(cluster_spec: dict[str, Any]) -> int:
    """GPUs the worker groups bring at their ``replicas`` count (limits x replicas)."""
    total = 0
    for group in cluster_spec.get("workerGroupSpecs") or []:
        pod = (group.get("template") or {}).get("spec") or {}
        limits = (ray_container(pod).get("resources") or {}).get("limits") or {}
        total += int(limits.get(GPU_RESOURCE, 0)) * int(group.get("replicas", 0))
    return total


def mount_paths(pod_spec: dict[str, Any]) -> dict[str, str]:
    """mountPath -> PVC claim name for every claim the Ray container mounts."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec.get("volumes") or []
        if "persistentVolumeClaim" in v
    }
    return {
        m["mountPath"]: claims[m["name"]]
        for m in ray_container(pod_spec).get("volumeMounts") or []
        if m.get("name") in claims
    }


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env") or []}


def entrypoint_argv(rayjob: dict[str, Any]) -> list[str]:
    """The RayJob's entrypoint split like a shell would."""
    return shlex.split(rayjob.get("spec", {}).get("entrypoint", ""))


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in argv, else None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------------------------
# Checks


def _check_ray_auth(spec: dict[str, Any], where: str) -> list[str]:
    """Ray token auth must be on, or off in writing: a cluster without it runs anyone's code."""
    mode = (spec.get("authOptions") or {}).get("mode")
    if mode is None:
        return [f"{where}: no authOptions: add `authOptions: {{mode: token}}` (KubeRay >= 1.5.1; "
                "`mode: disabled` only to run without Ray auth on purpose)"]
    if mode not in RAY_AUTH_MODES:
        return [f"{where}: authOptions.mode {mode!r} is not one of {list(RAY_AUTH_MODES)}"]
    return []


def has_mlflow_credentials(container: dict[str, Any]) -> bool:
    names = env_names(container)
    return any(all(n in names for n in group) for group in MLFLOW_CREDENTIALS)


def _check_cluster_spec(spec: dict[str, Any], where: str) -> list[str]:
    problems = _check_ray_auth(spec, where)
    groups = list(pod_specs(spec))
    if not spec.get("workerGroupSpecs"):
        problems.append(f"{where}: no workerGroupSpecs")
    for name, pod in groups:
        try:
            container = ray_container(pod)
        except ClusterConfigError as exc:
            problems.append(f"{where}/{name}: {exc}")
            continue
        if not container.get("image"):
            problems.append(f"{where}/{name}: container has no image")
        if MLFLOW_ENV not in env_names(container):
            problems.append(f"{where}/{name}: env {MLFLOW_ENV} is not set (runs would go nowhere)")
        elif not has_mlflow_credentials(container):
            problems.append(
                f"{where}/{name}: no MLflow credentials (MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN): the tracking server must "
                "not be open to anyone who reaches it")
        if DATA_MOUNT not in mount_paths(pod):
            problems.append(f"{where}/{name}: no PersistentVolumeClaim mounted at {DATA_MOUNT}")
    if worker_gpus(spec) < 1:
        problems.append(f"{where}: no worker group has a {GPU_RESOURCE} limit")
    return problems


def _check_rayjob(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec")
    if cluster is None:
        return ["RayJob: spec.rayClusterSpec is missing (clusterSelector jobs are not checked)"]
    problems = _check_cluster_spec(cluster, "RayJob.rayClusterSpec")
    argv = entrypoint_argv(doc)
    if argv[:2] != ["echocmr", "train"]:
        return [*problems, f"RayJob: entrypoint should start with `echocmr train`, got {argv[:2]}"]
    for flag in ("--shards", "--storage"):
        path = flag_value(argv, flag)
        if path is None:
            problems.append(f"RayJob: entrypoint has no {flag}")
            continue
        if "://" in path:
            # --shards: each worker stages the set onto its node's disk (shards.stage);
            # --storage: Ray Train writes checkpoints to object stores itself.
            continue
        for name, pod in pod_specs(cluster):
            if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mount_paths(pod)):
                problems.append(f"RayJob: {flag} {path} is not under a claim mounted in {name}")
    workers = int(flag_value(argv, "--workers") or 1)
    if "--gpu" in argv and workers > worker_gpus(cluster):
        problems.append(
            f"RayJob: --workers {workers} needs {workers} GPUs but the worker groups have "
            f"{worker_gpus(cluster)} at their replicas count"
        )
    return problems


def _check_ray_up(doc: dict[str, Any]) -> list[str]:
    problems = []
    types = doc.get("available_node_types") or {}
    if doc.get("head_node_type") not in types:
        problems.append("ray up: head_node_type is not one of available_node_types")
    if not any((t.get("resources") or {}).get("GPU", 0) >= 1 for t in types.values()):
        problems.append("ray up: no node type declares a GPU resource")
    mounts = doc.get("file_mounts") or {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in doc.get(key) or [] if "ray start" in c]
        if not starts or not all(any(f"RAY_AUTH_MODE={m}" in c for m in RAY_AUTH_MODES)
                                 for c in starts):
            problems.append(f"ray up: {key} must start Ray with RAY_AUTH_MODE=token (or =disabled "
                            "to run without Ray auth on purpose)")
        elif any("RAY_AUTH_MODE=token" in c for c in starts) and not (
                any(r.rstrip("/").endswith(".ray/auth_token") for r in mounts)
                or any("RAY_AUTH_TOKEN" in c.replace("RAY_AUTH_TOKEN_PATH", "") for c in starts)):
            problems.append(f"ray up: {key} uses token auth but no node gets the token "
                            "(file_mounts ~/.ray/auth_token, or RAY_AUTH_TOKEN)")
    repo_targets = [remote for remote, local in mounts.items() if local in (".", "./")]
    if not repo_targets:
        problems.append("ray up: file_mounts does not sync the repository ('.') to the nodes")
    setup = doc.get("setup_commands") or []
    installs = [c for c in setup if "pip install" in c and "-c constraints.txt" in c]
    if not installs:
        problems.append("ray up: setup_commands never run `pip install -c constraints.txt .`")
    elif repo_targets and not any(f"cd {t}" in c for c in installs for t in repo_targets):
        problems.append("ray up: the pip install does not run in the synced repository")
    if not any(MLFLOW_ENV in c for c in setup):
        problems.append(f"ray up: setup_commands never export {MLFLOW_ENV}")
    run_options = " ".join((doc.get("docker") or {}).get("run_options") or [])
    if doc.get("docker") and f"{DATA_MOUNT}:{DATA_MOUNT}" not in run_options:
        problems.append(
            f"ray up: the container does not mount the shared {DATA_MOUNT} (docker.run_options "
            f"--volume {DATA_MOUNT}:{DATA_MOUNT}); shards and checkpoints live there"
        )
    return problems


def _check_pvc(doc: dict[str, Any]) -> list[str]:
    modes = (doc.get("spec") or {}).get("accessModes") or []
    if "ReadWriteMany" not in modes:
        return ["PersistentVolumeClaim: every pod mounts it, so it must be ReadWriteMany"]
    return []


def validate_config(doc: dict[str, Any]) -> list[str]:
    """Problems with ``doc`` as one of our cluster configs; an empty list means it is usable."""
    kind = kind_of(doc)
    if kind == "raycluster":
        if doc.get("apiVersion") != "ray.io/v1":
            return ["RayCluster: apiVersion should be ray.io/v1 (KubeRay >= 1.0)"]
        return _check_cluster_spec(doc.get("spec") or {}, "RayCluster")
    if kind == "rayjob":
        if doc.get("apiVersion") != "ray.io/v1":
            return ["RayJob: apiVersion should be ray.io/v1 (KubeRay >= 1.0)"]
        return _check_rayjob(doc)
    if kind == "pvc":
        return _check_pvc(doc)
    return _check_ray_up(doc)


def validate_file(path: str | Path) -> list[str]:
    """Problems with a cluster config file on disk (see ``validate_config``)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        return [f"{path}: not valid YAML: {exc}"]
    if not isinstance(doc, dict):
        return [f"{path}: expected one YAML mapping"]
    try:
        return [f"{path}: {p}" for p in validate_config(doc)]
    except ClusterConfigError as exc:
        return [f"{path}: {exc}"]


def render_configs(out_dir: str | Path, *, image: str | None = None) -> list[Path]:
    """Write every shipped config to ``out_dir``, with ``image`` in place of the placeholder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in CONFIG_FILES.items():
        text = config_text(name)
        if image:
            text = text.replace(IMAGE_PLACEHOLDER, image)
        path = out / filename
        path.write_text(text)
        written.append(path)
    return written
