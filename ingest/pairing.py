"""Pair each echo study with the nearest CMR of the same patient within a window of days.

The study in the source paper paired echo and CMR within 30 days; labels measured by CMR describe
the myocardium at the time of the CMR, so a pair far apart in time carries a stale label. Rules:

* candidates: CMR rows of the same patient ID with ``|echo date - CMR date| <= window_days``;
* the nearest wins; ties go to the earlier CMR, then to the earlier row of the table;
* an echo study with no candidate is not kept (reason ``no_cmr_within_window`` in the report).

The gap is stored as ``echo_cmr_gap_days = echo date - CMR date`` (negative: echo before CMR),
the only date-derived value that leaves ingest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

from echocmr.ingest.config import PairingConfig
from echocmr.shards.format import TASKS

if TYPE_CHECKING:  # pandas is not needed by worker processes that only call `pair`
    import pandas as pd

# DataFrame.attrs key `ingest.labels.read_table` sets: compare IDs without leading zeros.
STRIP_ZEROS_ATTR = "strip_leading_zeros"


@dataclass(frozen=True)
class Pairing:
    """The CMR paired with an echo study."""

    labels: tuple[float, ...]  # five labels in task order, NaN unknown
    gap_days: int  # echo minus CMR
    field_strength_t: float | None
    cmr_row: int  # row of the normalised table (for counting, never written out)

    def label_array(self) -> np.ndarray:
        return np.array(self.labels, dtype=np.float32)


class CmrIndex:
    """CMR rows by patient, for `pair`. Picklable: every worker process gets a copy, so the rows
    are held as numpy arrays sorted by (patient, date, row) — the patient IDs as 128-bit BLAKE2b
    digests — ~70 bytes a row instead of a dict of tuples (a table of 10^6 CMRs: ~70 MB per
    worker, not ~400 MB)."""

    def __init__(self, table: pd.DataFrame, config: PairingConfig | None = None) -> None:
        self.window_days = (config or PairingConfig()).window_days
        # The table's IDs were numbers: compare without leading zeros (`labels.numeric_patient_ids`).
        self.strip_leading_zeros = bool(table.attrs.get(STRIP_ZEROS_ATTR, False))
        n = len(table)
        patients = np.array([_patient_digest(str(p)) for p in table["patient_id"]],
                            dtype=f"S{_DIGEST}").reshape(n)
        dates = np.array([d.toordinal() for d in table["cmr_date"]], dtype=np.int32).reshape(n)
        rows = np.arange(n, dtype=np.int64)
        order = np.lexsort((rows, dates, patients))
        self._patients, self._dates, self._rows = patients[order], dates[order], rows[order]
        labels = np.empty((n, len(TASKS)), dtype=np.float64)
        for j, task in enumerate(TASKS):
            labels[:, j] = table[task].to_numpy(dtype=np.float64, na_value=np.nan)
        self._labels = labels[order]
        field = (table["field_strength_t"].to_numpy(dtype=np.float64, na_value=np.nan)
                 if "field_strength_t" in table.columns else np.full(n, np.nan))
        self._field = field[order]
        self._n_patients = len(np.unique(patients))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def n_patients(self) -> int:
        return self._n_patients

    def pair(self, patient_id: str, echo_date: date | None) -> Pairing | None:
        """The nearest CMR of this patient within the window, or None."""
        if echo_date is None:
            return None
        best = None
        patient_id = patient_id.strip()
        if self.strip_leading_zeros:
            patient_id = patient_id.lstrip("0") or ("0" if patient_id else "")
        key = np.array(_patient_digest(patient_id), dtype=f"S{_DIGEST}")
        lo = int(np.searchsorted(self._patients, key, side="left"))
        hi = int(np.searchsorted(self._patients, key, side="right"))
        echo_day = echo_date.toordinal()
        for i in range(lo, hi):  # this patient's rows, by (date, row)
            gap = echo_day - int(self._dates[i])
            if abs(gap) > self.window_days:
                continue
            rank = (abs(gap), int(self._dates[i]), int(self._rows[i]))
            if best is None or rank < best[0]:
                best = (rank, i, gap)
        if best is None:
            return None
        _, i, gap = best
        field = float(self._field[i])
        return Pairing(labels=tuple(float(v) for v in self._labels[i]), gap_days=gap,
                       field_strength_t=None if np.isnan(field) else field,
                       cmr_row=int(self._rows[i]))


_DIGEST = 16


def _patient_digest(patient_id: str) -> bytes:
    return hashlib.blake2b(patient_id.encode("utf-8", "surrogateescape"),
                           digest_size=_DIGEST).digest()
