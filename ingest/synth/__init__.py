"""Synthetic echo-CMR cohort: DICOM clips as hospital machines export them, and CMR labels.

``ingest.synth.generate``: ``generate_cohort(out_dir, patients=N, seed=S, workers=W)`` writes the
cohort and returns a summary; ``generate_labels(patients, seed)`` gives the CMR label table alone
(fast, for studying the label model at scale). The generative model is written down in
``docs/synthetic-cohort.md``.

This package file imports nothing (importing ``echocmr.ingest.synth.cli`` for the command line
stays fast); import the modules themselves.
"""
