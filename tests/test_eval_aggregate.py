"""Clip -> video -> study aggregation, and the per-view stacker fitted on val."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from echocmr.eval.aggregate import (
    STUDY_COLUMNS,
    StackerConfig,
    ViewStacker,
    aggregate,
    clips_to_videos,
    videos_to_studies,
    views_to_studies,
)

from _eval_fixtures import clip_table


def test_mean_aggregation_matches_groupby_reference():
    clips = clip_table(30, seed=1)
    videos = clips_to_videos(clips)
    studies = videos_to_studies(videos)
    assert list(studies.columns) == STUDY_COLUMNS
    assert len(videos) == clips["key"].nunique() and len(studies) == clips["study_hash"].nunique()
    # Reference: each video is the mean of its clips; each study the mean of its videos.
    ref_video = clips.groupby("key")["p_wma"].mean()
    ref_study = ref_video.groupby(clips.groupby("key")["study_hash"].first()).mean()
    got = studies.set_index("study_hash")["p_wma"]
    np.testing.assert_allclose(got.loc[ref_study.index], ref_study, atol=1e-12)
    assert (videos.set_index("key")["n_clips"] == clips.groupby("key").size()).all()


def test_video_count_not_clip_count_weights_a_study():
    base = {"study_hash": "s", "patient_hash": "p", "site": "a", "split": "test", "view": "A4C",
            **{f"y_{t}": 1.0 for t in ("wma", "lge", "t1", "t2", "ecv")}}
    rows = [{**base, "key": "long", **{f"p_{t}": 0.9 for t in ("wma", "lge", "t1", "t2", "ecv")}}
            for _ in range(9)]
    rows.append({**base, "key": "short", **{f"p_{t}": 0.1 for t in ("wma", "lge", "t1", "t2", "ecv")}})
    studies = videos_to_studies(clips_to_videos(pd.DataFrame(rows)))
    assert studies["p_wma"].iloc[0] == pytest.approx(0.5)


def test_unknown_labels_stay_unknown_and_conflicts_become_unknown():
    clips = clip_table(10, seed=2)
    clips.loc[clips["study_hash"] == "st0000", "y_t1"] = np.nan
    # Two videos of one study that disagree on T2: the study's T2 is unknown, not a guess.
    extra = clips[clips["study_hash"] == "st0001"].iloc[[0]].copy()
    extra["key"], extra["y_t2"] = "site_a-extra", 1.0 - extra["y_t2"]
    studies = videos_to_studies(clips_to_videos(pd.concat([clips, extra]))).set_index("study_hash")
    assert np.isnan(studies.loc["st0000", "y_t1"])
    assert np.isnan(studies.loc["st0001", "y_t2"])
    assert not studies.drop(index=["st0000"])["y_t1"].isna().any()
    assert not studies.drop(index=["st0001"])["y_t2"].isna().any()


def test_views_to_studies_uses_only_that_views_videos():
    clips = clip_table(30, seed=3)
    per_view = views_to_studies(clips_to_videos(clips))
    a4c = clips[clips["view"] == "A4C"]
    ref = a4c.groupby("key")["p_wma"].mean().groupby(a4c.groupby("key")["study_hash"].first()).mean()
    got = per_view[per_view["view"] == "A4C"].set_index("study_hash")["p_wma"]
    np.testing.assert_allclose(got.loc[ref.index], ref, atol=1e-12)


def test_stacker_fit_on_val_learns_the_informative_view():
    val = clip_table(160, seed=10, split="val")
    test = clip_table(160, seed=11, split="test")
    videos, studies, stacker = aggregate(test, method="stacker", val_clips=val)
    assert list(studies.columns) == STUDY_COLUMNS
    assert stacker.views == ["A2C", "A4C", "PLAX"]
    coef = stacker.describe()["coefficients"]["wma"]
    assert coef["logit_A4C"] > 0.5 > abs(coef["logit_PLAX"])  # only A4C carries WMA here
    mean_auc = roc_auc_score(videos_to_studies(videos)["y_wma"], videos_to_studies(videos)["p_wma"])
    stack_auc = roc_auc_score(studies["y_wma"], studies["p_wma"])
    assert stack_auc > mean_auc  # weighting A4C beats diluting it with uninformative views


def test_stacker_falls_back_to_mean_without_enough_val_labels():
    val = clip_table(30, seed=4, split="val")
    val["y_ecv"] = np.nan
    stacker = ViewStacker(config=StackerConfig(min_view_studies=1)).fit(clips_to_videos(val))
    assert "ecv" in stacker.fallbacks and "ecv" not in stacker.models
    test_videos = clips_to_videos(clip_table(20, seed=5))
    got = stacker.predict(test_videos).set_index("study_hash")["p_ecv"]
    ref = videos_to_studies(test_videos).set_index("study_hash")["p_ecv"]
    np.testing.assert_allclose(got, ref.loc[got.index])


def test_stacker_needs_val_and_bad_method_is_refused():
    with pytest.raises(ValueError, match="val"):
        aggregate(clip_table(5), method="stacker")
    with pytest.raises(ValueError, match="mean"):
        aggregate(clip_table(5), method="median")
