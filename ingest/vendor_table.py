"""Which vendor made the machine that recorded a clip: the DICOM Manufacturer (0008,0070), or
failing that the Manufacturer's Model Name (0008,1090), mapped to a name of the vendor vocabulary
(`shards.format.VENDORS`).

Both tags are free text typed in by whoever set up the machine, so they never leave ingest: only
the vocabulary name does (KEY.json ``vendor``, the manifest, stats.json's ``view_mix``, the
report, the summary). A tag is compared as `spelling` writes it (``"GE Vingmed Ultrasound"`` ->
``ge_vingmed_ultrasound``) with the alias table: the built-in spellings below, then a site's own
(``vendors.aliases``, which win over a built-in of the same spelling). An alias matches when it
is a whole run of words of the tag (``ge`` in ``ge_vingmed_ultrasound``, never in
``general``); when aliases of several vendors match, the longest (in words) decides, and a tie
between vendors is no match. The Manufacturer is read first; the model name helps when the
Manufacturer says nothing the table knows (``Vivid E95`` is GE's).

The outcome: a vendor of the vocabulary; ``other`` when a tag is there but nothing matches (a
machine the table does not know: add an alias, docs/views.md); ``unknown`` when the file has
neither tag, or only a model name the table does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from echocmr.config import ConfigError
from echocmr.ingest.view_table import spelling
from echocmr.shards.format import VENDOR_OTHER, VENDOR_UNKNOWN, VENDORS

# Built-in spellings (as `spelling` writes them) of each vendor's name, its former names and
# the product lines whose names stand in a model name. Each is matched as whole words.
BUILTIN_ALIASES: dict[str, tuple[str, ...]] = {
    "ge": ("ge", "ge_healthcare", "ge_vingmed", "ge_vingmed_ultrasound", "ge_medical_systems",
           "gems", "general_electric", "vingmed", "vivid", "logiq"),
    "philips": ("philips", "philips_medical_systems", "philips_ultrasound", "atl",
                "atl_ultrasound", "agilent", "hewlett_packard", "epiq", "affiniti", "ie33",
                "ie_33", "cx50", "sonos"),
    "siemens": ("siemens", "siemens_healthineers", "siemens_healthcare", "healthineers",
                "acuson", "sequoia"),
    "canon": ("canon", "canon_medical_systems", "toshiba", "toshiba_mec_us", "toshiba_medical",
              "aplio", "artida", "xario"),
    "samsung": ("samsung", "samsung_medison", "medison"),
    "mindray": ("mindray", "shenzhen_mindray", "zonare"),
    "esaote": ("esaote", "mylab"),
    "hitachi": ("hitachi", "aloka", "hitachi_aloka", "hitachi_medical", "prosound", "arietta"),
    "fujifilm": ("fujifilm", "fujifilm_sonosite", "sonosite", "fujifilm_healthcare"),
    "sonoscape": ("sonoscape",),
    "butterfly": ("butterfly", "butterfly_network"),
    # the synthetic cohort's machines (`echocmr synth`, ingest/synth/vendors.py)
    "aurelia": ("aurelia", "aurelia_medical"),
    "borealis": ("borealis", "borealis_imaging"),
    "corvid": ("corvid", "corvid_ultrasound"),
    "delphi": ("delphi", "delphi_echo_systems"),
    "elara": ("elara", "elara_sonics"),
    "halcyon": ("halcyon", "halcyon_diagnostics"),
}
assert set(BUILTIN_ALIASES) == set(VENDORS), "every vendor of the vocabulary has its spellings"


@dataclass(kw_only=True)
class VendorConfig:
    """How the DICOM Manufacturer becomes a vendor (`ingest.vendor_table`)."""

    # A site's own spellings (of a Manufacturer or a model name) -> a vendor of the vocabulary,
    # or "other" ({"Acme Sonics": other, "fujifilm healthcare": hitachi}); compared as spelled.
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for alias, vendor in self.aliases.items():
            if not spelling(alias):
                raise ConfigError(f"vendors.aliases: {alias!r} is empty", key="vendors.aliases")
            if vendor not in (*VENDORS, VENDOR_OTHER):
                raise ConfigError(
                    f"vendors.aliases: {alias!r} maps to {vendor!r}, which is not a vendor; use "
                    f"one of {', '.join(VENDORS)} or {VENDOR_OTHER!r} (docs/formats.md)",
                    key="vendors.aliases")

    def table(self) -> VendorTable:
        """The alias table: the built-in spellings, then the site's (which win)."""
        aliases = {alias: vendor for vendor, spellings in BUILTIN_ALIASES.items()
                   for alias in spellings}
        aliases.update({spelling(alias): vendor for alias, vendor in self.aliases.items()})
        return VendorTable(aliases)


class VendorTable:
    """Spelled alias -> vendor, and `vendor_of` (the module docstring's rules)."""

    def __init__(self, aliases: Mapping[str, str]) -> None:
        self.aliases = dict(aliases)
        self._longest = max((len(a.split("_")) for a in self.aliases), default=1)

    def match(self, text: str | None) -> str | None:
        """The vendor a tag names, None when no alias (or a tie) decides."""
        words = spelling(text or "").split("_")
        for n in range(min(self._longest, len(words)), 0, -1):  # longest aliases first
            found = {self.aliases[run] for i in range(len(words) - n + 1)
                     if (run := "_".join(words[i:i + n])) in self.aliases}
            if len(found) == 1:
                return found.pop()
            if found:
                return None  # two vendors at the same length: ambiguous
        return None

    def vendor_of(self, manufacturer: object, model_name: object = None) -> str:
        """A clip's vendor from its Manufacturer and Manufacturer's Model Name tag values
        (anything pydicom gives: text, a multi-value, None)."""
        maker, model = _text(manufacturer), _text(model_name)
        for text in (maker, model):
            if text:
                vendor = self.match(text)
                if vendor is not None:
                    return vendor
        return VENDOR_OTHER if maker else VENDOR_UNKNOWN


def _text(value: object) -> str:
    """A tag value as text (a multi-value joined), empty when missing."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return " ".join(str(v) for v in value)
    return str(value).strip()
