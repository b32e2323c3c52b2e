"""docs/configuration.md is checked against the config dataclasses it documents.

Each dataclass below has one table, under a heading that names it in backticks
(``### `data` (`DataConfig`)``). The table's ``key`` (or ``field``) column must list exactly the
dataclass's fields, and its ``default`` column the field's default: the first `code` span of the
cell read as YAML (or a Python literal), ``required`` for a field without one, a `$VARIABLE` for
one computed from the environment, and ``below`` for a nested section. The presets table lists
every train preset.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from echocmr.cluster.local import LocalClusterConfig
from echocmr.cluster.submit import SubmitConfig
from echocmr.config import to_dict
from echocmr.demo import DemoConfig
from echocmr.eval.aggregate import StackerConfig
from echocmr.eval.evaluate import EvaluationConfig
from echocmr.eval.infer import InferConfig
from echocmr.eval.job import EvalConfig
from echocmr.eval.metrics import MetricsConfig
from echocmr.eval.signal import SignalConfig
from echocmr.eval.summary import SummaryConfig
from echocmr.ingest import config as ingest_config
from echocmr.ingest.encode import EncoderConfig
from echocmr.ingest.vendor_table import VendorConfig
from echocmr.ingest.view_table import ViewConfig
from echocmr.model.config import ModelConfig
from echocmr.model.predict import PredictConfig
from echocmr.read.config import AugmentConfig, DataConfig
from echocmr.shards.reshard import ReshardConfig
from echocmr.train import config as train_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

DOCUMENTED = [
    ingest_config.IngestConfig, ingest_config.PreprocessConfig, ingest_config.ReadConfig,
    ingest_config.SectorConfig, EncoderConfig, ingest_config.LabelConfig,
    ingest_config.CutoffRule,
    ingest_config.PairingConfig, ingest_config.SplitConfig, ingest_config.ShardConfig,
    ingest_config.RayConfig, ViewConfig, VendorConfig,
    ReshardConfig,
    train_config.TrainConfig, ModelConfig, DataConfig,
    AugmentConfig, train_config.OptimConfig, train_config.SelectionConfig,
    EvalConfig, InferConfig, EvaluationConfig, StackerConfig, SummaryConfig, MetricsConfig,
    SignalConfig, PredictConfig,
    LocalClusterConfig, SubmitConfig, DemoConfig,
]


def _tables() -> dict[str, list[dict[str, str]]]:
    """``{class name: rows}`` for every table under a heading naming a documented class."""
    names = {cls.__name__ for cls in DOCUMENTED}
    tables: dict[str, list[dict[str, str]]] = {}
    owner, header, rows = None, None, None
    for line in [*DOC.read_text().splitlines(), ""]:
        if line.startswith("#"):
            owner = next((n for n in re.findall(r"`(\w+)`", line) if n in names), None)
        if line.startswith("|") and owner is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if header is None:
                header, rows = cells, []
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells, strict=True)))
            continue
        if header is not None:
            assert owner not in tables, f"{owner} has two tables in {DOC.name}"
            tables[owner] = rows
            header, rows = None, None
    return tables


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _key(row: dict[str, str]) -> str:
    return (row.get("key") or row.get("field") or "").strip("`")


def test_every_config_dataclass_has_one_table_with_exactly_its_fields():
    tables = _tables()
    for cls in DOCUMENTED:
        assert cls.__name__ in tables, f"{cls.__name__} has no table in {DOC.name}"
        documented = [_key(r) for r in tables[cls.__name__]]
        assert len(documented) == len(set(documented)), f"{cls.__name__}: a key listed twice"
        assert set(documented) == set(_fields(cls)), (
            f"{cls.__name__}: documented but not a field: "
            f"{sorted(set(documented) - set(_fields(cls)))}; a field not documented: "
            f"{sorted(set(_fields(cls)) - set(documented))}")


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_documented_defaults_are_the_code_defaults(cls):
    rows = {_key(r): r for r in _tables()[cls.__name__]}
    for name, f in _fields(cls).items():
        cell = rows[name]["default"]
        spans = re.findall(r"`([^`]*)`", cell)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert cell == "required", f"{cls.__name__}.{name} has no default: say 'required'"
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            assert cell.startswith("below"), f"{cls.__name__}.{name}: a section, say 'below'"
            continue
        assert spans, f"{cls.__name__}.{name}: put the default in `code`, got {cell!r}"
        if spans[0].startswith("$"):  # computed from the environment
            assert f.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{name}"
            continue
        expected = to_dict(_Holder(value=default))["value"]
        assert expected in _readings(spans[0]), (
            f"{cls.__name__}.{name}: docs say {spans[0]!r}, the code {expected!r}")


def test_every_train_preset_is_documented():
    rows = DOC.read_text().split("### Presets (`--preset`)", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `([\w-]+)` \|", rows, flags=re.M))
    assert documented == set(train_config.PRESETS)


@dataclasses.dataclass
class _Holder:
    value: object


def _readings(text: str) -> list:
    """What a `code` span may mean: YAML (``null``, ``[a, b]``) or a Python literal (``None``)."""
    out = []
    try:
        out.append(yaml.safe_load(text))
    except yaml.YAMLError:
        pass
    try:
        value = ast.literal_eval(text)
        out.append(list(value) if isinstance(value, tuple) else value)
    except (ValueError, SyntaxError):
        pass
    return out
