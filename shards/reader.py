"""Read a shard set: its manifest, its stats, its shard list, and its samples (streaming).

This is the plain-Python reader (tarfile over fsspec) used by the toolkit, eval and tests. The
DALI graph of training and eval (``read.pipeline``) reads the same tars; the two agree because
both read the format of `shards.format`.

`iter_samples` streams: one tar is open at a time, read front to back, one sample in memory.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator

import pandas as pd
import pyarrow.parquet as pq

from echocmr.errors import EchocmrError
from echocmr.shards import storage
from echocmr.shards.format import (
    EXTENSIONS,
    MANIFEST_FILE,
    OPTIONAL_MANIFEST_COLUMNS,
    SHARD_RE,
    SPLITS,
    STATS_FILE,
    Sample,
    SampleMeta,
    ShardStats,
    decode_labels,
    split_member_name,
)


class IncompleteShardSetError(EchocmrError, FileNotFoundError):
    """The directory lacks the manifest or stats that a finished writer leaves."""


def read_manifest(directory: str) -> pd.DataFrame:
    """``manifest.parquet`` of a set as a DataFrame (one row per clip, in written order)."""
    path = storage.join(directory, MANIFEST_FILE)
    if not storage.exists(path):
        raise IncompleteShardSetError(
            f"{path} not found: {directory} is not a finished shard set (the writer writes the "
            "manifest last; re-run the ingest or reshard that makes it)"
        )
    with storage.open_file(path, "rb") as f:
        manifest = pq.read_table(io.BytesIO(f.read())).to_pandas()
    for column in OPTIONAL_MANIFEST_COLUMNS:
        if column not in manifest.columns:  # a set written before the column existed
            manifest[column] = None
    return manifest


def read_stats(directory: str) -> ShardStats:
    """``stats.json`` of a set, typed (`shards.format.ShardStats`)."""
    path = storage.join(directory, STATS_FILE)
    if not storage.exists(path):
        raise IncompleteShardSetError(f"{path} not found: {directory} is not a finished shard set")
    return ShardStats.from_dict(json.loads(storage.read_bytes(path)), where=str(path))


def list_shards(directory: str, split: str | None = None) -> list[str]:
    """Paths (or URLs) of the set's tars, ordered by split (train, val, test) then number."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    found = []
    for name in storage.listdir(directory):
        match = SHARD_RE.match(name)
        if match and (split is None or match.group(1) == split):
            found.append((SPLITS.index(match.group(1)), int(match.group(2)), name))
    return [storage.join(directory, name) for _, _, name in sorted(found)]


def iter_members(tar_path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {ext: bytes})`` per sample from one tar (consecutive members per key).

    Raises `tarfile.TarError` on a damaged tar; the caller decides (verify reports it).
    """
    with storage.open_file(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key, members = None, {}
        for info in tar:
            if not info.isreg():
                continue
            member_key, ext = split_member_name(info.name)
            data = tar.extractfile(info).read()
            if len(data) != info.size:
                raise tarfile.ReadError(f"{info.name}: unexpected end of data")
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            members[ext] = data
        if key is not None:
            yield key, members


def sample_from_members(key: str, members: dict[str, bytes]) -> Sample:
    """Build a `Sample` from one key's members; raises ValueError if one is missing or its
    ``KEY.json`` is not this format's `SampleMeta` for ``key``."""
    missing = [ext for ext in EXTENSIONS if ext not in members]
    if missing:
        raise ValueError(f"sample {key} lacks {', '.join('.' + m for m in missing)}")
    return Sample(
        key=key,
        video=members["webm"],
        labels=decode_labels(members["labels"]),
        meta=SampleMeta.from_json(members["json"], key=key),
    )


def iter_samples(source: str | Iterable[str], split: str | None = None) -> Iterator[Sample]:
    """Stream samples from a shard set directory/URL (optionally one split) or a list of tars."""
    if isinstance(source, str):
        tars = list_shards(source, split)
        if not tars:
            raise FileNotFoundError(f"no shards{' of split ' + split if split else ''} in {source}")
    else:
        tars = list(source)
    for tar_path in tars:
        for key, members in iter_members(tar_path):
            yield sample_from_members(key, members)


def read_sample(tar_path: str, offset: int, length: int) -> dict[str, bytes]:
    """Members of one sample read by byte range (``offset`` of its first header, ``length``
    up to the end of its last member's padded data), as ``{ext: bytes}``.

    Used by reshard for random access with bounded memory: one ranged read per sample.
    """
    data = storage.read_range(tar_path, offset, length)
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if info.isreg():
                _, ext = split_member_name(info.name)
                members[ext] = tar.extractfile(info).read()
    return members
