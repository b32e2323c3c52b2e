"""`echocmr.cluster.inprocess.temporary_cluster`: the throwaway multi-node cluster that the
multi-node tests and `bench_ingest --ray` start. Real Ray nodes; what is checked is what the
callers rely on: every node up with its resources, the environment the nodes inherit, and
everything put back on exit, also when the body raises."""

from __future__ import annotations

import os

import pytest

from echocmr.cluster.inprocess import temporary_cluster

pytestmark = pytest.mark.timeout(180)


def test_nodes_are_up_and_everything_is_put_back_even_after_an_error(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # unset, as in a user's shell
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # a caller's own setting, to be restored
    monkeypatch.delenv("ECHOCMR_PROBE", raising=False)
    seen = {}
    with pytest.raises(RuntimeError, match="the body failed"):
        with temporary_cluster([{"num_cpus": 1, "resources": {"node_0": 1}},
                                {"num_cpus": 1, "resources": {"node_1": 1}}],
                               env={"ECHOCMR_PROBE": "inherited"}, prefix="ecmt-") as c:
            alive = [n for n in ray.nodes() if n["Alive"]]
            seen["resources"] = sorted(k for n in alive for k in n["Resources"]
                                       if k.startswith("node_"))
            seen["temp"] = c.temp_dir
            seen["env"] = (os.environ["RAY_TMPDIR"], os.environ["RAY_AUTH_MODE"])
            seen["token"] = os.environ.get("RAY_AUTH_TOKEN_PATH") or "$RAY_AUTH_TOKEN"

            @ray.remote(resources={"node_1": 0.01})
            def probe() -> str | None:
                return os.environ.get("ECHOCMR_PROBE")

            seen["probe"] = ray.get(probe.remote(), timeout=60)
            assert len(c.nodes) == 2 and c.address == c.cluster.address
            raise RuntimeError("the body failed")
    assert seen["resources"] == ["node_0", "node_1"]
    # Token auth, like every cluster of ours: the nodes and this driver share the user's token.
    assert seen["temp"].startswith("/tmp/ecmt-") and seen["env"] == (seen["temp"], "token")
    assert seen["token"] == "$RAY_AUTH_TOKEN" or os.path.getsize(seen["token"]) > 0
    assert seen["probe"] == "inherited"  # a task on the second node sees the extra variable
    assert not ray.is_initialized()
    assert not os.path.exists(seen["temp"])
    assert "RAY_AUTH_MODE" not in os.environ and "ECHOCMR_PROBE" not in os.environ
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"


def test_a_cluster_needs_a_head():
    with pytest.raises(ValueError, match="head"):
        with temporary_cluster([]):
            pass
