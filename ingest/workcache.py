"""Ingest's work cache: what each input file became, kept under ``OUT/.work`` until the shards
are written, so that a killed run resumes where it stopped and a resumed run gives the same bytes.

`FileResult` is one file's outcome (kept with its typed `SampleMeta`, or rejected with its
reason); it is what workers return, what the cache stores as ``<entry>.json`` beside the clip
``<entry>.webm`` (`FileResult.to_json`: the metadata as the exact ``KEY.json`` bytes the shard
will hold, parsed back strictly by `SampleMeta.from_json`), and what the ingest report's rows are
made from. `WorkCache` publishes each entry atomically
(clip first, result last); its ``stamp.json`` holds the fingerprint of everything that shapes the
output, with ``CACHE_VERSION``: a different stamp starts the cache afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np

from echocmr.shards import storage
from echocmr.shards.format import SampleMeta

log = logging.getLogger(__name__)

WORK_DIR = ".work"
# Bump when the cached result format or processing changes. The shard format version is part of
# the cache fingerprint as well: a re-run after a format change never reuses older clips.
CACHE_VERSION = "8"  # 6: a result's metadata is its KEY.json bytes (`FileResult.to_json`); 7: the
# text detector reads a composite of every frame and follows boxes; 8: a result has its vendor


@dataclass
class FileResult:
    """What processing one input file produced (small: the clip itself is in the work cache)."""

    source: str  # relative to --dicom (site-local: may name a patient)
    status: str  # "kept" or "rejected"
    reason: str | None = None
    detail: str | None = None
    key: str | None = None
    meta: SampleMeta | None = None  # the sample's KEY.json, when kept
    labels: list[float | None] | None = None  # five labels, None for NaN (JSON has no NaN)
    pixel_stats: list[float] | None = None  # mean, std, n_pixels
    video_sha256: str | None = None
    video_bytes: int | None = None  # size of the clip (what shard planning needs)
    study_hash: str | None = None  # also for unpaired studies, to count them
    text_boxes: int = 0  # text boxes the text detector found (and masked) in the kept clip
    paired: bool = False  # the file's study paired with a CMR (kept or rejected afterwards)
    # the file's vendor (`ingest.vendor_table`), when its header was read; None before that
    vendor: str | None = None

    def label_array(self) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in self.labels or []], dtype=np.float32)

    def to_json(self) -> bytes:
        """The cache's ``<entry>.json``: every field, ``meta`` as its ``KEY.json`` text."""
        data = asdict(self)
        data["meta"] = None if self.meta is None else self.meta.to_json().decode()
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> FileResult:
        """Parse `to_json`'s bytes; ValueError or TypeError when they are not a result this
        code wrote."""
        data = json.loads(blob)
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError("not a work cache result of this version")
        if data["meta"] is not None:
            data["meta"] = SampleMeta.from_json(data["meta"].encode(), key=data["key"])
        return cls(**data)


class WorkCache:
    """Per-file results and clips under ``OUT/.work`` (a directory or URL prefix), each published
    atomically.

    ``<entry>.webm`` is written before ``<entry>.json``; a result file therefore means the entry is
    complete. Entries live in 256 sub-directories by the entry id's first two hex digits
    (``files/3f/3f0c….json``): no directory (or listing) holds more than 1/256 of an archive.
    A cache of the older flat layout (``files/<entry>.json``) is still read, so a run interrupted
    before an upgrade resumes where it stopped. ``stamp.json`` holds the fingerprint of
    everything that shapes the output (config, split key fingerprint, label and view tables,
    cache version); a different stamp wipes the cache.
    Every process that runs `process_file` (pool workers, Ray tasks on any node) writes here, so on
    a cluster it must be shared storage or a URL.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._local = storage.is_local(self.path)
        self._flat: set[str] = set()  # entries found in the older flat layout (`done`)

    def prepare(self, fingerprint: str) -> None:
        stamp = storage.join(self.path, "stamp.json")
        try:
            old = json.loads(storage.read_bytes(stamp))["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            old = None
        if old != fingerprint:
            if old is not None or storage.list_entries(storage.join(self.path, "files")):
                log.info("work cache is from a different config or input tables: starting afresh")
            storage.remove_tree(self.path)
        storage.makedirs(storage.join(self.path, "files"))
        if self._local:
            for prefix in range(256):
                os.makedirs(storage.local_path(storage.join(self.path, "files", f"{prefix:02x}")),
                            exist_ok=True)
        if old != fingerprint:
            _atomic_write(stamp, json.dumps({"fingerprint": fingerprint}).encode())

    def _file(self, entry: str, ext: str) -> str:
        if entry in self._flat:
            return storage.join(self.path, "files", f"{entry}.{ext}")
        return storage.join(self.path, "files", entry[:2], f"{entry}.{ext}")

    def done(self) -> dict[str, bool]:
        """Entries with a result file -> whether their clip is there too (`done_groups` merged:
        for tests and small caches; a driver takes the groups one at a time)."""
        found: dict[str, bool] = {}
        for _, group in self.done_groups():
            found.update(group)
        return found

    def done_groups(self) -> Iterator[tuple[str | None, dict[str, bool]]]:
        """The cache's finished entries one sub-directory at a time: ``(prefix, {entry: whether
        its clip is there too})``, from one listing per sub-directory (257 in all, whatever the
        number of files), not a request per file; then ``(None, ...)`` for the entries of the
        older flat layout, if any. Only one group is held at a time."""
        top = storage.join(self.path, "files")
        flat: list[str] = []
        for name, kind in _list(top):
            if kind == "directory":
                names = [n for n, _ in _list(storage.join(top, name))]
                clips = {n[:-5] for n in names if n.endswith(".webm")}
                yield name, {n[:-5]: n[:-5] in clips for n in names if n.endswith(".json")}
            elif name.endswith(".json"):  # the flat layout of CACHE_VERSION 7 and before
                flat.append(name[:-5])
        if flat:
            self._flat.update(flat)
            clips = {n[:-5] for n in storage.listdir(top) if n.endswith(".webm")}
            yield None, {entry: entry in clips for entry in flat}

    def store(self, entry: str, result: FileResult, video: bytes | None) -> None:
        try:
            self._store(entry, result, video)
        except FileNotFoundError:
            if not self._local:
                raise
            # `prepare` makes the sub-directories; a cache it did not prepare gets them here.
            os.makedirs(storage.local_path(storage.join(self.path, "files", entry[:2])),
                        exist_ok=True)
            self._store(entry, result, video)

    def _store(self, entry: str, result: FileResult, video: bytes | None) -> None:
        if video is not None:
            _atomic_write(self._file(entry, "webm"), video)
        _atomic_write(self._file(entry, "json"), result.to_json())

    def load(self, entry: str, *, has_clip: bool | None = None) -> FileResult | None:
        """The cached result, or None when absent or unusable. ``has_clip`` is what `done`'s
        listing said of the clip (no request to check it again); None asks the storage."""
        try:
            result = FileResult.from_json(storage.read_bytes(self._file(entry, "json")))
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        if result.status == "kept":
            if has_clip is None:
                has_clip = storage.exists(self._file(entry, "webm"))
            if not has_clip:
                return None
        return result

    def load_many(self, entries: list[tuple[str, bool]], *, threads: int = 16
                  ) -> list[FileResult | None]:
        """`load` of many ``(entry, has_clip)`` at once, in order: concurrent reads (an object
        store answers each GET in tens of ms; a local disk needs no threads)."""
        if self._local or len(entries) < 2:
            return [self.load(e, has_clip=c) for e, c in entries]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda ec: self.load(ec[0], has_clip=ec[1]), entries))

    def video(self, entry: str, sha256: str) -> bytes:
        try:
            data = storage.read_bytes(self._file(entry, "webm"))
        except FileNotFoundError:  # an entry of the older flat layout (read by another process)
            data = storage.read_bytes(storage.join(self.path, "files", f"{entry}.webm"))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(f"work cache entry {entry} is corrupt; delete {self.path} and rerun")
        return data

    def remove(self) -> None:
        storage.remove_tree(self.path)


def _list(path: str) -> list[tuple[str, str]]:
    """`storage.list_entries`; on a local disk from the directory alone (fsspec's local listing
    would ``stat`` every one of a million entries)."""
    if not storage.is_local(path):
        return storage.list_entries(path)
    try:
        with os.scandir(storage.local_path(path)) as it:
            return [(e.name, "directory" if e.is_dir(follow_symlinks=False) else "file")
                    for e in it]
    except FileNotFoundError:
        return []


def _atomic_write(path: str, data: bytes) -> None:
    """Publish ``data`` at ``path`` whole. Local: a temp file renamed into place (no fsync: the
    cache is rebuilt if lost, and fsync per file would cost more than the file); a URL: one PUT."""
    if not storage.is_local(path):
        storage.atomic_write(path, data)
        return
    path = storage.local_path(path)
    # pid and a random part: two nodes on shared storage may run the same pid (a retried task).
    tmp = f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def entry_id(dicom_dir: str, source: str) -> str:
    """Cache entry of a file: its relative path (its bytes: a name need not be UTF-8), size and
    modification time."""
    st = os.stat(os.path.join(dicom_dir, source))
    return stat_entry_id(source, st.st_size, st.st_mtime_ns)


def stat_entry_id(source: str, size: int, mtime_ns: int) -> str:
    """`entry_id` from a ``stat`` already made (the scan's: no second ``stat`` per file)."""
    return hashlib.sha256(os.fsencode(source) + f"\0{size}\0{mtime_ns}".encode()
                          ).hexdigest()[:24]
