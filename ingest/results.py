"""What every input became, held by the ingest driver as columns (`ResultColumns`).

An archive has millions of files and most of them are rejected; the driver keeps no
`ingest.workcache.FileResult` per file. Each input (a file to process, or a path the scan skipped)
is a row, in source order: a status and small codes in numpy arrays, texts (reason, detail, view)
dictionary-encoded (a code per row and each distinct text once), the study hashes of unpaired files
in a set (to count them). A kept file also keeps what the shard plan needs (`Kept`: its metadata as
its ``KEY.json`` bytes, labels, pixel statistics, clip digest and size), a few hundred bytes each.
The report (`report_bytes`) and the summary are made from these columns.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from echocmr.ingest.report import REPORT_SCHEMA, printable
from echocmr.ingest.views import VIEW_DISAGREEMENT, ViewMix
from echocmr.ingest.workcache import FileResult
from echocmr.shards.format import SPLITS, SampleMeta

PENDING, KEPT, REJECTED = 0, 1, 2
REPORT_ROWS = 65_536  # rows of the report written at a time (one row group each)
_STATUS = {KEPT: "kept", REJECTED: "rejected"}


class _Texts:
    """A dictionary-encoded text column: an int32 code per row (-1: none), each text once."""

    def __init__(self, n: int) -> None:
        self.codes = np.full(n, -1, dtype=np.int32)
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def set(self, row: int, text: str | None) -> None:
        if text is None:
            self.codes[row] = -1
            return
        code = self._index.get(text)
        if code is None:
            code = self._index[text] = len(self.values)
            self.values.append(text)
        self.codes[row] = code

    def get(self, row: int) -> str | None:
        code = self.codes[row]
        return None if code < 0 else self.values[code]

    def dictionary(self, *, printable_texts: bool = False) -> pa.Array:
        """Each distinct text once (`printable` when it goes to the report as a detail)."""
        return pa.array([printable(v) for v in self.values] if printable_texts else self.values,
                        pa.string())

    def arrow(self, rows: slice, dictionary: pa.Array) -> pa.Array:
        """Rows ``rows`` as a plain string array (``dictionary``: `dictionary`'s)."""
        codes = self.codes[rows]
        return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0),
                                              dictionary).cast(pa.string())


@dataclass
class Kept:
    """A kept file's part of the shard plan (its clip stays in the work cache)."""

    entry: str
    key: str
    split: int  # index in SPLITS
    meta_json: bytes  # the sample's KEY.json
    labels: list[float | None]
    pixel_stats: list[float]
    video_sha256: str
    video_bytes: int | None

    def result(self, source: str) -> FileResult:
        """The `FileResult` the shard plan takes (its metadata typed again)."""
        return FileResult(source=source, status="kept", key=self.key,
                          meta=SampleMeta.from_json(self.meta_json, key=self.key),
                          labels=self.labels, pixel_stats=self.pixel_stats,
                          video_sha256=self.video_sha256, video_bytes=self.video_bytes)


class ResultColumns:
    """Every input path's outcome, by row (`sources` is sorted: row ``i`` is ``sources[i]``).

    ``files`` are the scan's files with their cache ``entries`` (24 hex digits each, a list or
    an ``S24`` array); ``skipped`` its report rows for everything else (no entry: ``b""``). Rows
    fill in as results arrive (`add`), in any order.
    """

    def __init__(self, files: list[str], entries, skipped: list[FileResult]) -> None:
        entries = np.asarray(entries, dtype="S24")
        if skipped:
            rows = sorted([(s, True, i) for i, s in enumerate(files)]
                          + [(r.source, False, i) for i, r in enumerate(skipped)])
            self.sources = [s for s, _, _ in rows]
            self.entries = np.array([entries[i] if is_file else b"" for _, is_file, i in rows],
                                    dtype="S24")
        else:  # the usual case: the scan's lists as they are (sorted), no copy
            self.sources, self.entries = files, entries
        n = len(self.sources)
        self.status = np.zeros(n, dtype=np.int8)
        self.paired = np.zeros(n, dtype=bool)
        self.text_boxes = np.zeros(n, dtype=np.int32)
        self.view_confidence = np.full(n, np.nan, dtype=np.float32)
        self.reason, self.detail = _Texts(n), _Texts(n)
        self.view, self.view_source = _Texts(n), _Texts(n)
        self.vendor = _Texts(n)  # a vocabulary name (`ingest.vendor_table`), for every row
        self.kept: dict[int, Kept] = {}
        self.unpaired_studies: set[str] = set()
        for r in skipped:
            self.add(r)

    def __len__(self) -> int:
        return len(self.sources)

    def row(self, source: str) -> int:
        i = bisect.bisect_left(self.sources, source)
        if i == len(self.sources) or self.sources[i] != source:
            raise KeyError(f"not an input of this run: {source!r}")
        return i

    def pending(self):
        """``(source, entry)`` of every file without a result yet, in source order."""
        for i in np.flatnonzero(self.status == PENDING):
            yield self.sources[i], self.entries[i].decode()

    def add(self, result: FileResult) -> None:
        i = self.row(result.source)
        self.status[i] = KEPT if result.status == "kept" else REJECTED
        self.reason.set(i, result.reason)
        self.detail.set(i, result.detail)
        self.paired[i] = result.paired
        self.text_boxes[i] = result.text_boxes
        self.vendor.set(i, result.vendor)
        if result.reason == "no_cmr_within_window" and result.study_hash is not None:
            self.unpaired_studies.add(result.study_hash)
        if result.status == "kept" and result.meta is not None:
            meta = result.meta
            self.view.set(i, meta.view)
            self.view_source.set(i, meta.view_source)
            if getattr(meta, "vendor", None) is not None:  # what KEY.json says
                self.vendor.set(i, meta.vendor)
            if meta.view_confidence is not None:
                self.view_confidence[i] = meta.view_confidence
            self.kept[i] = Kept(entry=self.entries[i].decode(), key=result.key,
                                split=SPLITS.index(meta.split), meta_json=meta.to_json(),
                                labels=result.labels, pixel_stats=result.pixel_stats,
                                video_sha256=result.video_sha256, video_bytes=result.video_bytes)

    def reject_duplicates(self) -> None:
        """The same SOP Instance UID (the same key) in two files: keep the first by source."""
        first: dict[str, int] = {}
        for i in sorted(self.kept):
            kept = self.kept[i]
            if kept.key in first:
                del self.kept[i]
                self.status[i] = REJECTED
                self.reason.set(i, "duplicate_instance")
                self.detail.set(i, f"same SOP Instance UID as {self.sources[first[kept.key]]}")
                self.view.set(i, None)
                self.view_source.set(i, None)
                self.view_confidence[i] = np.nan
            else:
                first[kept.key] = i

    def kept_in_plan_order(self):
        """``(entry, FileResult)`` of the kept files, sorted by (split, key) as the shard plan
        takes them; each result is made as it is handed out."""
        for i in sorted(self.kept, key=lambda i: (self.kept[i].split, self.kept[i].key)):
            yield self.kept[i].entry, self.kept[i].result(self.sources[i])

    # -- what the run reports ------------------------------------------------------------------

    def rejected(self) -> dict[str, int]:
        codes = self.reason.codes[self.status == REJECTED]
        counts = np.bincount(codes[codes >= 0], minlength=len(self.reason.values))
        return {self.reason.values[c]: int(n) for c, n in enumerate(counts) if n}

    @property
    def n_kept(self) -> int:
        return int((self.status == KEPT).sum())

    @property
    def any_paired(self) -> bool:
        return bool(self.paired.any())

    def n_reason(self, reason: str) -> int:
        return self.rejected().get(reason, 0)

    def text_masked(self) -> tuple[int, int]:
        """(kept clips with text masked, boxes masked in them)."""
        kept = self.status == KEPT
        return int((kept & (self.text_boxes > 0)).sum()), int(self.text_boxes[kept].sum())

    def view_mix(self) -> ViewMix:
        mix = ViewMix()
        for i in sorted(self.kept):
            confidence = self.view_confidence[i]
            detail = self.detail.get(i)
            mix.add({"view": self.view.get(i), "view_source": self.view_source.get(i),
                     "view_confidence": None if np.isnan(confidence) else float(confidence),
                     "vendor": self.vendor.get(i)},
                    disagreement=bool(detail and detail.startswith(VIEW_DISAGREEMENT)))
        return mix

    def report_bytes(self) -> bytes:
        """``ingest_report.parquet``: one row per input path, sorted by source; the same bytes
        as `ingest.report.report_bytes` of the same results up to `REPORT_ROWS` rows, and
        written `REPORT_ROWS` rows at a time beyond (one row group each: the driver never holds
        the whole report as Arrow columns, nor a reader's decode buffers)."""
        texts = {"reason": self.reason.dictionary(), "view": self.view.dictionary(),
                 "view_source": self.view_source.dictionary(),
                 "vendor": self.vendor.dictionary(),
                 "detail": self.detail.dictionary(printable_texts=True)}
        kept_rows = np.array(sorted(self.kept), dtype=np.int64)
        buf = io.BytesIO()
        with pq.ParquetWriter(buf, REPORT_SCHEMA, compression="zstd") as writer:
            for start in range(0, max(len(self), 1), REPORT_ROWS):
                stop = min(len(self), start + REPORT_ROWS)
                kept = kept_rows[np.searchsorted(kept_rows, start):
                                 np.searchsorted(kept_rows, stop)]
                writer.write_table(self._report_table(start, stop, kept, texts))
        return buf.getvalue()

    def _report_table(self, start: int, stop: int, kept: np.ndarray,
                      texts: dict[str, pa.Array]) -> pa.Table:
        rows = slice(start, stop)
        statuses = np.array([None, "kept", "rejected"], dtype=object)[self.status[rows]]
        keys = np.full(stop - start, None, dtype=object)
        for i in kept:
            keys[i - start] = self.kept[int(i)].key
        confidence = self.view_confidence[rows]
        return pa.table({
            "source": pa.array([printable(s) for s in self.sources[rows]], pa.string()),
            "status": pa.array(statuses, pa.string()),
            "reason": self.reason.arrow(rows, texts["reason"]),
            "key": pa.array(keys, pa.string()),
            "detail": self.detail.arrow(rows, texts["detail"]),
            "view": self.view.arrow(rows, texts["view"]),
            "view_source": self.view_source.arrow(rows, texts["view_source"]),
            "view_confidence": pa.array(confidence, mask=np.isnan(confidence)),
            "vendor": self.vendor.arrow(rows, texts["vendor"]),
        }, schema=REPORT_SCHEMA)
