"""The hospitals of the synthetic cohort: which patients each one sees and on which machines.

A multi-site study pools exports of several hospitals, and they differ most visibly in their
machines: each buys from one or two vendors, so canvas size, codec, colour model, scan
conversion and whether the sector is recorded shift with the site. That is what external
validation (train without a site, test on it) has to survive, so the cohort gives every patient
one site and draws each study's machine from that site's own mix.

The site mixes are chosen so that the cohort's overall machine shares stay those of
``vendors.py`` (within a percentage point; the size and time budget depend on them), and the
site of a patient is drawn from its own generator (``[seed, index, 4]``), so every other draw of
the patient is what it was before sites existed. Nothing about a site touches a label: patients
of every site have the same label model, so a model can gain nothing by recognising the site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Site:
    """One hospital: its name as ingest's ``--site`` takes it, how it writes its name into the
    DICOM header (machines are configured by hand, so the spelling varies), its share of the
    cohort's patients and its machine mix (vendor key -> share of its studies)."""

    key: str
    institutions: tuple[str, ...]
    share: float
    vendors: dict[str, float]


SITES: tuple[Site, ...] = (
    Site(key="northfield", share=0.40,
         institutions=("NORTHFIELD HEART CENTRE", "NORTHFIELD HEART CTR", "NHC ECHO LAB"),
         vendors={"elara": 0.70, "halcyon": 0.20, "corvid": 0.10}),
    Site(key="riverside", share=0.35,
         institutions=("RIVERSIDE UNIVERSITY HOSPITAL", "RIVERSIDE UNIV HOSP", "RUH CARDIOLOGY"),
         vendors={"aurelia": 0.55, "elara": 0.30, "borealis": 0.15}),
    # The one site whose main machine (delphi: 768x1024, no region sequence) no other site has.
    Site(key="st_elsewhere", share=0.25,
         institutions=("ST ELSEWHERE GENERAL HOSPITAL", "ST ELSEWHERE GEN HOSP", "SEGH ECHO"),
         vendors={"delphi": 0.40, "elara": 0.30, "halcyon": 0.14, "aurelia": 0.12,
                  "corvid": 0.04}),
)

SITE_BY_KEY: dict[str, Site] = {s.key: s for s in SITES}


def draw_site(seed: int, index: int) -> Site:
    """Patient ``index``'s site, from its own generator (module docstring)."""
    rng = np.random.default_rng([seed, index, 4])
    shares = np.array([s.share for s in SITES])
    return SITES[int(rng.choice(len(SITES), p=shares / shares.sum()))]


def site_vendor_shares(site: Site, keys: list[str]) -> list[float]:
    """The site's machine shares in the order of ``keys`` (0 for machines it does not have)."""
    total = sum(site.vendors.values())
    return [site.vendors.get(k, 0.0) / total for k in keys]
