"""model.contract and model.checkpoint.save_model: one windowing for training, eval and predict;
one checkpoint layout; ``.idx`` counts through shards.index."""

import numpy as np
import pytest
import torch

from echocmr.model.checkpoint import read_checkpoint, save_model
from echocmr.model.config import ModelConfig
from echocmr.model.contract import (
    InputSpec,
    centre_start,
    frames_to_clip,
    last_start,
    window_clips,
    window_span,
    window_starts,
)
from echocmr.model.network import R2Plus1D
from echocmr.model.store import load_model
from echocmr.shards.format import GREY_ROUND_TRIP
from echocmr.shards.index import IndexEntry, format_index, index_count

SPEC = InputSpec(frames=8, period=2, size=16, fps=30.0, mean=50.0, std=40.0)  # span 15


@pytest.mark.parametrize("n_frames", [1, 5, 15, 16, 40])
def test_centre_window_is_one_rule(n_frames):
    assert window_span(SPEC) == 15
    assert last_start(n_frames, SPEC) == max(n_frames - 15, 0)
    assert window_starts(n_frames, SPEC, mode="centre") == [centre_start(n_frames, SPEC)]
    assert window_starts(n_frames, SPEC)[-1] == last_start(n_frames, SPEC)


@pytest.mark.parametrize("pad_mode", ["constant", "edge"])
def test_eval_windows_equal_predicts_clips_for_the_same_frames(pad_mode):
    """Eval cuts windows from decoded frames, predict from raw ones: for frames that already went
    through the decoder's round trip, every window is the same network input."""
    spec = InputSpec(**{**SPEC.to_dict(), "tasks": SPEC.tasks, "pad_mode": pad_mode,
                        "channels": 3})
    rng = np.random.default_rng(0)
    decoded = GREY_ROUND_TRIP[rng.integers(0, 256, (20, 16, 16), dtype=np.uint8)]
    starts = window_starts(len(decoded), spec, stride=3)
    eval_clips = window_clips(decoded, spec, starts)
    assert eval_clips.shape == (len(starts), 3, 8, 16, 16)
    for w, start in enumerate(starts):
        np.testing.assert_array_equal(eval_clips[w], frames_to_clip(decoded, spec, start=start))
    np.testing.assert_array_equal(  # predict's default window is validation's centred one
        frames_to_clip(decoded, spec), window_clips(decoded, spec, [centre_start(20, spec)])[0])


def test_save_model_writes_the_layout_load_model_reads(tmp_path):
    torch.manual_seed(0)
    model = R2Plus1D(ModelConfig(width=4, layers=(1, 1, 1, 1))).eval()
    save_model(str(tmp_path / "m"), model, SPEC, epoch=2, metrics={"val_mean_auc": 0.6},
               registered={"name": "echo", "version": "1"})
    state = read_checkpoint(str(tmp_path / "m"))
    assert state["epoch"] == 2 and state["registered"] == {"name": "echo", "version": "1"}
    assert state["config"]["model"]["layers"] == [1, 1, 1, 1]  # plain data, no tuples
    loaded, spec = load_model(str(tmp_path / "m"))
    assert spec == SPEC
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match="not echocmr's R2Plus1D"):
        save_model(str(tmp_path / "n"), torch.nn.Linear(2, 2), SPEC)


def test_index_count_reads_the_header_and_refuses_other_files(tmp_path):
    idx = tmp_path / "train-000000.idx"
    idx.write_text(format_index([[IndexEntry("json", 512, 3, "a-1.json")]] * 3))
    assert index_count(str(idx)) == 3
    idx.write_text("not an index\n")
    with pytest.raises(ValueError, match="train-000000.idx is not a DALI wds2idx index"):
        index_count(str(idx))
