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
    """CMR rows by patient, for `pair`. Small and picklable: worker processes each get a copy."""

    def __init__(self, table: pd.DataFrame, config: PairingConfig | None = None) -> None:
        self.window_days = (config or PairingConfig()).window_days
        # The table's IDs were numbers: compare without leading zeros (`labels.numeric_patient_ids`).
        self.strip_leading_zeros = bool(table.attrs.get(STRIP_ZEROS_ATTR, False))
        self._by_patient: dict[str, list[tuple[date, int, tuple[float, ...], float | None]]] = {}
        for row_number, row in enumerate(table.itertuples(index=False)):
            field = getattr(row, "field_strength_t", float("nan"))
            field = None if field is None or np.isnan(field) else float(field)
            labels = tuple(float(getattr(row, task)) for task in TASKS)
            self._by_patient.setdefault(str(row.patient_id), []).append(
                (row.cmr_date, row_number, labels, field)
            )
        for rows in self._by_patient.values():
            rows.sort(key=lambda r: (r[0], r[1]))

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._by_patient.values())

    @property
    def n_patients(self) -> int:
        return len(self._by_patient)

    def pair(self, patient_id: str, echo_date: date | None) -> Pairing | None:
        """The nearest CMR of this patient within the window, or None."""
        if echo_date is None:
            return None
        best = None
        patient_id = patient_id.strip()
        if self.strip_leading_zeros:
            patient_id = patient_id.lstrip("0") or ("0" if patient_id else "")
        for cmr_date, row_number, labels, field in self._by_patient.get(patient_id, []):
            gap = (echo_date - cmr_date).days
            if abs(gap) > self.window_days:
                continue
            rank = (abs(gap), cmr_date, row_number)
            if best is None or rank < best[0]:
                best = (rank, Pairing(labels=labels, gap_days=gap, field_strength_t=field,
                                      cmr_row=row_number))
        return None if best is None else best[1]
