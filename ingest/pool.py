"""Ingest's local process pool: files processed in worker processes that may die.

A decoder that segfaults, or the kernel killing a worker for memory, must neither hang nor stop
the job: the file that kills its worker is found and rejected ``worker_crashed``.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from echocmr.ingest.reasons import REASONS
from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.ingest.worker import WorkerContext, init_worker, process_file, process_files

log = logging.getLogger(__name__)


# Files per task at most: a task of one file costs the driver ~0.1 ms of pickling and waiting,
# as much as rejecting a non-DICOM file; batches amortise it. Batches start at one file and grow
# as files are handed out, so a small run still spreads its files over every worker.
MAX_BATCH = 32


def pool_results(ctx: WorkerContext, todo: Iterable[tuple[str, str]],
                 workers: int) -> Iterator[FileResult]:
    """Run tasks in a spawn process pool that survives workers dying.

    ``todo`` is consumed as the pool takes work (an iterator: the driver never holds a list of
    an archive's files here), in batches of up to `MAX_BATCH` files per task. A decoder that
    segfaults, or the kernel killing a worker for memory, breaks the pool. The files in flight
    at that moment become suspects: the rest carries on in a fresh pool, then each suspect
    whose result the work cache does not hold runs alone in a pool of one, so the file that
    kills its worker is identified and rejected (``worker_crashed``) instead of hanging or
    stopping the job.
    """
    # spawn: workers start clean (no threads or locks inherited from pyarrow/pandas).
    mp = multiprocessing.get_context("spawn")
    todo = iter(todo)
    suspects: list[tuple[str, str]] = []
    succeeded = handed_out = 0
    exhausted = False
    while not exhausted:
        pool = ProcessPoolExecutor(workers, mp_context=mp, initializer=init_worker,
                                   initargs=(ctx,))
        in_flight: dict = {}
        try:
            while True:
                while not exhausted and len(in_flight) < 2 * workers:
                    size = min(MAX_BATCH, 1 + handed_out // (8 * workers))
                    batch = list(itertools.islice(todo, size))
                    if not batch:
                        exhausted = True
                        break
                    handed_out += len(batch)
                    try:
                        future = pool.submit(process_files, batch)
                    except BrokenProcessPool:
                        suspects.extend(batch)
                        raise
                    in_flight[future] = batch
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    results = future.result()  # raises BrokenProcessPool when a worker died
                    del in_flight[future]
                    succeeded += len(results)
                    yield from results
        except BrokenProcessPool:
            for batch in in_flight.values():
                suspects.extend(batch)
            log.warning("a worker process died; %d file(s) in flight will be retried one by one",
                        sum(map(len, in_flight.values())))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    cache = WorkCache(ctx.work_dir)
    crashes_in_a_row, pool = 0, None
    try:
        for task in suspects:
            done_before = cache.load(task[1])  # finished before its batch's worker died
            if done_before is not None:
                yield done_before
                continue
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
                cache.store(task[1], result, None)
            yield result
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
