"""``echocmr predict``: raw DICOM files in, per-study probabilities for the five tasks out.

Each file goes through exactly the ingest code (`ingest.preprocess.preprocess_dicom`: read, find
the sector, mask overlays, square, resize, resample), then through the same windows as ``eval``
(`model.contract.window_starts`; each window made by `model.contract.frames_to_clip`, which feeds
the network the values the training pipeline's decoder gives for the same luma), then the model.
Clip probabilities are averaged per file, files per study — the same mean aggregation as ``eval``.

Files are grouped into studies by their StudyInstanceUID (which `preprocess_dicom` returns with the
clip, so no file is opened twice), used only for grouping: the output names
studies ``study-1``, ``study-2``, ... in input order and lists the paths the user passed, nothing
else from the files. A file that cannot be used (not DICOM, a still image, colour Doppler, ...) is
reported with ingest's reason code and detail; it never stops the run.

Preprocessing settings: ingest's defaults, with the clip size and frame rate of the shards the
model was trained on (from the model's `InputSpec`, or for older models from the training run's
``stats.json``: docs/formats.md, "A trained model"); ``--ingest-config FILE`` gives the YAML used
for ingest when it was not the default.

Output by extension: ``.csv`` (one row per study, then one per rejected file with ``status``
``rejected`` and its ``reason``) or ``.json`` (``{"studies": [...], "rejected": [...]}``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echocmr.ingest.config import PreprocessConfig, load_config
from echocmr.ingest.dicom_header import quiet_pydicom
from echocmr.ingest.preprocess import preprocess_dicom
from echocmr.ingest.reasons import RejectedInput, exception_detail
from echocmr.ingest.report import printable
from echocmr.model.contract import WINDOW_MODES, WindowMode, frames_to_clip, window_starts
from echocmr.model.lineage import source_run_id
from echocmr.model.pulled import read_model_stats
from echocmr.model.recorded_views import recorded_views
from echocmr.model.store import load_local, opened_model
from echocmr.model.tasks import TASKS, p_col
from echocmr.model.tracking import resolve_tracking_uri

log = logging.getLogger(__name__)

FORMATS = (".csv", ".json")


@dataclass(kw_only=True)
class PredictConfig:
    clips: WindowMode = "all"  # "all" windows or the "centre" one, as in eval
    stride: int | None = None  # frames between window starts; None = half a window's span
    batch_size: int = 16
    ingest_config: str | None = None  # ingest YAML whose `preprocess` section to use

    def __post_init__(self) -> None:
        if self.clips not in WINDOW_MODES:
            raise ValueError(f"clips={self.clips!r}: choose 'all' or 'centre'")


@dataclass(kw_only=True)
class Prediction:
    """Per-study probabilities and the files that were not used."""

    studies: pd.DataFrame  # study, files, n_files, n_clips, p_<task>...
    rejected: list[dict] = field(default_factory=list)  # {"file", "reason", "detail"}
    # With a view classifier (`ViewFilter`): {"file", "view", "view_confidence"} per file it saw
    views: list[dict] = field(default_factory=list)


VIEW_NOT_TARGET, VIEW_UNKNOWN_REASON = "view_not_target", "view_unknown"


@dataclass(frozen=True)
class ViewFilter:
    """Which files enter a study's probability: ``classifier`` (frames -> call with ``.view``
    and ``.confidence``; `model.views.ViewClassifier`) names each file's view, and only files
    of ``views`` (the views the CMR model was trained on) are used; the others are reported
    with reason ``view_not_target`` (``other``, or a target the model was not trained on) or
    ``view_unknown`` (the classifier is not sure), never averaged in."""

    classifier: object
    views: tuple[str, ...]

    def check(self, frames_THW) -> tuple[dict, tuple[str, str] | None]:
        """``(view info, None)`` for a file to use, ``(view info, (reason, detail))`` else."""
        call = self.classifier(frames_THW)
        info = {"view": str(call.view), "view_confidence": round(float(call.confidence), 4)}
        if call.view in self.views:
            return info, None
        reason = VIEW_UNKNOWN_REASON if call.view == "unknown" else VIEW_NOT_TARGET
        return info, (reason, f"view {call.view} (confidence {call.confidence:.2f}); this model "
                              f"uses {', '.join(self.views)}")


def preprocess_config(spec, *, stats: dict | None = None, ingest_config: str | None = None):
    """Ingest's `PreprocessConfig` for this model (see the module docstring)."""

    base = load_config(ingest_config).preprocess if ingest_config else PreprocessConfig()
    clip = (stats or {}).get("clip") or {}
    size = int(spec.clip_size or clip.get("height") or base.size)
    fps = float(clip.get("fps") or spec.fps or base.target_fps)
    if not ingest_config:
        base.size, base.target_fps = size, fps
    elif abs(base.target_fps - spec.fps) > 1e-6:
        log.warning("ingest config frame rate %.3g differs from the model's %.3g fps",
                    base.target_fps, spec.fps)
    return base


def predict_windows(model, clips_WCTHW: np.ndarray, *, device, batch_size: int) -> np.ndarray:
    """Sigmoid probabilities ``[W, K]`` of the model for a stack of windows."""
    import torch

    out = []
    with torch.inference_mode():
        for lo in range(0, clips_WCTHW.shape[0], batch_size):
            x = torch.from_numpy(clips_WCTHW[lo : lo + batch_size]).to(device)
            out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def file_probabilities(frames_THW: np.ndarray, model, spec, *, config: PredictConfig,
                       device="cpu") -> tuple[np.ndarray, int]:
    """Mean clip probabilities ``[K]`` of one preprocessed clip, and its number of windows."""
    import torch

    starts = window_starts(len(frames_THW), spec, mode=config.clips, stride=config.stride)
    clips = torch.stack([frames_to_clip(frames_THW, spec, start=s) for s in starts]).numpy()
    probs = predict_windows(model, clips, device=device, batch_size=config.batch_size)
    return probs.mean(axis=0), len(starts)


def predict_files(paths: list[str], model, spec, *, config: PredictConfig | None = None,
                  stats: dict | None = None, check: Callable[[], None] | None = None,
                  view_filter: ViewFilter | None = None) -> Prediction:
    """Probabilities per study for ``paths``; unusable files are listed, not fatal.

    ``check`` is called before each file is read and before its windows are run: it may raise
    to stop the work (the served model's request deadline, `model.serve_request.Deadline`).
    ``view_filter``: leave out files whose view the model was not trained on (`ViewFilter`).
    """

    config = config or PredictConfig()
    if tuple(spec.tasks) != tuple(TASKS):
        raise ValueError(f"model predicts tasks {spec.tasks}, predict expects {TASKS}")
    pre = preprocess_config(spec, stats=stats, ingest_config=config.ingest_config)
    model = model.eval()
    rejected: list[dict] = []
    seen_views: list[dict] = []
    groups: dict[str, dict] = {}  # grouping key -> {"files", "probs", "clips"}
    for path in paths:
        if check is not None:
            check()
        if not os.path.isfile(path):
            rejected.append({"file": path, "reason": "not_found",
                             "detail": "no such file (or it is a directory)"})
            continue
        try:
            with quiet_pydicom():  # its warnings quote element values
                clip = preprocess_dicom(path, pre)
        except RejectedInput as exc:
            rejected.append({"file": path, "reason": exc.reason, "detail": exc.detail})
            continue
        except Exception as exc:  # a bug or an odd file: report it, keep going
            detail = exception_detail(exc)  # never the value it failed on (ingest.reasons)
            log.debug("preprocessing a file failed: %s", detail)
            rejected.append({"file": path, "reason": "error", "detail": detail})
            continue
        if check is not None:
            check()
        if view_filter is not None:
            info, refusal = view_filter.check(clip.frames_THW)
            seen_views.append({"file": path, **info})
            if refusal is not None:
                rejected.append({"file": path, "reason": refusal[0], "detail": refusal[1],
                                 **info})
                continue
        probs, n_clips = file_probabilities(clip.frames_THW, model, spec, config=config)
        key = clip.study_uid or f"file:{path}"  # no study UID: the file is its own study
        g = groups.setdefault(key, {"files": [], "probs": [], "clips": 0})
        g["files"].append(path)
        g["probs"].append(probs)
        g["clips"] += n_clips
    rows = []
    for i, g in enumerate(groups.values(), start=1):
        mean = np.mean(g["probs"], axis=0)  # every file counts once, as in eval
        rows.append({"study": f"study-{i}", "files": ";".join(map(printable, g["files"])),
                     "n_files": len(g["files"]), "n_clips": g["clips"],
                     **{p_col(t): float(mean[k]) for k, t in enumerate(TASKS)}})
    columns = ["study", "files", "n_files", "n_clips", *(p_col(t) for t in TASKS)]
    return Prediction(studies=pd.DataFrame(rows, columns=columns), rejected=rejected,
                      views=seen_views)


def write_prediction(result: Prediction, out: str | os.PathLike) -> Path:
    """Write ``.csv`` or ``.json`` (chosen by the extension of ``out``)."""
    out = Path(out)
    ext = out.suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"--out {out}: use a .csv or .json file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".json":
        doc = {"studies": result.studies.to_dict(orient="records"), "rejected": result.rejected,
               "tasks": list(TASKS), **({"views": result.views} if result.views else {})}
        out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    else:
        table = result.studies.assign(status="ok", reason="")
        rej = pd.DataFrame([{"study": "", "files": printable(r["file"]), "status": "rejected",
                             "reason": f"{r['reason']}: {r['detail']}"} for r in result.rejected])
        table = pd.concat([table, rej], ignore_index=True) if len(rej) else table
        cols = ["study", "files", "status", "reason", "n_files", "n_clips",
                *(p_col(t) for t in TASKS)]
        table.reindex(columns=cols).to_csv(out, index=False)
    return out


def load_for_predict(model_uri: str, *, tracking_uri: str | None = None):
    """``(model, spec, stats or None, RecordedViews or None)``, from one download: stats come
    from a pulled directory when present, else the training run; the view classifier the model
    records (`model.recorded_views`) from the model itself, else the registry."""

    with opened_model(model_uri, tracking_uri=tracking_uri) as local:
        model, spec = load_local(local, model_uri)
        views = recorded_views(local, tracking_uri=tracking_uri)
    if Path(model_uri).is_dir():
        return model, spec, read_model_stats(model_uri), views
    stats = None
    if model_uri.startswith(("models:/", "runs:/")):  # the training run logged stats.json
        import mlflow


        uri = resolve_tracking_uri(tracking_uri)
        run_id = source_run_id(model_uri, uri)
        if run_id:
            try:
                mlflow.set_tracking_uri(uri)
                stats = mlflow.artifacts.load_dict(f"runs:/{run_id}/stats.json")
            except Exception as exc:
                log.warning("no stats.json in run %s (%s): using ingest defaults", run_id, exc)
    return model, spec, stats, views
