"""Check a shard set before spending GPU hours on it: ``echocmr shards verify DIR [--decode]``.

`verify` reads every tar front to back once (streaming, one sample in memory) and reports each
problem as a `Problem(shard, sample, what)` instead of stopping at the first. It is exact for the
current format: a set passes only if it is what echocmr's writers write, so nothing the format
does not have (patient text in a header, a column, a metadata block, a file) can ride along.

- the set: ``manifest.parquet`` and ``stats.json`` present and readable, of the format version
  this code reads (an older set must be re-ingested); nothing in the directory but tars,
  indexes, the manifest, stats and the ingest report (no other file, no directory, no leftover
  temporary file; ``allow_extra_files`` makes those warnings); no stray index;
- ``manifest.parquet`` itself (`shards.manifest.manifest_problems`): exactly `MANIFEST_SCHEMA`
  (names, order, types, no field metadata; ``json_sha256`` included: every format-2 set written
  since 2026-12-01 has it, and an older one gets it by a reshard), its key-value metadata exactly
  what the writer puts there, a pyarrow writer string;
- each tar: opens, every member is whole, every member header is byte for byte the one the
  writer writes (one ustar block right after the previous member; owner, group, mode, mtime as
  written; no PAX records, no extended attributes, no global header), only zero bytes pad
  each member's data to its 512-byte block (readers skip them unseen), it ends with the
  end-of-archive blocks (so a tar cut at a member boundary is caught too) and holds nothing after
  them but the zero padding of its last 10 KiB record (bytes appended to a tar are invisible to
  tar readers), and its ``.idx`` equals the index rebuilt from the tar;
- each sample: a valid key, exactly ``.json``, ``.labels`` and ``.webm``; labels are 20 bytes; the
  JSON parses, is serialised exactly as the writer serialises it, names the same key, and the
  split of its shard;
- against the manifest: the same keys in the same shards; every field the ``.json`` shares with
  the manifest (split, site, patient, study, view, frame count, fps) equal, the fps also the
  set's; the ``.labels`` bytes (exactly: a changed bit inside a NaN is caught too), the video's
  size and SHA-256 (a flipped byte inside a clip shows up here without decoding; VP9 decoders
  happily decode damaged streams) and the ``.json`` member's SHA-256 (``json_sha256``, required):
  a changed byte anywhere in a sample; the row's own site, split and hashes well-formed;
- ``stats.json`` against the manifest: the pixel mean/std of train (training normalises with
  them), label prevalence and counts per split, recomputed and compared, and the file's bytes
  exactly the writer's serialisation (a repeated key would hide a value);
- across the set: no key twice, no patient in two splits;
- with ``decode=True``: every clip decodes through DALI's CPU video decoder to the frame count and
  frame size the manifest and stats say (a truncated stream decodes to fewer frames).

What it prints is a log channel: a name it found that is not the format's (a tar member name,
its key part or extension, a ``.json`` field name or ``key`` value, a sample key in a problem's
place) is described by its position and length, never shown (`shards.redact`); the format's own
names are shown as they are. Files in the set's directory are named, so they can be removed.

How it scales: the driver holds nothing per clip. The manifest is read a row group at a time
(`shards.manifest.open_manifest` with ``stream``): the per-sample checks get one shard's rows at
a time (`iter_by_shard`); the set-wide checks (no key twice, no patient in two splits) spill the
key and the patient column to local temporary files in parts by hash
(`shards.streaming.Partitions`, a row group's worth each) and check one part at a time; the
recomputed ``stats.json`` comes from counters fed the same pass (`shards.summary`). Each shard is
one job (`check_shard`), run here or, with ``address``, as a Ray task on a cluster
(`shards.distributed.map_shards`); the problems are assembled in tar order either way, so both
runs report the same list. Reshard checks every sample it copies by the same rules
(`compare_with_manifest`) and then runs `verify_set` on its output without reading the shards it
has just written again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echocmr.shards import storage
from echocmr.shards.distributed import map_shards
from echocmr.shards.format import (
    EXTENSIONS,
    INGEST_REPORT_FILE,
    MANIFEST_FILE,
    META_TEXT_COLUMNS,
    OPTIONAL_META,
    REQUIRED_META,
    SHARD_RE,
    SPLITS,
    STATS_FILE,
    TASKS,
    VENDOR_VOCABULARY,
    ClipFormat,
    FormatVersionError,
    IngestFacts,
    SampleMeta,
    ShardStats,
    check_format_version,
    decode_labels,
    decode_meta,
    encode_labels,
    index_name,
    key_site,
    split_member_name,
    validate_key,
)
from echocmr.shards.index import IndexEntry, format_index, group_members
from echocmr.shards.lock import LOCK_FILE
from echocmr.shards.manifest import (
    decoded,
    iter_batches,
    iter_by_shard,
    manifest_problems,
    open_manifest,
    patients_in_several_splits,
    shard_counts,
)
from echocmr.shards.reader import list_shards, read_stats
from echocmr.shards.redact import hidden, is_sample_key, member, shown_ext, shown_key
from echocmr.shards.stage import MARKER_FILE
from echocmr.shards.stats import VendorViewCounts, compute_stats, stats_json_bytes
from echocmr.shards.streaming import Partitions
from echocmr.shards.summary import ManifestSummary
from echocmr.shards.writer import member_header

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's record size: the archive may be zero-padded to a multiple of it
# echocmr's own files beside a set: the lock a writer or stager holds while it works
# (`shards.lock`), and a staged copy's record of its remote version (`shards.stage`).
_BOOKKEEPING = (LOCK_FILE, MARKER_FILE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STRAY = "\0stray"  # placeholder: a sample its shard's rows lack, resolved by the driver
# The manifest columns a shard's check needs (all but the pixel statistics).
_ROW_COLUMNS = ("key", "shard", *META_TEXT_COLUMNS, "n_frames", "fps", *TASKS, "video_bytes",
                "video_sha256", "json_sha256")
_STATS_COLUMNS = ("split", "site", "patient_hash", "study_hash", *TASKS, "pixel_mean",
                  "pixel_std", "n_pixels")
# What stats.json's view_mix is recomputed from (a set without vendor counts it as unknown).
_VIEW_MIX_COLUMNS = ("view", "vendor")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (shard file, sample key; either may be None) and what."""

    shard: str | None
    sample: str | None
    what: str

    def __str__(self) -> str:
        shown = self.shown()
        where = " ".join(p for p in (shown["shard"], shown["sample"]) if p) or "set"
        return f"{where}: {self.what}"

    def shown(self) -> dict:
        """The problem as it may be printed: a sample that is not a sample key (a tampered
        member name, a manifest key) by its length only (`shards.redact`); ``what`` never
        repeats such a name."""
        sample = None if self.sample is None else shown_key(self.sample)
        return {"shard": self.shard, "sample": sample, "what": self.what}


@dataclass
class VerifyReport:
    """`verify_set`'s answer: ``problems`` (the set is not valid) and ``warnings`` (unknown
    files, when they are allowed)."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class ShardJob:
    """What one shard's check needs: its tar, its manifest rows (Arrow), the set's facts."""

    tar_path: str
    shard: str
    rows: pa.Table
    decode: bool
    clip: dict | None  # stats.json's clip block, when it parses
    fps: float | None  # the set's frame rate


@dataclass
class ShardResult:
    shard: str
    problems: list[Problem]
    missing: list[str]  # keys its rows list that the tar lacks, in row order


def verify(directory: str, decode: bool = False, *, address: str | None = None,
           allow_extra_files: bool = False) -> list[Problem]:
    """All problems found in the shard set at ``directory`` (path or URL); [] when clean.

    ``address`` (a Ray address) checks one shard per Ray task; the problems are the same, in
    the same order. ``allow_extra_files`` turns files that are not the set's into warnings
    (`verify_set` returns them); by default each is a problem."""
    return verify_set(directory, decode, address=address,
                      allow_extra_files=allow_extra_files).problems


def verify_set(directory: str, decode: bool = False, *, address: str | None = None,
               allow_extra_files: bool = False,
               trusted_shards: frozenset[str] = frozenset()) -> VerifyReport:
    """`verify`, with the warnings as well. ``trusted_shards`` are tars whose samples are not
    read again (reshard checked each sample as it wrote them); every other check runs."""
    report = VerifyReport()
    problems = report.problems
    try:
        pf = open_manifest(directory, stream=True)
        stats = read_stats(directory)
        stats_bytes = storage.read_bytes(storage.join(directory, STATS_FILE))
    except (OSError, ValueError) as exc:
        return VerifyReport([Problem(None, None, f"cannot read manifest/stats: {exc}")])
    version_ok = True
    try:
        check_format_version(stats, "the set")
    except FormatVersionError as exc:
        version_ok = False
        problems.append(Problem(None, None, str(exc)))
    if version_ok:
        problems += [Problem(MANIFEST_FILE, None, what)
                     for what in manifest_problems(pf, stats.format_version)]
    tars = list_shards(directory)
    unknown = _listing_problems(directory, {storage.basename(t) for t in tars}, problems)
    (report.warnings if allow_extra_files else problems).extend(unknown)

    clip = None
    try:
        clip = ClipFormat.of_stats(stats).to_dict()
    except ValueError as exc:
        if decode:  # decode anyway: the frame counts can still be checked
            problems.append(Problem(None, None, f"stats.json: {exc}"))
    fps = clip["fps"] if clip else None

    counts = shard_counts(pf)
    by_shard: dict[str, ShardResult] = {}

    def jobs() -> Iterator[ShardJob]:
        tar_of = {storage.basename(t): t for t in tars}
        for shard, rows in iter_by_shard(pf, _ROW_COLUMNS, counts):
            if shard in trusted_shards and shard in tar_of:
                tar_of.pop(shard)
                by_shard[shard] = ShardResult(shard, [], [])
            elif shard in tar_of:
                yield ShardJob(tar_of.pop(shard), shard, rows, decode, clip, fps)
            else:
                missing = rows.column("key").to_pylist()
                by_shard[shard] = ShardResult(shard, [], missing)
        for shard, tar_path in sorted(tar_of.items()):  # tars the manifest does not name
            empty = pa.table({c: pa.array([], type=pa.string()) for c in ("key", "shard")})
            yield ShardJob(tar_path, shard, empty, decode, clip, fps)

    for result in map_shards(check_shard, jobs(), address=address):
        by_shard[result.shard] = result
    problems += _assemble(tars, by_shard, pf)
    repeated, summary, views = _set_wide(pf)
    problems += repeated
    if version_ok:
        problems += _check_stats(summary, views, stats, stats_bytes)
    return report


def _listing_problems(directory: str, tar_names: set[str], problems: list[Problem]
                      ) -> list[Problem]:
    """Stray indexes and badly named tars go to ``problems``; files that are no part of a set
    are returned (problems or warnings, as the caller decides)."""
    unknown = []
    for name, kind in storage.list_entries(directory):
        if kind == "directory":
            unknown.append(Problem(name, None, "a directory in the shard set: a set holds only "
                                   "its tars, indexes, manifest, stats and ingest report"))
        elif name.endswith(".idx") and SHARD_RE.match(name[:-4] + ".tar"):
            if name[:-4] + ".tar" not in tar_names:
                problems.append(Problem(name, None, "index without its tar"))
        elif name.endswith(".tar") and not SHARD_RE.match(name):
            problems.append(Problem(name, None, "tar not named <split>-NNNNNN.tar"))
        elif not SHARD_RE.match(name) and name not in (MANIFEST_FILE, STATS_FILE,
                                                       INGEST_REPORT_FILE, *_BOOKKEEPING):
            what = ("a crashed writer's leftover temporary file: delete it"
                    if name.startswith(".") and storage.TEMP_MARK in name
                    else "not a file of a shard set (only tars, indexes, manifest.parquet, "
                    "stats.json and ingest_report.parquet belong here)")
            unknown.append(Problem(name, None, what))
    return unknown


def _assemble(tars: list[str], by_shard: dict[str, ShardResult],
              pf) -> list[Problem]:
    """Per-tar problems in tar order, with each stray sample resolved against the manifest
    (one pass over its key and shard columns, for all of them)."""
    out = []
    stray_keys = sorted({p.sample for t in tars for p in by_shard[storage.basename(t)].problems
                         if p.what == _STRAY})
    strays: dict[str, str | None] = dict.fromkeys(stray_keys)  # key -> its manifest shard
    if stray_keys:
        wanted = pa.array(stray_keys, pa.string())
        for batch in iter_batches(pf, ("key", "shard")):
            hit = pc.is_in(batch.column(0), value_set=wanted)
            if not pc.any(hit).as_py():
                continue
            found = pa.Table.from_batches([batch]).filter(hit)
            for key, shard in zip(found.column("key").to_pylist(),
                                  decoded(found.column("shard")).to_pylist(), strict=True):
                if strays[key] is None:  # the first row naming the key, as a lookup gives
                    strays[key] = shard
    for tar_path in tars:
        for p in by_shard[storage.basename(tar_path)].problems:
            if p.what != _STRAY:
                out.append(p)
            elif strays[p.sample] is None:
                out.append(Problem(p.shard, p.sample, "sample not in manifest.parquet"))
            else:
                out.append(Problem(p.shard, p.sample, f"manifest puts it in {strays[p.sample]}"))
    tar_names = [storage.basename(t) for t in tars]
    orphans = sorted(set(by_shard) - set(tar_names))
    for shard in tar_names + orphans:
        for key in by_shard[shard].missing:
            if key not in strays:
                out.append(Problem(shard, key, "in manifest.parquet but not found in any tar"))
    return out


def check_shard(job: ShardJob) -> ShardResult:
    """Every check of one tar, its index and its samples against its manifest rows."""
    problems: list[Problem] = []
    rows = job.rows.to_pylist()  # one shard's rows: a few hundred small dicts
    position = {}
    for i, row in enumerate(rows):
        position.setdefault(row["key"], i)
    found: set[str] = set()
    decoder = _decoder(job.clip) if job.decode else None
    for key, members, meta in _check_tar(job.tar_path, job.shard, problems):
        if key in found:
            problems.append(Problem(job.shard, key, "key twice in this tar"))
            continue
        found.add(key)
        i = position.get(key)
        if i is None:
            problems.append(Problem(job.shard, key, _STRAY))
            continue
        problems += compare_with_manifest(job.shard, key, members, meta, rows[i], job.fps)
        if decoder is not None and "webm" in members:
            what = decoder.check(members["webm"], int(rows[i]["n_frames"]))
            if what:
                problems.append(Problem(job.shard, key, what))
    missing = [row["key"] for row in rows if row["key"] not in found]
    return ShardResult(job.shard, problems, missing)


_DECODERS: dict = {}


def _decoder(clip: dict | None):
    """One DALI decoder per process and clip format (building one takes a while)."""
    name = json.dumps(clip, sort_keys=True)
    if name not in _DECODERS:
        _DECODERS[name] = _Decoder(ClipFormat.from_dict(clip) if clip else None)
    return _DECODERS[name]


def _check_stats(manifest: ManifestSummary | None, views: VendorViewCounts | None,
                 typed: ShardStats, stats_bytes: bytes) -> list[Problem]:
    """``stats.json`` must be what the manifest gives (`shards.stats.compute_stats`), written
    byte for byte as the writers write it (`stats_json_bytes`: a duplicated key or extra text
    parses to the same values but is not the format)."""
    stats = typed.to_dict()
    if manifest is None:
        return [Problem(None, None, "stats.json cannot be checked against the manifest: it "
                        f"lacks a column of {list(_STATS_COLUMNS)}")]
    try:
        expected = compute_stats(manifest, clip_format=stats["clip"],
                                 split_key_fingerprint=stats["split_key_fingerprint"],
                                 label_rules=stats.get("label_rules"),
                                 identity_scope=stats.get("identity_scope"),
                                 view_models=stats.get("view_models"),
                                 format_version=stats["format_version"], views=views)
    except (KeyError, TypeError, ValueError) as exc:
        return [Problem(None, None, f"stats.json cannot be checked against the manifest: {exc}")]
    wrong = [k for k in sorted(set(expected) | set(stats))
             if k != "format_version"  # reported on its own, above
             and not _close(expected.get(k), stats.get(k))]
    out = [Problem("stats.json", None, f"{k} does not match the manifest (stats.json "
                   f"{stats.get(k)!r}, manifest gives {expected.get(k)!r})") for k in wrong]
    if not out and stats_bytes != stats_json_bytes(stats):
        out.append(Problem("stats.json", None, "is not serialised as the format writes it "
                           "(indented JSON, keys in order, one trailing newline): extra text, "
                           "a repeated key or changed spacing"))
    return out


def _close(a, b) -> bool:
    """Equal, with floats equal to 1e-6 relative (stats.json rounds to 6 decimals)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return a == b


def _check_tar(
    tar_path: str, shard: str, problems: list[Problem]
) -> Iterator[tuple[str, dict[str, bytes], SampleMeta | None]]:
    """Stream the samples of one tar, recording structural problems; yield (key, members, meta)."""
    split = SHARD_RE.match(shard).group(1)
    index: list[IndexEntry] = []
    end = 0  # end of the last member's padded data
    data_end = 0  # end of the last member's data (its zero padding runs to ``end``)
    key, members, last_key = None, {}, None
    positions: dict[str, int] = {}  # the current sample's members: extension -> member number
    position = 0
    clean = True
    try:
        with storage.open_file(tar_path, "rb") as raw, \
                tarfile.open(fileobj=(f := _SeenBytes(raw)), mode="r|", tarinfo=_RawInfo) as tar:
            for info in tar:
                # The previous member's padding has been read by now (this header follows it).
                data_end = _check_padding(f, tar_path, data_end, end, shard, last_key, problems)
                f.forget(info.offset)
                position += 1
                named = member(position, info.name)  # its name only if it is the format's
                if not info.isreg():
                    problems.append(Problem(shard, None, f"{named} is not a file"))
                    continue
                try:
                    member_key, ext = split_member_name(info.name)
                except ValueError:
                    raise ValueError(f"{named} has no '<key>.<ext>' form") from None
                what = _header_problem(info, end, tar.pax_headers)
                if what:
                    problems.append(Problem(shard, member_key, f"{named}: {what}"))
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(
                        f"{named} is cut short ({len(data)} of {info.size} bytes)"
                    )
                index.append(
                    IndexEntry(ext=ext, offset=info.offset_data, size=info.size, name=info.name)
                )
                data_end = info.offset_data + info.size
                end = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
                if member_key != key:
                    if key is not None:
                        yield key, members, _check_sample(shard, split, key, members, problems,
                                                          positions)
                    key, members, positions = member_key, {}, {}
                last_key = member_key
                if ext in members:
                    problems.append(Problem(shard, member_key, f"{named}: its extension "
                                            f"{shown_ext(ext)} twice in the sample"))
                members[ext] = data
                positions[ext] = position
            _check_padding(f, tar_path, data_end, end, shard, last_key, problems)
    except (tarfile.TarError, OSError, ValueError) as exc:
        clean = False
        after = f" after sample {shown_key(last_key)}" if last_key else ""
        problems.append(Problem(shard, key, f"tar is damaged{after}: {exc}"))
    if key is not None:
        yield key, members, _check_sample(shard, split, key, members, problems, positions)
    if not clean:
        return
    if not index:
        problems.append(Problem(shard, None, "tar holds no samples"))
        return
    trailer = storage.read_range(tar_path, end, 2 * _BLOCK)
    if trailer != b"\0" * (2 * _BLOCK):
        problems.append(
            Problem(
                shard,
                last_key,
                "tar does not end with the end-of-archive blocks (truncated after this sample?)",
            )
        )
    else:
        # After the two zero blocks a tar may only hold zero padding up to its record size.
        size = storage.size(tar_path)
        allowed = -(-(end + 2 * _BLOCK) // _RECORD) * _RECORD
        tail = storage.read_range(tar_path, end + 2 * _BLOCK, min(size - end - 2 * _BLOCK,
                                                                   _RECORD))
        if size > allowed or tail.strip(b"\0"):
            problems.append(Problem(shard, None, f"{size - end - 2 * _BLOCK} byte(s) after the "
                                    "end-of-archive blocks (not zero padding): appended data"))
    idx_path = tar_path[: -len(".tar")] + ".idx"
    if not storage.exists(idx_path):
        problems.append(Problem(index_name(shard), None, "index missing (DALI needs it)"))
    elif storage.read_bytes(idx_path).decode() != format_index(group_members(index)):
        problems.append(Problem(index_name(shard), None, "index does not match its tar"))


class _SeenBytes:
    """A read-only file that keeps the bytes read since `forget` (a member's header, data and
    padding, and tarfile's read-ahead), so that bytes tarfile skips can still be checked."""

    def __init__(self, f) -> None:
        self._f, self._buf, self._start = f, bytearray(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._buf += data
        return data

    def seen(self, start: int, stop: int) -> bytes | None:
        if start < self._start or stop > self._start + len(self._buf):
            return None
        return bytes(self._buf[start - self._start:stop - self._start])

    def forget(self, before: int) -> None:
        drop = max(0, min(before - self._start, len(self._buf)))
        del self._buf[:drop]
        self._start += drop


def _check_padding(f: _SeenBytes, tar_path: str, data_end: int, end: int, shard: str,
                   key: str | None, problems: list[Problem]) -> int:
    """A member's data is followed by zeros up to its 512-byte block: anything else is data
    that no reader shows (a place text could ride along). Returns ``end`` (checked)."""
    if data_end < end:
        padding = f.seen(data_end, end)
        if padding is None:  # not read through this reader (tarfile reads it before the
            padding = storage.read_range(tar_path, data_end, end - data_end)  # next header)
        if padding.strip(b"\0"):
            problems.append(Problem(shard, key, f"bytes that are not zero in the padding after "
                                    f"a member's data (offset {data_end}): hidden data"))
    return end


class _RawInfo(tarfile.TarInfo):
    """A tar header that keeps its 512 raw bytes (``raw``), to compare with the writer's."""

    raw = b""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        info = super().frombuf(buf, encoding, errors)
        info.raw = bytes(buf)
        return info


def _header_problem(info: _RawInfo, expected_offset: int, global_pax: dict) -> str | None:
    """Why this member's header is not exactly the one the writer writes (None if it is):
    one 512-byte ustar block right after the previous member, no PAX or GNU extension records
    (where names, xattrs or any text could hide), owner, group, mode and mtime as written."""
    if global_pax:
        return (f"the tar has global PAX records ({sorted(global_pax)[:5]}), which echocmr "
                "never writes")
    if info.pax_headers:
        return (f"extended (PAX) header records {sorted(info.pax_headers)[:5]}, which echocmr "
                "never writes")
    if info.offset != expected_offset or info.offset_data != info.offset + _BLOCK:
        return ("extra header blocks or bytes before the header (echocmr writes one 512-byte "
                "header right after the previous member)")
    if info.raw != member_header(info.name, info.size):
        # Numbers as they are; a text field only by its name (it may hold patient text).
        fields = [f"{name} {got!r}" if name not in ("uname", "gname") else
                  f"{name} is not {want!r} (its text is not shown)" for name, got, want in (
            ("uname", info.uname, "echocmr"), ("gname", info.gname, "echocmr"),
            ("mode", oct(info.mode), oct(0o444)), ("mtime", info.mtime, 0),
            ("uid", info.uid, 0), ("gid", info.gid, 0)) if got != want]
        detail = ", ".join(fields) if fields else "other header bytes differ"
        return f"header is not the one echocmr writes ({detail})"
    return None


def _check_sample(
    shard: str, split: str, key: str, members: dict[str, bytes], problems: list[Problem],
    positions: dict[str, int] | None = None,
) -> SampleMeta | None:
    """A sample's own checks. Names found in it that are not the format's (its key, an
    extension, a ``.json`` field or ``key`` value) are described by position and length, never
    shown (`shards.redact`): they may be patient text."""
    positions = positions or {}
    try:
        validate_key(key)
    except ValueError:
        first = min(positions.values(), default=None)
        where = f"member {first}" if first is not None else "its members"
        problems.append(Problem(shard, key, f"{where}: the name's key part {hidden(key, 'a key')} is "
                                "not a sample key ('<site>-<16 lower-case hex>', site in "
                                "[a-z0-9_]+)"))
    missing = [ext for ext in EXTENSIONS if ext not in members]
    extra = sorted(set(members) - set(EXTENSIONS), key=lambda e: positions.get(e, 0))
    if missing:
        problems.append(Problem(shard, key, f"missing {', '.join('.' + e for e in missing)}"))
    if extra:
        problems.append(Problem(shard, key, "unexpected " + ", ".join(
            f"member {positions[e]} {shown_ext(e)}" if e in positions else shown_ext(e)
            for e in extra)))
    if "labels" in members:
        try:
            decode_labels(members["labels"])
        except ValueError as exc:
            problems.append(Problem(shard, key, f".labels: {exc}"))
    meta = None
    if "json" in members:
        try:
            data = decode_meta(members["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(Problem(shard, key, f".json does not parse: {exc}"))
        else:
            what = _json_names_problem(data)
            if what:
                problems.append(Problem(shard, key, f".json: {what}"))
            else:
                try:  # its own key, so that a key mismatch is reported as one
                    meta = SampleMeta.from_dict(data)
                except ValueError as exc:
                    problems.append(Problem(shard, key, f".json: {exc}"))
    if meta is not None:
        if meta.key != key:
            problems.append(Problem(shard, key, f".json names key {meta.key!r}"))
        if meta.split != split:
            problems.append(Problem(shard, key, f".json split {meta.split!r} in a {split} shard"))
    return meta


_META_FIELDS = frozenset({"key", *REQUIRED_META, *(f.name for f in fields(IngestFacts)),
                          *OPTIONAL_META})


def _json_names_problem(data: dict) -> str | None:
    """What is wrong with a ``.json`` object's names, said without them: fields that are not
    the format's (by their number in the object and length) or a ``key`` value that is not a
    sample key. None if its names are the format's (`SampleMeta.from_dict` checks the rest)."""
    unknown = [f"field {number} {hidden(name)}" for number, name in enumerate(data, 1)
               if name not in _META_FIELDS]
    if unknown:
        return (f"{len(unknown)} field(s) that are not the format's: {', '.join(unknown[:5])}"
                "; a set from a newer echocmr needs an upgrade, anything else is not a sample "
                "of this format")
    if "key" in data and not is_sample_key(data["key"]):
        return f"its key value {hidden(data['key'], 'a value')} is not a sample key"
    return None


def _same_label(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def compare_with_manifest(
    shard: str, key: str, members: dict[str, bytes], meta: SampleMeta | None, row: dict,
    fps: float | None,
) -> list[Problem]:
    out = []

    def bad(what: str) -> None:
        out.append(Problem(shard, key, what))

    if row["shard"] != shard:
        bad(f"manifest puts it in {row['shard']}")
    for column in ("video_sha256", "json_sha256"):
        value = row.get(column)
        if value is None:
            bad(f"manifest has no {column} for it (every sample of a format-2 set has one)")
        elif not _HEX64.match(value):
            bad(f"manifest {column} {value[:80]!r} is not a SHA-256 (64 lower-case hex)")
    try:
        if key_site(key) != row["site"]:
            bad(f"manifest site {row['site']!r} is not the key's site")
    except ValueError:
        pass  # the key itself is reported by _check_sample
    if row.get("vendor") is not None and row["vendor"] not in VENDOR_VOCABULARY:
        bad("manifest vendor is not a name of the vendor vocabulary (the value is not shown: "
            "it may be patient text)")
    if row["split"] not in SPLITS or row["split"] != SHARD_RE.match(shard).group(1):
        bad(f"manifest split {row['split']!r} for a sample of a {shard.split('-')[0]} shard")
    video = members.get("webm")
    if video is not None:
        if len(video) != row["video_bytes"]:
            bad(f".webm is {len(video)} bytes, manifest says {row['video_bytes']}")
        elif hashlib.sha256(video).hexdigest() != row["video_sha256"]:
            bad(".webm content differs from the manifest's SHA-256 (corrupt clip)")
    if "labels" in members and len(members["labels"]) == 4 * len(TASKS):
        labels = decode_labels(members["labels"])
        expected = [np.nan if row[t] is None else row[t] for t in TASKS]
        wrong = [t for i, t in enumerate(TASKS) if not _same_label(float(labels[i]), expected[i])]
        if wrong:
            bad(f".labels differ from the manifest for {', '.join(wrong)}")
        elif members["labels"] != encode_labels(np.array(expected, np.float32)):
            bad(".labels bytes differ from the manifest's labels (a changed bit in a NaN?)")
    expected_json = row.get("json_sha256")
    if "json" in members and isinstance(expected_json, str):
        if hashlib.sha256(members["json"]).hexdigest() != expected_json:
            bad(".json content differs from the manifest's SHA-256 (json_sha256)")
    if meta is not None:
        if members["json"] != meta.to_json():
            bad(".json is not serialised as the format writes it (key first, the rest sorted, "
                "compact): extra spacing, a repeated key or another number form")
        for name in META_TEXT_COLUMNS:  # a column the set's version lacks is None (null)
            if getattr(meta, name) != row.get(name):
                shown = row.get(name) if name != "vendor" or row.get(name) in (
                    None, *VENDOR_VOCABULARY) else "(not a vendor: not shown)"
                bad(f".json {name} {getattr(meta, name)!r} but manifest {shown!r}")
        if meta.n_frames != row["n_frames"]:
            bad(f".json n_frames {meta.n_frames!r} but manifest {row['n_frames']!r}")
        if row["fps"] is None or float(np.float32(meta.fps)) != row["fps"]:
            bad(f".json fps {meta.fps!r} but manifest {row['fps']!r}")
        if fps is not None and not math.isclose(meta.fps, fps, rel_tol=1e-4):
            bad(f".json fps {meta.fps!r} but the set's clips are {fps} fps (stats.json)")
    return out


def _set_wide(pf) -> tuple[list[Problem], ManifestSummary | None, VendorViewCounts | None]:
    """One pass over the manifest for the set-wide checks: no key twice, no patient in two
    splits (rows spilled by hash of the key and of the patient, `shards.streaming.Partitions`,
    checked one part at a time), and the counters ``stats.json`` is checked against (its
    ``view_mix`` from `VendorViewCounts`, when the manifest has views)."""
    n = pf.metadata.num_rows
    names = set(pf.schema_arrow.names)
    summary = ManifestSummary(n) if names >= set(_STATS_COLUMNS) else None
    views = VendorViewCounts() if {"site", "view"} <= names else None
    with Partitions(n, "key") as keys, Partitions(n, "patient_hash") as patients:
        row = 0
        for batch in iter_batches(pf, ("key", *_STATS_COLUMNS, *_VIEW_MIX_COLUMNS)):
            table = pa.Table.from_batches([batch])
            keys.add(pa.table({"key": decoded(table.column("key")),
                               "row": pa.array(np.arange(row, row + table.num_rows))}))
            patients.add(pa.table({"patient_hash": decoded(table.column("patient_hash")),
                                   "split": decoded(table.column("split"))}))
            if summary is not None:
                summary.add(table.select(list(_STATS_COLUMNS)))
            if views is not None:
                views.add(table)
            row += table.num_rows
        repeated = []  # (first row, key, count): reported in the order the keys first appear
        for part in keys:
            counted = part.group_by("key", use_threads=False).aggregate(
                [("row", "min"), ("row", "count")])
            twice = counted.filter(pc.greater(counted.column("row_count"), 1))
            repeated += zip(twice.column("row_min").to_pylist(), twice.column("key").to_pylist(),
                            twice.column("row_count").to_pylist(), strict=True)
        shared = [item for part in patients for item in patients_in_several_splits(part)]
    out = [Problem(None, key, f"key listed {count} times in manifest.parquet")
           for _, key, count in sorted(repeated)]
    for patient, in_splits in sorted(shared, key=lambda item: str(item[0])):
        out.append(Problem(None, None, f"patient {patient} is in splits {', '.join(in_splits)}"))
    return out, None if summary is None else summary.finish(), views


class _Decoder:
    """DALI CPU video decode of one clip at a time (errors are per clip; the pipeline survives)."""

    def __init__(self, clip: ClipFormat | None) -> None:
        from nvidia.dali import fn, pipeline_def, types

        self.size = clip.size if clip is not None else (None, None)

        @pipeline_def(
            batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True
        )
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.video(encoded, device="cpu")

        self.pipe = pipe()
        self.pipe.build()

    def check(self, video: bytes, n_frames: int) -> str | None:
        """None if the clip decodes to ``n_frames`` frames of the set's size, else what's wrong."""
        self.pipe.feed_input("encoded", [np.frombuffer(video, dtype=np.uint8)])
        try:
            (frames,) = self.pipe.run()
        except Exception as exc:  # DALI raises RuntimeError subclasses with long text
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), "error")
            return f"does not decode: {first.strip()}"
        shape = np.asarray(frames[0]).shape
        if shape[0] != n_frames:
            return f"decodes to {shape[0]} frames, manifest says {n_frames}"
        if None not in self.size and tuple(shape[1:3]) != self.size:
            return (
                f"decodes to {shape[1]}x{shape[2]} frames, the set is {self.size[0]}x{self.size[1]}"
            )
        return None


def format_problems(problems: list[Problem], limit: int = 200) -> str:
    """Problems one per line (at most ``limit``, then a count)."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def summary_line(directory: str, problems: list[Problem], decode: bool) -> str:
    if not problems:
        return f"{directory}: OK{' (every clip decoded)' if decode else ''}"
    shards = {p.shard for p in problems if p.shard}
    return f"{directory}: {len(problems)} problem(s) in {len(shards)} file(s)"


def problems_json(problems: list[Problem]) -> str:
    return json.dumps([p.shown() for p in problems], indent=2)
