"""eval package: inference over shards, study-level metrics with honest CIs, reports, predict.

Modules: `infer` (DALI decode + windows + model over a split), `aggregate` (clip -> video ->
study), `metrics` (AUC, patient bootstrap and DeLong CIs, calibration), `signal` (permutation
test and verdict), `summary` (per-task results and breakdowns), `outputs` and `report` (files),
`evaluate` (clip table -> every output), `job` (``echocmr eval``), `tracking` (MLflow),
`predict` (``echocmr predict``), `registry` (``echocmr models``), `cli`. See docs/evaluation.md.
"""
