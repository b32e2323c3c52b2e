"""An exclusive lock on an output directory, so two jobs never write one shard set at once.

Two ingests (or an ingest and a reshard) into the same ``--out`` would interleave their cache
files and shards and leave a set that verifies but mixes two runs. The lock is an advisory
``flock`` on ``OUT/.echocmr.lock``: the kernel drops it when the holder exits, however it exits,
so a crashed job never leaves a stale lock and a re-run can take over at once (a finished job
removes the file; a killed one leaves it, unlocked, for the next holder). The file keeps
who holds it (command, pid, host, start time; never a path from the input) for the error a
second job gets.

``flock`` works on local file systems; on NFS it depends on the server, which is one more
reason ingest writes locally (docs/operations.md).

An output that is an ``s3://`` prefix has no flock: `exclusive_url_output` holds a *lease*
there instead, an object ``PREFIX/.echocmr.lock`` created only if absent (S3's conditional write,
``If-None-Match: *``) and renewed by a background thread every ``lease_s / 10`` seconds with
``If-Match`` on its own ETag, so the renewal fails the moment anyone else replaced it. A second job
finds it and refuses, naming the holder and how long ago the lease was renewed. A holder that
died stops renewing: once the lease is older than ``lease_s`` (by the server's clock, the
object's LastModified), the next job takes it over, again with ``If-Match`` on the stale ETag, so
of two jobs that find the same stale lease exactly one wins. A lease held by a process of this
host that no longer exists is taken over at once (the usual case: the same machine re-running a
killed job). A holder whose lease was taken over (it stalled for longer than ``lease_s``) learns
so at its next renewal and fails when its ``with`` block ends (the command exits with an error
that says another job may have written there too).
Other URL schemes have no conditional writes in fsspec: there the job warns and runs unlocked.

Writers that must not run twice refuse at once (the default). Jobs that share one output and
simply have to take turns, such as several workers staging one shard set onto a node's disk
(`shards.stage`), pass ``wait_s`` and wait for the holder instead.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from echocmr.errors import EchocmrError

LOCK_FILE = ".echocmr.lock"
_POLL_S = 0.2  # how often a waiting job retries the lock
LEASE_S = 600.0  # an object-store lease not renewed for this long is taken to be abandoned

log = logging.getLogger(__name__)


class OutputLocked(EchocmrError, RuntimeError):
    """Another live process holds the directory's lock."""


@contextmanager
def exclusive_output(directory: str, command: str, *,
                     wait_s: float | None = None) -> Iterator[None]:
    """Hold ``directory``'s lock for the ``with`` block.

    ``wait_s=None`` (the default) raises `OutputLocked` at once if another job holds it; a number
    waits up to that many seconds for the holder to finish (``math.inf``: as long as it takes)
    and then raises `OutputLocked`.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    fd = _acquire(path, directory, wait_s)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid(),
                                  "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        yield
    finally:
        # Removed while still held, so the finished output holds no lock file; a job that
        # opened it meanwhile sees the file is gone once it gets the lock, and retries.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the flock


def _acquire(path: str, directory: str, wait_s: float | None = None) -> int:
    # Polled rather than a blocking flock: a blocking call could not time out, and polling
    # keeps the inode check below (a holder that finishes removes the file) on every try.
    deadline = None if wait_s is None else time.monotonic() + wait_s
    waiting = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if deadline is not None and time.monotonic() < deadline:
                if not waiting:
                    log.info("waiting for the lock on %s (held by %s)", directory, holder)
                    waiting = True
                time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))
                continue
            waited = f" after waiting {wait_s:g} s" if deadline is not None else ""
            raise OutputLocked(
                f"{directory} is being written by another job ({holder}){waited}; wait for it "
                "to finish, or write to another directory"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # the holder removed this file as it finished: lock the new one


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    return _describe(info)


# -- object stores: a lease -----------------------------------------------------------------


class _Lease:
    """The lease object of one holder (see the module docstring)."""

    def __init__(self, fs, path: str, prefix: str, command: str, lease_s: float) -> None:
        self.fs, self.path, self.prefix, self.lease_s = fs, path, prefix, lease_s
        self.holder = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "lease_s": lease_s,
                       "token": os.urandom(8).hex(), "renewals": 0}
        self.etag: str | None = None
        self.lost: str | None = None  # why the lease was lost, once it was

    def acquire(self) -> None:
        self.body = json.dumps(self.holder).encode()
        for _ in range(5):  # a lost race for a stale lease is retried, a live holder is not
            try:
                self.etag = _etag(self.fs.pipe_file(self.path, self.body, mode="create"))
                return
            except FileExistsError:
                pass
            try:
                info = self.fs.info(self.path, refresh=True)
                holder = json.loads(self.fs.cat_file(self.path).decode() or "{}")
            except FileNotFoundError:
                continue  # released meanwhile: create it
            age = time.time() - info["LastModified"].timestamp()
            dead = holder.get("host") == socket.gethostname() and \
                not _pid_alive(int(holder.get("pid", -1)))
            if not dead and age <= float(holder.get("lease_s", self.lease_s)):
                raise OutputLocked(
                    f"{self.prefix} is being written by another job ({_describe(holder)}; lease "
                    f"renewed {age:.0f} s ago); wait for it to finish, or write to another "
                    f"prefix. If that job is dead, its lease expires "
                    f"{float(holder.get('lease_s', self.lease_s)) - age:.0f} s from now, or "
                    f"delete {self.path}")
            try:
                self.etag = _etag(self.fs.pipe_file(self.path, self.body,
                                                    IfMatch=info["ETag"]))
            except OSError:
                continue  # another job took it over first, or it was released: look again
            log.warning("took over the lock on %s from %s (%s)", self.prefix,
                        _describe(holder), "its process is gone" if dead else
                        f"lease not renewed for {age:.0f} s")
            return
        raise OutputLocked(f"{self.prefix}: could not take the lock after 5 tries; another "
                           "job keeps taking it")

    def renew(self) -> bool:
        """Renew the lease; False (and ``lost`` set) when someone else holds it now."""
        self.holder["renewals"] += 1
        try:
            self.etag = _etag(self.fs.pipe_file(self.path, json.dumps(self.holder).encode(),
                                                IfMatch=self.etag))
            return True
        except FileNotFoundError:
            self.lost = "the lock object was deleted"
        except OSError as exc:
            if _precondition_failed(exc):
                self.lost = "another job took the lease over (this one stalled longer than " \
                            f"the {self.lease_s:g} s lease)"
            else:  # the store is unreachable for a moment: try again at the next renewal
                log.warning("could not renew the lock on %s: %s", self.prefix, exc)
                return True
        return False

    def release(self) -> None:
        try:
            if self.lost is None and self.fs.info(self.path, refresh=True)["ETag"] == self.etag:
                self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass


@contextmanager
def exclusive_url_output(prefix: str, command: str, *,
                         lease_s: float = LEASE_S) -> Iterator[None]:
    """Hold a lease on the URL prefix ``prefix`` for the ``with`` block (module docstring).

    Raises `OutputLocked` when another job holds it, and on exit when the lease was lost while
    the block ran (the block's output must then not be trusted: another job wrote there too).
    """
    import threading

    from fsspec.core import url_to_fs

    fs, root = url_to_fs(str(prefix))
    if "s3" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        log.warning("%s: no lock on %s:// prefixes (no conditional writes); run one job per "
                    "prefix", prefix, str(prefix).split("://", 1)[0])
        yield
        return
    lease = _Lease(fs, f"{root.rstrip('/')}/{LOCK_FILE}", str(prefix), command, lease_s)
    lease.acquire()
    stop = threading.Event()

    def renew_until_stopped() -> None:
        while not stop.wait(lease_s / 10):
            if not lease.renew():
                log.error("lost the lock on %s: %s", prefix, lease.lost)
                return

    renewer = threading.Thread(target=renew_until_stopped, name="echocmr-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        lease.release()
    if lease.lost is not None:
        raise OutputLocked(f"{prefix}: lost the lock while writing ({lease.lost}); another job "
                           "may have written there too: check the set (`echocmr shards verify`) "
                           "or write it again")


def _etag(response) -> str | None:
    return response.get("ETag") if isinstance(response, dict) else None


def _precondition_failed(exc: OSError) -> bool:
    import errno

    return isinstance(exc, FileExistsError) or exc.errno == errno.EINVAL or \
        "PreconditionFailed" in str(exc) or "412" in str(exc)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict) -> str:
    if not info:
        return "holder unknown"
    return (f"echocmr {info.get('command', '?')}, pid {info.get('pid', '?')} on "
            f"{info.get('host', '?')}, since {info.get('started', '?')}")
