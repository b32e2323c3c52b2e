"""DALI index files (``.idx``) for WebDataset tars, in exactly the format DALI's ``wds2idx`` writes.

DALI's ``fn.readers.webdataset`` needs one index per tar to shard samples across readers and to
seek. The format (``wds2idx`` index version ``v1.2``) is text::

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]
    ...

one line per sample (consecutive members sharing the part of the name before the first dot),
each line ending in a newline. Offsets are of the member's data, i.e. its 512-byte header's
offset + 512. Only regular files are listed.

We compute the index from the offsets we write (`IndexEntry` per member) rather than by running
``tar`` over the finished file; `index_from_tar` rebuilds it from any tar for checks (verify) and
tests prove it equals ``wds2idx``'s output byte for byte. Every ``.idx`` is read through here
(`parse_index`, or `index_count` for the sample count alone).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from echocmr.shards import storage
from echocmr.shards.format import split_member_name

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class IndexEntry:
    """One tar member: its extension, data offset and size in bytes, and full member name."""

    ext: str
    offset: int
    size: int
    name: str


SampleIndex = list[IndexEntry]  # the members of one sample, in tar order


def format_index(samples: list[SampleIndex]) -> str:
    """The ``.idx`` text for the given samples (members grouped per sample, in tar order)."""
    if not samples:
        # wds2idx refuses empty tars too; a shard set never writes one.
        raise ValueError("cannot index an empty tar")
    lines = [f"{INDEX_VERSION} {len(samples)}\n"]
    for members in samples:
        if not members:
            raise ValueError("a sample in the index has no members")
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members) + "\n")
    return "".join(lines)


def parse_index(text: str) -> list[SampleIndex]:
    """Parse ``.idx`` text (as written by `format_index` or ``wds2idx``) into samples."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError("index is empty")
    count = parse_header(lines[0])
    body = lines[1:]
    if len(body) != count:
        raise ValueError(f"index header says {count} samples but lists {len(body)}")
    samples: list[SampleIndex] = []
    for lineno, line in enumerate(body, start=2):
        fields = line.split(" ")
        if not fields or len(fields) % 4:
            raise ValueError(f"index line {lineno} is not groups of '<ext> <offset> <size> <name>'")
        samples.append(
            [
                IndexEntry(
                    ext=fields[i],
                    offset=int(fields[i + 1]),
                    size=int(fields[i + 2]),
                    name=fields[i + 3],
                )
                for i in range(0, len(fields), 4)
            ]
        )
    return samples


def parse_header(line: str) -> int:
    """The sample count of an index's first line (``v1.2 <count>``); ValueError otherwise."""
    header = line.split()
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise ValueError(f"index header {line.strip()!r} is not '{INDEX_VERSION} <count>'")
    return int(header[1])


def index_count(path: str) -> int:
    """The number of samples an ``.idx`` file lists, from its header line alone (a path or URL).

    Raises ValueError naming the file when it is not a ``wds2idx`` index.
    """

    with storage.open_file(path, "rb") as f:
        line = f.readline().decode("utf-8", errors="replace")
    try:
        return parse_header(line)
    except ValueError as exc:
        raise ValueError(f"{path} is not a DALI wds2idx index: {exc}") from None


def group_members(members: list[IndexEntry]) -> list[SampleIndex]:
    """Group consecutive members that share a key into samples, as ``wds2idx`` does."""
    samples: list[SampleIndex] = []
    last_key = None
    for member in members:
        key, _ = split_member_name(member.name)
        if key != last_key:
            samples.append([member])
            last_key = key
        else:
            samples[-1].append(member)
    return samples


def index_from_tar(fileobj: BinaryIO) -> list[SampleIndex]:
    """Rebuild the index of a tar from its headers (seeks; reads no member data).

    Raises `tarfile.TarError` for a damaged tar.
    """
    members: list[IndexEntry] = []
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                continue
            _, ext = split_member_name(info.name)
            members.append(
                IndexEntry(ext=ext, offset=info.offset_data, size=info.size, name=info.name)
            )
    return group_members(members)


def sample_keys(samples: list[SampleIndex]) -> list[str]:
    """The key of each indexed sample."""
    return [split_member_name(members[0].name)[0] for members in samples]
