"""What is in a shard set: ``stats.json`` (from the manifest) and the ``shards stats`` table.

Everything here is computed from ``manifest.parquet`` alone, never by decoding video: the
manifest carries each clip's pixel mean, std and pixel count, so the pooled train statistics can
be recomputed exactly after a reshard (the pooled variance of groups is
``sum(n_i * (std_i^2 + mean_i^2)) / N - mean^2``, summed with `math.fsum` so the result does not
depend on row order).

Run: ``echocmr shards stats DIR [--json]``.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa

from echocmr.shards import storage
from echocmr.shards.format import (
    FORMAT_VERSION,
    MANIFEST_COLUMNS_SINCE,
    MANIFEST_SCHEMA,
    SPLITS,
    TASKS,
    VENDOR_VOCABULARY,
    VIEW_VOCABULARY,
    ClipFormat,
    vendor_class,
    view_class,
)
from echocmr.shards.manifest import codes_of, iter_batches, open_manifest
from echocmr.shards.reader import list_shards, read_stats
from echocmr.shards.streaming import exact_medians
from echocmr.shards.summary import ManifestSummary, plain, split_codes


def pooled_pixel_stats(mean: np.ndarray, std: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std over all pixels of clips given per-clip mean, std and count."""
    n = np.asarray(n, dtype=np.float64)
    total = math.fsum(n)
    if total <= 0:
        return float("nan"), float("nan")
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    pooled_mean = math.fsum(n * mean) / total
    second_moment = math.fsum(n * (std * std + mean * mean)) / total
    return pooled_mean, math.sqrt(max(second_moment - pooled_mean * pooled_mean, 0.0))


_STATS_COLUMNS = ("split", "site", "patient_hash", "study_hash", *TASKS, "pixel_mean", "pixel_std",
                  "n_pixels", "view", "vendor")


def split_summary(rows: pd.DataFrame | pa.Table) -> dict:
    """Counts and label prevalence of one split's manifest rows (a DataFrame or Arrow table)."""
    return _split_summary(_as_table(rows))


def _as_table(rows: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    wanted = [c for c in ("split", "site", "patient_hash", "study_hash", "view", "shard",
                          "n_frames", "video_bytes", "pixel_mean", "pixel_std", "n_pixels",
                          *TASKS, "vendor") if c in rows.columns]
    if not len(rows):  # a set with no clip: pandas gives its empty columns no string type
        return pa.schema([MANIFEST_SCHEMA.field(c) for c in wanted]).empty_table()
    return pa.Table.from_pandas(rows[wanted], preserve_index=False)


def _mask(column, value: str) -> np.ndarray:
    codes, values = codes_of(column)
    return codes == values.index(value) if value in values else np.zeros(len(codes), bool)


def _distinct(column) -> int:
    codes, _ = codes_of(column)
    return int(len(np.unique(codes[codes >= 0])))


def _floats(column) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(np.float64)


def _split_summary(rows: pa.Table) -> dict:
    positives, known, prevalence = {}, {}, {}
    for task in TASKS:
        values = _floats(rows.column(task))
        k = int(np.count_nonzero(~np.isnan(values)))
        p = int(np.count_nonzero(values > 0.5))
        positives[task], known[task] = p, k
        prevalence[task] = round(p / k, 6) if k else None
    codes, sites = codes_of(rows.column("site"))
    return {
        "clips": int(rows.num_rows),
        "studies": _distinct(rows.column("study_hash")),
        "patients": _distinct(rows.column("patient_hash")),
        "sites": sorted({str(sites[c]) if c >= 0 else "None" for c in np.unique(codes)}),
        "positives": positives,
        "known": known,
        "prevalence": prevalence,
    }


class VendorViewCounts:
    """Clips per site, vendor class and view class (``stats.json`` ``view_mix``), counted a table
    or record batch at a time (`add`): a few counters per site, whatever the set's size, so a
    streaming reader of the manifest feeds it batch by batch. A clip without a vendor (a set
    written before format 3, or by another tool) counts as ``unknown``, and so does every clip of
    a batch without the column (`shards.format.vendor_class`); views count by `view_class`."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def add(self, rows: pa.Table | pa.RecordBatch) -> None:
        site, sites = codes_of(rows.column("site"))
        view, views = codes_of(rows.column("view"))
        if "vendor" in rows.schema.names:
            vendor, vendors = codes_of(rows.column("vendor"))
        else:
            vendor, vendors = np.full(rows.num_rows, -1, np.int64), []
        site_names = [str(s) for s in sites] + ["None"]  # code -1 (null) is the last
        view_names = [view_class(v) for v in views] + [view_class(None)]
        vendor_names = [vendor_class(v) for v in vendors] + [vendor_class(None)]
        combined = ((site % len(site_names)) * len(vendor_names) + vendor % len(vendor_names)) \
            * len(view_names) + view % len(view_names)
        triples, counts = np.unique(combined, return_counts=True)
        for triple, count in zip(triples.tolist(), counts.tolist(), strict=True):
            rest, v = divmod(triple, len(view_names))
            s, m = divmod(rest, len(vendor_names))
            self.counts[(site_names[s], vendor_names[m], view_names[v])] += count

    def result(self) -> dict[str, dict[str, dict[str, int]]]:
        """site -> vendor -> view class -> clips: sites sorted, vendors and views in vocabulary
        order, only counts above zero."""
        found: dict[str, dict[str, dict[str, int]]] = {}
        for (site, vendor, view), count in self.counts.items():
            found.setdefault(site, {}).setdefault(vendor, {})[view] = count
        return {s: {m: {v: found[s][m][v] for v in VIEW_VOCABULARY if found[s][m].get(v)}
                    for m in VENDOR_VOCABULARY if m in found[s]}
                for s in sorted(found)}


def view_mix_by_vendor(rows: pa.Table) -> dict[str, dict[str, dict[str, int]]]:
    """`VendorViewCounts` of one table of manifest rows (``site``, ``view``, ``vendor``)."""
    counts = VendorViewCounts()
    counts.add(rows)
    return counts.result()


def compute_stats(
    manifest: pd.DataFrame | pa.Table | ManifestSummary, *, clip_format: ClipFormat | dict,
    split_key_fingerprint: str, label_rules: dict[str, str] | None = None,
    identity_scope: str | None = None, view_models: dict[str, str] | None = None,
    format_version: int = FORMAT_VERSION, views: VendorViewCounts | None = None,
) -> dict:
    """The ``stats.json`` content for a manifest (see docs/formats.md): a DataFrame, an Arrow
    table of its columns (`shards.manifest.read_columns`, strings dictionary-encoded or not), or
    a finished `shards.summary.ManifestSummary` of its rows (how verify and reshard give it, a
    batch at a time, at any size).

    ``label_rules`` (site -> fingerprint of the cut-offs its labels were derived with,
    `ingest.cutoffs.RuleSet.fingerprint`) is carried as given; None leaves the key out (a set
    written by another tool, or before ingest recorded it). ``identity_scope`` ("site" or
    "shared": what names a patient, `ingest.config.SplitConfig`) likewise. ``view_models``
    (site -> the view classifier, ``models:/NAME/VERSION``, that labelled its clips' views)
    likewise, left out when no site used one. ``format_version``: the version whose
    ``stats.json`` to give (writers give the current one; verify recomputes a set's own): from
    format 3 on it holds ``view_mix`` (`VendorViewCounts`), given rows with a ``view`` column (a
    caller after counts and pixel statistics alone may pass fewer columns). With a
    `ManifestSummary` the view mix comes from ``views``, a `VendorViewCounts` fed the same rows
    (none: no ``view_mix``)."""
    if isinstance(manifest, ManifestSummary):
        summary = manifest
    else:
        table = _as_table(manifest)
        summary = ManifestSummary(table.num_rows)
        summary.add(table.select([c for c in _STATS_COLUMNS if c in table.column_names]))
        summary.finish()
        if "view" in table.column_names:  # rows without views: counts only
            views = VendorViewCounts()
            views.add(table)
    mean, std = summary.pooled_pixels()
    extra = {} if label_rules is None else {"label_rules": dict(sorted(label_rules.items()))}
    if identity_scope is not None:
        extra["identity_scope"] = identity_scope
    if view_models:  # site -> the view classifier (exact version) that labelled its views
        extra["view_models"] = dict(sorted(view_models.items()))
    if format_version >= MANIFEST_COLUMNS_SINCE["vendor"] and views is not None:
        extra["view_mix"] = views.result()
    return {
        "format_version": format_version,
        "tasks": list(TASKS),
        "clip": ClipFormat.from_dict(clip_format).to_dict(),
        "split_key_fingerprint": split_key_fingerprint,
        "pixel_mean": None if math.isnan(mean) else round(mean, 6),
        "pixel_std": None if math.isnan(std) else round(std, 6),
        "splits": {s: summary.split_block(i) for i, s in enumerate(SPLITS)},
        **extra,
    }


def stats_json_bytes(stats: dict) -> bytes:
    """Deterministic serialisation of ``stats.json``."""
    return (json.dumps(stats, indent=2, allow_nan=False) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# `echocmr shards stats`: a fuller report than stats.json, for people.


# What ``shards stats`` counts per value (clips, studies, patients per split), and describes
# (min, median, mean, max per split).
_BY = ("site", "view")
_NUMBERS = {"n_frames": "frames_per_clip", "video_bytes": "bytes_per_clip"}
_DESCRIBE_COLUMNS = ("shard", "split", "site", "view", "patient_hash", "study_hash",
                     *_NUMBERS, *TASKS)


def describe(directory: str) -> dict:
    """Everything ``shards stats`` shows, as a JSON-able dict (reads manifest and stats only).

    The manifest is read a row group at a time (`shards.manifest`) into counters
    (`shards.summary.ManifestSummary`); the medians are found by radix passes over their
    columns (`shards.streaming.exact_medians`). Nothing is held per clip, so the driver's memory
    does not grow with the set."""
    stats = read_stats(directory)
    pf = open_manifest(directory, stream=True)
    summary = ManifestSummary(pf.metadata.num_rows, by=_BY, numbers=tuple(_NUMBERS),
                              shards=True)
    views = _ViewMix()
    for batch in iter_batches(pf, (*_DESCRIBE_COLUMNS, "view_confidence", "vendor")):
        summary.add(batch.select([c for c in _DESCRIBE_COLUMNS if c in batch.schema.names]))
        views.add(batch)
    summary.finish()
    medians = {c: exact_medians(_number_batches(pf, c), len(SPLITS)) for c in _NUMBERS}
    report: dict = {
        "set": str(directory),
        "clip": stats.clip.to_dict() if stats.clip else None,
        "split_key_fingerprint": stats.split_key_fingerprint,
        "label_rules": stats.label_rules,
        "identity_scope": stats.identity_scope,
        "view_models": stats.view_models,
        "view_mix": views.finish(pf),
        "pixel_mean": stats.pixel_mean,
        "pixel_std": stats.pixel_std,
        "splits": {},
    }
    sizes = {storage.basename(p): storage.size(p) for p in list_shards(directory)}
    for i, split in enumerate(SPLITS):
        block = summary.split_block(i)
        block["missing"] = {t: int(block["clips"] - block["known"][t]) for t in TASKS}
        for column in _BY:
            block[f"by_{column}"] = summary.count_by(column, i)
        for column, name in _NUMBERS.items():
            block[name] = _described(summary.number_stats[column], i, medians[column][i])
        per_shard = summary.shard_clips[i]
        used = sorted(str(n) for n in per_shard)
        block["shards"] = len(used)
        block["clips_per_shard"] = _describe_numbers(np.array([per_shard[n] for n in
                                                               sorted(per_shard)]))
        block["shard_bytes"] = _describe_numbers(np.array([sizes.get(n, 0) for n in used]))
        report["splits"][split] = block
    return report


def _number_batches(pf, column: str):
    def batches():
        for batch in iter_batches(pf, ("split", column)):
            yield (split_codes(batch.column(0)),
                   batch.column(1).to_numpy(zero_copy_only=False).astype(np.float64))
    return batches


def _described(numbers, s: int, median: float | None) -> dict | None:
    """`_describe_numbers` of one split's values from their running min/max/sum and median."""
    n = int(numbers.n[s])
    if not n:
        return None
    if numbers.nan[s]:
        nan = float("nan")
        return {"min": nan, "median": nan, "mean": nan, "max": nan}
    return {"min": float(numbers.lo[s]), "median": float(median),
            "mean": round(float(numbers.sums[s].value() / n), 3), "max": float(numbers.hi[s])}


def _describe_numbers(values) -> dict | None:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return None
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "mean": round(float(values.mean()), 3),
        "max": float(values.max()),
    }


class _ViewMix:
    """``shards stats``' ``view_mix`` a batch at a time: per site, clips per view class, the
    clips per view class of each vendor (`VendorViewCounts`) and (at `finish`, by radix passes)
    the median view-classifier confidence."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {}
        self.vendors = VendorViewCounts()

    def add(self, batch: pa.RecordBatch) -> None:
        site = _site_names(batch.column(batch.schema.get_field_index("site")))
        # Its sites named as the view counts name them (a null site: "nan").
        self.vendors.add(pa.table({"site": site, **{c: batch.column(c) for c in ("view", "vendor")
                                                    if c in batch.schema.names}}))
        view = plain(batch.column(batch.schema.get_field_index("view"))).dictionary_encode()
        classes = np.array([view_class(v) for v in view.dictionary.to_pylist()] + [""],
                           dtype=object)
        codes = view.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        site_codes = site.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = site.dictionary.to_pylist()
        for s, name in enumerate(names):
            mine = codes[site_codes == s]
            found = Counter(classes[mine[mine >= 0]].tolist())  # a null view is not counted
            self.counts.setdefault(name, Counter()).update(found)

    def finish(self, pf) -> dict[str, dict]:
        sites = sorted(self.counts)
        position = {name: i for i, name in enumerate(sites)}
        has_confidence = "view_confidence" in pf.schema_arrow.names

        def batches():
            for batch in iter_batches(pf, ("site", "view_confidence")):
                site = _site_names(batch.column(0))
                lookup = np.array([position[n] for n in site.dictionary.to_pylist()], np.int64)
                codes = lookup[site.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
                conf = batch.column(1)
                values = conf.to_numpy(zero_copy_only=False).astype(np.float64)
                yield np.where(np.isnan(values), -1, codes), values

        medians = (exact_medians(batches, len(sites), np.float32) if has_confidence
                   else [None] * len(sites))
        by_vendor = self.vendors.result()
        out = {}
        for site, median in zip(sites, medians, strict=True):
            counts = self.counts[site]
            out[site] = {"views": {k: int(counts[k]) for k in VIEW_VOCABULARY if counts.get(k)},
                         "median_confidence": None if median is None else round(median, 4),
                         "vendors": by_vendor.get(site, {})}
        return out


def _site_names(column) -> pa.DictionaryArray:
    """The site column dictionary-encoded, a null site named "nan" (as pandas names it)."""
    return plain(column).fill_null("nan").dictionary_encode()


def format_table(report: dict) -> str:
    """The human-readable ``shards stats`` output."""
    lines = [f"shard set {report['set']}"]
    clip = report.get("clip") or {}
    lines.append(
        f"clips: {clip.get('width')}x{clip.get('height')} @ {clip.get('fps')} fps, "
        f"{clip.get('codec')} {clip.get('pix_fmt')}; train pixel mean {report['pixel_mean']}, "
        f"std {report['pixel_std']}"
    )
    rules = report.get("label_rules")
    if rules:
        lines.append("label cut-offs (fingerprint per site): "
                     + ", ".join(f"{site} {fp}" for site, fp in sorted(rules.items())))
    for site, mix in (report.get("view_mix") or {}).items():
        total = sum(mix["views"].values()) or 1
        conf = mix.get("median_confidence")
        lines.append(f"views at {site}: " + ", ".join(
            f"{v} {n} ({100 * n / total:.0f} %)" for v, n in mix["views"].items())
            + ("" if conf is None else f"; view model median confidence {conf:.2f}"))
        lines += [f"  {line}" for line in vendor_lines(mix.get("vendors") or {})]
    models = report.get("view_models")
    if models:
        lines.append("view models (per site): "
                     + ", ".join(f"{site} {m}" for site, m in sorted(models.items())))
    header = f"{'':<22}" + "".join(f"{s:>12}" for s in SPLITS)
    lines += ["", header]

    def row(label: str, fn) -> None:
        lines.append(f"{label:<22}" + "".join(f"{fn(report['splits'][s]):>12}" for s in SPLITS))

    row("clips/studies/pts", lambda s: f"{s['clips']}/{s['studies']}/{s['patients']}")
    row("shards", lambda s: s["shards"])
    row("clips/shard (min-max)", lambda s: _range(s["clips_per_shard"]))
    row("MB/shard (median)", lambda s: _fmt(s["shard_bytes"], "median", 1e6))
    row("frames/clip (median)", lambda s: _fmt(s["frames_per_clip"], "median", 1))
    row("KB/clip (median)", lambda s: _fmt(s["bytes_per_clip"], "median", 1e3))
    for task in TASKS:
        row(f"{task} prevalence", lambda s, t=task: _pct(s["prevalence"][t]))
    for task in TASKS:
        row(f"{task} missing", lambda s, t=task: s["missing"][t])
    for column, title in (("by_site", "site"), ("by_view", "view")):
        values = sorted({v for s in SPLITS for v in report["splits"][s][column]})
        for value in values:  # clips/studies/patients of each site and view
            row(f"{title} {value}"[:22], lambda s, v=value, c=column: _counts(s[c].get(v)))
    return "\n".join(lines)


def vendor_lines(vendors: dict[str, dict[str, int]]) -> list[str]:
    """One line per vendor: its clips and their views (``ge: 120 clips: A4C 40 (33 %), ...``);
    the ingest summary and ``shards stats`` print these."""
    lines = []
    for vendor, views in vendors.items():
        total = sum(views.values()) or 1
        lines.append(f"{vendor}: {sum(views.values())} clips: " + ", ".join(
            f"{v} {n} ({100 * n / total:.0f} %)" for v, n in views.items()))
    return lines


def _counts(d: dict | None) -> str:
    return "-" if d is None else f"{d['clips']}/{d['studies']}/{d['patients']}"


def _range(d: dict | None) -> str:
    return "-" if d is None else f"{d['min']:.0f}-{d['max']:.0f}"


def _fmt(d: dict | None, field: str, scale: float) -> str:
    return "-" if d is None else f"{d[field] / scale:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
