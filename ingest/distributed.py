"""Ingest on a Ray cluster: the per-file work and the shard writing as Ray tasks.

    echocmr ingest --dicom s3://archive/echo --labels cmr.parquet --out /shared/shards \
        --address auto            # or HOST:PORT, ray://HOST:10001, or $RAY_ADDRESS

The same functions run here as in the local process pool (`ingest.worker.process_file`,
`ingest.shard_job.write_shard_job`); only who calls them differs:

- **Files.** One task per batch of files (up to `ingest.pool.MAX_BATCH`, growing from one as
  the run goes). It reads each file (a shared path or an object URL), writes the clip and its
  result to the work cache (shared storage or a URL: every node writes there) and returns the
  small `FileResult` s; no clip passes through Ray's object store or the driver. The
  worker context (config, CMR index, views, split key) is put in the object store once and
  unpacked once per worker process. At most ``ray.max_in_flight`` tasks are submitted ahead, so
  a million-file archive never holds a million task specs in the driver.
- **Shards.** The driver plans every shard from the results' metadata (`shards.writer` `plan`:
  the samples sorted by (split, key), cut exactly as a sequential writer cuts them); each shard is
  then one task that reads its clips from the work cache and writes its tar and ``.idx``. The
  driver writes ``manifest.parquet`` and ``stats.json`` from the metadata alone.

Determinism: a task's output depends only on its file and the config; the final order comes from
the sorted input list, never from completion order; every file is published by an atomic rename
or a single PUT, so a task that ran twice (a node lost after it wrote, before it returned)
publishes the same bytes twice. A worker process or node that dies makes Ray rerun its tasks on
the nodes left (``ray.max_retries``). A batch whose worker dies on every try is split, each file
not yet in the work cache a task of its own; a file whose worker dies on every try is
``worker_crashed``, as in the local pool. A killed driver loses nothing either: the rerun resumes from the work cache.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

from echocmr.ingest.config import RayConfig
from echocmr.ingest.pool import MAX_BATCH
from echocmr.ingest.reasons import REASONS
from echocmr.ingest.shard_job import ShardJob, write_shard_job
from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.ingest.worker import WorkerContext, init_worker, process_files

log = logging.getLogger(__name__)

_CTX_ID: str | None = None  # the worker context this Ray worker process holds (object ref hex)


def _process_task(ctx_box: list, tasks: list[tuple[str, str]]) -> list[FileResult]:
    """A batch of files, in a Ray worker. ``ctx_box`` holds the context's object ref (boxed, so
    Ray does not fetch and unpickle the context for every task)."""
    import ray

    global _CTX_ID
    ref = ctx_box[0]
    if _CTX_ID != ref.hex():
        init_worker(ray.get(ref))
        _CTX_ID = ref.hex()
    return process_files(tasks)


def _shard_task(job: ShardJob) -> str:
    return write_shard_job(job)


def _options(config: RayConfig, *, memory: bool) -> dict:
    options = {"num_cpus": config.cpus_per_task, "max_retries": config.max_retries}
    if memory and config.memory_mb_per_task is not None:
        options["memory"] = config.memory_mb_per_task * 1024 * 1024
    return options


def ray_file_results(ctx: WorkerContext, todo: Iterable[tuple[str, str]],
                     config: RayConfig) -> Iterator[FileResult]:
    """Yield the `process_file` result of every ``(source, entry)`` in ``todo``, run as Ray
    tasks, in completion order (the caller orders them). ``todo`` is consumed as tasks are
    submitted (the driver never holds a list of an archive's files here), in batches of up to
    `ingest.pool.MAX_BATCH` files per task (one at first, growing as the run goes). A batch
    whose worker dies on every try is split: each of its files not in the work cache runs
    again as a task of its own, so the file that kills its worker is found and rejected
    (``worker_crashed``), as in the local pool."""
    import ray
    from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError

    queue = iter(todo)
    remote = None
    window = config.max_in_flight
    box: list = []
    singles: list[tuple[str, str]] = []  # files of a crashed batch, each to run alone
    in_flight: dict = {}
    handed_out = 0
    cache = WorkCache(ctx.work_dir)
    while True:
        while window is None or len(in_flight) < window:
            if singles:
                batch = [singles.pop()]
            else:
                size = min(MAX_BATCH, 1 + handed_out // 64)
                batch = list(itertools.islice(queue, size))
                if not batch:
                    break
                handed_out += len(batch)
            if remote is None:  # the first task: connect the context and the window
                remote = ray.remote(_process_task).options(**_options(config, memory=True))
                window = window or max(16, 4 * int(ray.cluster_resources().get("CPU", 1)))
                box.append(ray.put(ctx))
            in_flight[remote.remote(box, batch)] = batch
        if not in_flight:
            return
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            batch = in_flight.pop(ref)
            try:
                results = ray.get(ref)
            except (WorkerCrashedError, OutOfMemoryError):
                # Every try died (a decoder that segfaults, or the node's OOM killer).
                if len(batch) > 1:
                    log.warning("a batch's worker died on every try (%d retries): its %d "
                                "file(s) run one by one", config.max_retries, len(batch))
                    for task in batch:
                        done = cache.load(task[1])
                        if done is not None:
                            yield done
                        else:
                            singles.append(task)
                    continue
                log.warning("a file's worker died on every try (%d retries): worker_crashed",
                            config.max_retries)
                results = [FileResult(source=batch[0][0], status="rejected",
                                      reason="worker_crashed", detail=REASONS["worker_crashed"])]
                cache.store(batch[0][1], results[0], None)
            except RayTaskError as exc:  # process_file catches file errors: this is ours
                raise exc.as_instanceof_cause() from None
            yield from results


def ray_write_shards(jobs: list[ShardJob], config: RayConfig) -> None:
    """Write every planned shard as its own Ray task; returns when all are written."""
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(_shard_task).options(**_options(config, memory=False))
    refs = [remote.remote(job) for job in jobs]
    try:
        ray.get(refs)
    except RayTaskError as exc:
        raise exc.as_instanceof_cause() from None
