"""Synthetic echo-CMR cohort: DICOM clips as hospital machines export them, and CMR labels.

``generate_cohort(out_dir, patients=N, seed=S, workers=W)`` writes the cohort and returns a
summary; ``generate_labels(patients, seed)`` gives the CMR label table alone (fast, for studying
the label model at scale). The generative model is written down in ``docs/synthetic-cohort.md``.

This module imports nothing heavy (pydicom, pandas, pyarrow load on first call), so the command
line stays fast to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


__all__ = ["generate_cohort", "generate_labels"]


def __getattr__(name: str) -> Any:
    """``generate_cohort`` is loaded on first use (PEP 562), so importing this package stays cheap;
    its signature and documentation live in ``ingest.synth.generate``."""
    if name == "generate_cohort":
        from echocmr.ingest.synth.generate import generate_cohort

        return generate_cohort
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate_labels(patients: int, seed: int = 0) -> pd.DataFrame:
    """The CMR label table of a cohort without rendering any DICOM (the rows ``generate_cohort``
    writes to ``cmr_labels.parquet`` for the same patients and seed)."""
    from echocmr.ingest.synth.cohort import CohortConfig, plan_cohort
    from echocmr.ingest.synth.generate import labels_table

    return labels_table(plan_cohort(CohortConfig(patients=patients, seed=seed,
                                                 problem_files=False)))
