"""Set-wide facts of a manifest in memory that does not grow with the set: exact sums, distinct
values by part, exact medians.

The toolkit's commands (verify, stats, reshard) read a manifest in record batches of a row group
(`shards.manifest`). What they compute across the whole set is built from three things here,
none of which holds a value per clip in the driver:

- `ExactSum`: the exact sum of float64 values, given a batch at a time, rounded once at the end:
  the same float as `math.fsum` over all of them (both are the correctly rounded exact sum), so
  pooled pixel statistics do not depend on batching or row order;
- `Partitions`: rows spilled to local temporary files in parts by a hash of one string column
  (the same value always lands in the same part), about `PART_ROWS` rows per part, then read
  back one part at a time: distinct counts, repeated keys and patients in two splits are
  computed part by part and summed or concatenated;
- `exact_medians`: the median of each group of a numeric column by a radix select over the
  value's 64 sortable bits, 16 bits per pass over the file (four passes, a 65,536-bin histogram
  per wanted rank): `numpy.median` to the bit, without holding the values.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

# Rows per part of a `Partitions` (a part is read back whole): a row group, a few MB.
PART_ROWS = 65_536
_SCALE = 1127  # x * 2**_SCALE is an integer for every finite float64 (2**-1074 is the least)
_CHUNK = 512  # int64 sums of this many 53-bit mantissas cannot overflow


class ExactSum:
    """The exact sum of float64 values given in batches (`add`); `value` rounds it once, as
    `math.fsum` does (NaN or an infinity among them gives what ordinary addition gives)."""

    def __init__(self) -> None:
        self._total = 0  # the sum times 2**_SCALE, an exact integer
        self._special = 0.0  # the non-finite values' sum (0.0 when there are none)

    def add(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(v)
        if not finite.all():
            self._special += float(np.sum(v[~finite]))
            v = v[finite]
        if not len(v):
            return
        mantissa, exponent = np.frexp(v)
        m = np.ldexp(mantissa, 53).astype(np.int64)  # exact: a float64 has 53 bits
        for e in np.unique(exponent).tolist():
            part = m[exponent == e]
            pad = (-len(part)) % _CHUNK
            if pad:
                part = np.concatenate([part, np.zeros(pad, np.int64)])
            s = sum(part.reshape(-1, _CHUNK).sum(axis=1).tolist())
            self._total += s << (e + _SCALE - 53)

    def value(self) -> float:
        if self._special != 0.0 or self._special != self._special:
            return self._special
        return self._total / (1 << _SCALE)  # int / int: correctly rounded


def _string_hash(array: pa.Array) -> np.ndarray:
    """A uint64 per row from a string array's length and last four bytes (equal strings give
    equal numbers; hex hashes and keys end in well-mixed characters). Nulls hash as ''."""
    if pa.types.is_dictionary(array.type):
        codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        per_value = np.append(_string_hash(array.dictionary), _string_hash(pa.array([""])))
        return per_value[codes]  # code -1 (null) -> the last entry
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    n = len(array)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], np.int64)[array.offset:array.offset + n + 1]
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None and len(buffers[2]) \
        else np.zeros(1, np.uint8)
    end, length = offsets[1:], offsets[1:] - offsets[:-1]
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        length = np.where(valid, length, 0)
    h = length.astype(np.uint64)
    for k in range(1, 5):
        present = length >= k
        byte = data[np.where(present, end - k, 0)].astype(np.uint64)
        h = h * np.uint64(257) + np.where(present, byte + np.uint64(1), np.uint64(0))
    h = h * np.uint64(0x9E3779B97F4A7C15)
    return h ^ (h >> np.uint64(29))


class Partitions:
    """Tables spilled in ``parts`` parts by a hash of the string column ``by``: every row with
    one value of ``by`` is in one part. With one part nothing goes to disk. Use as a context
    manager (the temporary files are removed on exit)."""

    def __init__(self, n_rows: int, by: str, *, part_rows: int | None = None) -> None:
        self.by = by
        self.parts = max(1, -(-int(n_rows) // (part_rows or PART_ROWS)))
        self._dir: str | None = None
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._memory: list[pa.Table] = []
        self._schema: pa.Schema | None = None

    def __enter__(self) -> Partitions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, table: pa.Table) -> None:
        if self._schema is None:
            self._schema = table.schema
        table = table.cast(self._schema)
        if self.parts == 1:
            self._memory.append(table)
            return
        column = table.column(self.by).combine_chunks()
        part = (_string_hash(column) % np.uint64(self.parts)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        for p in range(self.parts):
            rows = order[bounds[p]:bounds[p + 1]]
            if len(rows):
                self._writer(p).write_table(table.take(pa.array(rows)))

    def _writer(self, p: int) -> pa.ipc.RecordBatchStreamWriter:
        if p not in self._writers:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="echocmr-spill-")
                # Removed when this is closed, or collected (a command that stopped early).
                weakref.finalize(self, shutil.rmtree, self._dir, True)
            sink = pa.OSFile(os.path.join(self._dir, f"{p}.arrows"), "wb")
            self._writers[p] = pa.ipc.new_stream(
                sink, self._schema)
        return self._writers[p]

    def __iter__(self) -> Iterator[pa.Table]:
        """Each part's rows (an empty part is left out), one part in memory at a time."""
        if self.parts == 1:
            if self._memory:
                yield pa.concat_tables(self._memory)
            return
        for writer in self._writers.values():
            writer.close()
        for p in sorted(self._writers):
            with pa.OSFile(os.path.join(self._dir, f"{p}.arrows"), "rb") as source:
                table = pa.ipc.open_stream(source).read_all()
            yield table
            del table

    def close(self) -> None:
        self._writers.clear()
        self._memory.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# A bucket holds one small batch from every `Buckets.add` that had rows for it (reshard: one per
# input shard, ~n / 256 of them), each with its own buffers and objects; read whole, their count
# grew with the set and so did the driver's peak. Read back, every this many are combined into
# one chunk (the same rows in the same order).
_READ_BATCHES = 256


class Buckets:
    """Tables spilled to local temporary files by a bucket number the caller gives per row,
    read back one bucket at a time in bucket order (`read`). Use as a context manager."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="echocmr-buckets-")
        weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._schema: pa.Schema | None = None

    def __enter__(self) -> Buckets:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, table: pa.Table, bucket: np.ndarray) -> None:
        if self._schema is None:
            self._schema = table.schema
        table = table.cast(self._schema)
        order = np.argsort(bucket, kind="stable")
        values, starts = np.unique(bucket[order], return_index=True)
        for b, start, stop in zip(values.tolist(), starts.tolist(),
                                  [*starts[1:].tolist(), len(order)], strict=True):
            if b not in self._writers:
                sink = pa.OSFile(os.path.join(self._dir, f"{b}.arrows"), "wb")
                self._writers[b] = pa.ipc.new_stream(
                    sink, self._schema)
            self._writers[b].write_table(table.take(pa.array(order[start:stop])))

    def read(self, bucket: int) -> pa.Table | None:
        """The bucket's rows (None if none came), its file removed; call in bucket order."""
        writer = self._writers.pop(bucket, None)
        if writer is None:
            return None
        writer.close()
        path = os.path.join(self._dir, f"{bucket}.arrows")
        pieces, batches = [], []
        with pa.OSFile(path, "rb") as source:
            for batch in pa.ipc.open_stream(source):
                batches.append(batch)
                if len(batches) == _READ_BATCHES:
                    pieces.append(pa.Table.from_batches(batches).combine_chunks())
                    batches = []
        if batches or not pieces:
            pieces.append(pa.Table.from_batches(batches, schema=self._schema).combine_chunks())
        os.remove(path)
        return pa.concat_tables(pieces)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


def _sortable(values: np.ndarray) -> np.ndarray:
    """float64 -> uint64 in the same order (negative values below positive ones)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    top = np.uint64(1 << 63)
    return np.where(bits & top, ~bits, bits | top)


def _unsortable(key: int) -> float:
    top = 1 << 63
    bits = key & ~top if key & top else ~key & ((1 << 64) - 1)
    return float(np.array([bits], np.uint64).view(np.float64)[0])


def exact_medians(batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                  n_groups: int, dtype=np.float64) -> list[float | None]:
    """The median of each group's values, as `numpy.median` of them (in ``dtype``: the mean of
    the two middle values is taken in it) gives it; None for an empty group, NaN for a group
    holding a NaN. ``batches()`` yields ``(group code per row, value per row)`` (code -1: in no
    group) and is called five times (one count, then four 16-bit radix passes)."""
    counts = np.zeros(n_groups, np.int64)
    has_nan = np.zeros(n_groups, bool)
    for codes, values in batches():
        inside = codes >= 0
        counts += np.bincount(codes[inside], minlength=n_groups)
        nan = inside & np.isnan(values)
        if nan.any():
            has_nan[np.unique(codes[nan])] = True
    targets = []  # [group, rank, prefix]
    for g in range(n_groups):
        if counts[g] and not has_nan[g]:
            for rank in sorted({(counts[g] - 1) // 2, counts[g] // 2}):
                targets.append([g, int(rank), 0])
    for step in range(4):
        shift = np.uint64(48 - 16 * step)
        hist = np.zeros((len(targets), 1 << 16), np.int64)
        if targets:
            for codes, values in batches():
                for t, (g, _, prefix) in enumerate(targets):
                    keys = _sortable(values[codes == g])
                    if step:
                        keys = keys[(keys >> (shift + np.uint64(16))) == np.uint64(prefix)]
                    hist[t] += np.bincount(((keys >> shift) & np.uint64(0xFFFF)).astype(np.int64),
                                           minlength=1 << 16)
        for t, target in enumerate(targets):
            cumulative = np.cumsum(hist[t])
            b = int(np.searchsorted(cumulative, target[1], side="right"))
            target[1] -= int(cumulative[b - 1]) if b else 0
            target[2] = (target[2] << 16) | b
    found: dict[int, list[float]] = {}
    for g, _, key in targets:
        found.setdefault(g, []).append(_unsortable(key))
    out: list[float | None] = []
    for g in range(n_groups):
        if not counts[g]:
            out.append(None)
        elif has_nan[g]:
            out.append(float("nan"))
        else:
            out.append(float(np.mean(np.array(found[g], dtype=dtype))))
    return out
