"""Ingest on a Ray cluster: the per-file work and the shard writing as Ray tasks.

    echocmr ingest --dicom s3://archive/echo --labels cmr.parquet --out /shared/shards \
        --address auto            # or HOST:PORT, ray://HOST:10001, or $RAY_ADDRESS

The same functions run here as in the local process pool (`ingest.worker.process_file`,
`ingest.shard_job.write_shard_job`); only who calls them differs:

- **Files.** One task per file. It reads the file (a shared path or an object URL), writes the
  clip and its result to the work cache (shared storage or a URL: every node writes there) and
  returns the small `FileResult`; no clip passes through Ray's object store or the driver. The
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
the nodes left (``ray.max_retries``). A file whose worker dies on every try is ``worker_crashed``,
as in the local pool. A killed driver loses nothing either: the rerun resumes from the work cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from echocmr.ingest.config import RayConfig
from echocmr.ingest.reasons import REASONS
from echocmr.ingest.shard_job import ShardJob, write_shard_job
from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.ingest.worker import WorkerContext, init_worker, process_file

log = logging.getLogger(__name__)

_CTX_ID: str | None = None  # the worker context this Ray worker process holds (object ref hex)


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connect to the cluster at ``address`` for the block (a Ray already connected is used as
    it is and left connected)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _process_task(ctx_box: list, task: tuple[str, str]) -> FileResult:
    """One file, in a Ray worker. ``ctx_box`` holds the context's object ref (boxed, so Ray does
    not fetch and unpickle the context for every task)."""
    import ray

    global _CTX_ID
    ref = ctx_box[0]
    if _CTX_ID != ref.hex():
        init_worker(ray.get(ref))
        _CTX_ID = ref.hex()
    return process_file(task)


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
    submitted (the driver never holds a list of an archive's files here)."""
    import ray
    from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError

    queue = iter(todo)
    task = next(queue, None)
    if task is None:
        return
    remote = ray.remote(_process_task).options(**_options(config, memory=True))
    window = config.max_in_flight or max(16, 4 * int(ray.cluster_resources().get("CPU", 1)))
    box = [ray.put(ctx)]
    in_flight: dict = {}
    while task is not None or in_flight:
        while task is not None and len(in_flight) < window:
            in_flight[remote.remote(box, task)] = task
            task = next(queue, None)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            done = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except (WorkerCrashedError, OutOfMemoryError):
                # Every try died (a decoder that segfaults, or the node's OOM killer): the
                # file is the suspect, as in the local pool.
                log.warning("a file's worker died on every try (%d retries): worker_crashed",
                            config.max_retries)
                result = FileResult(source=done[0], status="rejected", reason="worker_crashed",
                                    detail=REASONS["worker_crashed"])
                WorkCache(ctx.work_dir).store(done[1], result, None)
            except RayTaskError as exc:  # process_file catches file errors: this is ours
                raise exc.as_instanceof_cause() from None
            yield result


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
