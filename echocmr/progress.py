"""Progress of long work, readable on a terminal and in a log file alike.

On a terminal (stderr is a TTY) it is a tqdm bar. Anywhere else — a log file, `kubectl logs`, a
CI console, a pipe — a bar's carriage returns make one huge line, so it prints a plain line
instead, at most every ``interval_s`` seconds and once at the end::

    eval inference: 120/197 videos (61%), 2.4 videos/s, about 32 s left

Nothing else is printed, and a disabled progress prints nothing at all.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, desc="ingest", unit="file") as p: ... p.update(1)``."""

    def __init__(self, total: int | None, *, desc: str, unit: str, enabled: bool = True,
                 initial: int = 0, interval_s: float = 30.0, stream: TextIO | None = None,
                 bar: bool | None = None) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n = initial
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stderr
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._extra = ""
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if enabled and bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             file=self.stream, dynamic_ncols=True, disable=False)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self._extra = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line(now)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.n > self._initial:
            self._line(time.monotonic(), final=True)

    def line(self) -> str:
        """The plain line for the current count (what a log gets)."""
        return self._text(time.monotonic(), final=False)

    def _text(self, now: float, *, final: bool) -> str:
        done = self.n - self._initial
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        parts = [f"{self.n}/{self.total}" if self.total else str(self.n)]
        text = f"{self.desc}: {parts[0]} {self.unit}s"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {rate:.2g} {self.unit}s/s" if rate < 10 else f", {rate:.0f} {self.unit}s/s"
        if final:
            text += f", done in {_duration(elapsed)}"
        elif self.total and rate > 0:
            text += f", about {_duration((self.total - self.n) / rate)} left"
        if self._extra:
            text += f", {self._extra}"
        return text

    def _line(self, now: float, *, final: bool = False) -> None:
        # The stream's own write, not print(): Ray Train patches print() in its workers to log
        # the text as well as print it, which showed every line twice in the driver's output.
        self.stream.write(self._text(now, final=final) + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def quiet_library_bars(stream: TextIO | None = None) -> None:
    """Where stderr is not a terminal, switch off the progress bars libraries draw themselves
    (MLflow's artifact download and upload bars: in a log each becomes one line of hundreds of
    carriage-return updates). Called once by the CLI; a user's own setting wins."""
    import os

    stream = stream if stream is not None else sys.stderr
    if not bool(getattr(stream, "isatty", lambda: False)()):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
