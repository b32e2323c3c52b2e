"""The stored clip size and the GPU decoder: ingest's setting, and the refusal of a ``mixed`` run on
a set whose clips NVDEC cannot decode, through every entry point, without a GPU.

The refusals happen before anything needs CUDA (the driver checks ``stats.json`` before Ray or
MLflow start; a loader checks when it is built), so they are tested here on CPU. What NVDEC
really does with 112x112 VP9 is measured by ``bench/gpu_check.py`` on a device.
"""

from __future__ import annotations

import pytest
import torch

import echocmr.cli as echocmr_cli
from echocmr.config import ConfigError
from echocmr.model.contract import InputSpec
from echocmr.read.config import DataConfig
from echocmr.read.loader import ClipLoader
from echocmr.read.pipeline import resolve_decoder
from echocmr.shards.format import (
    DEFAULT_CLIP_SIZE,
    NVDEC_MIN_SIZE,
    ClipFormat,
    GPUDecodeError,
    check_gpu_decodable,
)
from echocmr.shards.reader import read_stats
from echocmr.train.config import TrainConfig

from _shards_fixtures import make_shard_set
from _train_fixtures import tiny_config


@pytest.fixture(scope="module")
def old_set(tmp_path_factory):
    """A format-2 set at the old 112x112 (what every set written before the setting was)."""
    return make_shard_set(str(tmp_path_factory.mktemp("s112")), n_patients=6, clips_per_patient=1,
                          n_frames=8, size=112, samples_per_shard=4)


def test_the_default_clip_size_is_one_nvdec_takes():
    from echocmr.ingest.config import IngestConfig

    assert IngestConfig().preprocess.size == DEFAULT_CLIP_SIZE == 144
    assert DEFAULT_CLIP_SIZE >= max(NVDEC_MIN_SIZE.values()) and DEFAULT_CLIP_SIZE % 16 == 0
    assert ClipFormat(height=144, width=144, fps=30.0).gpu_decodable
    assert ClipFormat(height=128, width=128, fps=30.0).gpu_decodable
    old = ClipFormat(height=112, width=112, fps=30.0)
    assert not old.gpu_decodable and "112x112" in old.gpu_decode_problem()
    assert "128x128" in old.gpu_decode_problem()
    assert not ClipFormat(height=144, width=144, fps=30.0, codec="mjpeg").gpu_decodable


def test_the_refusal_names_the_size_the_minimum_and_both_fixes():
    with pytest.raises(GPUDecodeError) as info:
        check_gpu_decodable(ClipFormat(height=112, width=112, fps=30.0), "shard set X",
                            cpu_fix="do the CPU thing")
    message = str(info.value)
    for part in ("shard set X", "112x112", "128x128", "--clip-size 144", "do the CPU thing"):
        assert part in message
    check_gpu_decodable(ClipFormat(height=144, width=144, fps=30.0), "ok", cpu_fix="")


def test_decoder_setting():
    assert resolve_decoder("auto", gpu=True) == "mixed"
    assert resolve_decoder("auto", gpu=False) == "cpu"
    assert resolve_decoder("cpu", gpu=True) == "cpu"
    with pytest.raises(ValueError, match="mixed decodes on the GPU"):
        resolve_decoder("mixed", gpu=False)
    assert DataConfig().decoder == "auto"
    with pytest.raises(ConfigError, match="data.decoder must be one of"):
        DataConfig(decoder="nvdec")
    with pytest.raises(ConfigError, match="needs gpu: true"):
        TrainConfig.from_dict({"data": {"decoder": "mixed"}})
    assert TrainConfig.from_dict({"gpu": True, "data": {"decoder": "cpu"}}).data.decoder == "cpu"


def test_a_mixed_loader_refuses_the_set_when_built(old_set):
    stats = read_stats(old_set)
    config = DataConfig(frames=4, size=32, batch_size=2)
    spec = InputSpec.build(config, stats)
    with pytest.raises(GPUDecodeError, match="data.decoder: cpu"):  # no CUDA is touched
        ClipLoader(old_set, "train", config, spec=spec, train=True, stats=stats, device="cuda")
    cpu = ClipLoader(old_set, "train", config, spec=spec, train=True, stats=stats)
    assert cpu.decoder == "cpu" and next(cpu.epoch(0)).clips.shape == (2, 1, 4, 32, 32)


def _no_run_starts(monkeypatch):
    """Ray and MLflow raise if the driver gets as far as starting them."""
    import ray

    import echocmr.train.tracker as tracking

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started("the driver went past the check")

    monkeypatch.setattr(ray, "init", started)
    monkeypatch.setattr(tracking, "open_run", started)
    return Started


def test_run_training_refuses_before_any_worker_or_run(old_set, monkeypatch, tmp_path):
    from echocmr.train.loop import run_training

    started = _no_run_starts(monkeypatch)
    gpu = TrainConfig.from_dict(tiny_config(gpu=True, storage=str(tmp_path / "runs")))
    with pytest.raises(GPUDecodeError) as info:
        run_training(gpu, old_set, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert "112x112" in str(info.value) and "--clip-size 144" in str(info.value)
    # data.decoder: cpu on a GPU run passes the check (and gets as far as opening the run)
    cpu_decode = TrainConfig.from_dict(tiny_config(gpu=True, storage=str(tmp_path / "runs"),
                                                   data={**tiny_config()["data"],
                                                         "decoder": "cpu"}))
    with pytest.raises(started):
        run_training(cpu_decode, old_set, tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_train_and_eval_clis_refuse_with_the_message(old_set, monkeypatch, capsys, tmp_path):
    _no_run_starts(monkeypatch)
    assert echocmr_cli.main(["train", "--shards", old_set, "--gpu",
                             "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "112x112" in err and "128x128" in err and "--clip-size 144" in err
    assert "data.decoder: cpu" in err
    assert echocmr_cli.main(["eval", "--shards", old_set, "--model", str(tmp_path / "none"),
                             "--out", str(tmp_path / "e"), "--gpu", "--no-track"]) == 1
    err = capsys.readouterr().err
    assert "112x112" in err and "without --gpu" in err


def test_ingest_clip_size_flag(tmp_path, monkeypatch, capsys):
    import echocmr.ingest.job as job

    seen = {}

    def fake_ingest(dicom, labels, out, *, config, views_path, progress, address, **hooks):
        assert address is None  # no --address: the local pool, as before
        seen["size"] = config.preprocess.size
        raise ValueError("stop here")

    monkeypatch.setattr(job, "run_ingest", fake_ingest)
    argv = ["ingest", "--dicom", str(tmp_path), "--labels", str(tmp_path / "l.csv"),
            "--out", str(tmp_path / "o")]
    assert echocmr_cli.main(argv) == 2 and seen == {"size": DEFAULT_CLIP_SIZE}
    assert echocmr_cli.main([*argv, "--clip-size", "112"]) == 2 and seen == {"size": 112}
    capsys.readouterr()
    seen.clear()
    assert echocmr_cli.main([*argv, "--clip-size", "15"]) == 2 and not seen
    assert "preprocess.size must be even" in capsys.readouterr().err


def test_an_old_set_still_trains_on_cpu(old_set):
    """Format 2 at 112 is still a valid set: the CPU path reads it and resizes to data.size."""
    stats = read_stats(old_set)
    config = DataConfig(frames=4, size=48, batch_size=3)
    spec = InputSpec.build(config, stats)
    assert spec.clip_size == 112
    batch = next(ClipLoader(old_set, "train", config, spec=spec, train=False, stats=stats,
                            device=torch.device("cpu")).epoch(0))
    assert batch.clips.shape == (3, 1, 4, 48, 48) and batch.n_valid == int(batch.valid.sum())
