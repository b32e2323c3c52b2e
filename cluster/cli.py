"""`echocmr cluster ...`: parse, call the cluster package, report.

Nothing heavy is imported here; Ray is imported inside the commands that use it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    cluster = subparsers.add_parser(
        "cluster",
        help="local multi-node Ray, job submission, cluster definitions",
        description="Run echocmr on a Ray cluster: a local multi-node one, or any cluster "
        "reachable through the Ray Jobs API. See docs/train-on-many-nodes.md.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    cluster.set_defaults(func=lambda args: (cluster.print_help(), 2)[1])

    def state_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="where the local cluster's state file lives (default $ECHOCMR_STATE_DIR or "
            "~/.echocmr)",
        )

    local = sub.add_parser(
        "local",
        help="start a head and N-1 worker nodes on this machine",
        description="Start a Ray head and N-1 worker nodes on this machine as separate "
        "processes, each with its own CPUs and a custom resource node_<i>; prints the address.",
    )
    local.add_argument("--nodes", type=int, default=2, help="nodes including the head (2)")
    local.add_argument("--cpus-per-node", type=int, default=1, help="CPUs per node (1)")
    local.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (0)")
    local.add_argument("--object-store-mb", type=int, default=256, help="per node (256)")
    local.add_argument("--port", type=int, default=0, help="head GCS port (free port)")
    local.add_argument("--dashboard-port", type=int, default=0, help="Jobs API port (free port)")
    local.add_argument(
        "--no-auth",
        action="store_true",
        help="run the nodes without Ray token auth (RAY_AUTH_MODE=disabled): anyone who reaches "
        "their ports runs code as you. echocmr commands given this cluster's address (or auto) "
        "follow; other Ray clients need RAY_AUTH_MODE=disabled. Default: token auth with "
        "$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (written when missing)",
    )
    state_dir_arg(local)
    local.set_defaults(func=run_local)

    stop = sub.add_parser("stop", help="stop the cluster `cluster local` started")
    state_dir_arg(stop)
    stop.set_defaults(func=run_stop)

    status = sub.add_parser("status", help="show the local cluster's address and nodes")
    state_dir_arg(status)
    status.set_defaults(func=run_status)

    submit = sub.add_parser(
        "submit",
        help="run a command on a Ray cluster through the Jobs API and stream its logs",
        description="Submit COMMAND (after --) as a Ray job, stream its logs until it ends, and "
        "exit with its status. Address: --address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS, "
        "else the cluster `echocmr cluster local` started.",
    )
    submit.add_argument("--address", default=None, help="http://HEAD:8265 or HEAD:6379")
    submit.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job and all its workers (repeatable)",
    )
    submit.add_argument(
        "--cwd",
        default=None,
        help="directory on the head node to run in (default: the current one for a local "
        "cluster, the head's own for a remote one)",
    )
    submit.add_argument("--submission-id", default=None, help="job id (default: generated)")
    submit.add_argument("--no-wait", action="store_true", help="submit and return")
    state_dir_arg(submit)
    submit.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    submit.set_defaults(func=run_submit)

    configs = sub.add_parser(
        "configs",
        help="write the KubeRay and `ray up` definitions to a directory",
        description="Write raycluster.yaml, rayjob.yaml, pvc.yaml and ray-up.yaml to --out.",
    )
    configs.add_argument("--out", type=Path, required=True, help="directory to write to")
    configs.add_argument("--image", default=None, help="the echocmr image to put in the YAMLs")
    configs.set_defaults(func=run_configs)

    validate = sub.add_parser(
        "validate", help="check edited cluster YAMLs for the fields echocmr relies on"
    )
    validate.add_argument("files", nargs="+", type=Path)
    validate.set_defaults(func=run_validate)


def _state_dir(args) -> Path:
    from echocmr.cluster.local import default_state_dir

    return args.state_dir if args.state_dir is not None else default_state_dir()


def run_local(args) -> int:
    from echocmr.cluster.local import LocalClusterConfig, LocalClusterError, start_local_cluster

    try:
        config = LocalClusterConfig(
            nodes=args.nodes,
            cpus_per_node=args.cpus_per_node,
            gpus_per_node=args.gpus_per_node,
            object_store_mb=args.object_store_mb,
            port=args.port,
            dashboard_port=args.dashboard_port,
            state_dir=_state_dir(args),
            auth=not args.no_auth,
        )
        state = start_local_cluster(config)
    except (ValueError, LocalClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Ray address:  {state.address}")
    print(f"Jobs API:     {state.dashboard_url}")
    print(f"submit with:  echocmr cluster submit -- echocmr train --shards DIR --workers {len(state.nodes)}"
          + (" --tracking-uri http://HOST:5000 (several nodes: an MLflow server, not sqlite)"
             if len(state.nodes) > 1 else ""))
    print(f"or connect:   RAY_ADDRESS={state.address} (ray.init / echocmr train --address)")
    if state.auth == "token":
        print(f"auth:         Ray token auth, token in {state.token} (every echocmr command "
              "and Ray client of this user finds it)")
    else:
        print("auth:         OFF (--no-auth): anyone who reaches these ports runs code as you; "
              "Ray clients other than echocmr's need RAY_AUTH_MODE=disabled")
    print("stop with:    echocmr cluster stop")
    return 0


def run_stop(args) -> int:
    from echocmr.cluster.local import LocalClusterError, stop_local_cluster

    try:
        stop_local_cluster(_state_dir(args))
    except LocalClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_status(args) -> int:
    from echocmr.cluster.local import LocalClusterState, cluster_pids

    state = LocalClusterState.load(_state_dir(args))
    if state is None:
        print("no local cluster recorded")
        return 1
    pids = cluster_pids(state)
    print(f"Ray address: {state.address}")
    print(f"Jobs API:    {state.dashboard_url}")
    print(f"nodes:       {len(state.nodes)} x {state.cpus_per_node} CPU")
    print(f"auth:        {state.auth}" + (f" (token in {state.token})" if state.token else ""))
    print(f"processes:   {len(pids)} alive" if pids else "processes:   none alive (stale state)")
    return 0 if pids else 1


def run_submit(args) -> int:
    from echocmr.cluster.submit import SubmitConfig, SubmitError, submit_job

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --env takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        env[key] = value
    try:
        config = SubmitConfig(
            entrypoint=command,
            address=args.address,
            env=env,
            cwd=args.cwd,
            submission_id=args.submission_id,
            wait=not args.no_wait,
            state_dir=_state_dir(args),
        )
        result = submit_job(config)
    except (ValueError, SubmitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result.exit_code


def run_configs(args) -> int:
    from echocmr.cluster.configs import render_configs

    for path in render_configs(args.out, image=args.image):
        print(path)
    return 0


def run_validate(args) -> int:
    from echocmr.cluster.configs import validate_file

    problems = [p for f in args.files for p in validate_file(f)]
    for p in problems:
        print(p)
    if not problems:
        print(f"{len(args.files)} file(s) OK")
    return 1 if problems else 0
