"""`echocmr shards verify` catches tampering anywhere: a changed byte in any member of a sample,
a stats.json that no longer matches the manifest, bytes appended after a tar's end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from _shards_fixtures import make_shard_set


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clean") / "set")
    make_shard_set(out, n_patients=4, clips_per_patient=1, n_frames=8)
    return out


def _verify(directory) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echocmr", "shards", "verify", str(directory)],
                          capture_output=True, text=True)


def _copy(clean, tmp_path) -> str:
    out = str(tmp_path / "set")
    shutil.copytree(clean, out)
    return out


def _first_member(directory: str, ext: str) -> tuple[str, int, int]:
    """(tar path, data offset, size) of the first ``.ext`` member of the first tar."""
    tar_path = os.path.join(directory, sorted(n for n in os.listdir(directory)
                                              if n.endswith(".tar"))[0])
    with tarfile.open(tar_path) as tar:
        info = next(m for m in tar.getmembers() if m.name.endswith("." + ext))
        return tar_path, info.offset_data, info.size


def test_a_clean_set_verifies(clean):
    run = _verify(clean)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("ext", ["json", "labels", "webm"])
def test_a_changed_byte_in_any_member_is_caught(clean, tmp_path, ext):
    out = _copy(clean, tmp_path)
    tar_path, offset, size = _first_member(out, ext)
    with open(tar_path, "r+b") as f:
        position = offset + (size // 2 if ext != "json" else size - 3)  # json: inside a value
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x01]))
    run = _verify(out)
    assert run.returncode != 0, (ext, run.stdout)
    assert f".{ext}" in run.stdout, run.stdout


def test_stats_json_that_no_longer_matches_the_manifest_is_caught(clean, tmp_path):
    out = _copy(clean, tmp_path)
    path = os.path.join(out, "stats.json")
    stats = json.loads(open(path).read())
    stats["pixel_mean"] = stats["pixel_mean"] + 1.0
    with open(path, "w") as f:
        json.dump(stats, f, indent=2)
    run = _verify(out)
    assert run.returncode != 0 and "pixel_mean does not match the manifest" in run.stdout


def test_bytes_after_the_end_of_archive_are_caught(clean, tmp_path):
    out = _copy(clean, tmp_path)
    tar_path, _, _ = _first_member(out, "json")
    with open(tar_path, "ab") as f:
        f.write(b"PATIENT DOE^JANE 19610203")
    run = _verify(out)
    assert run.returncode != 0 and "after the end-of-archive blocks" in run.stdout
