"""Compact read-only maps for the worker context: what every worker process gets a copy of.

The views table maps SOP Instance UIDs to views; an archive's table has a row per clip (10^6 -
10^7), and a Python dict of it is ~150 bytes per row in the driver and again in every worker
process (pickled into each). `ViewLookup` holds the same map as two numpy arrays: the UIDs'
128-bit BLAKE2b digests, sorted, and a one-byte view code per row: 17 bytes a row, pickled as two
buffers, looked up by binary search. Two UIDs of one archive share a digest with probability
~n^2 / 2^129 (10^-25 at 10^7 rows); a UID absent from the table is absent from the lookup unless
it collides likewise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

_DIGEST = 16


def _digest(uid: str) -> bytes:
    return hashlib.blake2b(uid.encode("utf-8", "surrogateescape"), digest_size=_DIGEST).digest()


class ViewLookup:
    """SOP Instance UID -> view, read-only (`dict.get` and ``len`` of the table it was made of)."""

    def __init__(self, views: Mapping[str, str]) -> None:
        self.names: list[str] = sorted(set(views.values()))
        if len(self.names) > 255:
            raise ValueError("more than 255 distinct views")
        code = {v: i for i, v in enumerate(self.names)}
        n = len(views)
        digests = np.empty(n, dtype=f"S{_DIGEST}")
        codes = np.empty(n, dtype=np.uint8)
        for i, (uid, view) in enumerate(views.items()):
            digests[i] = _digest(uid)
            codes[i] = code[view]
        order = np.argsort(digests, kind="stable")
        self._digests, self._codes = digests[order], codes[order]

    def __len__(self) -> int:
        return len(self._digests)

    def get(self, uid: str | None, default: str | None = None) -> str | None:
        if uid is None or not len(self._digests):
            return default
        d = np.array(_digest(uid), dtype=f"S{_DIGEST}")
        i = int(np.searchsorted(self._digests, d))
        if i < len(self._digests) and self._digests[i] == d:
            return self.names[self._codes[i]]
        return default

    @property
    def nbytes(self) -> int:
        return self._digests.nbytes + self._codes.nbytes
