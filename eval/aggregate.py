"""From clip probabilities to video and study probabilities.

A *clip* is one window of T frames of a video; a *video* is one echo DICOM (one shard sample,
``key``); a *study* is one echo examination (``study_hash``) with several videos in several views.
Labels belong to the study (they come from the CMR paired with it).

Two ways to combine videos into a study:

* ``mean`` (default): the mean of the video probabilities. Every video counts once, however many
  clips it has, so long videos do not outvote short ones.
* ``stacker``: the source study trained one model per view and combined them; the equivalent here is
  a per-task logistic regression on per-view features (the logit of the view's mean probability and
  a view-present indicator), fitted on the **val** split and applied to the split under evaluation.
  Views seen in fewer than ``min_view_studies`` val studies are pooled into ``other``. A task
  whose val labels cannot support a fit falls back to the mean, and says so in ``fallbacks``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd

from echocmr.model.tasks import TASKS, p_col, y_col

log = logging.getLogger(__name__)

P_COLS = [p_col(t) for t in TASKS]
Y_COLS = [y_col(t) for t in TASKS]
STUDY_ID_COLS = ["study_hash", "patient_hash", "site", "split"]
STUDY_COLUMNS = [*STUDY_ID_COLS, *Y_COLS, *P_COLS]
VIDEO_COLUMNS = ["key", *STUDY_ID_COLS, "view", "n_clips", *Y_COLS, *P_COLS]
Aggregation = Literal["mean", "stacker"]
METHODS = get_args(Aggregation)

_EPS = 1e-6


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(df.columns)}")


def clips_to_videos(clips: pd.DataFrame) -> pd.DataFrame:
    """One row per video (``key``): the mean of its clips' probabilities, ``n_clips``."""
    _require(clips, ["key", *STUDY_ID_COLS, "view", *Y_COLS, *P_COLS], "clip predictions")
    if clips.empty:
        raise ValueError("no clip predictions to aggregate")
    g = clips.groupby("key", sort=True)
    videos = g[[*STUDY_ID_COLS, "view", *Y_COLS]].first()
    # `first` skips NaN; a video's labels are one vector, so check none disagree.
    for c in Y_COLS:
        if (g[c].nunique(dropna=True) > 1).any():
            raise ValueError(f"clips of one video disagree on {c}: the clip table is corrupt")
    videos[P_COLS] = g[P_COLS].mean()
    videos["n_clips"] = g.size()
    return videos.reset_index()[VIDEO_COLUMNS]


def _study_frame(videos: pd.DataFrame) -> pd.DataFrame:
    """Per study: ids and labels. Conflicting labels within a study become unknown (NaN)."""
    g = videos.groupby("study_hash", sort=True)
    for c in ("patient_hash", "site", "split"):
        bad = g[c].nunique(dropna=False) > 1
        if bad.any():
            raise ValueError(f"{int(bad.sum())} studies span more than one {c}; the shards are corrupt")
    studies = g[["patient_hash", "site", "split", *Y_COLS]].first()
    for c in Y_COLS:
        conflict = g[c].nunique(dropna=True) > 1
        if conflict.any():
            log.warning("%d studies have conflicting %s labels; treated as unknown", conflict.sum(), c)
            studies.loc[conflict, c] = np.nan
    return studies


def videos_to_studies(videos: pd.DataFrame) -> pd.DataFrame:
    """One row per study, ``STUDY_COLUMNS``: the mean of the video probabilities."""
    _require(videos, VIDEO_COLUMNS, "video predictions")
    studies = _study_frame(videos)
    studies[P_COLS] = videos.groupby("study_hash", sort=True)[P_COLS].mean()
    return studies.reset_index()[STUDY_COLUMNS]


def views_to_studies(videos: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, view): the study's prediction from that view's videos alone.

    This is what a per-view breakdown evaluates: "how well does A4C alone do?"
    """
    _require(videos, VIDEO_COLUMNS, "video predictions")
    studies = _study_frame(videos)
    per_view = videos.groupby(["study_hash", "view"], sort=True)[P_COLS].mean().reset_index()
    out = per_view.merge(studies.reset_index(), on="study_hash", how="left")
    return out[[*STUDY_ID_COLS, "view", *Y_COLS, *P_COLS]]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass(kw_only=True)
class StackerConfig:
    min_view_studies: int = 10
    min_class_studies: int = 5  # positives and negatives each, in val, to fit a task
    c: float = 1.0  # inverse L2 strength of scikit-learn's LogisticRegression


@dataclass(kw_only=True)
class ViewStacker:
    """Per-task logistic regression over per-view features; fit on val, apply anywhere."""

    config: StackerConfig = field(default_factory=StackerConfig)
    views: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # task -> fitted LogisticRegression
    fallbacks: dict = field(default_factory=dict)  # task -> why it uses the mean

    def _features(self, videos: pd.DataFrame, task: str) -> pd.DataFrame:
        view = videos["view"].where(videos["view"].isin(self.views), "other")
        per = (
            videos.assign(_view=view)
            .groupby(["study_hash", "_view"])[p_col(task)]
            .mean()
            .unstack("_view")
        )
        cols = [*self.views, "other"]
        per = per.reindex(columns=cols)
        present = per.notna().astype(np.float64).add_prefix("has_")
        logits = pd.DataFrame(
            _logit(per.to_numpy(dtype=np.float64)), index=per.index, columns=per.columns
        ).fillna(0.0)
        return pd.concat([logits.add_prefix("logit_"), present], axis=1).sort_index()

    def fit(self, val_videos: pd.DataFrame) -> ViewStacker:
        from sklearn.linear_model import LogisticRegression

        _require(val_videos, VIDEO_COLUMNS, "val video predictions")
        studies = _study_frame(val_videos)
        per_view = val_videos.groupby("view")["study_hash"].nunique()
        self.views = sorted(v for v, n in per_view.items() if n >= self.config.min_view_studies)
        for task in TASKS:
            y = studies[y_col(task)].dropna()
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            if min(n_pos, n_neg) < self.config.min_class_studies:
                self.fallbacks[task] = (
                    f"val has {n_pos} positive and {n_neg} negative studies; the stacker needs "
                    f">= {self.config.min_class_studies} of each, so this task uses the mean"
                )
                continue
            x = self._features(val_videos, task).loc[y.index]
            model = LogisticRegression(C=self.config.c, max_iter=1000)
            model.fit(x.to_numpy(), y.to_numpy().astype(int))
            self.models[task] = model
        return self

    def predict(self, videos: pd.DataFrame) -> pd.DataFrame:
        """Study rows (``STUDY_COLUMNS``); tasks without a fitted model use the mean."""
        studies = videos_to_studies(videos).set_index("study_hash")
        for task, model in self.models.items():
            x = self._features(videos, task).loc[studies.index]
            studies[p_col(task)] = model.predict_proba(x.to_numpy())[:, 1]
        return studies.reset_index()[STUDY_COLUMNS]

    def describe(self) -> dict:
        """What was fitted, for the report and MLflow (coefficients by feature name)."""
        out: dict = {"views": self.views, "fallbacks": dict(self.fallbacks), "coefficients": {}}
        names = [f"logit_{v}" for v in [*self.views, "other"]]
        names += [f"has_{v}" for v in [*self.views, "other"]]
        for task, model in self.models.items():
            coef = dict(zip(names, model.coef_[0].round(6).tolist(), strict=True))
            coef["intercept"] = round(float(model.intercept_[0]), 6)
            out["coefficients"][task] = coef
        return out


def aggregate(
    clips: pd.DataFrame, *, method: str = "mean", val_clips: pd.DataFrame | None = None,
    stacker_config: StackerConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, ViewStacker | None]:
    """Clips -> (videos, studies, stacker or None) by ``method``; the stacker needs ``val_clips``."""
    if method not in METHODS:
        raise ValueError(f"aggregation method {method!r}: choose one of {METHODS}")
    videos = clips_to_videos(clips)
    if method == "mean":
        return videos, videos_to_studies(videos), None
    if val_clips is None or val_clips.empty:
        raise ValueError("the stacker is fitted on the val split: pass its clip predictions")
    stacker = ViewStacker(config=stacker_config or StackerConfig()).fit(clips_to_videos(val_clips))
    return videos, stacker.predict(videos), stacker
