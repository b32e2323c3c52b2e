"""Configuration of the ingest job: one small ``kw_only`` dataclass per component.

Every option has a documented default (``docs/configuration.md`` lists them all), so
``echocmr ingest`` runs without a config file. A YAML file given with ``--config FILE`` overrides
any subset, nested the same way as the dataclasses, and the flags (``--site``, ``--workers``)
override the file::

    site: hospital_a
    preprocess:
      size: 144
      target_fps: 30
      read: {min_frames: 16, doppler_chroma_threshold: 40}
    labels:
      t1_cutoff_ms: {1.5: 1050, 3.0: 1250}
    encoder: {crf: 20}

Loading is `echocmr.config`'s, as for every command: layers merge deeply, unknown keys are errors
naming the closest key and the file (a typo must not silently fall back to a default), and so are
values of the wrong type.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from echocmr import config as loader
from echocmr.config import ConfigError, check_choices, to_dict
from echocmr.ingest.cutoffs import check_rules
from echocmr.ingest.encode import EncoderConfig
from echocmr.ingest.vendor_table import VendorConfig
from echocmr.ingest.view_table import ViewConfig
from echocmr.shards.format import DEFAULT_CLIP_SIZE, SPLITS, TASKS, validate_site

__all__ = ["CutoffRule", "IngestConfig", "LabelConfig", "PairingConfig", "PreprocessConfig",
           "RayConfig", "ReadConfig", "SectorConfig", "ShardConfig", "SplitConfig",
           "TextDetectorConfig", "VendorConfig",
           "load_config", "to_dict"]


@dataclass(kw_only=True)
class ReadConfig:
    """What counts as an echo cine loop (`ingest.dicom_io`)."""

    min_frames: int = 16  # fewer source frames: rejected `too_few_frames` (1 frame: `single_frame`)
    modalities: tuple[str, ...] = ("US",)  # other Modality values: rejected `other_modality`
    # Colour Doppler: a sector pixel is "coloured" when its chroma magnitude
    # sqrt((Cb-128)^2 + (Cr-128)^2) on the 0-255 scale exceeds this in any sampled frame...
    doppler_chroma_threshold: float = 40.0
    # ...and the clip is rejected `colour_doppler` when that holds for this fraction of the sector.
    doppler_min_fraction: float = 0.01
    # 8-bit JPEG: frames (evenly spaced) decoded a second time, strictly, by libjpeg to catch
    # damaged entropy-coded data the fast decoder turns into garbage; 0: no strict decode.
    strict_jpeg_check_frames: int = 32
    # Pixel data a file may declare (rows x columns x frames x samples x bits allocated / 8), in
    # MiB: more is `bad_header`, refused before any of it is inflated or decoded
    # (`ingest.pixel_budget`); it bounds the memory one file can take.
    max_pixel_mb: float = 1024.0

    def __post_init__(self) -> None:
        if not self.max_pixel_mb > 0:
            raise ConfigError("preprocess.read.max_pixel_mb must be > 0, got "
                              f"{self.max_pixel_mb}")
        if self.strict_jpeg_check_frames < 0:
            raise ConfigError("preprocess.read.strict_jpeg_check_frames must be >= 0, got "
                              f"{self.strict_jpeg_check_frames}")
        if self.min_frames < 2:
            raise ConfigError(f"preprocess.read.min_frames must be >= 2 (cine loops only), got {self.min_frames}")
        if not 0 < self.doppler_min_fraction <= 1:
            raise ConfigError("preprocess.read.doppler_min_fraction must be in (0, 1]")
        self.modalities = tuple(m.upper() for m in self.modalities)


@dataclass(kw_only=True)
class SectorConfig:
    """How the ultrasound sector is found and what is masked (`ingest.sector`)."""

    use_region_sequence: bool = True  # crop to SequenceOfUltrasoundRegions when it fits the image
    motion_threshold: float = 0.5  # temporal std (grey levels, 5x5 mean) above which pixels "move"
    min_sector_fraction: float = 0.05  # moving area below this fraction of the crop: `no_sector`
    mask_static_overlays: bool = True  # blank static pixels inside the sector (text, markers)
    # blank overlay that changes from frame to frame (a frame counter): thin one-level strokes
    mask_changing_overlays: bool = True
    overlay_max_std: float = 1.0  # "still" outright: temporal std at most this (grey levels)
    # "still" under codec noise: temporal std at most this, in a flat patch (2+ still neighbours
    # whose mean is within overlay_flat_delta): JPEG lifts constant text's std to 2-3.
    overlay_codec_noise_std: float = 4.0
    overlay_flat_delta: float = 3.0
    overlay_min_level: int = 16  # overlay's mean grey level at least this (dim text is ~40)
    stats_frames: int = 64  # frames sampled (evenly) for the motion statistics

    def __post_init__(self) -> None:
        if not 0 <= self.min_sector_fraction < 1:
            raise ConfigError("preprocess.sector.min_sector_fraction must be in [0, 1)")
        if self.stats_frames < 2:
            raise ConfigError("preprocess.sector.stats_frames must be >= 2")


@dataclass(kw_only=True)
class PreprocessConfig:
    """Clip geometry and timing (`ingest.preprocess`)."""

    # Stored clips are size x size (`echocmr ingest --clip-size`). The default 144 is at or above
    # NVDEC's minimum (VP9 128x128), so the GPU decoder takes the clips; the model's input size
    # is train's data.size, resized in the pipeline (shards.format.NVDEC_MIN_SIZE).
    size: int = DEFAULT_CLIP_SIZE
    target_fps: float = 30.0  # every clip is resampled to this frame rate
    max_frames: int = 128  # clips are cut to at most this many frames (after resampling)
    read: ReadConfig = field(default_factory=ReadConfig)
    sector: SectorConfig = field(default_factory=SectorConfig)

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"preprocess.size must be even and >= 16 (yuv420p), got {self.size}")
        if not self.target_fps > 0:
            raise ConfigError(f"preprocess.target_fps must be positive, got {self.target_fps}")
        if self.max_frames < 1:
            raise ConfigError(f"preprocess.max_frames must be >= 1, got {self.max_frames}")


@dataclass(kw_only=True)
class TextDetectorConfig:
    """The second line of defence against burned-in text (`ingest.text_detector`).

    An OCR model (RapidOCR's PP-OCRv4 detector and recogniser on ONNX Runtime, CPU) reads a few
    evenly spaced output frames of every kept clip, upscaled, then composites of every frame and
    the frames they point to (`ingest.text_detector`); text it finds is masked in every frame or
    the clip is rejected ``burned_in_text``.
    """

    enabled: bool = True
    action: Literal["mask", "reject"] = "mask"  # what to do with a clip in which text is found
    frames: int = 3  # output frames read per clip (evenly spaced, first and last included)
    upscale: int = 4  # frames are enlarged this many times (bicubic) before detection
    min_score: float = 0.7  # recognition confidence for a box to count as text (speckle: < 0.6)
    margin: int = 2  # output pixels added around each text box before masking
    threads: int = 1  # ONNX Runtime threads per worker (1: deterministic, and workers are many)
    # 0: the detector reads the upscaled frames at their size (padded to a multiple of 32); N > 0:
    # it resizes them so their short side is N pixels (RapidOCR's own default, 736, the old
    # default here: 1.6-1.7x the CPU time, lower recall on bench/bench_text_detector.py)
    detector_side: int = 0
    # one detector call on all sampled frames tiled into one image (black gutters between tiles,
    # boxes clipped to their tile), instead of one call per frame
    mosaic: bool = False
    # read only the bounding box of the sampled frames' non-zero pixels (plus `margin`): the
    # black padding around the sector holds nothing to read
    crop_to_content: bool = True
    # text that is not in the sampled frames (`ingest.text_composite`): read one composite of
    # every frame's most transient pixels, then, where the detector saw a box on it that it
    # could not read, read that region in the `candidate_frames` frames its pixels came from
    # (at most `candidate_boxes` such boxes)
    composites: bool = True
    candidate_boxes: int = 4
    # a box read on the composite is read again along its whole line (its rows, grown by
    # `track_context`, across the content) in the frame most of its pixels came from
    line_reads: bool = True
    # dark text over tissue: read the clip's per-pixel temporal maximum too (tissue at its
    # brightest, dark strokes that stay dark in every frame stand out)
    dark_composite: bool = True
    # that maximum is read through the curve 255 * (v / 255) ** dark_gamma (`ingest.text_dark`:
    # dark levels spread: dark text over the blood pool or dim tissue); 1.0, the default: the plain
    # maximum (0.5 finds more dark text over blood and loses some over tissue: docs/benchmarks.md)
    dark_gamma: float = 1.0
    # dark text over the blood pool and dim tissue (`ingest.text_dark_strokes`): at most this many
    # lines of thin dark strokes in the temporal maximum (a black top-hat), each a line the mask
    # does not cover whole, have their crop, divided by its local bright level, read by the
    # recogniser alone; a line read as two characters or more at `dark_stroke_score` is masked
    # along its rows across the content (as is one inside a box read already, with no read); 0: off
    dark_strokes: int = 2
    dark_stroke_score: float = 0.5  # the bench's clean clips' reads there score <= 0.44
    # a dark-stroke line read as two characters or more below `dark_stroke_score` is read again
    # on its core rows (its glyphs' band), in the maximum and in the temporal median: JPEG-coded
    # dark text its first crop reads in part only (at most two more recogniser calls a line)
    dark_stroke_rereads: bool = True
    # moving text (`ingest.text_motion`): at most this many bands of rows whose bright transient
    # pattern slides along them are read in the frame that shows them most (then followed,
    # `track_step`); 0: off
    motion_bands: int = 2
    # text that moves vertically or slowly (`ingest.text_strokes`): at most this many windows of
    # transient bright strokes (far above the pixel's temporal median, narrower than 5 pixels)
    # have their line read in the frame that shows them most, then followed frame by frame; 0: off
    stroke_reads: int = 1
    candidate_frames: int = 2
    # a box read in a frame is read again `track_step` frames before and after, and on for as
    # long as the text found there reaches beyond the boxes so far (a ticker); 0: off. Each such
    # read is of the box grown by `track_context` output pixels.
    track_step: int = 3
    track_context: int = 16
    # a box that does not read as it is cropped is read turned 180° and mirrored either way
    # (text drawn rotated, upside down or mirrored)
    orientations: bool = True
    # reads of composites, candidate regions and tracked regions per clip (the sampled frames
    # are not counted): bounds the cost of a clip full of text
    max_reads: int = 40
    # the mask of a box read as text is grown this many times the box's height (its short side)
    # at both ends of the line: the recogniser often reads part of a line only (a word over
    # bright tissue, the end of a turned string), and the rest is the same line
    line_extend: float = 2.0
    # the second check: after everything above, read every frame not yet read, whole, with what
    # was found masked; anything found joins the mask. It assumes nothing about where text is or
    # when it shows, and costs ~0.12 CPU s a frame (~5 s for a 40-frame clip): off by default
    verify_every_frame: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"text_detector.frames must be >= 1, got {self.frames}")
        if self.upscale < 1:
            raise ConfigError(f"text_detector.upscale must be >= 1, got {self.upscale}")
        if not 0 <= self.min_score <= 1:
            raise ConfigError("text_detector.min_score must be in [0, 1]")
        if self.threads < 1:
            raise ConfigError(f"text_detector.threads must be >= 1, got {self.threads}")
        if self.margin < 0:
            raise ConfigError(f"text_detector.margin must be >= 0, got {self.margin}")
        for name in ("candidate_boxes", "candidate_frames", "track_step", "track_context",
                     "max_reads", "line_extend", "motion_bands", "stroke_reads",
                     "dark_strokes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"text_detector.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.dark_stroke_score <= 1:
            raise ConfigError("text_detector.dark_stroke_score must be in [0, 1]")
        if not 0 < self.dark_gamma <= 1:
            raise ConfigError(f"text_detector.dark_gamma must be in (0, 1], got {self.dark_gamma}")
        if self.detector_side < 0 or self.detector_side % 32:
            raise ConfigError("text_detector.detector_side must be 0 or a positive multiple of "
                              f"32 (the detector's stride), got {self.detector_side}")


@dataclass(kw_only=True)
class CutoffRule:
    """One local reference range for T1 or T2 (``labels.cutoff_rules``; `ingest.cutoffs`).

    The rule applies to rows of ``task`` at ``field_strength_t`` (a key of the task's default
    table, ``t1_cutoff_ms`` / ``t2_cutoff_ms``), measured with ``sequence`` (None: rows that name
    no sequence) at ``site`` (None: every site; else only an ingest of that ``--site``). A value
    above ``high`` is abnormal; with ``low`` as well, a value below ``low`` is abnormal too (low
    native T1: Fabry disease, iron overload). Values in ms.
    """

    task: Literal["t1", "t2"]
    field_strength_t: float
    high: float
    low: float | None = None
    sequence: str | None = None  # normalised as the table's sequence cells are (`ingest.cutoffs`)
    site: str | None = None

    def __post_init__(self) -> None:
        check_choices(self, "labels.cutoff_rules.")
        where = f"labels.cutoff_rules: rule {self.describe()}"
        if not self.field_strength_t > 0:
            raise ConfigError(f"{where}: field_strength_t must be positive, got "
                              f"{self.field_strength_t}", key="labels.cutoff_rules")
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{where}: {name} must be positive, got {value}",
                                  key="labels.cutoff_rules")
        if self.low is not None and not self.low < self.high:
            raise ConfigError(f"{where}: low {self.low} must be below high {self.high}",
                              key="labels.cutoff_rules")
        if self.sequence is not None and not self.sequence.strip():
            raise ConfigError(f"{where}: sequence is empty (leave it out for rows that name no "
                              "sequence)", key="labels.cutoff_rules")
        if self.site is not None:
            try:
                validate_site(self.site)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}", key="labels.cutoff_rules") from None

    def describe(self) -> str:
        """``"t1 3.0 T shmolli (site hospital_a)"``: which rows the rule is for."""
        text = f"{self.task} {self.field_strength_t:g} T"
        if self.sequence is not None:
            text += f" {self.sequence}"
        return text + (f" (site {self.site})" if self.site is not None else "")


@dataclass(kw_only=True)
class LabelConfig:
    """Columns of the CMR table and the cut-offs that turn raw values into labels (`ingest.labels`).

    A task's binary column (0/1) wins when present and known; otherwise its raw column is compared
    with the cut-off (abnormal when strictly greater, or with a two-sided rule also when strictly
    below ``low``). T1 and T2 cut-offs depend on the field strength: keys are tesla, matched within
    ``field_strength_tolerance_t``; an unknown or unmatched field strength leaves T1/T2 unknown
    (NaN), never normal. ``cutoff_rules`` refine the per-field defaults by mapping sequence and
    site (`ingest.cutoffs` has the precedence).
    """

    patient_id_column: str = "patient_id"
    date_column: str = "cmr_date"
    field_strength_column: str = "field_strength_t"
    binary_columns: dict[str, str] = field(
        default_factory=lambda: {task: task for task in TASKS}
    )
    t1_column: str = "t1_native_ms"
    t2_column: str = "t2_ms"
    ecv_column: str = "ecv_pct"
    t1_cutoff_ms: dict[float, float] = field(default_factory=lambda: {1.5: 1050.0, 3.0: 1250.0})
    t2_cutoff_ms: dict[float, float] = field(default_factory=lambda: {1.5: 55.0, 3.0: 50.0})
    ecv_cutoff_pct: float = 30.0
    field_strength_tolerance_t: float = 0.25
    # Mapping sequence per row (optional columns; ignored for a task without sequence rules).
    t1_sequence_column: str = "t1_sequence"
    t2_sequence_column: str = "t2_sequence"
    # Local reference ranges by (field strength, sequence) and site; see `CutoffRule`.
    cutoff_rules: tuple[CutoffRule, ...] = ()
    # A site's own spellings of sequence names -> the name rules use ({"t1map_5s3s3s": "molli"}).
    sequence_aliases: dict[str, str] = field(default_factory=dict)
    # A sequence cell that names no known sequence while the task has sequence rules: "error", or
    # "warn" (counted; that row's label unknown).
    unknown_sequences: Literal["error", "warn"] = "error"
    # Strict reading (`ingest.labels`): how the table may be written, and what is an error.
    date_format: str | None = None  # None: ISO 8601 dates only; else a strptime format ("%d/%m/%Y")
    decimal_comma: bool = False  # numeric cells use a decimal comma ("31,5"); otherwise an error
    # A task without any column (binary or raw): "warn" (counted; unknown for every row) or "error".
    missing_task_columns: Literal["warn", "error"] = "warn"
    # Rows of one patient and date whose labels disagree: "error", or "drop" them all (counted).
    conflicting_duplicates: Literal["error", "drop"] = "error"
    # A patient-ID column stored as numbers (leading zeros lost): "error", or compare IDs on both
    # sides with leading zeros removed ("00123" pairs with 123).
    numeric_patient_ids: Literal["error", "strip_leading_zeros"] = "error"

    def __post_init__(self) -> None:
        check_choices(self, "labels.")
        self.cutoff_rules = tuple(r if isinstance(r, CutoffRule) else CutoffRule(**r)
                                  for r in self.cutoff_rules)
        if not self.field_strength_tolerance_t > 0:
            raise ConfigError("labels.field_strength_tolerance_t must be positive, got "
                              f"{self.field_strength_tolerance_t}",
                              key="labels.field_strength_tolerance_t")
        if not 0 < self.ecv_cutoff_pct < 100:
            raise ConfigError(f"labels.ecv_cutoff_pct must be in (0, 100), got "
                              f"{self.ecv_cutoff_pct}", key="labels.ecv_cutoff_pct")
        for name in ("t1_cutoff_ms", "t2_cutoff_ms"):
            for field_t, cutoff in getattr(self, name).items():
                if not field_t > 0 or not cutoff > 0:
                    raise ConfigError(f"labels.{name}: field strengths and cut-offs must be "
                                      f"positive, got {field_t}: {cutoff}", key=f"labels.{name}")
        check_rules(self)


@dataclass(kw_only=True)
class PairingConfig:
    """Echo-CMR pairing (`ingest.pairing`)."""

    window_days: int = 30  # nearest CMR of the same patient within +-window_days of the echo

    def __post_init__(self) -> None:
        if self.window_days < 0:
            raise ConfigError(f"pairing.window_days must be >= 0, got {self.window_days}")


IDENTITY_SCOPES = ("site", "shared")


@dataclass(kw_only=True)
class SplitConfig:
    """Patient-level splits by keyed hash (`ingest.splits`).

    ``split_key`` is the HMAC key; when unset, the environment variable ``ECHOCMR_SPLIT_KEY`` is
    used. Without either, ingest refuses to run unless the input is a cohort written by
    ``echocmr synth`` or ``allow_public_demo_key`` is set (``--allow-public-demo-key``): with the
    public demo key anyone could recompute the hashes of known IDs.

    ``identity_scope``: what names one person. ``site`` (default): a patient is (site, ID), since
    two hospitals' ID namespaces may overlap; ``shared``: the sites of one health network share
    one ID namespace, so a patient seen at two sites is one patient with one hash and one split
    (under ``site`` they would get two, and could train at one site and test at the other).
    Recorded in ``stats.json``; reshard refuses to merge sets of different scopes.
    """

    split_key: str | None = None
    identity_scope: str = "site"  # "site": (site, patient ID); "shared": the patient ID alone
    allow_public_demo_key: bool = False  # use the public demo key for real data (hashes reversible)
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2}
    )

    def __post_init__(self) -> None:
        if self.identity_scope not in IDENTITY_SCOPES:
            raise ConfigError(f"splits.identity_scope={self.identity_scope!r}: choose one of "
                              f"{IDENTITY_SCOPES} (shared when the sites share one patient-ID "
                              "namespace)")
        if set(self.fractions) != set(SPLITS):
            raise ConfigError(f"splits.fractions needs exactly {SPLITS}, got {sorted(self.fractions)}")
        if any(v < 0 for v in self.fractions.values()):
            raise ConfigError("splits.fractions must be non-negative")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ConfigError(f"splits.fractions must sum to 1, got {self.fractions}")


@dataclass(kw_only=True)
class ShardConfig:
    """How clips are cut into shards (passed to `shards.writer.WriterConfig`)."""

    samples_per_shard: int = 256
    shard_mb: float | None = None


@dataclass(kw_only=True)
class RayConfig:
    """How ingest's tasks run on a Ray cluster (``--address``; `ingest.distributed`).

    Used only when ingest runs on Ray; none of it changes the output (not in the fingerprint).
    """

    cpus_per_task: float = 1.0  # Ray CPUs per file task (and per shard-writing task)
    memory_mb_per_task: int | None = None  # Ray `memory` reserved per file task (scheduling only)
    max_retries: int = 3  # a task whose worker or node dies runs again, elsewhere, this many times
    max_in_flight: int | None = None  # file tasks submitted ahead; None: 4 per cluster CPU

    def __post_init__(self) -> None:
        if not self.cpus_per_task > 0:
            raise ConfigError(f"ray.cpus_per_task must be positive, got {self.cpus_per_task}")
        if self.memory_mb_per_task is not None and self.memory_mb_per_task < 1:
            raise ConfigError("ray.memory_mb_per_task must be >= 1 (or null)")
        if self.max_retries < 0:
            raise ConfigError(f"ray.max_retries must be >= 0, got {self.max_retries}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError("ray.max_in_flight must be >= 1 (or null)")


@dataclass(kw_only=True)
class IngestConfig:
    """Everything the ingest job needs besides its input and output paths."""

    site: str = "site"  # lower-case [a-z0-9_]+; the key prefix of every clip
    workers: int | None = None  # processes; None = every core
    keep_work_cache: bool = False  # keep OUT/.work (per-file results and clips) after success
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_detector: TextDetectorConfig = field(default_factory=TextDetectorConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    # How the DICOM Manufacturer becomes each clip's vendor (`ingest.vendor_table`).
    vendors: VendorConfig = field(default_factory=VendorConfig)
    # The view classifier that labels clips (`echocmr ingest --view-model`): an MLflow model URI
    # (models:/NAME@ALIAS is pinned to the version it points at when the run starts) or a view
    # model directory; None = views from --views only, else "unknown" (docs/views.md).
    view_model: str | None = None

    def fingerprint(self) -> str:
        """A hash of every setting that changes the output (the split key itself excluded)."""
        data = to_dict(self)
        if data.get("view_model") is None:  # unchanged fingerprints for runs without one
            data.pop("view_model", None)
        for volatile in ("workers", "keep_work_cache", "ray"):
            data.pop(volatile)
        data["splits"].pop("split_key")
        data["splits"].pop("allow_public_demo_key")
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> IngestConfig:
    """Defaults, then the YAML file at ``path``, then the non-None ``overrides`` (the flags).

    ``overrides`` are keys of `IngestConfig` (``site=...``, ``workers=...``, or a section such as
    ``preprocess={"size": 64}``); a section merges key by key into the file's, as layers do in
    `echocmr.config.load`.
    """
    layers = [] if path is None else [loader.file_layer(path)]
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        layers.append(loader.Layer(given, loader.FLAGS))
    return loader.load(IngestConfig, *layers)
