"""Progress of long work: a bar on a terminal, plain lines anywhere else (logs stay readable)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from echocmr.progress import Progress


def test_off_a_terminal_it_prints_plain_lines_at_an_interval_and_at_the_end():
    out = io.StringIO()
    with Progress(10, desc="eval inference", unit="video", interval_s=0.0, stream=out) as p:
        for _ in range(10):
            p.update(1)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 11  # one per update at interval 0, and the final one
    assert lines[0].startswith("eval inference: 1/10 videos (10%)") and "left" in lines[0]
    assert lines[-1].startswith("eval inference: 10/10 videos (100%)") and "done in" in lines[-1]


def test_a_long_interval_prints_only_the_final_line_and_disabled_prints_nothing():
    out = io.StringIO()
    with Progress(3, desc="x", unit="file", stream=out, interval_s=3600) as p:
        p.update(3, loss="0.61")
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert "3/3 files (100%)" in out.getvalue() and "loss 0.61" in out.getvalue()
    quiet = io.StringIO()
    with Progress(3, desc="x", unit="file", stream=quiet, enabled=False) as p:
        p.update(3)
    assert quiet.getvalue() == ""


def test_on_a_terminal_it_is_a_bar():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with Progress(4, desc="ingest", unit="file", stream=out) as p:
        p.update(4)
    assert "\r" in out.getvalue() and "4/4" in out.getvalue()


def test_synth_into_a_pipe_writes_lines_not_a_bar(tmp_path):
    """What a user's log file gets from `echocmr synth ... 2> log` (no TTY)."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, "-m", "echocmr", "synth", "--out", str(tmp_path / "c"),
                           "--patients", "2", "--workers", "1"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "synth patients: 2/2 patients (100%)" in done.stderr


def test_library_bars_are_off_only_where_stderr_is_not_a_terminal(monkeypatch):
    """MLflow draws its own artifact bars; into a log they are one huge line. The CLI turns them
    off there, and only there, and a user's own setting wins."""
    from echocmr.progress import quiet_library_bars

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    var = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    monkeypatch.delenv(var, raising=False)
    quiet_library_bars(Tty())
    assert var not in os.environ
    quiet_library_bars(io.StringIO())
    assert os.environ[var] == "false"
    monkeypatch.setenv(var, "true")
    quiet_library_bars(io.StringIO())
    assert os.environ[var] == "true"


def test_a_ray_train_worker_shows_each_line_once(monkeypatch):
    """Ray Train patches ``print`` in its workers (``patch_print_function``): a print to a
    wrapped stdout is printed AND logged, so the driver showed every progress line twice. With
    Ray's own patch in place, a line reaches stdout and the root logger once in all."""
    import builtins
    import logging

    from ray.train.v2._internal.logging.patch_print import patch_print_function

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    out, records = io.StringIO(), Records()
    monkeypatch.setattr(sys, "stdout", out)  # a worker's stdout, wrapped as Ray's is
    monkeypatch.setattr(builtins, "print", builtins.print)  # put back after the test
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "1")  # Ray's default, stated
    root, original = logging.getLogger(), builtins.print
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.INFO)  # as Ray Train's logging config sets it in a worker
    try:
        patch_print_function()
        assert builtins.print is not original  # Ray's patch is in place
        print("a user print")  # the control: Ray's patch doubles a print
        with Progress(2, desc="train epoch 0", unit="step", bar=False, stream=sys.stdout) as p:
            p.update(2)
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    shown = out.getvalue().splitlines() + records.messages
    assert shown.count("a user print") == 2
    assert [line for line in shown if line.startswith("train epoch 0")] == \
        [next(line for line in shown if line.startswith("train epoch 0"))]
