"""Which view a kept clip is: the views table, a view classifier, or neither.

Ingest gets a view classifier as a callable object (``frames uint8[T, H, W] -> call`` with
``.view``, ``.confidence`` and ``.best``; `echocmr.model.views.ViewClassifier` is one), built by
the command line (``--view-model``) and carried to pool and Ray workers in the worker context:
ingest's library code never imports the model package. `label_view` decides one clip:

- a views table row wins (``view_source: table``); the classifier still runs when there is one,
  and its confidence is stored, so a disagreement (the table's view class against a confident
  model call) is counted (`ViewMix.disagreements`);
- else the classifier's call (``view_source: model``): a target view, ``other``, or ``unknown``
  when its calibrated confidence is below its threshold;
- else ``unknown`` (no source).

`ViewMix` counts the views of the kept clips, in all and per vendor (ingest runs one site; the
ingest summary prints it, and ``shards stats`` prints the same from a manifest, per site and
vendor).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echocmr.shards.format import (
    VENDOR_VOCABULARY,
    VIEW_UNKNOWN,
    VIEW_VOCABULARY,
    vendor_class,
    view_class,
)

ViewClassifierFn = Callable[[np.ndarray], Any]
# A kept clip's report ``detail`` when its views-table view and the view model disagree.
VIEW_DISAGREEMENT = "view disagreement"


@dataclass(frozen=True)
class ViewLabel:
    view: str
    source: str | None  # "table", "model" or None (nothing said)
    confidence: float | None  # the classifier's confidence in its own call
    model_view: str | None  # the classifier's call (None without a classifier)


def label_view(table_view: str | None, classifier: ViewClassifierFn | None,
               frames_THW: np.ndarray) -> ViewLabel:
    """One clip's view (module docstring)."""
    call = classifier(frames_THW) if classifier is not None else None
    model_view = None if call is None else str(call.view)
    confidence = None if call is None else round(float(call.confidence), 4)
    if table_view:
        return ViewLabel(view=table_view, source="table", confidence=confidence,
                         model_view=model_view)
    if call is not None:
        return ViewLabel(view=model_view, source="model", confidence=confidence,
                         model_view=model_view)
    return ViewLabel(view=VIEW_UNKNOWN, source=None, confidence=None, model_view=None)


def disagrees(label: ViewLabel) -> bool:
    """A table view whose class differs from a confident classifier call."""
    return (label.source == "table" and label.model_view not in (None, VIEW_UNKNOWN)
            and view_class(label.view) != label.model_view)


@dataclass
class ViewMix:
    """Kept clips per view class, the sources of their views, and table-model disagreements."""

    views: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    disagreements: int = 0
    checked: int = 0  # table views the classifier also saw
    by_vendor: dict[str, Counter] = field(default_factory=dict)  # vendor -> view class -> clips

    def add(self, meta: dict, *, disagreement: bool = False) -> None:
        """Count one kept clip (its ``KEY.json`` dict); ``disagreement``: `disagrees` held."""
        self.views[view_class(meta.get("view"))] += 1
        self.by_vendor.setdefault(vendor_class(meta.get("vendor")), Counter())[
            view_class(meta.get("view"))] += 1
        self.sources[meta.get("view_source") or "none"] += 1
        if meta.get("view_source") == "table" and meta.get("view_confidence") is not None:
            self.checked += 1
            self.disagreements += bool(disagreement)

    @classmethod
    def of(cls, results) -> ViewMix:
        """The mix of the kept results (`ingest.workcache.FileResult`, their typed meta)."""
        mix = cls()
        for r in results:
            if r.status == "kept" and r.meta is not None:
                meta = r.meta if isinstance(r.meta, dict) else r.meta.to_dict()
                mix.add(meta, disagreement=bool(r.detail
                                                and r.detail.startswith(VIEW_DISAGREEMENT)))
        return mix

    def vendor_mix(self) -> dict[str, dict[str, int]]:
        """Vendor -> view class -> clips, in vocabulary order (stats.json's ``view_mix`` of the
        site, `shards.stats.view_mix_by_vendor`)."""
        return {vendor: {v: self.by_vendor[vendor][v] for v in VIEW_VOCABULARY
                         if self.by_vendor[vendor][v]}
                for vendor in VENDOR_VOCABULARY if vendor in self.by_vendor}

    def describe(self) -> str:
        total = sum(self.views.values())
        if not total:
            return "views: no kept clips"
        mix = ", ".join(f"{v} {n} ({100 * n / total:.0f} %)" for v, n in
                        sorted(self.views.items()))
        text = f"views: {mix}; from " + ", ".join(f"{s} {n}" for s, n in
                                                  sorted(self.sources.items()))
        if self.checked:
            text += (f"; the view model disagrees with the views table on "
                     f"{self.disagreements} of {self.checked} clips")
        return text
