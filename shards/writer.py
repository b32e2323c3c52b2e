"""Write a shard set: tars, their DALI indexes, ``manifest.parquet`` and ``stats.json``.

`ShardSetWriter` takes samples in their final order and routes each to the open tar of its split
(``meta.split``), cutting a new ``<split>-NNNNNN.tar`` when the current one holds
``samples_per_shard`` samples or would pass ``shard_mb``. Tars are written exactly as webdataset's
`TarWriter` writes them (`_TarStream`: Python's tarfile, members sorted by extension; a test pins
the bytes to TarWriter's, so the stock reader agrees with us) with mtime, owner and mode fixed,
which makes the output byte-identical for identical input. webdataset itself is not imported to
write: its package imports torch, ~2 s of every ingest run's driver and of every shard task.

Atomicity: every file is written under a temporary name and published whole (`shards.storage`);
a crash leaves finished shards and no partial file. ``manifest.parquet`` and ``stats.json`` are
written last, so a set that has them is complete.

The DALI index of each tar is computed from the offsets as we write (a ustar header is always
512 bytes, data is padded to 512) and checked against tarfile's own running offset; tests compare
it byte for byte with DALI's ``wds2idx``.

Usage::

    with ShardSetWriter(out, config=WriterConfig(), clip_format=fmt,
                        split_key_fingerprint=fp) as writer:
        for sample, pixel_stats in samples:
            writer.add(sample, pixel_stats=pixel_stats)
    summary = writer.summary
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from echocmr.shards import storage
from echocmr.shards.format import (
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    SHARD_RE,
    SPLITS,
    STATS_FILE,
    TASKS,
    ClipFormat,
    Sample,
    SampleMeta,
    encode_labels,
    index_name,
    key_site,
    shard_name,
    validate_key,
)
from echocmr.shards.index import IndexEntry, SampleIndex, format_index
from echocmr.shards.manifest import manifest_bytes, manifest_table  # noqa: F401  (public here too)
from echocmr.shards.stats import compute_stats, stats_json_bytes

log = logging.getLogger(__name__)

# Fixed tar member attributes: the same samples give the same bytes on any machine, any day.
TAR_USER = "echocmr"
TAR_MODE = 0o444
TAR_MTIME = 0
_BLOCK = 512


@dataclass(kw_only=True)
class WriterConfig:
    """How samples are cut into shards.

    A shard is closed when it holds ``samples_per_shard`` samples or when the next sample would
    take it past ``shard_mb`` megabytes (10^6 bytes), whichever comes first.
    """

    samples_per_shard: int = 256
    shard_mb: float | None = None

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.shard_mb is not None and not self.shard_mb > 0:
            raise ValueError(f"shard_mb must be positive, got {self.shard_mb}")


@dataclass
class WriteSummary:
    """What `ShardSetWriter.close` wrote."""

    out: str
    shards: list[str]  # tar names, in write order
    clips: dict[str, int]  # per split
    stats: dict = field(default_factory=dict)


def tar_bytes(sizes: list[int]) -> int:
    """Bytes that members of these sizes take in a ustar tar (header + padded data each)."""
    return sum(_BLOCK + _padded(s) for s in sizes)


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """The header of one tar member as every echocmr writer writes it: a regular file, fixed
    owner, mode and mtime, nothing else (no PAX records, no extended attributes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uname = info.gname = TAR_USER
    return info


def member_header(name: str, size: int) -> bytes:
    """The exact 512 header bytes `_TarStream` writes for a member (`shards verify` compares
    every member's header with them).

    Every name a valid key makes (ASCII, at most 100 bytes) and every size below 8 GiB gives a
    plain ustar header that differs from `_HEADER_TEMPLATE` only in the name, size and checksum
    fields, so those are filled in here (tarfile's own `tobuf` costs ~0.1 ms a member, a fifth of
    verify's time); anything else goes through tarfile. A test compares the two."""
    encoded = name.encode("ascii", "surrogateescape") if name.isascii() else None
    if encoded is None or len(encoded) > 100 or not 0 <= size < 8**11:
        return _tarfile_header(name, size)
    block = bytearray(_HEADER_TEMPLATE)
    block[0:100] = encoded.ljust(100, b"\0")
    block[124:136] = b"%011o\0" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _tarfile_header(name: str, size: int) -> bytes:
    return member_info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


_HEADER_TEMPLATE = _tarfile_header("", 0)


class _TarStream:
    """The tar webdataset's ``TarWriter(f, encoder=False, user=TAR_USER, group=TAR_USER,
    mode=TAR_MODE, mtime=TAR_MTIME)`` writes, byte for byte (tests/test_shards_writer.py), with
    the standard library alone: a streaming tarfile, one member per extension in sorted order."""

    def __init__(self, fileobj) -> None:
        self.tarstream = tarfile.open(fileobj=fileobj, mode="w|")

    def write(self, sample: dict[str, bytes]) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):
            data = sample[ext]
            self.tarstream.addfile(member_info(f"{key}.{ext}", len(data)), io.BytesIO(data))

    def close(self) -> None:
        self.tarstream.close()


class ShardFile:
    """One tar and its ``.idx``, staged and published atomically by `finish`."""

    def __init__(self, out: str, name: str) -> None:
        self.out, self.name = out, name
        self._staged = storage.StagedFile(storage.join(out, name))
        self._tar = _TarStream(self._staged.file)
        self.index: list[SampleIndex] = []
        self.keys: list[str] = []

    @property
    def nbytes(self) -> int:
        """Bytes written so far (before the end-of-archive blocks)."""
        return self._tar.tarstream.offset

    def __len__(self) -> int:
        return len(self.keys)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Write one sample's members (``{ext: bytes}``); records their index entries."""
        offset = self._tar.tarstream.offset
        entries = []
        for ext in sorted(members):  # TarWriter writes members sorted by extension
            size = len(members[ext])
            entries.append(
                IndexEntry(ext=ext, offset=offset + _BLOCK, size=size, name=f"{key}.{ext}")
            )
            offset += _BLOCK + _padded(size)
        self._tar.write({"__key__": key, **members})
        if offset != self._tar.tarstream.offset:  # a non-ustar header would break the index
            raise RuntimeError(f"tar offset mismatch writing {key} into {self.name}")
        self.index.append(entries)
        self.keys.append(key)

    def finish(self) -> None:
        """Close the tar, publish it, then publish its index."""
        self._tar.close()
        self._staged.commit()
        storage.atomic_write(
            storage.join(self.out, index_name(self.name)), format_index(self.index).encode()
        )

    def discard(self) -> None:
        """Drop the unfinished tar (closing the tar stream first, so nothing writes to it later)."""
        with contextlib.suppress(Exception):
            self._tar.close()
        self._staged.discard()


@dataclass(frozen=True)
class SampleRef:
    """A sample whose clip is stored elsewhere (ingest's work cache): what `plan` needs."""

    key: str
    meta: SampleMeta | dict
    labels: np.ndarray
    video_size: int
    video_sha256: str


def sample_members(sample: Sample) -> dict[str, bytes]:
    """A sample's tar members, ``{ext: bytes}``."""
    return {
        "json": sample.meta.to_json(),
        "labels": encode_labels(sample.labels),
        "webm": bytes(sample.video),
    }


def write_shard(out: str, name: str, samples) -> None:
    """Write one planned shard (`ShardSetWriter.plan`): its tar and ``.idx``, atomically.

    ``samples`` are the shard's `Sample` objects in plan order. Rewriting a shard (a task run
    twice) publishes the same bytes again.
    """
    shard = ShardFile(out, name)
    try:
        for sample in samples:
            shard.write(sample.key, sample_members(sample))
        shard.finish()
    except BaseException:
        shard.discard()
        raise


class ShardSetWriter:
    """Writes samples, given in final order, into a shard set at ``out`` (path or URL prefix)."""

    def __init__(
        self,
        out: str,
        *,
        config: WriterConfig,
        clip_format: ClipFormat | dict,
        split_key_fingerprint: str,
        label_rules: dict[str, str] | None = None,
        identity_scope: str | None = None,  # "site" or "shared" (ingest.config.SplitConfig)
        view_models: dict[str, str] | None = None,
    ) -> None:
        self.out = str(out)
        self.identity_scope = identity_scope
        self.label_rules = label_rules  # site -> cut-off fingerprint, for stats.json
        self.view_models = view_models  # site -> the view classifier that labelled its views
        self.config = config
        self.clip_format = ClipFormat.from_dict(clip_format)
        if not split_key_fingerprint:
            raise ValueError("split_key_fingerprint is required (it tells split keys apart)")
        self.split_key_fingerprint = split_key_fingerprint
        storage.makedirs(self.out)
        storage.remove_stale_temps(self.out)
        self._open: dict[str, ShardFile] = {}
        self._layout: dict[str, list] = {}  # split -> [open shard's name, samples, tar bytes]
        self._planning = False
        self.planned: dict[str, list[str]] = {}  # shard name -> its keys, in order (`plan`)
        self._next_number = dict.fromkeys(SPLITS, 0)
        self._written: list[str] = []
        self._columns: dict[str, list] = {c: [] for c in MANIFEST_COLUMNS}
        self._keys: set[str] = set()
        self._patient_split: dict[str, str] = {}
        self._closed = False
        self.summary: WriteSummary | None = None

    # -- adding samples ------------------------------------------------------------------------

    def add(self, sample: Sample, *, pixel_stats: tuple[float, float, int]) -> None:
        """Append a sample to the shard of its split.

        ``pixel_stats`` is (mean, std, n_pixels) of the clip's pixels on the 0-255 scale.
        """
        if self._planning:
            raise RuntimeError("this writer plans shards (`plan`); it does not take samples")
        meta = self._check(sample.key, sample.meta, len(sample.video))
        members = sample_members(sample)
        split = meta.split
        name = self._place(split, [len(v) for v in members.values()])
        shard = self._open.get(split)
        if shard is None:
            shard = self._open[split] = ShardFile(self.out, name)
        shard.write(sample.key, members)
        self._record(sample.key, meta, sample.labels, len(sample.video),
                     hashlib.sha256(sample.video).hexdigest(), pixel_stats, members["json"])
        if self._layout[split][1] >= self.config.samples_per_shard:
            self.end_shard(split)

    def plan(self, ref: SampleRef, *, pixel_stats: tuple[float, float, int]) -> str:
        """Place a sample whose clip is elsewhere; returns the name of the shard it goes to.

        The same checks, cuts and manifest row as `add`, without writing a byte: the tar of
        each planned shard is then written by `write_shard` (in any process, in any order, in
        parallel) with that shard's samples in plan order, and `close` writes manifest and stats
        once every planned tar is there. The files are byte-identical to adding the same
        samples in the same order.
        """
        if self._closed:
            raise RuntimeError("ShardSetWriter is closed")
        if self._open:
            raise RuntimeError("this writer took samples (`add`); it cannot plan as well")
        self._planning = True
        meta = self._check(ref.key, ref.meta, ref.video_size)
        meta_json = meta.to_json()
        split = meta.split
        sizes = [len(meta_json), len(encode_labels(ref.labels)), ref.video_size]
        name = self._place(split, sizes)
        self.planned.setdefault(name, []).append(ref.key)
        self._record(ref.key, meta, ref.labels, ref.video_size, ref.video_sha256, pixel_stats,
                     meta_json)
        if self._layout[split][1] >= self.config.samples_per_shard:
            self.end_shard(split)
        return name

    def _place(self, split: str, member_sizes: list[int]) -> str:
        """The shard of ``split`` the next sample (members of these sizes) goes to.

        Cuts the open shard first when the sample would take it past ``shard_mb``; the bytes
        are counted from the sizes (a ustar member is a 512-byte header plus padded data), so
        planning and writing cut at the same samples.
        """
        limit = None if self.config.shard_mb is None else self.config.shard_mb * 1e6
        entry = self._layout.get(split)
        grows = tar_bytes(member_sizes)
        if (entry is not None and limit is not None and entry[1]
                and entry[2] + grows + 2 * _BLOCK > limit):
            self.end_shard(split)
            entry = None
        if entry is None:
            entry = self._layout[split] = [shard_name(split, self._next_number[split]), 0, 0]
            self._next_number[split] += 1
        entry[1] += 1
        entry[2] += grows
        return entry[0]

    def end_shard(self, split: str) -> str | None:
        """Finish the open shard of ``split`` now (reshard cuts shards at planned sizes)."""
        entry = self._layout.pop(split, None)
        if entry is None:
            return None
        shard = self._open.pop(split, None)
        if shard is not None:
            if shard.name != entry[0]:
                raise RuntimeError(f"shard layout mismatch: {shard.name} != {entry[0]}")
            shard.finish()
        self._written.append(entry[0])
        return entry[0]

    def _check(self, key: str, meta: SampleMeta | dict, video_size: int) -> SampleMeta:
        validate_key(key)
        if key in self._keys:
            raise ValueError(
                f"duplicate sample key {key!r}: every clip must be written once"
            )
        if not isinstance(meta, SampleMeta):
            meta = SampleMeta.from_dict(meta, key=key)
        elif meta.key != key:
            raise ValueError(f"meta.key is {meta.key!r} but the sample key is {key!r}")
        fmt = self.clip_format
        if meta.split not in SPLITS:
            raise ValueError(f"sample {key}: split {meta.split!r} not in {SPLITS}")
        if meta.site != key_site(key):
            raise ValueError(f"sample {key}: meta site {meta.site!r} != key prefix")
        if not math.isclose(meta.fps, fmt.fps, rel_tol=1e-4):
            raise ValueError(
                f"sample {key}: fps {meta.fps} != set fps {fmt.fps}; resample before writing"
            )
        if meta.ingest is not None:
            for side in ("height", "width"):
                if getattr(meta.ingest, side) != getattr(fmt, side):
                    raise ValueError(
                        f"sample {key}: {side} {getattr(meta.ingest, side)} != set "
                        f"{getattr(fmt, side)}"
                    )
        previous = self._patient_split.setdefault(meta.patient_hash, meta.split)
        if previous != meta.split:
            raise ValueError(
                f"sample {key}: patient {meta.patient_hash} is already in "
                f"split {previous!r}, not {meta.split!r}; splits are by patient"
            )
        if not video_size:
            raise ValueError(f"sample {key}: empty video")
        return meta

    def _record(
        self, key: str, meta: SampleMeta, labels: np.ndarray, video_size: int, video_sha256: str,
        pixel_stats: tuple[float, float, int], meta_json: bytes,
    ) -> None:
        mean, std, n_pixels = pixel_stats
        labels = np.asarray(labels, dtype=np.float32)
        row = {
            "key": key,
            "shard": self._layout[meta.split][0],
            "split": meta.split,
            "site": meta.site,
            "patient_hash": meta.patient_hash,
            "study_hash": meta.study_hash,
            "view": meta.view,
            "n_frames": meta.n_frames,
            "fps": meta.fps,
            **{task: float(labels[i]) for i, task in enumerate(TASKS)},
            "video_bytes": int(video_size),
            "video_sha256": video_sha256,
            "pixel_mean": float(mean),
            "pixel_std": float(std),
            "n_pixels": int(n_pixels),
            "json_sha256": hashlib.sha256(meta_json).hexdigest(),
            "view_confidence": meta.view_confidence,
            "vendor": meta.vendor,
        }
        for column, value in row.items():
            self._columns[column].append(value)
        self._keys.add(key)

    # -- finishing -----------------------------------------------------------------------------

    def close(self) -> WriteSummary:
        """Finish open shards, drop stale shards of earlier runs, write manifest and stats."""
        if self._closed:
            assert self.summary is not None
            return self.summary
        for split in SPLITS:
            self.end_shard(split)
        if self._planning:
            missing = [n for n in self._written if not storage.exists(storage.join(self.out, n))
                       or not storage.exists(storage.join(self.out, index_name(n)))]
            if missing:
                raise RuntimeError(f"{self.out}: planned shard(s) {', '.join(missing[:5])} were "
                                   "not written (`write_shard`)")
            storage.remove_stale_temps(self.out)  # left by shard tasks that died and were rerun
        self._remove_stale_shards()
        storage.atomic_write(storage.join(self.out, MANIFEST_FILE), manifest_bytes(self._columns))
        manifest = pd.DataFrame({c: self._columns[c] for c in MANIFEST_COLUMNS})
        stats = compute_stats(
            manifest, clip_format=self.clip_format, split_key_fingerprint=self.split_key_fingerprint,
            label_rules=self.label_rules, identity_scope=self.identity_scope,
            view_models=self.view_models,
        )
        storage.atomic_write(storage.join(self.out, STATS_FILE), stats_json_bytes(stats))
        self._closed = True
        clips = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
        self.summary = WriteSummary(
            out=self.out, shards=list(self._written), clips=clips, stats=stats
        )
        log.info("wrote %d clips in %d shards to %s", len(manifest), len(self._written), self.out)
        return self.summary

    def abort(self) -> None:
        """Drop open shards without publishing them; no manifest is written."""
        for shard in self._open.values():
            shard.discard()
        self._open.clear()
        self._closed = True

    def _remove_stale_shards(self) -> None:
        """Shard files in ``out`` that this writer did not write belong to an older run."""
        ours = set(self._written) | {index_name(n) for n in self._written}
        for name in storage.listdir(self.out):
            stem = name[:-4] + ".tar" if name.endswith(".idx") else name
            if SHARD_RE.match(stem) and name not in ours:
                log.warning("removing %s: a shard of an earlier run, not part of this set", name)
                storage.remove(storage.join(self.out, name))

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
