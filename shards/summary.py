"""Per-split counts of a manifest given a record batch at a time: what ``stats.json`` and the
``shards stats`` report are made of, in memory that does not grow with the set.

`ManifestSummary` takes the manifest's rows in batches (`add`, any order, from any number of
files) and keeps only counters: clips, known and positive labels per task, sites, clips per value
of each ``by`` column, per shard, the train pixel sums (`shards.streaming.ExactSum`) and the
min/max/sum of the ``numbers`` columns. The distinct studies and patients (per split, and per
split and value of each ``by`` column) are counted at `finish` from rows spilled by hash of the
study or patient (`shards.streaming.Partitions`), one part at a time. The ``by`` and ``numbers``
columns are the caller's (`shards.stats` names them), so a new manifest column slots in there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echocmr.shards.format import SPLITS, TASKS
from echocmr.shards.streaming import ExactSum, Partitions

HASHES = ("study_hash", "patient_hash")


def plain(column) -> pa.Array:
    """A column (chunked or not, dictionary-encoded or not) as one plain array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array


def split_codes(column) -> np.ndarray:
    """Index in `SPLITS` per row (-1: null or another value)."""
    array = plain(column)
    return pc.index_in(array, value_set=pa.array(SPLITS)).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


class _Numbers:
    """min, max, exact sum and count of one numeric column per split (NaN propagates)."""

    def __init__(self) -> None:
        self.n = np.zeros(len(SPLITS), np.int64)
        self.lo = np.full(len(SPLITS), np.inf)
        self.hi = np.full(len(SPLITS), -np.inf)
        self.nan = np.zeros(len(SPLITS), bool)
        self.sums = [ExactSum() for _ in SPLITS]

    def add(self, split: np.ndarray, values: np.ndarray) -> None:
        for s in range(len(SPLITS)):
            v = values[split == s]
            if not len(v):
                continue
            self.n[s] += len(v)
            self.nan[s] |= bool(np.isnan(v).any())
            self.lo[s] = min(self.lo[s], float(np.nanmin(v)) if not np.isnan(v).all() else np.inf)
            self.hi[s] = max(self.hi[s], float(np.nanmax(v)) if not np.isnan(v).all() else -np.inf)
            self.sums[s].add(v[~np.isnan(v)])


class ManifestSummary:
    """Counters over manifest rows (see the module doc). ``n_rows`` (the set's size, for the
    spill's part count), ``by`` (string columns counted per value), ``numbers`` (numeric columns
    described per split), ``shards`` (count clips per shard name)."""

    def __init__(self, n_rows: int, *, by: Sequence[str] = (), numbers: Sequence[str] = (),
                 shards: bool = False) -> None:
        self.by, self.numbers, self.count_shards = tuple(by), tuple(numbers), shards
        self.clips = np.zeros(len(SPLITS), np.int64)
        self.positives = np.zeros((len(SPLITS), len(TASKS)), np.int64)
        self.known = np.zeros((len(SPLITS), len(TASKS)), np.int64)
        self.sites: list[set[str]] = [set() for _ in SPLITS]
        self.by_clips: dict[str, list[Counter]] = {c: [Counter() for _ in SPLITS] for c in by}
        self.shard_clips: list[Counter] = [Counter() for _ in SPLITS]
        self.pixels = (ExactSum(), ExactSum(), ExactSum())  # train: n, n*mean, n*(std²+mean²)
        self.number_stats = {c: _Numbers() for c in numbers}
        self._spills = {h: Partitions(n_rows, h) for h in HASHES}
        self.distinct: dict[str, np.ndarray] = {}
        self.by_distinct: dict[str, dict[str, list[Counter]]] = {}

    def add(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Count a batch of manifest rows (columns: split, site, the hashes, the tasks, and
        whichever of the pixel, ``by``, ``numbers`` and shard columns are there)."""
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        split = split_codes(rows.column("split"))
        inside = split >= 0
        if not inside.all():
            rows = rows.filter(pa.array(inside))
            split = split[inside]
        if not rows.num_rows:
            return
        self.clips += np.bincount(split, minlength=len(SPLITS))
        for t, task in enumerate(TASKS):
            values = _floats(rows.column(task))
            for s in range(len(SPLITS)):
                v = values[split == s]
                self.known[s, t] += int(np.count_nonzero(~np.isnan(v)))
                self.positives[s, t] += int(np.count_nonzero(v > 0.5))
        site = plain(rows.column("site"))
        for s, name in self._pairs(split, site):
            self.sites[s].add("None" if name is None else str(name))
        for column in self.by:
            counts = self.by_clips[column]
            for (s, value), n in self._pair_counts(split, plain(rows.column(column))).items():
                if value is not None:
                    counts[s][value] += n
        if self.count_shards:
            for (s, value), n in self._pair_counts(split, plain(rows.column("shard"))).items():
                if value is not None:
                    self.shard_clips[s][value] += n
        if "pixel_mean" in rows.column_names:
            train = split == SPLITS.index("train")
            n = _floats(rows.column("n_pixels"))[train]
            mean = _floats(rows.column("pixel_mean"))[train]
            std = _floats(rows.column("pixel_std"))[train]
            for total, values in zip(self.pixels, (n, n * mean, n * (std * std + mean * mean)),
                                     strict=True):
                total.add(values)
        for column in self.numbers:
            self.number_stats[column].add(split, _floats(rows.column(column)))
        names = pa.array(np.array(SPLITS)[split])
        for h in HASHES:
            value = plain(rows.column(h))
            keep = value.is_valid()
            part = {"split": names, h: value,
                    **{c: plain(rows.column(c)).cast(pa.string()) for c in self.by}}
            self._spills[h].add(pa.table(part).filter(keep))

    @staticmethod
    def _pair_counts(split: np.ndarray, values: pa.Array) -> dict[tuple[int, object], int]:
        encoded = values.dictionary_encode()
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        names = encoded.dictionary.to_pylist() + [None]
        width = len(names)
        pairs, n = np.unique(split * width + np.where(codes < 0, width - 1, codes),
                             return_counts=True)
        return {(int(p // width), names[p % width]): int(c)
                for p, c in zip(pairs.tolist(), n.tolist(), strict=True)}

    def _pairs(self, split: np.ndarray, values: pa.Array):
        return list(self._pair_counts(split, values))

    def finish(self) -> ManifestSummary:
        """Count the distinct studies and patients from the spilled rows (then frees them)."""
        for h in HASHES:
            distinct = np.zeros(len(SPLITS), np.int64)
            per = {c: [Counter() for _ in SPLITS] for c in self.by}
            with self._spills[h] as spill:
                for part in spill:
                    # Single-threaded: each pool thread would keep its own allocator heap.
                    pairs = part.group_by(["split", h], use_threads=False).aggregate([])
                    for name, n in _value_counts(pairs.column("split")):
                        distinct[SPLITS.index(name)] += n
                    for c in self.by:
                        known = part.filter(pc.is_valid(part.column(c)))
                        triples = known.group_by(["split", c, h],
                                                 use_threads=False).aggregate([])
                        grouped = triples.group_by(["split", c], use_threads=False).aggregate(
                            [(h, "count")])
                        for s, value, n in zip(grouped.column("split").to_pylist(),
                                               grouped.column(c).to_pylist(),
                                               grouped.column(f"{h}_count").to_pylist(),
                                               strict=True):
                            per[c][SPLITS.index(s)][value] += n
            self.distinct[h] = distinct
            self.by_distinct[h] = per
        return self

    def close(self) -> None:
        """Remove the spilled rows (`finish` does; this is for a run that stops before it)."""
        for spill in self._spills.values():
            spill.close()

    def split_block(self, s: int) -> dict:
        """One split's ``stats.json`` block (`shards.stats.compute_stats`)."""
        positives, known, prevalence = {}, {}, {}
        for t, task in enumerate(TASKS):
            p, k = int(self.positives[s, t]), int(self.known[s, t])
            positives[task], known[task] = p, k
            prevalence[task] = round(p / k, 6) if k else None
        return {
            "clips": int(self.clips[s]),
            "studies": int(self.distinct["study_hash"][s]),
            "patients": int(self.distinct["patient_hash"][s]),
            "sites": sorted(self.sites[s]),
            "positives": positives,
            "known": known,
            "prevalence": prevalence,
        }

    def count_by(self, column: str, s: int) -> dict:
        """Clips, studies and patients per value of ``column`` in split ``s``, values sorted."""
        clips = self.by_clips[column][s]
        return {str(v): {"clips": int(clips[v]),
                         "studies": int(self.by_distinct["study_hash"][column][s][v]),
                         "patients": int(self.by_distinct["patient_hash"][column][s][v])}
                for v in sorted(clips)}

    def pooled_pixels(self) -> tuple[float, float]:
        """Train's pooled pixel mean and std (`shards.stats.pooled_pixel_stats`)."""
        import math

        total = self.pixels[0].value()
        if total <= 0:
            return float("nan"), float("nan")
        mean = self.pixels[1].value() / total
        second = self.pixels[2].value() / total
        return mean, math.sqrt(max(second - mean * mean, 0.0))


def _value_counts(column) -> list[tuple[str, int]]:
    counted = pc.value_counts(plain(column))
    return list(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(),
                    strict=True))


def _floats(column) -> np.ndarray:
    return plain(column).to_numpy(zero_copy_only=False).astype(np.float64)
