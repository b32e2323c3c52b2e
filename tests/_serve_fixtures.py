"""A served model on loopback, in a Python where echocmr is not installed.

`serving_venv` makes a virtual environment with no echocmr at all and the training stack
blocked: the model must bring its own code (``code_paths``) and need only its serving
requirements. The third-party packages come from this interpreter's site-packages through plain
path lines (a plain line is appended to ``sys.path`` without running that directory's ``.pth``
files, so no editable-install finder of echocmr is switched on), and a ``.pth`` import line
installs a finder that refuses `BLOCKED` (Ray, DALI, webdataset, PyAV, the OCR runtime,
scikit-learn): importing one of them there is an ``ImportError``, as on a machine that never
installed them. `ModelServer` runs ``python -m mlflow models serve`` from such a venv.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BLOCKED = ("ray", "nvidia", "webdataset", "av", "rapidocr_onnxruntime", "onnxruntime", "sklearn",
           "matplotlib")

_BLOCKER = '''
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    """Training-stack packages are not installed in a serving-only environment."""
    names = {names!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{{name}} is not installed in this serving-only environment")
        return None
sys.meta_path.insert(0, _Blocked())
'''


def serving_venv(root: Path) -> Path:
    """A venv without echocmr and with `BLOCKED` refused (module docstring); ``bin/python``."""
    venv = root / "serve-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    site_dir = Path(site.stdout.strip())
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    (site_dir / "_base_site_packages.pth").write_text("".join(p + "\n" for p in ours))
    (site_dir / "_serving_only.py").write_text(_BLOCKER.format(names=set(BLOCKED)))
    (site_dir / "_serving_only.pth").write_text("import _serving_only\n")
    uvicorn = venv / "bin" / "uvicorn"  # `mlflow models serve` runs the uvicorn on PATH
    uvicorn.write_text(f"#!{python}\nimport sys\nfrom uvicorn.main import main\nsys.exit(main())\n")
    uvicorn.chmod(0o755)
    return python


def child_env(python: Path, tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ECHOCMR_SERVE_")}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false",
               PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """``python -m mlflow models serve -m MODEL --env-manager local`` on loopback."""

    def __init__(self, python: Path, model: str, *, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"serve-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(python), "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
                 "local", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log()[-4000:]}"
            assert time.monotonic() < deadline, f"no /health: {self.log()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)

    def post(self, body: bytes, timeout: float = 180.0) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        """The whole process group: `mlflow models serve` leaves its uvicorn child running
        when only the parent is signalled."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
