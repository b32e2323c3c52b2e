"""`shards verify` and `shards reshard` on a two-node Ray cluster give exactly the local results.

`ray.cluster_utils.Cluster` starts a head and a worker node (1 CPU each) on this machine
(`cluster.inprocess.temporary_cluster`); the toolkit connects to it by address as it would to any
cluster, one task per shard. The references are the same commands run in this process: reshard's
output must be the same files byte for byte, verify's problems the same list in the same order
(on a clean set, and on a set damaged in several shards at once, where the order matters), and
the command line's ``--address`` the same printed report.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from echocmr.cluster.inprocess import temporary_cluster
from echocmr.shards.index import parse_index
from echocmr.shards.reshard import ReshardConfig, reshard
from echocmr.shards.verify import problems_json, verify

from _shards_fixtures import make_shard_set

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    return [make_shard_set(str(root / site), site=site, seed=seed, n_patients=8, n_frames=8,
                           samples_per_shard=3)
            for seed, site in enumerate(("site_a", "site_b"))]


@pytest.fixture(scope="module")
def cluster():
    with temporary_cluster(init_args={"log_to_driver": False}) as c:
        yield c


def _digests(root: str) -> dict[str, str]:
    return {name: hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(root))}


def _damage(directory: str) -> None:
    """A flipped clip byte in one shard, a truncated tar, a deleted index, a stray file."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".tar"))
    first = os.path.join(directory, names[0])
    entry = parse_index(open(first[:-4] + ".idx").read())[1][2]
    with open(first, "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        byte = f.read(1)
        f.seek(entry.offset + entry.size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.truncate(os.path.join(directory, names[-1]), 3000)
    os.remove(os.path.join(directory, names[len(names) // 2][:-4] + ".idx"))
    open(os.path.join(directory, "notes.txt"), "w").write("x")


def test_reshard_on_two_nodes_writes_the_local_bytes(sites, cluster, tmp_path):
    config = ReshardConfig(samples_per_shard=2, seed=5)
    local, remote = str(tmp_path / "local"), str(tmp_path / "ray")
    reshard(sites, local, config=config)
    summary = reshard(sites, remote, config=config, address=cluster.address)
    assert summary.written == sum(summary.shards.values()) >= 10
    assert _digests(remote) == _digests(local)


def test_verify_on_two_nodes_reports_the_local_problems_in_the_local_order(sites, cluster,
                                                                           tmp_path):
    clean = str(tmp_path / "clean")
    reshard(sites, clean, config=ReshardConfig(samples_per_shard=2, seed=5))
    assert verify(clean, address=cluster.address) == verify(clean) == []
    damaged = str(tmp_path / "damaged")
    shutil.copytree(clean, damaged)
    _damage(damaged)
    local = verify(damaged)
    assert len({p.shard for p in local}) >= 4  # several shards' problems, interleaved by order
    assert problems_json(verify(damaged, address=cluster.address)) == problems_json(local)


def test_the_command_line_takes_an_address(sites, cluster, tmp_path):
    damaged = str(tmp_path / "damaged")
    shutil.copytree(sites[0], damaged)
    _damage(damaged)

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "echocmr", "shards", "verify", damaged,
                               "--json", *extra], capture_output=True, text=True)

    here, there = run(), run("--address", cluster.address)
    assert here.returncode == there.returncode == 1
    assert there.stdout == here.stdout and '"what"' in here.stdout
