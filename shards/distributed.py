"""One task per shard, here or on a Ray cluster: what ``shards verify|reshard --address`` use.

    echocmr shards verify s3://archive/echo --address auto      # or HOST:PORT, $RAY_ADDRESS
    echocmr shards reshard --input A B --out C --address auto

`map_shards` runs a function over a stream of per-shard jobs and yields the results **in job
order**, whether the jobs ran in this process (no address) or as Ray tasks. Callers build their
output from the results in that order, so a run on a cluster writes and prints exactly what the
local run does (tested byte for byte on a two-node cluster). Each job is small (a shard's path
and its manifest rows as an Arrow table, a few KB); what a task reads and writes goes straight
between the task and the storage (a shared path or an object store that every node reaches),
never through the driver. At most ``window`` tasks are in flight, so a set of ten thousand shards
never holds ten thousand task specs or results in the driver.

The shard package imports nothing from the rest of echocmr; `ray` is imported only when an
address is given.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from echocmr.ray_connect import ray_session

J = TypeVar("J")
R = TypeVar("R")


def resolve_address(address: str | None) -> str | None:
    """``address``, else ``$RAY_ADDRESS``, else None (run here, no Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def map_shards(fn: Callable[[J], R], jobs: Iterable[J], *, address: str | None = None,
               window: int | None = None, num_cpus: float = 1,
               max_retries: int = 3) -> Iterator[R]:
    """``fn(job)`` for every job, yielded in the order of ``jobs``: in this process when
    ``address`` is None, else one Ray task per job (``num_cpus`` each, rerun up to
    ``max_retries`` times when a worker dies). ``fn`` must be a module-level function, and
    running it twice on a job must do no harm (a task may rerun after a lost node)."""
    if address is None:
        for job in jobs:
            yield fn(job)
        return
    yield from _ray_map(fn, jobs, address=address, window=window, num_cpus=num_cpus,
                        max_retries=max_retries)


def _ray_map(fn, jobs, *, address, window, num_cpus, max_retries):
    import ray
    from ray.exceptions import RayTaskError

    with ray_session(address):
        remote = ray.remote(fn).options(num_cpus=num_cpus, max_retries=max_retries)
        window = window or max(8, 2 * int(ray.cluster_resources().get("CPU", 1)))
        in_flight: deque = deque()
        source = iter(jobs)
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < window:
                try:
                    job = next(source)
                except StopIteration:
                    exhausted = True
                    break
                in_flight.append(remote.remote(job))
            if not in_flight:
                return
            try:
                result = ray.get(in_flight.popleft())
            except RayTaskError as exc:
                for ref in in_flight:
                    ray.cancel(ref)
                raise exc.as_instanceof_cause() from None
            yield result
