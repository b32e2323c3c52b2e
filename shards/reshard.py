"""Merge shard sets into one with even shards: ``echocmr shards reshard --input A B --out C``.

Used to add a site (merge the old set with the new site's set) or to fix shard sizes. Every
sample keeps its split; within a split samples from all inputs are shuffled (seeded) and spread so
that every output shard mixes the sites in proportion to their size; shards get equal sample
counts (differing by at most one). The manifest and ``stats.json`` are rebuilt from the inputs'
manifests (train pixel statistics pooled from per-clip values, no decoding).
``ingest_report.parquet`` is never copied: its source paths can name patients and it stays at the
site that made it.

How it streams (the driver holds no Python object, string or number per clip): a first pass
over each input's manifest, a shard at a time, checks its rows against the shard's ``.idx`` and
hands what the plan needs over as numbers (split, site, the key as its site prefix and 16-hex
number, where the row is), which are spilled to local temporary files at once
(`shards.reshard_plan`); patients in two splits are found from the patient column spilled by
hash (`shards.streaming.Partitions`). The plan (which sample goes to which output shard, in
which order) is built from external sorts (`shards.external_sort`: sorted runs on disk, merged):
the rows by key (a repeated key lies next to its copies), each split's rows by their mixing
position, and each row's place in the output by input row, written as a dense file of places.
The driver holds a run of records and one site's permutation within a split (4 bytes a clip of
that site: numpy's shuffle, which fixes the plan). A second pass reads each input row's place
from that file, locates the row in its tar's index and spills it to a local temporary bucket of
whole output shards (`shards.streaming.Buckets`, 65,536 rows each); the buckets are read back in
order, one at a time, and cut into the output shards' rows in write order: each is one copy job
and its rows of ``manifest.parquet``, which is written (staged, published last) and counted for
``stats.json`` (`shards.summary`) as the jobs go. Each job (`_copy_shard`) fetches every sample
by one ranged read of its input tar (its three members are contiguous), checks it against its
input manifest row as it passes (video and ``.json`` SHA-256, label bytes, every ``.json``
field the manifest has: the rules of `shards.verify`) and appends it to the output tar, so a job
holds one sample. Object stores serve ranged reads natively, so inputs in a bucket work the same
way. With ``address`` the jobs are Ray tasks on a cluster (one per output shard,
`shards.distributed.map_shards`); the driver writes the manifest and ``stats.json`` either way,
so a cluster run's output is byte-identical to a local one. The spills need local scratch space
(``$TMPDIR``) about the size of the inputs' manifests uncompressed, and are removed on every
exit path.

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

import contextlib
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
    decoded,
    iter_by_shard,
    open_manifest,
    patients_in_several_splits,
    with_optional_columns,
)
from echocmr.shards.reader import read_sample, read_stats
from echocmr.shards.reshard_plan import ORIGIN_SHIFT, PlannedShard, PlanRows, Repeated
from echocmr.shards.stats import VendorViewCounts, compute_stats, stats_json_bytes
from echocmr.shards.streaming import Buckets, Partitions
from echocmr.shards.summary import ManifestSummary, plain, split_codes
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
            inputs.append(_Input(directory, read_stats(directory),
                                 open_manifest(directory, stream=True)))
        except FileNotFoundError as exc:
            raise ReshardError(str(exc)) from exc
    return inputs


# Output rows per bucket of the spilled, located input rows (whole output shards per bucket).
_BUCKET_ROWS = 65_536
# Records per sorted run of the plan's external sorts (None: `external_sort.RUN_ROWS`).
_RUN_ROWS: int | None = None
_KEY_PATTERN = r"^[a-z0-9_]+-[0-9a-f]{16}$"
_HEX_DIGIT = np.full(256, 0, np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_DIGIT[_c] = _i


def _locations(inp: _Input, shard: str | None, keys: pa.Array, missing: list) -> tuple:
    """Where the samples ``keys`` (rows of ``shard`` in ``inp``'s manifest) are in that shard's
    tar, from its ``.idx``: (tar path, start, length, tar bytes) arrays in the keys' order.
    Keys its index lacks are counted in ``missing`` ([count, least key]) and located at 0."""
    n = len(keys)
    if shard is None:
        _count_missing(missing, keys)
        zero = np.zeros(n, np.int64)
        return "", zero, zero, zero
    tar_path = storage.join(inp.directory, shard)
    idx_path = storage.join(inp.directory, index_name(shard))
    try:
        samples = parse_index(storage.read_bytes(idx_path).decode())
    except (OSError, ValueError) as exc:
        raise ReshardError(
            f"{idx_path}: cannot read the index ({exc}); run "
            f"`echocmr shards verify {inp.directory}`"
        ) from exc
    first = np.array([m[0].offset for m in samples], np.int64) - _BLOCK
    last_end = np.array([m[-1].offset + -(-m[-1].size // _BLOCK) * _BLOCK for m in samples],
                        np.int64)
    sizes = np.array([tar_bytes([m.size for m in members]) for members in samples], np.int64)
    where = pc.index_in(keys, value_set=pa.array(sample_keys(samples), pa.string()))
    if where.null_count:
        _count_missing(missing, keys.filter(pc.is_null(where)))
    take = where.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if not len(samples):
        take = np.zeros(n, np.int64)
        first = last_end = sizes = np.zeros(1, np.int64)
    return tar_path, first[take], (last_end - first)[take], sizes[take]


def _count_missing(missing: list, keys: pa.Array) -> None:
    least = pc.min(keys).as_py()
    missing[0] += len(keys)
    if least is not None and (missing[1] is None or least < missing[1]):
        missing[1] = least


def _raise_missing(inp: _Input, missing: list) -> None:
    if missing[0]:
        raise ReshardError(
            f"{inp.directory}: {missing[0]} manifest keys are not in the shard "
            f"indexes (e.g. {missing[1]}); run `echocmr shards verify`"
        )


def _key_order(keys: pa.Array, prefixes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each key as (prefix code, its 16 hex digits as uint64): sorting by the prefix's name and
    then the number sorts as the key strings do ('-' sorts before every site character)."""
    valid = pc.match_substring_regex(keys, _KEY_PATTERN).fill_null(False)
    if not pc.all(valid).as_py():
        bad = keys.filter(pc.invert(valid))[0].as_py()
        raise ReshardError(f"manifest key {bad!r} is not a sample key (<site>-<16 hex>); run "
                           "`echocmr shards verify` on that input")
    prefix = pc.utf8_slice_codeunits(keys, 0, -17).dictionary_encode()
    lookup = np.array([prefixes.setdefault(p, len(prefixes))
                       for p in prefix.dictionary.to_pylist()], np.int16)
    code = lookup[prefix.indices.to_numpy(zero_copy_only=False)].astype(np.int16)
    digits = pc.utf8_slice_codeunits(keys, -16).cast(pa.large_string())
    n = len(digits)
    offsets = np.frombuffer(digits.buffers()[1], np.int64)[digits.offset:digits.offset + n + 1]
    data = np.frombuffer(digits.buffers()[2], np.uint8)[offsets[0]:offsets[0] + 16 * n]
    nibbles = _HEX_DIGIT[data.reshape(n, 16)]
    number = np.zeros(n, np.uint64)
    for j in range(16):
        number = (number << np.uint64(4)) | nibbles[:, j]
    return code, number


@dataclass
class _Rows:
    """What the scan learnt of the input rows, beside the rows themselves (spilled in
    ``plan_rows``, `shards.reshard_plan`): the site and key prefix names by code and the tar
    bytes per (split, site code)."""

    plan_rows: PlanRows
    site_names: list[str]
    prefix_names: list[str]
    split_bytes: np.ndarray  # tar bytes of the samples per (split, site code)


def _scan(inputs: list[_Input], plan_rows: PlanRows, patients: Partitions) -> _Rows:
    """Read every input's manifest once, a shard at a time: locate its rows in the shard's
    index (each must be there), hand the plan's columns to ``plan_rows`` as numbers (spilled)
    and each row's patient and split to ``patients`` (`_refuse_shared_patients` checks them
    after the repeated keys, which are found when the rows are sorted: `_refuse_duplicates`)."""
    sites: dict[str, int] = {}
    prefixes: dict[str, int] = {}
    split_bytes: dict[tuple[int, int], int] = {}
    for number, inp in enumerate(inputs):
        missing = [0, None]
        for shard, rows in iter_by_shard(inp.manifest, ("key", "split", "site",
                                                        "patient_hash"), row_numbers=True):
            keys = decoded(rows.column("key")).combine_chunks()
            _, _, _, sizes = _locations(inp, shard, keys, missing)
            split = split_codes(rows.column("split"))
            site = plain(rows.column("site"))
            if site.null_count:
                raise ReshardError(f"{inp.directory}: manifest rows of {shard} have no "
                                   "site; run `echocmr shards verify` on that input")
            site = site.dictionary_encode()
            lookup = np.array([sites.setdefault(v, len(sites))
                               for v in site.dictionary.to_pylist()], np.int16)
            prefix, key_number = _key_order(keys, prefixes)
            site_code = lookup[site.indices.to_numpy(zero_copy_only=False)]
            for pair in set(zip(split.tolist(), site_code.tolist(), strict=True)):
                mine = (split == pair[0]) & (site_code == pair[1])
                split_bytes[pair] = split_bytes.get(pair, 0) + int(sizes[mine].sum())
            row = rows.column("_row").to_numpy()
            plan_rows.add(split.astype(np.int8), site_code, prefix, key_number,
                          (np.int64(number) << ORIGIN_SHIFT) | row)
            patients.add(pa.table({"patient_hash": plain(rows.column("patient_hash")),
                                   "split": plain(rows.column("split"))}))
        _raise_missing(inp, missing)
    by_pair = np.zeros((len(SPLITS) + 1, max(len(sites), 1)), np.int64)
    for (split, site), nbytes in split_bytes.items():
        by_pair[split, site] += nbytes  # split -1 (none): the last row, never planned
    return _Rows(plan_rows=plan_rows, site_names=list(sites), prefix_names=list(prefixes),
                 split_bytes=by_pair)


def _refuse_shared_patients(patients: Partitions) -> None:
    """A patient in two splits across the inputs is refused (checked one spilled part at a
    time)."""
    for part in patients:
        shared = patients_in_several_splits(part)
        if shared:
            raise ReshardError(
                f"patient {min(shared, key=lambda x: str(x[0]))[0]} is in two splits "
                "across the inputs; were they ingested with different split keys?"
            )


def _refuse_duplicates(repeated: Repeated | None, prefix_names: list[str]) -> None:
    """A clip (key) in two inputs, or twice in one, is refused, naming the first repeated key
    in input order (found by `PlanRows.sort_by_key`, which sorts every row by key)."""
    if repeated is None:
        return
    raise ReshardError(
        f"key {prefix_names[repeated.prefix]}-{repeated.number:016x} is in more than one input "
        f"({repeated.count} duplicate keys): the same clips were ingested twice; drop one input"
    )


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


def _output_table(chunk: pa.Table, name: str) -> pa.Table:
    """The output manifest rows of one shard (its located input rows in write order, ``shard``
    set to its name)."""
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


_MANIFEST_ROW_GROUP = 65_536


class _ManifestStream:
    """``manifest.parquet`` written while the output shards are planned, in output order, a
    row group at a time into a staged file that `commit` publishes (an error discards it), and
    the counters of ``stats.json`` taken from the same rows. Nothing of the whole output is held
    but the counters."""

    def __init__(self, out: str, n_rows: int) -> None:
        self.summary = ManifestSummary(n_rows)
        self.views = VendorViewCounts()  # stats.json's view_mix, from the same rows
        self._staged = storage.StagedFile(storage.join(out, MANIFEST_FILE))
        self._writer = pq.ParquetWriter(self._staged.file, MANIFEST_SCHEMA, compression="zstd")
        self._pending: list[pa.Table] = []
        self._rows = 0

    def __enter__(self) -> _ManifestStream:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is not None:
            self._writer.close()
            self._staged.discard()
            self.summary.close()

    def add(self, table: pa.Table) -> None:
        self.summary.add(table)
        self.views.add(table)
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= _MANIFEST_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending),
                                     row_group_size=_MANIFEST_ROW_GROUP)
        self._pending, self._rows = [], 0

    def commit(self) -> None:
        self._flush()
        self._writer.close()
        self._staged.commit()


def _located_shards(inputs: list[_Input], shards: list[PlannedShard],
                    plan_rows: PlanRows, buckets: Buckets) -> Iterator[tuple[str, pa.Table]]:
    """``(name, its located input rows in write order)`` per output shard, in plan order.

    Every input row's place in the output is in the plan's places file
    (`shards.reshard_plan.PlanRows.places`); the inputs are read once more a shard at a time,
    each row located in its tar's index and spilled to the bucket of whole output shards that
    holds its place (`shards.streaming.Buckets`, about `_BUCKET_ROWS` rows each); then each
    bucket is read back, sorted by place and cut into its shards. The driver holds one input
    shard's rows, then one bucket."""
    first_row = np.cumsum([0] + [inp.manifest.metadata.num_rows for inp in inputs])
    sizes = np.array([shard.size for shard in shards], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    names = [shard.name for shard in shards]
    bucket_of_shard = np.zeros(len(sizes), np.int64)
    filled = 0
    for k, n in enumerate(sizes.tolist()):
        if filled and filled + n > _BUCKET_ROWS:
            bucket_of_shard[k:] += 1
            filled = 0
        filled += n
    bucket_start = starts[:-1][np.searchsorted(bucket_of_shard, np.arange(
        int(bucket_of_shard[-1]) + 1 if len(sizes) else 0))]
    for number, inp in enumerate(inputs):
        for shard, table in iter_by_shard(inp.manifest, None, row_numbers=True):
            where = plan_rows.places(first_row[number] + table.column("_row").to_numpy())
            inside = where >= 0
            if not inside.any():
                continue
            if not inside.all():
                table, where = table.filter(pa.array(inside)), where[inside]
            # An optional column the input predates (json_sha256; format 2: vendor) is null.
            located = manifest_table(with_optional_columns(table))
            tar, start, length, nbytes = _locations(inp, shard, located.column("key")
                                                    .combine_chunks(), [0, None])
            for name, column in (("_tar", pa.array([tar] * located.num_rows, pa.string())),
                                 ("_start", start), ("_length", length),
                                 ("_tar_bytes", nbytes), ("_place", where)):
                located = located.append_column(name, pa.array(column))
            buckets.add(located, np.searchsorted(bucket_start, where, side="right") - 1)
    plan_rows.close()  # the places are in the buckets now
    for bucket in range(len(bucket_start)):
        table = buckets.read(bucket)
        table = table.take(pc.sort_indices(table.column("_place")))
        offset = int(bucket_start[bucket])
        for k in np.flatnonzero(bucket_of_shard == bucket).tolist():
            yield names[k], table.slice(int(starts[k]) - offset, int(sizes[k]))


def _copy_jobs(out: str, located: Iterator[tuple[str, pa.Table]], fps: float, kept: list[str],
               manifest: _ManifestStream) -> Iterator[CopyJob]:
    for name, chunk in located:
        manifest.add(_output_table(chunk, name))
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
    with contextlib.ExitStack() as scratch:  # the plan's spills, removed on every exit path
        plan_rows = scratch.enter_context(PlanRows(len(SPLITS), run_rows=_RUN_ROWS))
        patients = scratch.enter_context(Partitions(
            sum(inp.manifest.metadata.num_rows for inp in loaded), "patient_hash"))
        rows = _scan(loaded, plan_rows, patients)
        drop = [i for i, s in enumerate(rows.site_names) if s in config.exclude_sites]
        _refuse_duplicates(plan_rows.sort_by_key(np.array(drop, np.int64),
                                                 len(rows.site_names)), rows.prefix_names)
        _refuse_shared_patients(patients)
        patients.close()
        if config.exclude_sites:
            present = sorted(rows.site_names)
            unknown = set(config.exclude_sites) - set(present)
            if unknown:
                raise ReshardError(f"--exclude-site {sorted(unknown)}: the inputs' sites are "
                                   f"{present}")
            if not plan_rows.counts.any():
                raise ReshardError("excluding those sites leaves no samples")
            if header["label_rules"] is not None:
                header["label_rules"] = {site: fp for site, fp in header["label_rules"].items()
                                         if site not in config.exclude_sites}
        kept_sites = np.setdiff1d(np.arange(len(rows.site_names)), drop)
        first_row = np.cumsum([0] + [inp.manifest.metadata.num_rows for inp in loaded])
        shards = plan_rows.plan(
            splits=SPLITS, seed=config.seed, prefix_names=rows.prefix_names,
            site_names=rows.site_names,
            shard_count=lambda n, nbytes: _shard_count(n, nbytes, config),
            split_bytes=lambda split: int(rows.split_bytes[split, kept_sites].sum()),
            shard_name=shard_name, first_row=first_row)
        counts = {s: int(plan_rows.counts[i].sum()) for i, s in enumerate(SPLITS)}
        summary = _write_output(loaded, inputs, out, shards, plan_rows, header, counts,
                                config, address)
    return ReshardSummary(
        out=str(out),
        clips=counts,
        shards={s: sum(1 for p in shards if p.name.startswith(s + "-")) for s in SPLITS},
        written=summary[0],
        bytes_read=summary[1],
        seconds=time.perf_counter() - t0,
    )


def _write_output(loaded: list[_Input], inputs: list[str], out: str,
                  shards: list[PlannedShard], plan_rows: PlanRows, header: dict,
                  counts: dict[str, int], config: ReshardConfig,
                  address: str | None) -> tuple[int, int]:
    """Copy the planned shards into ``out``, write its manifest and stats, verify it; returns
    (shards written, bytes read)."""
    shard_names = [p.name for p in shards]
    out = str(out)
    _check_out(out, [str(i) for i in inputs])
    storage.makedirs(out)
    storage.remove_stale_temps(out)
    for name in (MANIFEST_FILE, STATS_FILE):  # the set is incomplete until we finish
        storage.remove(storage.join(out, name))

    kept: list[str] = []
    written, bytes_read = 0, 0
    with _ManifestStream(out, sum(counts.values())) as manifest, Buckets() as buckets:
        jobs = _copy_jobs(out, _located_shards(loaded, shards, plan_rows, buckets),
                          header["clip"].fps, kept, manifest)
        if address is None:  # through the module attribute, so a test can interrupt a copy
            results = (_copy_shard(job.out, job.name, job) for job in jobs)
        else:
            results = map_shards(_copy_task, jobs, address=address)
        for nbytes in results:
            bytes_read += nbytes
            written += 1
        planned = set(shard_names) | {index_name(n) for n in shard_names}
        for name in storage.listdir(out):
            stem = name[:-4] + ".tar" if name.endswith(".idx") else name
            if SHARD_RE.match(stem) and name not in planned:
                storage.remove(storage.join(out, name))
        manifest.commit()
    stats = compute_stats(  # independent of row order: the output's rows are these rows
        manifest.summary.finish(),
        clip_format=header["clip"],
        split_key_fingerprint=header["split_key_fingerprint"],
        label_rules=header["label_rules"],
        identity_scope=header["identity_scope"],
        view_models=header["view_models"],
        views=manifest.views,
    )
    storage.atomic_write(storage.join(out, STATS_FILE), stats_json_bytes(stats))
    del jobs, results, manifest  # the output's verification reads its own columns
    problems = _verify_output(out, kept, config, address)
    if problems:
        for name in (MANIFEST_FILE, STATS_FILE):
            storage.remove(storage.join(out, name))
        listing = "\n".join(str(p) for p in problems[:20])
        raise ReshardError(f"the output failed verification; manifest withdrawn:\n{listing}")
    return written, bytes_read


def _verify_output(out: str, kept: list[str], config: ReshardConfig,
                   address: str | None) -> list[Problem]:
    """`shards.verify` on the output. The shards this run wrote were checked sample by sample
    as they were written, so only the shards kept from an earlier run are read again, unless
    ``verify_decode`` asks to decode every clip (then every shard is read)."""
    if config.verify_decode:
        return verify(out, decode=True, address=address)
    written = {n for n in storage.listdir(out) if SHARD_RE.match(n)} - set(kept)
    return verify_set(out, address=address, trusted_shards=frozenset(written)).problems
