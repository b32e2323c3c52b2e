"""shards.lock: one writer per output directory; a dead holder never blocks a re-run."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from echocmr.shards.lock import LOCK_FILE, OutputLocked, exclusive_output

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hold_in_child(directory):
    """A child process that takes the lock, says so, then waits to be killed."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from echocmr.shards.lock import exclusive_output
        with exclusive_output({str(directory)!r}, "ingest"):
            print("held", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    child = hold_in_child(tmp_path)
    try:
        with pytest.raises(OutputLocked, match=rf"being written by another job \(echocmr ingest, "
                                               rf"pid {child.pid} on "):
            with exclusive_output(str(tmp_path), "ingest"):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The kernel dropped the dead holder's lock: a re-run takes it at once.
    with exclusive_output(str(tmp_path), "ingest"):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()  # a finished job leaves no lock file
    with exclusive_output(str(tmp_path), "ingest"):  # and it can be taken again
        pass


def test_a_job_that_opened_the_file_as_the_holder_finished_locks_the_new_one(tmp_path,
                                                                            monkeypatch):
    """Job B opens the lock file, holder A finishes (removes it, unlocks), B locks the orphaned
    file: B must notice and lock a file at the path, or a newcomer C would hold a lock too."""
    import echocmr.shards.lock as lock
    path = str(tmp_path / LOCK_FILE)
    with exclusive_output(str(tmp_path), "ingest"):
        orphan = os.open(path, os.O_RDWR)  # B's open, before A's release
    real_open, calls = os.open, []

    def open_once_orphan(*args, **kwargs):
        calls.append(args[0])
        return os.dup(orphan) if len(calls) == 1 else real_open(*args, **kwargs)

    monkeypatch.setattr(lock.os, "open", open_once_orphan)
    fd = lock._acquire(path, str(tmp_path))
    monkeypatch.undo()
    try:
        assert len(calls) == 2  # it retried
        assert os.fstat(fd).st_ino == os.stat(path).st_ino
        with pytest.raises(OutputLocked):  # C is refused: B holds the file at the path
            with exclusive_output(str(tmp_path), "ingest"):
                pass
    finally:
        os.close(fd)
        os.close(orphan)


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with exclusive_output(str(tmp_path), "ingest"):
        with pytest.raises(OutputLocked):
            with exclusive_output(str(tmp_path), "reshard"):
                pass


def test_ingest_refuses_an_output_another_ingest_holds(tmp_path):
    from echocmr.ingest.job import run_ingest

    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "a.dcm").write_bytes(b"not read: the lock is taken before any input")
    out = tmp_path / "shards"
    child = hold_in_child(out)
    try:
        with pytest.raises(OutputLocked, match="wait for it to finish"):
            run_ingest(str(dicom), str(tmp_path / "labels.csv"), str(out))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert sorted(os.listdir(out)) == [LOCK_FILE]  # nothing else was written
