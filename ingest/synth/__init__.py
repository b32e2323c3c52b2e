"""Synthetic echo-CMR cohort: DICOM clips as hospital machines export them, and CMR labels.

``generate_cohort(out_dir, patients=N, seed=S, workers=W)`` writes the cohort and returns a
summary; ``generate_labels(patients, seed)`` gives the CMR label table alone (fast, for studying
the label model at scale). The generative model is written down in ``docs/synthetic-cohort.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["generate_cohort", "generate_labels"]


def generate_cohort(out_dir, *, patients: int, seed: int = 0, workers: int | None = None,
                    **kwargs):
    """Write a synthetic cohort (see ``ingest.synth.generate.generate_cohort``)."""
    from ingest.synth.generate import generate_cohort as _generate

    return _generate(out_dir, patients=patients, seed=seed, workers=workers, **kwargs)


def generate_labels(patients: int, seed: int = 0) -> pd.DataFrame:
    """The CMR label table of a cohort, without rendering any DICOM (same rows as on disk)."""
    from ingest.synth.cohort import CohortConfig, plan_cohort
    from ingest.synth.generate import labels_table

    return labels_table(plan_cohort(CohortConfig(patients=patients, seed=seed,
                                                 problem_files=False)))
