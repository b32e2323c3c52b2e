"""One planned shard (`ShardJob`) and the function that writes it from the work cache
(`write_shard_job`: in the driver, or as a Ray task on any node, `ingest.distributed`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echocmr.ingest.workcache import WorkCache
from echocmr.shards.format import Sample
from echocmr.shards.writer import write_shard


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
    work = WorkCache(job.work_dir)

    def samples():
        for entry, key, meta, labels, sha in job.samples:
            yield Sample(key=key, video=work.video(entry, sha), meta=meta,
                         labels=np.array([np.nan if v is None else v for v in labels],
                                         dtype=np.float32))

    write_shard(job.out, job.name, samples())
    return job.name
