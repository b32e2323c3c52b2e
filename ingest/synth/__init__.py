"""Synthetic echo-CMR cohort: DICOM clips as hospital machines export them, and CMR labels.

``generate_cohort(out_dir, patients=N, seed=S, workers=W)`` writes the cohort and returns a
summary; ``generate_labels(patients, seed)`` gives the CMR label table alone (fast, for studying
the label model at scale). The generative model is written down in ``docs/synthetic-cohort.md``.

This module imports nothing heavy (pydicom, pandas, pyarrow load on first call), so the command
line stays fast to start.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ingest.synth.cohort import CohortConfig
    from ingest.synth.phantom import PhantomConfig

__all__ = ["generate_cohort", "generate_labels"]


def generate_cohort(
    out_dir: str | os.PathLike,
    *,
    patients: int,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    config: CohortConfig | None = None,
    phantom: PhantomConfig | None = None,
) -> dict[str, Any]:
    """Write a synthetic cohort into ``out_dir``; return counts, bytes and seconds.

    ``workers`` defaults to every core (1 renders in this process). See
    ``ingest.synth.generate.generate_cohort`` for the details.
    """
    from ingest.synth.generate import generate_cohort as _generate

    return _generate(out_dir, patients=patients, seed=seed, workers=workers,
                     overwrite=overwrite, progress=progress, config=config, phantom=phantom)


def generate_labels(patients: int, seed: int = 0) -> pd.DataFrame:
    """The CMR label table of a cohort without rendering any DICOM (the rows ``generate_cohort``
    writes to ``cmr_labels.parquet`` for the same patients and seed)."""
    from ingest.synth.cohort import CohortConfig, plan_cohort
    from ingest.synth.generate import labels_table

    return labels_table(plan_cohort(CohortConfig(patients=patients, seed=seed,
                                                 problem_files=False)))
