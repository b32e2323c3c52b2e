"""The shard format's vocabulary: tasks, the `Sample`, label bytes, keys, and manifest columns.

Everything that two packages must agree on about one sample lives here, so that ingest (which
writes), train and eval (which read) and the toolkit (which checks and reshards) cannot drift
apart. The full format is described in ``docs/formats.md``.

A sample is three tar members sharing one key: ``KEY.webm`` (VP9), ``KEY.labels``
(little-endian float32[5], NaN where unknown) and ``KEY.json`` (metadata, never PHI).

Grey levels 0..255 are stored in the video as limited-range luma 16..235 (`GREY_TO_LUMA`) because
DALI's decoder reads luma as limited range and expands it (`LUMA_TO_GREY`); the writer (ingest)
and the readers (train's pipeline, raw-frame predict) share these tables so they agree to the bit.
`FORMAT_VERSION` names the format; readers refuse a set of a version they cannot read
(`check_format_version`): one whose pixels would decode differently (before
`OLDEST_READABLE_VERSION`), or a newer one. Version 3 added the vendor (`VENDOR_VOCABULARY`) and
changed no clip, so version-2 sets still read, verify and reshard as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pyarrow as pa

from echocmr.errors import EchocmrError

# 1: grey stored in Y as is (the decoder clipped it to 16..235); 2: grey stored as limited range;
# 3: each clip's vendor (KEY.json ``vendor``, the manifest's ``vendor`` column, stats.json
# ``view_mix``), clips encoded as in 2.
FORMAT_VERSION = 3
# The oldest version this code reads (verify, reshard, train, eval): versions from here on store
# their clips alike and differ only in metadata, which readers fill in (`MANIFEST_COLUMNS_SINCE`).
OLDEST_READABLE_VERSION = 2
_VERSION_CHANGES = {
    2: "version 2 stores grey as limited-range luma, which version 1 did not: DALI decodes "
    "version-1 clips with every level below 16 and above 235 clipped",
    3: "version 3 records each clip's vendor",
}
# The version whose clip encoding each version has: a model trained on one reads the other's
# pixels the same (`clip_encoding`).
_CLIP_ENCODING = {1: 1, 2: 2, 3: 2}


def clip_encoding(version: int | None) -> int | None:
    """The clip encoding of a format version (None when unknown): two versions with the same
    encoding store the same pixels the same way."""
    return _CLIP_ENCODING.get(version) if isinstance(version, int) else None

# Luma in the VP9 stream (docs/formats.md, "Video"). Exact integer rounding (no ties: 255 and
# 219 are odd), so encoding is deterministic and readers can emulate the round trip to the bit.
LUMA_LO, LUMA_HI = 16, 235  # limited ("TV") range of 8-bit luma
_SPAN = LUMA_HI - LUMA_LO  # 219
_LEVELS = np.arange(256, dtype=np.int64)
# Grey 0..255 -> stored luma 16..235: Y' = 16 + round(Y * 219 / 255).
GREY_TO_LUMA = (LUMA_LO + (_LEVELS * _SPAN + 127) // 255).astype(np.uint8)
# Stored luma -> decoded grey, as DALI converts it: clip(round((Y' - 16) * 255 / 219), 0, 255).
LUMA_TO_GREY = np.clip(((_LEVELS - LUMA_LO) * 255 + _SPAN // 2) // _SPAN, 0, 255).astype(np.uint8)
# Grey -> what the decoder gives back without codec error (at most 1 level off; idempotent).
GREY_ROUND_TRIP = LUMA_TO_GREY[GREY_TO_LUMA]
for _table in (GREY_TO_LUMA, LUMA_TO_GREY, GREY_ROUND_TRIP):
    _table.flags.writeable = False

# Files of a shard set besides its tars and indexes (docs/formats.md).
MANIFEST_FILE = "manifest.parquet"
STATS_FILE = "stats.json"
INGEST_REPORT_FILE = "ingest_report.parquet"  # site-local; never copied by reshard

TASKS: tuple[str, ...] = ("wma", "lge", "t1", "t2", "ecv")
# The view vocabulary (KEY.json's ``view``, the manifest, the view classifier's classes): the
# study's target views; ``other`` for any view that is not a target (short axis, subcostal, ...);
# ``unknown`` where nothing says which view a clip is (no views table, or a view classifier not
# confident enough). A views table may name any view; readers treat every name outside
# TARGET_VIEWS and ``unknown`` as ``other`` (`view_class`).
TARGET_VIEWS: tuple[str, ...] = ("A4C", "A2C", "PLAX")
VIEW_OTHER, VIEW_UNKNOWN = "other", "unknown"
VIEW_VOCABULARY: tuple[str, ...] = (*TARGET_VIEWS, VIEW_OTHER, VIEW_UNKNOWN)


def view_class(view: str | None) -> str:
    """A stored or tabled view name in the vocabulary: a target view as is, ``unknown`` for
    none/empty/unknown, anything else (``PSAX``, ``other``, ``A5C``) ``other``."""
    text = "" if view is None else str(view).strip()
    if text.upper() in TARGET_VIEWS:
        return text.upper()
    if text.lower() in ("", VIEW_UNKNOWN, "nan", "none"):
        return VIEW_UNKNOWN
    return VIEW_OTHER


# The vendor vocabulary (KEY.json's ``vendor``, the manifest, stats.json's ``view_mix``): who
# made the machine that recorded a clip, never the Manufacturer tag's text (free text, which can
# hold anything). Ingest maps the tag to a name here through an alias table
# (`ingest.vendor_table`); a tag it cannot map is ``other``, no tag ``unknown``. The synthetic
# cohort's machines (`echocmr synth`) have names of their own so that its mix reads per vendor.
VENDORS: dict[str, str] = {
    "ge": "GE HealthCare (GE Vingmed, GE Medical Systems; Vivid, Logiq)",
    "philips": "Philips (ATL, Agilent/HP; EPIQ, Affiniti, iE33, CX50)",
    "siemens": "Siemens Healthineers (Acuson)",
    "canon": "Canon Medical Systems (Toshiba; Aplio, Artida, Xario)",
    "samsung": "Samsung Medison",
    "mindray": "Mindray (Zonare)",
    "esaote": "Esaote (MyLab)",
    "hitachi": "Hitachi, Aloka, Hitachi Aloka (ProSound, Arietta)",
    "fujifilm": "Fujifilm, Fujifilm Sonosite, Fujifilm Healthcare",
    "sonoscape": "SonoScape",
    "butterfly": "Butterfly Network",
    "aurelia": "synthetic cohort: Aurelia Medical",
    "borealis": "synthetic cohort: Borealis Imaging",
    "corvid": "synthetic cohort: Corvid Ultrasound",
    "delphi": "synthetic cohort: Delphi Echo Systems",
    "elara": "synthetic cohort: Elara Sonics",
    "halcyon": "synthetic cohort: Halcyon Diagnostics",
}
VENDOR_OTHER, VENDOR_UNKNOWN = "other", "unknown"  # a tag no alias maps; no tag at all
VENDOR_VOCABULARY: tuple[str, ...] = (*VENDORS, VENDOR_OTHER, VENDOR_UNKNOWN)


def vendor_class(vendor: str | None) -> str:
    """A stored vendor as the view mix counts it: ``unknown`` for none (a sample written before
    format 3, or by a tool that did not record it), the vendor itself when it is in the
    vocabulary, else ``other`` (a value no writer writes, which `shards verify` reports: counted
    without its text)."""
    if vendor is None:
        return VENDOR_UNKNOWN
    return vendor if vendor in VENDOR_VOCABULARY else VENDOR_OTHER


SPLITS: tuple[str, ...] = ("train", "val", "test")
# Tar member extensions of one sample, in the order webdataset's TarWriter writes them (sorted).
EXTENSIONS: tuple[str, ...] = ("json", "labels", "webm")

LABEL_DTYPE = np.dtype("<f4")
LABEL_BYTES = LABEL_DTYPE.itemsize * len(TASKS)

# Member names must fit a 100-character ustar name field: site (<=64) + '-' + 16 hex + '.labels'.
MAX_SITE_LEN = 64
_SITE_RE = re.compile(r"^[a-z0-9_]+$")
_KEY_RE = re.compile(r"^([a-z0-9_]+)-([0-9a-f]{16})$")
SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")

# manifest.parquet: one row per clip, in the order the samples were written.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "key",
    "shard",
    "split",
    "site",
    "patient_hash",
    "study_hash",
    "view",
    "n_frames",
    "fps",
    *TASKS,
    "video_bytes",
    "video_sha256",
    "pixel_mean",
    "pixel_std",
    "n_pixels",
    "json_sha256",
    "view_confidence",
    "vendor",
)
# Columns a set this code reads may lack (written before they were added): readers fill them with
# nulls, and `shards verify` then skips the check they allow.
OPTIONAL_MANIFEST_COLUMNS: tuple[str, ...] = ("json_sha256", "view_confidence", "vendor")
# Columns a format version added (the oldest readable version has every other column): a set of
# an older version has none of them, and its manifest is exact without them
# (`manifest_schema`).
MANIFEST_COLUMNS_SINCE: dict[str, int] = {"vendor": 3}
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("site", pa.string()),
        ("patient_hash", pa.string()),
        ("study_hash", pa.string()),
        ("view", pa.string()),
        ("n_frames", pa.int32()),
        ("fps", pa.float32()),
        *[(task, pa.float32()) for task in TASKS],
        ("video_bytes", pa.int64()),
        ("video_sha256", pa.string()),
        ("pixel_mean", pa.float64()),
        ("pixel_std", pa.float64()),
        ("n_pixels", pa.int64()),
        ("json_sha256", pa.string()),  # SHA-256 of the KEY.json member (tamper evidence)
        ("view_confidence", pa.float32()),  # the view classifier's confidence; null without one
        ("vendor", pa.string()),  # KEY.json's vendor (`VENDOR_VOCABULARY`); null without one
    ]
)
assert tuple(MANIFEST_SCHEMA.names) == MANIFEST_COLUMNS


def manifest_schema(version: int = FORMAT_VERSION) -> pa.Schema:
    """The manifest schema of a format version (`MANIFEST_SCHEMA` less the columns added after
    it, `MANIFEST_COLUMNS_SINCE`)."""
    return pa.schema([f for f in MANIFEST_SCHEMA if MANIFEST_COLUMNS_SINCE.get(f.name, 0) <= version])


# Manifest columns that KEY.json also carries, as text: equal in both (`shards.verify`).
META_TEXT_COLUMNS: tuple[str, ...] = ("split", "site", "patient_hash", "study_hash", "view",
                                      "vendor")
# The same columns as numpy dtype names ("str" for strings), for code that builds DataFrames.
MANIFEST_DTYPES: dict[str, str] = {
    name: ("str" if pa.types.is_string(t) else np.dtype(t.to_pandas_dtype()).name)
    for name, t in zip(MANIFEST_SCHEMA.names, MANIFEST_SCHEMA.types, strict=True)
}


class FormatVersionError(EchocmrError, ValueError):
    """A shard set was written in a format version that this code does not read."""


def check_format_version(stats: ShardStats, where: str) -> None:
    """Raise `FormatVersionError` unless ``stats`` (a set's ``stats.json``) is a version this code
    reads, `OLDEST_READABLE_VERSION` to `FORMAT_VERSION`.

    ``where`` names the set in the message. A set older than that must be re-ingested: its clips
    are encoded differently, and reshard copies clips as they are, so it cannot convert them.
    """
    version = stats.format_version
    if isinstance(version, int) and OLDEST_READABLE_VERSION <= version <= FORMAT_VERSION:
        return
    if isinstance(version, int) and version < OLDEST_READABLE_VERSION:
        changes = "; ".join(_VERSION_CHANGES[v] for v in range(version + 1, FORMAT_VERSION + 1))
        raise FormatVersionError(
            f"{where} is shard format version {version}, this code reads versions "
            f"{OLDEST_READABLE_VERSION} to {FORMAT_VERSION} ({changes}). Re-run `echocmr ingest` "
            "from the DICOMs into a new directory to re-encode the clips; `echocmr shards reshard` cannot fix this, it "
            "copies the clips as they are"
        )
    if isinstance(version, int):
        raise FormatVersionError(
            f"{where} is shard format version {version}, newer than this code reads "
            f"({FORMAT_VERSION}): update echocmr"
        )
    raise FormatVersionError(
        f"{where}: stats.json has no valid format_version ({version!r}); it was not written by "
        "`echocmr ingest` or `echocmr shards reshard`: re-run the ingest that made it"
    )


# NVDEC's smallest coded frame, per codec, as one side of a square (pixels). From NVIDIA's
# published NVDEC support table (Video Codec SDK "NVDEC Application Note"; VP9 128x128, HEVC
# 144x144), not confirmed here: the driver reports the real figure at run time
# (cuvidGetDecoderCaps' nMinWidth/nMinHeight, which DALI's "mixed" decoder asserts: "Video is too
# small in at least one dimension", NVIDIA/DALI#2197), and `bench/gpu_check.py` reads and
# records it on the device. Ingest writes VP9 only; a codec missing here counts as not decodable.
NVDEC_MIN_SIZE: dict[str, int] = {"vp9": 128, "hevc": 144}


# Ingest's default stored clip side (`ingest.config.PreprocessConfig.size`): at or above every
# NVDEC minimum above, and a multiple of 16 (whole 16-pixel blocks, no encoder padding).
DEFAULT_CLIP_SIZE = 144


@dataclass(frozen=True, kw_only=True)
class ClipFormat:
    """The format every clip of a shard set has (``stats.json["clip"]``): ``height`` x ``width``
    pixels at ``fps``, ``codec`` video in ``pix_fmt``. Ingest builds it from its config; readers
    parse it once with `from_dict` (or `of_stats`)."""

    height: int
    width: int
    fps: float
    codec: str = "vp9"
    pix_fmt: str = "yuv420p"

    @classmethod
    def from_dict(cls, data: dict) -> ClipFormat:
        """Parse a clip block; raises ValueError for a missing size or rate or an unknown field."""
        if isinstance(data, ClipFormat):
            return data
        missing = [k for k in ("height", "width", "fps") if data.get(k) is None]
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if missing or unknown:
            what = f"lacks {missing}" if missing else f"has unknown fields {unknown}"
            raise ValueError(
                f"clip format {what}; give e.g. {{'height': 144, 'width': 144, 'fps': 30.0, "
                "'codec': 'vp9', 'pix_fmt': 'yuv420p'}"
            )
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            fps=float(data["fps"]),
            codec=str(data.get("codec", "vp9")),
            pix_fmt=str(data.get("pix_fmt", "yuv420p")),
        )

    @classmethod
    def of_stats(cls, stats: ShardStats) -> ClipFormat:
        """The clip format of a set from its ``stats.json``."""
        return stats.clip_format()

    def to_dict(self) -> dict:
        """The ``stats.json`` clip block (key order fixed: the file is byte-for-byte stable)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    @property
    def square_size(self) -> int | None:
        """The side of square clips, None for non-square ones."""
        return self.height if self.height == self.width else None

    def gpu_decode_problem(self) -> str | None:
        """Why NVDEC cannot decode these clips (the codec, or a side below `NVDEC_MIN_SIZE`),
        or None if it can, as far as the published minimums say."""
        minimum = NVDEC_MIN_SIZE.get(self.codec)
        if minimum is None:
            return f"its clips are {self.codec}, which echocmr does not know NVDEC to decode"
        if min(self.height, self.width) < minimum:
            return (f"its clips are {self.height}x{self.width}, below NVDEC's {self.codec} "
                    f"minimum of {minimum}x{minimum}")
        return None

    @property
    def gpu_decodable(self) -> bool:
        """True if NVDEC (DALI's ``mixed`` decoder) can decode these clips."""
        return self.gpu_decode_problem() is None


@dataclass(frozen=True, kw_only=True)
class SplitStats:
    """One split's block of ``stats.json`` (``splits.<split>``)."""

    clips: int
    studies: int
    patients: int
    sites: tuple[str, ...]
    positives: dict[str, int]  # labels > 0.5, per task
    known: dict[str, int]  # non-NaN labels, per task
    prevalence: dict[str, float | None]  # positives / known, None when nothing is known

    @classmethod
    def from_dict(cls, data: dict) -> SplitStats:
        return cls(clips=int(data["clips"]), studies=int(data["studies"]),
                   patients=int(data["patients"]), sites=tuple(data["sites"]),
                   positives=dict(data["positives"]), known=dict(data["known"]),
                   prevalence=dict(data["prevalence"]))

    def to_dict(self) -> dict:
        return {"clips": self.clips, "studies": self.studies, "patients": self.patients,
                "sites": list(self.sites), "positives": dict(self.positives),
                "known": dict(self.known), "prevalence": dict(self.prevalence)}


@dataclass(frozen=True, kw_only=True)
class ShardStats:
    """A set's ``stats.json``, typed (docs/formats.md): read once (`shards.reader.read_stats`)
    and handed on as this object, never as a dict that each reader interprets again.

    Sets of older format versions read too (absent blocks are None), so that
    `check_format_version` can say what to do with them; a key this echocmr does not know is
    refused with "upgrade echocmr". `to_dict` gives the file's content back, key for key.
    """

    format_version: int | None
    tasks: tuple[str, ...] = TASKS
    clip: ClipFormat | None = None
    split_key_fingerprint: str | None = None
    pixel_mean: float | None = None
    pixel_std: float | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    label_rules: dict[str, str] | None = None  # site -> cut-offs fingerprint (absent: unknown)
    identity_scope: str | None = None  # "site" or "shared"; absent: "site"
    view_models: dict[str, str] | None = None  # site -> the view classifier that labelled it
    # site -> vendor -> view class -> clips (format 3 on; `shards.stats.view_mix_by_vendor`)
    view_mix: dict[str, dict[str, dict[str, int]]] | None = None
    # Only in a training run's copy (`read.loader.site_selection`): the sites left out, whose
    # clips the statistics above no longer count.
    excluded_sites: tuple[str, ...] = ()

    _KEYS = ("format_version", "tasks", "clip", "split_key_fingerprint", "pixel_mean",
             "pixel_std", "splits", "label_rules", "identity_scope", "view_models",
             "view_mix", "excluded_sites")

    @classmethod
    def from_dict(cls, data: dict, where: str = "stats.json") -> ShardStats:
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not a JSON object")
        unknown = sorted(set(data) - set(cls._KEYS))
        if unknown:
            raise ValueError(f"{where} has fields this echocmr does not know "
                             f"({', '.join(unknown)}): upgrade echocmr to read this set")
        clip = data.get("clip")
        return cls(
            format_version=data.get("format_version"),
            tasks=tuple(data.get("tasks", TASKS)),
            clip=ClipFormat.from_dict(clip) if clip else None,
            split_key_fingerprint=data.get("split_key_fingerprint"),
            pixel_mean=data.get("pixel_mean"),
            pixel_std=data.get("pixel_std"),
            splits={name: SplitStats.from_dict(block)
                    for name, block in (data.get("splits") or {}).items()},
            label_rules=(dict(data["label_rules"]) if data.get("label_rules") is not None
                         else None),
            identity_scope=data.get("identity_scope"),
            view_models=(dict(data["view_models"]) if data.get("view_models") else None),
            view_mix=(None if data.get("view_mix") is None
                      else {site: {vendor: dict(views) for vendor, views in vendors.items()}
                            for site, vendors in data["view_mix"].items()}),
            excluded_sites=tuple(data.get("excluded_sites") or ()),
        )

    def to_dict(self) -> dict:
        """The ``stats.json`` content, in the writer's key order (`shards.stats.compute_stats`)."""
        out = {"format_version": self.format_version, "tasks": list(self.tasks),
               "clip": self.clip.to_dict() if self.clip else None,
               "split_key_fingerprint": self.split_key_fingerprint,
               "pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std,
               "splits": {name: block.to_dict() for name, block in self.splits.items()}}
        if self.label_rules is not None:
            out["label_rules"] = dict(self.label_rules)
        if self.identity_scope is not None:
            out["identity_scope"] = self.identity_scope
        if self.view_models:
            out["view_models"] = dict(self.view_models)
        if self.view_mix is not None:
            out["view_mix"] = {site: {vendor: dict(views) for vendor, views in vendors.items()}
                               for site, vendors in self.view_mix.items()}
        if self.excluded_sites:
            out["excluded_sites"] = list(self.excluded_sites)
        return out

    @property
    def scope(self) -> str:
        """What names a patient: ``site`` (the default, and for sets that predate the field)."""
        return self.identity_scope or "site"

    def clip_format(self) -> ClipFormat:
        """The set's clip format; a ValueError for a set whose stats.json has none."""
        if self.clip is None:
            raise ValueError("stats.json has no clip block: it was not written by echocmr")
        return self.clip


class GPUDecodeError(EchocmrError, ValueError):
    """A shard set's clips cannot be decoded by the GPU (NVDEC, DALI's ``mixed`` decoder)."""


def check_gpu_decodable(clip: ClipFormat, where: str, *, cpu_fix: str) -> None:
    """Raise `GPUDecodeError` unless NVDEC can decode ``clip`` (`ClipFormat.gpu_decode_problem`).

    ``where`` names the set; ``cpu_fix`` says how to decode on the CPU instead (it differs
    between train and eval). The message names both fixes: re-ingest at a size NVDEC takes, or
    decode on the CPU.
    """
    problem = clip.gpu_decode_problem()
    if problem is None:
        return
    raise GPUDecodeError(
        f"{where}: {problem}, so the GPU video decoder (DALI 'mixed', NVDEC) cannot read it. "
        f"Either re-ingest from the DICOMs with `echocmr ingest --clip-size "
        f"{DEFAULT_CLIP_SIZE} ...` (the default; the model's input size is set apart, "
        f"data.size), or {cpu_fix}"
    )


@dataclass(frozen=True, kw_only=True)
class IngestFacts:
    """What ingest records about a clip beyond what the writer needs (`SampleMeta.ingest`).

    Sets written by other tools (tests, benchmarks) may leave it out as a whole; a sample never
    has part of it. None values are facts too (JSON ``null``: the source file did not say).
    """

    source_sop_hash: str
    height: int
    width: int
    orig_fps: float | None
    orig_n_frames: int
    pixel_spacing_mm: tuple[float, float] | None  # (row, col) of the stored pixels
    echo_cmr_gap_days: int | None
    field_strength_t: float | None


# Optional KEY.json fields about the view (`SampleMeta.view_source`, ``view_confidence``) and
# the machine (``vendor``, format 3 on).
VIEW_META: tuple[str, ...] = ("view_source", "view_confidence")
OPTIONAL_META: tuple[str, ...] = (*VIEW_META, "vendor")
# The fields every sample has: what the writer needs to build a manifest row (docs/formats.md).
REQUIRED_META: tuple[str, ...] = (
    "site",
    "split",
    "patient_hash",
    "study_hash",
    "view",
    "fps",
    "n_frames",
)


@dataclass(frozen=True, kw_only=True)
class SampleMeta:
    """``KEY.json``: one clip's metadata, typed. Never PHI: identifiers are keyed hashes.

    Built once (ingest, from what it read) and parsed once wherever a ``KEY.json`` is read
    (`from_json`: the plain reader, verify, the DALI pipelines). Parsing is strict: a missing
    field or one this code does not know raises ValueError naming the sample, so a set from
    another echocmr fails loudly instead of feeding defaults. `to_json` writes the same bytes
    `encode_meta` always wrote (``key`` first, the rest sorted, compact).
    """

    key: str
    site: str
    split: str
    patient_hash: str
    study_hash: str
    view: str
    fps: float
    n_frames: int
    ingest: IngestFacts | None = None
    # Where ``view`` came from, when ingest knew (absent in sets written before): ``table``
    # (--views), ``model`` (--view-model, ``view_model`` names it in stats.json); and the view
    # classifier's calibrated confidence in its own call (with --view-model, also when the table
    # won). Written only when set, so samples without them keep their bytes.
    view_source: str | None = None
    view_confidence: float | None = None
    # Who made the machine (`VENDOR_VOCABULARY`; ingest writes it from format 3 on, from the
    # DICOM Manufacturer through its alias table). None: not recorded (an older set, or a tool
    # other than ingest); written only when set, so such samples keep their bytes.
    vendor: str | None = None

    def __post_init__(self) -> None:
        if self.vendor is not None and self.vendor not in VENDOR_VOCABULARY:
            raise ValueError(
                f"sample {self.key}: vendor is not a name of the vendor vocabulary (the value is "
                f"not shown: it may be patient text); use one of {', '.join(VENDOR_VOCABULARY)} "
                "(docs/formats.md)")

    @classmethod
    def from_dict(cls, data: dict, key: str | None = None) -> SampleMeta:
        """Parse ``KEY.json`` content (``key`` given: the sample's key, which it must name)."""
        if isinstance(data, SampleMeta):
            data = data.to_dict()
        key = data.get("key", key) if key is None else key
        where = f"sample {key}" if key else "sample metadata"
        if data.get("key", key) != key:
            raise ValueError(f"meta['key'] is {data['key']!r} but the sample key is {key!r}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: KEY.json names no key")
        ingest_fields = [f.name for f in fields(IngestFacts)]
        unknown = sorted(set(data) - {"key", *REQUIRED_META, *ingest_fields, *OPTIONAL_META})
        if unknown:
            raise ValueError(
                f"{where}: KEY.json has fields this echocmr does not know ({', '.join(unknown)}); "
                "upgrade echocmr to read this shard set"
            )
        missing = [k for k in REQUIRED_META if data.get(k) is None]
        if missing:
            raise ValueError(f"{where}: meta lacks {missing} (see docs/formats.md)")
        present = [k for k in ingest_fields if k in data]
        ingest = None
        if present:
            lacking = [k for k in ingest_fields if k not in data]
            if lacking:
                raise ValueError(f"{where}: KEY.json has ingest's fields but lacks {lacking}")
            facts = {k: data[k] for k in ingest_fields}
            if facts["pixel_spacing_mm"] is not None:
                facts["pixel_spacing_mm"] = tuple(facts["pixel_spacing_mm"])
            ingest = IngestFacts(**facts)
        return cls(
            key=key,
            site=data["site"],
            split=data["split"],
            patient_hash=str(data["patient_hash"]),
            study_hash=str(data["study_hash"]),
            view=str(data["view"]),
            fps=float(data["fps"]),
            n_frames=int(data["n_frames"]),
            ingest=ingest,
            view_source=None if data.get("view_source") is None else str(data["view_source"]),
            view_confidence=(None if data.get("view_confidence") is None
                             else float(data["view_confidence"])),
            vendor=data.get("vendor"),
        )

    @classmethod
    def from_json(cls, data: bytes, key: str | None = None) -> SampleMeta:
        """Parse ``KEY.json`` bytes (see `from_dict`)."""
        return cls.from_dict(decode_meta(data), key=key)

    def to_dict(self) -> dict:
        """The ``KEY.json`` content as a dict (ingest's fields only when the sample has them)."""
        out = {f: getattr(self, f) for f in ("key", *REQUIRED_META)}
        if self.ingest is not None:
            out.update(asdict(self.ingest))
            if self.ingest.pixel_spacing_mm is not None:
                out["pixel_spacing_mm"] = list(self.ingest.pixel_spacing_mm)
        for name in OPTIONAL_META:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def to_json(self) -> bytes:
        """The ``KEY.json`` bytes (deterministic: `encode_meta`)."""
        return encode_meta(self.key, self.to_dict())


@dataclass(frozen=True)
class Sample:
    """One echo clip as stored in a shard.

    ``video`` is the WebM file's bytes, ``labels`` float32[5] in `TASKS` order (NaN unknown),
    ``meta`` its `SampleMeta` (``meta.split`` decides the shard). A dict given as ``meta`` is
    parsed as ``KEY.json`` content would be.
    """

    key: str
    video: bytes
    labels: np.ndarray
    meta: SampleMeta

    def __post_init__(self) -> None:
        if not isinstance(self.meta, SampleMeta):
            object.__setattr__(self, "meta", SampleMeta.from_dict(self.meta, key=self.key))
        elif self.meta.key != self.key:
            raise ValueError(f"meta.key is {self.meta.key!r} but the sample key is {self.key!r}")


def validate_site(site: str) -> str:
    """Return ``site`` if it is a valid site name (lower-case ``[a-z0-9_]+``), else raise."""
    if not isinstance(site, str) or not _SITE_RE.match(site) or len(site) > MAX_SITE_LEN:
        raise ValueError(
            f"site name {site!r} is invalid: use lower-case letters, digits and '_' only "
            f"(at most {MAX_SITE_LEN} characters; it becomes the prefix of every sample key)"
        )
    return site


def validate_key(key: str) -> str:
    """Return ``key`` if it is ``<site>-<16 hex>`` (no dots: webdataset splits names there)."""
    match = _KEY_RE.match(key) if isinstance(key, str) else None
    if not match or len(match.group(1)) > MAX_SITE_LEN:
        raise ValueError(
            f"sample key {key!r} is invalid: expected '<site>-<16 lower-case hex>' with site "
            "in [a-z0-9_]+, e.g. 'site_a-0123456789abcdef'"
        )
    return key


def key_site(key: str) -> str:
    """The site prefix of a valid key."""
    return validate_key(key).rsplit("-", 1)[0]


def make_key(site: str, clip_hash: str) -> str:
    """Build a key from a site name and a 16-hex clip hash (validated)."""
    return validate_key(f"{validate_site(site)}-{clip_hash}")


def encode_labels(labels: np.ndarray) -> bytes:
    """float32[5] in `TASKS` order (NaN unknown) to 20 little-endian bytes."""
    arr = np.asarray(labels, dtype=np.float64)
    if arr.shape != (len(TASKS),):
        raise ValueError(
            f"labels must have shape ({len(TASKS)},) in order {TASKS}, got {arr.shape}"
        )
    return arr.astype(LABEL_DTYPE).tobytes()


def decode_labels(data: bytes) -> np.ndarray:
    """20 little-endian bytes to a native float32[5] array (NaN unknown)."""
    if len(data) != LABEL_BYTES:
        raise ValueError(
            f"labels must be {LABEL_BYTES} bytes (float32[{len(TASKS)}]), got {len(data)}"
        )
    return np.frombuffer(data, dtype=LABEL_DTYPE).astype(np.float32)


def encode_meta(key: str, meta: dict) -> bytes:
    """The ``KEY.json`` bytes: ``key`` first, the rest sorted, compact UTF-8 (deterministic)."""
    if meta.get("key", key) != key:
        raise ValueError(f"meta['key'] is {meta['key']!r} but the sample key is {key!r}")
    body = {k: v for k, v in sorted(meta.items()) if k != "key"}
    return json.dumps({"key": key, **body}, separators=(",", ":"), allow_nan=False).encode()


def decode_meta(data: bytes) -> dict:
    """Parse ``KEY.json`` bytes."""
    meta = json.loads(data.decode("utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("sample json must be an object")
    return meta


def split_member_name(name: str) -> tuple[str, str]:
    """``"site-abc.labels"`` -> ``("site-abc", "labels")``: split at the first dot, as DALI does."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".")
    if dot <= 0:
        raise ValueError(f"tar member {name!r} has no '<key>.<ext>' form")
    prefix = name[: len(name) - len(base)]
    return prefix + base[:dot], base[dot + 1 :]


def shard_name(split: str, number: int) -> str:
    """``('train', 3)`` -> ``'train-000003.tar'``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{split}-{number:06d}.tar"


def index_name(tar_name: str) -> str:
    """``'train-000003.tar'`` -> ``'train-000003.idx'``."""
    if not tar_name.endswith(".tar"):
        raise ValueError(f"not a tar name: {tar_name!r}")
    return tar_name[: -len(".tar")] + ".idx"
