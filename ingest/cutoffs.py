"""Local reference ranges: which cut-off turns a T1 or T2 value into a label.

Normal T1 and T2 depend on the field strength and on the mapping sequence (MOLLI, ShMOLLI and
SASHA give systematically different native T1), and SCMR advises every site to use its own
reference ranges. ``labels.t1_cutoff_ms`` / ``t2_cutoff_ms`` hold one-sided defaults per field
strength; ``labels.cutoff_rules`` (`CutoffRule`) refine them per sequence and per site, one-sided
(``high``: above is abnormal) or two-sided (``low`` and ``high``: below ``low`` or above ``high``).

The cut-off of a row of task T (t1, t2) in an ingest of site X, whose field strength matches the
configured field strength F (nearest key of the default table within
``field_strength_tolerance_t``) and whose sequence cell names S, is the first that exists of:

1. the rule for (T, F, S) of site X;
2. the rule for (T, F, S) of every site;
3. only when the row names no sequence, or no rule of site X or of every site names a sequence
   for (T, F): the rule for (T, F) without a sequence of site X, then that of every site, then
   the default ``T_cutoff_ms[F]``.

Otherwise there is none: a row that names a sequence without a cut-off at its field strength is
unknown (NaN, counted), never normal; so is a row whose field strength is unknown or matches no
configured one. A sequence column is read only for a task that has sequence rules; its cells are
normalised (`normalise_sequence`: ``"MOLLI"``, ``"molli 5(3)3"`` and ``"MOLLI 5s(3s)3s"`` are all
``molli``), and a cell naming no known sequence is an error or, with
``unknown_sequences: warn``, counted and unknown.

`RuleSet.fingerprint` hashes the ranges in effect for a site; ingest records it in
``stats.json["label_rules"]`` so that a reshard or a later ingest can tell that a site's cut-offs
changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from echocmr.config import ConfigError


class CutoffRule(Protocol):
    """What this module reads of a rule (`ingest.config.CutoffRule`, which imports this module:
    the config is validated here, so the dependency runs config -> cutoffs only)."""

    task: str
    field_strength_t: float
    high: float
    low: float | None
    sequence: str | None
    site: str | None

    def describe(self) -> str: ...


class LabelConfig(Protocol):
    """What this module reads of the label section (`ingest.config.LabelConfig`)."""

    t1_cutoff_ms: Mapping[float, float]
    t2_cutoff_ms: Mapping[float, float]
    ecv_cutoff_pct: float
    field_strength_tolerance_t: float
    cutoff_rules: Sequence[CutoffRule]
    sequence_aliases: Mapping[str, str]

RULE_TASKS: tuple[str, ...] = ("t1", "t2")
UNITS = {"t1": "ms", "t2": "ms", "ecv": "%"}

# Built-in sequence names, and the patterns (on the cell lower-cased with every character but
# letters, digits and brackets removed) that mean them. A site's other spellings, and sequences
# not listed, go in ``labels.sequence_aliases``.
_BUILTIN: dict[str, dict[str, str]] = {
    "t1": {
        "molli": r"molli(\d.*|\(.*)?",  # molli, molli5(3)3, molli533, molli5s(3s)3s, molli4(1)3(1)2
        "shmolli": r"shmolli",
        "sasha": r"sasha",
        "sapphire": r"sapphire",
    },
    "t2": {
        "t2prep_bssfp": r"t2prep(b)?ssfp",
        "t2prep_gre": r"t2prep(gre|flash)",
        "grase": r"(t2)?grase",
        "mese": r"(t2)?(mese|multiechospinecho)",
    },
}


def _spelling(text: str) -> str:
    """``"Sh-MOLLI 5(3)3"`` -> ``"sh_molli_5(3)3"``: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9()]+", "_", str(text).strip().lower()).strip("_")


def normalise_sequence(text, task: str, aliases: dict[str, str] | None = None) -> str | None:
    """The sequence name a cell (or a rule) means; None for an empty cell.

    A site's alias wins; then the built-in names of ``task``; otherwise the cell's own spelling
    (lower case, ``_`` between words), which is a known name only if an alias maps to it.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    spelled = _spelling(text)
    if spelled in ("", "nan", "na", "n_a", "none", "unknown"):
        return None
    for key, value in (aliases or {}).items():
        if _spelling(key) == spelled:
            return _spelling(value)
    compact = re.sub(r"[^a-z0-9()]", "", spelled)
    for name, pattern in _BUILTIN[task].items():
        if re.fullmatch(pattern, compact):
            return name
    return spelled


def known_sequences(task: str, aliases: dict[str, str] | None = None) -> set[str]:
    """The names ``task``'s rules and cells may use: built-in ones and those aliases map to."""
    return set(_BUILTIN[task]) | {_spelling(v) for v in (aliases or {}).values()}


def check_rules(config: LabelConfig) -> None:
    """Raise `ConfigError` for a rule at a field strength without a default, a sequence with
    no known name, or two rules for the same rows (`LabelConfig.__post_init__`)."""
    seen: dict[tuple, CutoffRule] = {}
    for alias, name in config.sequence_aliases.items():
        if not _spelling(alias) or not _spelling(name):
            raise ConfigError(f"labels.sequence_aliases: {alias!r}: {name!r} is empty",
                              key="labels.sequence_aliases")
    for rule in config.cutoff_rules:
        where = f"labels.cutoff_rules: rule {rule.describe()}"
        defaults = _defaults(config, rule.task)
        field_t = _field_key(defaults, rule.field_strength_t)
        if field_t is None:
            raise ConfigError(
                f"{where}: field strength {rule.field_strength_t:g} T is not one of "
                f"labels.{rule.task}_cutoff_ms's ({', '.join(f'{f:g}' for f in sorted(defaults))}"
                f" T); give that field strength a default there first", key="labels.cutoff_rules")
        sequence = normalise_sequence(rule.sequence, rule.task, config.sequence_aliases)
        known = known_sequences(rule.task, config.sequence_aliases)
        if sequence is not None and sequence not in known:
            raise ConfigError(
                f"{where}: sequence {rule.sequence!r} is not a known {rule.task} sequence "
                f"({', '.join(sorted(known))}); name a new one in labels.sequence_aliases "
                f"(e.g. {{{rule.sequence!r}: {_spelling(rule.sequence)!r}}})",
                key="labels.cutoff_rules")
        key = (rule.task, field_t, sequence, rule.site)
        if key in seen:
            raise ConfigError(f"{where}: two rules for the same rows ({seen[key]} and {rule})",
                              key="labels.cutoff_rules")
        seen[key] = rule


def _defaults(config: LabelConfig, task: str) -> dict[float, float]:
    return {"t1": config.t1_cutoff_ms, "t2": config.t2_cutoff_ms}[task]


def _field_key(fields, field_t: float, tolerance: float = 1e-9) -> float | None:
    """The configured field strength nearest to ``field_t`` within ``tolerance``, else None."""
    if field_t is None or math.isnan(field_t) or not fields:
        return None
    nearest = min(fields, key=lambda f: (abs(f - field_t), f))
    return float(nearest) if abs(nearest - field_t) <= tolerance else None


@dataclass(frozen=True)
class Range:
    """One cut-off in effect: abnormal above ``high``, or below ``low`` when given."""

    task: str
    high: float
    low: float | None
    name: str  # which rows, and where it came from: "t1 1.5 T molli (site a)"

    def label(self, value: float) -> float:
        """1.0 abnormal, 0.0 normal, NaN for a missing value."""
        if math.isnan(value):
            return math.nan
        return 1.0 if value > self.high or (self.low is not None and value < self.low) else 0.0

    def describe(self) -> str:
        """``"t1 1.5 T molli (site a): abnormal < 900 or > 1100 ms"`` (what the summary counts)."""
        unit = UNITS[self.task]
        bounds = (f"< {self.low:g} or > {self.high:g}" if self.low is not None
                  else f"> {self.high:g}")
        return f"{self.name}: abnormal {bounds} {unit}"

    def content(self) -> list:
        return [self.low, self.high]


class RuleSet:
    """The cut-offs in effect for an ingest of ``site`` (see the module docstring)."""

    def __init__(self, config: LabelConfig, site: str | None = None) -> None:
        self.config = config
        self.site = site
        self.aliases = dict(config.sequence_aliases)
        # task -> field -> sequence (None: rows that name none) -> Range
        self._ranges: dict[str, dict[float, dict[str | None, Range]]] = {}
        for task in RULE_TASKS:
            by_field = self._ranges[task] = {}
            for field_t, high in _defaults(config, task).items():
                by_field[float(field_t)] = {None: Range(task, float(high), None,
                                                        f"{task} {field_t:g} T default")}
            # every site first, then this site's: a later entry replaces an earlier one
            rules = [r for r in config.cutoff_rules if r.task == task and r.site is None]
            rules += [r for r in config.cutoff_rules
                      if r.task == task and r.site is not None and r.site == site]
            for rule in rules:
                field_t = _field_key(by_field, rule.field_strength_t)
                if field_t is None:  # a config changed after it was checked
                    raise ConfigError(f"labels.cutoff_rules: rule {rule.describe()}: no default "
                                      f"in labels.{task}_cutoff_ms at that field strength",
                                      key="labels.cutoff_rules")
                sequence = normalise_sequence(rule.sequence, task, self.aliases)
                name = f"{task} {field_t:g} T" + (f" {sequence}" if sequence else "")
                name += f" (site {rule.site})" if rule.site is not None else " (rule)"
                by_field[field_t][sequence] = Range(task, rule.high, rule.low, name)
        self.ecv = Range("ecv", float(config.ecv_cutoff_pct), None, "ecv default")

    def has_sequence_rules(self, task: str) -> bool:
        """True if some rule in effect names a sequence for ``task`` (its column is read)."""
        return any(s is not None for ranges in self._ranges[task].values() for s in ranges)

    def known_sequences(self, task: str) -> set[str]:
        return known_sequences(task, self.aliases)

    def normalise(self, text, task: str) -> str | None:
        return normalise_sequence(text, task, self.aliases)

    def resolve(self, task: str, field_t: float, sequence: str | None) -> tuple[Range | None, str]:
        """The range for a row (or None) and, when there is none, why (for the count)."""
        by_field = self._ranges[task]
        if field_t is None or math.isnan(field_t):
            return None, "no field strength"
        key = _field_key(by_field, field_t, self.config.field_strength_tolerance_t)
        if key is None:
            return None, f"field strength {field_t:g} T matches no configured one"
        ranges = by_field[key]
        if sequence is not None and sequence in ranges:
            return ranges[sequence], ""
        if sequence is None or all(s is None for s in ranges):
            return ranges[None], ""
        return None, f"sequence {sequence!r} has no cut-off at {key:g} T"

    def content(self) -> dict:
        """What the labels were derived with (JSON-able; what `fingerprint` hashes)."""
        return {
            "field_strength_tolerance_t": self.config.field_strength_tolerance_t,
            "ecv": self.ecv.content(),
            **{task: {f"{field_t:g}": {("*" if s is None else s): r.content()
                                       for s, r in sorted(ranges.items(),
                                                          key=lambda kv: kv[0] or "")}
                      for field_t, ranges in sorted(by_field.items())}
               for task, by_field in self._ranges.items()},
            "sequence_aliases": {_spelling(k): _spelling(v)
                                 for k, v in sorted(self.aliases.items())},
        }

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over `content`: equal for equal cut-offs, whatever the site."""
        blob = json.dumps(self.content(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
