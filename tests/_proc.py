"""Run a command as its own process group, so a timeout stops everything it started.

`subprocess.run(..., timeout=...)` kills only the direct child: an ``echocmr demo`` killed at its
timeout left its step (``echocmr views train``) running for minutes, on the cores the next tests
needed. Here the command starts a new session and, at the timeout, the whole group is killed
before `subprocess.TimeoutExpired` is raised as usual.
"""

from __future__ import annotations

import os
import signal
import subprocess


def run_group(argv, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` with ``capture_output=True, text=True``; at ``timeout`` seconds the
    command's whole process group is killed and `subprocess.TimeoutExpired` raised."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
