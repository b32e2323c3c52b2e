"""The ingest job: a hospital export in, de-identified training shards out.

    echocmr ingest --dicom DIR|URL --labels FILE --out DIR|URL [--site NAME] [--views FILE]
                   [--workers N | --address RAY]

Phases:

1. **Scan** every path under ``--dicom`` (`scan_inputs`): regular files (any name: exports often
   have no extension) are processed, everything else (loops, FIFOs, unreadable directories) gets
   its report row with a reason. An ``s3://`` / ``gs://`` prefix is listed instead (`scan_url`).
2. **Process** each file (`ingest.worker.process_file`) in a process pool (`ingest.pool`), or as
   Ray tasks on a cluster with ``--address`` (`ingest.distributed`; the same function): read and
   check the header, pair the study with a CMR, decode, preprocess, encode VP9. Workers get a
   relative path and return a small `FileResult`; nothing holds the whole dataset. Each result (and its clip) is cached
   atomically under ``OUT/.work/`` (a directory or URL prefix) before it is reported done, so a
   killed run resumes where it stopped.
3. **Write** the kept clips, sorted by (split, key) so the order does not depend on which worker
   finished first: `shards.writer.ShardSetWriter` plans the shards from the metadata, each shard
   is written from the work cache (`ingest.shard_plan`, `ingest.shard_job`: here, or one Ray task
   per shard), then the manifest and stats; then ``ingest_report.parquet`` (`ingest.report`: one
   row per input path, whatever its bytes). Same inputs and config give byte-identical output,
   resumed or not, with or without Ray, on any number of nodes.
4. **Clean up** ``OUT/.work`` (kept when ``keep_work_cache`` is set; it is site-local like the
   report: result files hold the same fields as the report).

Nothing in the logs or the progress bar names a file: source paths can name patients.
"""

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from echocmr.ingest.config import IngestConfig
from echocmr.ingest.distributed import ray_file_results
from echocmr.ingest.inputs import scan_inputs, scan_url
from echocmr.ingest.labels import RULES_ATTR, RULES_FINGERPRINT_ATTR, WARNINGS_ATTR, read_table
from echocmr.ingest.lookup import ViewLookup
from echocmr.ingest.pairing import CmrIndex
from echocmr.ingest.pool import pool_results
from echocmr.ingest.results import PENDING, ResultColumns
from echocmr.ingest.shard_plan import write_outputs
from echocmr.ingest.splits import (
    KeyedHasher,
    demo_key_refusal,
    is_synthetic_cohort,
    resolve_split_key,
)
from echocmr.ingest.summary import IngestSummary
from echocmr.ingest.text_detector import engine_version
from echocmr.ingest.view_table import read_views
from echocmr.ingest.workcache import CACHE_VERSION, WORK_DIR, WorkCache
from echocmr.ingest.worker import WorkerContext, init_worker, process_file
from echocmr.progress import Progress
from echocmr.ray_connect import ray_session
from echocmr.shards import storage
from echocmr.shards.format import FORMAT_VERSION, INGEST_REPORT_FILE, STATS_FILE, validate_site
from echocmr.shards.lock import exclusive_output, exclusive_url_output
from echocmr.shards.reader import read_stats

log = logging.getLogger(__name__)


def _text_engine(config: IngestConfig) -> str:
    """The OCR model's identity when the detector is on: a new model version redoes every file."""
    if not config.text_detector.enabled:
        return "text detector off"
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
    before_file: Callable[[str], None] | None = None,
    view_classifier: Callable | None = None,
) -> IngestSummary:
    """Run the whole job (see the module docstring); returns what it did.

    ``dicom_dir`` is a directory or an ``s3://`` / ``gs://`` prefix; ``out_dir`` a directory or a
    URL prefix (the work cache lives under it). ``address`` (else ``$RAY_ADDRESS``) runs the
    per-file work and the shard writing as Ray tasks on that cluster (`ingest.distributed`);
    without one, files go to a process pool of ``config.workers``, or with ``in_process`` through
    this process (for debugging and quick tests: no start-up cost, but no protection from a
    crashing decoder). The output is byte-identical whichever way it runs.

    ``before_file`` is called in the worker with each file's relative path before the file is
    processed (tracing and fault injection: tests use it to see where tasks run, to make them
    last, or to kill a worker). It travels to pool and Ray workers, so it must be picklable (a
    module-level function or an instance of a module-level class) and importable there.

    ``view_classifier`` (``--view-model``; `ingest.views`) labels each kept clip's view;
    ``config.view_model`` names it (the exact version) for the work cache and stats.json. It
    travels to the workers the same way.
    """

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
                           address=address, before_file=before_file,
                           view_classifier=view_classifier)


def _run_locked(dicom_dir: str, labels_path, out_dir: str, *, config: IngestConfig,
                views_path, progress: bool, in_process: bool, started: float,
                address: str | None,
                before_file: Callable[[str], None] | None,
                view_classifier: Callable | None = None) -> IngestSummary:
    """`run_ingest` once it holds ``out_dir``'s lock."""
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
    view_table = read_views(None if views_path is None else str(views_path), config.views)
    # Compact arrays, not a dict: every worker process gets a copy (`ingest.lookup`).
    views = ViewLookup(view_table.views)
    view_table.views = {}
    if view_table.unknown_rows:
        log.warning("views table: %d row(s) name no known view: their clips are unknown "
                    "(views.unknown)", view_table.unknown_rows)
    log.info("CMR table: %d rows for %d patients; views for %d instances",
             len(cmr), cmr.n_patients, len(views))

    if storage.is_local(dicom_dir):
        scan = scan_inputs(dicom_dir, exclude=out_dir if storage.is_local(out_dir) else None)
    else:
        scan = scan_url(dicom_dir)
    if not scan.files:
        raise ValueError(f"--dicom {dicom_dir} holds no readable files"
                         + (f" ({len(scan.skipped)} other path(s) skipped)" if scan.skipped else ""))
    n_files = len(scan.files)
    work = WorkCache(storage.join(out_dir, WORK_DIR))
    fingerprint = hashlib.sha256("\0".join([
        CACHE_VERSION, f"format {FORMAT_VERSION}", config.fingerprint(), hasher.fingerprint,
        _file_digest(str(labels_path)), _file_digest(None if views_path is None else str(views_path)),
        _text_engine(config),
    ]).encode()).hexdigest()
    work.prepare(fingerprint)

    # Every input's outcome as columns (`ingest.results`), never a result object per file.
    rows = ResultColumns(scan.files, scan.entries, scan.skipped)
    del scan
    resumed = _resume(rows, work)
    ctx = WorkerContext(config=config, dicom_dir=dicom_dir, work_dir=work.path, cmr=cmr,
                        views=views, split_key=key, before_file=before_file,
                        view_classifier=view_classifier)
    workers = max(1, config.workers or os.cpu_count() or 1)
    if address is not None:
        session = ray_session(address)
        log.info("%d input files (%d done in an earlier run), Ray tasks at %s", n_files,
                 resumed, address)
    else:
        session = contextlib.nullcontext()
        log.info("%d input files (%d done in an earlier run), %d worker(s)", n_files,
                 resumed, workers)
    rules_before = _recorded_label_rules(out_dir, config.site)
    if rules_before not in (None, rules_fingerprint):
        log.warning("the shard set in %s had site %s's labels from other cut-offs (%s, now %s): "
                    "it is replaced", out_dir, config.site, rules_before, rules_fingerprint)
    with session:
        results_iter = _run_tasks(ctx, rows.pending(), workers, in_process=in_process,
                                  progress=progress, total=n_files, initial=resumed,
                                  ray_config=config.ray if address is not None else None)
        for result in results_iter:
            rows.add(result)
        summary, report = _finish_outputs(
            rows, work, out_dir, labels_path, config,
            hasher.fingerprint, {config.site: rules_fingerprint}, use_ray=address is not None)

    storage.atomic_write(storage.join(out_dir, INGEST_REPORT_FILE), report)

    if not config.keep_work_cache:
        work.remove()
    masked_clips, masked_boxes = rows.text_masked()
    return IngestSummary(
        out=out_dir, files=len(rows), kept=rows.n_kept,
        rejected=rows.rejected(), clips_per_split=summary.clips,
        unpaired_studies=len(rows.unpaired_studies),
        label_warnings=dict(table.attrs.get(WARNINGS_ATTR, {})),
        label_rules=dict(table.attrs.get(RULES_ATTR, {})), label_rules_fingerprint=rules_fingerprint,
        label_rules_before=(rules_before if rules_before not in (None, rules_fingerprint)
                            else None),
        shards=summary.shards, resumed_files=resumed, key_source=key_source,
        seconds=time.monotonic() - started,
        text_masked_clips=masked_clips, text_boxes=masked_boxes,
        text_detector=config.text_detector.action if config.text_detector.enabled else "off",
        unknown_views=view_table.unknown_rows,
        views=rows.view_mix(),
    )


# Cache entries read back per batch on resume (concurrent reads on an object store).
RESUME_BATCH = 4096


def _resume(rows: ResultColumns, work: WorkCache) -> int:
    """Fill ``rows`` from the work cache of an earlier run: the cache listed one sub-directory
    at a time (`WorkCache.done_groups`), each matched against the files whose entries share its
    prefix, and the results it holds read in batches (concurrently on an object store); returns
    how many files resumed. Memory: one sub-directory's listing and one batch."""
    pending = np.flatnonzero((rows.status == PENDING) & (rows.entries != b""))
    prefixes = rows.entries[pending].astype("S2")
    order = np.argsort(prefixes, kind="stable")
    pending, prefixes = pending[order], prefixes[order]
    resumed = 0
    batch: list[tuple[str, bool]] = []

    def flush() -> int:
        got = 0
        for result in work.load_many(batch):
            if result is not None:
                rows.add(result)
                got += 1
        batch.clear()
        return got

    for prefix, done in work.done_groups():
        if not done:
            continue
        if prefix is None:  # the older flat layout: any file may be there
            candidates = pending
        else:
            key = prefix.encode()
            candidates = pending[np.searchsorted(prefixes, key, "left"):
                                 np.searchsorted(prefixes, key, "right")]
        for i in candidates:
            if rows.status[i] != PENDING:
                continue
            entry = rows.entries[i].decode()
            has_clip = done.get(entry)
            if has_clip is None:
                continue
            batch.append((entry, has_clip))
            if len(batch) >= RESUME_BATCH:
                resumed += flush()
        resumed += flush()
    return resumed


def _finish_outputs(rows: ResultColumns, work: WorkCache, out_dir: str, labels_path,
                    config: IngestConfig, fingerprint: str, label_rules: dict[str, str], *,
                    use_ray: bool):
    """Reject duplicates, write the shards; returns (write summary, report bytes). The report
    itself is published last, by the caller."""
    rows.reject_duplicates()
    report = rows.report_bytes()
    n_unpaired = rows.n_reason("no_cmr_within_window")
    if n_unpaired and not rows.any_paired:
        where = storage.join(out_dir, INGEST_REPORT_FILE)
        storage.atomic_write(where, report)
        raise ValueError(
            f"the label table {labels_path} pairs with no echo study ({n_unpaired} file(s) "
            f"found no CMR of their patient within +-{config.pairing.window_days} days; report "
            f"in {where}): check that its patient IDs are "
            "the DICOMs' Patient IDs (leading zeros: labels.numeric_patient_ids), that the "
            "dates are right (labels.date_format) and pairing.window_days")
    summary = write_outputs(rows.kept_in_plan_order(), work, out_dir, config, fingerprint,
                            label_rules, use_ray=use_ray)
    return summary, report


def _run_tasks(ctx: WorkerContext, todo: list[tuple[str, str]], workers: int, *,
               in_process: bool, progress: bool, total: int, initial: int, ray_config=None):
    """Yield `process_file` results for ``todo``: as Ray tasks when ``ray_config`` is given,
    else in a process pool unless ``in_process``."""
    bar = Progress(total, desc="ingest", unit="file", initial=initial, enabled=progress)
    try:
        if ray_config is not None:
            results = ray_file_results(ctx, todo, ray_config)
        elif in_process:
            init_worker(ctx)
            results = map(process_file, todo)
        else:
            results = pool_results(ctx, todo, workers)
        for result in results:
            yield result
            bar.update()
    finally:
        bar.close()


def _recorded_label_rules(out_dir: str, site: str) -> str | None:
    """The cut-off fingerprint ``out_dir``'s current ``stats.json`` records for ``site``."""
    try:
        recorded = read_stats(out_dir).label_rules or {}
    except (OSError, ValueError, AttributeError):
        return None
    before = recorded.get(site) if isinstance(recorded, dict) else None
    if before is not None:
        log.info("%s records label cut-offs %s for site %s", STATS_FILE, before, site)
    return before
