"""From clip predictions to every eval output: aggregation, metrics, signal audit, reports.

``evaluate_clips`` is the model-free half of ``echocmr eval``: give it the clip table of the split
under evaluation (and of val, for the stacker) and it writes ``predictions.parquet``,
``clip_predictions.parquet``, ``metrics.json``, ``metrics_detail.json``, ROC PNGs, ``report.md``
and ``report.html``. ``eval.run`` puts inference in front of it and MLflow behind it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from echocmr.eval.aggregate import (
    METHODS,
    Aggregation,
    StackerConfig,
    aggregate,
    clips_to_videos,
    videos_to_studies,
    views_to_studies,
)
from echocmr.eval.missingness import label_missingness
from echocmr.eval.operating import THRESHOLD_RULES, ThresholdRule, operating_point
from echocmr.eval.outputs import (
    write_clip_predictions,
    write_detail,
    write_metrics,
    write_predictions,
)
from echocmr.eval.report import ReportInputs, write_report
from echocmr.eval.signal import INSUFFICIENT
from echocmr.eval.summary import (
    ResultCache,
    SummaryConfig,
    TaskResult,
    breakdown,
    detail_json,
    summarise,
)
from echocmr.model.tasks import p_col, y_col
from echocmr.shards.format import SPLITS, TARGET_VIEWS, VIEW_UNKNOWN, VIEW_VOCABULARY, view_class

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvaluationConfig:
    """How study probabilities are formed and judged (inference settings live in InferConfig)."""

    aggregation: Aggregation = "mean"  # or "stacker" (per-view logistic regression fitted on val)
    stacker: StackerConfig = field(default_factory=StackerConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    breakdowns: tuple[str, ...] = ("view", "site")
    # Operating point: threshold chosen on val ("youden", or "sensitivity" >= target), applied
    # unchanged to the split evaluated; "none" skips it (and eval's inference on val).
    threshold: ThresholdRule = "youden"
    target_sensitivity: float = 0.9
    # External validation: the main table is this site's studies (a site the model did not train
    # on: `train --exclude-site`, or a set resharded without it); the other sites' studies of the
    # split are the internal column. `eval.job` checks the model's record of its training sites.
    holdout_site: str | None = None
    # Which of the held-out site's studies are external: "all" its splits when the model's
    # record shows it never trained on the site (none of its patients was seen), else only the
    # evaluated split's ("split"; also what an unverified model gets).
    external_splits: Literal["all", "split"] = "all"
    # Views whose clips enter a study's probability (`shards.format.view_class` of each clip's
    # stored view). By default the target views and `unknown` (sets ingested without views): a
    # clip of another view (`other`: PSAX, subcostal, ...) is one the model was not trained on,
    # and averaging it in dilutes the study. Left-out clips are counted in metrics_detail.json.
    views: tuple[str, ...] = (*TARGET_VIEWS, VIEW_UNKNOWN)

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        bad = [v for v in self.views if v not in VIEW_VOCABULARY]
        if bad or not self.views:
            raise ValueError(f"evaluation.views {bad or 'empty'}: choose among {VIEW_VOCABULARY}")
        if self.aggregation not in METHODS:
            raise ValueError(f"aggregation {self.aggregation!r}: choose one of {METHODS}")
        if self.threshold not in THRESHOLD_RULES:
            raise ValueError(f"threshold {self.threshold!r}: choose one of {THRESHOLD_RULES}")
        if self.external_splits not in ("all", "split"):
            raise ValueError(f"external_splits {self.external_splits!r}: choose all or split")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity={self.target_sensitivity}: in (0, 1]")


@dataclass(kw_only=True)
class Evaluation:
    """What ``evaluate_clips`` produced: the tables, the results, and the files it wrote."""

    studies: pd.DataFrame
    videos: pd.DataFrame
    results: dict[str, TaskResult]
    by_view: dict[str, dict[str, TaskResult]]
    by_site: dict[str, dict[str, TaskResult]]
    files: dict[str, Path]
    stacker: dict | None = None
    internal: dict[str, TaskResult] | None = None  # with holdout_site: the other sites' results
    external_splits: list[str] | None = None  # with holdout_site: the splits judged


def select_views(clips: pd.DataFrame, views: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    """The clips whose view class is in ``views``, and ``{view class: clips left out}``."""
    if "view" not in clips or clips.empty:
        return clips, {}
    classes = clips["view"].map(view_class)
    keep = classes.isin(views)
    if keep.all():
        return clips, {}
    if not keep.any():
        raise ValueError(f"no clip of the evaluated views ({', '.join(views)}); the clips are of "
                         f"{', '.join(sorted(classes.unique()))} (evaluation.views)")
    left_out = classes[~keep].value_counts().sort_index()
    return clips[keep].reset_index(drop=True), {str(k): int(v) for k, v in left_out.items()}


def evaluate_clips(
    clips: pd.DataFrame,
    out_dir: Path,
    *,
    config: EvaluationConfig | None = None,
    val_clips: pd.DataFrame | None = None,
    context: dict[str, str] | None = None,
    title: str | None = None,
    label_table: pd.DataFrame | None = None,
) -> Evaluation:
    """Aggregate ``clips`` to studies, compute every metric, and write all outputs to ``out_dir``.

    ``label_table``: one row per study of every split (``split``, ``site``, ``y_<task>``; e.g.
    `eval.missingness.studies_from_manifest`) for the label-missingness table; without it the
    table covers the studies evaluated (and val's, when given).
    """
    config = config or EvaluationConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips, left_out = select_views(clips, config.views)
    if val_clips is not None:
        val_clips, _ = select_views(val_clips, config.views)
    if left_out:
        context = {**(context or {}),
                   "clips left out by view": ", ".join(f"{v} {n}" for v, n in left_out.items())}
    fit_clips = val_clips
    if config.holdout_site is not None and val_clips is not None:  # never fit on the held-out site
        fit_clips = val_clips[val_clips["site"].astype(str) != config.holdout_site]
    videos, studies, stacker = aggregate(
        clips, method=config.aggregation, val_clips=fit_clips, stacker_config=config.stacker
    )
    cache = ResultCache()  # a breakdown group with the primary table's studies reuses its tasks
    judged, internal, internal_splits, external_splits = studies, None, None, None
    if config.holdout_site is not None:
        site = studies["site"].astype(str)
        if config.holdout_site not in set(site):
            raise ValueError(f"--holdout-site {config.holdout_site!r}: the split's sites are "
                             f"{sorted(set(site))}")
        judged = studies[site == config.holdout_site]
        internal = summarise(studies[site != config.holdout_site], config=config.summary,
                             primary=False, cache=cache)
        internal_splits = _in_order(studies.loc[site != config.holdout_site, "split"])
        external_splits = _in_order(judged["split"])
    results = summarise(judged, config=config.summary, cache=cache)
    val_studies = None
    if val_clips is not None and not val_clips.empty:
        val_videos = clips_to_videos(val_clips)
        val_studies = (stacker.predict(val_videos) if stacker is not None
                       else videos_to_studies(val_videos))
        if config.holdout_site is not None:  # thresholds from the training sites' val only
            val_studies = val_studies[val_studies["site"].astype(str) != config.holdout_site]
    add_operating_points(results, judged, val_studies, config)
    if internal is not None:
        add_operating_points(internal, studies[studies["site"].astype(str)
                                                != config.holdout_site], val_studies, config)
    if label_table is None:
        label_table = pd.concat([t for t in (studies, val_studies) if t is not None],
                                ignore_index=True)
    missing = label_missingness(label_table, control=config.summary.positive_control or "wma")
    # Per view over the judged studies only: with a held-out site, the external site's.
    judged_videos = videos[videos["study_hash"].isin(judged["study_hash"])]
    by_view = (breakdown(views_to_studies(judged_videos), "view", config=config.summary,
                         cache=cache) if "view" in config.breakdowns else {})
    by_site = (breakdown(studies, "site", config=config.summary, cache=cache)
               if "site" in config.breakdowns else {})
    stacker_info = stacker.describe() if stacker is not None else None
    splits = _in_order(studies["split"])
    files = {
        "predictions.parquet": write_predictions(studies, out_dir / "predictions.parquet"),
        "clip_predictions.parquet": write_clip_predictions(
            clips, out_dir / "clip_predictions.parquet"
        ),
        "metrics.json": write_metrics(results, out_dir / "metrics.json"),
        "metrics_detail.json": write_detail(
            results, out_dir / "metrics_detail.json", by_view=by_view, by_site=by_site,
            extra={"settings": _settings(config), "context": dict(context or {}),
                   "stacker": stacker_info, "label_missingness": missing,
                   "holdout_site": config.holdout_site,
                   "internal": None if internal is None else detail_json(internal)},
        ),
    }
    files.update(write_report(out_dir, ReportInputs(
        studies=studies, results=results, by_view=by_view, by_site=by_site,
        context=dict(context or {}), config=config.summary, missingness=missing,
        internal=internal, holdout_site=config.holdout_site,
        internal_splits=internal_splits, external_splits=external_splits,
        title=title or f"echocmr evaluation — {', '.join(splits)} split"
        + ("s" if len(splits) > 1 else ""),
    )))
    log.info("wrote %s", ", ".join(sorted(files)))
    return Evaluation(studies=studies, videos=videos, results=results, by_view=by_view,
                      by_site=by_site, files=files, stacker=stacker_info, internal=internal,
                      external_splits=external_splits)


def add_operating_points(results: dict[str, TaskResult], studies: pd.DataFrame,
                         val_studies: pd.DataFrame | None, config: EvaluationConfig) -> None:
    """Each task's threshold chosen on ``val_studies``, read on ``studies`` (eval.operating)."""

    if config.threshold == "none":
        return
    for task, r in results.items():
        if r.verdict == INSUFFICIENT:  # the main table withholds this task's figures
            r.operating_reason = "insufficient data (see the main table)"
            continue
        if val_studies is None:
            r.operating_reason = "no val predictions to choose a threshold on"
            continue
        yv = val_studies[y_col(task)].to_numpy(dtype=float, na_value=float("nan"))
        pv = val_studies[p_col(task)].to_numpy(dtype=float, na_value=float("nan"))
        y = studies[y_col(task)].to_numpy(dtype=float, na_value=float("nan"))
        p = studies[p_col(task)].to_numpy(dtype=float, na_value=float("nan"))
        kv, k = ~pd.isna(yv), ~pd.isna(y)
        if len(set(yv[kv])) < 2 or len(set(y[k])) < 2:
            r.operating_reason = "val or this split lacks positives or negatives"
            continue
        r.operating = operating_point(yv[kv], pv[kv], y[k], p[k], rule=config.threshold,
                                      target_sensitivity=config.target_sensitivity)


def _in_order(splits: pd.Series) -> list[str]:
    """The distinct splits, in train, val, test order."""

    names = set(splits.astype(str))
    return [s for s in SPLITS if s in names] + sorted(names - set(SPLITS))


def _settings(config: EvaluationConfig) -> dict:
    d = asdict(config)
    d["breakdowns"] = list(config.breakdowns)
    return d
