"""Which shards each rank reads: a plan made once from the manifest, and each rank's part of it.

A run over an archive of millions of clips must not hand every rank every tar (DALI would open
all of them in every rank, and read every ``.idx``), nor have every rank read the whole manifest
to select sites or views. Instead:

1. **Once, in the driver**, `plan_reading` streams four columns of ``manifest.parquet``
   (``shard``, ``split``, ``site``, ``view``; dictionary-encoded, one record batch at a time) and
   keeps, per split, one small row per shard: its name, its samples and how many of them the run
   reads (``data.exclude_sites``, ``sites``, ``data.views`` applied). Memory is O(shards), not
   O(clips); unknown sites are refused here, once. The plan (a few bytes per shard) travels to
   every rank with the run's config.
2. **Each rank**, per epoch, computes its own part with `assign` from the plan alone: no file is
   read to decide it. With at least as many non-empty shards as ranks, whole shards are dealt
   out by clip count (largest first, each to the least-loaded rank, ties to the lowest rank), so
   the ranks' tar lists are disjoint and each clip is read by exactly one rank. For the training
   split, shards of equal size are shuffled among themselves per epoch with ``(seed, epoch)``
   (the same on every rank), so which rank reads which shard changes every epoch while every
   rank's load, and so the number of batches per epoch, stays the same. Validation and test use
   the stored order, the same every epoch. A split with fewer non-empty shards than ranks (a
   small validation split) is cut by samples instead: ``floor(n*r/w)..floor(n*(r+1)/w)`` of its
   selected samples in stored order, so a tar may then be read by two ranks, each reading its own
   samples of it.
3. A rank writes shortened ``.idx`` files only for its own shards that lose samples to the
   selection, reading only the manifest rows of those shards (`kept_keys`: row groups whose
   ``shard`` statistics cannot hold them are skipped, the rest filtered as they stream).

Every rank runs ``ceil(max load / batch)`` batches; a rank with fewer samples pads with samples
marked invalid (`read.loader.ClipLoader`), so DDP collectives never wait for a rank that ran
out.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echocmr.shards.format import SPLITS, VIEW_VOCABULARY, view_class
from echocmr.shards.manifest import codes_of, open_manifest

_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class SplitShards:
    """One split's shards in stored order: tar names, samples in each, samples the run reads."""

    names: tuple[str, ...]
    totals: tuple[int, ...]
    kept: tuple[int, ...]

    @property
    def samples(self) -> int:
        return sum(self.kept)


@dataclass(frozen=True)
class Piece:
    """Samples ``start..stop`` (in stored order, counting only the selected ones) of one shard."""

    name: str
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ReadPlan:
    """What a run reads, per split (`plan_reading`); small enough to send to every rank."""

    exclude_sites: tuple[str, ...] = ()
    sites: tuple[str, ...] | None = None
    views: tuple[str, ...] | None = None  # None: every view
    splits: dict[str, SplitShards] = field(default_factory=dict)

    @property
    def selective(self) -> bool:
        """Whether some shard loses samples to the selection (shortened indexes needed)."""
        return any(s.kept != s.totals for s in self.splits.values())

    def split(self, name: str) -> SplitShards:
        if name not in self.splits:
            raise ValueError(f"the read plan has no {name} split (it covers "
                             f"{', '.join(self.splits) or 'none'})")
        return self.splits[name]


def _unknown_sites(have: Iterable[str], names: Sequence[str], flag: str, where: str) -> None:
    have = sorted(have)
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ValueError(f"{flag} {', '.join(unknown)}: {where} has no such site; its sites are "
                         f"{', '.join(have)}")


def selection_mask(site: pa.Array, view: pa.Array | None, *, exclude_sites: Sequence[str],
              sites: Sequence[str] | None, views: Sequence[str] | None) -> np.ndarray:
    """A boolean per row: kept by the site and view selection (computed on the dictionaries)."""
    site_codes, site_names = codes_of(site)
    keep_site = np.array([s not in exclude_sites and (sites is None or s in sites)
                          for s in map(str, site_names)] + [False], dtype=bool)
    keep = keep_site[site_codes]  # code -1 (null site) -> the trailing False
    if views is not None and view is not None:
        view_codes, view_names = codes_of(view)
        keep_view = np.array([view_class(v) in views for v in view_names]
                             + [view_class(None) in views], dtype=bool)
        keep &= keep_view[view_codes]
    return keep


def plan_reading(shards: str, splits: Sequence[str] = SPLITS, *,
                 exclude_sites: Sequence[str] = (), sites: Sequence[str] | None = None,
                 views: Sequence[str] | None = None) -> ReadPlan:
    """The `ReadPlan` of ``splits`` of the set at ``shards`` (module docstring, step 1).

    ``exclude_sites`` leaves those sites out, ``sites`` keeps only those, ``views`` only clips of
    those view classes (None: every view). A site the set does not have is a ValueError naming
    the sites it has. One pass over four dictionary-encoded columns; memory O(shards)."""
    exclude_sites = tuple(exclude_sites)
    sites = None if sites is None else tuple(sites)
    if views is not None and set(VIEW_VOCABULARY) <= {view_class(v) for v in views}:
        views = None
    views = None if views is None else tuple(views)
    pf = open_manifest(shards)
    columns = [c for c in ("shard", "split", "site", "view") if c in pf.schema_arrow.names]
    totals: dict[str, int] = {}
    kept: dict[str, int] = {}
    split_of: dict[str, str] = {}
    all_sites: set[str] = set()
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        shard_codes, shard_names = codes_of(batch.column(columns.index("shard")))
        split_codes, split_names = codes_of(batch.column(columns.index("split")))
        site = batch.column(columns.index("site"))
        all_sites.update(str(s) for s in codes_of(site)[1])
        view = batch.column(columns.index("view")) if "view" in columns else None
        keep = selection_mask(site, view, exclude_sites=exclude_sites, sites=sites, views=views)
        n_total = np.bincount(shard_codes, minlength=len(shard_names))
        n_kept = np.bincount(shard_codes[keep], minlength=len(shard_names))
        first = np.full(len(shard_names), -1)
        first[shard_codes[::-1]] = split_codes[::-1]  # one split code per shard (its first row)
        for code, name in enumerate(shard_names):
            if n_total[code]:
                totals[name] = totals.get(name, 0) + int(n_total[code])
                kept[name] = kept.get(name, 0) + int(n_kept[code])
                split_of.setdefault(name, str(split_names[first[code]]))
    where = f"shard set {shards}"
    _unknown_sites(all_sites, exclude_sites, "--exclude-site", where)
    if sites is not None:
        _unknown_sites(all_sites, sites, "--holdout-site", where)
    out = {}
    for split in splits:
        names = sorted((n for n, s in split_of.items() if s == split),
                       key=lambda n: (len(n), n))  # train-000010 after train-000009
        out[split] = SplitShards(names=tuple(names), totals=tuple(totals[n] for n in names),
                                 kept=tuple(kept[n] for n in names))
    if views is not None and not any(s.kept != s.totals for s in out.values()):
        views = None  # every clip of these splits is of a selected view
    return ReadPlan(exclude_sites=exclude_sites, sites=sites, views=views, splits=out)


def _order(shards: SplitShards, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Non-empty shards, largest first; equal sizes in stored order, or shuffled per epoch."""
    candidates = [i for i, k in enumerate(shards.kept) if k]
    if shuffle:
        # the same on every rank: (seed, epoch) only (read.loader.derive_seed's mixing)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 7]))
        candidates = [candidates[i] for i in rng.permutation(len(candidates))]
    return sorted(candidates, key=lambda i: -shards.kept[i])  # stable: ties keep that order


def deal(shards: SplitShards, world: int, *, seed: int = 0, epoch: int = 0,
         shuffle: bool = False) -> list[list[Piece]]:
    """Every rank's pieces of the split for ``epoch`` (module docstring, step 2), each in the
    order the rank reads them (for ``shuffle``, a per-epoch order; otherwise stored order).
    O(shards log world)."""
    if world < 1:
        raise ValueError(f"world size {world} < 1")
    order = _order(shards, seed=seed, epoch=epoch, shuffle=shuffle)
    if len(order) < world:
        return [_by_samples(shards, r, world) for r in range(world)]
    heap = [(0, r) for r in range(world)]  # (load, rank): the least loaded, then the lowest rank
    mine: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        load, r = heapq.heappop(heap)
        mine[r].append(i)
        heapq.heappush(heap, (load + shards.kept[i], r))
    if not shuffle:
        for m in mine:
            m.sort()
    return [[Piece(shards.names[i], 0, shards.kept[i]) for i in m] for m in mine]


def assign(shards: SplitShards, rank: int, world: int, *, seed: int = 0, epoch: int = 0,
           shuffle: bool = False) -> list[Piece]:
    """Rank ``rank``'s pieces of the split for ``epoch`` (`deal`)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return deal(shards, world, seed=seed, epoch=epoch, shuffle=shuffle)[rank]


def _by_samples(shards: SplitShards, rank: int, world: int) -> list[Piece]:
    n = shards.samples
    lo, hi = n * rank // world, n * (rank + 1) // world
    pieces, at = [], 0
    for name, k in zip(shards.names, shards.kept, strict=True):
        start, stop = max(lo, at), min(hi, at + k)
        if start < stop:
            pieces.append(Piece(name, start - at, stop - at))
        at += k
    return pieces


def loads(shards: SplitShards, world: int) -> list[int]:
    """Samples per rank (the same every epoch, whatever the shuffle)."""
    return [sum(p.count for p in pieces) for pieces in deal(shards, world)]


def batches_per_epoch(shards: SplitShards, world: int, batch_size: int) -> int:
    return math.ceil(max(loads(shards, world)) / batch_size)


def kept_keys(shards: str, names: Iterable[str], plan: ReadPlan) -> tuple[dict[str, list[str]], int]:
    """``({shard name: keys of its selected samples, in stored order}, manifest rows decoded)``
    for the named shards only (module docstring, step 3): row groups whose ``shard`` column
    statistics exclude every name are never decoded; the rest are read one at a time and
    filtered to those shards' rows before anything else is done with them."""
    wanted = sorted(set(names))
    out: dict[str, list[str]] = {n: [] for n in wanted}
    if not wanted:
        return out, 0
    pf = open_manifest(shards)
    columns = [c for c in ("shard", "key", "site", "view") if c in pf.schema_arrow.names]
    shard_col = pf.schema_arrow.names.index("shard")
    decoded = 0
    value_set = pa.array(wanted, pa.string())
    for g in range(pf.num_row_groups):
        stats = pf.metadata.row_group(g).column(shard_col).statistics
        if stats is not None and stats.has_min_max:
            lo, hi = str(stats.min), str(stats.max)
            if not any(lo <= n <= hi for n in wanted):
                continue
        table = pf.read_row_group(g, columns=columns, use_threads=False)
        decoded += table.num_rows
        shard = table.column("shard").combine_chunks()
        plain = shard.cast(pa.string()) if pa.types.is_dictionary(shard.type) else shard
        table = table.filter(pc.is_in(plain, value_set=value_set))
        if not table.num_rows:
            continue
        keep = selection_mask(table.column("site").combine_chunks(),
                         table.column("view").combine_chunks() if "view" in columns else None,
                         exclude_sites=plan.exclude_sites, sites=plan.sites, views=plan.views)
        table = table.filter(pa.array(keep))
        shard_values = table.column("shard").combine_chunks()
        if pa.types.is_dictionary(shard_values.type):
            shard_values = shard_values.cast(pa.string())
        for name, key in zip(shard_values.to_pylist(), table.column("key").to_pylist(),
                             strict=True):
            out[name].append(key)
    return out, decoded
