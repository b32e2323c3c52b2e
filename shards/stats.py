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
    SPLITS,
    TASKS,
    VENDOR_VOCABULARY,
    VIEW_VOCABULARY,
    ClipFormat,
    vendor_class,
    view_class,
)
from echocmr.shards.manifest import codes_of, read_columns
from echocmr.shards.reader import list_shards, read_stats


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
    manifest: pd.DataFrame | pa.Table, *, clip_format: ClipFormat | dict, split_key_fingerprint: str,
    label_rules: dict[str, str] | None = None, identity_scope: str | None = None,
    view_models: dict[str, str] | None = None, format_version: int = FORMAT_VERSION,
) -> dict:
    """The ``stats.json`` content for a manifest (see docs/formats.md): a DataFrame, or an Arrow
    table of its columns (`shards.manifest.read_columns`, strings dictionary-encoded or not).

    ``label_rules`` (site -> fingerprint of the cut-offs its labels were derived with,
    `ingest.cutoffs.RuleSet.fingerprint`) is carried as given; None leaves the key out (a set
    written by another tool, or before ingest recorded it). ``identity_scope`` ("site" or
    "shared": what names a patient, `ingest.config.SplitConfig`) likewise. ``view_models``
    (site -> the view classifier, ``models:/NAME/VERSION``, that labelled its clips' views)
    likewise, left out when no site used one. ``format_version``: the version whose
    ``stats.json`` to give (writers give the current one; verify recomputes a set's own): from
    format 3 on it holds ``view_mix`` (`view_mix_by_vendor`), given rows with a ``view`` column
    (a caller after counts and pixel statistics alone may pass fewer columns)."""
    table = _as_table(manifest)
    # Only the columns the statistics read: filtering copies every column it is given.
    table = table.select([c for c in _STATS_COLUMNS if c in table.column_names])
    train = table.filter(pa.array(_mask(table.column("split"), "train")))
    mean, std = pooled_pixel_stats(_floats(train.column("pixel_mean")),
                                   _floats(train.column("pixel_std")),
                                   _floats(train.column("n_pixels")))
    extra = {} if label_rules is None else {"label_rules": dict(sorted(label_rules.items()))}
    if identity_scope is not None:
        extra["identity_scope"] = identity_scope
    if view_models:  # site -> the view classifier (exact version) that labelled its views
        extra["view_models"] = dict(sorted(view_models.items()))
    if format_version >= MANIFEST_COLUMNS_SINCE["vendor"] and "view" in table.column_names:
        extra["view_mix"] = view_mix_by_vendor(table)  # rows without views: counts only
    return {
        "format_version": format_version,
        "tasks": list(TASKS),
        "clip": ClipFormat.from_dict(clip_format).to_dict(),
        "split_key_fingerprint": split_key_fingerprint,
        "pixel_mean": None if math.isnan(mean) else round(mean, 6),
        "pixel_std": None if math.isnan(std) else round(std, 6),
        "splits": {s: _split_summary(table.filter(pa.array(_mask(table.column("split"), s))))
                   for s in SPLITS},
        **extra,
    }


def stats_json_bytes(stats: dict) -> bytes:
    """Deterministic serialisation of ``stats.json``."""
    return (json.dumps(stats, indent=2, allow_nan=False) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# `echocmr shards stats`: a fuller report than stats.json, for people.


_DESCRIBE_COLUMNS = ("shard", "split", "site", "view", "patient_hash", "study_hash", "n_frames",
                     "video_bytes", *TASKS)


def describe(directory: str) -> dict:
    """Everything ``shards stats`` shows, as a JSON-able dict (reads manifest and stats only).

    The manifest is read as Arrow columns (strings dictionary-encoded, `shards.manifest`), about
    80 bytes per clip, never as per-row Python objects."""
    stats = read_stats(directory)
    manifest = read_columns(directory, _DESCRIBE_COLUMNS)
    report: dict = {
        "set": str(directory),
        "clip": stats.clip.to_dict() if stats.clip else None,
        "split_key_fingerprint": stats.split_key_fingerprint,
        "label_rules": stats.label_rules,
        "identity_scope": stats.identity_scope,
        "view_models": stats.view_models,
        "view_mix": view_mix(read_columns(directory, ("site", "view", "view_confidence",
                                                      "vendor"))),
        "pixel_mean": stats.pixel_mean,
        "pixel_std": stats.pixel_std,
        "splits": {},
    }
    sizes = {storage.basename(p): storage.size(p) for p in list_shards(directory)}
    for split in SPLITS:
        rows = manifest.filter(pa.array(_mask(manifest.column("split"), split)))
        summary = _split_summary(rows)
        summary["missing"] = {t: int(rows.num_rows - summary["known"][t]) for t in TASKS}
        summary["by_site"] = _count_by(rows, "site")
        summary["by_view"] = _count_by(rows, "view")
        summary["frames_per_clip"] = _describe_numbers(_floats(rows.column("n_frames")))
        summary["bytes_per_clip"] = _describe_numbers(_floats(rows.column("video_bytes")))
        codes, shard_names = codes_of(rows.column("shard"))
        per_shard = np.bincount(codes[codes >= 0], minlength=len(shard_names))
        used = sorted(str(n) for n, c in zip(shard_names, per_shard, strict=True) if c)
        summary["shards"] = len(used)
        summary["clips_per_shard"] = _describe_numbers(per_shard[per_shard > 0])
        summary["shard_bytes"] = _describe_numbers(np.array([sizes.get(n, 0) for n in used]))
        report["splits"][split] = summary
    return report


def _count_by(rows: pa.Table, column: str) -> dict:
    """Clips, studies and patients per value of ``column``, values sorted."""
    codes, values = codes_of(rows.column(column))
    out = {}
    if not len(codes):
        return out
    groups = {}
    valid = codes >= 0  # pandas' groupby leaves null values out
    for name in ("study_hash", "patient_hash"):
        other, others = codes_of(rows.column(name))
        pairs = np.unique(codes[valid] * (len(others) + 1) + (other[valid] + 1))
        pairs = pairs[pairs % (len(others) + 1) != 0]  # a null hash is not a study or patient
        groups[name] = np.bincount(pairs // (len(others) + 1), minlength=len(values))
    clips = np.bincount(codes[valid], minlength=len(values))
    for code in sorted((c for c in range(len(values)) if clips[c]), key=lambda c: values[c]):
        out[str(values[code])] = {
            "clips": int(clips[code]),
            "studies": int(groups["study_hash"][code]),
            "patients": int(groups["patient_hash"][code]),
        }
    return out


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


def view_mix(rows: pa.Table | pd.DataFrame) -> dict[str, dict]:
    """Per site: clips per view class (`shards.format.view_class`: a target view, ``other``,
    ``unknown``), the median confidence of the view classifier where it labelled them, and the
    clips per view class of each vendor (`view_mix_by_vendor`)."""
    by_vendor = view_mix_by_vendor(_as_table(rows) if isinstance(rows, pd.DataFrame) else rows)
    manifest = rows.to_pandas() if isinstance(rows, pa.Table) else rows
    out: dict[str, dict] = {}
    classes = manifest["view"].map(view_class)
    conf = (pd.to_numeric(manifest["view_confidence"], errors="coerce")
            if "view_confidence" in manifest else None)
    for site in sorted(manifest["site"].astype(str).unique()):
        mine = manifest["site"].astype(str) == site
        counts = classes[mine].value_counts()
        c = conf[mine].dropna() if conf is not None else pd.Series(dtype=float)
        out[site] = {"views": {str(k): int(counts.get(k, 0)) for k in VIEW_VOCABULARY
                               if counts.get(k, 0)},
                     "median_confidence": None if c.empty else round(float(c.median()), 4),
                     "vendors": by_vendor.get(site, {})}
    return out


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
