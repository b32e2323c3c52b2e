"""Every documented journey, run as a user runs it: the commands are read from the docs.

A guide marks the shell blocks a user types with an info string naming the journey,
```` ```bash journey=NAME ````; a journey is its blocks in the order of `JOURNEYS` (a guide,
then the next), joined into one ``bash -euo pipefail`` script. Each runs as a subprocess in a
clean environment — its own HOME and TMPDIR, PATH = the installed ``echocmr`` and the system,
nothing else: no split key, no Ray or MLflow settings, none of the test suite's variables — in
an empty working directory. So a command that only works with a setting the tests have, or a
doc that drifted from the CLI, fails here. The checks after each journey look at what a user
would look at (files, exit codes, printed lines).

Journeys that train or start clusters take minutes on two cores: they are marked ``slow``
(``make test-all``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```bash journey=(?P<name>[\w-]+)[^\n]*\n(?P<body>.*?)^```", re.M | re.S)

# journey -> (the journey it continues, or None; the guides holding its own blocks, in order)
JOURNEYS: dict[str, tuple[str | None, list[str]]] = {
    "ingest-one-site": (None, ["docs/ingest.md"]),
    "add-a-site": ("ingest-one-site", ["docs/add-a-site.md"]),
}


def blocks(name: str) -> list[str]:
    """The journey's shell blocks as written: those of the journey it continues, then its own,
    guide by guide in document order."""
    after, docs = JOURNEYS[name]
    found = blocks(after) if after else []
    for doc in docs:
        found += [m.group("body") for m in BLOCK.finditer((ROOT / doc).read_text())
                  if m.group("name") == name]
    return found


def user_env(tmp: Path) -> dict[str, str]:
    """What a user's plain shell has: a HOME and a TMPDIR of its own and the installed tools."""
    home, tmpdir = tmp / "home", tmp / "tmp"
    home.mkdir(exist_ok=True)
    tmpdir.mkdir(exist_ok=True)
    bindir = str(Path(sys.executable).parent)
    return {"HOME": str(home), "TMPDIR": str(tmpdir), "LANG": "C.UTF-8",
            "PATH": os.pathsep.join([bindir, "/usr/local/bin", "/usr/bin", "/bin"])}


def run_journey(name: str, tmp: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    script = "\n".join(blocks(name))
    assert script.strip(), f"no ```bash journey={name} blocks in {JOURNEYS[name][1]}"
    work = tmp / "work"
    work.mkdir()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                          env=user_env(tmp), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"journey {name} failed (exit {done.returncode})\n--- script\n"
                                  f"{script}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n"
                                  f"{done.stderr[-6000:]}")
    return done


def test_every_journey_is_in_its_guides():
    for name, (_after, docs) in JOURNEYS.items():
        own = [m for doc in docs for m in BLOCK.finditer((ROOT / doc).read_text())
               if m.group("name") == name]
        assert own, f"no ```bash journey={name} block in {docs}"
    marked = {m.group("name") for doc in ROOT.glob("docs/*.md")
              for m in BLOCK.finditer(doc.read_text())}
    marked |= {m.group("name") for m in BLOCK.finditer((ROOT / "README.md").read_text())}
    assert marked <= set(JOURNEYS), f"journeys marked in docs but never run: {marked - set(JOURNEYS)}"


@pytest.mark.timeout(1800)
def test_ingest_one_site(tmp_path):
    """docs/ingest.md: a synthetic cohort, a split key of the user's own, one ingest, verify and
    stats — from a plain shell."""
    done = run_journey("ingest-one-site", tmp_path)
    shards = tmp_path / "work" / "sets" / "northfield"
    assert (shards / "manifest.parquet").is_file() and (shards / "stats.json").is_file()
    assert list(shards.glob("train-*.tar")) and (shards / "ingest_report.parquet").is_file()
    assert "OK" in done.stdout  # shards verify's verdict


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_add_a_site(tmp_path):
    """docs/add-a-site.md after docs/ingest.md: a second site with the same key, merged by
    reshard into a new set that verifies."""
    run_journey("add-a-site", tmp_path)
    merged = tmp_path / "work" / "sets" / "v2"
    assert (merged / "manifest.parquet").is_file()
