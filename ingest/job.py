"""The ingest job: a hospital export in, de-identified training shards out.

    echocmr ingest --dicom DIR|URL --labels FILE --out DIR|URL [--site NAME] [--views FILE]
                   [--workers N | --address RAY]

Phases:

1. **Scan** every path under ``--dicom`` (`scan_inputs`): regular files (any name: exports often
   have no extension) are processed, everything else (loops, FIFOs, unreadable directories) gets
   its report row with a reason. An ``s3://`` / ``gs://`` prefix is listed instead (`scan_url`).
2. **Process** each file (`process_file`) in a process pool, or as Ray tasks on a cluster with
   ``--address`` (`ingest.distributed`; the same function): read and check the header, pair the
   study with a CMR, decode, preprocess, encode VP9. Workers get a relative path and return a
   small `FileResult`; nothing holds the whole dataset. Each result (and its clip) is cached
   atomically under ``OUT/.work/`` (a directory or URL prefix) before it is reported done, so a
   killed run resumes where it stopped.
3. **Write** the kept clips, sorted by (split, key) so the order does not depend on which worker
   finished first: `shards.writer.ShardSetWriter` plans the shards from the metadata, each shard
   is written from the work cache (`write_shard_job`: here, or one Ray task per shard), then the
   manifest and stats; then ``ingest_report.parquet`` (one row per input file). Same inputs and
   config give byte-identical output, resumed or not, with or without Ray, on any number of nodes.
4. **Clean up** ``OUT/.work`` (kept when ``keep_work_cache`` is set; it is site-local like the
   report: result files hold the same fields as the report).

Nothing in the logs or the progress bar names a file: source paths can name patients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echocmr.ingest.config import IngestConfig
from echocmr.ingest.dicom_io import (
    REASONS,
    RejectedInput,
    check_cine,
    clip_from_dataset,
    identity,
    load_dataset,
)
from echocmr.ingest.encode import encode_webm
from echocmr.ingest.inputs import Scan, read_views, scan_inputs, scan_url
from echocmr.ingest.pairing import CmrIndex
from echocmr.ingest.preprocess import preprocess_clip
from echocmr.ingest.splits import (
    KeyedHasher,
    demo_key_refusal,
    is_synthetic_cohort,
    resolve_split_key,
)
from echocmr.ingest.views import ViewMix, disagrees, label_view
from echocmr.ingest.workcache import (
    CACHE_VERSION,
    WORK_DIR,
    FileResult,
    WorkCache,
    entry_id,
)
from echocmr.shards.format import (
    FORMAT_VERSION,
    INGEST_REPORT_FILE,
    SPLITS,
    IngestFacts,
    SampleMeta,
)

log = logging.getLogger(__name__)

UNKNOWN_VIEW = "unknown"
# A kept clip's report ``detail`` when its views-table view and the view model disagree.
VIEW_DISAGREEMENT = "view disagreement"


@dataclass
class IngestSummary:
    """What a run did; `format` renders it for the terminal."""

    out: str
    files: int
    kept: int
    rejected: dict[str, int]  # reason -> files
    clips_per_split: dict[str, int]
    unpaired_studies: int
    shards: list[str] = field(default_factory=list)
    resumed_files: int = 0  # results taken from the work cache of an earlier, interrupted run
    key_source: str = "demo"
    seconds: float = 0.0
    text_masked_clips: int = 0  # kept clips in which the text detector found (and masked) text
    text_boxes: int = 0  # text boxes masked in them
    text_detector: str = "mask"  # "mask", "reject" or "off"
    label_warnings: dict[str, int] = field(default_factory=dict)  # what the label table lacked
    label_rules: dict[str, int] = field(default_factory=dict)  # cut-off -> table rows it labelled
    label_rules_fingerprint: str = ""  # `ingest.cutoffs.RuleSet.fingerprint` (stats.json)
    label_rules_before: str | None = None  # the fingerprint the set replaced had, when different
    views: ViewMix = field(default_factory=ViewMix)  # kept clips per view (`ingest.views`)

    def format(self) -> str:
        lines = [f"ingest: {self.files} files -> {self.kept} kept, "
                 f"{self.files - self.kept} rejected ({self.seconds:.1f} s)"]
        for reason, n in sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  rejected {reason:<22} {n}")
        lines.append("  clips per split: " + ", ".join(
            f"{s} {self.clips_per_split.get(s, 0)}" for s in SPLITS))
        lines.append(f"  echo studies without a CMR within the window: {self.unpaired_studies}")
        lines.append(f"  {self.views.describe()}")
        if self.text_detector == "off":
            lines.append("  text detector: off")
        else:
            lines.append(f"  text detector ({self.text_detector}): text masked in "
                         f"{self.text_masked_clips} kept clip(s), {self.text_boxes} box(es); "
                         f"rejected burned_in_text {self.rejected.get('burned_in_text', 0)}")
        for what, n in sorted(self.label_warnings.items()):
            lines.append(f"  label table: {what}: {n}")
        for rule, n in self.label_rules.items():
            lines.append(f"  label cut-off {rule}: {n} row(s)")
        if self.label_rules_fingerprint:
            lines.append(f"  label cut-offs: fingerprint {self.label_rules_fingerprint} "
                         "(stats.json label_rules)")
        if self.label_rules_before:
            lines.append(f"  NOTE: the set this run replaced had this site's labels from other "
                         f"cut-offs (fingerprint {self.label_rules_before})")
        if self.resumed_files:
            lines.append(f"  resumed: {self.resumed_files} files from the work cache")
        lines.append(f"  {len(self.shards)} shards in {self.out}; report: "
                     f"{os.path.join(self.out, INGEST_REPORT_FILE)} (site-local, never ship it)")
        if self.key_source == "demo":
            lines.append("  WARNING: public demo split key used (--allow-public-demo-key): "
                         "patient hashes are reversible; set ECHOCMR_SPLIT_KEY for real data")
        elif self.key_source.startswith("demo"):
            lines.append("  public demo split key used: the input is a synthetic cohort")
        return "\n".join(lines)


# -- the worker side ---------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """Everything a worker needs, pickled once per worker process."""

    config: IngestConfig
    dicom_dir: str
    work_dir: str
    cmr: CmrIndex
    views: dict[str, str]  # SOP Instance UID -> view
    split_key: bytes
    before_file: Callable[[str], None] | None = None  # called with each source (fault injection)
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
                                   detail=exc.detail, paired=getattr(exc, "paired", False)), None
    except Exception as exc:  # a bug must not stop the job; the report says what happened
        result, video = FileResult(source=source, status="rejected", reason="error",
                                   detail=f"{type(exc).__name__}: {exc}"), None
    WorkCache(ctx.work_dir).store(entry, result, video)
    return result


def _process(ctx: WorkerContext, source: str) -> tuple[FileResult, bytes | None]:
    config = ctx.config
    ds = load_dataset(_input(ctx.dicom_dir, source))
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
                          detail=detail, study_hash=study_hash), None
    try:
        clip = clip_from_dataset(ds, config.preprocess.read)
        del ds
        prepared = preprocess_clip(clip, config.preprocess)
        del clip
        text_boxes = _detect_text(prepared.frames_THW, config)
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
    ).to_dict()  # the work cache holds it as JSON; the writer parses it back into a SampleMeta
    labels = [None if np.isnan(v) else float(v) for v in pairing.labels]
    result = FileResult(
        source=source, status="kept", key=key, meta=meta, labels=labels,
        pixel_stats=list(prepared.pixel_stats()), video_sha256=hashlib.sha256(video).hexdigest(),
        video_bytes=len(video),
        study_hash=study_hash, text_boxes=text_boxes, paired=True,
        detail=(f"{VIEW_DISAGREEMENT}: table {view.view}, model {view.model_view} "
                f"({view.confidence:.2f})" if disagrees(view) else None),
    )
    return result, video


def _input(dicom_dir: str, source: str):
    """What pydicom reads for ``source``: a local path, or the object's bytes from a URL prefix
    (one GET: pydicom seeks around a file, which would be many ranged requests)."""
    from echocmr.shards import storage

    if storage.is_local(dicom_dir):
        return os.path.join(storage.local_path(dicom_dir), source)
    import io

    return io.BytesIO(storage.read_bytes(storage.join(dicom_dir, source)))


def _detect_text(frames_THW: np.ndarray, config: IngestConfig) -> int:
    """Run the text detector on a prepared clip: mask what it finds in place, or reject."""
    detector = config.text_detector
    if not detector.enabled:
        return 0
    from echocmr.ingest.text_detector import find_text, sample_indices

    findings = find_text(frames_THW, detector)
    if not findings.boxes:
        return 0
    if detector.action == "reject":
        n = len(sample_indices(len(frames_THW), detector.frames))
        raise RejectedInput("burned_in_text", f"the text detector found {findings.boxes} text "
                            f"box(es) in {n} sampled output frames")
    frames_THW[:, findings.mask_HW] = 0
    return findings.boxes


# -- the job -----------------------------------------------------------------------------------


def _text_engine(config: IngestConfig) -> str:
    """The OCR model's identity when the detector is on: a new model version redoes every file."""
    if not config.text_detector.enabled:
        return "text detector off"
    from echocmr.ingest.text_detector import engine_version

    return engine_version()


def _file_digest(path: str | None) -> str:
    if path is None:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_ingest(
    dicom_dir: str | os.PathLike,
    labels_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: IngestConfig | None = None,
    views_path: str | os.PathLike | None = None,
    progress: bool = True,
    in_process: bool = False,
    address: str | None = None,
    view_classifier: Callable | None = None,
) -> IngestSummary:
    """Run the whole job (see the module docstring); returns what it did.

    ``dicom_dir`` is a directory or an ``s3://`` / ``gs://`` prefix; ``out_dir`` a directory or a
    URL prefix (the work cache lives under it). ``address`` (else ``$RAY_ADDRESS``) runs the
    per-file work and the shard writing as Ray tasks on that cluster (`ingest.distributed`);
    without one, files go to a process pool of ``config.workers``, or with ``in_process`` through
    this process (for debugging and quick tests: no start-up cost, but no protection from a
    crashing decoder). The output is byte-identical whichever way it runs.

    ``view_classifier`` (``--view-model``; `ingest.views`) labels each kept clip's view;
    ``config.view_model`` names it (the exact version) for the work cache and stats.json.
    """

    from echocmr.shards import storage
    from echocmr.shards.format import validate_site
    from echocmr.shards.lock import exclusive_output, exclusive_url_output

    started = time.monotonic()
    config = config or IngestConfig()
    validate_site(config.site)
    dicom_dir, out_dir = str(dicom_dir), str(out_dir)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and in_process:
        raise ValueError("in_process and a Ray address exclude each other")
    if (view_classifier is None) != (config.view_model is None):
        raise ValueError("config.view_model names the view classifier passed as "
                         "view_classifier: give both or neither (echocmr ingest --view-model)")
    # Absolute local paths: Ray workers (and pool workers) do not share the caller's cwd.
    if storage.is_local(dicom_dir):
        dicom_dir = os.path.abspath(storage.local_path(dicom_dir))
        if not os.path.isdir(dicom_dir):
            raise FileNotFoundError(f"--dicom {dicom_dir} is not a directory")
    if storage.is_local(out_dir):
        out_dir = os.path.abspath(storage.local_path(out_dir))
        lock = exclusive_output(out_dir, "ingest")  # a flock
    else:
        lock = exclusive_url_output(out_dir, "ingest")  # a lease object (shards.lock)
    with lock:
        return _run_locked(dicom_dir, labels_path, out_dir, config=config, views_path=views_path,
                           progress=progress, in_process=in_process, started=started,
                           address=address, view_classifier=view_classifier)


def _run_locked(dicom_dir: str, labels_path, out_dir: str, *, config: IngestConfig,
                views_path, progress: bool, in_process: bool, started: float,
                address: str | None, view_classifier=None) -> IngestSummary:
    """`run_ingest` once it holds ``out_dir``'s lock."""
    import contextlib

    from echocmr.ingest.labels import RULES_ATTR, RULES_FINGERPRINT_ATTR, WARNINGS_ATTR, read_table
    from echocmr.shards import storage
    from echocmr.shards.storage import atomic_write

    key, key_source = resolve_split_key(config.splits.split_key, warn=False)
    if key_source == "demo":
        if is_synthetic_cohort(dicom_dir, labels_path):
            key_source = "demo (synthetic cohort)"
        elif not config.splits.allow_public_demo_key:
            raise demo_key_refusal()
        else:
            log.warning("public demo split key used for data that is not a synthetic cohort "
                        "(--allow-public-demo-key): every patient hash is reversible")
    hasher = KeyedHasher(key, site=config.site, config=config.splits)
    table = read_table(labels_path, config.labels, site=config.site)
    rules_fingerprint = table.attrs[RULES_FINGERPRINT_ATTR]
    cmr = CmrIndex(table, config.pairing)
    views = read_views(None if views_path is None else str(views_path))
    log.info("CMR table: %d rows for %d patients; views for %d instances",
             len(cmr), cmr.n_patients, len(views))

    if storage.is_local(dicom_dir):
        scan = scan_inputs(dicom_dir, exclude=out_dir if storage.is_local(out_dir) else None)
    else:
        scan = scan_url(dicom_dir)
    sources = scan.files
    if not sources:
        raise ValueError(f"--dicom {dicom_dir} holds no readable files"
                         + (f" ({len(scan.skipped)} other path(s) skipped)" if scan.skipped else ""))
    work = WorkCache(storage.join(out_dir, WORK_DIR))
    fingerprint = hashlib.sha256("\0".join([
        CACHE_VERSION, f"format {FORMAT_VERSION}", config.fingerprint(), hasher.fingerprint,
        _file_digest(str(labels_path)), _file_digest(None if views_path is None else str(views_path)),
        _text_engine(config),
    ]).encode()).hexdigest()
    work.prepare(fingerprint)

    entries = scan.entries or {s: entry_id(dicom_dir, s) for s in sources}
    results: dict[str, FileResult] = {}
    done = work.done()
    for source in sources:
        cached = work.load(entries[source]) if entries[source] in done else None
        if cached is not None:
            results[source] = cached
    resumed = len(results)
    todo = [(s, entries[s]) for s in sources if s not in results]
    ctx = WorkerContext(config=config, dicom_dir=dicom_dir, work_dir=work.path, cmr=cmr,
                        views=views, split_key=key, before_file=_test_hook(),
                        view_classifier=view_classifier)
    workers = max(1, config.workers or os.cpu_count() or 1)
    if address is not None:
        from echocmr.ingest.distributed import ray_session

        session = ray_session(address)
        log.info("%d input files (%d done in an earlier run), Ray tasks at %s", len(sources),
                 resumed, address)
    else:
        session = contextlib.nullcontext()
        log.info("%d input files (%d done in an earlier run), %d worker(s)", len(sources),
                 resumed, workers)
    rules_before = _recorded_label_rules(out_dir, config.site)
    if rules_before not in (None, rules_fingerprint):
        log.warning("the shard set in %s had site %s's labels from other cut-offs (%s, now %s): "
                    "it is replaced", out_dir, config.site, rules_before, rules_fingerprint)
    with session:
        results_iter = _run_tasks(ctx, todo, workers, in_process=in_process, progress=progress,
                                  total=len(sources), initial=resumed,
                                  ray_config=config.ray if address is not None else None)
        for result in results_iter:
            results[result.source] = result
        summary, report, ordered, unpaired = _finish_outputs(
            results, sources, scan, entries, work, out_dir, labels_path, config,
            hasher.fingerprint, {config.site: rules_fingerprint}, use_ray=address is not None)

    atomic_write(storage.join(out_dir, INGEST_REPORT_FILE), report)

    rejected = Counter(r.reason for r in ordered if r.status == "rejected")
    unpaired_studies = {r.study_hash for r in unpaired}
    if not config.keep_work_cache:
        work.remove()
    return IngestSummary(
        out=out_dir, files=len(ordered), kept=sum(r.status == "kept" for r in ordered),
        rejected=dict(rejected), clips_per_split=summary.clips,
        unpaired_studies=len(unpaired_studies), label_warnings=dict(table.attrs.get(WARNINGS_ATTR, {})),
        label_rules=dict(table.attrs.get(RULES_ATTR, {})), label_rules_fingerprint=rules_fingerprint,
        label_rules_before=(rules_before if rules_before not in (None, rules_fingerprint)
                            else None),
        shards=summary.shards, resumed_files=resumed, key_source=key_source,
        seconds=time.monotonic() - started,
        text_masked_clips=sum(r.status == "kept" and r.text_boxes > 0 for r in ordered),
        text_boxes=sum(r.text_boxes for r in ordered if r.status == "kept"),
        text_detector=config.text_detector.action if config.text_detector.enabled else "off",
        views=_view_mix(ordered),
    )


def _view_mix(ordered: list[FileResult]) -> ViewMix:
    mix = ViewMix()
    for r in ordered:
        if r.status == "kept":
            meta = r.meta if isinstance(r.meta, dict) else r.meta.to_dict()
            mix.add(meta, disagreement=bool(r.detail and r.detail.startswith(VIEW_DISAGREEMENT)))
    return mix


def _finish_outputs(results: dict[str, FileResult], sources: list[str], scan: Scan,
                    entries: dict[str, str], work: WorkCache, out_dir: str, labels_path,
                    config: IngestConfig, fingerprint: str, label_rules: dict[str, str], *,
                    use_ray: bool):
    """Order every result by source, write the shards; returns (write summary, report bytes,
    ordered results, unpaired results). The report itself is published last, by the caller."""
    from echocmr.shards import storage

    ordered = sorted([results[s] for s in sources] + scan.skipped, key=lambda r: r.source)
    _reject_duplicates(ordered)
    report = _report_bytes(ordered)
    unpaired = [r for r in ordered if r.reason == "no_cmr_within_window"]
    if unpaired and not any(r.paired for r in ordered):
        where = storage.join(out_dir, INGEST_REPORT_FILE)
        storage.atomic_write(where, report)
        raise ValueError(
            f"the label table {labels_path} pairs with no echo study ({len(unpaired)} file(s) "
            f"found no CMR of their patient within +-{config.pairing.window_days} days; report "
            f"in {where}): check that its patient IDs are "
            "the DICOMs' Patient IDs (leading zeros: labels.numeric_patient_ids), that the "
            "dates are right (labels.date_format) and pairing.window_days")
    summary = _write_outputs(ordered, entries, work, out_dir, config, fingerprint, label_rules,
                             use_ray=use_ray)
    return summary, report, ordered, unpaired


TEST_HOOK_ENV = "ECHOCMR_TEST_INGEST"  # test-only: {"delay_s": D, "log": PATH}, see `_TestHook`


@dataclass(frozen=True)
class _TestHook:
    """A test-only `WorkerContext.before_file` hook: note where each file task starts, then sleep.

    Tests of a node dying mid-run need tasks that last (``delay_s``) and need to see which node
    ran (or re-ran) which file: each start appends ``<node id> <source>`` to ``log`` (the Ray
    node's id, ``local`` outside Ray). Read by the driver from ``ECHOCMR_TEST_INGEST`` and
    shipped in the worker context, so a cluster's workers need not share the driver's
    environment. Picklable, so it reaches pool and Ray workers alike.
    """

    delay_s: float = 0.0
    log: str | None = None

    def __call__(self, source: str) -> None:
        if self.log:
            node = "local"
            try:
                import ray

                if ray.is_initialized():
                    node = ray.get_runtime_context().get_node_id()
            except ImportError:
                pass
            with open(self.log, "a") as f:  # one short append per line: lines never interleave
                f.write(f"{node} {source}\n")
        time.sleep(self.delay_s)


def _test_hook() -> _TestHook | None:
    text = os.environ.get(TEST_HOOK_ENV)
    if not text:
        return None
    try:
        spec = json.loads(text)
        return _TestHook(delay_s=float(spec.get("delay_s", 0.0)), log=spec.get("log"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f'{TEST_HOOK_ENV} must be JSON {{"delay_s": D, "log": PATH}}, got '
                         f"{text!r} ({exc})") from None


def _run_tasks(ctx: WorkerContext, todo: list[tuple[str, str]], workers: int, *,
               in_process: bool, progress: bool, total: int, initial: int, ray_config=None):
    """Yield `process_file` results for ``todo``: as Ray tasks when ``ray_config`` is given,
    else in a process pool unless ``in_process``."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc="ingest", unit="file", disable=not progress,
               dynamic_ncols=True)
    try:
        if ray_config is not None:
            from echocmr.ingest.distributed import ray_file_results

            results = ray_file_results(ctx, todo, ray_config)
        elif in_process:
            init_worker(ctx)
            results = map(process_file, todo)
        else:
            results = _pool_results(ctx, todo, workers)
        for result in results:
            yield result
            bar.update()
    finally:
        bar.close()


def _pool_results(ctx: WorkerContext, todo: list[tuple[str, str]], workers: int):
    """Run tasks in a spawn process pool that survives workers dying.

    A decoder that segfaults, or the kernel killing a worker for memory, breaks the pool. The
    files in flight at that moment become suspects: the rest carries on in a fresh pool, then
    each suspect runs alone in a pool of one, so the file that kills its worker is identified and
    rejected (``worker_crashed``) instead of hanging or stopping the job.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn: workers start clean (no threads or locks inherited from pyarrow/pandas).
    mp = multiprocessing.get_context("spawn")
    queue, suspects = list(reversed(todo)), []
    succeeded = 0
    while queue:
        pool = ProcessPoolExecutor(min(workers, len(queue)), mp_context=mp,
                                   initializer=init_worker, initargs=(ctx,))
        in_flight: dict = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * workers:
                    future = pool.submit(process_file, queue[-1])  # may raise: task stays queued
                    in_flight[future] = queue.pop()
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()  # raises BrokenProcessPool when a worker died
                    del in_flight[future]
                    succeeded += 1
                    yield result
        except BrokenProcessPool:
            suspects.extend(in_flight.values())
            log.warning("a worker process died; %d file(s) in flight will be retried one by one",
                        len(in_flight))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    crashes_in_a_row, pool = 0, None
    try:
        for task in suspects:
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=mp, initializer=init_worker,
                                           initargs=(ctx,))
            try:
                result = pool.submit(process_file, task).result()
                crashes_in_a_row = 0
                succeeded += 1
            except BrokenProcessPool:
                pool.shutdown(wait=True)
                pool = None
                crashes_in_a_row += 1
                if not succeeded and crashes_in_a_row >= 3:
                    raise RuntimeError(
                        "ingest worker processes die before finishing any file. If you call "
                        "run_ingest from a script, guard it with `if __name__ == '__main__':` "
                        "(workers are started with multiprocessing's spawn method)."
                    ) from None
                result = FileResult(source=task[0], status="rejected", reason="worker_crashed",
                                    detail=REASONS["worker_crashed"])
                WorkCache(ctx.work_dir).store(task[1], result, None)
            yield result
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _reject_duplicates(results: list[FileResult]) -> None:
    """The same SOP Instance UID in two files: keep the first (by source order)."""
    first: dict[str, str] = {}
    for result in results:
        if result.status != "kept":
            continue
        if result.key in first:
            result.status, result.reason = "rejected", "duplicate_instance"
            result.detail = f"same SOP Instance UID as {first[result.key]}"
            result.key = None
        else:
            first[result.key] = result.source


def _recorded_label_rules(out_dir: str, site: str) -> str | None:
    """The cut-off fingerprint ``out_dir``'s current ``stats.json`` records for ``site``."""
    from echocmr.shards import storage
    from echocmr.shards.format import STATS_FILE

    try:
        stats = json.loads(storage.read_bytes(storage.join(out_dir, STATS_FILE)))
        recorded = stats.get("label_rules") or {}
    except (OSError, ValueError, AttributeError):
        return None
    before = recorded.get(site) if isinstance(recorded, dict) else None
    if before is not None:
        log.info("%s records label cut-offs %s for site %s", STATS_FILE, before, site)
    return before


@dataclass(frozen=True)
class ShardJob:
    """One planned shard to write: its name and its samples' cache entries, in order."""

    out: str
    name: str
    work_dir: str
    # (cache entry, key, KEY.json dict, labels, video sha256) per sample, in shard order
    samples: list[tuple[str, str, dict, list, str]]


def write_shard_job(job: ShardJob) -> str:
    """Write one planned shard from the work cache (in the driver or as a Ray task)."""
    from echocmr.shards.format import Sample
    from echocmr.shards.writer import write_shard

    work = WorkCache(job.work_dir)

    def samples():
        for entry, key, meta, labels, sha in job.samples:
            yield Sample(key=key, video=work.video(entry, sha), meta=meta,
                         labels=np.array([np.nan if v is None else v for v in labels],
                                         dtype=np.float32))

    write_shard(job.out, job.name, samples())
    return job.name


def _write_outputs(results: list[FileResult], entries: dict[str, str], work: WorkCache,
                   out_dir: str, config: IngestConfig, fingerprint: str,
                   label_rules: dict[str, str], *, use_ray: bool):
    """Plan the shards from the results' metadata, write them (Ray tasks, or here), then the
    manifest and stats. Each shard's samples are a range of the sorted list, so who writes which
    shard, and when, changes no byte."""
    from echocmr.shards.format import DEFAULT_CLIP_SIZE, ClipFormat
    from echocmr.shards.writer import SampleRef, ShardSetWriter, WriterConfig

    kept = [r for r in results if r.status == "kept"]
    kept.sort(key=lambda r: (SPLITS.index(r.meta["split"]), r.key))
    clip_format = ClipFormat(height=config.preprocess.size, width=config.preprocess.size,
                             fps=float(config.preprocess.target_fps), codec="vp9",
                             pix_fmt="yuv420p")
    problem = clip_format.gpu_decode_problem()
    if problem is not None:
        log.warning("this shard set will be CPU-only: %s (GPU training and eval refuse it; "
                    "preprocess.size / --clip-size %d is the default)", problem,
                    DEFAULT_CLIP_SIZE)
    writer_config = WriterConfig(samples_per_shard=config.shards.samples_per_shard,
                                 shard_mb=config.shards.shard_mb)
    writer = ShardSetWriter(out_dir, config=writer_config, clip_format=clip_format,
                            split_key_fingerprint=fingerprint, label_rules=label_rules,
                            view_models=None if config.view_model is None
                            else {config.site: config.view_model})
    try:
        by_key = {}
        for result in kept:
            if result.video_bytes is None:
                raise RuntimeError(f"work cache entry {entries[result.source]} has no clip size; "
                                   f"delete {work.path} and rerun")
            mean, std, n = result.pixel_stats
            writer.plan(SampleRef(key=result.key, meta=result.meta, labels=result.label_array(),
                                  video_size=result.video_bytes, video_sha256=result.video_sha256),
                        pixel_stats=(mean, std, int(n)))
            by_key[result.key] = result
        jobs = [ShardJob(out=out_dir, name=name, work_dir=work.path, samples=[
            (entries[by_key[k].source], k, by_key[k].meta, by_key[k].labels,
             by_key[k].video_sha256) for k in keys]) for name, keys in writer.planned.items()]
        if use_ray:
            from echocmr.ingest.distributed import ray_write_shards

            ray_write_shards(jobs, config.ray)
        else:
            for job in jobs:
                write_shard_job(job)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.summary


def _meta_of(r: FileResult) -> dict:
    if r.status != "kept" or r.meta is None:
        return {}
    return r.meta if isinstance(r.meta, dict) else r.meta.to_dict()


def _report_bytes(results: list[FileResult]) -> bytes:
    """``ingest_report.parquet``: one row per input file, sorted by source."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "source": [r.source for r in results],
        "status": [r.status for r in results],
        "reason": [r.reason for r in results],
        "key": [r.key for r in results],
        "detail": [r.detail for r in results],
        **{c: [_meta_of(r).get(c) for r in results]
           for c in ("view", "view_source", "view_confidence")},
    }, schema=pa.schema([("source", pa.string()), ("status", pa.string()),
                         ("reason", pa.string()), ("key", pa.string()), ("detail", pa.string()),
                         ("view", pa.string()), ("view_source", pa.string()),
                         ("view_confidence", pa.float32())]))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
