"""train.config: YAML loading, strict keys, presets, precedence, and the CLI's use of them."""

import argparse

import pytest

from echocmr.train.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    dump_yaml,
    flat_params,
    load_config,
)


def test_defaults_are_the_paper_clip_and_torchvision_model():
    config = TrainConfig()
    assert (config.data.frames, config.data.period, config.data.size) == (32, 2, 112)
    assert (config.model.width, config.model.layers) == (64, (2, 2, 2, 2))
    assert config.task_weights == {t: 1.0 for t in ("wma", "lge", "t1", "t2", "ecv")}


def test_a_run_keeps_a_few_checkpoints_by_default():
    assert TrainConfig().keep_checkpoints == 3  # the best by val score plus the latest stay
    assert TrainConfig(keep_checkpoints=None).keep_checkpoints is None  # every epoch
    with pytest.raises(ConfigError, match="the best is always kept"):
        TrainConfig(keep_checkpoints=0)


def test_yaml_nested_keys_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nmodel: {width: 8}\ndata:\n  frames: 8\n  augment: {pad: 2}\n"
                    "task_weights: {wma: 2.0}\n")
    config = load_config(str(path), preset="cpu-small", overrides={"epochs": 9})
    assert config.epochs == 9  # flag beats file
    assert config.model.width == 8  # file beats preset
    assert config.data.size == PRESETS["cpu-small"]["data"]["size"]  # preset kept where not set
    assert config.data.frames == 8 and config.data.augment.pad == 2
    assert config.task_weights["wma"] == 2.0 and config.task_weights["lge"] == 1.0


def test_round_trip_through_dict_and_yaml(tmp_path):
    config = load_config(preset="cpu-small")
    assert TrainConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(config))
    assert load_config(str(path)) == config
    params = flat_params(config)
    assert params["data.frames"] == "16" and params["model.layers"] == "[2, 2, 2, 2]"


@pytest.mark.parametrize("text, needle", [
    ("data: {frmes: 8}\n", "unknown key 'data.frmes'; did you mean 'data.frames'?"),
    ("epochz: 3\n", "unknown key 'epochz'"),
    ("data: {frames: eight}\n", "data.frames must be an integer"),
    ("gpu: 1\n", "gpu must be true or false"),
    ("model: {layers: [2, 2]}\n", "model.layers must be four counts"),
    ("task_weights: {xyz: 1}\n", "unknown tasks ['xyz']"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_bad_config_says_what_is_wrong(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert needle in str(err.value)
    assert f"config file {path}" in str(err.value)  # the error names the file


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="presets are"):
        load_config(preset="huge")
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_cli_flags_override_and_bad_config_exits_2(tmp_path, capsys):
    from echocmr.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--shards", "x", "--workers", "2", "--epochs", "3",
                              "--init", "w.pt", "--run-name", "r"])
    assert cli.overrides_from_args(args) == {"workers": 2, "epochs": 3, "run_name": "r",
                                             "model": {"init": "w.pt"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {frmes: 8}\n")
    args = parser.parse_args(["train", "--shards", "x", "--config", str(bad)])
    assert args.func(args) == 2
    assert "data.frmes" in capsys.readouterr().err
