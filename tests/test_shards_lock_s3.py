"""shards.lock on an ``s3://`` prefix: a lease object with conditional writes, against a real
S3 server (moto's, on loopback; the ``s3_endpoint`` fixture). One writer per prefix; a dead
holder is taken over (at once on its own host, after the lease elsewhere); of two jobs that find
one stale lease exactly one wins; a holder that loses its lease fails at the end."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import fsspec
import pytest

from echocmr.shards.lock import LOCK_FILE, OutputLocked, exclusive_url_output

from _s3_fixtures import BUCKET, child_env, remove_prefix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def prefix(s3_endpoint, request):
    url = f"s3://{BUCKET}/locks/{request.node.name}"
    yield url
    remove_prefix(url)


def _lock_key(url: str) -> str:
    return f"{url.split('://', 1)[1]}/{LOCK_FILE}"


def _plant(url: str, **holder) -> None:
    """A lease object as another job would have left it."""
    body = {"command": "ingest", "pid": 4242, "host": "elsewhere", "started": "then",
            "lease_s": 600.0, "token": "planted", **holder}
    fsspec.filesystem("s3").pipe_file(_lock_key(url), json.dumps(body).encode())


def _hold_in_child(url: str, endpoint: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from echocmr.shards.lock import exclusive_url_output
        with exclusive_url_output({url!r}, "ingest", lease_s=5):
            print("held", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=child_env(endpoint))
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_job_is_refused_and_a_finished_one_leaves_no_lock(prefix):
    fs = fsspec.filesystem("s3")
    with exclusive_url_output(prefix, "ingest"):
        assert fs.exists(_lock_key(prefix))
        with pytest.raises(OutputLocked) as refused:
            with exclusive_url_output(prefix, "reshard"):
                pytest.fail("two holders")
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "lease renewed" in message
    fs.invalidate_cache()
    assert not fs.exists(_lock_key(prefix))
    with exclusive_url_output(prefix, "ingest"):  # and it can be taken again
        pass


def test_a_live_holder_in_another_process_renews_and_is_respected(prefix, s3_endpoint):
    fs = fsspec.filesystem("s3")
    child = _hold_in_child(prefix, s3_endpoint)
    try:
        first = fs.info(_lock_key(prefix), refresh=True)["LastModified"]
        time.sleep(7)  # past its 5 s lease: only renewals keep it held
        assert fs.info(_lock_key(prefix), refresh=True)["LastModified"] > first  # renewed
        assert json.loads(fs.cat_file(_lock_key(prefix)))["renewals"] >= 5
        with pytest.raises(OutputLocked, match=f"pid {child.pid}"):
            with exclusive_url_output(prefix, "ingest"):
                pass
    finally:
        child.kill()
        child.wait()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(prefix, s3_endpoint, caplog):
    child = _hold_in_child(prefix, s3_endpoint)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert fsspec.filesystem("s3").exists(_lock_key(prefix))  # left behind
    with caplog.at_level(logging.WARNING, logger="echocmr.shards.lock"):
        with exclusive_url_output(prefix, "ingest"):
            pass
    assert "its process is gone" in caplog.text


def test_a_holder_elsewhere_is_waited_for_until_its_lease_expires(prefix):
    _plant(prefix, lease_s=3.0)
    with pytest.raises(OutputLocked, match="on elsewhere.*expires"):
        with exclusive_url_output(prefix, "ingest"):
            pass
    time.sleep(4)
    with exclusive_url_output(prefix, "ingest"):
        holder = json.loads(fsspec.filesystem("s3").cat_file(_lock_key(prefix)))
        assert holder["pid"] == os.getpid()


def test_of_two_jobs_that_find_one_stale_lease_exactly_one_wins(prefix):
    _plant(prefix, lease_s=0.0)
    time.sleep(1.1)  # stale by the server's clock (LastModified has 1 s resolution)
    outcomes, entered, done = [], threading.Barrier(2), threading.Event()

    def job() -> None:
        entered.wait()
        try:
            with exclusive_url_output(prefix, "ingest"):
                outcomes.append("held")
                done.wait(30)
        except OutputLocked:
            outcomes.append("refused")

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(outcomes) < 2 and time.monotonic() < deadline:
        if sorted(outcomes) == ["held", "refused"]:
            break
        time.sleep(0.05)
    done.set()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["held", "refused"]


def test_a_holder_whose_lease_was_taken_over_fails_at_the_end(prefix):
    with pytest.raises(OutputLocked, match="lost the lock"):
        with exclusive_url_output(prefix, "ingest", lease_s=1.0):
            _plant(prefix)  # another job replaced the lease (this one "stalled")
            time.sleep(0.5)  # a renewal (every 0.1 s) sees it
    holder = json.loads(fsspec.filesystem("s3").cat_file(_lock_key(prefix)))
    assert holder["token"] == "planted"  # the other job's lease is left alone


def test_ingest_into_a_locked_prefix_refuses_before_writing(prefix, tmp_path):
    from echocmr.ingest.job import run_ingest

    _plant(prefix)
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    with pytest.raises(OutputLocked, match="another job"):
        run_ingest(str(dicom), str(tmp_path / "labels.csv"), prefix, progress=False)
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.ls(prefix.split("://", 1)[1]) == [_lock_key(prefix)]  # nothing else written
