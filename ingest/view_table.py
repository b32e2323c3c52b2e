"""The views table (``--views``) and the vocabulary its ``view`` cells must come from.

A view reaches every shard's ``KEY.json`` and the manifest, so a cell never goes out as written:
it is a name from `VIEWS` (compared case- and punctuation-blind, with built-in spellings such as
``AP4`` or ``apical 4 chamber`` and a site's own in ``views.aliases``), ``other`` (a view outside
the list, said as such), ``unknown``, or not a view.
A cell that is not a view (free text, a name, a UID from swapped columns) is an error naming the
file, the column and the row, never the cell, which may hold patient text; with
``views.unknown: unknown`` such rows count as ``unknown`` instead, and the summary gives the count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from echocmr.config import ConfigError, check_choices

UNKNOWN_VIEW = "unknown"
OTHER_VIEW = "other"  # a view that is not in `VIEWS`, named as such by the table

# The vocabulary: the standard transthoracic views (ASE), by the name a shard records.
VIEWS: dict[str, str] = {
    "A4C": "apical four-chamber",
    "A2C": "apical two-chamber",
    "A3C": "apical three-chamber (apical long axis)",
    "A5C": "apical five-chamber",
    "PLAX": "parasternal long axis",
    "RVIT": "parasternal right ventricular inflow",
    "PSAX": "parasternal short axis, level not given",
    "PSAX_AV": "parasternal short axis, aortic valve level",
    "PSAX_MV": "parasternal short axis, mitral valve level",
    "PSAX_PM": "parasternal short axis, papillary muscle level",
    "PSAX_APEX": "parasternal short axis, apical level",
    "SC4C": "subcostal four-chamber",
    "SC_IVC": "subcostal inferior vena cava",
    "SSN": "suprasternal notch (aortic arch)",
}

# Common other spellings of the same views (compared as `spelling` writes them).
_BUILTIN_ALIASES: dict[str, tuple[str, ...]] = {
    "A4C": ("4c", "4ch", "a4ch", "ap4", "ap4c", "ap4ch", "apical_4", "apical_4c", "apical_4ch",
            "apical_4_chamber", "apical_four_chamber"),
    "A2C": ("2c", "2ch", "a2ch", "ap2", "ap2c", "ap2ch", "apical_2", "apical_2c", "apical_2ch",
            "apical_2_chamber", "apical_two_chamber"),
    "A3C": ("3c", "3ch", "a3ch", "ap3", "ap3c", "ap3ch", "apical_3", "apical_3c", "apical_3ch",
            "apical_3_chamber", "apical_three_chamber", "aplax", "alax", "apical_long_axis"),
    "A5C": ("5c", "5ch", "a5ch", "ap5", "ap5c", "ap5ch", "apical_5", "apical_5c", "apical_5ch",
            "apical_5_chamber", "apical_five_chamber"),
    "PLAX": ("pslax", "parasternal_long_axis", "parasternal_lax"),
    "RVIT": ("rv_inflow", "rvin", "parasternal_rv_inflow"),
    "PSAX": ("sax", "pssax", "parasternal_short_axis", "parasternal_sax"),
    "PSAX_AV": ("psax_ao", "psax_aortic", "sax_av", "psax_aortic_valve"),
    "PSAX_MV": ("psax_mitral", "sax_mv", "psax_mitral_valve"),
    "PSAX_PM": ("psax_pap", "psax_papillary", "sax_pm", "psax_mid"),
    "PSAX_APEX": ("psax_apical", "sax_apex", "psax_ap"),
    "SC4C": ("s4c", "sub4c", "subcostal", "subcostal_4c", "subcostal_4_chamber",
             "subcostal_four_chamber", "subxiphoid"),
    "SC_IVC": ("ivc", "subcostal_ivc", "sc_ivc"),
    "SSN": ("suprasternal", "suprasternal_notch", "ssn_arch"),
}


def spelling(text: str) -> str:
    """``"Apical 4-Chamber"`` -> ``"apical_4_chamber"``: lower case, runs of other characters
    as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).strip().lower()).strip("_")


@dataclass(kw_only=True)
class ViewConfig:
    """How ``--views`` cells become views (`ingest.view_table`)."""

    # A site's own names -> a name of the vocabulary ({"4 kammer": "A4C"}); compared as spelled.
    aliases: dict[str, str] = field(default_factory=dict)
    # A cell that is not a view: "error" (naming file, column and row), or "unknown" (counted).
    unknown: Literal["error", "unknown"] = "error"

    def __post_init__(self) -> None:
        check_choices(self, "views.")
        names = {spelling(v): v for v in VIEWS}
        for alias, name in self.aliases.items():
            if not spelling(alias):
                raise ConfigError(f"views.aliases: {alias!r} is empty", key="views.aliases")
            if spelling(name) not in names:
                raise ConfigError(f"views.aliases: {alias!r} maps to {name!r}, which is not a "
                                  f"view; use one of {', '.join(VIEWS)}", key="views.aliases")

    def lookup(self) -> dict[str, str]:
        """Spelled cell -> view name: the vocabulary, the built-in spellings, then the site's."""
        table = {spelling(v): v for v in VIEWS}
        table[UNKNOWN_VIEW] = UNKNOWN_VIEW
        table[OTHER_VIEW] = OTHER_VIEW
        for view, spellings in _BUILTIN_ALIASES.items():
            table.update({s: view for s in spellings})
        names = {spelling(v): v for v in VIEWS}
        table.update({spelling(a): names[spelling(v)] for a, v in self.aliases.items()})
        return table


@dataclass
class ViewTable:
    """SOP Instance UID -> view, and how many rows named no known view (``views.unknown:
    unknown``: those clips are ``unknown``)."""

    views: dict[str, str] = field(default_factory=dict)
    unknown_rows: int = 0


def read_views(path: str | None, config: ViewConfig | None = None) -> ViewTable:
    """The ``--views`` table (CSV or Parquet with ``sop_instance_uid, view``), every view cell a
    name of the vocabulary (see the module docstring). An empty cell leaves its clip ``unknown``.

    Raises ValueError naming the file, the column and the (1-based) row of the first cell that is
    not a view, and how many such rows there are; never the cell.
    """
    if path is None:
        return ViewTable()
    import pandas as pd

    config = config or ViewConfig()
    if str(path).lower().endswith((".parquet", ".pq")):
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"sop_instance_uid", "view"} - set(table.columns)
    if missing:
        raise ValueError(f"views file {path}: missing column(s) {sorted(missing)}; "
                         "expected 'sop_instance_uid,view'")
    lookup = config.lookup()
    out, bad_rows = ViewTable(), []
    for row, (uid, cell) in enumerate(zip(table["sop_instance_uid"], table["view"], strict=True),
                                      start=1):
        uid, cell = _text(uid), _text(cell)
        if not uid or not cell:
            continue
        view = lookup.get(spelling(cell))
        if view is None:
            bad_rows.append(row)
        elif view != UNKNOWN_VIEW:
            out.views[uid] = view
    if bad_rows and config.unknown == "error":
        more = f" (and {len(bad_rows) - 1} more row(s))" if len(bad_rows) > 1 else ""
        raise ValueError(
            f"views file {path}: column 'view', row {bad_rows[0]}{more}: not a view (the cell is "
            f"not shown: it may hold patient text). A view is one of {', '.join(VIEWS)}, "
            f"'{OTHER_VIEW}' or '{UNKNOWN_VIEW}' (docs/ingest.md lists the spellings understood); "
            "map a site's own names in views.aliases, or set views.unknown: unknown to count such "
            "rows as unknown")
    out.unknown_rows = len(bad_rows)
    return out


def _text(value) -> str:
    """A cell as stripped text; empty for a missing value (NaN, None, "nan", "none")."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("nan", "none") else text
