"""Stage a shard set from object storage (``s3://``, ``gs://``) onto node-local disk.

DALI's ``fn.readers.webdataset`` opens local files only, so training and eval read a set that
lives at a URL from a copy on the node's own disk, as mosaic streaming and torchtitan-style
loaders keep a local cache. ``stage(url)`` makes that copy and returns its directory::

    local = stage("s3://bucket/echo/v3", splits=("train", "val"))  # every worker may call it

The copy lives in ``CACHE/<bucket_path>-<sha of the URL>/``, where ``CACHE`` is the
``cache_dir`` argument, else ``$ECHOCMR_CACHE``, else ``~/.cache/echocmr/shards``. It holds
``manifest.parquet``, ``stats.json`` and the tars and ``.idx`` files of the requested splits (of
all splits by default; a later call may add splits). ``ingest_report.parquet`` is never copied.

Properties the readers rely on:

- **Resumable, idempotent.** A file already staged with the remote's byte size is not downloaded
  again. Each download goes to a hidden temporary name (`storage.StagedFile`) and is renamed onto
  its final name only once complete; temporaries a crash left are removed on the next call. A
  re-run after a crash finishes the same copy.
- **One version, never mixed.** ``.echocmr-staged.json`` records the SHA-256 of the remote
  manifest and stats the copy belongs to. When the remote set has changed (other bytes), the old
  copy is removed, manifest and stats first, before anything new is downloaded. The manifest and
  stats are written last, byte-identical to the remote ones (training names its data by the
  manifest's digest), so a directory with them is a complete copy; the remote manifest is read
  again at the end and a set that changed meanwhile is an error, never a mixed copy.
- **One download per node.** Concurrent callers (several Ray workers on one node) serialise on
  the directory's lock (`shards.lock.exclusive_output` with a wait): the first downloads, the
  others wait and then find every file present.

A copy of only some splits is a reader's cache, not a whole set: ``shards verify`` on it reports
the missing tars. Files are fetched ``threads`` at a time (object stores serve parallel GETs far
faster than one stream).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from echocmr.errors import EchocmrError
from echocmr.shards import storage
from echocmr.shards.format import MANIFEST_FILE, SHARD_RE, SPLITS, STATS_FILE, index_name
from echocmr.shards.lock import LOCK_FILE, exclusive_output

log = logging.getLogger(__name__)

CACHE_ENV = "ECHOCMR_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "echocmr", "shards")
MARKER_FILE = ".echocmr-staged.json"  # which remote version the copy belongs to
_CHUNK = 8 << 20


class StageError(EchocmrError, RuntimeError):
    """The remote set is incomplete or changed while it was being staged."""


@dataclass(kw_only=True)
class StageReport:
    """What one `stage_report` call did. ``directory`` is the local copy."""

    url: str
    directory: str
    downloaded: list[str] = field(default_factory=list)  # file names fetched by this call
    present: int = 0  # files already staged with the right size
    removed: list[str] = field(default_factory=list)  # stale files deleted (older version)
    bytes: int = 0  # bytes downloaded
    seconds: float = 0.0
    refreshed: bool = False  # the remote set had changed since an earlier staging


def default_cache_dir() -> str:
    """``$ECHOCMR_CACHE``, else ``~/.cache/echocmr/shards`` (with ``~`` expanded)."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def staged_dir(url: str, cache_dir: str | None = None) -> str:
    """The local directory `stage` copies ``url`` into: a readable name plus a hash of the URL.

    The readable part is the bucket and path with anything but ``[A-Za-z0-9._-]`` made ``_``;
    the hash (of the URL without a trailing ``/``) keeps two URLs that read alike apart.
    """
    canonical = storage.canonical(url)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", canonical.split("://", 1)[-1]).strip("._-")
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    root = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    return os.path.join(os.path.abspath(root), f"{readable[:80] or 'set'}-{digest}")


def stage(url: str, cache_dir: str | None = None, *, splits: Iterable[str] | None = None,
          threads: int = 8, wait_s: float = math.inf) -> str:
    """A local directory holding the shard set at ``url`` (see the module docstring).

    ``splits``: the splits whose tars to copy (default all). A local path or ``file://`` URL is
    returned as a local path and nothing is copied, so callers may stage unconditionally.
    ``wait_s``: how long to wait for another process staging the same set on this node.
    """
    if storage.is_local(url):
        return storage.local_path(url)
    return stage_report(url, cache_dir, splits=splits, threads=threads, wait_s=wait_s).directory


def stage_report(url: str, cache_dir: str | None = None, *, splits: Iterable[str] | None = None,
                 threads: int = 8, wait_s: float = math.inf) -> StageReport:
    """`stage` a set at a URL and say what was downloaded, kept and removed."""
    if storage.is_local(url):
        raise ValueError(f"{url} is a local path; stage copies sets at URLs (s3://, gs://)")
    wanted = tuple(SPLITS if splits is None else splits)
    unknown = sorted(set(wanted) - set(SPLITS))
    if unknown:
        raise ValueError(f"splits must be among {SPLITS}, got {unknown}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    url = storage.canonical(url)
    directory = staged_dir(url, cache_dir)
    report = StageReport(url=url, directory=directory)
    started = time.perf_counter()
    with exclusive_output(directory, "stage", wait_s=wait_s):
        _stage_locked(url, directory, wanted, threads, report)
    report.seconds = time.perf_counter() - started
    if report.downloaded:
        log.info("staged %s -> %s: downloaded %d files (%.1f MB) in %.1f s, %d already present",
                 url, directory, len(report.downloaded), report.bytes / 1e6, report.seconds,
                 report.present)
    else:
        log.info("staged %s -> %s: all %d files already present", url, directory,
                 report.present)
    return report


def _stage_locked(url: str, directory: str, splits: tuple[str, ...], threads: int,
                  report: StageReport) -> None:
    remote_names, manifest, stats = _remote_set(url)
    version = {"url": url, "manifest_sha256": _sha(manifest), "stats_sha256": _sha(stats)}
    storage.remove_stale_temps(directory)

    marker = os.path.join(directory, MARKER_FILE)
    if _read_marker(marker) != version:
        # Another version (or none) was staged here: remove it, completion files first, so a
        # crash from here on leaves a directory no reader takes for a whole set.
        report.refreshed = os.path.exists(marker)
        for name in (MANIFEST_FILE, STATS_FILE, MARKER_FILE):
            _remove_local(directory, name, report)
        for name in sorted(os.listdir(directory)):
            if name != LOCK_FILE:
                _remove_local(directory, name, report)
        storage.atomic_write(marker, json.dumps(version, indent=1).encode())

    files = _files_to_stage(url, remote_names, splits)
    on_remote = set(remote_names)
    for name in sorted(os.listdir(directory)):  # a file the remote no longer has
        if (SHARD_RE.match(name) or name.endswith(".idx")) and name not in on_remote:
            _remove_local(directory, name, report)

    if files:
        log.info("staging %s: %d files of splits %s into %s", url, len(files),
                 ",".join(splits), directory)
    with ThreadPoolExecutor(max_workers=min(threads, max(len(files), 1))) as pool:
        futures = {pool.submit(_fetch, url, directory, name): name for name in files}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()
    for future, name in futures.items():
        expected, fetched = future.result()
        if os.path.getsize(os.path.join(directory, name)) != expected:  # belt and braces
            raise StageError(f"staged {name} is not the {expected} bytes that {url} lists")
        if fetched:
            report.downloaded.append(name)
            report.bytes += expected
        else:
            report.present += 1

    if _remote_set(url)[1:] != (manifest, stats):
        raise StageError(f"{url} changed while it was being staged (its {MANIFEST_FILE} or "
                         f"{STATS_FILE} has other bytes now); run again once the writer has "
                         "finished")
    for name, data in ((STATS_FILE, stats), (MANIFEST_FILE, manifest)):  # the manifest last
        path = os.path.join(directory, name)
        if _local_bytes(path) != data:
            storage.atomic_write(path, data)
            report.downloaded.append(name)
            report.bytes += len(data)
        else:
            report.present += 1
    report.downloaded.sort()


def _files_to_stage(url: str, names: list[str], splits: tuple[str, ...]) -> list[str]:
    """Tars of ``splits`` and their indexes, in listing order; every tar must have its index."""
    present = set(names)
    files = []
    for name in names:
        match = SHARD_RE.match(name)
        if match and match.group(1) in splits:
            idx = index_name(name)
            if idx not in present:
                raise StageError(f"{storage.join(url, name)} has no index {idx}; run "
                                 f"`echocmr shards verify {url}` and re-run what wrote the set")
            files += [name, idx]
    return files


def _fetch(url: str, directory: str, name: str) -> tuple[int, bool]:
    """Copy one file unless it is staged with the remote's size: (remote size, copied?)."""
    source, dest = storage.join(url, name), os.path.join(directory, name)
    expected = storage.size(source)
    if os.path.exists(dest) and os.path.getsize(dest) == expected:
        return expected, False
    with storage.StagedFile(dest) as staged, storage.open_file(source, "rb") as remote:
        shutil.copyfileobj(remote, staged.file, _CHUNK)
        if staged.tell() != expected:  # leaving the block with an error discards the temp
            raise StageError(f"{source}: read {staged.tell()} bytes, the store lists {expected}")
    return expected, True


def _remote_set(url: str) -> tuple[list[str], bytes, bytes]:
    """The remote's file names, manifest bytes and stats bytes.

    Listed first: the listing refreshes fsspec's cache of the prefix, which later size and open
    calls consult, so they see the store as it is now and not as an earlier call saw it.
    """
    names = storage.listdir(url)
    for name in (MANIFEST_FILE, STATS_FILE):
        if name not in names:
            raise StageError(f"{storage.join(url, name)} not found: {url} is not a finished "
                             "shard set (the writer writes it last; re-run the ingest or "
                             "reshard that makes it)")
    return (names, storage.read_bytes(storage.join(url, MANIFEST_FILE)),
            storage.read_bytes(storage.join(url, STATS_FILE)))


def _read_marker(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _local_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _remove_local(directory: str, name: str, report: StageReport) -> None:
    path = os.path.join(directory, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    else:
        return
    if not name.startswith("."):
        report.removed.append(name)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
