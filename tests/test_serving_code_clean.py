"""The code a registered model carries holds none of the identifiers the privacy tests plant.

`model.publish.serving_code` copies echocmr's own source into every logged model (``code_paths``),
so the MLflow server's artifact store holds it. The end-to-end privacy tests (slow) search that
store for the identifiers they plant: a docstring that quotes one as an example (``'MRN4711'``)
made them fail on our own source, not on a leak. This fast test reads exactly what is shipped.
"""

from __future__ import annotations

import os

from _leak_fixtures import MRN, MRN2, PLANTED, find_needles

from echocmr.model.publish import serving_code

# The planted strings whole (the synthetic cohort's name lists hold SMITH and JOHN on purpose).
WHOLE = {s.encode() for s in PLANTED} | {MRN.encode(), MRN2.encode(), b"SMITH^JOHN"}


def test_shipped_source_names_no_planted_identifier(tmp_path):
    root = serving_code(str(tmp_path))
    shipped, found = 0, {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            shipped += 1
            with open(path, "rb") as f:
                hits = find_needles(f.read(), WHOLE)
            if hits:
                found[os.path.relpath(path, root)] = hits
    assert shipped > 50  # the packages were copied (model, ingest, shards and the core)
    assert found == {}, found
