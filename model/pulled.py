"""The directory ``echocmr models pull`` writes, as readers find it (docs/pull-a-model.md).

``checkpoint.pt`` (the `model.checkpoint` layout), ``mlflow_model/`` (the registered MLflow model
as downloaded), ``stats.json`` (the training run's shard statistics, when it logged them) and
``echocmr_model.json`` (name, version, aliases, run id, val AUCs, data digest, source).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from echocmr.shards.format import STATS_FILE

MODEL_INFO_FILE = "echocmr_model.json"
MLFLOW_SUBDIR = "mlflow_model"


def read_model_info(model_dir: str | os.PathLike) -> dict | None:
    """``echocmr_model.json`` of a pulled directory, or None for anything else."""
    path = Path(model_dir) / MODEL_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_model_stats(model_dir: str | os.PathLike) -> dict | None:
    """``stats.json`` of a pulled directory (or a checkpoint dir that has one), else None."""
    path = Path(model_dir) / STATS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
