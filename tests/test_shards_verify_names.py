"""`echocmr shards verify` never prints a name it found that is not the format's (issue 22).

A tampered or hostile set can carry patient text where the format has names: a tar member's name
(its key part, its extension, a directory in front of it) and a sample ``.json``'s field names or
``key`` value. verify's output is a log channel, so such a name must be reported by where it is
(shard, member number, field number) and its length, never as found. Each attack plants
``SMITH^JOHN_MRN4711`` in one such place (the set otherwise consistent: the ``.idx`` rebuilt, the
manifest's ``json_sha256`` matching an edited ``.json``), runs the real CLI as a user does (a
subprocess with its own HOME and TMPDIR, plain and ``--json``) and greps all it printed.
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
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _shards_fixtures import make_shard_set, rewrite_first_member

PLANTED = "SMITH^JOHN_MRN4711"
PIECES = ("SMITH", "JOHN", "MRN4711", "4711")


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


def _verify(directory: str, root: Path, *args: str) -> str:
    """stdout and stderr of the real CLI in a user's clean environment; it must fail (rc 1)."""
    home, tmp = root / "home", root / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {"HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    run = subprocess.run([sys.executable, "-m", "echocmr", "shards", "verify", directory, *args],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    return run.stdout + run.stderr


def _first_tar(directory: str) -> str:
    return os.path.join(directory, sorted(n for n in os.listdir(directory)
                                          if n.endswith(".tar"))[0])


def _assert_not_shown(directory: str, root: Path, *expected: str) -> None:
    for args in ((), ("--json",)):
        out = _verify(directory, root, *args)
        for piece in PIECES:
            assert piece not in out, (piece, out)
        if not args:
            for text in expected:
                assert text in out, (text, out)
        else:  # the JSON form still says where
            problems = json.loads(out[:out.rindex("]") + 1])
            assert problems and all(set(p) == {"shard", "sample", "what"} for p in problems)


def _rename_first(name_of):
    def edit(info: tarfile.TarInfo) -> None:
        info.name = name_of(info.name)
    return edit


@pytest.mark.parametrize(("name_of", "expected"), [
    (lambda old: f"{PLANTED}.mp4",
     ["train-000000.tar (a key of 18 characters that is not the format's, not shown): member 1: "
      "the name's key part (a key of 18 characters",
      "unexpected member 1 (an extension of 3 characters that is not the format's, not shown)",
      "(a key of 18 characters that is not the format's, not shown): sample not in "
      "manifest.parquet"]),
    (lambda old: f"{old.split('.')[0]}.{PLANTED}",
     ["unexpected member 1 (an extension of 18 characters that is not the format's, not "
      "shown)"]),
    (lambda old: f"{PLANTED}/{old}", ["member 1: the name's key part (a key of 42 characters"]),
], ids=["name", "extension", "directory"])
def test_a_patient_name_as_a_member_name_is_reported_by_position(copy, tmp_path, name_of,
                                                                 expected):
    rewrite_first_member(_first_tar(copy), header=_rename_first(name_of),
                         tar_format=tarfile.USTAR_FORMAT)
    _assert_not_shown(copy, tmp_path, *expected)


def _write_tar(tar_path: str, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def test_a_member_name_without_an_extension_is_reported_by_position(copy, tmp_path):
    """No dot: the tar cannot be read as samples (readers fail too); verify says where."""
    tar_path = _first_tar(copy)
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members[1][0].name = PLANTED  # its index is left as it was: the tar is what is wrong
    _write_tar(tar_path, members)
    _assert_not_shown(copy, tmp_path, "tar is damaged",
                      "member 2 (a name of 18 characters that is not the format's, not shown) "
                      "has no '<key>.<ext>' form")


def test_a_patient_name_as_a_directory_member_is_reported_by_position(copy, tmp_path):
    tar_path = _first_tar(copy)
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    folder = tarfile.TarInfo(PLANTED)
    folder.type = tarfile.DIRTYPE
    _write_tar(tar_path, [(folder, b""), *members])
    _assert_not_shown(copy, tmp_path, "member 1 (a name of 18 characters that is not the "
                      "format's, not shown) is not a file")


def _edit_first_json(directory: str, edit) -> None:
    """Rewrite the first sample's ``.json`` with ``edit(dict)`` and make the manifest's hash
    agree, so that only the names are wrong."""
    name, key, data = rewrite_first_member(
        _first_tar(directory),
        lambda raw: json.dumps(edit(json.loads(raw)), separators=(",", ":")).encode(),
        tar_format=tarfile.USTAR_FORMAT)
    assert name.endswith(".json")
    path = os.path.join(directory, "manifest.parquet")
    table = pq.read_table(path)
    hashes = table.column("json_sha256").to_pylist()
    hashes[table.column("key").to_pylist().index(key)] = hashlib.sha256(data).hexdigest()
    i = table.column_names.index("json_sha256")
    table = table.set_column(i, "json_sha256", pa.array(hashes, pa.string()))
    pq.write_table(table.cast(pq.read_schema(path)), path, compression="zstd")


def test_a_patient_name_as_a_json_field_is_reported_by_position(copy, tmp_path):
    _edit_first_json(copy, lambda meta: {**meta, PLANTED: "x"})
    _assert_not_shown(copy, tmp_path, ".json: 1 field(s) that are not the format's: field 17 (a "
                      "name of 18 characters that is not the format's, not shown)")


def test_a_patient_name_as_the_json_key_value_is_reported_by_its_length(copy, tmp_path):
    _edit_first_json(copy, lambda meta: {**meta, "key": PLANTED})
    _assert_not_shown(copy, tmp_path, ".json: its key value (a value of 18 characters that is "
                      "not the format's, not shown) is not a sample key")


def test_the_formats_own_names_stay_readable(copy, tmp_path):
    """A problem with a member whose name is the format's still names it (and its key)."""
    name, key, _ = rewrite_first_member(
        _first_tar(copy), header=lambda info: setattr(info, "mtime", 1_700_000_000),
        tar_format=tarfile.USTAR_FORMAT)
    out = _verify(copy, tmp_path)
    assert f"{key}: member {name}: header is not the one echocmr writes (mtime 1700000000)" in out
