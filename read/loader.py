"""Training batches from WebDataset shards: `ClipLoader` over the DALI graph of `read.pipeline`.

Per worker (rank ``r`` of ``w``), per epoch, `read.pipeline.build_pipeline` reads rank ``r``'s
own tars of the split (below) through their ``.idx`` files, takes one window per clip (random start and
augmentation for training, the centred window otherwise: `model.contract`), decodes, resizes and
normalises it; `ClipLoader.epoch` turns DALI's outputs into `Batch` objects: ``clips`` N×C×T×H×W
float32 on the worker's device, ``labels`` N×5 (NaN unknown), ``valid`` (False for padding), and
``keys``.

Decoder and device (``data.decoder``, `read.pipeline.resolve_decoder`): on a CUDA device the
default is DALI's ``mixed`` decoder, whose GPU outputs torch takes over through DLPack; with
``data.decoder: cpu`` DALI decodes on its CPU threads and each batch is copied into pinned host
memory and on to the GPU without blocking (``non_blocking``), as are labels and the padding mask,
so a step never waits for the previous one to finish on the GPU. A ``mixed`` loader refuses, when
it is built, a set whose clips NVDEC cannot take (`shards.format.check_gpu_decodable`).

Each rank reads its own shards (`read.assign`): a `read.assign.ReadPlan`, made once from the
manifest (by the training driver, which hands it to every rank; a loader built without one makes
its own for its split), lists each shard's samples and how many of them the run reads; every rank
deals itself, per epoch, its own tars from it (whole shards balanced by clip count, disjoint
across ranks, every selected clip read by exactly one rank; a split with fewer non-empty shards
than ranks is cut by samples) and hands DALI only those. A rank never lists or opens another
rank's tars or ``.idx`` files, and never reads the whole manifest.

Equal batch counts on every rank: every rank runs ``ceil(max load / batch)`` batches per epoch
(the loads, `read.assign.loads`, are the same every epoch), so DDP collectives never wait for a
rank that ran out. A rank's last batch is filled by repeating its last sample (DALI's
``pad_last_batch``); a rank with fewer samples than the largest reads on into the next pass over
its tars for its remaining batches. Everything past a rank's own samples is marked invalid and
comes last.

Reproducible, resumable epochs: a fresh pipeline is built per epoch, seeded from (seed, epoch,
rank); for training, which rank reads which shard and in what order is dealt per epoch from
(seed, epoch), the same on every rank. The reader position is therefore just (epoch, batch):
`ClipLoader.epoch(e, start_batch=b)` replays epoch ``e`` from batch ``b`` exactly.

Leaving sites out (``data.exclude_sites``, ``echocmr train --exclude-site``) and reading only some
views (``data.views``, ``echocmr train --views A4C``; default the target views): the tars stay as
they are; the plan counts the selected samples per shard and, for each shard that loses some,
carries which (one bit per sample); a rank writes, into a private temporary directory, a ``.idx``
for each of its own such shards listing only the samples of the other sites and the selected
views (`read.assign.kept_in_index_order`; it reads no manifest). DALI reads the same tars through those. Sample counts, rank loads,
batches per epoch and the val split all follow the selection, so a left-out site's clips are
never decoded. Eval selects through `split_files` (``sites=``: only these sites).

Pixel values (measured on DALI 2.4, CPU decoder): the decoder reads our VP9's luma as limited
("TV") range and gives ``R = G = B = clip(round((Y' - 16) * 255 / 219), 0, 255)``. Ingest stores
grey ``Y`` as ``Y' = 16 + round(Y * 219 / 255)`` (``shards.format.GREY_TO_LUMA``, format version
2), so the decoded value is ``Y`` again up to codec error and at most one grey level of
quantisation, over the whole 0..255 (version-1 sets stored ``Y`` as is and lost everything below 16
and above 235; `split_files` refuses them). ``stats.json`` holds the mean/std of ``Y``, which the
pipeline applies to the decoded values as they are: the network input is ``(Y - mean) / std``.
`model.contract.frames_to_clip` computes the same from raw frames, passing ``Y`` through the exact
``Y -> Y' -> decoded`` round trip first, so a model is fed identically from shards and from raw
frames.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from echocmr.model.contract import InputSpec
from echocmr.read.assign import (
    Piece,
    ReadPlan,
    assign,
    kept_in_index_order,
    loads,
    plan_reading,
    selection_mask,
)
from echocmr.read.config import DataConfig
from echocmr.read.pipeline import PipelineConfig, build_pipeline, resolve_decoder, sample_meta
from echocmr.shards.format import (
    STATS_FILE,
    TASKS,
    VIEW_VOCABULARY,
    ClipFormat,
    ShardStats,
    check_format_version,
    check_gpu_decodable,
    index_name,
    view_class,
)
from echocmr.shards.index import format_index, index_count, parse_index, sample_keys
from echocmr.shards.manifest import codes_of, read_columns
from echocmr.shards.reader import list_shards, read_stats
from echocmr.shards.stats import compute_stats
from echocmr.shards.storage import is_local, local_path

# What `compute_stats` reads (shards.stats): the driver reads these columns only.
_STATS_COLUMNS = ("split", "site", "patient_hash", "study_hash", *TASKS, "pixel_mean", "pixel_std",
                  "n_pixels")


@dataclass
class ReaderPosition:
    """Where the training reader is: the next batch to read is ``batch`` of ``epoch``."""

    epoch: int = 0
    batch: int = 0


@dataclass
class Batch:
    """One batch on the worker's device. ``clips`` [N, C, T, H, W]; ``labels`` [N, K] NaN
    unknown; ``valid`` [N] False for padding repeats; ``keys`` the sample keys; ``n_valid`` the
    number of real samples (``valid.sum()``, known on the host: reading it needs no GPU sync)."""

    clips: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    keys: list[str]
    n_valid: int

    @property
    def known(self) -> torch.Tensor:
        """[N, K] True where a label is known and the sample is not padding."""
        return ~torch.isnan(self.labels) & self.valid[:, None]


def split_files(shards: str, split: str, *, exclude_sites: Sequence[str] = (),
                sites: Sequence[str] | None = None, views: Sequence[str] | None = None,
                index_dir: str | None = None) -> tuple[list[str], list[str], list[int]]:
    """Tars, their ``.idx`` files and sample counts for one split of a local shard set.

    ``exclude_sites`` leaves those sites' samples out, ``sites`` keeps only those sites',
    ``views`` only clips of those views (names in the vocabulary, `shards.format.view_class`;
    None: every view). Each writes shortened indexes into ``index_dir`` (which must exist) and returns them in place of
    the set's own (a tar left with no sample is dropped). A site the set does not hold is a
    ValueError naming the sites it does. Raises `shards.format.FormatVersionError` for a set of
    another format version (its pixels would decode differently): training and eval both read
    through here.
    """

    _local_set(shards)
    tars = [os.path.abspath(local_path(t)) for t in list_shards(shards, split)]
    if not tars:
        raise FileNotFoundError(f"no {split}-*.tar shards in {shards}")
    check_format_version(read_stats(shards), f"shard set {shards} ({STATS_FILE})")
    indexes, counts = [], []
    for tar in tars:
        idx = os.path.join(os.path.dirname(tar), index_name(os.path.basename(tar)))
        if not os.path.exists(idx):
            raise FileNotFoundError(f"{idx} is missing; run `echocmr shards verify {shards}` and "
                                    "re-run the ingest or reshard that wrote the set")
        indexes.append(idx)
        counts.append(index_count(idx))
    if views is not None and (set(VIEW_VOCABULARY) <= {view_class(v) for v in views}
                              or set(_manifest_views(shards)) <= set(views)):
        views = None  # every clip is of a selected view: nothing to shorten
    if not exclude_sites and sites is None and views is None:
        return tars, indexes, counts
    if index_dir is None:
        raise ValueError("selecting sites or views writes shortened indexes: pass index_dir")
    return select_sites(shards, split, tars, indexes, exclude_sites=exclude_sites, sites=sites,
                        views=views, index_dir=index_dir)


def _local_set(shards: str) -> str:
    if not is_local(shards):
        raise ValueError(f"DALI reads local files only, and {shards} is a URL: stage it onto local "
                         "disk first (shards.stage.stage, which `echocmr train` and `echocmr eval` "
                         "do for a URL), or copy or mount it and pass that path")
    return os.path.abspath(local_path(shards))


def _manifest_views(shards: str) -> list[str]:
    codes, names = codes_of(read_columns(shards, ("view",)).column("view"))
    return sorted({view_class(v) for v in names} | ({view_class(None)} if (codes < 0).any()
                                                     else set()))


def view_counts(shards: str, views: Sequence[str], *, exclude_sites: Sequence[str] = ()
                ) -> dict[str, dict[str, int]]:
    """Clips of train and val per view class (`shards.format.view_class`), split into those a
    run selecting ``views`` reads and those it leaves out: ``{"read": {...}, "left_out": {...}}``
    (what the run records; ``left_out`` counts ``other`` and ``unknown`` clips by default).
    Three dictionary-encoded manifest columns, counted by code (no row objects)."""
    table = read_columns(shards, ("site", "split", "view"))
    site, sites = codes_of(table.column("site"))
    split, splits = codes_of(table.column("split"))
    view, names = codes_of(table.column("view"))
    fit = np.array([str(s) in ("train", "val") for s in splits] + [False])[split]
    kept = np.array([str(s) not in exclude_sites for s in sites] + [True])[site]
    classes = [view_class(v) for v in names] + [view_class(None)]
    n = np.bincount(view[fit & kept], minlength=len(classes))
    counts: dict[str, int] = {}
    for cls, count in zip(classes, n.tolist(), strict=True):
        if count:
            counts[cls] = counts.get(cls, 0) + count
    counts = dict(sorted(counts.items()))
    return {"read": {k: v for k, v in counts.items() if k in views},
            "left_out": {k: v for k, v in counts.items() if k not in views}}


def check_sites(manifest, names: Sequence[str], flag: str, where: str) -> None:
    """ValueError unless every site in ``names`` is in ``manifest`` (a DataFrame or an Arrow
    table with a ``site`` column; ``flag`` names the option)."""
    if isinstance(manifest, pa.Table):
        have = sorted(str(s) for s in codes_of(manifest.column("site"))[1])
    else:
        have = sorted(str(s) for s in manifest["site"].unique())
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ValueError(f"{flag} {', '.join(unknown)}: {where} has no such site; its sites are "
                         f"{', '.join(have)}")


def site_selection(shards: str, stats: ShardStats, exclude_sites: Sequence[str]
                   ) -> tuple[dict, list[str]]:
    """``(stats, training sites)`` of a run that leaves ``exclude_sites`` out of ``shards``.

    The training sites are those with train or val clips once the excluded are gone. The stats
    are the set's ``stats.json`` recomputed from the manifest without the excluded sites (train
    pixel mean/std, prevalence per split), so not even the input normalisation or the positive
    weights of the loss come from a left-out site; with nothing excluded, ``stats`` as given.
    The driver's one read of the manifest for it: the statistics' columns as Arrow (strings
    dictionary-encoded), not a DataFrame of every column.
    """

    manifest = read_columns(shards, _STATS_COLUMNS if exclude_sites else ("site", "split"))
    check_sites(manifest, list(exclude_sites), "--exclude-site", f"shard set {shards}")
    site, names = codes_of(manifest.column("site"))
    split, splits = codes_of(manifest.column("split"))
    keep = np.array([str(s) not in exclude_sites for s in names] + [True])[site]
    is_split = {name: np.array([str(s) == name for s in splits] + [False])[split]
                for name in ("train", "val")}
    fit = keep & (is_split["train"] | is_split["val"])
    sites = sorted({str(names[c]) for c in np.unique(site[fit]).tolist() if c >= 0})
    if not (keep & is_split["train"]).any():
        raise ValueError(f"--exclude-site {', '.join(exclude_sites)} leaves no train clips in "
                         f"{shards}")
    if not exclude_sites:
        return stats, sites
    recomputed = ShardStats.from_dict(compute_stats(
        manifest.filter(pa.array(keep)), clip_format=stats.clip_format(),
        split_key_fingerprint=stats.split_key_fingerprint or ""))
    view_mix = None if stats.view_mix is None else {
        site: mix for site, mix in stats.view_mix.items() if site not in exclude_sites}
    return replace(stats, pixel_mean=recomputed.pixel_mean, pixel_std=recomputed.pixel_std,
                   splits=recomputed.splits, view_mix=view_mix,
                   excluded_sites=tuple(exclude_sites)), sites


def select_sites(shards: str, split: str, tars: list[str], indexes: list[str], *,
                 exclude_sites: Sequence[str] = (), sites: Sequence[str] | None = None,
                 views: Sequence[str] | None = None,
                 index_dir: str) -> tuple[list[str], list[str], list[int]]:
    """``tars`` of ``split`` (with their ``indexes``) narrowed to the selected sites' (and
    views') samples: shortened indexes written into ``index_dir``, tars left with no sample
    dropped."""

    manifest = read_columns(shards, ("key", "split", "site", "view"))
    check_sites(manifest, list(exclude_sites), "--exclude-site", f"shard set {shards}")
    if sites is not None:
        check_sites(manifest, list(sites), "--holdout-site", f"shard set {shards}")
    split_codes, split_names = codes_of(manifest.column("split"))
    keep = selection_mask(manifest.column("site").combine_chunks(),
                          manifest.column("view").combine_chunks(), exclude_sites=exclude_sites,
                          sites=sites, views=views)
    keep &= np.array([str(s) == split for s in split_names] + [False])[split_codes]
    wanted = manifest.column("key").filter(pa.array(keep)).combine_chunks()
    del manifest
    out_tars, out_indexes, out_counts = [], [], []
    for tar, idx in zip(tars, indexes, strict=True):
        with open(idx, encoding="utf-8") as f:
            samples = parse_index(f.read())
        found = pc.is_in(pa.array(sample_keys(samples), pa.string()), value_set=wanted)
        kept = [m for m, k in zip(samples, found.to_pylist(), strict=True) if k]
        if not kept:
            continue
        path = os.path.join(index_dir, f"{split}-{len(out_indexes):06d}-{os.path.basename(idx)}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(format_index(kept))
        out_tars.append(tar)
        out_indexes.append(path)
        out_counts.append(len(kept))
    return out_tars, out_indexes, out_counts


def check_decoder(stats: ShardStats, decoder: str, where: str) -> None:
    """Raise `shards.format.GPUDecodeError` if ``decoder`` (resolved: ``mixed`` or ``cpu``) is
    ``mixed`` and the set (its ``stats.json``) has clips NVDEC cannot decode. The training driver
    calls it before any worker starts; `ClipLoader` again when it is built."""
    if decoder == "mixed":
        check_gpu_decodable(ClipFormat.of_stats(stats), where,
                            cpu_fix="keep the set and decode on CPU threads with `data.decoder: "
                                    "cpu` in the training config (batches then reach the GPU "
                                    "through pinned host memory; see docs/training.md)")


def shard_sizes(n_samples: int, world: int) -> list[int]:
    """Samples per rank as DALI splits them: rank r reads ``floor(n*r/w)..floor(n*(r+1)/w)``."""
    return [n_samples * (r + 1) // world - n_samples * r // world for r in range(world)]


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (DALI seeds are int32; numpy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class ClipLoader:
    """Batches of one split for one rank; build one per split and call `epoch` per epoch.

    ``train=True`` shuffles, takes random clip starts and augments (if enabled in config);
    ``train=False`` reads in stored order, takes centred clips and never augments (validation,
    eval, inference). ``device`` is where batches land; on a CUDA device ``config.decoder``
    picks DALI's ``mixed`` (GPU) or CPU video decoder (module docstring), elsewhere it is the CPU.
    """

    def __init__(self, shards: str, split: str, config: DataConfig, *, spec: InputSpec,
                 train: bool, stats: ShardStats | None = None, rank: int = 0, world: int = 1,
                 device: torch.device | str | None = None, plan: ReadPlan | None = None
                 ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.split, self.config, self.spec, self.train = split, config, spec, train
        self.rank, self.world = rank, world
        self.device = torch.device(device or "cpu")
        self.decoder = resolve_decoder(config.decoder, gpu=self.device.type == "cuda")
        if stats:
            check_decoder(stats, self.decoder, f"shard set {shards}")
        self._shards = _local_set(shards)
        if plan is None and not list_shards(shards, split):
            raise FileNotFoundError(f"no {split}-*.tar shards in {shards}")
        check_format_version(stats or read_stats(shards), f"shard set {shards} ({STATS_FILE})")
        if plan is None or split not in plan.splits:
            # A loader on its own plans its split itself (a training run's driver plans once for
            # every rank: read.assign.plan_reading).
            plan = plan_reading(shards, (split,), exclude_sites=config.exclude_sites,
                                views=config.views)
        elif tuple(plan.exclude_sites) != tuple(config.exclude_sites):
            raise ValueError(f"the read plan leaves out {list(plan.exclude_sites)}, the config "
                             f"{list(config.exclude_sites)}: plan with the run's config")
        self.plan, self.shards = plan, plan.split(split)
        if not self.shards.names:
            raise FileNotFoundError(f"no {split}-*.tar shards in {shards}")
        self.num_samples = self.shards.samples
        self.shard_sizes = loads(self.shards, world)  # samples per rank, the same every epoch
        if min(self.shard_sizes) < 1:
            left_out = (f" once {', '.join(config.exclude_sites)} are left out"
                        if config.exclude_sites else "")
            left_out += f" of views {', '.join(config.views)} (data.views)"
            raise ValueError(f"{split} has {self.num_samples} clips{left_out}, fewer than the "
                             f"{world} workers")
        self.batches_per_epoch = math.ceil(max(self.shard_sizes) / config.batch_size)
        self._stored_size = ClipFormat.of_stats(stats).size if stats else None
        # this rank's shortened indexes (selection, or a shard cut between ranks), per piece
        self._index_dir = tempfile.TemporaryDirectory(prefix="echocmr-idx-")
        self._indexes: dict[Piece, str] = {}
        self._checked: set[str] = set()
        self.opened: list[str] = []  # the tars of the last epoch built

    # -- public -------------------------------------------------------------------------------

    def epoch(self, epoch: int, start_batch: int = 0,
              max_batches: int | None = None) -> Iterator[Batch]:
        """The batches of ``epoch`` from ``start_batch`` (same order every time it is replayed)."""
        stop = self.batches_per_epoch if max_batches is None else min(max_batches,
                                                                      self.batches_per_epoch)
        pipe = self._build(epoch)
        try:
            for b in range(stop):
                outputs = pipe.run()
                if b >= start_batch:
                    yield self._to_batch(outputs, b, zero_copy=pipe.exec_dynamic)
        finally:
            del pipe

    def __len__(self) -> int:
        return self.batches_per_epoch

    # -- pipeline -----------------------------------------------------------------------------

    def rank_files(self, epoch: int) -> tuple[list[str], list[str], list[int]]:
        """This rank's tars for ``epoch``, the ``.idx`` DALI reads each through, and the samples
        each gives (`read.assign.assign`; in the order the rank reads them). Only this rank's
        shards are looked at (their index headers; the index lines of those that lose samples
        to the selection, which ones the plan says): no manifest is read."""
        pieces = assign(self.shards, self.rank, self.world, seed=self.config.seed, epoch=epoch,
                        shuffle=self.train)
        total = dict(zip(self.shards.names, self.shards.totals, strict=True))
        tars, indexes, counts = [], [], []
        for piece in pieces:
            tar = os.path.join(self._shards, piece.name)
            idx = os.path.join(self._shards, index_name(piece.name))
            if piece.name not in self._checked:
                if not os.path.exists(tar):
                    raise FileNotFoundError(
                        f"{tar} is missing (manifest.parquet lists it); run `echocmr shards "
                        f"verify {self._shards}`")
                if not os.path.exists(idx):
                    raise FileNotFoundError(
                        f"{idx} is missing; run `echocmr shards verify {self._shards}` and re-run "
                        "the ingest or reshard that wrote the set")
                if index_count(idx) != total[piece.name]:
                    raise ValueError(
                        f"{idx} lists {index_count(idx)} samples, manifest.parquet "
                        f"{total[piece.name]}; run `echocmr shards verify {self._shards}`")
                self._checked.add(piece.name)
            if piece.start == 0 and piece.count == total[piece.name]:
                path = idx
            elif piece in self._indexes:
                path = self._indexes[piece]
            else:
                path = self._write_index(piece, idx)
            tars.append(tar)
            indexes.append(path)
            counts.append(piece.count)
        return tars, indexes, counts

    def _write_index(self, piece: Piece, idx: str) -> str:
        with open(idx, encoding="utf-8") as f:
            samples = parse_index(f.read())
        mask, fingerprint = self.shards.selection(piece.name)
        if mask:  # the shard loses samples to the selection: the plan says which
            keep = kept_in_index_order(sample_keys(samples), mask, fingerprint, idx,
                                       f"; run `echocmr shards verify {self._shards}`")
            samples = [samples[i] for i in keep]
        path = os.path.join(self._index_dir.name,
                            f"{piece.start}-{piece.stop}-{os.path.basename(idx)}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(format_index(samples[piece.start:piece.stop]))
        self._indexes[piece] = path
        return path

    def _build(self, epoch: int):
        cfg = self.config
        mixed = self.decoder == "mixed"
        # This rank's own tars (read.assign): for training, a per-epoch deal and order.
        tars, indexes, _ = self.rank_files(epoch)
        self.opened = tars
        run = PipelineConfig(batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                             prefetch=cfg.prefetch,
                             seed=derive_seed(cfg.seed, epoch, self.rank, int(self.train)),
                             device_id=(self.device.index or 0) if mixed else None)
        return build_pipeline(
            tars, indexes, self.spec,
            config=run, window="random" if self.train else "centre",
            stored_size=self._stored_size,
            shuffle_buffer=cfg.shuffle_buffer if self.train else None,
            augment=cfg.augment if self.train and cfg.augment.enabled else None)

    # -- outputs ------------------------------------------------------------------------------

    def _to_batch(self, outputs, b: int, *, zero_copy: bool = False) -> Batch:
        clips_tl, labels_tl, meta_tl = outputs
        clips = _to_torch(clips_tl, self.device, zero_copy=zero_copy)
        labels = torch.from_numpy(np.array(labels_tl.as_tensor(), dtype=np.float32))
        keys = [sample_meta(meta_tl.at(i)).key for i in range(len(meta_tl))]
        real = self.shard_sizes[self.rank] - b * self.config.batch_size
        valid = torch.arange(len(keys)) < real
        return Batch(clips=clips, labels=to_device(labels, self.device),
                     valid=to_device(valid, self.device), keys=keys,
                     n_valid=max(0, min(real, len(keys))))


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory without blocking for CUDA (a copy from
    pageable memory would wait for the GPU to finish the work queued before it), as is for CPU."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _to_torch(tensor_list, device: torch.device, *, zero_copy: bool = False) -> torch.Tensor:
    """A dense DALI TensorList as a float32 torch tensor on ``device``.

    DALI GPU outputs (``mixed``): with DALI's dynamic executor (``zero_copy``, DALI 2's default)
    the tensor shares DALI's buffer through DLPack, which orders DALI's stream before torch's
    current one and keeps the buffer alive as long as the tensor (what DALI's own PyTorch
    iterator does); otherwise one device copy on torch's current stream. CPU outputs for a CUDA
    device (``data.decoder: cpu``): one copy into pinned host memory, then a non-blocking copy
    to the GPU (torch's pinned allocator keeps the buffer until that copy is done). CPU outputs
    for the CPU: one copy.
    """
    from nvidia.dali.backend import TensorGPU

    dense = tensor_list.as_tensor()
    if isinstance(dense, TensorGPU):
        if zero_copy:
            with device:
                return torch.from_dlpack(dense)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        pinned = torch.empty(dense.shape(), dtype=torch.float32, pin_memory=True)
        feed_ndarray(dense, pinned)
        return pinned.to(device, non_blocking=True)
    return torch.from_numpy(np.array(dense, dtype=np.float32, copy=True))
