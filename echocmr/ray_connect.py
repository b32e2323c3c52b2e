"""How every command joins Ray: one place for ``ray.init``.

Four commands run on Ray: `echocmr ingest --address`, `echocmr shards verify|reshard --address`,
`echocmr train` and `echocmr eval` (inference with workers). Each connects through `ray_init` or
`ray_session`, so they behave alike:

* an address (``--address``, else ``$RAY_ADDRESS``) is joined as it is;
* no address (train, eval) starts a private local Ray for the command, as ``ray.init()`` does.

A local Ray puts its Unix sockets under its temp dir (``$RAY_TMPDIR``, else ``$TMPDIR`` on
Linux, else ``/tmp``), and a socket path may not be longer than 107 bytes (103 on macOS). A
``$TMPDIR`` of a batch scheduler or a test runner is often long enough to break that, and Ray
then fails half-way through its start with a traceback. Here the path is checked first:

* under a long ``$TMPDIR`` the command's Ray goes to a short per-user directory
  (``/tmp/echocmr-ray-<uid>``, owned by the user; Ray opens its mode as it does
  ``/tmp/ray``) and says so in one log line;
* a ``$RAY_TMPDIR`` the user set and that is too long is refused with a clear error (the user
  chose that directory; we do not move Ray elsewhere behind their back).

Ray is imported only inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any

from echocmr.errors import EchocmrError

log = logging.getLogger(__name__)

# The longest path Ray puts under its temp dir:
# <temp>/ray/session_2026-12-06_13-20-11_123456_<pid>/sockets/plasma_store
_SESSION = "session_2026-12-06_13-20-11_123456_4194304"
_LONGEST_SOCKET = os.path.join("ray", _SESSION, "sockets", "plasma_store")


class RayTempDirError(EchocmrError):
    """``$RAY_TMPDIR`` is too long for Ray's Unix socket paths."""


def socket_path_limit() -> int:
    """The longest Unix socket path this OS takes, in bytes (Ray's own check)."""
    return (104 if sys.platform.startswith("darwin") else 108) - 1


def default_temp_root() -> tuple[str, str]:
    """(where a local Ray would put its files, the variable that chose it)."""
    if os.environ.get("RAY_TMPDIR"):
        return os.environ["RAY_TMPDIR"], "RAY_TMPDIR"
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"], "TMPDIR"
    return "/tmp", ""


def longest_socket_path(root: str) -> int:
    """Bytes in the longest socket path Ray makes under ``root``."""
    return len(os.path.join(os.path.abspath(root), _LONGEST_SOCKET).encode())


def _short_user_dir() -> str:
    """``/tmp/echocmr-ray-<uid>``: made when missing, refused when another user owns it (Ray
    itself then makes its mode 0777, as for ``/tmp/ray``)."""
    path = f"/tmp/echocmr-ray-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RayTempDirError(f"{path} exists and is not a directory of this user; remove it or "
                              "set RAY_TMPDIR to a short directory of your own")
    return path


def local_temp_dir() -> str | None:
    """The ``_temp_dir`` a local Ray must be given, or None when Ray's default is fine."""
    root, source = default_temp_root()
    limit = socket_path_limit()
    if longest_socket_path(root) <= limit:
        return None
    if source == "RAY_TMPDIR":
        raise RayTempDirError(
            f"RAY_TMPDIR is {len(os.path.abspath(root).encode())} bytes long: Ray's socket paths "
            f"under it would be {longest_socket_path(root)} bytes, over the {limit}-byte limit "
            "of Unix sockets; set RAY_TMPDIR to a shorter directory (e.g. /tmp/ray-$USER) or "
            "unset it")
    short = _short_user_dir()
    log.info("Ray's files go to %s: under $TMPDIR (%d bytes) its socket paths would be over "
             "the %d-byte limit (set RAY_TMPDIR to choose another short directory)", short,
             len(os.path.abspath(root).encode()), limit)
    return short


def starts_local(address: str | None) -> bool:
    """Whether ``ray.init(address=...)`` starts a new local Ray rather than joining one."""
    return address in (None, "", "local")


def ray_init(address: str | None = None, **init_args: Any) -> bool:
    """``ray.init`` for a command: joins ``address`` (else ``$RAY_ADDRESS``), or starts a local
    Ray whose socket paths fit. Returns True when it initialised Ray, False when this process
    was already connected (then nothing is changed; the caller must not shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if starts_local(address):
        temp = local_temp_dir()
        if temp is not None:
            init_args.setdefault("_temp_dir", temp)
    ray.init(address=address, **init_args)
    return True


@contextlib.contextmanager
def ray_session(address: str | None, **init_args: Any) -> Iterator[None]:
    """Connected to Ray (`ray_init`) for the block; a Ray this process was already connected to
    is used as it is and left connected."""
    import ray

    init_args = {"include_dashboard": False, "log_to_driver": False, **init_args}
    started = ray_init(address, **init_args)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
