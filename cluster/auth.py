"""Ray token authentication: one token for every Ray node and client echocmr starts.

Ray (2.52 and later) protects its control plane, the GCS, the raylets, the dashboard and its
Jobs API, with one static bearer token when ``RAY_AUTH_MODE=token``. Without it, anyone who
reaches a Ray port runs any code as the cluster's user. Ray 2.60 turns token auth on by default
for a plain local ``ray.init()`` (it writes ``~/.ray/auth_token``) and for a client that finds a
token and connects with ``address="auto"``, but not for a worker node joining a head or for a
client given an explicit address; a cluster and a client in different modes fail late and
obscurely (``OwnerDiedError``, ``InvalidAuthToken``). echocmr therefore says the mode out loud:

* ``echocmr cluster local`` starts every node with ``RAY_AUTH_MODE=token`` and the token Ray's
  own tools find (`ensure_token`: ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``,
  else ``~/.ray/auth_token``, written with a fresh 256-bit token when missing). Turning it off
  is an explicit choice (``--no-auth``), never the default.
* every ``echocmr`` command (`configure_client`, called once by ``echocmr.cli.main``) uses token
  auth whenever a token is available and the user has not set ``RAY_AUTH_MODE``, whatever the
  address: ``ray.init``, ``ray.train`` and the Jobs API client then send the token.
  ``RAY_AUTH_MODE=disabled`` is the user's explicit way to reach a cluster that runs without
  auth.

Token sources and their order are Ray's (``ray._raylet.AuthenticationTokenLoader``); this module
only reads them, so no Ray import is needed to decide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from echocmr.errors import EchocmrError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN = "token"
DISABLED = "disabled"


class RayAuthError(EchocmrError, RuntimeError):
    """Token authentication is asked for but cannot be set up (unreadable token file, bad mode)."""


def default_token_path() -> Path:
    """Ray's default token file, ``~/.ray/auth_token``."""
    return Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class TokenSource:
    """Where the token comes from: ``env`` ($RAY_AUTH_TOKEN), or a file (``path``)."""

    kind: str  # "env", "path" ($RAY_AUTH_TOKEN_PATH) or "default" (~/.ray/auth_token)
    path: Path | None = None

    def describe(self) -> str:
        if self.kind == "env":
            return f"${TOKEN_ENV}"
        label = f"${TOKEN_PATH_ENV}" if self.kind == "path" else "Ray's default token file"
        return f"{self.path} ({label})"


def _readable_token(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def find_token() -> TokenSource | None:
    """The token a Ray process started now would use, in Ray's order; None when there is none.

    A ``$RAY_AUTH_TOKEN_PATH`` that names no readable, non-empty file is an error, as it is to
    Ray (which aborts rather than fall back to the default file).
    """
    if os.environ.get(TOKEN_ENV, "").strip():
        return TokenSource(kind="env")
    named = os.environ.get(TOKEN_PATH_ENV)
    if named:
        path = Path(named).expanduser()
        if not _readable_token(path):
            raise RayAuthError(
                f"{TOKEN_PATH_ENV}={named} names no readable, non-empty token file; write the "
                f"cluster's token there or unset {TOKEN_PATH_ENV}"
            )
        return TokenSource(kind="path", path=path)
    path = default_token_path()
    return TokenSource(kind="default", path=path) if _readable_token(path) else None


def _write_new_token(path: Path) -> None:
    """Write a fresh 256-bit token (Ray's own format: 64 hex digits) to ``path``, readable by the
    user only; a file that appeared meanwhile (another process won the race) is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def read_token(source: TokenSource | None = None) -> str:
    """The token itself (from ``source``, default `find_token`); RayAuthError when there is none."""
    source = source or find_token()
    if source is None:
        raise RayAuthError(
            f"no Ray auth token: set {TOKEN_ENV}, or {TOKEN_PATH_ENV} to a file holding it, or "
            f"put it in {default_token_path()}"
        )
    if source.kind == "env":
        return os.environ[TOKEN_ENV].strip()
    return source.path.read_text().strip()


def http_auth_headers() -> dict[str, str]:
    """The header Ray's dashboard and Jobs API take the token in (``Authorization: Bearer``)."""
    return {"Authorization": f"Bearer {read_token()}"}


def ensure_token() -> TokenSource:
    """The token the cluster's nodes will use: the one Ray finds, else a new one written to
    ``$RAY_AUTH_TOKEN_PATH`` (when set) or ``~/.ray/auth_token``."""
    named = os.environ.get(TOKEN_PATH_ENV)
    if named and not os.environ.get(TOKEN_ENV, "").strip():
        path = Path(named).expanduser()
        if not path.exists():
            _write_new_token(path)
    found = find_token()
    if found is not None:
        return found
    _write_new_token(default_token_path())
    found = find_token()
    if found is None:  # written but unreadable: a HOME we cannot write to
        raise RayAuthError(f"could not write a Ray auth token to {default_token_path()}")
    return found


def requested_mode() -> str | None:
    """``$RAY_AUTH_MODE`` as the user set it (lower case), or None; refuses an unknown mode."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is None or mode == "":
        return None
    mode = mode.strip().lower()
    if mode not in (TOKEN, DISABLED):
        raise RayAuthError(f"{AUTH_MODE_ENV}={mode!r} is not a Ray auth mode; use token or disabled")
    return mode


def node_env(env: dict[str, str], *, auth: bool) -> dict[str, str]:
    """``env`` with the auth settings every node of a cluster must share (returns a new dict).

    With ``auth`` the nodes run ``RAY_AUTH_MODE=token`` and get the token from the same place
    (`ensure_token`; a file is passed as ``RAY_AUTH_TOKEN_PATH`` so a node does not depend on
    its ``HOME``). Without, ``RAY_AUTH_MODE=disabled``, and no token variable reaches them.
    """
    env = dict(env)
    if not auth:
        env[AUTH_MODE_ENV] = DISABLED
        env.pop(TOKEN_ENV, None)
        env.pop(TOKEN_PATH_ENV, None)
        return env
    source = ensure_token()
    env[AUTH_MODE_ENV] = TOKEN
    if source.kind != "env":
        env[TOKEN_PATH_ENV] = str(source.path)
    return env


def configure_client(cluster_mode: str | None = None) -> str | None:
    """Make this process a token-auth Ray client when a token is available; return the mode.

    An explicit ``RAY_AUTH_MODE`` is the user's choice and is kept. ``cluster_mode`` is the mode
    of a cluster this command will reach, when it was recorded (``echocmr cluster local
    --no-auth`` records ``disabled``; `echocmr.cluster.local.recorded_auth_mode`): a cluster
    started without auth on purpose is reached without it. Otherwise, with a token available
    (`find_token`), ``RAY_AUTH_MODE=token`` is set in this process's environment, read by Ray
    when it first loads its config, and inherited by the processes it starts. Without a token
    nothing is set: a new local Ray then turns token auth on and writes a token itself (Ray's
    default), and a cluster that wants a token refuses the connection.
    """
    mode = requested_mode()
    if mode is not None:
        return mode
    if cluster_mode == DISABLED:
        os.environ[AUTH_MODE_ENV] = DISABLED
        reload_ray_auth()
        return DISABLED
    if find_token() is None:
        return None
    os.environ[AUTH_MODE_ENV] = TOKEN
    reload_ray_auth()
    return TOKEN


def reload_ray_auth() -> None:
    """Make a Ray already loaded in this process see the auth settings now in ``os.environ``.

    Ray reads ``RAY_AUTH_MODE`` into its config and caches the token on first use; a process
    that changes either afterwards must reload both (config first: a core-worker thread that
    reloads the token meanwhile then sees the new mode). No-op before Ray is imported.
    """
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
