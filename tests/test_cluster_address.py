"""`--address auto` means the cluster `echocmr cluster local` started, not whichever Ray Ray's
own ``auto`` finds first: on a machine where another Ray runs, Ray's ``auto`` picks any GCS
process it sees (the ingest journey in tests/test_journeys.py connected to another session's
Ray that way and was refused with ``InvalidAuthToken``).

The recorded cluster here is a stand-in: a process in a session of its own whose command line
names the cluster's private temp dir, which is how `cluster_pids` recognises a node's processes;
no Ray is started.
"""

import subprocess
import sys
import time

from echocmr.cluster.local import LocalClusterState, NodeRecord, resolve_auto_address


def _record(state_dir, temp_dir, pgid) -> LocalClusterState:
    state = LocalClusterState(address="127.0.0.1:45321", dashboard_url="http://127.0.0.1:45322",
                              temp_dir=str(temp_dir), nodes=[NodeRecord(index=0,
                                                                        resource="node_0",
                                                                        pgid=pgid)],
                              cpus_per_node=1, python=sys.executable, started_at=time.time())
    state.save(state_dir)
    return state


def test_auto_is_the_recorded_running_cluster_and_nothing_else(tmp_path):
    state_dir, temp_dir = tmp_path / "state", tmp_path / "echocmr-ray-private"
    # no cluster recorded: auto stays Ray's, explicit addresses are never touched
    assert resolve_auto_address("auto", state_dir) == "auto"
    assert resolve_auto_address(None, state_dir) is None
    node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             str(temp_dir)], start_new_session=True)
    try:
        _record(state_dir, temp_dir, node.pid)
        assert resolve_auto_address("auto", state_dir) == "127.0.0.1:45321"
        assert resolve_auto_address("10.0.0.7:6379", state_dir) == "10.0.0.7:6379"
        assert resolve_auto_address("ray://head:10001", state_dir) == "ray://head:10001"
    finally:
        node.kill()
        node.wait()
    # the recorded cluster is gone (its processes ended): auto is Ray's again
    assert resolve_auto_address("auto", state_dir) == "auto"
    # a live process group that is not the cluster's (no private temp dir on its command line)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                start_new_session=True)
    try:
        _record(state_dir, temp_dir, stranger.pid)
        assert resolve_auto_address("auto", state_dir) == "auto"
    finally:
        stranger.kill()
        stranger.wait()
    # an unreadable state file is not ours to judge
    (state_dir / "cluster.json").write_text("{not json")
    assert resolve_auto_address("auto", state_dir) == "auto"
