"""A tiny untrained echocmr model for the eval tests: saved as a checkpoint or registered in MLflow.

Weights are random (seeded): these tests check plumbing and parity with the training pipeline,
not learning. `make_checkpoint` writes the `model.checkpoint` format; `register` logs it with
`model.publish.log_model` and registers it with `model.registry.register_model`, as
``echocmr train --register`` does.
"""

from __future__ import annotations

import torch

from echocmr.model.checkpoint import save_checkpoint
from echocmr.model.contract import InputSpec
from echocmr.model.network import R2Plus1D
from echocmr.model.publish import log_model
from echocmr.model.registry import register_model
from echocmr.train.config import TrainConfig

TINY = {"model": {"width": 4, "layers": [1, 1, 1, 1]},
        "data": {"frames": 8, "period": 2, "size": 32, "augment": {"enabled": False}}}


def tiny_state(stats: dict, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = TrainConfig.from_dict(TINY)
    model = R2Plus1D(config.model)
    spec = InputSpec.build(config.data, stats)
    return {"model": model.state_dict(), "config": config.to_dict(), "input_spec": spec.to_dict(),
            "epoch": 0, "metrics": {"val_auc_wma": 0.61}}


def make_checkpoint(directory: str, stats: dict, seed: int = 0) -> str:
    save_checkpoint(directory, tiny_state(stats, seed))
    return directory


def register(tracking_uri: str, stats: dict, *, name: str = "echo", digest: str = "d" * 64,
             val_mean_auc: float = 0.6) -> tuple[str, str]:
    """Log and register the tiny model; returns (run_id, model_uri)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("echocmr")
    exp_id = exp.experiment_id if exp else client.create_experiment("echocmr")
    run_id = client.create_run(exp_id, run_name="tiny").info.run_id
    client.log_dict(run_id, stats, "stats.json")
    client.set_tag(run_id, "data_digest", digest)
    uri = log_model(tiny_state(stats), tracking_uri=tracking_uri, run_id=run_id)
    register_model(uri, name, tracking_uri=tracking_uri, val_mean_auc=val_mean_auc,
                   val_aucs={"wma": 0.7, "lge": 0.55, "t1": None, "t2": None, "ecv": 0.5},
                   data_digest=digest, run_id=run_id)
    return run_id, uri


class LocalMlflowServer:
    """``mlflow server`` on loopback with a sqlite backend and proxied artifacts, which a test
    can stop (``stop``) to check what still works without it."""

    def __init__(self, root) -> None:
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(root, "server.log")
        exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
                 "--artifacts-destination", os.path.join(root, "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180.0) -> str:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {open(self.log).read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
