"""Merge shard sets into one with even shards: ``echocmr shards reshard --input A B --out C``.

Used to add a site (merge the old set with the new site's set) or to fix shard sizes. Every
sample keeps its split; within a split samples from all inputs are shuffled (seeded) and spread so
that every output shard mixes the sites in proportion to their size; shards get equal sample
counts (differing by at most one). The manifest and ``stats.json`` are rebuilt from the inputs'
manifests (train pixel statistics pooled from per-clip values, no decoding).
``ingest_report.parquet`` is never copied: its source paths can name patients and it stays at the
site that made it.

How it streams: the plan (which sample goes to which output shard, in which order) is made from
the manifests and ``.idx`` files alone. Each sample is then fetched by one ranged read of its
input tar (its three members are contiguous) and appended to the output tar, so memory holds the
plan (one small row per clip) and one sample, whatever the data size. Object stores serve ranged
reads natively, so inputs in a bucket work the same way.

Robustness: each output shard is published atomically (tar, then its index); manifest and stats
are written last. A re-run after a crash re-makes the same plan (it depends only on the inputs and
the seed), keeps output shards whose index already lists exactly the planned samples, writes the
rest, and finishes the job. Before it reports success it runs `shards.verify.verify` on the output
and, if anything is wrong, withdraws the manifest and stats and raises.

Mixing rule: within a split and site, samples get a random rank j; their position in the merged
order is ``(j + u) / n_site`` with ``u ~ U(0, 1)``; sorting all samples by position interleaves the
sites evenly (a stratified shuffle), then each output shard is shuffled once more.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from echocmr.errors import EchocmrError
from echocmr.shards import storage
from echocmr.shards.format import (
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    SHARD_RE,
    SPLITS,
    STATS_FILE,
    TASKS,
    ClipFormat,
    FormatVersionError,
    check_format_version,
    index_name,
    shard_name,
)
from echocmr.shards.index import parse_index, sample_keys
from echocmr.shards.reader import read_manifest, read_sample, read_stats
from echocmr.shards.stats import compute_stats, stats_json_bytes
from echocmr.shards.verify import Problem, verify
from echocmr.shards.writer import ShardFile, manifest_bytes, tar_bytes

log = logging.getLogger(__name__)

_BLOCK = 512
_ALLOWED_IN_OUT = {MANIFEST_FILE, STATS_FILE}


class ReshardError(EchocmrError, RuntimeError):
    """Inputs cannot be merged, or the output failed verification."""


@dataclass(kw_only=True)
class ReshardConfig:
    """Output shard size (by count, by size, or both: the larger shard count wins) and seed."""

    samples_per_shard: int | None = None  # default 256 when shard_mb is not given either
    shard_mb: float | None = None
    seed: int = 0
    verify_decode: bool = False  # also decode every output clip through DALI before success
    # Sites left out of the output (train without a site, to validate on it externally).
    exclude_sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.exclude_sites = tuple(self.exclude_sites)
        if self.samples_per_shard is None and self.shard_mb is None:
            self.samples_per_shard = 256
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.shard_mb is not None and not self.shard_mb > 0:
            raise ValueError(f"shard_mb must be positive, got {self.shard_mb}")


@dataclass
class ReshardSummary:
    out: str
    clips: dict[str, int]
    shards: dict[str, int]
    written: int  # shards written by this run (the rest were already complete)
    bytes_read: int
    seconds: float
    problems: list[Problem] = field(default_factory=list)


@dataclass
class _Input:
    directory: str
    stats: dict
    manifest: pd.DataFrame


def check_compatible(inputs: list[_Input]) -> dict:
    """The common stats header of the inputs; raises `ReshardError` saying how they differ, or
    if one is of an older format version (its clips need re-encoding, which reshard cannot do)."""
    first = inputs[0]
    for inp in inputs:
        try:
            check_format_version(inp.stats, f"input {inp.directory}")
        except FormatVersionError as exc:
            raise ReshardError(str(exc)) from exc
    clips = {}
    for inp in inputs:
        try:
            clips[inp.directory] = ClipFormat.of_stats(inp.stats)
        except ValueError as exc:
            raise ReshardError(f"input {inp.directory}: {exc}") from exc

    def describe(getter) -> str:
        return "; ".join(f"{i.directory}: {getter(i)!r}" for i in inputs)

    checks = {
        "format version": lambda i: i.stats.get("format_version"),
        "label set (tasks)": lambda i: tuple(i.stats.get("tasks", ())),
        "split key fingerprint": lambda i: i.stats.get("split_key_fingerprint"),
    }
    for side in ("height", "width", "fps", "codec", "pix_fmt"):
        checks[f"clip {side}"] = lambda i, side=side: getattr(clips[i.directory], side)
    for what, getter in checks.items():
        values = {repr(getter(i)) for i in inputs}
        if len(values) > 1:
            hint = (
                "patients would be split with different keys; re-ingest with the same split key"
                if "split key" in what
                else "re-ingest so all sets share one clip format"
            )
            raise ReshardError(f"inputs disagree on {what} ({describe(getter)}): {hint}")
    if tuple(first.stats.get("tasks", ())) != TASKS:
        raise ReshardError(f"{first.directory}: tasks {first.stats.get('tasks')} are not {TASKS}")
    return {
        "clip": clips[first.directory],
        "split_key_fingerprint": first.stats["split_key_fingerprint"],
        "label_rules": _merge_label_rules(inputs),
    }


def _merge_label_rules(inputs: list[_Input]) -> dict[str, str] | None:
    """The inputs' ``label_rules`` (site -> cut-off fingerprint) in one map; None when no input
    recorded any. Two inputs whose clips of one site were labelled with different cut-offs are
    an error: the merged set would mix two definitions of abnormal T1/T2 for that site."""
    merged: dict[str, tuple[str, str]] = {}
    recorded = False
    for inp in inputs:
        rules = inp.stats.get("label_rules")
        if rules is None:
            continue
        recorded = True
        for site, fingerprint in rules.items():
            previous = merged.setdefault(site, (fingerprint, inp.directory))
            if previous[0] != fingerprint:
                raise ReshardError(
                    f"inputs disagree on the label cut-offs of site {site!r} ({previous[1]}: "
                    f"{previous[0]!r}; {inp.directory}: {fingerprint!r}): re-ingest one of "
                    "them with the other's labels config (labels.cutoff_rules, "
                    "t1_cutoff_ms, t2_cutoff_ms, ...)")
    return {site: fp for site, (fp, _) in sorted(merged.items())} if recorded else None


def _load_inputs(directories: list[str]) -> list[_Input]:
    inputs = []
    for directory in directories:
        try:
            inputs.append(_Input(directory, read_stats(directory), read_manifest(directory)))
        except FileNotFoundError as exc:
            raise ReshardError(str(exc)) from exc
    return inputs


def _locate(inputs: list[_Input]) -> pd.DataFrame:
    """All input rows, with where each sample's bytes are: tar path, byte offset and length."""
    frames = []
    for inp in inputs:
        rows = inp.manifest.copy()
        tars, starts, lengths, sizes = {}, {}, {}, {}
        for shard in sorted(rows["shard"].unique()):
            tar_path = storage.join(inp.directory, shard)
            idx_path = storage.join(inp.directory, index_name(shard))
            try:
                samples = parse_index(storage.read_bytes(idx_path).decode())
            except (OSError, ValueError) as exc:
                raise ReshardError(
                    f"{idx_path}: cannot read the index ({exc}); run "
                    f"`echocmr shards verify {inp.directory}`"
                ) from exc
            for key, members in zip(sample_keys(samples), samples, strict=True):
                first, last = members[0], members[-1]
                tars[key] = tar_path
                starts[key] = first.offset - _BLOCK
                lengths[key] = last.offset + -(-last.size // _BLOCK) * _BLOCK - starts[key]
                sizes[key] = tar_bytes([m.size for m in members])
        missing = set(rows["key"]) - set(tars)
        if missing:
            raise ReshardError(
                f"{inp.directory}: {len(missing)} manifest keys are not in the shard "
                f"indexes (e.g. {sorted(missing)[0]}); run `echocmr shards verify`"
            )
        rows["_tar"] = rows["key"].map(tars)
        rows["_start"] = rows["key"].map(starts).astype("int64")
        rows["_length"] = rows["key"].map(lengths).astype("int64")
        rows["_tar_bytes"] = rows["key"].map(sizes).astype("int64")
        frames.append(rows)
    merged = pd.concat(frames, ignore_index=True)
    dup = merged["key"][merged["key"].duplicated()]
    if len(dup):
        raise ReshardError(
            f"key {dup.iloc[0]} is in more than one input ({len(dup)} duplicate "
            "keys): the same clips were ingested twice; drop one input"
        )
    splits = merged.groupby("patient_hash")["split"].nunique()
    if (splits > 1).any():
        raise ReshardError(
            f"patient {splits[splits > 1].index[0]} is in two splits across the "
            "inputs; were they ingested with different split keys?"
        )
    return merged


def plan(rows: pd.DataFrame, config: ReshardConfig) -> list[tuple[str, pd.DataFrame]]:
    """Output shards as (name, rows in write order), per split, from located input rows."""
    shards = []
    for split_number, split in enumerate(SPLITS):
        part = rows[rows["split"] == split].sort_values("key", kind="stable")
        if part.empty:
            continue
        rng = np.random.default_rng([config.seed, split_number])
        position = np.empty(len(part))
        sites = part["site"].to_numpy()
        for site in sorted(set(sites)):
            where = np.flatnonzero(sites == site)
            rank = rng.permutation(len(where))
            position[where] = (rank + rng.random(len(where))) / len(where)
        part = part.iloc[np.argsort(position, kind="stable")]
        n_shards = _shard_count(part, config)
        base, extra = divmod(len(part), n_shards)
        start = 0
        for number in range(n_shards):
            stop = start + base + (1 if number < extra else 0)
            chunk = part.iloc[start:stop]
            chunk = chunk.iloc[rng.permutation(len(chunk))]
            shards.append((shard_name(split, number), chunk))
            start = stop
    return shards


def _shard_count(part: pd.DataFrame, config: ReshardConfig) -> int:
    counts = [1]
    if config.samples_per_shard:
        counts.append(math.ceil(len(part) / config.samples_per_shard))
    if config.shard_mb:
        total = int(part["_tar_bytes"].sum()) + 2 * _BLOCK
        counts.append(math.ceil(total / (config.shard_mb * 1e6)))
    return min(max(counts), len(part))


def _check_out(out: str, inputs: list[str]) -> None:
    norm = [storage.canonical(i) for i in inputs]
    if storage.canonical(out) in norm:
        raise ReshardError(f"--out {out} is one of the inputs; write to a new directory")
    foreign = [
        n
        for n in storage.listdir(out)
        if n not in _ALLOWED_IN_OUT
        and not SHARD_RE.match(n)
        and not (n.endswith(".idx") and SHARD_RE.match(n[:-4] + ".tar"))
        and not (n.startswith(".") and storage.TEMP_MARK in n)
    ]
    if foreign:
        raise ReshardError(
            f"--out {out} holds files that are not a shard set's ({foreign[:3]}); "
            "reshard into an empty directory (or a previous reshard's output)"
        )


def _already_written(out: str, name: str, chunk: pd.DataFrame) -> bool:
    """True when ``out`` holds this shard from an earlier run of the same plan."""
    tar_path, idx_path = storage.join(out, name), storage.join(out, index_name(name))
    if not (storage.exists(tar_path) and storage.exists(idx_path)):
        return False
    try:
        samples = parse_index(storage.read_bytes(idx_path).decode())
    except (OSError, ValueError):
        return False
    sizes = [tar_bytes([m.size for m in members]) for members in samples]
    return sample_keys(samples) == list(chunk["key"]) and sizes == list(chunk["_tar_bytes"])


def _copy_shard(out: str, name: str, chunk: pd.DataFrame) -> int:
    shard = ShardFile(out, name)
    nbytes = 0
    try:
        for key, tar_path, start, length, sha in zip(
            chunk["key"],
            chunk["_tar"],
            chunk["_start"],
            chunk["_length"],
            chunk["video_sha256"],
            strict=True,
        ):
            members = read_sample(tar_path, int(start), int(length))
            if hashlib.sha256(members.get("webm", b"")).hexdigest() != sha:
                raise ReshardError(
                    f"{tar_path} {key}: clip bytes do not match the input manifest; "
                    f"run `echocmr shards verify` on that input"
                )
            shard.write(key, members)
            nbytes += int(length)
        shard.finish()
    except BaseException:
        shard.discard()
        raise
    return nbytes


def reshard(inputs: list[str], out: str, *, config: ReshardConfig) -> ReshardSummary:
    """Merge the shard sets ``inputs`` into ``out``; see the module docstring."""
    t0 = time.perf_counter()
    if not inputs:
        raise ReshardError("give at least one --input shard set")
    loaded = _load_inputs([str(i) for i in inputs])
    header = check_compatible(loaded)
    rows = _locate(loaded)
    del loaded  # the located rows hold everything the plan needs
    if config.exclude_sites:
        unknown = set(config.exclude_sites) - set(rows["site"].astype(str))
        if unknown:
            raise ReshardError(f"--exclude-site {sorted(unknown)}: the inputs' sites are "
                               f"{sorted(set(rows['site'].astype(str)))}")
        rows = rows[~rows["site"].astype(str).isin(config.exclude_sites)].reset_index(drop=True)
        if rows.empty:
            raise ReshardError("excluding those sites leaves no samples")
        if header["label_rules"] is not None:
            header["label_rules"] = {site: fp for site, fp in header["label_rules"].items()
                                     if site not in config.exclude_sites}
    shards = plan(rows, config)
    del rows

    out = str(out)
    _check_out(out, [str(i) for i in inputs])
    storage.makedirs(out)
    storage.remove_stale_temps(out)
    for name in (MANIFEST_FILE, STATS_FILE):  # the set is incomplete until we finish
        storage.remove(storage.join(out, name))

    written, bytes_read = 0, 0
    for name, chunk in shards:
        if _already_written(out, name, chunk):
            log.info("%s: complete from an earlier run, kept", name)
            continue
        bytes_read += _copy_shard(out, name, chunk)
        written += 1
        log.info("%s: %d samples", name, len(chunk))
    planned = {n for n, _ in shards} | {index_name(n) for n, _ in shards}
    for name in storage.listdir(out):
        stem = name[:-4] + ".tar" if name.endswith(".idx") else name
        if SHARD_RE.match(stem) and name not in planned:
            storage.remove(storage.join(out, name))

    manifest = pd.concat([chunk.assign(shard=name) for name, chunk in shards], ignore_index=True)
    storage.atomic_write(storage.join(out, MANIFEST_FILE), manifest_bytes(manifest))
    stats = compute_stats(
        manifest[list(MANIFEST_COLUMNS)],
        clip_format=header["clip"],
        split_key_fingerprint=header["split_key_fingerprint"],
        label_rules=header["label_rules"],
    )
    storage.atomic_write(storage.join(out, STATS_FILE), stats_json_bytes(stats))

    problems = verify(out, decode=config.verify_decode)
    if problems:
        for name in (MANIFEST_FILE, STATS_FILE):
            storage.remove(storage.join(out, name))
        listing = "\n".join(str(p) for p in problems[:20])
        raise ReshardError(f"the output failed verification; manifest withdrawn:\n{listing}")
    counts = manifest.groupby("split").size()
    return ReshardSummary(
        out=out,
        clips={s: int(counts.get(s, 0)) for s in SPLITS},
        shards={s: sum(1 for n, _ in shards if n.startswith(s + "-")) for s in SPLITS},
        written=written,
        bytes_read=bytes_read,
        seconds=time.perf_counter() - t0,
    )
