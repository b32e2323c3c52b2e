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

LOCK_FILE = ".echocmr.lock"
_POLL_S = 0.2  # how often a waiting job retries the lock

log = logging.getLogger(__name__)


class OutputLocked(RuntimeError):
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
    if not info:
        return "holder unknown"
    return (f"echocmr {info.get('command', '?')}, pid {info.get('pid', '?')} on "
            f"{info.get('host', '?')}, since {info.get('started', '?')}")
