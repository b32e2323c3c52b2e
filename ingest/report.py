"""``ingest_report.parquet``: one row per input path, kept or why not (site-local: the source
paths may name patients; never ship it)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from echocmr.ingest.workcache import FileResult

# The report's columns (`report_bytes`; `ingest.results.ResultColumns.report_bytes`).
REPORT_SCHEMA = pa.schema([("source", pa.string()), ("status", pa.string()),
                           ("reason", pa.string()), ("key", pa.string()), ("detail", pa.string()),
                           ("view", pa.string()), ("view_source", pa.string()),
                           ("view_confidence", pa.float32()), ("vendor", pa.string())])


def printable(text: str | None) -> str | None:
    """``text`` as valid UTF-8: a file name that is not UTF-8 (Python holds its bytes as lone
    surrogates, ``os.fsdecode``) shows each byte that does not decode as ``\\xNN``
    (``b"M\\xfcller"`` -> ``"M\\xfcller"``); valid text is unchanged."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _escaped_bytes_only(text)
                           else "backslashreplace").decode("utf-8", "backslashreplace")


def _escaped_bytes_only(text: str) -> bool:
    """Every lone surrogate in ``text`` stands for one byte (U+DC80..U+DCFF, `os.fsdecode`)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _meta_of(r: FileResult) -> dict:
    """A kept result's ``KEY.json`` fields (view, its source and confidence), else nothing."""
    if r.status != "kept" or r.meta is None:
        return {}
    return r.meta if isinstance(r.meta, dict) else r.meta.to_dict()


def report_bytes(results: list[FileResult]) -> bytes:
    """``ingest_report.parquet``: one row per input file, sorted by source (texts `printable`)."""
    table = pa.table({
        "source": [printable(r.source) for r in results],
        "status": [r.status for r in results],
        "reason": [r.reason for r in results],
        "key": [r.key for r in results],
        "detail": [printable(r.detail) for r in results],
        **{c: [_meta_of(r).get(c) for r in results]
           for c in ("view", "view_source", "view_confidence")},
        "vendor": [r.vendor for r in results],
    }, schema=REPORT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
