"""One planned shard (`ShardJob`: its `PlannedSample` s in order) and the function that writes it
from the work cache (`write_shard_job`: in the driver, or as a Ray task on any node,
`ingest.distributed`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echocmr.ingest.workcache import WorkCache
from echocmr.shards.format import Sample, SampleMeta
from echocmr.shards.writer import write_shard


@dataclass(frozen=True)
class PlannedSample:
    """One kept clip as a shard will hold it; the clip itself stays in the work cache."""

    entry: str  # the work cache entry holding the clip
    meta: SampleMeta  # its KEY.json (``meta.key`` is the sample key)
    labels: np.ndarray  # float32[5] in task order, NaN unknown
    video_sha256: str  # of the clip, checked when it is read back


@dataclass(frozen=True)
class ShardJob:
    """One planned shard to write: its name and its samples, in order."""

    out: str
    name: str
    work_dir: str
    samples: tuple[PlannedSample, ...]


def write_shard_job(job: ShardJob) -> str:
    """Write one planned shard from the work cache (in the driver or as a Ray task)."""
    work = WorkCache(job.work_dir)

    def samples():
        for planned in job.samples:
            yield Sample(key=planned.meta.key, meta=planned.meta, labels=planned.labels,
                         video=work.video(planned.entry, planned.video_sha256))

    write_shard(job.out, job.name, samples())
    return job.name
