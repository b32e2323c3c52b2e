"""The study's published test-set AUCs, which every report prints beside ours.

Source: the single-centre study this project re-runs (2,556 echo studies of 1,453 adults, each paired
with a CMR within 30 days; a video CNN on echo clips; held-out test set), as recorded in the
project's design reference. Kept here as data so reports never depend on a file outside the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class PublishedAUC:
    auc: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.auc:.3f} ({self.low:.3f}–{self.high:.3f})"


PUBLISHED: dict[str, PublishedAUC] = {
    "wma": PublishedAUC(auc=0.873, low=0.816, high=0.922),
    "lge": PublishedAUC(auc=0.699, low=0.613, high=0.780),
    "t1": PublishedAUC(auc=0.614, low=0.500, high=0.715),
    "t2": PublishedAUC(auc=0.553, low=0.420, high=0.692),
    "ecv": PublishedAUC(auc=0.564, low=0.455, high=0.691),
}

PUBLISHED_SOURCE = (
    "published single-centre study: 2,556 echo studies (1,453 adults) paired with CMR within "
    "30 days; held-out test set"
)
