"""`echocmr shards verify` is exact for the current format (issue 22): each attack below leaves a
set that every reader still reads, carries text (a patient's name) where the format has none, or
weakens the tamper evidence, and each must fail verify, run as a user runs it (a subprocess).

The attacks rewrite what they touch consistently (the tar's ``.idx`` rebuilt, a manifest written
back with its own schema), so that only the property under test is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from _shards_fixtures import make_shard_set, rewrite_first_member

NAME = "DOE^JANE 1961-02-03 MRN4711"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clean") / "set")
    make_shard_set(out, n_patients=4, clips_per_patient=2, n_frames=8)
    return out


@pytest.fixture
def copy(clean, tmp_path):
    out = str(tmp_path / "set")
    shutil.copytree(clean, out)
    return out


def _verify(directory, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echocmr", "shards", "verify", str(directory),
                           *args], capture_output=True, text=True)


def _fails_with(directory, *texts) -> str:
    run = _verify(directory)
    assert run.returncode == 1, run.stdout + run.stderr
    for text in texts:
        assert text in run.stdout, (text, run.stdout)
    return run.stdout


def test_the_clean_set_verifies(clean):
    run = _verify(clean)
    assert run.returncode == 0 and run.stdout.strip().endswith(": OK"), run.stdout + run.stderr


# -- tar member headers ----------------------------------------------------------------------


def _first_tar(directory: str) -> str:
    return os.path.join(directory, sorted(n for n in os.listdir(directory)
                                          if n.endswith(".tar"))[0])


def _set(**attrs):
    def edit(info):
        for name, value in attrs.items():
            setattr(info, name, value)
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (_set(uname="DOE^JANE"), "uname is not 'echocmr' (its text is not shown)"),
    (_set(gname="MRN4711"), "gname is not 'echocmr' (its text is not shown)"),
    (_set(pax_headers={"comment": NAME}), "extended (PAX) header records ['comment']"),
    (_set(pax_headers={"SCHILY.xattr.user.patient": NAME}),
     "extended (PAX) header records ['SCHILY.xattr.user.patient']"),
    (_set(mode=0o644), "mode '0o644'"),
    (_set(mtime=1_700_000_000), "mtime 1700000000"),
    (_set(uid=4711), "uid 4711"),
    (_set(linkname="DOE"), "other header bytes differ"),
], ids=["uname", "gname", "pax", "xattr", "mode", "mtime", "uid", "linkname"])
def test_patient_text_or_other_values_in_a_member_header_fail(copy, edit, expected):
    rewrite_first_member(_first_tar(copy), header=edit)
    out = _fails_with(copy, expected)
    assert "DOE^JANE" not in out and "MRN4711" not in out  # found, and not repeated


@pytest.mark.parametrize("which", ["first", "last"])
def test_text_in_a_members_zero_padding_fails(copy, which):
    """Every reader skips the padding after a member's data: text written there would ship
    unseen. Each member with padding, the first of the tar and its last (whose padding runs into
    the end-of-archive blocks), gets the name written into it."""
    tar_path = _first_tar(copy)
    with tarfile.open(tar_path) as tar:
        padded = [m for m in tar.getmembers() if m.size % 512 and 512 - m.size % 512 >= 8]
    member = padded[0] if which == "first" else padded[-1]
    room = 512 - member.size % 512
    text = NAME.encode()[:room]
    with open(tar_path, "r+b") as f:
        f.seek(member.offset_data + member.size)
        assert f.read(room) == b"\0" * room
        f.seek(member.offset_data + member.size)
        f.write(text)
    with tarfile.open(tar_path) as tar:  # the tar still reads, the member's bytes unchanged
        assert len(tar.extractfile(member.name).read()) == member.size
    _fails_with(copy, "padding after a member's data")


def test_a_global_pax_header_fails(copy):
    tar_path = _first_tar(copy)
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": NAME}) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    _fails_with(copy, "global PAX records")


# -- manifest.parquet ------------------------------------------------------------------------


def _manifest(directory) -> pa.Table:
    return pq.read_table(os.path.join(directory, "manifest.parquet"))


def _write_manifest(directory, table: pa.Table) -> None:
    pq.write_table(table, os.path.join(directory, "manifest.parquet"), compression="zstd")


def test_an_extra_manifest_column_fails(copy):
    table = _manifest(copy)
    _write_manifest(copy, table.append_column("patient_name", pa.array([NAME] * len(table))))
    _fails_with(copy, "column(s) the format does not have: ['patient_name']")


def test_patient_text_in_the_manifest_key_value_metadata_fails(copy):
    table = _manifest(copy)
    _write_manifest(copy, table.replace_schema_metadata({"site_note": NAME}))
    _fails_with(copy, "key-value metadata is not what the format writes")


def test_patient_text_in_a_manifest_field_metadata_fails(copy):
    table = _manifest(copy)
    schema = table.schema.set(0, table.schema.field("key").with_metadata({"note": NAME}))
    _write_manifest(copy, table.cast(schema))
    _fails_with(copy, "column key carries metadata")


def test_a_retyped_manifest_column_fails(copy):
    table = _manifest(copy)
    i = table.column_names.index("n_frames")
    _write_manifest(copy, table.set_column(i, "n_frames", pc.cast(table.column(i), pa.int64())))
    _fails_with(copy, "column n_frames is int64")


def test_a_changed_manifest_fps_fails(copy):
    table = _manifest(copy)
    i = table.column_names.index("fps")
    fps = table.column(i).to_pylist()
    fps[0] = 25.0
    _write_manifest(copy, table.set_column(i, "fps", pa.array(fps, pa.float32())))
    _fails_with(copy, ".json fps 30.0 but manifest 25.0")


@pytest.mark.parametrize("how", ["nulled", "dropped"])
def test_a_missing_json_hash_fails_and_then_an_edited_json_is_not_trusted(copy, how):
    """The attack: remove the hash, then edit a ``.json`` (and the manifest to agree)."""
    table = _manifest(copy)
    if how == "nulled":
        i = table.column_names.index("json_sha256")
        table = table.set_column(i, "json_sha256", pa.nulls(len(table), pa.string()))
    else:
        table = table.drop_columns(["json_sha256"])
    _write_manifest(copy, table)
    text = "manifest has no json_sha256" if how == "nulled" else "lacks column(s) ['json_sha256']"
    _fails_with(copy, text)


def test_a_json_member_in_another_serialisation_fails(copy):
    """The same values, spaced out, and a manifest hash that matches the new bytes."""
    name, key, spaced = rewrite_first_member(
        _first_tar(copy), lambda data: json.dumps(json.loads(data), indent=1).encode())
    assert name.endswith(".json")
    table = _manifest(copy)
    hashes = table.column("json_sha256").to_pylist()
    hashes[table.column("key").to_pylist().index(key)] = hashlib.sha256(spaced).hexdigest()
    i = table.column_names.index("json_sha256")
    _write_manifest(copy, table.set_column(i, "json_sha256", pa.array(hashes, pa.string())))
    _fails_with(copy, ".json is not serialised as the format writes it")


# -- stats.json and the directory ------------------------------------------------------------


def test_patient_text_in_stats_json_under_a_repeated_key_fails(copy):
    path = os.path.join(copy, "stats.json")
    text = open(path).read()
    # JSON keeps the last of two equal keys: the values still match, the bytes carry a name.
    open(path, "w").write(text.replace('{\n', f'{{\n  "pixel_mean": "{NAME}",\n', 1))
    _fails_with(copy, "stats.json: is not serialised as the format writes it")


def test_unknown_files_fail_unless_allowed_then_they_are_warnings(copy):
    with open(os.path.join(copy, "notes.txt"), "w") as f:
        f.write(NAME)
    os.mkdir(os.path.join(copy, "DOE_JANE"))
    _fails_with(copy, "notes.txt: not a file of a shard set", "DOE_JANE: a directory")
    run = _verify(copy, "--allow-extra-files")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: notes.txt: not a file of a shard set" in run.stderr
    assert "warning: DOE_JANE: a directory" in run.stderr


def test_a_crashed_writers_temporary_file_is_reported(copy):
    with open(os.path.join(copy, ".train-000000.tar.tmp-0123456789ab"), "wb") as f:
        f.write(b"half a tar")
    _fails_with(copy, "a crashed writer's leftover temporary file")


def test_the_fast_member_header_is_tarfiles():
    """verify compares every member with `member_header`; its fast path must be byte for byte
    what tarfile (hence the writer) writes, and it falls back to tarfile beyond it."""
    from echocmr.shards.writer import _tarfile_header, member_header

    names = ["site_a-0123456789abcdef.json", "a" * 64 + "-0123456789abcdef.labels", "x",
             "s" * 100, "s" * 101, "sité-0.json"]
    for name in names:
        for size in (0, 1, 20, 511, 512, 10**6, 8**11 - 1, 8**11):
            assert member_header(name, size) == _tarfile_header(name, size), (name, size)
