"""Merge shard sets into one with even shards: ``echocmr shards reshard --input A B --out C``.

Used to add a site (merge the old set with the new site's set) or to fix shard sizes. Every
sample keeps its split; within a split samples from all inputs are shuffled (seeded) and spread so
that every output shard mixes the sites in proportion to their size; shards get equal sample
counts (differing by at most one). The manifest and ``stats.json`` are rebuilt from the inputs'
manifests (train pixel statistics pooled from per-clip values, no decoding).
``ingest_report.parquet`` is never copied: its source paths can name patients and it stays at the
site that made it.

How it streams: the plan (which sample goes to which output shard, in which order) is made from
the manifests and ``.idx`` files alone, held as Arrow columns (`shards.manifest`; repeated strings
dictionary-encoded, a few hundred bytes per clip, no Python object per clip). Each output shard
is then one job (`_copy_shard`): each of its samples is fetched by one ranged read of its input
tar (its three members are contiguous), checked against its input manifest row as it passes
(video and ``.json`` SHA-256, label bytes, every ``.json`` field the manifest has: the rules of
`shards.verify`) and appended to the output tar, so a job holds one sample. Object stores serve
ranged reads natively, so inputs in a bucket work the same way. With ``address`` the jobs are Ray
tasks on a cluster (one per output shard, `shards.distributed.map_shards`); the driver writes the
manifest (streamed, in output order) and ``stats.json`` from the inputs' columns either way, so a
cluster run's output is byte-identical to a local one.

Robustness: each output shard is published atomically (tar, then its index); manifest and stats
are written last. A re-run after a crash re-makes the same plan (it depends only on the inputs and
the seed), keeps output shards whose index already lists exactly the planned samples, writes the
rest, and finishes the job. Before it reports success it verifies the output
(`shards.verify.verify_set`): the manifest, stats and listing in full, and the shards kept from an
earlier run sample by sample (the shards this run wrote were checked as they were written; with
``verify_decode`` every shard is read and every clip decoded). If anything is wrong it withdraws
the manifest and stats and raises.

Mixing rule: within a split and site, samples get a random rank j; their position in the merged
order is ``(j + u) / n_site`` with ``u ~ U(0, 1)``; sorting all samples by position interleaves the
sites evenly (a stratified shuffle), then each output shard is shuffled once more.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from echocmr.errors import EchocmrError
from echocmr.shards import storage
from echocmr.shards.distributed import map_shards
from echocmr.shards.format import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    SHARD_RE,
    SPLITS,
    STATS_FILE,
    TASKS,
    ClipFormat,
    FormatVersionError,
    SampleMeta,
    ShardStats,
    check_format_version,
    decode_meta,
    index_name,
    shard_name,
)
from echocmr.shards.index import parse_index, sample_keys
from echocmr.shards.manifest import (
    codes_of,
    open_manifest,
    patients_in_several_splits,
    read_columns,
    with_optional_columns,
)
from echocmr.shards.reader import read_sample, read_stats
from echocmr.shards.stats import compute_stats, stats_json_bytes
from echocmr.shards.verify import Problem, compare_with_manifest, verify, verify_set
from echocmr.shards.writer import ShardFile, manifest_table, tar_bytes

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
    stats: ShardStats
    manifest: pq.ParquetFile  # read column by column (`shards.manifest`), never whole as pandas


def check_compatible(inputs: list[_Input]) -> dict:
    """The common stats header of the inputs; raises `ReshardError` saying how they differ, or
    if one is of a format version this code does not read (an older one's clips need
    re-encoding, which reshard cannot do). Readable versions mix: the output is the current
    version, and a column an input predates is null in its rows."""
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

    checks = {  # format versions may differ: every readable one stores its clips alike
        "label set (tasks)": lambda i: tuple(i.stats.tasks),
        "split key fingerprint": lambda i: i.stats.split_key_fingerprint,
        # what names a patient: (site, ID) or the ID alone; a set without it is per-site
        "identity scope": lambda i: i.stats.scope,
    }
    for side in ("height", "width", "fps", "codec", "pix_fmt"):
        checks[f"clip {side}"] = lambda i, side=side: getattr(clips[i.directory], side)
    for what, getter in checks.items():
        values = {repr(getter(i)) for i in inputs}
        if len(values) > 1:
            hint = (
                "patients would be split with different keys; re-ingest with the same split key"
                if "split key" in what
                else "one person would carry two identities (or two people one); re-ingest "
                     "every site with the same splits.identity_scope"
                if "identity scope" in what
                else "re-ingest so all sets share one clip format"
            )
            raise ReshardError(f"inputs disagree on {what} ({describe(getter)}): {hint}")
    if tuple(first.stats.tasks) != TASKS:
        raise ReshardError(f"{first.directory}: tasks {first.stats.tasks} are not {TASKS}")
    return {
        "clip": clips[first.directory],
        "split_key_fingerprint": first.stats.split_key_fingerprint,
        "label_rules": _merge_label_rules(inputs),
        "identity_scope": next((i.stats.identity_scope for i in inputs
                                if i.stats.identity_scope is not None), None),
        "view_models": _merge_view_models(inputs),
    }


def _merge_view_models(inputs: list[_Input]) -> dict[str, str] | None:
    """The inputs' ``view_models`` (site -> the view classifier that labelled its clips) in one
    map; None when no input used one. One site labelled by two classifiers is an error: its
    views would mean two things in the merged set."""
    merged: dict[str, tuple[str, str]] = {}
    for inp in inputs:
        for site, source in (inp.stats.view_models or {}).items():
            previous = merged.setdefault(site, (source, inp.directory))
            if previous[0] != source:
                raise ReshardError(
                    f"inputs disagree on the view classifier of site {site!r} ({previous[1]}: "
                    f"{previous[0]}; {inp.directory}: {source}): re-ingest one of them with the "
                    "other's --view-model")
    return {site: source for site, (source, _) in sorted(merged.items())} or None


def _merge_label_rules(inputs: list[_Input]) -> dict[str, str] | None:
    """The inputs' ``label_rules`` (site -> cut-off fingerprint) in one map; None when no input
    recorded any. Two inputs whose clips of one site were labelled with different cut-offs are
    an error: the merged set would mix two definitions of abnormal T1/T2 for that site."""
    merged: dict[str, tuple[str, str]] = {}
    recorded = False
    for inp in inputs:
        rules = inp.stats.label_rules
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
            inputs.append(_Input(directory, read_stats(directory), open_manifest(directory)))
        except FileNotFoundError as exc:
            raise ReshardError(str(exc)) from exc
    return inputs


# Where a sample's bytes are, per located row (besides its manifest columns).
_LOCATION = ("_tar", "_start", "_length", "_tar_bytes")


def _locate_input(inp: _Input) -> pa.Table:
    """One input's manifest (Arrow, repeated strings dictionary-encoded) with where each
    sample's bytes are: ``_tar`` (path), ``_start``/``_length`` (its byte range, headers
    included) and ``_tar_bytes`` (what it adds to a tar), from the ``.idx`` files alone."""
    rows = with_optional_columns(read_columns(inp.manifest))  # nulls for a column it predates
    keys, tar_codes, starts, lengths, sizes, tar_paths = [], [], [], [], [], []
    _, shards = codes_of(rows.column("shard"))
    for shard in sorted(str(s) for s in shards if s is not None):
        tar_path = storage.join(inp.directory, shard)
        idx_path = storage.join(inp.directory, index_name(shard))
        try:
            samples = parse_index(storage.read_bytes(idx_path).decode())
        except (OSError, ValueError) as exc:
            raise ReshardError(
                f"{idx_path}: cannot read the index ({exc}); run "
                f"`echocmr shards verify {inp.directory}`"
            ) from exc
        # One shard's index as arrays: nothing per sample outlives this loop.
        first = np.array([m[0].offset for m in samples], np.int64) - _BLOCK
        last_end = np.array([m[-1].offset + -(-m[-1].size // _BLOCK) * _BLOCK
                             for m in samples], np.int64)
        keys.append(pa.array(sample_keys(samples), pa.string()))
        tar_codes.append(np.full(len(samples), len(tar_paths), np.int32))
        starts.append(first)
        lengths.append(last_end - first)
        sizes.append(np.array([tar_bytes([m.size for m in members]) for members in samples],
                              np.int64))
        tar_paths.append(tar_path)
    index_keys = pa.chunked_array(keys, pa.string()).combine_chunks() if keys else \
        pa.array([], pa.string())
    where = pc.index_in(rows.column("key"), value_set=index_keys)
    if where.null_count:
        missing = rows.column("key").filter(pc.is_null(where))
        raise ReshardError(
            f"{inp.directory}: {len(missing)} manifest keys are not in the shard "
            f"indexes (e.g. {sorted(missing.to_pylist())[0]}); run `echocmr shards verify`"
        )
    where = where.combine_chunks() if isinstance(where, pa.ChunkedArray) else where
    take = where.to_numpy(zero_copy_only=False)

    def joined(parts, dtype):
        return np.concatenate(parts)[take] if parts else np.array([], dtype)

    tar = pa.DictionaryArray.from_arrays(pa.array(joined(tar_codes, np.int32)),
                                         pa.array(tar_paths, pa.string()))
    for name, column in (("_tar", tar), ("_start", pa.array(joined(starts, np.int64))),
                         ("_length", pa.array(joined(lengths, np.int64))),
                         ("_tar_bytes", pa.array(joined(sizes, np.int64)))):
        rows = rows.append_column(name, column)
    return rows


def _locate(inputs: list[_Input]) -> pa.Table:
    """All input rows, located (`_locate_input`), checked for a clip in two inputs and for a
    patient in two splits across the inputs."""
    merged = _combined([_locate_input(inp) for inp in inputs])
    counted = pc.value_counts(merged.column("key"))
    dup = counted.filter(pc.greater(counted.field("counts"), 1))
    if len(dup):
        raise ReshardError(
            f"key {dup.field('values')[0].as_py()} is in more than one input ({len(dup)} "
            "duplicate keys): the same clips were ingested twice; drop one input"
        )
    shared = patients_in_several_splits(merged)
    if shared:
        raise ReshardError(
            f"patient {shared[0][0]} is in two splits across the "
            "inputs; were they ingested with different split keys?"
        )
    return merged


def _combined(parts: list[pa.Table]) -> pa.Table:
    """The tables' rows in one chunk per column (a `take` from a chunked column costs a pass
    over the whole column), built column by column and releasing the parts as it goes, so the
    peak is one copy plus one column, not two copies."""
    names = parts[0].column_names
    chunks = {n: [c for p in parts for c in p.column(n).chunks] for n in names}
    parts.clear()
    out = {}
    for name in names:
        out[name] = pa.chunked_array(chunks.pop(name)).combine_chunks()
    return pa.table(out)


def plan(rows: pa.Table, config: ReshardConfig) -> list[tuple[str, np.ndarray]]:
    """Output shards as (name, positions in ``rows`` in write order), per split, from located
    input rows (see the module doc for the mixing rule)."""
    shards = []
    split_codes, split_values = codes_of(rows.column("split"))
    site_codes, site_values = codes_of(rows.column("site"))
    sizes = rows.column("_tar_bytes").to_numpy()
    for split_number, split in enumerate(SPLITS):
        if split not in split_values:
            continue
        part = np.flatnonzero(split_codes == split_values.index(split))
        if not len(part):
            continue
        by_key = pc.sort_indices(rows.column("key").take(pa.array(part))).to_numpy()
        part = part[by_key]
        rng = np.random.default_rng([config.seed, split_number])
        position = np.empty(len(part))
        sites = site_codes[part]
        for code in sorted(set(sites.tolist()), key=lambda c: site_values[c]):
            where = np.flatnonzero(sites == code)
            rank = rng.permutation(len(where))
            position[where] = (rank + rng.random(len(where))) / len(where)
        part = part[np.argsort(position, kind="stable")]
        n_shards = _shard_count(len(part), int(sizes[part].sum()), config)
        base, extra = divmod(len(part), n_shards)
        start = 0
        for number in range(n_shards):
            stop = start + base + (1 if number < extra else 0)
            chunk = part[start:stop]
            shards.append((shard_name(split, number), chunk[rng.permutation(len(chunk))]))
            start = stop
    return shards


def _shard_count(n: int, total_tar_bytes: int, config: ReshardConfig) -> int:
    counts = [1]
    if config.samples_per_shard:
        counts.append(math.ceil(n / config.samples_per_shard))
    if config.shard_mb:
        counts.append(math.ceil((total_tar_bytes + 2 * _BLOCK) / (config.shard_mb * 1e6)))
    return min(max(counts), n)


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


def _already_written(out: str, name: str, chunk: pa.Table) -> bool:
    """True when ``out`` holds this shard from an earlier run of the same plan."""
    tar_path, idx_path = storage.join(out, name), storage.join(out, index_name(name))
    if not (storage.exists(tar_path) and storage.exists(idx_path)):
        return False
    try:
        samples = parse_index(storage.read_bytes(idx_path).decode())
    except (OSError, ValueError):
        return False
    sizes = [tar_bytes([m.size for m in members]) for members in samples]
    return (sample_keys(samples) == chunk.column("key").to_pylist()
            and sizes == chunk.column("_tar_bytes").to_pylist())


@dataclass(frozen=True)
class CopyJob:
    """One output shard: its name and its samples' located input rows, in write order."""

    out: str
    name: str
    rows: pa.Table
    fps: float


def _copy_shard(out: str, name: str, job: CopyJob) -> int:
    """Write one output shard from its inputs' bytes (one ranged read per sample), checking
    every sample as it passes (hash while writing): its members must be what the input's
    manifest says (`shards.verify` rules: video and ``.json`` SHA-256, label bytes, every
    ``.json`` field the manifest also has). Returns the bytes read."""
    shard = ShardFile(out, name)
    nbytes = 0
    try:
        for row in job.rows.to_pylist():
            tar_path, key = row["_tar"], row["key"]
            members = read_sample(tar_path, int(row["_start"]), int(row["_length"]))
            try:
                meta = SampleMeta.from_dict(decode_meta(members["json"]), key=key)
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                raise ReshardError(f"{tar_path} {key}: {exc}; run `echocmr shards verify` on "
                                   "that input") from exc
            if row["json_sha256"] is None:  # an input written before the column existed
                row["json_sha256"] = hashlib.sha256(members["json"]).hexdigest()
            problems = compare_with_manifest(row["shard"], key, members, meta, row, job.fps)
            if problems:
                raise ReshardError(
                    f"{tar_path} {key}: {problems[0].what} (the clip's bytes do not match the "
                    "input manifest); run `echocmr shards verify` on that input")
            shard.write(key, members)
            nbytes += int(row["_length"])
        shard.finish()
    except BaseException:
        shard.discard()
        raise
    return nbytes


def _copy_task(job: CopyJob) -> int:
    """`_copy_shard` as a task (`shards.distributed.map_shards`)."""
    return _copy_shard(job.out, job.name, job)


def _output_table(rows: pa.Table, name: str, order: np.ndarray) -> pa.Table:
    """The output manifest rows of one shard (input rows, ``shard`` set to its name)."""
    chunk = rows.take(pa.array(order))
    shard = pa.array([name] * chunk.num_rows, pa.string())
    chunk = chunk.set_column(chunk.column_names.index("shard"), "shard", shard)
    json_sha = chunk.column("json_sha256")
    if json_sha.null_count:  # inputs without the column: hash what the copy read
        chunk = chunk.set_column(chunk.column_names.index("json_sha256"), "json_sha256",
                                 _json_hashes(chunk))
    return manifest_table(chunk)


def _json_hashes(chunk: pa.Table) -> pa.Array:
    out = []
    for row in chunk.select(["key", "_tar", "_start", "_length", "json_sha256"]).to_pylist():
        if row["json_sha256"] is None:
            members = read_sample(row["_tar"], int(row["_start"]), int(row["_length"]))
            row["json_sha256"] = hashlib.sha256(members["json"]).hexdigest()
        out.append(row["json_sha256"])
    return pa.array(out, pa.string())


def _write_manifest(out: str, rows: pa.Table, shards: list[tuple[str, np.ndarray]]) -> None:
    """``manifest.parquet`` in output order, streamed a few shards at a time (no table of the
    whole output is built besides the inputs' own)."""
    with storage.StagedFile(storage.join(out, MANIFEST_FILE)) as staged:
        writer = pq.ParquetWriter(staged.file, MANIFEST_SCHEMA, compression="zstd")
        pending, n = [], 0
        for name, order in shards:
            pending.append(_output_table(rows, name, order))
            n += len(order)
            if n >= _MANIFEST_ROW_GROUP:
                writer.write_table(pa.concat_tables(pending), row_group_size=_MANIFEST_ROW_GROUP)
                pending, n = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=_MANIFEST_ROW_GROUP)
        writer.close()


_MANIFEST_ROW_GROUP = 65_536


def _copy_jobs(out: str, rows: pa.Table, shards: list[tuple[str, np.ndarray]], fps: float,
               kept: list[str]) -> Iterator[CopyJob]:
    for name, order in shards:
        chunk = rows.take(pa.array(order))
        if _already_written(out, name, chunk):
            log.info("%s: complete from an earlier run, kept", name)
            kept.append(name)
            continue
        yield CopyJob(out, name, chunk, fps)


def reshard(inputs: list[str], out: str, *, config: ReshardConfig,
            address: str | None = None) -> ReshardSummary:
    """Merge the shard sets ``inputs`` into ``out``; see the module docstring. ``address`` (a
    Ray address) writes one output shard per Ray task; the output is byte-identical to a local
    run."""
    t0 = time.perf_counter()
    if not inputs:
        raise ReshardError("give at least one --input shard set")
    loaded = _load_inputs([str(i) for i in inputs])
    header = check_compatible(loaded)
    rows = _locate(loaded)
    del loaded  # the located rows hold everything the plan needs
    if config.exclude_sites:
        codes, sites = codes_of(rows.column("site"))
        present = sorted(str(s) for s in sites)
        unknown = set(config.exclude_sites) - set(present)
        if unknown:
            raise ReshardError(f"--exclude-site {sorted(unknown)}: the inputs' sites are "
                               f"{present}")
        drop = [i for i, s in enumerate(sites) if str(s) in config.exclude_sites]
        rows = _combined([rows.filter(pa.array(~np.isin(codes, drop)))])
        if not rows.num_rows:
            raise ReshardError("excluding those sites leaves no samples")
        if header["label_rules"] is not None:
            header["label_rules"] = {site: fp for site, fp in header["label_rules"].items()
                                     if site not in config.exclude_sites}
    shards = plan(rows, config)

    out = str(out)
    _check_out(out, [str(i) for i in inputs])
    storage.makedirs(out)
    storage.remove_stale_temps(out)
    for name in (MANIFEST_FILE, STATS_FILE):  # the set is incomplete until we finish
        storage.remove(storage.join(out, name))

    kept: list[str] = []
    jobs = _copy_jobs(out, rows, shards, header["clip"].fps, kept)
    if address is None:  # through the module attribute, so a test can interrupt a copy
        results = (_copy_shard(job.out, job.name, job) for job in jobs)
    else:
        results = map_shards(_copy_task, jobs, address=address)
    written, bytes_read = 0, 0
    for nbytes in results:
        bytes_read += nbytes
        written += 1
    planned = {n for n, _ in shards} | {index_name(n) for n, _ in shards}
    for name in storage.listdir(out):
        stem = name[:-4] + ".tar" if name.endswith(".idx") else name
        if SHARD_RE.match(stem) and name not in planned:
            storage.remove(storage.join(out, name))

    _write_manifest(out, rows, shards)
    stats = compute_stats(  # independent of row order: the output's rows are these rows
        rows,
        clip_format=header["clip"],
        split_key_fingerprint=header["split_key_fingerprint"],
        label_rules=header["label_rules"],
        identity_scope=header["identity_scope"],
        view_models=header["view_models"],
    )
    storage.atomic_write(storage.join(out, STATS_FILE), stats_json_bytes(stats))
    split_codes, split_values = codes_of(rows.column("split"))
    counts = {s: int(np.count_nonzero(split_codes == split_values.index(s)))
              if s in split_values else 0 for s in SPLITS}
    del rows, split_codes, jobs, results  # the output's verification reads its own columns
    problems = _verify_output(out, kept, config, address)
    if problems:
        for name in (MANIFEST_FILE, STATS_FILE):
            storage.remove(storage.join(out, name))
        listing = "\n".join(str(p) for p in problems[:20])
        raise ReshardError(f"the output failed verification; manifest withdrawn:\n{listing}")
    return ReshardSummary(
        out=out,
        clips=counts,
        shards={s: sum(1 for n, _ in shards if n.startswith(s + "-")) for s in SPLITS},
        written=written,
        bytes_read=bytes_read,
        seconds=time.perf_counter() - t0,
    )


def _verify_output(out: str, kept: list[str], config: ReshardConfig,
                   address: str | None) -> list[Problem]:
    """`shards.verify` on the output. The shards this run wrote were checked sample by sample
    as they were written, so only the shards kept from an earlier run are read again, unless
    ``verify_decode`` asks to decode every clip (then every shard is read)."""
    if config.verify_decode:
        return verify(out, decode=True, address=address)
    written = {n for n in storage.listdir(out) if SHARD_RE.match(n)} - set(kept)
    return verify_set(out, address=address, trusted_shards=frozenset(written)).problems
