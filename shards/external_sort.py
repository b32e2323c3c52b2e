"""An external sort of fixed-width numpy records: memory bounded by a run, whatever the count.

The drivers that must order every clip or file of an archive (reshard's plan, ingest's scan)
cannot hold a number per row at 10^7 rows and more. `ExternalSort` takes records (a numpy
structured array with a sortable field ``k``: an unsigned integer, or bytes that compare as the
wanted order, e.g. big-endian numbers side by side), sorts them in runs of at most
``run_rows`` records, spills each run to a local temporary file (``$TMPDIR``) and gives them back
merged, in chunks, in ascending ``k`` (records with equal ``k`` in no promised order; make ``k``
unique where that matters). The merge is a batched k-way merge: each run has a read buffer of
about ``run_rows / runs`` records; the least of the buffers' last keys bounds what can be given
out, so every step gives out everything at or below it (sorted in memory) and refills the
buffers it emptied. Past `MAX_RUNS` runs, those so far are merged into one run file first, so
the open files and the merge's buffers stay bounded. Memory: about two runs' records (the run
being filled or the merge's buffers, plus one chunk), whatever the number of records. Nothing is left on disk after
`close` (a ``with`` block), after the merge has been read to its end, or when the object is
collected after an error.

Fixed-width bytes keys (numpy ``S``) compare as unsigned bytes, with trailing zero bytes treated
as padding: for keys of one width that is the order of the full bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator

import numpy as np

# Records per sorted run (and roughly what the merge holds): a few MB of records.
RUN_ROWS = 1 << 16
# Runs merged at once: past this many, the runs so far are merged into one file first (so the
# open files and the merge's read buffers stay bounded however many records come).
MAX_RUNS = 128


class ExternalSort:
    """Sort records of ``dtype`` (which has a field ``k``) by ``k`` in bounded memory."""

    def __init__(self, dtype: np.dtype, *, run_rows: int | None = None,
                 prefix: str = "echocmr-sort-") -> None:
        self.dtype = np.dtype(dtype)
        if "k" not in (self.dtype.names or ()):
            raise ValueError("ExternalSort records need a sort field named 'k'")
        self.run_rows = int(run_rows or RUN_ROWS)
        self._prefix = prefix
        self._pending: list[np.ndarray] = []
        self._held = 0
        self._runs: list[str] = []
        self._made = 0  # run files made so far (their names)
        self._dir: str | None = None
        self.count = 0

    def __enter__(self) -> ExternalSort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, records: np.ndarray) -> None:
        """Take ``records`` (a copy is kept; the caller may reuse its array)."""
        if records.dtype != self.dtype:
            raise TypeError(f"records of {records.dtype}, expected {self.dtype}")
        if not len(records):
            return
        self._pending.append(records.copy())
        self._held += len(records)
        self.count += len(records)
        if self._held >= self.run_rows:
            self._spill()

    def _spill(self) -> None:
        run = self._sorted_pending()
        if not len(run):
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix=self._prefix)
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        path = os.path.join(self._dir, f"{self._made}.run")
        self._made += 1
        run.tofile(path)
        self._runs.append(path)
        if len(self._runs) >= MAX_RUNS:  # merge them into one run on disk, then go on
            merged = os.path.join(self._dir, f"{self._made}.run")
            self._made += 1
            with open(merged, "wb") as f:
                for chunk in self._merge(self._runs):
                    chunk.tofile(f)
            for old in self._runs:
                os.remove(old)
            self._runs = [merged]

    def _sorted_pending(self) -> np.ndarray:
        run = np.concatenate(self._pending) if self._pending else np.empty(0, self.dtype)
        self._pending, self._held = [], 0
        return run[np.argsort(run["k"], kind="stable")]

    def __iter__(self) -> Iterator[np.ndarray]:
        """The records in ascending ``k``, in chunks (each at most about ``run_rows``); the
        spilled runs are removed as the merge finishes. Call once."""
        if not self._runs:  # everything fits in one run: no file
            run = self._sorted_pending()
            for start in range(0, len(run), self.run_rows):
                yield run[start:start + self.run_rows]
            return
        self._spill()
        try:
            yield from self._merge(self._runs)
        finally:
            self.close()

    def _merge(self, runs: list[str]) -> Iterator[np.ndarray]:
        """The records of the sorted run files ``runs``, merged, in chunks."""
        step = max(1024, self.run_rows // len(runs))  # records read per refill
        files = [open(path, "rb") for path in runs]  # closed below
        try:
            buffers = [np.fromfile(f, self.dtype, count=step) for f in files]
            live = [i for i, b in enumerate(buffers) if len(b)]
            while live:
                frontier = min(buffers[i]["k"][-1] for i in live)
                pieces = []
                for i in live:
                    cut = int(np.searchsorted(buffers[i]["k"], frontier, side="right"))
                    if cut:
                        pieces.append(buffers[i][:cut])
                        buffers[i] = buffers[i][cut:]
                    if not len(buffers[i]):
                        buffers[i] = np.fromfile(files[i], self.dtype, count=step)
                live = [i for i in live if len(buffers[i])]
                out = np.concatenate(pieces)
                yield out[np.argsort(out["k"], kind="stable")]
                del out, pieces
        finally:
            for f in files:
                f.close()

    def close(self) -> None:
        self._pending, self._held = [], 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._runs = []


def be_key(*columns: np.ndarray) -> np.ndarray:
    """Non-negative integer columns side by side as one bytes key per row (each column 8
    big-endian bytes): sorting the keys sorts by the first column, then the second, ...
    (`ExternalSort`'s ``k`` for a composite order)."""
    n = len(columns[0])
    packed = np.empty(n, dtype=[(f"c{i}", ">u8") for i in range(len(columns))])
    for i, column in enumerate(columns):
        packed[f"c{i}"] = column
    return packed.view(f"S{8 * len(columns)}")
