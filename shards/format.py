"""The shard format's vocabulary: tasks, the `Sample`, label bytes, keys, and manifest columns.

Everything that two packages must agree on about one sample lives here, so that ingest (which
writes), train and eval (which read) and the toolkit (which checks and reshards) cannot drift
apart. The full format is described in ``docs/formats.md``.

A sample is three tar members sharing one key: ``KEY.webm`` (VP9), ``KEY.labels``
(little-endian float32[5], NaN where unknown) and ``KEY.json`` (metadata, never PHI).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

FORMAT_VERSION = 1

# Files of a shard set besides its tars and indexes (docs/formats.md).
MANIFEST_FILE = "manifest.parquet"
STATS_FILE = "stats.json"
INGEST_REPORT_FILE = "ingest_report.parquet"  # site-local; never copied by reshard

TASKS: tuple[str, ...] = ("wma", "lge", "t1", "t2", "ecv")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Tar member extensions of one sample, in the order webdataset's TarWriter writes them (sorted).
EXTENSIONS: tuple[str, ...] = ("json", "labels", "webm")

LABEL_DTYPE = np.dtype("<f4")
LABEL_BYTES = LABEL_DTYPE.itemsize * len(TASKS)

# Member names must fit a 100-character ustar name field: site (<=64) + '-' + 16 hex + '.labels'.
MAX_SITE_LEN = 64
_SITE_RE = re.compile(r"^[a-z0-9_]+$")
_KEY_RE = re.compile(r"^([a-z0-9_]+)-([0-9a-f]{16})$")
SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")

# Metadata fields the writer needs to build a manifest row; ingest writes more (docs/formats.md).
REQUIRED_META: tuple[str, ...] = (
    "site",
    "split",
    "patient_hash",
    "study_hash",
    "view",
    "fps",
    "n_frames",
)

# manifest.parquet: one row per clip, in the order the samples were written.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "key",
    "shard",
    "split",
    "site",
    "patient_hash",
    "study_hash",
    "view",
    "n_frames",
    "fps",
    *TASKS,
    "video_bytes",
    "video_sha256",
    "pixel_mean",
    "pixel_std",
    "n_pixels",
)
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("site", pa.string()),
        ("patient_hash", pa.string()),
        ("study_hash", pa.string()),
        ("view", pa.string()),
        ("n_frames", pa.int32()),
        ("fps", pa.float32()),
        *[(task, pa.float32()) for task in TASKS],
        ("video_bytes", pa.int64()),
        ("video_sha256", pa.string()),
        ("pixel_mean", pa.float64()),
        ("pixel_std", pa.float64()),
        ("n_pixels", pa.int64()),
    ]
)
assert tuple(MANIFEST_SCHEMA.names) == MANIFEST_COLUMNS
# The same columns as numpy dtype names ("str" for strings), for code that builds DataFrames.
MANIFEST_DTYPES: dict[str, str] = {
    name: ("str" if pa.types.is_string(t) else np.dtype(t.to_pandas_dtype()).name)
    for name, t in zip(MANIFEST_SCHEMA.names, MANIFEST_SCHEMA.types, strict=True)
}


@dataclass(frozen=True)
class Sample:
    """One echo clip as stored in a shard.

    ``video`` is the WebM file's bytes, ``labels`` float32[5] in `TASKS` order (NaN unknown),
    ``meta`` the JSON metadata (see docs/formats.md; ``meta["split"]`` decides the shard).
    """

    key: str
    video: bytes
    labels: np.ndarray
    meta: dict = field(default_factory=dict)


def validate_site(site: str) -> str:
    """Return ``site`` if it is a valid site name (lower-case ``[a-z0-9_]+``), else raise."""
    if not isinstance(site, str) or not _SITE_RE.match(site) or len(site) > MAX_SITE_LEN:
        raise ValueError(
            f"site name {site!r} is invalid: use lower-case letters, digits and '_' only "
            f"(at most {MAX_SITE_LEN} characters; it becomes the prefix of every sample key)"
        )
    return site


def validate_key(key: str) -> str:
    """Return ``key`` if it is ``<site>-<16 hex>`` (no dots: webdataset splits names there)."""
    match = _KEY_RE.match(key) if isinstance(key, str) else None
    if not match or len(match.group(1)) > MAX_SITE_LEN:
        raise ValueError(
            f"sample key {key!r} is invalid: expected '<site>-<16 lower-case hex>' with site "
            "in [a-z0-9_]+, e.g. 'site_a-0123456789abcdef'"
        )
    return key


def key_site(key: str) -> str:
    """The site prefix of a valid key."""
    return validate_key(key).rsplit("-", 1)[0]


def make_key(site: str, clip_hash: str) -> str:
    """Build a key from a site name and a 16-hex clip hash (validated)."""
    return validate_key(f"{validate_site(site)}-{clip_hash}")


def encode_labels(labels: np.ndarray) -> bytes:
    """float32[5] in `TASKS` order (NaN unknown) to 20 little-endian bytes."""
    arr = np.asarray(labels, dtype=np.float64)
    if arr.shape != (len(TASKS),):
        raise ValueError(
            f"labels must have shape ({len(TASKS)},) in order {TASKS}, got {arr.shape}"
        )
    return arr.astype(LABEL_DTYPE).tobytes()


def decode_labels(data: bytes) -> np.ndarray:
    """20 little-endian bytes to a native float32[5] array (NaN unknown)."""
    if len(data) != LABEL_BYTES:
        raise ValueError(
            f"labels must be {LABEL_BYTES} bytes (float32[{len(TASKS)}]), got {len(data)}"
        )
    return np.frombuffer(data, dtype=LABEL_DTYPE).astype(np.float32)


def encode_meta(key: str, meta: dict) -> bytes:
    """The ``KEY.json`` bytes: ``key`` first, the rest sorted, compact UTF-8 (deterministic)."""
    if meta.get("key", key) != key:
        raise ValueError(f"meta['key'] is {meta['key']!r} but the sample key is {key!r}")
    body = {k: v for k, v in sorted(meta.items()) if k != "key"}
    return json.dumps({"key": key, **body}, separators=(",", ":"), allow_nan=False).encode()


def decode_meta(data: bytes) -> dict:
    """Parse ``KEY.json`` bytes."""
    meta = json.loads(data.decode("utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("sample json must be an object")
    return meta


def split_member_name(name: str) -> tuple[str, str]:
    """``"site-abc.labels"`` -> ``("site-abc", "labels")``: split at the first dot, as DALI does."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".")
    if dot <= 0:
        raise ValueError(f"tar member {name!r} has no '<key>.<ext>' form")
    prefix = name[: len(name) - len(base)]
    return prefix + base[:dot], base[dot + 1 :]


def shard_name(split: str, number: int) -> str:
    """``('train', 3)`` -> ``'train-000003.tar'``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{split}-{number:06d}.tar"


def index_name(tar_name: str) -> str:
    """``'train-000003.tar'`` -> ``'train-000003.idx'``."""
    if not tar_name.endswith(".tar"):
        raise ValueError(f"not a tar name: {tar_name!r}")
    return tar_name[: -len(".tar")] + ".idx"
