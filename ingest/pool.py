"""Ingest's local process pool: files processed in worker processes that may die.

A decoder that segfaults, or the kernel killing a worker for memory, must neither hang nor stop
the job: the file that kills its worker is found and rejected ``worker_crashed``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from echocmr.ingest.reasons import REASONS
from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.ingest.worker import WorkerContext, init_worker, process_file

log = logging.getLogger(__name__)


def pool_results(ctx: WorkerContext, todo: list[tuple[str, str]],
                 workers: int) -> Iterator[FileResult]:
    """Run tasks in a spawn process pool that survives workers dying.

    A decoder that segfaults, or the kernel killing a worker for memory, breaks the pool. The
    files in flight at that moment become suspects: the rest carries on in a fresh pool, then
    each suspect runs alone in a pool of one, so the file that kills its worker is identified and
    rejected (``worker_crashed``) instead of hanging or stopping the job.
    """
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
