"""``ingest_report.parquet``: one row per input path, kept or why not (site-local: the source
paths may name patients; never ship it)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from echocmr.ingest.workcache import FileResult


def report_bytes(results: list[FileResult]) -> bytes:
    """``ingest_report.parquet``: one row per input file, sorted by source."""
    table = pa.table({
        "source": [r.source for r in results],
        "status": [r.status for r in results],
        "reason": [r.reason for r in results],
        "key": [r.key for r in results],
        "detail": [r.detail for r in results],
    }, schema=pa.schema([("source", pa.string()), ("status", pa.string()),
                         ("reason", pa.string()), ("key", pa.string()), ("detail", pa.string())]))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
