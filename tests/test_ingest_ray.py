"""Ingest on a two-node Ray cluster: byte-identical to the local run, through a lost node, a killed
driver, and with inputs and outputs on S3.

`ray.cluster_utils.Cluster` starts a head and a worker node (1 CPU each) on this machine, shared
by the module's tests; `run_ingest(address=...)` connects to it as it would to any cluster. The
export is tiny (3 patients x 2 clips plus 4 bad files, 16 frames of 48x64) and the text detector
is off, so each file takes well under a second: the tests prove the plumbing (placement, retries,
resume, order), not speed. The reference is the same export ingested in this process.

Where tasks ran is read from a ``before_file`` hook the tests pass to `run_ingest`
(`_ingest_fixtures.StartLog`): each file task appends ``<node id> <source>`` to a log before it
starts (and sleeps, where a test needs tasks that last).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from echocmr.cluster.inprocess import temporary_cluster
from echocmr.ingest.config import IngestConfig, ShardConfig, TextDetectorConfig
from echocmr.ingest.job import run_ingest
from echocmr.ingest.workcache import WORK_DIR

from _ingest_fixtures import StartLog, write_cohort

pytestmark = pytest.mark.timeout(600)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config() -> IngestConfig:
    return IngestConfig(site="site_a", text_detector=TextDetectorConfig(enabled=False),
                        shards=ShardConfig(samples_per_shard=2))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("export"), n_patients=3, clips_per_study=2,
                        n_frames=16, shape=(48, 64), seed=5)


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory, module_split_key):
    """The export ingested in this process, without Ray: sha256 of every file."""
    out = str(tmp_path_factory.mktemp("local") / "set")
    run_ingest(cohort.dicom_dir, cohort.labels_path, out, config=_config(), progress=False,
               in_process=True)
    return _digests(out)


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """The S3 server, started before the cluster so that its nodes inherit the credentials and
    the endpoint (``FSSPEC_S3_ENDPOINT_URL``, as a user would configure their workers)."""
    return s3_endpoint


@pytest.fixture(scope="module")
def cluster(s3):
    """A head and one worker node, 1 CPU each; Ray's files in a private temp dir."""
    # Workers unpickle test hooks from tests/_ingest_fixtures.py (the crash test's).
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {"FSSPEC_S3_ENDPOINT_URL": s3,
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    with temporary_cluster(env=env, init_args={"log_to_driver": False}) as c:
        yield c.cluster, {"worker": c.nodes[1]}


def _digests(root: str) -> dict[str, str]:
    """sha256 of every file under a directory or URL prefix, by relative path."""
    from echocmr.shards import storage

    if storage.is_local(root):
        return {os.path.relpath(os.path.join(d, n), root):
                hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
                for d, _, names in os.walk(root) for n in names}
    return {rel: hashlib.sha256(storage.read_bytes(storage.join(root, rel))).hexdigest()
            for rel, _, _ in storage.walk_files(root)}


def _starts(log: str) -> list[tuple[str, str]]:
    if not os.path.exists(log):
        return []
    return [tuple(line.split(" ", 1)) for line in open(log).read().splitlines() if line]


def test_two_nodes_write_the_same_bytes_as_the_local_run(cohort, reference, cluster, tmp_path, split_key):
    c, nodes = cluster
    log = str(tmp_path / "starts.log")
    hook = StartLog(log, delay_s=0.3)  # long enough that one node cannot take every file
    out = str(tmp_path / "ray")
    summary = run_ingest(cohort.dicom_dir, cohort.labels_path, out, config=_config(),
                         progress=False, address=c.address, before_file=hook)
    assert summary.kept == 6 and len(summary.shards) >= 3
    assert _digests(out) == reference
    assert not os.path.exists(os.path.join(out, WORK_DIR))
    starts = _starts(log)
    assert sorted(s for _, s in starts) == sorted(cohort.expected)  # every file once
    assert {n for n, _ in starts} == {c.head_node.node_id, nodes["worker"].node_id}


def test_s3_inputs_and_outputs_locally_and_on_the_cluster(cohort, reference, cluster, s3, split_key):
    from echocmr.shards import storage

    c, _ = cluster
    import fsspec

    fs = fsspec.filesystem("s3")
    for d, _, names in os.walk(cohort.dicom_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), cohort.dicom_dir)
            fs.put_file(os.path.join(d, n), f"echo/in/{rel}")
    # Without Ray (this process) and on the cluster: both byte-identical to the local run.
    run_ingest("s3://echo/in", cohort.labels_path, "s3://echo/out-local", config=_config(),
               progress=False, in_process=True)
    assert _digests("s3://echo/out-local") == reference
    summary = run_ingest("s3://echo/in", cohort.labels_path, "s3://echo/out-ray",
                         config=_config(), progress=False, address=c.address)
    assert summary.kept == 6
    assert _digests("s3://echo/out-ray") == reference  # the work cache under it is gone too
    assert not storage.walk_files(f"s3://echo/out-ray/{WORK_DIR}")


def test_killed_driver_resumes_from_the_work_cache(cohort, reference, cluster, tmp_path, split_key):
    """The real command line with ``--address`` (tasks slowed by a ``before_file`` hook),
    SIGKILLed after a few files; the rerun resumes."""
    c, _ = cluster
    out = str(tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
    config = tmp_path / "ingest.yaml"
    config.write_text("text_detector: {enabled: false}\nshards: {samples_per_shard: 2}\n")
    driver = ("import sys, _ingest_fixtures as f; sys.exit(f.echocmr_with_hook(sys.argv[1:], "
              f"f.StartLog({str(tmp_path / 'starts.log')!r}, delay_s=0.5)))")
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, "ingest", "--dicom", cohort.dicom_dir, "--labels",
         cohort.labels_path, "--out", out, "--site", "site_a", "--config", str(config),
         "--address", c.address, "--no-progress"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    files = os.path.join(out, WORK_DIR, "files")

    def results_cached() -> int:  # result files in the cache's sub-directories
        return sum(n.endswith(".json") for _, _, names in os.walk(files) for n in names)

    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results_cached() >= 3:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver; its tasks' workers belong to the cluster
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not os.path.exists(os.path.join(out, "manifest.parquet")), "finished before the kill"
    n_done = results_cached()
    assert 0 < n_done < len(cohort.expected)

    summary = run_ingest(cohort.dicom_dir, cohort.labels_path, out, config=_config(),
                         progress=False, address=c.address)
    assert summary.resumed_files >= n_done
    assert _digests(out) == reference


def test_a_file_that_kills_its_worker_on_every_try_is_worker_crashed(cluster, tmp_path):
    """As in the local pool: the task is retried (``ray.max_retries``), then the file rejected;
    the other files are unaffected and the job goes on."""
    from echocmr.ingest.config import RayConfig
    from echocmr.ingest.distributed import ray_file_results

    from _ingest_fixtures import crash_cohort

    sources, ctx, work = crash_cohort(tmp_path, _config())
    results = {r.source: r for r in ray_file_results(
        ctx, [(s, f"e{i}") for i, s in enumerate(sources)], RayConfig(max_retries=1))}
    assert sorted(results) == sources
    for source, result in results.items():
        want = "worker_crashed" if "crash" in source else "no_cmr_within_window"
        assert result.reason == want, (source, result)
    crashed = sources.index(next(s for s in sources if "crash" in s))
    assert work.load(f"e{crashed}").reason == "worker_crashed"  # cached: a rerun skips it


def test_a_crashing_file_in_a_batch_is_found_and_the_rest_kept(cluster, tmp_path, caplog):
    """Enough files for tasks of several files: a batch whose worker dies on every try is split,
    the file that kills its worker is worker_crashed, every other file has one result."""
    from echocmr.ingest.config import RayConfig
    from echocmr.ingest.distributed import ray_file_results

    from _ingest_fixtures import crash_cohort

    sources, ctx, work = crash_cohort(tmp_path, _config())
    junk = os.path.join(ctx.dicom_dir, "junk")
    os.makedirs(junk)
    for i in range(300):
        with open(os.path.join(junk, f"x{i:04d}"), "wb") as f:
            f.write(b"not a dicom")
    crash = next(s for s in sources if "crash" in s)
    os.link(os.path.join(ctx.dicom_dir, crash), os.path.join(junk, "zz-crash.dcm"))
    tasks = [(f"junk/{n}", f"j{i}") for i, n in enumerate(sorted(os.listdir(junk)))]
    with caplog.at_level("WARNING", logger="echocmr.ingest.distributed"):
        results = list(ray_file_results(ctx, iter(tasks), RayConfig(max_retries=1)))
    assert "a batch's worker died on every try" in caplog.text  # the crash was in a batch
    assert sorted(r.source for r in results) == sorted(s for s, _ in tasks)
    for r in results:
        want = "worker_crashed" if "crash" in r.source else "not_dicom"
        assert r.reason == want, r
    assert work.load(f"j{len(tasks) - 1}").reason == "worker_crashed"


def test_losing_a_node_mid_run_changes_no_byte(cohort, reference, cluster, tmp_path, split_key):
    """Remove the worker node while it runs a file: Ray reruns that task on the head."""
    c, nodes = cluster
    worker = nodes["worker"]
    log = str(tmp_path / "starts.log")
    hook = StartLog(log, delay_s=1.5)
    out = str(tmp_path / "lost")
    box: dict = {}

    def ingest() -> None:
        try:
            box["summary"] = run_ingest(cohort.dicom_dir, cohort.labels_path, out,
                                        config=_config(), progress=False, address=c.address,
                                        before_file=hook)
        except BaseException as exc:  # surfaced by the test thread
            box["error"] = exc

    thread = threading.Thread(target=ingest, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(n == worker.node_id for n, _ in _starts(log)):
        assert thread.is_alive(), box.get("error")
        time.sleep(0.02)
    victims = [s for n, s in _starts(log) if n == worker.node_id]
    assert victims, "no file task ever started on the worker node"
    c.remove_node(worker)  # raylet and worker processes die, mid-sleep of the victims' tasks
    nodes["worker"] = c.add_node(num_cpus=1)  # for any later test; may join after the run
    thread.join(timeout=300)
    assert not thread.is_alive(), "ingest did not finish after the node was lost"
    if "error" in box:
        raise box["error"]
    assert _digests(out) == reference
    starts = _starts(log)
    # The file that was running on the lost node started again elsewhere.
    assert any(s == victims[-1] and n != worker.node_id for n, s in starts), starts
    assert sorted(set(s for _, s in starts)) == sorted(cohort.expected)
