"""The shard format and its toolkit.

A shard set is WebDataset tars of echo clips (``KEY.webm``, ``KEY.labels``, ``KEY.json``), a DALI
index per tar, ``manifest.parquet`` and ``stats.json``, in a directory or behind a URL prefix
(see docs/formats.md). Modules: `shards.format` (names, keys, label bytes, manifest schema),
`shards.writer` (`ShardSetWriter`), `shards.reader`, `shards.index` (DALI ``wds2idx`` format),
`shards.storage` (local paths and fsspec URLs, atomic writes), `shards.manifest` (the manifest
as Arrow columns and by shard), `shards.stats`, `shards.verify`, `shards.reshard`,
`shards.distributed` (one task per shard, here or on Ray) and `shards.cli`
(``echocmr shards verify|stats|reshard``).
"""
