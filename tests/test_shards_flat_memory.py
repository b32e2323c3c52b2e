"""The shard toolkit's driver holds nothing per clip: its memory does not grow with the set
(issue 26: `shards verify`, `shards stats` and `shards reshard` at millions of clips).

Each command runs in a fresh process on two manifest-only sets (a real ``manifest.parquet`` and
``stats.json`` in the format, tars and indexes standing in: empty tars for verify, whose samples
are trusted as reshard trusts the shards it wrote, and real indexes for reshard, whose copies are
replaced by a no-op), 50,000 and 400,000 clips, and its peak resident memory (``VmHWM``) over
its baseline after imports is compared. Row groups, record batches, spilled parts and reshard's
buckets are 8,192 rows here (the code's 65,536 scaled down, so both sets hold many of each).
The code before issue 26's rewrite held 0.3-0.6 KB per clip (100-200 MB more at the larger
size); the bound is 64 bytes per added clip (22 MB), generous for allocator noise (0-50 bytes
seen) yet below a Python string per clip (a key alone is a 72-byte str plus its reference).
Reshard's plan is spilled to disk and sorted there (`shards.reshard_plan`: runs of 8,192 records
here), so reshard has the same bound; and its scan and plan alone (nothing written) are held to
24 bytes per added clip: they measured -4 to -1 (32 MB over the baseline at both sizes), and the
same plan sorted in one run in memory grows 124 bytes per clip (34 MB -> 75 MB). Before the
plan was spilled it held ~80 bytes per clip at its peak (numpy), under a bound of 128 bytes that
its whole run never reached at these sizes (the copy phase's peak is higher).
Nothing is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echocmr.shards.format import (
    MANIFEST_SCHEMA,
    SPLITS,
    STATS_FILE,
    TASKS,
    VENDOR_VOCABULARY,
    index_name,
)
from echocmr.shards.index import IndexEntry, format_index
from echocmr.shards.stats import compute_stats, stats_json_bytes

from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format

SMALL, LARGE = 50_000, 400_000
BYTES_PER_CLIP = 64
# Reshard's plan is sorted on disk (`shards.reshard_plan`): the driver holds a run of records.
RESHARD_BYTES_PER_CLIP = BYTES_PER_CLIP
# Scan and plan alone: the helper's runs measured -4 to -1 B per clip, a clean clone 30 (the
# allocator's peaks move by ~10 MB between runs); the same plan sorted in memory measured 124.
PLAN_BYTES_PER_CLIP = 64
# Rows per row group, record batch, spilled part and reshard bucket in these runs: the code's
# 65,536 scaled down (its constants, set in the child), so that both sets hold many of each and
# the allocator's warm-up over the first few batches is behind both.
ROWS = 8192
SITES = ("site_a", "site_b", "site_c", "site_d")


def _hex(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    raw = rng.integers(0, 256, size=(n, digits // 2), dtype=np.uint8)
    return [row.tobytes().hex() for row in raw]


def manifest_only_set(directory: str, n: int, *, seed: int, indexes: bool) -> str:
    """A set of ``n`` clips over four sites (two clips per patient), a split's rows together
    and sorted by key as ingest writes them, 256 per shard; each tar an empty file, each index
    real (``indexes``) or empty."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory)
    patient = np.arange(n) // 2
    split = np.array(SPLITS)[np.array([0, 0, 0, 1, 2])[patient % 5]]
    site = np.array(SITES)[patient % len(SITES)]
    keys = np.array([f"{s}-{h}" for s, h in zip(site, _hex(rng, n, 16), strict=True)])
    order = np.lexsort((keys, np.searchsorted(np.array(SPLITS), split, sorter=np.argsort(SPLITS))))
    split, site, keys, patient = split[order], site[order], keys[order], patient[order]
    shard = np.empty(n, dtype=object)
    for s in SPLITS:
        rows = np.flatnonzero(split == s)
        shard[rows] = [f"{s}-{k // 256:06d}.tar" for k in range(len(rows))]
    patient_hash = np.array(_hex(np.random.default_rng(seed + 1), int(patient.max()) + 1, 16))
    labels = rng.integers(0, 3, size=(n, len(TASKS))).astype(np.float32)
    labels[labels == 2] = np.nan
    table = pa.table({
        "key": keys, "shard": shard.astype(str), "split": split, "site": site,
        "patient_hash": patient_hash[patient], "study_hash": patient_hash[patient],
        "view": np.array(["A4C", "A2C", "PLAX", "other"])[rng.integers(0, 4, n)],
        "n_frames": rng.integers(16, 128, n).astype(np.int32),
        "fps": np.full(n, 30.0, np.float32),
        **{t: labels[:, j] for j, t in enumerate(TASKS)},
        "video_bytes": rng.integers(400, 90_000, n),
        "video_sha256": _hex(rng, n, 64), "pixel_mean": rng.random(n) * 80,
        "pixel_std": rng.random(n) * 30, "n_pixels": np.full(n, 144 * 144 * 32),
        "json_sha256": _hex(rng, n, 64), "view_confidence": rng.random(n).astype(np.float32),
        # format 3: each clip's vendor (a vocabulary name, or none recorded)
        "vendor": np.array([*VENDOR_VOCABULARY[:-1], None], dtype=object)[
            rng.integers(0, len(VENDOR_VOCABULARY), n)],
    }, schema=MANIFEST_SCHEMA)
    # As `shards.manifest.manifest_bytes` writes it, in row groups of ROWS rows.
    pq.write_table(table.replace_schema_metadata(None), os.path.join(directory,
                   "manifest.parquet"), compression="zstd", row_group_size=ROWS)
    stats = compute_stats(table, clip_format=clip_format(144, 30.0),
                          split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT)
    with open(os.path.join(directory, STATS_FILE), "wb") as f:
        f.write(stats_json_bytes(stats))
    names = table.column("shard").to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(np.r_[True, names[1:] != names[:-1], True])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        name = str(names[start])
        open(os.path.join(directory, name), "wb").close()
        text = ""
        if indexes:
            samples = []
            for i, key in enumerate(keys[start:stop]):
                base = 2048 * i + 512
                samples.append([IndexEntry("json", base, 300, f"{key}.json"),
                                IndexEntry("labels", base + 512 + 512, 20, f"{key}.labels"),
                                IndexEntry("webm", base + 1536, 500, f"{key}.webm")])
            text = format_index(samples)
        with open(os.path.join(directory, index_name(name)), "w") as f:
            f.write(text)
    return directory


_CHILD = r"""
import json, sys

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

op, directory, out, rows = sys.argv[1:5]
import echocmr.shards.reshard as reshard_module
from echocmr.shards import manifest, streaming, stats as stats_module, verify as verify_module
from echocmr.shards.reader import list_shards
manifest._BATCH_ROWS = streaming.PART_ROWS = int(rows)
reshard_module._BUCKET_ROWS = reshard_module._MANIFEST_ROW_GROUP = int(rows)
reshard_module._RUN_ROWS = int(rows)  # the plan's external sorts (absent before issue 26's)
base = hwm()
if op == "stats":
    result = len(json.dumps(stats_module.describe(directory)))
elif op == "verify":
    tars = frozenset(p.rsplit("/", 1)[-1] for p in list_shards(directory))
    report = verify_module.verify_set(directory, trusted_shards=tars)
    result = [str(p) for p in report.problems]
else:
    if op == "reshard-plan":  # the scan, the sorts and the plan alone: nothing written
        reshard_module._write_output = lambda *args: (0, 0)
    # The driver alone: no clip is copied (the tars are empty), nothing is re-verified.
    reshard_module._copy_shard = lambda out, name, job: job.rows.num_rows
    reshard_module._verify_output = lambda *args: []
    summary = reshard_module.reshard([directory], out,
                                     config=reshard_module.ReshardConfig(samples_per_shard=256))
    result = summary.clips
print(json.dumps({"base": base, "peak": hwm(), "result": result}))
"""


def run(op: str, directory: str, out: str = "") -> dict:
    # A fresh interpreter per run: its peak RSS is this operation's alone. Its own TMPDIR (set
    # for the child only), where the spills go: nothing of them may be left behind.
    scratch = tempfile.mkdtemp(prefix="flat-scratch-", dir=os.path.dirname(directory))
    proc = subprocess.run([sys.executable, "-c", _CHILD, op, directory, out, str(ROWS)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "TMPDIR": scratch})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(scratch) == []
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    return {n: manifest_only_set(str(root / f"n{n}"), n, seed=n, indexes=True)
            for n in (SMALL, LARGE)}


def _growth(small: dict, large: dict) -> float:
    return ((large["peak"] - large["base"]) - (small["peak"] - small["base"])) / (LARGE - SMALL)


def test_stats_driver_memory_does_not_grow_with_the_set(sets):
    small, large = run("stats", sets[SMALL]), run("stats", sets[LARGE])
    assert _growth(small, large) < BYTES_PER_CLIP, (small, large)


def test_verify_driver_memory_does_not_grow_with_the_set(sets):
    small, large = run("verify", sets[SMALL]), run("verify", sets[LARGE])
    assert small["result"] == [] and large["result"] == []  # the driver's checks all ran clean
    assert _growth(small, large) < BYTES_PER_CLIP, (small, large)


def test_reshard_driver_memory_does_not_grow_with_the_set(sets, tmp_path):
    small = run("reshard", sets[SMALL], str(tmp_path / "small"))
    large = run("reshard", sets[LARGE], str(tmp_path / "large"))
    assert sum(large["result"].values()) == LARGE
    assert pq.ParquetFile(str(tmp_path / "large" / "manifest.parquet")).metadata.num_rows == LARGE
    # Its stats.json, counted batch by batch as the output came out of the buckets (view_mix
    # per site and vendor included), is what the whole output manifest gives at once.
    whole = pq.read_table(str(tmp_path / "small" / "manifest.parquet"))
    with open(tmp_path / "small" / STATS_FILE) as f:
        written = json.load(f)
    assert written["view_mix"] and written == compute_stats(
        whole, clip_format=clip_format(144, 30.0),
        split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT)
    assert _growth(small, large) < RESHARD_BYTES_PER_CLIP, (small, large)


def test_reshard_plan_memory_does_not_grow_with_the_set(sets, tmp_path):
    """The scan, the external sorts and the plan alone (its output not written): the part of
    reshard that held numbers per clip."""
    small = run("reshard-plan", sets[SMALL], str(tmp_path / "small"))
    large = run("reshard-plan", sets[LARGE], str(tmp_path / "large"))
    assert sum(large["result"].values()) == LARGE
    assert _growth(small, large) < PLAN_BYTES_PER_CLIP, (small, large)
