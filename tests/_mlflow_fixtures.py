"""A real ``mlflow server`` on loopback for tests (sqlite backend, artifacts under tmp).

`start_mlflow_server` starts one and returns at once (the server starts while Ray does); call
``.wait()`` on the URL before use. conftest's ``mlflow_server`` fixture is one per module.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class ServerURL(str):
    """The server's URL (a str) that knows its artifact store and waits until it answers."""

    def __new__(cls, url: str, *, artifacts: str, proc: subprocess.Popen, log: str):
        obj = super().__new__(cls, url)
        obj.artifacts, obj.proc, obj.log = artifacts, proc, log
        return obj

    def wait(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {open(self.log).read()}")
            try:
                with urllib.request.urlopen(f"{self}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server did not answer /health within {timeout} s")
            time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(tmp_path: Path, *, admin_password: str | None = None) -> ServerURL:
    """``mlflow server`` on loopback, sqlite backend, artifacts under ``tmp_path``; stop it with
    ``url.proc.terminate()``. With ``admin_password``, MLflow's basic auth is on (``--app-name
    basic-auth``, user store under ``tmp_path``, user ``admin`` with that password), as the
    shipped cluster configs run it."""
    import os

    port = _free_port()
    log_path = tmp_path / "server.log"
    args, env = [], None
    if admin_password is not None:
        (tmp_path / "auth.ini").write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{tmp_path}/auth.db\nadmin_username = admin\n")
        args = ["--app-name", "basic-auth"]
        env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth.ini"),
                   MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY="test-server-csrf-key")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # this interpreter's mlflow (a script's shebang may be another's)
            [sys.executable, "-m", "mlflow", "server", *args,
             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
             "--artifacts-destination", str(tmp_path / "server-artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    return ServerURL(f"http://127.0.0.1:{port}", artifacts=str(tmp_path / "server-artifacts"),
                     proc=proc, log=str(log_path))


