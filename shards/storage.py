"""Where shard sets live: local directories and fsspec URLs (``s3://``, ``gs://``, ``file://``).

A shard set is addressed by one string, a local path or a URL prefix; these helpers are the only
place that tells the two apart, so the rest of the package reads and writes both the same way.

Atomic writes, the one property the format relies on (a crash must never leave half a shard):

- local paths (and ``file://``): the bytes go to a hidden temporary name in the destination
  directory, are flushed and fsynced, then ``os.replace``-d onto the final name (atomic on POSIX);
- object stores: the bytes are staged in a local temporary file and uploaded with one
  ``put_file``. An object store makes an object visible only when its upload completes (a single
  PUT, or the final "complete" call of a multipart upload), so readers see the whole object or
  none. We rely on that rather than upload-then-rename, because a "rename" in S3 or GCS is a copy
  plus a delete: twice the traffic and no stronger guarantee.

Stale temporary files left by a crash carry `TEMP_MARK` in their name; `remove_stale_temps`
deletes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import fsspec
from fsspec.core import url_to_fs

TEMP_MARK = ".tmp-"
_LOCAL_PROTOCOLS = ("file", "local")


def is_url(path: str) -> bool:
    """True for ``scheme://...`` strings other than ``file://``."""
    return "://" in str(path) and not is_local(path)


def is_local(path: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    path = str(path)
    if "://" not in path:
        return True
    return path.split("://", 1)[0] in _LOCAL_PROTOCOLS


def local_path(path: str) -> str:
    """A local path for a plain path or a ``file://`` URL."""
    path = str(path)
    if not is_local(path):
        raise ValueError(f"{path!r} is not a local path")
    return path.split("://", 1)[1] if "://" in path else path


def join(base: str, *names: str) -> str:
    """Join names onto a path or URL prefix with ``/``."""
    base = str(base)
    if is_local(base) and "://" not in base:
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *[n.strip("/") for n in names]])


def canonical(path: str) -> str:
    """A comparable form: real absolute path for local paths, URL without trailing '/'."""
    if is_local(path):
        return os.path.realpath(local_path(path))
    return str(path).rstrip("/")


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    path = str(path)
    if is_local(path):
        return fsspec.filesystem("file"), os.path.abspath(local_path(path))
    return url_to_fs(path)


def open_file(path: str, mode: str = "rb", **kwargs) -> BinaryIO:
    """Open a local path or URL (read modes; write with `atomic_write`)."""
    if is_local(path):
        return open(local_path(path), mode)
    fs, p = _fs(path)
    return fs.open(p, mode, **kwargs)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_range(path: str, start: int, length: int) -> bytes:
    """Bytes ``[start, start+length)`` of a file (one ranged GET on object stores)."""
    if is_local(path):
        with open(local_path(path), "rb") as f:
            f.seek(start)
            return f.read(length)
    fs, p = _fs(path)
    return fs.cat_file(p, start=start, end=start + length)


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.exists(p)


def size(path: str) -> int:
    fs, p = _fs(path)
    return int(fs.size(p))


def listdir(path: str) -> list[str]:
    """File names (not paths) directly inside a directory or URL prefix, sorted; [] if absent."""
    fs, p = _fs(path)
    try:
        entries = (
            fs.ls(p, detail=True, refresh=True) if not is_local(path) else fs.ls(p, detail=True)
        )
    except FileNotFoundError:
        return []
    return sorted(basename(e["name"]) for e in entries if e.get("type") != "directory")


def list_entries(path: str) -> list[tuple[str, str]]:
    """``(name, "file" | "directory")`` of everything directly inside a directory or URL
    prefix, sorted by name; [] if absent (`listdir` lists the files alone)."""
    fs, p = _fs(path)
    try:
        entries = (
            fs.ls(p, detail=True, refresh=True) if not is_local(path) else fs.ls(p, detail=True)
        )
    except FileNotFoundError:
        return []
    return sorted((basename(e["name"]), "directory" if e.get("type") == "directory" else "file")
                  for e in entries)


def walk_files(prefix: str) -> list[tuple[str, int, str]]:
    """Every object below a URL prefix, recursively: (relative POSIX path, size, version), sorted.

    ``version`` is what tells a changed object from the same one (its ETag, else its
    modification time, as the store reports it). For object stores, where a "directory" is only
    a shared prefix; local trees have their own walk (ingest's `scan_inputs`).
    """
    fs, root = _fs(prefix)
    root = root.rstrip("/")
    found = []
    for name, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = name[len(root):].lstrip("/") if name.startswith(root) else basename(name)
        version = str(info.get("ETag") or info.get("etag") or info.get("LastModified")
                      or info.get("mtime") or info.get("updated") or "")
        found.append((rel, int(info.get("size") or 0), version))
    return sorted(found)


def remove_tree(path: str) -> None:
    """Delete a directory or everything below a URL prefix (nothing there: nothing to do)."""
    if is_local(path):
        shutil.rmtree(local_path(path), ignore_errors=True)
        return
    fs, p = _fs(path)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(p):
            fs.rm(p, recursive=True)


def makedirs(path: str) -> None:
    """Create a local directory (object stores need none)."""
    if is_local(path):
        os.makedirs(local_path(path), exist_ok=True)


def remove(path: str) -> None:
    fs, p = _fs(path)
    if fs.exists(p):
        fs.rm(p)


def temp_name(final_name: str) -> str:
    """A hidden temporary sibling name for ``final_name`` (unique per call)."""
    return f".{final_name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"


def remove_stale_temps(directory: str) -> list[str]:
    """Delete temporary files a crashed writer left in a local directory; return their names."""
    if not is_local(directory):
        return []  # uploads are staged locally; nothing partial is ever visible remotely
    removed = []
    for name in listdir(directory):
        if name.startswith(".") and TEMP_MARK in name:
            os.remove(os.path.join(local_path(directory), name))
            removed.append(name)
    return removed


class StagedFile:
    """A binary file written at a temporary place and published atomically on `commit`.

    Local destinations write a hidden temp file beside the target; remote destinations write a
    local temp file that `commit` uploads. `discard` (or leaving the ``with`` block on an error)
    removes the temporary file and leaves the destination untouched.
    """

    def __init__(self, dest: str, *, staging_dir: str | None = None) -> None:
        self.dest = str(dest)
        if is_local(self.dest):
            final = os.path.abspath(local_path(self.dest))
            self._tmp = os.path.join(os.path.dirname(final), temp_name(os.path.basename(final)))
        else:
            fd, self._tmp = tempfile.mkstemp(prefix="echocmr-", suffix=".part", dir=staging_dir)
            os.close(fd)
        self.file: BinaryIO = open(self._tmp, "wb")
        self._done = False

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def commit(self) -> None:
        """Flush, fsync and publish the file under its final name."""
        if self._done:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        try:
            if is_local(self.dest):
                os.replace(self._tmp, local_path(self.dest))
            else:
                fs, p = _fs(self.dest)
                fs.put_file(self._tmp, p)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)
        self._done = True

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(dest: str, data: bytes) -> None:
    """Write ``data`` to ``dest`` (path or URL) atomically."""
    with StagedFile(dest) as f:
        f.write(data)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file path with the content of ``path`` (downloaded to a temp file for URLs)."""
    if is_local(path):
        yield local_path(path)
        return
    tmpdir = tempfile.mkdtemp(prefix="echocmr-")
    try:
        target = os.path.join(tmpdir, basename(path))
        fs, p = _fs(path)
        fs.get_file(p, target)
        yield target
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
