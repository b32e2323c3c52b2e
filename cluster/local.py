"""A multi-node Ray cluster on this one machine: a head and N-1 worker nodes as separate processes.

Why: multi-node behaviour (workers on different raylets, a node dying, jobs submitted through the
Jobs API) should be provable on a laptop or a CI runner before anyone books a GPU cluster.
``ray.cluster_utils.Cluster`` does this inside one Python process for tests; this module does it
with real ``ray start`` processes that outlive the command, like a real cluster:

    echocmr cluster local --nodes 2 --cpus-per-node 1    # prints the address
    echocmr cluster submit -- echocmr train --shards demo_out/shards --workers 2 \
        --tracking-uri http://127.0.0.1:5000    # several nodes: an `mlflow server`, not sqlite
    echocmr cluster stop

Every node gets ``--num-cpus C``, its own custom resource ``node_<i>`` (so work can be pinned to a
node) and its own ports; everything listens on 127.0.0.1 only. The head runs the dashboard, which
serves the Ray Jobs API. The cluster uses a private Ray temp dir, so a ``ray.init()`` elsewhere on
the machine never joins it by accident, and the state (address, process groups, temp dir) goes to
``<state dir>/cluster.json``.

``stop`` ends exactly the processes this module started: the process group of each ``ray start``
(every Ray daemon of that node inherits it) plus their descendants (Ray's worker processes start
their own sessions). It never runs ``ray stop``, which kills every Ray process of the user on the
machine, other people's clusters included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from echocmr.cluster.auth import DISABLED, TOKEN, RayAuthError, http_auth_headers, node_env
from echocmr.errors import EchocmrError

STATE_FILE = "cluster.json"
STATE_DIR_ENV = "ECHOCMR_STATE_DIR"
NODE_IP = "127.0.0.1"


def default_state_dir() -> Path:
    """Where ``cluster local`` records its state: $ECHOCMR_STATE_DIR, else ~/.echocmr."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".echocmr")


@dataclass(kw_only=True)
class LocalClusterConfig:
    """What ``start_local_cluster`` starts."""

    nodes: int = 2
    cpus_per_node: int = 1
    gpus_per_node: int = 0  # one machine's GPUs would be counted once per node otherwise
    object_store_mb: int = 256
    port: int = 0  # GCS port of the head; 0 picks a free one
    dashboard_port: int = 0  # Jobs API / dashboard; 0 picks a free one
    state_dir: Path = field(default_factory=default_state_dir)
    start_timeout_s: float = 90.0
    auth: bool = True  # Ray token auth on every node; off only when asked (--no-auth)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"--nodes must be at least 1 (the head), got {self.nodes}")
        if self.cpus_per_node < 1:
            raise ValueError(f"--cpus-per-node must be at least 1, got {self.cpus_per_node}")
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.object_store_mb < 80:
            raise ValueError("--object-store-mb must be at least 80 (Ray's minimum is 75 MiB)")
        self.state_dir = Path(self.state_dir)


@dataclass(kw_only=True)
class NodeRecord:
    """One ``ray start`` of the local cluster."""

    index: int
    resource: str  # the node's custom resource, e.g. "node_1"
    pgid: int  # process group of the `ray start` and every daemon it left running


@dataclass(kw_only=True)
class LocalClusterState:
    """What ``cluster stop`` and ``cluster submit`` need to find the cluster again."""

    address: str  # GCS address, for ray.init(address=...) and `ray start --address`
    dashboard_url: str  # Jobs API address, for `cluster submit` and JobSubmissionClient
    temp_dir: str  # private Ray temp dir: sessions, logs, sockets
    nodes: list[NodeRecord]
    cpus_per_node: int
    python: str  # the interpreter whose `python` and `echocmr` jobs run with
    started_at: float
    auth: str = TOKEN  # RAY_AUTH_MODE of every node: "token" or "disabled"
    token: str = ""  # where the nodes read the token (a file path or $RAY_AUTH_TOKEN)

    def save(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> LocalClusterState | None:
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["nodes"] = [NodeRecord(**n) for n in raw["nodes"]]
        return cls(**raw)


def recorded_auth_mode(address: str | None, state_dir: Path | None = None) -> str | None:
    """The Ray auth mode of the running cluster `cluster local` recorded, when ``address`` (or
    ``$RAY_ADDRESS``) reaches it: its GCS or Jobs API address, or ``auto``; else None."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    try:
        state = LocalClusterState.load(state_dir or default_state_dir())
    except (OSError, ValueError, TypeError):  # an unreadable state file is not ours to judge
        return None
    if state is None or address not in ("auto", state.address, state.dashboard_url):
        return None
    return state.auth if cluster_pids(state) else None


def resolve_auto_address(address: str | None, state_dir: Path | None = None) -> str | None:
    """``auto`` as the GCS address of the running cluster `cluster local` recorded, when there
    is one; any other address (and ``auto`` without such a cluster) as given.

    Ray's own ``auto`` is the last ``ray start`` in Ray's default temp dir, else any GCS process
    it finds on the machine. `cluster local` keeps its nodes' files in a private dir, so on a
    machine where another Ray runs (another user's, a test's, a notebook's), Ray's ``auto``
    would connect to that one: with token auth it is refused (``InvalidAuthToken``), without it
    the work would run on a stranger's cluster.
    """
    if address != "auto":
        return address
    try:
        state = LocalClusterState.load(state_dir or default_state_dir())
    except (OSError, ValueError, TypeError):  # an unreadable state file is not ours to judge
        return address
    if state is None or not cluster_pids(state):
        return address
    return state.address


class LocalClusterError(EchocmrError, RuntimeError):
    """The local cluster could not be started or found."""


# --------------------------------------------------------------------------------------------
# Processes (Linux /proc; the only platform Ray's multi-node tooling supports well)


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, uid) of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(rest[1]), int(rest[2]), uid)
    return table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cluster_pids(state: LocalClusterState) -> set[int]:
    """Live processes of this cluster: its nodes' process groups and all their descendants.

    A process group counts only if one of its processes names our private temp dir on its command
    line (gcs_server and raylet do), so a recycled group id never makes us kill a stranger.
    """
    table = _proc_table()
    me = os.getuid()
    roots = set()
    for node in state.nodes:
        group = [p for p, (_, pgid, uid) in table.items() if pgid == node.pgid and uid == me]
        if any(state.temp_dir in _cmdline(p) for p in group):
            roots.update(group)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, uid) in table.items():
        if uid == me:
            children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found or pid == os.getpid():
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] != "Z":  # a zombie is dead, only not yet reaped
            alive.add(pid)
    return alive


def _terminate(pids: set[int], grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _alive(pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(pids):
            return


# --------------------------------------------------------------------------------------------
# Start / stop


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise LocalClusterError("the `ray` command is not installed; pip install 'ray[default]'")
    return found


def _node_env(auth: bool) -> dict[str, str]:
    """Environment of the Ray daemons, inherited by every job and worker they start.

    The interpreter's bin dir goes first on PATH so that a submitted `python ...` or `echocmr ...`
    runs with this installation, as it would in a container image of a real cluster. Every node
    gets the same auth settings (`echocmr.cluster.auth.node_env`): Ray 2.60 turns token auth on
    for a head that finds a token but not for a worker joining it, so the mode is always set.
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return node_env(env, auth=auth)


def _node_args(config: LocalClusterConfig, index: int, temp_dir: str) -> list[str]:
    return [
        "--node-ip-address", NODE_IP,
        "--num-cpus", str(config.cpus_per_node),
        "--num-gpus", str(config.gpus_per_node),
        "--resources", json.dumps({f"node_{index}": 1}),
        "--object-store-memory", str(config.object_store_mb * 1024 * 1024),
        "--temp-dir", temp_dir,
        # Ports each node must not share with the others on this machine.
        "--node-manager-port", str(_free_port()),
        "--object-manager-port", str(_free_port()),
        "--dashboard-agent-listen-port", str(_free_port()),
        "--dashboard-agent-grpc-port", str(_free_port()),
        "--runtime-env-agent-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()),
        "--min-worker-port", "0",
        "--max-worker-port", "0",
        "--disable-usage-stats",
        "--log-style", "record",
    ]  # fmt: skip


def _ray_start(args: list[str], env: dict[str, str]) -> int:
    """Run one `ray start` in a new session; return its process group id."""
    proc = subprocess.Popen(
        [_ray_executable(), "start", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out, _ = proc.communicate()
    if proc.returncode != 0:
        # Daemons it already spawned share its new process group: end them, nothing else.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise LocalClusterError(f"`ray start` failed (exit {proc.returncode}):\n{out[-3000:]}")
    return proc.pid


def wait_for_nodes(dashboard_url: str, count: int, timeout_s: float, *, auth: bool = True) -> int:
    """Block until ``count`` nodes are ALIVE according to the cluster's state API.

    With ``auth`` the requests carry the nodes' token (this process may have started without
    one: `cluster local` writes it when it is missing)."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    headers = {"Content-Type": "application/json", **(http_auth_headers() if auth else {})}
    options = ListApiOptions(filters=[("state", "=", "ALIVE")])
    deadline = time.monotonic() + timeout_s
    alive, error = 0, None
    while time.monotonic() < deadline:
        try:
            client = StateApiClient(address=dashboard_url, headers=headers)
            nodes = client.list(StateResource.NODES, options=options,
                                raise_on_missing_output=False)
            alive, error = len(nodes), None
            if alive >= count:
                return alive
        except Exception as exc:  # the dashboard may still be starting
            error = exc
        time.sleep(1.0)
    raise LocalClusterError(
        f"only {alive} of {count} nodes came up within {timeout_s:.0f} s"
        + (f" (last error: {error})" if error else "")
    )


def start_local_cluster(config: LocalClusterConfig, log=print) -> LocalClusterState:
    """Start the head and ``config.nodes - 1`` workers, wait until all are alive, save the state."""
    existing = LocalClusterState.load(config.state_dir)
    if existing is not None and cluster_pids(existing):
        raise LocalClusterError(
            f"a local cluster is already running at {existing.address} "
            f"(state in {config.state_dir / STATE_FILE}); run `echocmr cluster stop` first"
        )
    try:
        env = _node_env(config.auth)  # before anything starts: a bad token source stops us here
    except RayAuthError as exc:
        raise LocalClusterError(str(exc)) from exc
    # Short and private: Ray puts Unix sockets under it (107-byte path limit).
    temp_dir = tempfile.mkdtemp(prefix="echocmr-ray-", dir="/tmp")
    port = config.port or _free_port()
    dashboard_port = config.dashboard_port or _free_port()
    state = LocalClusterState(
        address=f"{NODE_IP}:{port}",
        dashboard_url=f"http://{NODE_IP}:{dashboard_port}",
        temp_dir=temp_dir,
        nodes=[],
        cpus_per_node=config.cpus_per_node,
        python=sys.executable,
        started_at=time.time(),
        auth=TOKEN if config.auth else DISABLED,
        token=(env.get("RAY_AUTH_TOKEN_PATH") or "$RAY_AUTH_TOKEN") if config.auth else "",
    )
    try:
        log(f"starting head node (node_0, {config.cpus_per_node} CPU) on {state.address}")
        head_args = [
            "--head",
            "--port", str(port),
            "--include-dashboard", "true",
            "--dashboard-host", NODE_IP,
            "--dashboard-port", str(dashboard_port),
            "--ray-client-server-port", str(_free_port()),
        ]  # fmt: skip
        pgid = _ray_start(head_args + _node_args(config, 0, temp_dir), env)
        state.nodes.append(NodeRecord(index=0, resource="node_0", pgid=pgid))
        state.save(config.state_dir)  # from here on, `cluster stop` can clean up
        for i in range(1, config.nodes):
            log(f"starting worker node {i} (node_{i}, {config.cpus_per_node} CPU)")
            worker_args = ["--address", state.address, "--include-log-monitor", "false"]
            pgid = _ray_start(worker_args + _node_args(config, i, temp_dir), env)
            state.nodes.append(NodeRecord(index=i, resource=f"node_{i}", pgid=pgid))
            state.save(config.state_dir)
        alive = wait_for_nodes(state.dashboard_url, config.nodes, config.start_timeout_s,
                               auth=config.auth)
        log(f"{alive} nodes alive")
    except BaseException:
        stop_local_cluster(config.state_dir, log=lambda _msg: None, state=state)
        raise
    return state


def stop_local_cluster(
    state_dir: str | Path | None = None,
    *,
    log=print,
    grace_s: float = 2.0,  # gcs_server and raylet ignore SIGTERM for longer; no need to wait
    state: LocalClusterState | None = None,
) -> int:
    """Stop the local cluster recorded in ``state_dir``; return how many processes it ended."""
    state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
    state = state or LocalClusterState.load(state_dir)
    if state is None:
        log(f"no local cluster recorded in {state_dir / STATE_FILE}")
        return 0
    pids = cluster_pids(state)
    _terminate(pids, grace_s)
    left = _alive(pids)
    if left:
        raise LocalClusterError(f"processes {sorted(left)} of the local cluster did not stop")
    shutil.rmtree(state.temp_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    log(f"stopped {len(pids)} processes of the local cluster at {state.address}")
    return len(pids)
