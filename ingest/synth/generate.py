"""Write a synthetic cohort to disk: DICOM tree, CMR label table, view map and ground truth.

    DIR/dicom/<site>/<vendor>/<LAST_FIRST_PID>/<study>/<file>.dcm
    DIR/cmr_labels.parquet, DIR/cmr_labels.csv   one row per CMR exam (raw values, and the
                                                 patient's site)
    DIR/views.csv                                sop_instance_uid, view
    DIR/synth_truth.parquet                      one row per DICOM file: latent labels and what
                                                 ingest is expected to do with the file
    DIR/synthetic_cohort.json                    the marker by which ingest recognises a
                                                 synthetic cohort (`ingest.splits`)

The plan is made serially (cheap), then patients are rendered by a process pool, one task per
patient, each writing only its own files. No output depends on wall-clock time, worker count or
completion order, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from echocmr.ingest.splits import write_synthetic_marker
from echocmr.ingest.synth.cohort import (
    OUT_OF_WINDOW,
    CohortConfig,
    PatientPlan,
    is_wma_visible,
    latent_for_study,
    plan_cohort,
)
from echocmr.ingest.synth.dicom_writer import DicomIdentity, write_image, write_text_sr
from echocmr.ingest.synth.labels import LabelModel
from echocmr.ingest.synth.overlays import ScreenText
from echocmr.ingest.synth.phantom import PhantomConfig
from echocmr.ingest.synth.render import ClipRenderer, ClipRequest
from echocmr.ingest.synth.vendors import VENDOR_BY_KEY
from echocmr.progress import Progress

log = logging.getLogger(__name__)

OUTPUTS = ("dicom", "cmr_labels.parquet", "cmr_labels.csv", "views.csv", "synth_truth.parquet",
           "synthetic_cohort.json")
LABEL_COLUMNS = ["patient_id", "site", "cmr_id", "cmr_date", "field_strength_t", "wma", "lge",
                 "t1_native_ms", "t2_ms", "ecv_pct"]
TRUTH_COLUMNS = ["source", "site", "patient_id", "study_uid", "sop_uid", "vendor", "transfer_syntax",
                 "photometric", "n_frames", "fps", "view", "heart_rate", "wma", "lge", "t1",
                 "t2", "ecv", "wma_visible", "expected_status", "expected_reason", "cmr_id",
                 "echo_cmr_gap_days"]


def labels_table(plans: list[PatientPlan]) -> pd.DataFrame:
    """The CMR label table as a hospital would export it: one row per exam, raw values."""
    rows = [
        {"patient_id": p.patient_id, "site": p.site, "cmr_id": c.cmr_id, "cmr_date": c.date,
         "field_strength_t": c.field_strength_t, "wma": p.latent.wma, "lge": p.latent.lge,
         "t1_native_ms": c.t1_native_ms, "t2_ms": c.t2_ms, "ecv_pct": c.ecv_pct}
        for p in plans for c in p.cmrs
    ]
    df = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    return df.astype({"wma": "int64", "lge": "int64", "field_strength_t": "float64"})


def _render_patient(task: tuple[PatientPlan, str, PhantomConfig | None]) -> list[dict[str, Any]]:
    """Render and write every file of one patient; return its ground-truth rows."""
    plan, dicom_root, phantom_cfg = task
    rows = []
    for study in plan.studies:
        vendor = VENDOR_BY_KEY[study.vendor]
        labels = latent_for_study(plan, study)
        folder = plan.study_folder(study)
        for f in study.files:
            ident = DicomIdentity(
                patient_name=f"{plan.last_name}^{plan.first_name}", patient_id=plan.patient_id,
                birth_date=f"{plan.birth_date:%Y%m%d}", sex=plan.sex, study_uid=study.study_uid,
                study_date=f"{study.date:%Y%m%d}", study_time=study.time,
                accession=study.accession, institution=study.institution,
                study_id=str(study.index + 1), series_uid=f.series_uid,
                series_number=f.series_number, sop_uid=f.sop_uid,
                instance_number=f.instance_number, heart_rate=int(round(f.heart_rate)),
            )
            source = f"{folder}/{plan.file_name(study, f)}"
            path = Path(dicom_root) / source
            if f.kind == "text_sr":
                write_text_sr(path, ident=ident, vendor=vendor, lines=[
                    f"Heart rate {ident.heart_rate} bpm", "Sinus rhythm",
                    "Images archived separately"])
            else:
                text = ScreenText(
                    patient_name=f"{plan.last_name}, {plan.first_name}",
                    patient_id=plan.patient_id, date=f"{study.date:%m/%d/%Y}",
                    time=f"{study.time[:2]}:{study.time[2:4]}:{study.time[4:]}",
                    institution=study.institution, heart_rate=ident.heart_rate, fps=f.fps,
                )
                request = ClipRequest(
                    view=f.view, vendor=vendor, heart=plan.heart, heart_rate=f.heart_rate,
                    fps=f.fps, n_frames=f.n_frames, text=text, seed=f.seed,
                    colour_doppler=f.kind == "colour_doppler",
                )
                renderer = ClipRenderer(request, phantom_cfg)
                write_image(path, ident=ident, vendor=vendor, geometry=renderer.geometry,
                            frames=renderer.frames(), n_frames=f.n_frames, fps=f.fps,
                            pixel_mode=renderer.pixel_mode, colour_flow=request.colour_doppler)
            if not study.in_window:
                status, reason = "rejected", OUT_OF_WINDOW
            elif f.problem_reason:
                status, reason = "rejected", f.problem_reason
            else:
                status, reason = "kept", None
            image = f.kind != "text_sr"
            rows.append({
                "source": source, "site": plan.site, "patient_id": plan.patient_id, "study_uid": study.study_uid,
                "sop_uid": f.sop_uid, "vendor": vendor.key,
                "transfer_syntax": vendor.transfer_syntax if image else "1.2.840.10008.1.2.1",
                "photometric": vendor.photometric if image else None,
                "n_frames": f.n_frames, "fps": f.fps if f.n_frames > 1 else math.nan,
                "view": f.view, "heart_rate": f.heart_rate, **labels,
                "wma_visible": is_wma_visible(plan, f.view) if image else False,
                "expected_status": status, "expected_reason": reason,
                "cmr_id": plan.cmrs[study.cmr_index].cmr_id,
                "echo_cmr_gap_days": study.gap_days,
            })
    return rows


def _cost(plan: PatientPlan) -> int:
    """Rough rendering cost (frames x pixels), to start the biggest patients first."""
    return sum(f.n_frames * VENDOR_BY_KEY[s.vendor].rows * VENDOR_BY_KEY[s.vendor].columns
               for s in plan.studies for f in s.files)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


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
    """Generate a cohort into ``out_dir`` and return a summary (counts, bytes, seconds).

    ``config``, when given, overrides ``patients`` and ``seed``. ``workers`` defaults to every
    core; 1 renders in this process. An existing cohort in ``out_dir`` is an error unless
    ``overwrite`` (which removes only the generator's own outputs).
    """
    cfg = config or CohortConfig(patients=patients, seed=seed)
    out = Path(out_dir)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a cohort ({', '.join(existing)}); pass "
                              "overwrite=True (--overwrite) or choose another directory")
    for name in existing:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plans = plan_cohort(cfg)

    labels = labels_table(plans)
    _write_parquet(labels, out / "cmr_labels.parquet")
    labels.to_csv(out / "cmr_labels.csv", index=False)
    write_synthetic_marker(out, ("cmr_labels.parquet", "cmr_labels.csv"), seed=cfg.seed,
                           patients=cfg.patients)

    n_workers = max(1, workers or os.cpu_count() or 1)
    order = sorted(range(len(plans)), key=lambda i: (-_cost(plans[i]), i))
    tasks = [(plans[i], str(out / "dicom"), phantom) for i in order]
    rows: list[dict[str, Any]] = []
    bar = Progress(len(tasks), desc="synth patients", unit="patient", enabled=progress)
    try:
        if n_workers == 1:
            for task in tasks:
                rows.extend(_render_patient(task))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                for result in pool.map(_render_patient, tasks, chunksize=1):
                    rows.extend(result)
                    bar.update()
    finally:
        bar.close()

    truth = pd.DataFrame(rows, columns=TRUTH_COLUMNS).sort_values("source", ignore_index=True)
    truth = truth.astype({"n_frames": "int64", "wma_visible": "bool"})
    _write_parquet(truth, out / "synth_truth.parquet")
    views = truth.loc[truth["view"].notna(), ["sop_uid", "view"]]
    views.rename(columns={"sop_uid": "sop_instance_uid"}).to_csv(out / "views.csv", index=False)

    n_bytes = sum(f.stat().st_size for f in (out / "dicom").rglob("*.dcm"))
    reasons = truth.loc[truth["expected_status"] == "rejected", "expected_reason"]
    clips = truth[truth["n_frames"] > 1]
    summary = {
        "out_dir": str(out),
        "patients": cfg.patients,
        "seed": cfg.seed,
        "cmr_exams": int(len(labels)),
        "studies": int(truth["study_uid"].nunique()),
        "files": int(len(truth)),
        "expected_kept": int((truth["expected_status"] == "kept").sum()),
        "expected_rejected": {str(k): int(v) for k, v in reasons.value_counts().sort_index()
                              .items()},
        "vendors": {str(k): int(v) for k, v in truth["vendor"].value_counts().sort_index()
                    .items()},
        "sites": {str(k): int(v) for k, v in labels.groupby("site")["patient_id"].nunique()
                  .sort_index().items()},
        "transfer_syntaxes": sorted(truth["transfer_syntax"].unique().tolist()),
        "mean_frames_per_clip": float(np.round(clips["n_frames"].mean(), 1)) if len(clips)
        else 0.0,
        "wma_prevalence_patients": float(np.round(labels.groupby("patient_id")["wma"].max()
                                                  .mean(), 3)),
        "dicom_bytes": int(n_bytes),
        "seconds": round(time.perf_counter() - started, 1),
        "workers": n_workers,
    }
    log.info("synthetic cohort: %d patients, %d files (%d expected kept), %.1f MB in %.0f s",
             summary["patients"], summary["files"], summary["expected_kept"], n_bytes / 1e6,
             summary["seconds"])
    return summary


def generate_labels(patients: int, seed: int = 0,
                    labels: LabelModel | None = None) -> pd.DataFrame:
    """The CMR label table of a cohort without rendering any DICOM (the rows `generate_cohort`
    writes to ``cmr_labels.parquet`` for the same patients, seed and label model)."""
    return labels_table(plan_cohort(CohortConfig(
        patients=patients, seed=seed, problem_files=False,
        **({"labels": labels} if labels is not None else {}))))
