"""Reshard's plan in memory that does not grow with the set: which input row goes to which
output shard, in which order (`shards.reshard`'s mixing rule), from rows spilled to disk.

The scan hands every input row over as numbers (`PlanRows.add`: split, site, key prefix and
16-hex number, origin). They never stay in memory: each step is an external sort
(`shards.external_sort`) or a sequential file of local scratch space (``$TMPDIR``), and the
driver holds a run of records (`external_sort.RUN_ROWS`), one output shard's rows, and one site's
seeded permutation of its rows within a split (4 bytes a row: numpy's shuffle of the whole site
is what fixes the plan, and it is in memory; ~6 MB for a site of 1.5·10^6 training clips).

1. The rows sorted by (key prefix, number): a repeated key is found next to its copies, and each
   split's rows are written in key order, a file per (split, prefix).
2. Per split, per site (by name), the site's ranks (``rng.permutation``) and offsets
   (``rng.random``) are drawn exactly as the in-memory plan drew them and each row gets its
   position ``(rank + u) / n_site``; the rows are sorted by (position, key order), cut into the
   split's shards, and each shard shuffled once more (``rng.permutation``): the same draws from
   the same generator in the same order, so the same plan, byte for byte.
3. Each row's place in the output, sorted by its origin, is written as one dense file of int64
   indexed by input row (`places` reads a shard's rows of it back with ranged reads).

Scratch space: about 100 bytes a row at most at once; all of it is removed on every exit path
(`close`, a ``with`` block, or collection after an error).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from echocmr.shards.external_sort import ExternalSort, be_key

ORIGIN_SHIFT = 40  # origin = input number << ORIGIN_SHIFT | row in that input's manifest
_SCAN = np.dtype([("k", "S16"), ("origin", "<i8"), ("split", "i1"), ("site", "<i2"),
                  ("prefix", "<i2")])
_ORDER = np.dtype([("site", "<i2"), ("origin", "<i8")])  # a split's rows, in key order
_POSITION = np.dtype([("k", "S16"), ("origin", "<i8")])  # (position bits, key order), origin
_PLACE = np.dtype([("k", "<u8"), ("place", "<i8")])  # origin, place in the output
_READ_ROWS = 1 << 16  # records read at a time from a sequential file


@dataclass(frozen=True)
class Repeated:
    """Keys found more than once: how many distinct ones, and the first by input order."""

    count: int
    prefix: int  # its prefix code
    number: int  # its 16-hex number
    origin: int


@dataclass(frozen=True)
class PlannedShard:
    name: str
    size: int


class PlanRows:
    """Every input row's plan numbers, spilled; builds the plan from them (see the module doc).
    Use as a context manager: its scratch files are removed on exit."""

    def __init__(self, n_splits: int, *, run_rows: int | None = None) -> None:
        self.n_splits = n_splits
        self._run_rows = run_rows
        self._keys = ExternalSort(_SCAN, run_rows=run_rows, prefix="echocmr-plan-keys-")
        self._dir = tempfile.mkdtemp(prefix="echocmr-plan-")
        weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._order_files: dict[tuple[int, int], str] = {}
        self.counts = np.zeros((n_splits, 1), np.int64)  # kept rows per (split, site code)

    def __enter__(self) -> PlanRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._keys.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def add(self, split: np.ndarray, site: np.ndarray, prefix: np.ndarray, number: np.ndarray,
            origin: np.ndarray) -> None:
        """One batch of input rows (split -1: in no split, never planned)."""
        records = np.empty(len(split), _SCAN)
        records["k"] = be_key(prefix.astype(np.uint64), number)
        records["origin"], records["split"] = origin, split
        records["site"], records["prefix"] = site, prefix
        self._keys.add(records)

    # -- 1: key order ---------------------------------------------------------------------------

    def sort_by_key(self, drop_sites: np.ndarray, n_sites: int) -> Repeated | None:
        """Sort the rows by key; write each split's rows (but those of ``drop_sites``) in key
        order, one file per (split, prefix); count the kept rows per (split, site). Returns the
        repeated keys (every row, dropped sites included, counts), or None."""
        self.counts = np.zeros((self.n_splits, max(n_sites, 1)), np.int64)
        dropped = np.zeros(max(n_sites, 1), bool)
        dropped[drop_sites] = True
        repeated, first = 0, None  # first: (origin, prefix, number) of the first repeated key
        carry = None  # the last key group seen: [key, rows, least origin, prefix]
        files: dict[tuple[int, int], object] = {}

        def settle(group) -> None:
            nonlocal repeated, first
            if group[1] > 1:
                repeated += 1
                if first is None or group[2] < first[0]:
                    number = int.from_bytes(bytes(group[0]).ljust(16, b"\0")[8:], "big")
                    first = (group[2], group[3], number)

        try:
            for chunk in self._keys:
                k = chunk["k"]
                starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
                sizes = np.diff(np.r_[starts, len(k)])
                least = np.minimum.reduceat(chunk["origin"], starts)
                groups = [[k[s], int(n), int(o), int(p)] for s, n, o, p in zip(
                    starts.tolist(), sizes.tolist(), least.tolist(),
                    chunk["prefix"][starts].tolist(), strict=True)
                    ] if (sizes > 1).any() or carry is not None and k[0] == carry[0] else None
                if groups is None:  # no repeat in this chunk nor across its start
                    if carry is not None:
                        settle(carry)
                    carry = [k[-1], 1, int(chunk["origin"][-1]), int(chunk["prefix"][-1])]
                else:
                    if carry is not None:
                        if groups[0][0] == carry[0]:
                            groups[0][1] += carry[1]
                            groups[0][2] = min(groups[0][2], carry[2])
                        else:
                            settle(carry)
                    for group in groups[:-1]:
                        settle(group)
                    carry = groups[-1]
                kept = chunk[(chunk["split"] >= 0) & ~dropped[chunk["site"]]]
                np.add.at(self.counts, (kept["split"].astype(np.int64),
                                        kept["site"].astype(np.int64)), 1)
                pair = kept["split"].astype(np.int64) << 16 | kept["prefix"].astype(np.int64)
                for value in np.unique(pair).tolist():
                    mine = kept[pair == value]
                    where = (value >> 16, value & 0xFFFF)
                    if where not in files:
                        path = os.path.join(self._dir, f"order-{where[0]}-{where[1]}")
                        self._order_files[where] = path
                        files[where] = open(path, "wb")  # noqa: SIM115 (closed below)
                    out = np.empty(len(mine), _ORDER)
                    out["site"], out["origin"] = mine["site"], mine["origin"]
                    out.tofile(files[where])
            if carry is not None:
                settle(carry)
        finally:
            for f in files.values():
                f.close()
            self._keys.close()
        if not repeated:
            return None
        return Repeated(count=repeated, prefix=first[1], number=first[2], origin=first[0])

    def _split_order(self, split: int, prefix_order: list[int]) -> Iterator[np.ndarray]:
        """A split's kept rows in key order (prefixes in ``prefix_order``), in chunks."""
        for prefix in prefix_order:
            path = self._order_files.get((split, prefix))
            if path is None:
                continue
            with open(path, "rb") as f:
                while len(chunk := np.fromfile(f, _ORDER, count=_READ_ROWS)):
                    yield chunk

    # -- 2: the plan ----------------------------------------------------------------------------

    def plan(self, *, splits: tuple[str, ...], seed: int, prefix_names: list[str],
             site_names: list[str], shard_count: Callable[[int, int], int],
             split_bytes: Callable[[int], int], shard_name: Callable[[str, int], str],
             first_row: np.ndarray) -> list[PlannedShard]:
        """Output shards in order, each row's place written to the places file (see `places`).
        ``shard_count(n, tar bytes)`` gives a split's number of shards, ``split_bytes(split)``
        its kept rows' tar bytes."""
        prefix_order = sorted(range(len(prefix_names)), key=lambda c: prefix_names[c])
        site_order = sorted(range(len(site_names)), key=lambda c: site_names[c])
        shards: list[PlannedShard] = []
        placed = 0
        with ExternalSort(_PLACE, run_rows=self._run_rows,
                          prefix="echocmr-plan-places-") as places:
            for split_number, split in enumerate(splits):
                n = int(self.counts[split_number].sum())
                if not n:
                    continue
                rng = np.random.default_rng([seed, split_number])
                with ExternalSort(_POSITION, run_rows=self._run_rows,
                                  prefix="echocmr-plan-positions-") as positions:
                    for site in site_order:
                        n_site = int(self.counts[split_number, site])
                        if n_site:
                            self._positions(split_number, site, n_site, rng, prefix_order,
                                            positions)
                    n_shards = shard_count(n, split_bytes(split_number))
                    base, extra = divmod(n, n_shards)
                    sizes = [base + (1 if k < extra else 0) for k in range(n_shards)]
                    for number, origins in enumerate(_cut(positions, sizes)):
                        order = origins[rng.permutation(len(origins))]
                        records = np.empty(len(order), _PLACE)
                        records["k"] = order.astype(np.uint64)
                        records["place"] = placed + np.arange(len(order))
                        places.add(records)
                        placed += len(order)
                        shards.append(PlannedShard(shard_name(split, number), len(order)))
            self._write_places(places, first_row)
        for path in self._order_files.values():
            os.remove(path)
        self._order_files.clear()
        return shards

    def _positions(self, split: int, site: int, n_site: int, rng: np.random.Generator,
                   prefix_order: list[int], positions: ExternalSort) -> None:
        """One site's positions in a split, drawn as the in-memory plan drew them: its ranks
        (``rng.permutation(n_site)``, as int32 when they fit: the same shuffle) then one
        ``rng.random`` per row in key order (drawn in pieces: the same numbers)."""
        rank = np.arange(n_site, dtype=np.int32 if n_site < 2**31 else np.int64)
        rng.shuffle(rank)
        done, seen = 0, 0
        for chunk in self._split_order(split, prefix_order):
            mine = np.flatnonzero(chunk["site"] == site)
            if len(mine):
                position = (rank[done:done + len(mine)] + rng.random(len(mine))) / n_site
                records = np.empty(len(mine), _POSITION)
                records["k"] = be_key(position.view(np.uint64), (seen + mine).astype(np.uint64))
                records["origin"] = chunk["origin"][mine]
                positions.add(records)
                done += len(mine)
            seen += len(chunk)
        assert done == n_site, (done, n_site)

    # -- 3: places ------------------------------------------------------------------------------

    def _write_places(self, places: ExternalSort, first_row: np.ndarray) -> None:
        """Each input row's place in the output (-1: not planned), a dense int64 file."""
        path = os.path.join(self._dir, "places")
        cursor = 0
        with open(path, "wb") as f:
            for chunk in places:
                origin = chunk["k"].astype(np.int64)
                row = first_row[origin >> ORIGIN_SHIFT] + (origin & ((1 << ORIGIN_SHIFT) - 1))
                while cursor < row[0]:  # rows of no plan (excluded sites, no split)
                    gap = min(int(row[0]) - cursor, _READ_ROWS)
                    np.full(gap, -1, np.int64).tofile(f)
                    cursor += gap
                block = np.full(int(row[-1]) - cursor + 1, -1, np.int64)
                block[row - cursor] = chunk["place"]
                block.tofile(f)
                cursor += len(block)
            total = int(first_row[-1])
            while cursor < total:
                gap = min(total - cursor, _READ_ROWS)
                np.full(gap, -1, np.int64).tofile(f)
                cursor += gap
        self._places = path

    def places(self, rows: np.ndarray) -> np.ndarray:
        """The output places of input rows ``rows`` (global row numbers, in any order), read
        from the places file by one ranged read per run of consecutive rows."""
        out = np.empty(len(rows), np.int64)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        starts = np.r_[0, breaks]
        stops = np.r_[breaks, len(rows)]
        values = np.empty(len(rows), np.int64)
        fd = os.open(self._places, os.O_RDONLY)
        try:
            for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                first = int(sorted_rows[a])
                raw = os.pread(fd, 8 * (b - a), 8 * first)
                values[a:b] = np.frombuffer(raw, np.int64)
        finally:
            os.close(fd)
        out[order] = values
        return out


def _cut(positions: ExternalSort, sizes: list[int]) -> Iterator[np.ndarray]:
    """The sorted rows' origins, cut into consecutive pieces of ``sizes``."""
    pending: list[np.ndarray] = []
    held = 0
    k = 0
    for chunk in positions:
        origins = chunk["origin"]
        while len(origins):
            if k >= len(sizes):
                raise AssertionError("more planned rows than the split's shards hold")
            take = min(sizes[k] - held, len(origins))
            pending.append(origins[:take])
            held += take
            origins = origins[take:]
            if held == sizes[k]:
                yield np.concatenate(pending)
                pending, held, k = [], 0, k + 1
    while k < len(sizes) and sizes[k] == 0:
        yield np.empty(0, np.int64)
        k += 1
    if k != len(sizes) or held:
        raise AssertionError("fewer planned rows than the split's shards hold")

