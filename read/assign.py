"""Which shards each rank reads: a plan made once from the manifest, and each rank's part of it.

A run over an archive of millions of clips must not hand every rank every tar (DALI would open
all of them in every rank, and read every ``.idx``), nor have every rank read the whole manifest
to select sites or views. Instead:

1. **Once, in the driver**, `plan_reading` streams four columns of ``manifest.parquet``
   (``shard``, ``split``, ``site``, ``view``; dictionary-encoded, one record batch at a time) and
   keeps, per split, one small row per shard: its name, its samples and how many of them the run
   reads (``data.exclude_sites``, ``sites``, ``data.views`` applied). For a shard that loses
   some samples to the selection, a second pass (the manifest streamed by shard, a few shards'
   rows at a time) adds which: one bit per sample in the order of its keys, and a fingerprint
   of those keys (32 + 16 bytes for a 256-clip shard). Memory is O(shards), not O(clips);
   unknown sites are refused here, once. The plan travels to every rank with the run's config
   (~1-2 MB for 10^7 clips with a selection, a few hundred KB without).
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
   selection, from the plan's bits and the shard's own ``.idx`` (`kept_in_index_order`, which
   first checks that the index's keys are the ones the plan saw): it reads no manifest at all.

Every rank runs ``ceil(max load / batch)`` batches; a rank with fewer samples pads with samples
marked invalid (`read.loader.ClipLoader`), so DDP collectives never wait for a rank that ran
out.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echocmr.shards.format import SPLITS, VIEW_VOCABULARY, view_class
from echocmr.shards.manifest import codes_of, iter_by_shard, open_manifest

_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class SplitShards:
    """One split's shards in stored order: tar names, samples in each, samples the run reads."""

    names: tuple[str, ...]
    totals: tuple[int, ...]
    kept: tuple[int, ...]
    # For a shard that loses some samples to the selection: which of its samples are kept, one
    # bit per sample in the order of their keys (np.packbits), and a fingerprint of those keys
    # (`key_fingerprint`); b"" and "" for a shard read whole or not at all.
    masks: tuple[bytes, ...] = ()
    fingerprints: tuple[str, ...] = ()

    @property
    def samples(self) -> int:
        return sum(self.kept)

    def selection(self, name: str) -> tuple[bytes, str]:
        """``(mask, fingerprint)`` of shard ``name`` (empty when it is read whole)."""
        if not self.masks:
            return b"", ""
        i = self._position[name]
        return self.masks[i], self.fingerprints[i]

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


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
    partial = {n for n in totals if 0 < kept[n] < totals[n] and split_of[n] in splits}
    selections = _selections(pf, partial, totals, exclude_sites=exclude_sites, sites=sites,
                             views=views) if partial else {}
    out = {}
    for split in splits:
        names = sorted((n for n, s in split_of.items() if s == split),
                       key=lambda n: (len(n), n))  # train-000010 after train-000009
        chosen = [selections.get(n, (b"", "")) for n in names]
        out[split] = SplitShards(names=tuple(names), totals=tuple(totals[n] for n in names),
                                 kept=tuple(kept[n] for n in names),
                                 masks=tuple(m for m, _ in chosen) if partial else (),
                                 fingerprints=tuple(f for _, f in chosen) if partial else ())
    if views is not None and not any(s.kept != s.totals for s in out.values()):
        views = None  # every clip of these splits is of a selected view
    return ReadPlan(exclude_sites=exclude_sites, sites=sites, views=views, splits=out)


def key_fingerprint(keys: Sequence[str]) -> str:
    """16 hex digits naming a shard's set of sample keys (sorted, newline-joined, SHA-256)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def _selections(pf, partial: set[str], totals: dict[str, int], *, exclude_sites, sites, views
                ) -> dict[str, tuple[bytes, str]]:
    """``{shard: (mask, fingerprint)}`` for the ``partial`` shards: the manifest streamed by
    shard (`shards.manifest.iter_by_shard`: a few shards' rows at a time), each shard's keep
    bits put in the order of its keys."""
    columns = [c for c in ("key", "site", "view") if c in pf.schema_arrow.names]
    out = {}
    for name, rows in iter_by_shard(pf, columns, totals):
        if name not in partial:
            continue
        keys = rows.column("key").combine_chunks()
        keep = selection_mask(rows.column("site").combine_chunks(),
                              rows.column("view").combine_chunks() if "view" in columns
                              else None, exclude_sites=exclude_sites, sites=sites, views=views)
        order = pc.sort_indices(keys).to_numpy()
        out[name] = (np.packbits(keep[order]).tobytes(),
                     key_fingerprint(keys.to_pylist()))
    return out


def kept_in_index_order(index_keys: Sequence[str], mask: bytes, fingerprint: str,
                        where: str, remedy: str = "") -> list[int]:
    """Positions (in the ``.idx``'s order) of the samples a shard's ``mask`` keeps; ValueError
    when the index's keys are not the ones the plan saw in the manifest."""
    if key_fingerprint(index_keys) != fingerprint:
        raise ValueError(f"{where}: its samples are not those manifest.parquet lists for it"
                         f"{remedy}")
    order = sorted(range(len(index_keys)), key=index_keys.__getitem__)
    bits = np.unpackbits(np.frombuffer(mask, np.uint8))[:len(index_keys)].astype(bool)
    return sorted(i for i, keep in zip(order, bits.tolist(), strict=True) if keep)


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
