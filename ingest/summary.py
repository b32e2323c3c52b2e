"""What an ingest run did (`IngestSummary`), and how the terminal shows it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from echocmr.ingest.views import ViewMix
from echocmr.shards.format import INGEST_REPORT_FILE, SPLITS
from echocmr.shards.stats import vendor_lines


@dataclass
class IngestSummary:
    """What a run did; `format` renders it for the terminal."""

    out: str
    files: int
    kept: int
    rejected: dict[str, int]  # reason -> files
    clips_per_split: dict[str, int]
    unpaired_studies: int
    shards: list[str] = field(default_factory=list)
    resumed_files: int = 0  # results taken from the work cache of an earlier, interrupted run
    key_source: str = "demo"
    seconds: float = 0.0
    text_masked_clips: int = 0  # kept clips in which the text detector found (and masked) text
    text_boxes: int = 0  # text boxes masked in them
    text_detector: str = "mask"  # "mask", "reject" or "off"
    label_warnings: dict[str, int] = field(default_factory=dict)  # what the label table lacked
    label_rules: dict[str, int] = field(default_factory=dict)  # cut-off -> table rows it labelled
    label_rules_fingerprint: str = ""  # `ingest.cutoffs.RuleSet.fingerprint` (stats.json)
    label_rules_before: str | None = None  # the fingerprint the set replaced had, when different
    unknown_views: int = 0  # views table rows that named no known view (views.unknown: unknown)
    views: ViewMix = field(default_factory=ViewMix)  # kept clips per view (`ingest.views`)

    def format(self) -> str:
        lines = [f"ingest: {self.files} files -> {self.kept} kept, "
                 f"{self.files - self.kept} rejected ({self.seconds:.1f} s)"]
        for reason, n in sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  rejected {reason:<22} {n}")
        lines.append("  clips per split: " + ", ".join(
            f"{s} {self.clips_per_split.get(s, 0)}" for s in SPLITS))
        lines.append(f"  echo studies without a CMR within the window: {self.unpaired_studies}")
        lines.append(f"  {self.views.describe()}")
        vendors = self.views.vendor_mix()
        if vendors:
            lines.append(f"  views per vendor ({len(vendors)} vendor(s); stats.json view_mix):")
            lines += [f"    {line}" for line in vendor_lines(vendors)]
        if self.text_detector == "off":
            lines.append("  text detector: off")
        else:
            lines.append(f"  text detector ({self.text_detector}): text masked in "
                         f"{self.text_masked_clips} kept clip(s), {self.text_boxes} box(es); "
                         f"rejected burned_in_text {self.rejected.get('burned_in_text', 0)}")
        if self.unknown_views:
            lines.append(f"  views table: {self.unknown_views} row(s) named no known view: "
                         "their clips are unknown (views.unknown)")
        for what, n in sorted(self.label_warnings.items()):
            lines.append(f"  label table: {what}: {n}")
        for rule, n in self.label_rules.items():
            lines.append(f"  label cut-off {rule}: {n} row(s)")
        if self.label_rules_fingerprint:
            lines.append(f"  label cut-offs: fingerprint {self.label_rules_fingerprint} "
                         "(stats.json label_rules)")
        if self.label_rules_before:
            lines.append(f"  NOTE: the set this run replaced had this site's labels from other "
                         f"cut-offs (fingerprint {self.label_rules_before})")
        if self.resumed_files:
            lines.append(f"  resumed: {self.resumed_files} files from the work cache")
        lines.append(f"  {len(self.shards)} shards in {self.out}; report: "
                     f"{os.path.join(self.out, INGEST_REPORT_FILE)} (site-local, never ship it)")
        if self.key_source == "demo":
            lines.append("  WARNING: public demo split key used (--allow-public-demo-key): "
                         "patient hashes are reversible; set ECHOCMR_SPLIT_KEY for real data")
        elif self.key_source.startswith("demo"):
            lines.append("  public demo split key used: the input is a synthetic cohort")
        return "\n".join(lines)
