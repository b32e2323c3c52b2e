"""The shards of a run, planned from the kept files' metadata and written from the work cache.

The driver sorts the kept clips by (split, key) and plans every shard (`shards.writer`'s ``plan``:
cut exactly as a sequential writer cuts them); each planned shard is a `ShardJob` that
`write_shard_job` writes from the work cache, here or as a Ray task (`ingest.distributed`). Each
shard's samples are a range of the sorted list, so who writes which shard, and when, changes no
byte.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from echocmr.ingest.config import IngestConfig
from echocmr.ingest.distributed import ray_write_shards
from echocmr.ingest.shard_job import PlannedSample, ShardJob, write_shard_job
from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.shards.format import DEFAULT_CLIP_SIZE, ClipFormat
from echocmr.shards.writer import SampleRef, ShardSetWriter, WriterConfig

log = logging.getLogger(__name__)


def write_outputs(kept: Iterable[tuple[str, FileResult]], work: WorkCache,
                  out_dir: str, config: IngestConfig, fingerprint: str,
                  label_rules: dict[str, str], *, use_ray: bool):
    """Plan the shards from the kept results' metadata, ``(cache entry, result)`` sorted by
    (split, key) (`ingest.results.ResultColumns.kept_in_plan_order`), write them (Ray tasks, or
    here), then the manifest and stats. Each shard's samples are a range of the sorted list, so
    who writes which shard, and when, changes no byte."""
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
                            identity_scope=config.splits.identity_scope,
                            view_models=None if config.view_model is None
                            else {config.site: config.view_model})
    try:
        planned: dict[str, PlannedSample] = {}
        for entry, result in kept:
            if result.video_bytes is None:
                raise RuntimeError(f"work cache entry {entry} has no clip size; "
                                   f"delete {work.path} and rerun")
            mean, std, n = result.pixel_stats
            sample = PlannedSample(entry=entry, meta=result.meta,
                                   labels=result.label_array(), video_sha256=result.video_sha256)
            writer.plan(SampleRef(key=result.key, meta=sample.meta, labels=sample.labels,
                                  video_size=result.video_bytes, video_sha256=sample.video_sha256),
                        pixel_stats=(mean, std, int(n)))
            planned[result.key] = sample
        jobs = [ShardJob(out=out_dir, name=name, work_dir=work.path,
                         samples=tuple(planned[k] for k in keys))
                for name, keys in writer.planned.items()]
        if use_ray:
            ray_write_shards(jobs, config.ray)
        else:
            for job in jobs:
                write_shard_job(job)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.summary
