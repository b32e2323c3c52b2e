"""``manifest.parquet`` read columnar and by shard, and checked for being exactly the format's.

`shards.reader.read_manifest` gives the whole manifest as a pandas DataFrame (nine object string
columns: ~2 KB of driver memory per clip). The toolkit's commands (verify, stats, reshard) read it
through here instead, as Arrow columns, a row group at a time, so their memory does not grow with
the set (`shards.streaming`, `shards.summary` for what they compute across it):

- `read_columns` reads only the columns asked for, strings that repeat (shard, split, site, vendor,
  view, patient and study hashes) dictionary-encoded: a 4-byte code per row plus each distinct
  value once (for callers that want the columns whole: the training driver);
- `iter_batches` streams columns in record batches of a row group;
- `iter_by_shard` streams the manifest in record batches and yields the rows of one shard as
  soon as all of them were read (the count per shard comes from a first pass over the ``shard``
  column alone). Writers put a shard's rows together (ingest sorts by split and key, reshard
  writes in output order), so at most a few shards' rows are held at once; rows of a shard that
  are scattered over the file are still all collected, only held longer.

`manifest_problems` is `shards verify`'s check that the file itself is the format's: the schema
(column names, order, types, nullability, no field metadata) is exactly `MANIFEST_SCHEMA`, the
file's key-value metadata is exactly what `shards.writer.manifest_bytes` writes (nothing in it
can carry patient text), and the writer library string has its fixed form.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from echocmr.shards import storage
from echocmr.shards.format import (
    FORMAT_VERSION,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    OPTIONAL_MANIFEST_COLUMNS,
    manifest_schema,
)
from echocmr.shards.reader import IncompleteShardSetError

# Columns whose values repeat across rows: read dictionary-encoded (one code per row).
REPEATED = ("shard", "split", "site", "view", "patient_hash", "study_hash", "vendor")
# The few-valued ones: what a whole-set stream reads as dictionaries. A reader going through a
# file's row groups keeps every dictionary value it has seen, so a column with a value per
# patient (the hashes) would grow with the set; those are read as plain strings per batch.
FEW_VALUED = ("shard", "split", "site", "view", "vendor")
_BATCH_ROWS = 65_536
# Rows per Parquet row group in the manifests echocmr writes: a reader decodes one row group's
# column chunk at a time, so this bounds its buffers whatever the set's size.
ROW_GROUP_ROWS = 65_536
_CREATED_BY = re.compile(r"^parquet-cpp-arrow version \d+\.\d+\.\d+(-SNAPSHOT)?$")


def manifest_path(directory: str) -> str:
    return storage.join(directory, MANIFEST_FILE)


def open_manifest(directory: str, *, stream: bool = False) -> pq.ParquetFile:
    """The set's ``manifest.parquet`` as a `pyarrow.parquet.ParquetFile` (nothing read yet but
    the footer), the `REPEATED` string columns read straight from Parquet's own dictionary
    pages as Arrow dictionaries (never materialised as one string per row). Raises
    `shards.reader.IncompleteShardSetError` when there is none.

    ``stream``: for a pass over the whole set a row group at a time, in memory that does not
    grow with it: only the `FEW_VALUED` columns are dictionaries (a reader keeps every
    dictionary value it has seen), and nothing is pre-buffered (pyarrow keeps every
    pre-buffered column chunk until the file is closed: the whole file, by the end)."""
    path = manifest_path(directory)
    if not storage.exists(path):
        raise IncompleteShardSetError(
            f"{path} not found: {directory} is not a finished shard set (the writer writes the "
            "manifest last; re-run the ingest or reshard that makes it)"
        )
    source = (storage.local_path(path) if storage.is_local(path)
              else io.BytesIO(storage.read_bytes(path)))
    # Dictionaries only for the columns the file has: a set may predate one (format 2: vendor),
    # and pyarrow raises KeyError for a read_dictionary name that is not in the file.
    present = set(pq.read_schema(source).names)
    if hasattr(source, "seek"):
        source.seek(0)
    return pq.ParquetFile(source, read_dictionary=[c for c in (FEW_VALUED if stream else REPEATED)
                                                   if c in present],
                          pre_buffer=not stream)


def _present(pf: pq.ParquetFile, columns: Sequence[str] | None) -> list[str]:
    names = pf.schema_arrow.names
    return list(names) if columns is None else [c for c in columns if c in names]


def read_columns(directory: str | pq.ParquetFile, columns: Sequence[str] | None = None
                 ) -> pa.Table:
    """The manifest's ``columns`` (all when None; absent ones are left out) as an Arrow table,
    the `REPEATED` ones dictionary-encoded (one dictionary per row group; `codes_of` unifies
    them). About 80 bytes per clip for the columns `shards stats` reads."""
    pf = directory if isinstance(directory, pq.ParquetFile) else open_manifest(directory)
    return pf.read(columns=_present(pf, columns), use_threads=False)


def iter_batches(pf: pq.ParquetFile, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The manifest's ``columns`` (absent ones left out) a row group's worth at a time, in file
    order: how the toolkit reads a whole set without holding it."""
    yield from pf.iter_batches(batch_size=_BATCH_ROWS, columns=_present(pf, columns),
                               use_threads=False)


def with_optional_columns(table: pa.Table) -> pa.Table:
    """``table`` with every `OPTIONAL_MANIFEST_COLUMNS` column it lacks (a set written before
    the column existed) appended as nulls of the column's type."""
    for name in OPTIONAL_MANIFEST_COLUMNS:
        if name not in table.column_names:
            nulls = pa.nulls(table.num_rows, MANIFEST_SCHEMA.field(name).type)
            if name in REPEATED:  # as `open_manifest` reads the column where it exists
                nulls = nulls.dictionary_encode()
            table = table.append_column(name, nulls)
    return table


def shard_counts(pf: pq.ParquetFile) -> dict[str, int]:
    """Rows per shard name, from the ``shard`` column alone."""
    counts: dict[str, int] = {}
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=["shard"], use_threads=False):
        encoded = batch.column(0)
        if not pa.types.is_dictionary(encoded.type):
            encoded = encoded.dictionary_encode()
        n = np.bincount(encoded.indices.to_numpy(zero_copy_only=False),
                        minlength=len(encoded.dictionary))
        for name, count in zip(encoded.dictionary.to_pylist(), n.tolist(), strict=True):
            if count:
                counts[name] = counts.get(name, 0) + count
    return counts


def iter_by_shard(pf: pq.ParquetFile, columns: Sequence[str] | None = None,
                  counts: dict[str, int] | None = None, *, row_numbers: bool = False
                  ) -> Iterator[tuple[str, pa.Table]]:
    """Yield ``(shard name, its rows)`` for every shard the manifest names, each shard once with
    all its rows in file order, in the order the shards are completed (see the module doc).
    ``row_numbers`` adds a column ``_row``: each row's position in the file (int64)."""
    counts = shard_counts(pf) if counts is None else counts
    wanted = _present(pf, columns)
    if "shard" not in wanted:
        wanted = ["shard", *wanted]
    pending: dict[str, list[pa.Table]] = {}
    have: dict[str, int] = {}
    first = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=wanted, use_threads=False):
        table = pa.Table.from_batches([batch])
        if row_numbers:
            table = table.append_column("_row", pa.array(np.arange(first, first + len(table))))
        first += len(table)
        shard = table.column("shard").combine_chunks()
        if not pa.types.is_dictionary(shard.type):
            shard = shard.dictionary_encode()
        codes = shard.indices.to_numpy(zero_copy_only=False)
        names = shard.dictionary.to_pylist()
        # Stable grouping: row positions per code, in file order.
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        for code, name in enumerate(names):
            rows = order[bounds[code]:bounds[code + 1]]
            if not len(rows):
                continue
            pending.setdefault(name, []).append(table.take(pa.array(rows)))
            have[name] = have.get(name, 0) + len(rows)
            if have[name] >= counts.get(name, 0):
                yield name, pa.concat_tables(pending.pop(name)).combine_chunks()
    for name, parts in pending.items():  # only when counts did not come from this file
        yield name, pa.concat_tables(parts).combine_chunks()


def codes_of(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Integer codes per row (int64; -1 for null) and the distinct values they stand for: how
    the toolkit groups and counts string columns without a Python object per row."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_dictionary(array.type):
        array = array.dictionary_encode()
    codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, array.dictionary.to_pylist()


def patients_in_several_splits(table: pa.Table) -> list[tuple[str | None, list[str]]]:
    """``(patient_hash, its splits)`` for every patient whose rows are in more than one split,
    by patient; from the ``patient_hash`` and ``split`` columns, with no per-row objects."""
    patient, patients = codes_of(table.column("patient_hash"))
    split, splits = codes_of(table.column("split"))
    width = len(splits) + 1
    pairs = np.unique(patient * width + (split + 1))
    owner = pairs // width
    shared = np.unique(owner[1:][owner[1:] == owner[:-1]])
    out = []
    for code in shared.tolist():
        names = sorted(str(splits[p % width - 1]) if p % width else "None"
                       for p in pairs[owner == code].tolist())
        out.append((patients[code] if code >= 0 else None, names))
    return sorted(out, key=lambda item: str(item[0]))


@functools.cache
def expected_metadata(version: int = FORMAT_VERSION) -> dict[bytes, bytes]:
    """The parquet key-value metadata the writer of format ``version`` writes (the serialised
    Arrow schema of its `shards.format.manifest_schema`, nothing else)."""
    schema = manifest_schema(version)
    empty = pa.table({name: [] for name in schema.names}, schema=schema)
    buf = io.BytesIO()
    pq.write_table(empty.replace_schema_metadata(None), buf, compression="zstd")
    return dict(pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata.metadata or {})


def decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary column as plain values (other columns as they are)."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def manifest_bytes(columns: dict[str, list] | pd.DataFrame | pa.Table) -> bytes:
    """Serialise manifest columns (lists, or a DataFrame or Arrow table holding them) to
    Parquet bytes. The file's only key-value metadata is the Arrow schema of
    `MANIFEST_SCHEMA` (no pandas block: `shards verify` checks the metadata is exactly this)."""
    if isinstance(columns, pd.DataFrame):
        frame = columns[list(MANIFEST_COLUMNS)]
        table = pa.Table.from_pandas(frame, schema=MANIFEST_SCHEMA, preserve_index=False)
    elif isinstance(columns, pa.Table):
        table = manifest_table(columns)
    else:
        table = pa.table({c: columns[c] for c in MANIFEST_COLUMNS}, schema=MANIFEST_SCHEMA)
    table = table.replace_schema_metadata(None)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return buf.getvalue()


def manifest_table(table: pa.Table) -> pa.Table:
    """An Arrow table of manifest columns (strings may be dictionary-encoded, extra columns are
    dropped; an optional column it lacks is null, `with_optional_columns`) cast to exactly
    `MANIFEST_SCHEMA`."""
    table = with_optional_columns(table)
    arrays = []
    for column_field in MANIFEST_SCHEMA:
        column = table.column(column_field.name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        arrays.append(column.cast(column_field.type))
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


def manifest_problems(pf: pq.ParquetFile, version: int = FORMAT_VERSION) -> list[str]:
    """What makes this ``manifest.parquet`` not exactly the manifest of format ``version`` (the
    set's ``stats.json`` says which; empty when it is)."""
    out = []
    schema = pf.schema_arrow
    format_schema = manifest_schema(version)
    names, expected = list(schema.names), list(format_schema.names)
    extra = [n for n in names if n not in expected]
    missing = [n for n in expected if n not in names]
    if extra:
        out.append(f"manifest.parquet has column(s) the format does not have: {extra}")
    if missing:
        hint = (" (json_sha256 is part of every format-2 set written since 2026-12-01; "
                "`echocmr shards reshard --input SET --out NEW` writes a manifest that has it)"
                if "json_sha256" in missing else f" (format {version} has them)")
        out.append(f"manifest.parquet lacks column(s) {missing}{hint}")
    if not extra and not missing and names != expected:
        out.append(f"manifest.parquet columns are in the order {names}, the format's is "
                   f"{expected}")
    for field in schema:
        if field.name not in expected:
            continue
        want = format_schema.field(field.name)
        got = field.type
        if pa.types.is_dictionary(got) and field.name in REPEATED:  # how we read it
            got = got.value_type
        if not got.equals(want.type) or field.nullable != want.nullable:
            out.append(f"manifest.parquet column {field.name} is {got}"
                       f"{'' if field.nullable else ' not null'}, the format's is {want.type}")
        if field.metadata:
            out.append(f"manifest.parquet column {field.name} carries metadata "
                       f"({sorted(k.decode(errors='replace') for k in field.metadata)})")
    metadata = dict(pf.metadata.metadata or {})
    if (metadata != expected_metadata(version) if not extra and not missing
            else set(metadata) - set(expected_metadata(version))):
        keys = sorted(k.decode(errors="replace") for k in metadata)
        out.append(f"manifest.parquet key-value metadata is not what the format writes (keys "
                   f"{keys}; the format writes only the Arrow schema): text in it could be "
                   "anything, patient names included")
    created_by = pf.metadata.created_by or ""
    if not _CREATED_BY.match(created_by):
        out.append("manifest.parquet names a writer that is not pyarrow's "
                   f"({created_by[:60]!r})")
    return out
