"""shards.format and shards.index: label bytes, keys, and the DALI index against wds2idx itself."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds

from echocmr.shards.format import (
    MANIFEST_COLUMNS,
    MANIFEST_DTYPES,
    TASKS,
    ClipFormat,
    Sample,
    SampleMeta,
    ShardStats,
    decode_labels,
    encode_labels,
    encode_meta,
    make_key,
    split_member_name,
    validate_key,
    validate_site,
)
from echocmr.shards.index import (
    format_index,
    group_members,
    index_from_tar,
    parse_index,
    sample_keys,
)


def test_labels_are_little_endian_float32_in_task_order_with_nan():
    labels = np.array([1.0, 0.0, np.nan, 1.0, np.nan], dtype=np.float32)
    data = encode_labels(labels)
    assert len(data) == 20
    unpacked = struct.unpack("<5f", data)  # an independent reader of the same bytes
    assert unpacked[0] == 1.0 and unpacked[1] == 0.0 and np.isnan(unpacked[2])
    back = decode_labels(data)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(ValueError, match="shape"):
        encode_labels(np.zeros(4))
    with pytest.raises(ValueError, match="20 bytes"):
        decode_labels(data[:-1])
    assert TASKS == ("wma", "lge", "t1", "t2", "ecv")


@pytest.mark.parametrize(
    "key",
    [
        "site_a-0123456789ABCDEF",
        "site.a-0123456789abcdef",
        "Site-0123456789abcdef",
        "site_a-0123456789abcde",
        "site_a_0123456789abcdef",
        "-0123456789abcdef",
        "a" * 65 + "-" + "0" * 16,
    ],
)
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="invalid"):
        validate_key(key)


def test_good_keys_and_sites():
    assert make_key("site_2", "00ff00ff00ff00ff") == "site_2-00ff00ff00ff00ff"
    with pytest.raises(ValueError, match="site name"):
        validate_site("Site A")
    assert split_member_name("site_a-0123456789abcdef.labels") == (
        "site_a-0123456789abcdef",
        "labels",
    )


def test_meta_json_is_deterministic_and_keyed():
    a = encode_meta("s-0123456789abcdef", {"view": "A4C", "fps": 30.0, "site": "s"})
    b = encode_meta("s-0123456789abcdef", {"site": "s", "fps": 30.0, "view": "A4C"})
    assert a == b and a.startswith(b'{"key":"s-0123456789abcdef"')
    with pytest.raises(ValueError, match="key"):
        encode_meta("s-0123456789abcdef", {"key": "s-ffffffffffffffff"})


_INGEST_META = {  # what ingest writes, nulls included
    "key": "s-0123456789abcdef", "site": "s", "split": "train", "patient_hash": "p" * 16,
    "study_hash": "q" * 16, "source_sop_hash": "0123456789abcdef", "view": "unknown",
    "fps": 30.0, "n_frames": 48, "height": 112, "width": 112, "orig_fps": None,
    "orig_n_frames": 61, "pixel_spacing_mm": [0.25, 0.25], "echo_cmr_gap_days": -3,
    "field_strength_t": None,
}


@pytest.mark.parametrize("meta", [
    _INGEST_META,
    {k: _INGEST_META[k] for k in ("site", "split", "patient_hash", "study_hash", "view", "fps",
                                  "n_frames")},  # what other writers (tests, benchmarks) give
])
def test_sample_meta_round_trips_to_the_bytes_encode_meta_writes(meta):
    key = _INGEST_META["key"]
    typed = SampleMeta.from_dict(meta, key=key)
    assert typed.to_json() == encode_meta(key, meta)  # shards stay byte-for-byte as before
    assert SampleMeta.from_json(typed.to_json()) == typed
    assert (typed.ingest is None) == ("height" not in meta)
    assert Sample(key=key, video=b"v", labels=np.zeros(5, np.float32), meta=meta).meta == typed


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("n_frames"), r"sample s-0123456789abcdef: meta lacks \['n_frames'\]"),
    (lambda m: m.update(n_frames=None), "lacks"),
    (lambda m: m.update(colour="red"), "does not know \\(colour\\)"),
    (lambda m: m.pop("orig_fps"), "ingest's fields but lacks \\['orig_fps'\\]"),
    (lambda m: m.update(key="s-ffffffffffffffff"), "sample key"),
])
def test_sample_meta_is_strict_and_names_the_sample(edit, message):
    meta = dict(_INGEST_META)
    edit(meta)
    with pytest.raises(ValueError, match=message):
        SampleMeta.from_dict(meta, key=_INGEST_META["key"])


def test_clip_format_parses_once_and_writes_a_fixed_order():
    fmt = ClipFormat.from_dict({"fps": 30, "width": 112, "height": 112})
    assert fmt == ClipFormat(height=112, width=112, fps=30.0) and fmt.square_size == 112
    assert list(fmt.to_dict()) == ["height", "width", "fps", "codec", "pix_fmt"]
    assert ClipFormat.of_stats(ShardStats.from_dict({"clip": fmt.to_dict()})) == fmt
    with pytest.raises(ValueError, match="lacks"):
        ClipFormat.from_dict({"height": 112, "width": 112})
    with pytest.raises(ValueError, match="unknown"):
        ClipFormat.from_dict({**fmt.to_dict(), "depth": 3})


def test_manifest_columns_match_docs():
    assert MANIFEST_COLUMNS[:2] == ("key", "shard")
    assert set(TASKS) <= set(MANIFEST_COLUMNS)
    assert MANIFEST_DTYPES["n_frames"] == "int32" and MANIFEST_DTYPES["wma"] == "float32"
    assert MANIFEST_DTYPES["pixel_mean"] == "float64" and MANIFEST_DTYPES["key"] == "str"


def _tar_with_odd_members(path):
    """A tar written by webdataset's TarWriter with varied sizes (incl. 0 and 512-multiples)."""
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as tw:
        for i, size in enumerate([0, 1, 511, 512, 513, 4096, 7777]):
            tw.write(
                {
                    "__key__": f"x-{i:016x}",
                    "json": b"{}" * (i + 1),
                    "webm": b"\x01" * size,
                    "labels": b"\x00" * 20,
                }
            )


def test_index_matches_dali_wds2idx_byte_for_byte(tmp_path):
    tar_path = tmp_path / "t-000000.tar"
    _tar_with_odd_members(tar_path)
    ours = format_index(index_from_tar(open(tar_path, "rb")))
    ref_path = tmp_path / "ref.idx"
    subprocess.run(
        [sys.executable, "-m", "wds2idx", str(tar_path), str(ref_path)],
        check=True,
        capture_output=True,
    )
    assert ours == ref_path.read_text()
    parsed = parse_index(ours)
    assert format_index(parsed) == ours
    assert sample_keys(parsed) == [f"x-{i:016x}" for i in range(7)]
    # Offsets point at the member's data.
    data = tar_path.read_bytes()
    entry = parsed[5][2]
    assert entry.ext == "webm" and data[entry.offset : entry.offset + entry.size] == b"\x01" * 4096


def test_parse_index_rejects_garbage():
    with pytest.raises(ValueError, match="header"):
        parse_index("v1.1 2\n")
    with pytest.raises(ValueError, match="says 2"):
        parse_index("v1.2 2\njson 512 2 a.json\n")
    with pytest.raises(ValueError, match="groups"):
        parse_index("v1.2 1\njson 512 2\n")


def test_group_members_follows_consecutive_keys():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ["a-1.json", "a-1.webm", "b-2.json", "a-1.labels"]:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    samples = index_from_tar(buf)
    assert [len(s) for s in samples] == [2, 1, 1]  # wds2idx groups only consecutive members
    assert len(group_members([m for s in samples for m in s])) == 3


def test_stats_json_is_read_into_a_typed_object_that_gives_the_file_back(tmp_path):
    """`read_stats` returns `ShardStats`: every field typed, the file's content back key for key
    (so the bytes verify checks are reproducible), older sets readable, unknown keys refused."""
    import json

    from echocmr.shards.format import ShardStats, SplitStats
    from echocmr.shards.reader import read_stats
    from echocmr.shards.stats import stats_json_bytes

    from _shards_fixtures import make_shard_set

    shards = make_shard_set(str(tmp_path / "set"), n_patients=4, clips_per_patient=2,
                            n_frames=8, size=32, samples_per_shard=4, seed=3)
    raw = (tmp_path / "set" / "stats.json").read_bytes()
    stats = read_stats(shards)
    assert isinstance(stats, ShardStats) and isinstance(stats.splits["train"], SplitStats)
    assert stats.clip_format().height == 32 and stats.scope == "site"
    assert stats_json_bytes(stats.to_dict()) == raw
    old = {k: v for k, v in json.loads(raw).items() if k not in ("label_rules", "clip")}
    old["format_version"] = 1
    legacy = ShardStats.from_dict(old)
    assert legacy.format_version == 1 and legacy.clip is None
    with pytest.raises(ValueError, match="no clip block"):
        legacy.clip_format()
    with pytest.raises(ValueError, match=r"does not know \(patient_names\): upgrade echocmr"):
        ShardStats.from_dict({**json.loads(raw), "patient_names": ["DOE^JANE"]})
