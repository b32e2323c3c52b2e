"""`shards.streaming.Buckets` reads a bucket back with a bounded number of chunks.

reshard spills one small batch per input shard into every bucket of the output (n / 256 batches
per bucket); read whole, a bucket was a table of that many chunks, each with its own buffers and
objects, and the driver's peak grew with the set. Read back now, every `_READ_BATCHES` batches are
combined into one chunk: the same rows in the same order, the chunk count bounded. Checked on
batches of uneven sizes, a count that is a multiple of the block and one that is not, strings with
nulls, and a bucket that never got a row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from echocmr.shards import streaming


def _batch(rng: np.random.Generator, start: int, n: int) -> pa.Table:
    keys = [None if k % 7 == 3 else f"k{k:06d}" for k in range(start, start + n)]
    return pa.table({"key": pa.array(keys, pa.string()),
                     "row": pa.array(np.arange(start, start + n), pa.int64()),
                     "x": pa.array(rng.normal(size=n))})


def test_a_bucket_of_many_small_batches_reads_back_whole_in_order_in_few_chunks(monkeypatch):
    monkeypatch.setattr(streaming, "_READ_BATCHES", 16)  # many blocks from a small test
    rng = np.random.default_rng(0)
    want: dict[int, list[pa.Table]] = {0: [], 1: [], 2: []}
    adds = {0: 0, 1: 0, 2: 0}
    start = 0
    with streaming.Buckets() as buckets:
        for i in range(100):
            n = int(rng.integers(1, 9))
            table = _batch(rng, start, n)
            start += n
            # bucket 0: every add; bucket 1: the first 32 adds that have a row for it; 3: never
            bucket = np.zeros(n, np.int64)
            if i < 32:
                bucket[: n // 2] = 1
            buckets.add(table, bucket)
            for b in (0, 1):
                rows = np.flatnonzero(bucket == b)
                if len(rows):
                    want[b].append(table.take(pa.array(rows)))
                    adds[b] += 1
        for b in (0, 1):
            got = buckets.read(b)
            expected = pa.concat_tables(want[b])
            assert got.equals(expected), b
            assert got.column("key").num_chunks <= -(-adds[b] // 16), (b, adds[b])
            assert got.column("key").num_chunks < adds[b]
        assert buckets.read(3) is None


def test_a_bucket_of_exactly_whole_blocks(monkeypatch):
    monkeypatch.setattr(streaming, "_READ_BATCHES", 4)
    rng = np.random.default_rng(1)
    parts = [_batch(rng, 10 * i, 3) for i in range(8)]
    with streaming.Buckets() as buckets:
        for part in parts:
            buckets.add(part, np.zeros(part.num_rows, np.int64))
        got = buckets.read(0)
    assert got.equals(pa.concat_tables(parts))
    assert got.column("row").num_chunks == 2
