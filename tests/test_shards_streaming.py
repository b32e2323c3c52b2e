"""The streaming pieces behind verify, stats and reshard give what the whole-array computations
gave (issue 26): `ExactSum` is `math.fsum` to the bit, `exact_medians` is `numpy.median` to the
bit (float64 and float32, odd and even counts, negative values, groups left empty), and a
`Partitions` puts every row of one value in one part, whatever the batches."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from echocmr.shards.streaming import ExactSum, Partitions, exact_medians


@pytest.mark.parametrize("seed", range(6))
def test_exact_sum_is_fsum_whatever_the_batches(seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(4000) * 10.0 ** rng.integers(-300, 290, 4000)
    values[:5] = [1e308, -1e308, 5e-324, 1.0, 1e-16]  # cancellation and a subnormal
    total = ExactSum()
    for part in np.array_split(values, 7):
        total.add(part)
    assert total.value() == math.fsum(values)


def test_exact_sum_of_nothing_and_of_a_nan():
    assert ExactSum().value() == 0.0
    total = ExactSum()
    total.add([1.0, float("nan")])
    assert math.isnan(total.value())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_exact_medians_are_numpys(dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    groups = rng.integers(-1, 4, n)  # group 4 of 5 stays empty; -1 is in no group
    values = (rng.standard_normal(n) * 1000).astype(dtype)
    values[::7] = values[0]  # ties

    def batches():
        for i in range(0, n, 333):
            yield groups[i:i + 333], values[i:i + 333].astype(np.float64)

    got = exact_medians(batches, 5, dtype)
    for g in range(5):
        mine = values[groups == g]
        assert got[g] == (float(np.median(mine)) if len(mine) else None), g


def test_a_partition_holds_every_row_of_its_values():
    rng = np.random.default_rng(0)
    keys = [f"{v:016x}" for v in rng.integers(0, 50, 3000)]
    with Partitions(3000, "key", part_rows=400) as parts:
        for start in range(0, 3000, 512):
            parts.add(pa.table({"key": keys[start:start + 512],
                                "row": list(range(start, min(start + 512, 3000)))}))
        seen: dict[str, int] = {}
        rows = 0
        for part in parts:
            counted = part.group_by("key").aggregate([("row", "count")])
            for key, n in zip(counted.column("key").to_pylist(),
                              counted.column("row_count").to_pylist(), strict=True):
                assert key not in seen  # one value, one part
                seen[key] = n
            rows += part.num_rows
    assert parts.parts == 8 and rows == 3000
    assert seen == {k: keys.count(k) for k in set(keys)}
