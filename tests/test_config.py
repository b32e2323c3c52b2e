"""echocmr.config: the one loader behind ingest, train and eval, and ``--print-config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

import echocmr.cli as echocmr_cli
from echocmr import config as loader
from echocmr.config import ConfigError, Layer


@dataclass(kw_only=True)
class Inner:
    mode: Literal["fast", "exact"] = "fast"
    size: int = 4
    scale: float = 1.0
    names: tuple[str, ...] = ("a",)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"inner.size must be >= 1, got {self.size}")


@dataclass(kw_only=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=lambda: {"x": 1.0, "y": 1.0})
    limit: int | None = None
    flag: bool = False


def test_layers_merge_deeply_and_mappings_are_replaced_whole():
    config = loader.load(
        Outer,
        Layer({"inner": {"size": 8, "mode": "exact"}, "weights": {"x": 2.0}}, "preset 'p'"),
        Layer({"inner": {"scale": 3}, "limit": 5}, "config file f.yaml"),
    )
    assert config.inner == Inner(mode="exact", size=8, scale=3.0)  # sections merge key by key
    assert config.weights == {"x": 2.0}  # a mapping-typed field is one value
    assert config.limit == 5 and isinstance(config.inner.scale, float)
    assert loader.load(Outer, loader.to_dict(config)) == config  # round trip
    assert loader.flat(config)["inner.names"] == "['a']" and loader.flat(config)["weights.x"] == "2.0"


def test_unknown_key_names_the_key_the_file_and_the_closest_match(tmp_path):
    path = tmp_path / "outer.yaml"
    path.write_text("inner:\n  sise: 3\n")
    with pytest.raises(ConfigError) as err:
        loader.load(Outer, loader.file_layer(path))
    message = str(err.value)
    assert message.startswith(f"config file {path}: unknown key 'inner.sise'; did you mean "
                              "'inner.size'?")
    assert "mode, names, scale, size" in message  # what is allowed there
    assert (err.value.key, err.value.source) == ("inner.sise", f"config file {path}")
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


def test_literal_and_type_errors_name_the_layer_that_set_the_value():
    layers = [Layer({"inner": {"size": 2}}, "preset 'p'"), Layer({"inner": {"mode": "slow"}}, "flags")]
    with pytest.raises(ConfigError, match=r"^flags: inner.mode must be one of 'fast', 'exact'; "
                                          r"got 'slow'$"):
        loader.load(Outer, *layers)
    with pytest.raises(ConfigError, match="limit must be an integer or null, got 'x'"):
        loader.load(Outer, {"limit": "x"})
    with pytest.raises(ConfigError, match="flag must be true or false, got 1"):
        loader.load(Outer, {"flag": 1})
    # a range check in __post_init__ is reported with the layer that set the key it names
    with pytest.raises(ConfigError, match=r"^config file c.yaml: inner.size must be >= 1"):
        loader.load(Outer, Layer({"inner": {"mode": "exact"}}, "preset 'p'"),
                    Layer({"inner": {"size": 0}}, "config file c.yaml"))


def test_train_config_literals_are_checked_in_python_too():
    from echocmr.read.config import DataConfig
    from echocmr.train.config import OptimConfig

    with pytest.raises(ConfigError, match="data.pad_mode must be one of 'constant', 'edge'"):
        DataConfig(pad_mode="reflect")
    with pytest.raises(ConfigError, match="optim.name must be one of 'adamw', 'sgd'"):
        OptimConfig(name="adam")


def test_eval_config_from_a_file_and_flags(tmp_path):
    from echocmr.eval.job import EvalConfig, load_config

    path = tmp_path / "eval.yaml"
    path.write_text("split: val\ninfer: {clips: centre, batch_size: 4}\n"
                    "evaluation: {summary: {metrics: {n_bootstrap: 1000}}}\n")
    config = load_config(path, overrides={"infer": {"batch_size": 8}})
    assert isinstance(config, EvalConfig) and config.split == "val"
    assert (config.infer.clips, config.infer.batch_size) == ("centre", 8)
    assert config.evaluation.summary.metrics.n_bootstrap == 1000
    assert config.evaluation.summary.signal.n_permutations == 2000  # default kept
    path.write_text("infer: {clips: middle}\n")
    with pytest.raises(ConfigError, match=f"config file {path}: infer.clips must be one of "
                                          "'all', 'centre'; got 'middle'"):
        load_config(path)


# -- --print-config through the real command line -----------------------------------------------


def _printed(capsys, argv: list[str]) -> dict:
    assert echocmr_cli.main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_train_print_config(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("data: {batch_size: 4}\n")
    printed = _printed(capsys, ["train", "--preset", "cpu-small", "--config", str(path),
                                "--epochs", "2", "--print-config"])  # no --shards needed
    from echocmr.train.config import TrainConfig, load_config

    assert printed["epochs"] == 2 and printed["data"]["batch_size"] == 4
    assert printed["model"]["width"] == 16  # from the preset
    assert TrainConfig.from_dict(printed) == load_config(str(path), preset="cpu-small",
                                                         overrides={"epochs": 2})


def test_ingest_print_config(tmp_path, capsys):
    path = tmp_path / "i.yaml"
    path.write_text("site: hosp_a\npreprocess: {size: 64}\n")
    printed = _printed(capsys, ["ingest", "--config", str(path), "--workers", "3",
                                "--print-config"])
    assert (printed["site"], printed["workers"], printed["preprocess"]["size"]) == ("hosp_a", 3, 64)
    assert printed["preprocess"]["target_fps"] == 30.0


def test_eval_print_config(tmp_path, capsys):
    path = tmp_path / "e.yaml"
    path.write_text("evaluation: {aggregation: stacker}\n")
    printed = _printed(capsys, ["eval", "--config", str(path), "--seed", "7", "--no-track",
                                "--print-config"])
    assert printed["evaluation"]["aggregation"] == "stacker" and printed["track"] is False
    summary = printed["evaluation"]["summary"]
    assert summary["metrics"]["seed"] == 7 and summary["signal"]["seed"] == 7


def test_bad_config_and_missing_inputs_exit_2(tmp_path, capsys):
    path = tmp_path / "e.yaml"
    path.write_text("infer: {clip: all}\n")
    assert echocmr_cli.main(["eval", "--config", str(path), "--print-config"]) == 2
    assert "unknown key 'infer.clip'; did you mean 'infer.clips'?" in capsys.readouterr().err
    assert echocmr_cli.main(["eval", "--out", str(tmp_path / "o")]) == 2
    assert "--shards, --model required" in capsys.readouterr().err
    assert echocmr_cli.main(["train"]) == 2
    assert "--shards required" in capsys.readouterr().err


# -- test hooks are not configuration -------------------------------------------------------


def test_a_fault_is_not_part_of_the_user_config():
    """Tests inject worker crashes through `run_training(step_hook=...)`; nothing in the user's
    config or environment can."""
    import inspect

    import echocmr.train.engine as engine
    from echocmr.train.config import TrainConfig

    with pytest.raises(ConfigError, match="unknown key 'fault'"):
        TrainConfig.from_dict({"fault": {"rank": 1, "step": 5, "marker": "m"}})
    assert "environ" not in inspect.getsource(engine)
