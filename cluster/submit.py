"""Submit a command to any Ray cluster through the Ray Jobs API and follow it to the end.

    echocmr cluster submit -- echocmr train --shards /data/shards --workers 4 --gpu \
        --tracking-uri http://mlflow:5000 --storage s3://bucket/runs
    echocmr cluster submit --address http://head:8265 --env MLFLOW_TRACKING_URI=... -- CMD ...

The command runs as the job's driver on the head node, with the head's installation (the image on
Kubernetes, the setup commands of `ray up`, this venv for `cluster local`). Its logs stream here
until the job ends, and the exit status is the job's: 0 when it succeeded, the driver's exit code
(or 1) when it failed. Ctrl-C detaches and leaves the job running; it prints how to stop it.

Where the cluster is, first match wins: ``--address``, ``RAY_API_SERVER_ADDRESS``, ``RAY_ADDRESS``,
then the cluster ``echocmr cluster local`` recorded. An address is the dashboard's
``http://HOST:8265`` (the Jobs API) or a GCS ``HOST:6379`` (Ray looks the dashboard up).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from echocmr.cluster.local import STATE_FILE, LocalClusterState, default_state_dir
from echocmr.errors import EchocmrError

_ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class SubmitError(EchocmrError, RuntimeError):
    """The job could not be submitted (no cluster, bad address, Jobs API missing)."""


@dataclass(kw_only=True)
class SubmitConfig:
    """One job submission."""

    entrypoint: list[str]  # the command, one argv item per element
    address: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # runtime_env env_vars of the job
    cwd: str | None = None  # directory on the head to run in; default: here, for a local cluster
    submission_id: str | None = None
    wait: bool = True  # follow logs until the job ends
    state_dir: Path = field(default_factory=default_state_dir)

    def __post_init__(self) -> None:
        if not self.entrypoint:
            raise ValueError("nothing to submit: give the command after `--`")


@dataclass(kw_only=True)
class JobResult:
    submission_id: str
    status: str  # SUCCEEDED, FAILED, STOPPED, or PENDING/RUNNING when not waited for
    exit_code: int
    address: str


def resolve_address(config: SubmitConfig) -> tuple[str, bool]:
    """(Jobs API address, whether it is our recorded local cluster)."""
    if config.address:
        return config.address, False
    for name in _ADDRESS_ENVS:
        if os.environ.get(name):
            return os.environ[name], False
    state = LocalClusterState.load(config.state_dir)
    if state is not None:
        return state.dashboard_url, True
    raise SubmitError(
        "no Ray cluster to submit to: pass --address http://HEAD:8265, set RAY_ADDRESS, or start "
        f"one with `echocmr cluster local` (nothing recorded in {config.state_dir / STATE_FILE})"
    )


@contextlib.contextmanager
def _without_address_env():
    """Ray's SDK lets RAY_ADDRESS override an explicit address; ours must win, so hide it."""
    saved = {k: os.environ.pop(k) for k in _ADDRESS_ENVS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_client(address: str):
    """A JobSubmissionClient for ``address``, with errors that say what to do."""
    from ray.job_submission import JobSubmissionClient

    with _without_address_env():
        try:
            return JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SubmitError(
                f"cannot reach the Ray Jobs API at {address}: {exc}\n"
                "The head node must run the dashboard (ray[default] installed, dashboard enabled);"
                " for a remote cluster forward its port 8265 (kubectl port-forward / ray dashboard)."
            ) from exc


def build_entrypoint(argv: list[str], cwd: str | None) -> str:
    command = shlex.join(argv)
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


async def _follow(client, submission_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        out.write(chunk)
        out.flush()


def wait_for_job(client, submission_id: str, *, out: TextIO, poll_s: float = 1.0) -> str:
    """Stream the job's logs to ``out`` until it ends; return its final status name."""
    from ray.job_submission import JobStatus

    with contextlib.suppress(Exception):  # a dropped log stream must not lose the status
        asyncio.run(_follow(client, submission_id, out))
    while True:
        status = client.get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status.value
        time.sleep(poll_s)


def submit_job(config: SubmitConfig, *, log=print, out: TextIO = sys.stdout) -> JobResult:
    """Submit ``config.entrypoint`` and, if ``config.wait``, follow it until it ends."""
    address, local = resolve_address(config)
    cwd = config.cwd if config.cwd is not None else (os.getcwd() if local else None)
    client = make_client(address)
    runtime_env = {"env_vars": dict(config.env)} if config.env else None
    submission_id = client.submit_job(
        entrypoint=build_entrypoint(config.entrypoint, cwd),
        submission_id=config.submission_id,
        runtime_env=runtime_env,
    )
    log(f"submitted job {submission_id} to {address}")
    if not config.wait:
        return JobResult(submission_id=submission_id, status="PENDING", exit_code=0, address=address)
    try:
        status = wait_for_job(client, submission_id, out=out)
    except KeyboardInterrupt:
        log(
            f"detached; job {submission_id} keeps running. Stop it with: "
            f"ray job stop {submission_id} --address {address}"
        )
        raise
    exit_code = 0
    if status != "SUCCEEDED":
        info = client.get_job_info(submission_id)
        exit_code = int(getattr(info, "driver_exit_code", None) or 1)
        if info.message:
            log(f"job {submission_id} {status}: {info.message.splitlines()[0]}")
    log(f"job {submission_id} {status}")
    return JobResult(submission_id=submission_id, status=status, exit_code=exit_code, address=address)
