"""Ingest's inputs: every path under ``--dicom`` accounted for.

`scan_inputs` walks a local tree and gives each path that is not a regular, readable file its
report row with a reason (links, loops, FIFOs, unreadable directories: nothing met is silently
lost); `scan_url` lists an ``s3://`` / ``gs://`` prefix. The views table is `ingest.view_table`.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from echocmr.ingest.workcache import FileResult, stat_entry_id
from echocmr.shards import storage


@dataclass
class Scan:
    """What the scan of ``--dicom`` met: files to process, and a report row for everything else."""

    files: list[str]  # regular files (directly or through symlinks), sorted relative POSIX paths
    skipped: list[FileResult]  # paths not processed, each with its reason
    # files[i]'s work cache entry (24 hex digits, an ``S24`` array), from the scan's own stat or
    # listing (no second request per file)
    entries: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="S24"))


def scan_url(prefix: str) -> Scan:
    """List every object below an ``s3://`` / ``gs://`` prefix (fsspec), sorted by relative path.

    An object store has no links, FIFOs or unreadable directories: every object is a file to
    process. Cache entries come from the listing (path, size, ETag), so a resumed run lists the
    prefix once and reads no object it already did.
    """
    rows = sorted((rel, hashlib.sha256(f"{rel}\0{nbytes}\0{version}".encode()).hexdigest()[:24])
                  for rel, nbytes, version in storage.walk_files(prefix))
    return Scan(files=[r for r, _ in rows], skipped=[],
                entries=np.array([e for _, e in rows], dtype="S24"))


def scan_inputs(dicom_dir: str, *, exclude: str | None = None) -> Scan:
    """Walk ``dicom_dir`` recursively and account for every path met.

    Symlinks are followed, to files and to directories alike (exports link studies into place),
    with every directory scanned once: a link back to a directory above it is ``symlink_loop``, a
    second way to a directory already scanned is ``duplicate_directory``, a dangling link is
    ``broken_symlink``. FIFOs, sockets and devices are ``not_regular_file`` (never opened: reading
    a FIFO blocks), a directory that cannot be listed is ``unreadable_directory`` and a file
    without read permission ``unreadable_file``. ``exclude`` is a directory to skip silently (the
    output, should it lie inside the input tree).
    """
    import stat

    files: list[str] = []
    entry_ids = bytearray()  # files[i]'s cache entry (from this stat) at [24 i, 24 i + 24)
    skipped: list[FileResult] = []
    skip = os.path.realpath(exclude) if exclude else None
    root_real = os.path.realpath(dicom_dir)
    scanned = {root_real: "."}

    def reject(rel: str, reason: str, detail: str) -> None:
        skipped.append(FileResult(source=rel, status="rejected", reason=reason, detail=detail))

    def walk(rel_dir: str, ancestors: frozenset[str]) -> None:
        full_dir = os.path.join(dicom_dir, rel_dir) if rel_dir else dicom_dir
        try:
            with os.scandir(full_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            reject(rel_dir or ".", "unreadable_directory", f"cannot list it: {exc.strerror}")
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            link = entry.is_symlink()
            try:
                st = os.stat(entry.path)  # follows symlinks
            except FileNotFoundError:
                reject(rel, "broken_symlink", "the symlink's target does not exist")
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    reject(rel, "symlink_loop", "a symlink that resolves to itself")
                else:
                    reject(rel, "unreadable_file", f"cannot stat it: {exc.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(entry.path)
                if skip is not None and real == skip:
                    continue
                if real in ancestors:
                    reject(rel, "symlink_loop", "a directory symlink to a directory above it "
                           "(not followed)")
                elif real in scanned:
                    reject(rel, "duplicate_directory", f"the same directory as {scanned[real]} "
                           "(scanned once)")
                else:
                    scanned[real] = rel
                    walk(rel, ancestors | {real})
            elif stat.S_ISREG(st.st_mode):
                if not os.access(entry.path, os.R_OK):
                    reject(rel, "unreadable_file", "no permission to read it")
                else:
                    files.append(rel)
                    entry_ids.extend(stat_entry_id(rel, st.st_size, st.st_mtime_ns).encode())
            else:
                kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket"
                        if stat.S_ISSOCK(st.st_mode) else "a device file")
                reject(rel, "not_regular_file", f"{kind}{' (via a symlink)' if link else ''}; "
                       "never opened")

    walk("", frozenset({root_real}))
    # Sorted by path (the walk sorts each directory's names, not the whole paths); the order is
    # an index array, not a list of tuples: a few bytes per file beyond the paths themselves.
    order = np.argsort(np.array(files, dtype=object), kind="stable")
    return Scan(files=[files[i] for i in order], skipped=sorted(skipped, key=lambda r: r.source),
                entries=np.frombuffer(bytes(entry_ids), dtype="S24")[order])
