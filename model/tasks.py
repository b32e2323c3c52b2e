"""The five CMR label tasks and the column names eval gives them.

Task order is the shard format's (``KEY.labels`` is float32[5] in this order), so ``TASKS`` is
re-exported from `shards.format`. Study tables name a label ``y_<task>`` (null where unknown) and a
probability ``p_<task>``.
"""

from __future__ import annotations

from echocmr.shards.format import TASKS

__all__ = ["TASKS", "TASK_TITLES", "p_col", "y_col"]

TASK_TITLES = {
    "wma": "WMA (wall motion abnormality)",
    "lge": "LGE (late gadolinium enhancement)",
    "t1": "T1 (abnormal native T1)",
    "t2": "T2 (abnormal T2)",
    "ecv": "ECV (abnormal extracellular volume)",
}


def y_col(task: str) -> str:
    return f"y_{task}"


def p_col(task: str) -> str:
    return f"p_{task}"
