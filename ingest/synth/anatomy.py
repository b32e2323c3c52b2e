"""View geometry of the heart: where the chambers, walls and valves sit in each standard view.

Each view is a handful of shapes in the probe's physical frame (cm; x to the screen's right, y with
depth): the left ventricle (LV) as an elongated ellipse that contracts wall by wall, the other
chambers and the aortic root as ellipses that pulse with the cycle, and valve leaflets as hinged
segments. The LV carries its own frame: ``e1`` points from its centre to the apex, ``e2`` to the
screen-right wall in apical views (lateral in A4C, anterior in A2C) and up (anteroseptal) in PLAX.
An angle ``phi`` around the LV centre in that frame names the wall segments: 0 is the apex, +-pi the
base (mitral opening).

Which coronary territory shows in which view follows the 17-segment model: the LAD (anterior,
septal, apical walls) in all three views, the RCA (inferior, basal inferoseptal) in A4C and A2C, the
LCx (lateral, inferolateral) in A4C and PLAX. A WMA in a territory a view does not show is a label
without pixel signal for that clip, as in real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VIEWS = ("A4C", "A2C", "PLAX")  # the study's target views
# Views a sonographer records that are not targets: the parasternal short axis at the
# mid-papillary level (the LV in cross-section). Cohorts hold them so a view classifier has
# something to refuse (ingest labels them ``other``).
NON_TARGET_VIEWS = ("PSAX",)
ALL_VIEWS = VIEWS + NON_TARGET_VIEWS

# territory -> (phi centre, half width) of the abnormal segment, per view; absent = not visible.
TERRITORY_WINDOWS: dict[str, dict[str, tuple[float, float]]] = {
    "A4C": {"LAD": (-0.5, 1.2), "RCA": (-2.2, 0.9), "LCX": (1.85, 1.0)},
    "A2C": {"LAD": (0.85, 1.2), "RCA": (-1.85, 1.0)},
    "PLAX": {"LAD": (1.55, 1.2), "LCX": (-1.6, 1.15)},
    # PSAX, mid level: phi 0 anterior (toward the probe), +pi/2 lateral (screen right), -pi/2
    # septal; every territory crosses this plane.
    "PSAX": {"LAD": (-0.45, 1.0), "RCA": (-2.5, 0.9), "LCX": (1.95, 0.95)},
}

# Echogenicity (before speckle) of the tissue classes; scaled per clip.
BLOOD = 0.025
PERICARDIUM = 0.95


def wma_visible(territory: str, view: str) -> bool:
    """Whether an abnormal wall in ``territory`` lies in the plane of ``view``."""
    return bool(territory) and territory in TERRITORY_WINDOWS[view]


@dataclass(kw_only=True)
class HeartParams:
    """One patient's heart: size, contraction, and the wall motion abnormality if any."""

    half_length_cm: float  # LV end-diastolic half length (apex to base / 2)
    half_width_cm: float  # LV end-diastolic half width
    wall_cm: float  # myocardial thickness at end-diastole
    shortening: float  # inward motion of a normal mid wall at end-systole (EF proxy)
    thickening: float  # systolic wall thickening of a normal wall (fraction)
    territory: str = ""  # "" = no WMA
    severity: float = 0.0  # 1 = akinetic, < 1 hypokinetic, > 1 dyskinetic
    extent: float = 1.0  # width of the abnormal segment relative to its territory
    thinning: float = 0.0  # end-diastolic wall thinning of the abnormal segment (old infarct)


def draw_heart(rng: np.random.Generator, *, territory: str, severity: float,
               extent: float) -> HeartParams:
    """A patient's heart. Size and contraction vary independently of every label, except that a
    heart with a wall motion abnormality pumps a little less overall (as after an infarct)."""
    global_function = float(rng.uniform(0.65, 0.9)) if territory else 1.0
    remodelling = float(rng.uniform(1.0, 1.12)) if territory else 1.0  # a dilated LV
    return HeartParams(
        half_length_cm=float(rng.uniform(3.5, 4.7)) * remodelling,
        half_width_cm=float(rng.uniform(1.8, 2.6)) * remodelling,
        wall_cm=float(rng.uniform(0.8, 1.2)),
        shortening=float(rng.uniform(0.22, 0.38)) * global_function,
        thickening=float(rng.uniform(0.3, 0.55)),
        territory=territory,
        severity=severity,
        extent=extent,
        thinning=float(rng.uniform(0.15, 0.45)) if territory else 0.0,
    )


@dataclass(kw_only=True)
class Ellipse:
    """A chamber or vessel: a dark cavity inside a wall band, pulsing with the cycle."""

    centre: np.ndarray  # (x, y) cm
    axis: np.ndarray  # unit vector of the ``a`` axis
    a: float
    b: float
    wall: float  # cm
    pulse: float  # relative size change at end-systole (+ fills in systole, - empties)
    echo: float = 0.45  # wall echogenicity
    gap_dir: float = 0.0  # angle (in the ellipse frame) of the opening without a wall
    gap_half: float = 0.0  # half width of that opening (rad); 0 = closed wall


@dataclass(kw_only=True)
class LeftVentricle:
    """The LV in its end-diastolic pose (the reference frame of its tissue)."""

    centre: np.ndarray
    e1: np.ndarray  # centre -> apex
    a: float
    b: float
    wall: float
    gap_half: float  # half width of the base opening (mitral / outflow), rad
    pericardium: list[tuple[float, float]] = field(default_factory=list)  # phi ranges
    window: tuple[float, float] | None = None  # abnormal segment (phi centre, half width)

    @property
    def e2(self) -> np.ndarray:
        return np.array([-self.e1[1], self.e1[0]])

    def point(self, along: float, across: float) -> np.ndarray:
        """Physical point at ``along`` cm on e1 and ``across`` cm on e2 from the centre."""
        return self.centre + along * self.e1 + across * self.e2


@dataclass(kw_only=True)
class Layout:
    view: str
    lv: LeftVentricle
    chambers: list[Ellipse]
    aortic_valve: tuple[np.ndarray, np.ndarray] | None = None  # two hinge points (PLAX)
    mitral_valve: bool = True  # False in PSAX: the mid-papillary plane cuts no leaflet
    long_axis: bool = True  # False in PSAX: every wall moves alike (no apex, no base)


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def draw_layout(rng: np.random.Generator, view: str, heart: HeartParams) -> Layout:
    """The heart as this clip's probe position sees it (tilt, offset, foreshortening vary)."""
    if view not in ALL_VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {ALL_VIEWS}")
    if view == "PSAX":
        return _psax_layout(rng, heart)
    wall = heart.wall_cm
    if view in ("A4C", "A2C"):
        a = heart.half_length_cm * rng.uniform(0.85, 1.0)  # foreshortened apex
        b = heart.half_width_cm * rng.uniform(0.95, 1.05)
        tilt = rng.uniform(0.08, 0.3) if view == "A4C" else rng.uniform(-0.12, 0.15)
        e1 = np.array([-np.sin(tilt), -np.cos(tilt)])  # the apex is up, toward the probe
        apex_epi = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.9, 2.2)])
        lv = LeftVentricle(centre=apex_epi - (a + wall) * e1, e1=e1, a=a, b=b, wall=wall,
                           gap_half=0.55)
    else:  # PLAX: the long axis runs across the screen, apex to the left, septum on top
        a = heart.half_length_cm * rng.uniform(0.9, 1.05)
        b = heart.half_width_cm * rng.uniform(0.95, 1.05)
        tilt = rng.uniform(0.05, 0.3)
        e1 = np.array([-np.cos(tilt), np.sin(tilt)])
        centre = np.array([rng.uniform(-2.8, -1.7), rng.uniform(4.0, 4.8) + wall + b])
        lv = LeftVentricle(centre=centre, e1=e1, a=a, b=b, wall=wall, gap_half=0.8)
    window = TERRITORY_WINDOWS[view].get(heart.territory)
    if window is not None:
        jitter = rng.normal(0.0, 0.12)  # the probe never cuts the same plane twice
        lv.window = (window[0] + jitter, window[1] * heart.extent)
    e2 = lv.e2
    axis_angle = float(np.arctan2(e1[1], e1[0]))
    chambers: list[Ellipse] = []
    aortic_valve = None
    if view == "A4C":
        rv_a, rv_b = 0.8 * a, rng.uniform(0.55, 0.75) * b
        rv_c = lv.point(-0.05 * a, -(b + wall + rv_b + 0.05))
        chambers.append(Ellipse(centre=rv_c, axis=e1, a=rv_a, b=rv_b, wall=0.4, pulse=-0.12,
                                gap_dir=np.pi, gap_half=0.5))
        la_a, la_b = rng.uniform(1.7, 2.4), rng.uniform(1.5, 2.1)
        chambers.append(Ellipse(centre=lv.point(-(a + la_a + 0.15), 0.1), axis=e1, a=la_a,
                                b=la_b, wall=0.3, pulse=0.1, gap_dir=0.0, gap_half=0.6))
        ra_a, ra_b = rng.uniform(1.6, 2.2), rng.uniform(1.4, 1.9)
        ra_across = 0.1 - la_b - 0.35 - ra_b  # the interatrial septum is ~3.5 mm thick
        chambers.append(Ellipse(centre=lv.point(-(a + ra_a + 0.2), ra_across),
                                axis=e1, a=ra_a, b=ra_b, wall=0.3, pulse=0.1, gap_dir=0.0,
                                gap_half=0.5))
        lv.pericardium = [(0.35, 2.5)]
    elif view == "A2C":
        la_a, la_b = rng.uniform(1.7, 2.4), rng.uniform(1.5, 2.1)
        chambers.append(Ellipse(centre=lv.point(-(a + la_a + 0.15), rng.uniform(-0.3, 0.3)),
                                axis=e1, a=la_a, b=la_b, wall=0.3, pulse=0.1, gap_dir=0.0,
                                gap_half=0.6))
        lv.pericardium = [(0.35, 2.5), (-2.5, -0.35)]
    else:
        rv_b = rng.uniform(0.7, 1.1)
        chambers.append(Ellipse(centre=lv.point(0.1 * a, b + wall + rv_b + 0.05), axis=e1,
                                a=1.1 * a, b=rv_b, wall=0.45, pulse=-0.1))
        # the aorta leaves the base toward the screen's right, rising a little toward the probe
        ao_dir = _unit(axis_angle + np.pi - rng.uniform(-0.05, 0.15))
        ao_a, ao_b = rng.uniform(2.0, 2.6), rng.uniform(0.75, 0.95)
        ao_c = lv.point(-(a + 0.6 * ao_a), 0.5 * b)
        chambers.append(Ellipse(centre=ao_c, axis=ao_dir, a=ao_a, b=ao_b, wall=0.25,
                                pulse=0.06, echo=0.7, gap_dir=np.pi, gap_half=0.9))
        ao_n = np.array([-ao_dir[1], ao_dir[0]])
        if ao_n @ e2 < 0:
            ao_n = -ao_n
        la_a, la_b = rng.uniform(1.6, 2.1), rng.uniform(1.4, 1.8)
        chambers.append(Ellipse(centre=ao_c + 0.2 * ao_dir - (ao_b + 0.25 + la_b + 0.1) * ao_n,
                                axis=ao_dir, a=la_a, b=la_b, wall=0.3, pulse=0.1,
                                gap_dir=np.pi, gap_half=0.7))
        hinge = ao_c - 0.55 * ao_a * ao_dir
        aortic_valve = (hinge + ao_b * ao_n, hinge - ao_b * ao_n)
        lv.pericardium = [(-2.7, -0.4)]
    return Layout(view=view, lv=lv, chambers=chambers, aortic_valve=aortic_valve)


def _psax_layout(rng: np.random.Generator, heart: HeartParams) -> Layout:
    """Parasternal short axis at the papillary muscles: a round LV with the RV as a crescent on
    its anterior-septal side (screen top-left), no valve in the plane."""
    wall = heart.wall_cm
    r = heart.half_width_cm * rng.uniform(0.95, 1.08)
    a, b = r * rng.uniform(0.95, 1.05), r * rng.uniform(0.95, 1.05)
    tilt = rng.uniform(-0.25, 0.25)
    e1 = np.array([np.sin(tilt), -np.cos(tilt)])  # anterior: up, toward the probe
    centre = np.array([rng.uniform(-0.8, 0.8), rng.uniform(3.2, 4.2) + wall + b])
    lv = LeftVentricle(centre=centre, e1=e1, a=a, b=b, wall=wall, gap_half=0.0)
    window = TERRITORY_WINDOWS["PSAX"].get(heart.territory)
    if window is not None:
        jitter = rng.normal(0.0, 0.12)
        lv.window = (window[0] + jitter, window[1] * heart.extent)
    lv.pericardium = [(0.9, 2.9)]
    # The RV wraps the septum: an ellipse centred up and left of the LV, long axis tangential.
    toward = float(np.arctan2(e1[1], e1[0])) - rng.uniform(0.55, 0.85)  # rotate toward septum
    out = _unit(toward)
    rv_b = rng.uniform(0.6, 0.9)
    rv_a = rng.uniform(1.15, 1.45) * r
    chambers = [Ellipse(centre=centre + (r + wall + 0.2) * out, axis=np.array([-out[1], out[0]]),
                        a=rv_a, b=rv_b, wall=0.4, pulse=-0.12)]
    return Layout(view="PSAX", lv=lv, chambers=chambers, mitral_valve=False, long_axis=False)
