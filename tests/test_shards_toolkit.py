"""The shard toolkit (issue 4): reshard two sites, verify catches damage, stats, and the CLI."""

from __future__ import annotations

import filecmp
import io
import json
import os
import shutil
import tarfile

import pytest

import echocmr.shards.reshard as reshard_module
from echocmr.cli import main as echocmr
from echocmr.shards.index import parse_index
from echocmr.shards.reader import list_shards, read_manifest, read_stats
from echocmr.shards.reshard import ReshardConfig, ReshardError, reshard
from echocmr.shards.stats import pooled_pixel_stats
from echocmr.shards.verify import verify

from _shards_fixtures import make_shard_set


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    a = make_shard_set(str(root / "site_a"), site="site_a", seed=0, n_frames=12)
    b = make_shard_set(str(root / "site_b"), site="site_b", seed=1, n_frames=12)
    (root / "site_b" / "ingest_report.parquet").write_bytes(b"stays at the site")
    return a, b


@pytest.fixture(scope="module")
def merged(sites, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("merged") / "ab")
    summary = reshard(
        list(sites), out, config=ReshardConfig(samples_per_shard=4, seed=7, verify_decode=True)
    )
    return out, summary


def test_two_sites_merge_into_one_verified_mixed_set(sites, merged):
    out, summary = merged
    assert verify(out, decode=True) == []
    before = [read_manifest(s) for s in sites]
    after = read_manifest(out)
    # Nothing lost, nothing duplicated.
    assert len(after) == sum(len(m) for m in before) == sum(summary.clips.values())
    assert set(after["key"]) == set(before[0]["key"]) | set(before[1]["key"])
    assert after["key"].is_unique
    # Every patient keeps its split.
    old_split = {p: s for m in before for p, s in zip(m["patient_hash"], m["split"], strict=True)}
    assert all(
        old_split[p] == s for p, s in zip(after["patient_hash"], after["split"], strict=True)
    )
    # Every output shard of every split mixes both sites, and sizes are even.
    for shard, rows in after.groupby("shard"):
        assert set(rows["site"]) == {"site_a", "site_b"}, shard
    sizes = after.groupby("shard").size()
    for split in ("train", "val", "test"):
        split_sizes = sizes[[n for n in sizes.index if n.startswith(split)]]
        assert split_sizes.max() - split_sizes.min() <= 1
    # Train statistics are recomputed over the merged train split.
    train = after[after["split"] == "train"]
    mean, std = pooled_pixel_stats(train["pixel_mean"], train["pixel_std"], train["n_pixels"])
    stats = read_stats(out).to_dict()
    assert stats["pixel_mean"] == pytest.approx(mean) and stats["pixel_std"] == pytest.approx(std)
    assert stats["splits"]["train"]["sites"] == ["site_a", "site_b"]
    assert "ingest_report.parquet" not in os.listdir(out)


def test_reshard_is_deterministic_and_independent_of_input_order(sites, merged, tmp_path):
    out, _ = merged
    again = str(tmp_path / "ba")
    reshard(list(reversed(sites)), again, config=ReshardConfig(samples_per_shard=4, seed=7))
    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(again))
    _, mismatch, errors = filecmp.cmpfiles(out, again, names, shallow=False)
    assert not mismatch and not errors


def test_rerun_after_a_crash_finishes_the_job(sites, merged, tmp_path, monkeypatch):
    out = str(tmp_path / "crashed")
    real_copy = reshard_module._copy_shard
    calls = []

    def crash_on_third(out_dir, name, chunk):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_copy(out_dir, name, chunk)

    monkeypatch.setattr(reshard_module, "_copy_shard", crash_on_third)
    config = ReshardConfig(samples_per_shard=4, seed=7)
    with pytest.raises(KeyboardInterrupt):
        reshard(list(sites), out, config=config)
    left = os.listdir(out)
    assert "manifest.parquet" not in left and not [n for n in left if n.startswith(".")]
    assert len([n for n in left if n.endswith(".tar")]) == 2  # two whole shards, no half one
    monkeypatch.setattr(reshard_module, "_copy_shard", real_copy)
    summary = reshard(list(sites), out, config=config)
    assert summary.written == sum(summary.shards.values()) - 2
    reference, _ = merged
    names = sorted(os.listdir(reference))
    assert sorted(os.listdir(out)) == names
    _, mismatch, errors = filecmp.cmpfiles(reference, out, names, shallow=False)
    assert not mismatch and not errors


def test_shard_mb_gives_even_shards(sites, tmp_path):
    out = str(tmp_path / "mb")
    summary = reshard(list(sites), out, config=ReshardConfig(shard_mb=0.1))
    sizes = read_manifest(out).groupby("shard").size()
    assert summary.shards["train"] >= 2
    for split in ("train", "val", "test"):
        part = sizes[[n for n in sizes.index if n.startswith(split)]]
        assert part.max() - part.min() <= 1
    assert max(os.path.getsize(p) for p in list_shards(out)) < 0.1e6 * 1.5


def _patched_copy(src, dst, edit):
    shutil.copytree(src, dst)
    stats = json.loads((dst / "stats.json").read_text())
    edit(stats)
    (dst / "stats.json").write_text(json.dumps(stats))
    return str(dst)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["clip"].update(fps=25.0), "clip fps"),
        (lambda s: s["clip"].update(height=128), "clip height"),
        (lambda s: s.update(split_key_fingerprint="0" * 16), "split key"),
        (lambda s: s.update(tasks=["wma", "lge"]), "label set"),
    ],
)
def test_reshard_refuses_inputs_that_disagree(sites, tmp_path, edit, message):
    other = _patched_copy(sites[1], tmp_path / "other", edit)
    with pytest.raises(ReshardError, match=message):
        reshard([sites[0], other], str(tmp_path / "out"), config=ReshardConfig())
    assert not (tmp_path / "out").exists()


def test_an_older_format_version_is_refused_by_reshard_and_reported_by_verify(sites, tmp_path):
    """A version-1 set's clips decode clipped: reshard would copy them into a version-2 set."""
    old = _patched_copy(sites[1], tmp_path / "v1", lambda s: s.update(format_version=1))
    with pytest.raises(ReshardError, match=r"version 1.*Re-run `echocmr ingest`"):
        reshard([sites[0], old], str(tmp_path / "out"), config=ReshardConfig())
    assert not (tmp_path / "out").exists()
    problems = verify(old)
    assert len(problems) == 1 and "shard format version 1" in problems[0].what


def test_reshard_refuses_the_same_clips_twice_and_foreign_out(sites, tmp_path):
    with pytest.raises(ReshardError, match="more than one input"):
        reshard([sites[0], sites[0]], str(tmp_path / "o"), config=ReshardConfig())
    relative = os.path.relpath(sites[0])
    with pytest.raises(ReshardError, match="one of the inputs"):
        reshard([sites[0], sites[1]], relative + "/", config=ReshardConfig())
    with pytest.raises(ReshardError, match="not a shard set"):
        reshard([sites[0]], sites[1], config=ReshardConfig())  # holds ingest_report.parquet


@pytest.fixture
def damaged(merged, tmp_path):
    out, _ = merged
    copy = tmp_path / "damaged"
    shutil.copytree(out, copy)
    return copy


def _entries(directory, shard):
    return parse_index((directory / shard.replace(".tar", ".idx")).read_text())


def test_verify_names_a_flipped_byte_inside_a_clip(damaged):
    entry = _entries(damaged, "train-000001.tar")[2][2]
    assert entry.ext == "webm"
    with open(damaged / "train-000001.tar", "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        byte = f.read(1)
        f.seek(entry.offset + entry.size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    problems = verify(str(damaged))
    key = entry.name.split(".")[0]
    assert [(p.shard, p.sample) for p in problems] == [("train-000001.tar", key)]
    assert "corrupt" in problems[0].what


def test_verify_names_a_deleted_labels_member(damaged):
    path = damaged / "val-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = members[4][0].name
    assert victim.endswith(".labels")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name != victim:
                tar.addfile(info, io.BytesIO(data))
    problems = verify(str(damaged))
    key = victim.split(".")[0]
    assert any(
        p.shard == "val-000000.tar" and p.sample == key and "missing .labels" in p.what
        for p in problems
    )
    assert any(p.shard == "val-000000.idx" and "does not match" in p.what for p in problems)


@pytest.mark.parametrize("where", ["mid_member", "member_boundary"])
def test_verify_names_a_truncated_tar(damaged, where):
    path = damaged / "test-000001.tar"
    entries = _entries(damaged, "test-000001.tar")
    last_whole = entries[1][2]
    cut = (
        last_whole.offset + last_whole.size // 2
        if where == "mid_member"
        else last_whole.offset + -(-last_whole.size // 512) * 512
    )
    os.truncate(path, cut)
    problems = verify(str(damaged))
    assert problems and all(p.shard in ("test-000001.tar", "test-000001.idx") for p in problems)
    assert any("damaged" in p.what or "end-of-archive" in p.what for p in problems)
    lost = {e[0].name.split(".")[0] for e in entries[2:]}
    reported = {p.sample for p in problems if "not found in any tar" in p.what}
    assert lost <= reported


def test_verify_decode_catches_a_clip_shorter_than_its_metadata(tmp_path):
    import numpy as np

    from echocmr.ingest.encode import encode_webm
    from echocmr.shards.format import Sample
    from echocmr.shards.writer import ShardSetWriter, WriterConfig

    from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format

    out = str(tmp_path / "short")
    frames = np.full((6, 112, 112), 90, dtype=np.uint8)
    meta = {
        "site": "site_a",
        "split": "train",
        "patient_hash": "p",
        "study_hash": "s",
        "view": "A4C",
        "fps": 30.0,
        "n_frames": 9,
    }  # claims 9 frames, holds 6
    with ShardSetWriter(
        out,
        config=WriterConfig(),
        clip_format=clip_format(),
        split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT,
    ) as writer:
        writer.add(
            Sample(
                key="site_a-00000000000000ab",
                video=encode_webm(frames, 30.0),
                labels=np.zeros(5, np.float32),
                meta=meta,
            ),
            pixel_stats=(90, 0, 6 * 112 * 112),
        )
    assert verify(out) == []  # the bytes are all consistent; only decoding can tell
    problems = verify(out, decode=True)
    assert [(p.shard, p.sample, p.what) for p in problems] == [
        ("train-000000.tar", "site_a-00000000000000ab", "decodes to 6 frames, manifest says 9")
    ]


def test_cli_verify_stats_reshard(sites, merged, damaged, tmp_path, capsys):
    out, _ = merged
    assert echocmr(["shards", "verify", out]) == 0
    assert echocmr(["shards", "stats", out]) == 0
    table = capsys.readouterr().out
    assert "site site_a" in table and "wma prevalence" in table
    assert echocmr(["shards", "stats", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["by_site"]["site_b"]["clips"] > 0
    os.truncate(damaged / "train-000000.tar", 5000)
    assert echocmr(["shards", "verify", str(damaged)]) == 1
    assert "train-000000.tar" in capsys.readouterr().out
    new = str(tmp_path / "cli")
    assert (
        echocmr(
            [
                "shards",
                "reshard",
                "--input",
                *sites,
                "--out",
                new,
                "--samples-per-shard",
                "5",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert "verified OK" in capsys.readouterr().out
    assert echocmr(["shards", "reshard", "--input", sites[0], "--out", sites[1]]) == 1
    assert "error:" in capsys.readouterr().err


def test_reshard_can_leave_a_site_out_for_external_validation(sites, tmp_path):
    out = str(tmp_path / "without_b")
    reshard(list(sites), out, config=ReshardConfig(samples_per_shard=4, exclude_sites=("site_b",)))
    after = read_manifest(out)
    assert set(after["site"]) == {"site_a"} and len(after) == len(read_manifest(sites[0]))
    assert verify(out) == []
    with pytest.raises(ReshardError, match="sites are"):
        reshard(list(sites), str(tmp_path / "x"),
                config=ReshardConfig(exclude_sites=("nowhere",)))
