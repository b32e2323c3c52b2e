"""Check an MLflow tracking store before a command uses it: present, reachable, and ours to use.

MLflow is forgiving in ways that hide mistakes: an ``sqlite:///`` path that names no file becomes
a new empty store (directories included), so ``echocmr models list`` with a typo prints "no
registered models" and exits 0; an ``http://`` server that is down is retried with back-off for
over two minutes before anything is said. ``echocmr.cli.main`` runs `check_tracking_store` once
before a command that uses a store, so these fail in seconds with one line that says what to do:

* a command that **reads** a store (``models ...``, ``predict`` / ``eval`` of a ``models:/`` or
  ``runs:/`` URI) needs an sqlite file that exists; one that **writes** (``train``, ``eval``,
  ``loso``, ``sweep``) may create the file but not the directory it should be in;
* an ``http(s)://`` server must answer one authenticated request within ``timeout_s`` (10 s):
  it must be up, and it must take the credentials MLflow's client sends
  (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for a server run with
  ``mlflow server --app-name basic-auth``, or ``MLFLOW_TRACKING_TOKEN``).

Later calls keep MLflow's own retries, which carry a long run over a short server restart.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from echocmr.errors import EchocmrError

READ = "read"
WRITE = "write"
_SQLITE = "sqlite:///"
# One cheap call every MLflow server answers, behind its auth when auth is on.
_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


class TrackingStoreError(EchocmrError):
    """The MLflow tracking store is missing, unreachable, or refuses us."""


def _where(uri: str) -> str:
    return (f"tracking URI {uri} (from --tracking-uri, else MLFLOW_TRACKING_URI, else "
            "sqlite:///mlflow.db in this directory)")


def _check_sqlite(uri: str, mode: str) -> None:
    path = Path(uri[len(_SQLITE):])
    if mode == READ and not path.is_file():
        raise TrackingStoreError(
            f"no MLflow store at {path}: {_where(uri)}; a mistyped path or the wrong directory?")
    if not path.parent.is_dir():
        raise TrackingStoreError(
            f"the directory of the MLflow store {path} does not exist: {_where(uri)}; create "
            "it, or fix the path")


def _auth_header() -> dict[str, str]:
    """The credentials MLflow's own client would send (its environment variables)."""
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if user and password:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_server(uri: str, timeout_s: float) -> None:
    request = urllib.request.Request(uri.rstrip("/") + _PROBE, headers=_auth_header())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and request.has_header("Authorization"):
            raise TrackingStoreError(
                f"the MLflow server at {uri} refused the credentials in "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                "(HTTP 401): check them") from None
        if exc.code == 401:
            raise TrackingStoreError(
                f"the MLflow server at {uri} wants credentials: set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)") from None
        if exc.code == 403:
            raise TrackingStoreError(
                f"the MLflow server at {uri} refused these credentials (HTTP 403): check "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and the user's "
                "permissions") from None
        raise TrackingStoreError(
            f"{uri} did not answer as an MLflow tracking server (HTTP {exc.code} for "
            f"{_PROBE}): {_where(uri)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingStoreError(
            f"cannot reach the MLflow tracking server at {uri} within {timeout_s:.0f} s "
            f"({reason}): is it running, and is this the right address?") from None


def check_tracking_store(uri: str, mode: str, *, timeout_s: float = 10.0) -> None:
    """Raise `TrackingStoreError` unless the store at ``uri`` can serve a ``mode`` command
    (``"read"`` or ``"write"``). Other schemes (databricks, a plugin's) are left to MLflow."""
    if mode not in (READ, WRITE):
        raise ValueError(f"mode must be {READ!r} or {WRITE!r}, got {mode!r}")
    if uri.startswith(_SQLITE):
        _check_sqlite(uri, mode)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri, timeout_s)
