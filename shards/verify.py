"""Check a shard set before spending GPU hours on it: ``echocmr shards verify DIR [--decode]``.

`verify` reads every tar front to back once (streaming, one sample in memory) and reports each
problem as a `Problem(shard, sample, what)` instead of stopping at the first:

- the set: ``manifest.parquet`` and ``stats.json`` present and readable, of the format version
  this code reads (an older set must be re-ingested); no stray index;
- each tar: opens, every member is whole, it ends with the end-of-archive blocks (so a tar cut at a
  member boundary is caught too) and holds nothing after them but the zero padding of its last
  10 KiB record (bytes appended to a tar are invisible to tar readers), and its ``.idx`` equals
  the index rebuilt from the tar;
- each sample: a valid key, exactly ``.json``, ``.labels`` and ``.webm``; labels are 20 bytes; the
  JSON parses and names the same key, and the split of its shard;
- against the manifest: the same keys in the same shards; split, site, patient, study, frame
  count, the ``.labels`` bytes (exactly: a changed bit inside a NaN is caught too), the video's
  size and SHA-256 (a flipped byte inside a clip shows up here without decoding; VP9 decoders
  happily decode damaged streams) and the ``.json`` member's SHA-256 (``json_sha256``; sets
  written before that column existed skip this check): a changed byte anywhere in a sample;
- ``stats.json`` against the manifest: the pixel mean/std of train (training normalises with
  them), label prevalence and counts per split, recomputed and compared;
- across the set: no key twice, no patient in two splits;
- with ``decode=True``: every clip decodes through DALI's CPU video decoder to the frame count and
  frame size the manifest and stats say (a truncated stream decodes to fewer frames).

Reshard runs the same function on its output before it reports success.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from echocmr.shards import storage
from echocmr.shards.format import (
    EXTENSIONS,
    SHARD_RE,
    TASKS,
    ClipFormat,
    FormatVersionError,
    SampleMeta,
    check_format_version,
    decode_labels,
    decode_meta,
    encode_labels,
    index_name,
    split_member_name,
    validate_key,
)
from echocmr.shards.index import IndexEntry, format_index, group_members
from echocmr.shards.reader import list_shards, read_manifest, read_stats
from echocmr.shards.stats import compute_stats

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's record size: the archive may be zero-padded to a multiple of it


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (shard file, sample key; either may be None) and what."""

    shard: str | None
    sample: str | None
    what: str

    def __str__(self) -> str:
        where = " ".join(p for p in (self.shard, self.sample) if p) or "set"
        return f"{where}: {self.what}"


def verify(directory: str, decode: bool = False) -> list[Problem]:
    """All problems found in the shard set at ``directory`` (path or URL); [] when clean."""
    problems: list[Problem] = []
    try:
        manifest = read_manifest(directory)
        stats = read_stats(directory)
    except (OSError, ValueError) as exc:
        return [Problem(None, None, f"cannot read manifest/stats: {exc}")]
    try:
        check_format_version(stats, "the set")
    except FormatVersionError as exc:
        problems.append(Problem(None, None, str(exc)))
    names = storage.listdir(directory)
    tars = list_shards(directory)
    tar_names = {storage.basename(t) for t in tars}
    for name in names:
        if name.endswith(".idx") and name[:-4] + ".tar" not in tar_names:
            problems.append(Problem(name, None, "index without its tar"))
        elif name.endswith(".tar") and not SHARD_RE.match(name):
            problems.append(Problem(name, None, "tar not named <split>-NNNNNN.tar"))

    rows = _Rows(manifest)
    decoder = None
    if decode:
        try:
            decoder = _Decoder(ClipFormat.of_stats(stats))
        except ValueError as exc:  # decode anyway: the frame counts can still be checked
            problems.append(Problem(None, None, f"stats.json: {exc}"))
            decoder = _Decoder(None)
    seen: dict[str, str] = {}  # key -> shard it was found in
    for tar_path in tars:
        shard = storage.basename(tar_path)
        for key, members, meta in _check_tar(tar_path, shard, problems):
            if key in seen:
                problems.append(Problem(shard, key, f"key also in {seen[key]}"))
                continue
            seen[key] = shard
            row = rows.get(key)
            if row is None:
                problems.append(Problem(shard, key, "sample not in manifest.parquet"))
                continue
            problems += _compare_with_manifest(shard, key, members, meta, row)
            if decoder is not None and "webm" in members:
                what = decoder.check(members["webm"], int(row["n_frames"]))
                if what:
                    problems.append(Problem(shard, key, what))

    problems += _check_manifest(manifest, seen)
    problems += _check_stats(manifest, stats)
    return problems


def _check_stats(manifest: pd.DataFrame, stats: dict) -> list[Problem]:
    """``stats.json`` must be what the manifest gives (`shards.stats.compute_stats`)."""

    try:
        expected = compute_stats(manifest, clip_format=stats["clip"],
                                 split_key_fingerprint=stats["split_key_fingerprint"],
                                 label_rules=stats.get("label_rules"))
    except (KeyError, TypeError, ValueError) as exc:
        return [Problem(None, None, f"stats.json cannot be checked against the manifest: {exc}")]
    wrong = [k for k in sorted(set(expected) | set(stats))
             if k != "format_version"  # reported on its own, above
             and not _close(expected.get(k), stats.get(k))]
    return [Problem("stats.json", None, f"{k} does not match the manifest (stats.json "
                    f"{stats.get(k)!r}, manifest gives {expected.get(k)!r})") for k in wrong]


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
    key, members, last_key = None, {}, None
    clean = True
    try:
        with storage.open_file(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    problems.append(Problem(shard, None, f"member {info.name} is not a file"))
                    continue
                member_key, ext = split_member_name(info.name)
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(
                        f"{info.name} is cut short ({len(data)} of {info.size} bytes)"
                    )
                index.append(
                    IndexEntry(ext=ext, offset=info.offset_data, size=info.size, name=info.name)
                )
                end = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
                if member_key != key:
                    if key is not None:
                        yield key, members, _check_sample(shard, split, key, members, problems)
                    key, members = member_key, {}
                last_key = member_key
                if ext in members:
                    problems.append(Problem(shard, member_key, f"member .{ext} twice"))
                members[ext] = data
    except (tarfile.TarError, OSError, ValueError) as exc:
        clean = False
        after = f" after sample {last_key}" if last_key else ""
        problems.append(Problem(shard, key, f"tar is damaged{after}: {exc}"))
    if key is not None:
        yield key, members, _check_sample(shard, split, key, members, problems)
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


def _check_sample(
    shard: str, split: str, key: str, members: dict[str, bytes], problems: list[Problem]
) -> SampleMeta | None:
    try:
        validate_key(key)
    except ValueError as exc:
        problems.append(Problem(shard, key, str(exc)))
    missing = [ext for ext in EXTENSIONS if ext not in members]
    extra = sorted(set(members) - set(EXTENSIONS))
    if missing:
        problems.append(Problem(shard, key, f"missing {', '.join('.' + e for e in missing)}"))
    if extra:
        problems.append(Problem(shard, key, f"unexpected {', '.join('.' + e for e in extra)}"))
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


class _Rows:
    """Manifest rows by key, one dict built on demand (a dict per row would cost ~2 KB/clip)."""

    def __init__(self, manifest: pd.DataFrame) -> None:
        self._columns = {c: manifest[c].to_numpy() for c in manifest.columns}
        self._position = {k: i for i, k in enumerate(self._columns["key"])}

    def get(self, key: str) -> dict | None:
        i = self._position.get(key)
        return None if i is None else {c: v[i] for c, v in self._columns.items()}


def _same_label(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _compare_with_manifest(
    shard: str, key: str, members: dict[str, bytes], meta: SampleMeta | None, row: dict
) -> list[Problem]:
    out = []

    def bad(what: str) -> None:
        out.append(Problem(shard, key, what))

    if row["shard"] != shard:
        bad(f"manifest puts it in {row['shard']}")
    video = members.get("webm")
    if video is not None:
        if len(video) != row["video_bytes"]:
            bad(f".webm is {len(video)} bytes, manifest says {row['video_bytes']}")
        elif hashlib.sha256(video).hexdigest() != row["video_sha256"]:
            bad(".webm content differs from the manifest's SHA-256 (corrupt clip)")
    if "labels" in members and len(members["labels"]) == 4 * len(TASKS):
        labels = decode_labels(members["labels"])
        wrong = [t for i, t in enumerate(TASKS) if not _same_label(float(labels[i]), row[t])]
        if wrong:
            bad(f".labels differ from the manifest for {', '.join(wrong)}")
        elif members["labels"] != encode_labels(np.array([row[t] for t in TASKS], np.float32)):
            bad(".labels bytes differ from the manifest's labels (a changed bit in a NaN?)")
    expected_json = row.get("json_sha256")
    if "json" in members and isinstance(expected_json, str):
        if hashlib.sha256(members["json"]).hexdigest() != expected_json:
            bad(".json content differs from the manifest's SHA-256 (json_sha256)")
    if meta is not None:
        for field in ("split", "site", "patient_hash", "study_hash", "view", "n_frames"):
            value = getattr(meta, field)
            if str(value) != str(row[field]):
                bad(f".json {field} {value!r} but manifest {row[field]!r}")
    return out


def _check_manifest(manifest: pd.DataFrame, seen: dict[str, str]) -> list[Problem]:
    out = []
    for key, count in Counter(manifest["key"]).items():
        if count > 1:
            out.append(Problem(None, key, f"key listed {count} times in manifest.parquet"))
    for key, shard in zip(manifest["key"], manifest["shard"], strict=True):
        if key not in seen:
            out.append(Problem(shard, key, "in manifest.parquet but not found in any tar"))
    splits = manifest.groupby("patient_hash")["split"].unique()
    for patient, in_splits in splits.items():
        if len(in_splits) > 1:
            out.append(
                Problem(
                    None, None, f"patient {patient} is in splits {', '.join(sorted(in_splits))}"
                )
            )
    return out


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
    return json.dumps([p.__dict__ for p in problems], indent=2)
