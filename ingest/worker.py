"""One input file, in a worker: header, pairing, decode, preprocess, text detector, VP9.

`process_file` is the same function in the local process pool, in this process (``in_process``)
and in a Ray task (`ingest.distributed`). A worker gets a relative path and its cache entry,
caches the result and the clip in the work cache (`ingest.workcache`) and returns the small
`FileResult`; nothing holds the whole dataset. Every failure becomes a report row: a file can
only reject itself, never stop the job.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from echocmr.ingest.config import IngestConfig
from echocmr.ingest.dicom_header import check_cine, identity, load_dataset
from echocmr.ingest.dicom_io import clip_from_dataset
from echocmr.ingest.encode import encode_webm
from echocmr.ingest.lookup import ViewLookup
from echocmr.ingest.pairing import CmrIndex
from echocmr.ingest.preprocess import preprocess_clip
from echocmr.ingest.reasons import RejectedInput, exception_detail
from echocmr.ingest.splits import KeyedHasher
from echocmr.ingest.text_detector import find_text
from echocmr.ingest.vendor_table import VendorConfig, VendorTable
from echocmr.ingest.views import VIEW_DISAGREEMENT, disagrees, label_view
from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.shards import storage
from echocmr.shards.format import VENDOR_UNKNOWN, IngestFacts, SampleMeta


@dataclass
class WorkerContext:
    """Everything a worker needs, pickled once per worker process."""

    config: IngestConfig
    dicom_dir: str
    work_dir: str
    cmr: CmrIndex
    views: Mapping[str, str] | ViewLookup  # SOP Instance UID -> view (`.get`)
    split_key: bytes
    # Called with each source before it is processed (`run_ingest`'s ``before_file``).
    before_file: Callable[[str], None] | None = None
    # --view-model: frames -> view call (`ingest.views`); built by the CLI, pickled to workers
    view_classifier: Callable | None = None


_CTX: WorkerContext | None = None


def init_worker(ctx: WorkerContext) -> None:
    """Pool initializer: keep the context in this process and silence warnings.

    pydicom's warnings and log messages quote element values ("invalid value for VR DA:
    '19610203'"), which can be PHI, and a worker's stderr ends up in the job's log. The warnings
    ingest needs (truncation) are recorded where they arise and become report rows instead.
    """
    global _CTX
    _CTX = ctx
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")


def process_file(task: tuple[str, str]) -> FileResult:
    """Process one file ``(relative path, cache entry id)``; cache and return the result."""
    source, entry = task
    ctx = _CTX
    assert ctx is not None, "init_worker was not called"
    if ctx.before_file is not None:
        ctx.before_file(source)
    try:
        result, video = _process(ctx, source)
    except RejectedInput as exc:
        result, video = FileResult(source=source, status="rejected", reason=exc.reason,
                                   detail=exc.detail, paired=getattr(exc, "paired", False),
                                   vendor=getattr(exc, "vendor", None)), None
    except Exception as exc:  # a bug must not stop the job; the report says what happened
        result, video = FileResult(source=source, status="rejected", reason="error",
                                   detail=exception_detail(exc)), None
    WorkCache(ctx.work_dir).store(entry, result, video)
    return result


def process_files(tasks: list[tuple[str, str]]) -> list[FileResult]:
    """`process_file` of each task in turn (the local pool hands out batches of files)."""
    return [process_file(task) for task in tasks]


def _process(ctx: WorkerContext, source: str) -> tuple[FileResult, bytes | None]:
    config = ctx.config
    ds = load_dataset(_input(ctx.dicom_dir, source), config.preprocess.read)
    # The vendor, from the Manufacturer (free text that never leaves this function) through the
    # alias table: a name of the vocabulary, `other` or `unknown` (`ingest.vendor_table`).
    vendor = _vendor(ds, config)
    try:
        return _process_clip(ctx, source, ds, vendor)
    except RejectedInput as exc:
        exc.vendor = vendor  # the report says whose machine wrote a rejected file, too
        raise


def _process_clip(ctx: WorkerContext, source: str, ds, vendor: str
                  ) -> tuple[FileResult, bytes | None]:
    config = ctx.config
    check_cine(ds, config.preprocess.read)
    ident = identity(ds)
    hasher = KeyedHasher(ctx.split_key, site=config.site, config=config.splits)
    study_hash = hasher.study_hash(ident.study_uid)
    if ident.study_date is None:
        raise RejectedInput("no_study_date", "no StudyDate/SeriesDate/AcquisitionDate/ContentDate")
    pairing = ctx.cmr.pair(ident.patient_id, ident.study_date)
    if pairing is None:
        detail = f"no CMR of this patient within +-{ctx.cmr.window_days} days"
        return FileResult(source=source, status="rejected", reason="no_cmr_within_window",
                          detail=detail, study_hash=study_hash, vendor=vendor), None
    try:
        clip = clip_from_dataset(ds, config.preprocess.read)
        del ds
        prepared = preprocess_clip(clip, config.preprocess)
        del clip
        text_boxes = detect_text(prepared.frames_THW, config)
    except RejectedInput as exc:
        exc.paired = True  # the label table did its part: counts against "pairs with nothing"
        raise
    view = label_view(ctx.views.get(ident.sop_uid), ctx.view_classifier, prepared.frames_THW)
    video = encode_webm(prepared.frames_THW, prepared.fps, config.encoder)

    clip_hash = hasher.clip_hash(ident.sop_uid)
    key = f"{config.site}-{clip_hash}"
    spacing = prepared.pixel_spacing_mm
    meta = SampleMeta(
        key=key,
        site=config.site,
        split=hasher.split(ident.patient_id),
        patient_hash=hasher.patient_hash(ident.patient_id),
        study_hash=study_hash,
        view=view.view,
        view_source=view.source,
        view_confidence=view.confidence,
        vendor=vendor,
        fps=prepared.fps,
        n_frames=prepared.n_frames,
        ingest=IngestFacts(
            source_sop_hash=clip_hash,
            height=int(prepared.frames_THW.shape[1]),
            width=int(prepared.frames_THW.shape[2]),
            orig_fps=None if prepared.orig_fps is None else round(prepared.orig_fps, 4),
            orig_n_frames=prepared.orig_n_frames,
            pixel_spacing_mm=None if spacing is None else (round(spacing[0], 6),
                                                           round(spacing[1], 6)),
            echo_cmr_gap_days=pairing.gap_days,
            field_strength_t=pairing.field_strength_t,
        ),
    )
    # Exactly the metadata a resumed run reads back from the work cache (numpy scalars become
    # the JSON numbers they are written as), so fresh and resumed runs write the same bytes.
    meta = SampleMeta.from_json(meta.to_json())
    labels = [None if np.isnan(v) else float(v) for v in pairing.labels]
    result = FileResult(
        source=source, status="kept", key=key, meta=meta, labels=labels,
        pixel_stats=list(prepared.pixel_stats()), video_sha256=hashlib.sha256(video).hexdigest(),
        video_bytes=len(video), vendor=vendor,
        study_hash=study_hash, text_boxes=text_boxes, paired=True,
        detail=(f"{VIEW_DISAGREEMENT}: table {view.view}, model {view.model_view} "
                f"({view.confidence:.2f})" if disagrees(view) else None),
    )
    return result, video


def _vendor(ds, config: IngestConfig) -> str:
    """The file's vendor (`ingest.vendor_table`); ``unknown`` when the tags cannot be read."""
    try:
        maker, model = ds.get("Manufacturer"), ds.get("ManufacturerModelName")
    except Exception:  # a damaged element: pydicom parses values lazily, here
        return VENDOR_UNKNOWN
    return _vendor_table(tuple(config.vendors.aliases.items())).vendor_of(maker, model)


@functools.cache
def _vendor_table(aliases: tuple[tuple[str, str], ...]) -> VendorTable:
    """The alias table, built once per worker process and set of aliases."""
    return VendorConfig(aliases=dict(aliases)).table()


def _input(dicom_dir: str, source: str):
    """What pydicom reads for ``source``: a local path, or the object's bytes from a URL prefix
    (one GET: pydicom seeks around a file, which would be many ranged requests)."""
    if storage.is_local(dicom_dir):
        return os.path.join(storage.local_path(dicom_dir), source)
    return io.BytesIO(storage.read_bytes(storage.join(dicom_dir, source)))


def detect_text(frames_THW: np.ndarray, config: IngestConfig) -> int:
    """Run the text detector on a prepared clip: mask what it finds in place, or reject."""
    detector = config.text_detector
    if not detector.enabled:
        return 0
    findings = find_text(frames_THW, detector)
    if not findings.boxes:
        return 0
    if detector.action == "reject":
        raise RejectedInput("burned_in_text", f"the text detector found {findings.boxes} text "
                            f"box(es) in the clip's {len(frames_THW)} output frames")
    frames_THW[:, findings.mask_HW] = 0
    return findings.boxes
