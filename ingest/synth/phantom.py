"""The echo phantom: B-mode frames of a beating heart on the probe's polar grid.

Each frame is rendered on the sector's beams x depths (see ``sector.py``), in three steps:

1. *Anatomy* (``anatomy.py``) gives each sample an echogenicity: dark blood, bright myocardium and
   pericardium, mid-grey surrounding tissue, thin bright valve leaflets.
2. *Motion*: every LV wall moves inward and thickens with the cardiac cycle (``cycle.py``), by its
   own amount. A wall motion abnormality multiplies the motion of one segment by
   ``1 - severity`` (hypokinetic, akinetic, or dyskinetic when it bulges out), takes its
   thickening away and leaves it thinner (an old infarct). Normal hearts get a smooth random
   regional unevenness too, so that a weak wall alone does not give the label away.
3. *Image formation*: the echogenicity times a speckle texture that moves with the tissue (each
   sample looks up the texture at its end-diastolic position, so the speckle can be tracked), a
   little frame-to-frame speckle decorrelation, depth gain, near-field clutter, an occasional rib
   or lung shadow, electronic noise, log-like compression and a reject level that turns the
   blood pools black.

All randomness is drawn in ``__init__`` from the clip's generator except the per-frame noise, which
comes from the same generator in frame order, so a clip is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from echocmr.ingest.synth.anatomy import BLOOD, PERICARDIUM, HeartParams, Layout, draw_layout
from echocmr.ingest.synth.cycle import Cycle
from echocmr.ingest.synth.sector import SectorGeometry

_TEX_RES_CM = 0.05  # speckle texture cell


@dataclass(kw_only=True)
class PhantomConfig:
    """Difficulty knobs: how much nuisance hides the wall motion signal."""

    regional_unevenness: float = 0.10  # amplitude of normal segment-to-segment motion variation
    speckle_decorrelation: tuple[float, float] = (0.05, 0.2)  # per-frame speckle change
    noise_sigma: tuple[float, float] = (0.01, 0.04)  # electronic noise, fraction of full scale
    clutter: tuple[float, float] = (0.0, 0.35)  # near-field haze over the apex
    p_shadow: float = 0.35  # chance of a rib/lung shadow over some beams


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _window(phi: np.ndarray, centre: float, half: float, flat: float = 0.0) -> np.ndarray:
    """Weight of angle ``phi`` around ``centre`` (wraps at +-pi): 1 within ``flat * half``, then
    a raised-cosine taper to 0 at ``half``."""
    d = np.abs(np.angle(np.exp(1j * (phi - centre))))
    x = np.clip((d - flat * half) / max((1.0 - flat) * half, 1e-9), 0.0, 1.0)
    return np.where(d < half, 0.5 + 0.5 * np.cos(np.pi * x), 0.0)


def _uneven(rng: np.random.Generator, phi: np.ndarray) -> np.ndarray:
    """A smooth random function of the angle, mostly within [-1, 1] (three harmonics)."""
    k = rng.normal(0.0, 1.0, 6)
    f = sum(k[2 * i] * np.cos((i + 1) * phi) + k[2 * i + 1] * np.sin((i + 1) * phi)
            for i in range(3)) / 3.0
    return np.clip(f, -1.5, 1.5)


def _in_ranges(phi: np.ndarray, ranges: list[tuple[float, float]]) -> np.ndarray:
    out = np.zeros(phi.shape, dtype=bool)
    for lo, hi in ranges:
        out |= (phi >= lo) & (phi <= hi)
    return out


class EchoPhantom:
    """Renders the frames of one clip on a ``SectorGeometry``'s polar grid."""

    def __init__(
        self,
        *,
        view: str,
        geometry: SectorGeometry,
        heart: HeartParams,
        cycle: Cycle,
        rng: np.random.Generator,
        config: PhantomConfig | None = None,
    ) -> None:
        cfg = config or PhantomConfig()
        self.geometry = geometry
        self.cycle = cycle
        self.rng = rng
        self.layout: Layout = draw_layout(rng, view, heart)
        self.start_phase = float(rng.random())
        r, theta, x, y = geometry.polar_grid_cm()
        self.shape = r.shape
        self.r, self.theta = r.ravel(), theta.ravel()
        self.x, self.y = x.ravel(), y.ravel()
        self._texture = _Texture(rng, geometry)
        self._init_background(rng, cfg)
        self._init_lv(rng, heart, cfg)
        self._init_chambers()
        self._init_valves()

    # ---------------------------------------------------------------- set-up (once per clip)
    def _init_background(self, rng: np.random.Generator, cfg: PhantomConfig) -> None:
        depth = self.geometry.depth_cm
        self.tissue = float(rng.uniform(0.04, 0.12))
        self.myo_echo = float(rng.uniform(0.4, 0.62))
        hetero = np.clip(0.5 + 0.8 * self._texture.coarse(self.x, self.y), 0.0, 2.5)
        clutter = rng.uniform(*cfg.clutter) * np.exp(-(self.r - self.r.min()) / 1.3)
        self.background = (self.tissue * hetero + clutter).astype(np.float32)
        self.speckle_static = self._texture.fine(self.x, self.y)
        # Imperfect time-gain compensation, lateral gain, and maybe a shadow over some beams.
        slope = rng.uniform(-1.0, 0.3)
        gain = np.exp(slope * (self.r / depth - 0.5))
        gain *= 1.0 + 0.08 * np.sin(self.theta * rng.uniform(2, 5) + rng.uniform(0, 2 * np.pi))
        if rng.random() < cfg.p_shadow:
            centre = rng.uniform(-self.geometry.half_angle, self.geometry.half_angle)
            half = np.deg2rad(rng.uniform(4, 10))
            start = rng.uniform(0.25, 0.6) * depth
            shade = _window(self.theta, centre, half) * _smoothstep((self.r - start) / 1.5)
            gain *= 1.0 - rng.uniform(0.5, 0.85) * shade
        self.gain = gain.astype(np.float32)
        self.overall_gain = float(rng.uniform(0.85, 1.15))
        self.gamma = float(rng.uniform(0.55, 0.75))
        self.reject = float(rng.uniform(0.06, 0.12))
        self.noise_sigma = float(rng.uniform(*cfg.noise_sigma))
        self.decorrelation = float(rng.uniform(*cfg.speckle_decorrelation))
        self.blood_echo = float(rng.uniform(0.5, 2.0)) * BLOOD

    def _init_lv(self, rng: np.random.Generator, heart: HeartParams, cfg: PhantomConfig) -> None:
        lv = self.layout.lv
        dx, dy = self.x - lv.centre[0], self.y - lv.centre[1]
        e1, e2 = lv.e1, lv.e2
        qu = (dx * e1[0] + dy * e1[1]) / lv.a
        qv = (dx * e2[0] + dy * e2[1]) / lv.b
        rho = np.hypot(qu, qv)
        phi = np.arctan2(qv, qu)
        # Normalised wall thickness: a cm of wall is a smaller step of rho where the LV is long.
        stretch = np.sqrt((lv.a * np.cos(phi)) ** 2 + (lv.b * np.sin(phi)) ** 2)
        t0 = lv.wall / stretch
        far = 1.0 + t0 + 0.5
        idx = np.flatnonzero(rho < far)
        self.lv_idx = idx
        rho, phi, t0, far = rho[idx], phi[idx], t0[idx], far[idx]
        self.lv_per_cm = 1.0 / stretch[idx]
        # Inward motion: the apex barely moves, mid walls most, the base descends.
        a = np.abs(phi)
        shape = np.where(a <= np.pi / 2, 0.35 + 0.65 * _smoothstep(a / (np.pi / 2)),
                         1.0 - 0.15 * _smoothstep((a - np.pi / 2) / (np.pi / 2)))
        if not self.layout.long_axis:  # a short-axis cut: every wall is a mid wall
            shape = np.ones_like(phi)
        motion = heart.shortening * rng.uniform(0.9, 1.1) * shape
        motion = motion * (1.0 + cfg.regional_unevenness * _uneven(rng, phi))
        t0 = t0 * (1.0 + 0.5 * cfg.regional_unevenness * _uneven(rng, phi))
        thick = np.full_like(phi, heart.thickening)
        self.segment_weight = np.zeros_like(phi)
        if lv.window is not None:
            w = _window(phi, *lv.window, flat=0.5)  # a whole segment, tapered at its edges
            self.segment_weight = w
            t0 = t0 * (1.0 - heart.thinning * w)
            motion = motion * (1.0 - heart.severity * w)
            thick = thick * (1.0 - min(heart.severity, 1.0) * w) - 0.3 * max(
                heart.severity - 1.0, 0.0) * w
        self.lv_rho, self.lv_phi, self.lv_t0, self.lv_far = rho, phi, t0, far
        self.lv_motion, self.lv_thick = motion, thick
        self.lv_gap = np.abs(phi) > np.pi - lv.gap_half
        self.lv_peri = _in_ranges(phi, lv.pericardium) & ~self.lv_gap
        # Reference (end-diastolic) position = centre + rho0 * (ax, ay).
        self.lv_ax = lv.a * np.cos(phi) * e1[0] + lv.b * np.sin(phi) * e2[0]
        self.lv_ay = lv.a * np.cos(phi) * e1[1] + lv.b * np.sin(phi) * e2[1]

    def _init_chambers(self) -> None:
        self.chambers = []
        for ch in self.layout.chambers:
            dx, dy = self.x - ch.centre[0], self.y - ch.centre[1]
            n = np.array([-ch.axis[1], ch.axis[0]])
            qa = (dx * ch.axis[0] + dy * ch.axis[1]) / ch.a
            qb = (dx * n[0] + dy * n[1]) / ch.b
            rho = np.hypot(qa, qb)
            wall = ch.wall / min(ch.a, ch.b)
            idx = np.flatnonzero(rho < 1.0 + abs(ch.pulse) + wall + 0.05)
            rho = rho[idx]
            gap = _window(np.arctan2(qb[idx], qa[idx]), ch.gap_dir, ch.gap_half) > 0.0 \
                if ch.gap_half > 0 else np.zeros(idx.size, dtype=bool)
            self.chambers.append((ch, idx, rho, wall, gap))

    def _init_valves(self) -> None:
        lv = self.layout.lv
        order = np.argsort(self.lv_phi)
        self.hinge_motion = [
            float(np.interp(sign * (np.pi - lv.gap_half), self.lv_phi[order],
                            self.lv_motion[order]))
            for sign in (1.0, -1.0)
        ]
        base = lv.point(-lv.a, 0.0)
        reach = lv.b * np.sin(lv.gap_half) + lv.wall + 1.2  # hinge spread, leaflets, base descent
        near = np.hypot(self.x - base[0], self.y - base[1]) < reach
        self.mitral_idx = np.flatnonzero(near)
        self.aortic_idx = None
        if self.layout.aortic_valve is not None:
            h1, h2 = self.layout.aortic_valve
            mid = 0.5 * (h1 + h2)
            self.aortic_idx = np.flatnonzero(np.hypot(self.x - mid[0], self.y - mid[1]) < 1.6)

    # ---------------------------------------------------------------- per frame
    def contraction_at(self, t_s: float) -> float:
        return float(self.cycle.contraction(self.cycle.phase(t_s, self.start_phase)))

    def frame(self, t_s: float) -> np.ndarray:
        """The B-mode polar image (uint8 [n_depth, N_BEAMS]) at time ``t_s`` into the clip."""
        echo, speckle = self.echogenicity(t_s)
        fresh = self.rng.standard_exponential(speckle.size, dtype=np.float32)
        fresh *= self.decorrelation
        fresh += 1.0 - self.decorrelation
        echo *= speckle
        echo *= fresh
        echo *= self.gain
        value = np.power(echo, self.gamma, out=echo)
        # Gain, reject level and 8-bit scale in one affine step: 255 * (g * v - reject) / (1 - r).
        scale = 255.0 / (1.0 - self.reject)
        noise = self.rng.standard_normal(value.size, dtype=np.float32)
        noise *= self.noise_sigma * scale
        value *= self.overall_gain * scale
        value += noise
        value -= self.reject * scale
        image = np.clip(value, 0.0, 255.0, out=value).reshape(self.shape)
        # The beam is wider than the line spacing: blur across beams (1-2-1).
        image[:, 1:-1] = 0.25 * image[:, :-2] + 0.5 * image[:, 1:-1] + 0.25 * image[:, 2:]
        image += 0.5
        return image.astype(np.uint8)

    def echogenicity(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(echogenicity, speckle) of every polar sample at time ``t_s``, both float32."""
        phase = float(self.cycle.phase(t_s, self.start_phase))
        s = float(self.cycle.contraction(phase))
        echo = self.background.copy()
        speckle = self.speckle_static.copy()
        self._paint_chambers(echo, s)
        self._paint_lv(echo, speckle, s)
        if self.layout.mitral_valve:
            self._paint_mitral(echo, s, float(self.cycle.mitral_opening(phase)))
        if self.aortic_idx is not None:
            self._paint_aortic(echo, float(self.cycle.aortic_opening(phase)))
        return echo, speckle

    def _paint_chambers(self, echo: np.ndarray, s: float) -> None:
        for ch, idx, rho, wall, gap in self.chambers:
            size = 1.0 + ch.pulse * s
            band = (rho >= size) & (rho < size + wall) & ~gap
            echo[idx[band]] = ch.echo * self.myo_echo / 0.5
        for ch, idx, rho, _wall, _gap in self.chambers:
            echo[idx[rho < 1.0 + ch.pulse * s]] = self.blood_echo

    def _paint_lv(self, echo: np.ndarray, speckle: np.ndarray, s: float) -> None:
        lv = self.layout.lv
        rho, t0, far = self.lv_rho, self.lv_t0, self.lv_far
        endo = 1.0 - s * self.lv_motion
        thick = t0 * (1.0 + s * self.lv_thick)
        epi = endo + thick
        # Where was this sample at end-diastole? Piecewise-linear along the ray from the centre.
        rho0 = np.where(
            rho < endo,
            rho / endo,
            np.where(
                rho < epi,
                1.0 + (rho - endo) * t0 / thick,
                np.where(rho < far, 1.0 + t0 + (rho - epi) * (far - 1.0 - t0) / (far - epi), rho),
            ),
        )
        x0 = lv.centre[0] + rho0 * self.lv_ax
        y0 = lv.centre[1] + rho0 * self.lv_ay
        idx = self.lv_idx
        speckle[idx] = self._texture.fine(x0, y0)
        cavity = rho < endo
        myo = (rho >= endo) & (rho < epi)
        peri = self.lv_peri & (rho >= epi) & (rho < epi + 0.18 * self.lv_per_cm)  # ~1.8 mm
        hetero = 1.0 + 0.12 * self._texture.coarse(x0, y0)
        sub = echo[idx]
        sub = np.where(myo & ~self.lv_gap, self.myo_echo * hetero, sub)
        sub = np.where(peri, PERICARDIUM, sub)
        sub = np.where(cavity | ((rho < epi) & self.lv_gap), self.blood_echo, sub)
        echo[idx] = sub

    def _paint_leaflets(self, echo: np.ndarray, idx: np.ndarray, leaflets) -> None:
        px, py = self.x[idx], self.y[idx]
        best = np.full(idx.size, np.inf, dtype=np.float64)
        for start, end in leaflets:
            d = end - start
            t = np.clip(((px - start[0]) * d[0] + (py - start[1]) * d[1]) / max(d @ d, 1e-9),
                        0, 1)
            best = np.minimum(best, np.hypot(px - start[0] - t * d[0], py - start[1] - t * d[1]))
        bright = np.exp(-((best / 0.07) ** 2)) * 0.85
        echo[idx] = np.maximum(echo[idx], bright)

    def _paint_mitral(self, echo: np.ndarray, s: float, opening: float) -> None:
        lv = self.layout.lv
        hinges = []
        for sign, motion in zip((1.0, -1.0), self.hinge_motion, strict=True):
            phi = sign * (np.pi - lv.gap_half)
            rho = 1.0 - s * motion + 0.5 * lv.wall / lv.b
            hinges.append(lv.centre + rho * (lv.a * np.cos(phi) * lv.e1 + lv.b * np.sin(phi)
                                             * lv.e2))
        coapt = 0.5 * (hinges[0] + hinges[1]) - 0.3 * lv.e1  # closes just on the atrial side
        leaflets = []
        for h, frac in zip(hinges, (0.55, 0.45), strict=True):
            closed = coapt - h
            length = np.hypot(*closed) * (1.0 if frac > 0.5 else 0.95)
            ang_closed = np.arctan2(closed[1], closed[0])
            ang_open = np.arctan2(lv.e1[1], lv.e1[0])
            turn = np.angle(np.exp(1j * (ang_open - ang_closed)))
            ang = ang_closed + opening * turn * 0.85
            leaflets.append((h, h + length * np.array([np.cos(ang), np.sin(ang)])))
        self._paint_leaflets(echo, self.mitral_idx, leaflets)

    def _paint_aortic(self, echo: np.ndarray, opening: float) -> None:
        h1, h2 = self.layout.aortic_valve
        mid = 0.5 * (h1 + h2)
        along = np.array([-(h2 - h1)[1], (h2 - h1)[0]])
        along /= np.hypot(*along)
        ch = self.layout.chambers[1]  # the aortic root: leaflets open downstream
        if along @ ch.axis < 0:
            along = -along
        leaflets = []
        for h in (h1, h2):
            closed = mid - h
            length = np.hypot(*closed)
            tip = h + (1 - opening) * closed + opening * length * along
            leaflets.append((h, tip))
        self._paint_leaflets(echo, self.aortic_idx, leaflets)

    # ---------------------------------------------------------------- colour Doppler
    def doppler(self, t_s: float, grey: np.ndarray) -> np.ndarray:
        """An RGB polar frame [n_depth, N_BEAMS, 3]: grey B-mode with colour flow in the blood.

        Inflow toward the probe is red, outflow away blue, as machines map velocity. Used only for
        the colour-Doppler problem files that ingest must reject.
        """
        phase = float(self.cycle.phase(t_s, self.start_phase))
        echo, _ = self.echogenicity(t_s)
        inflow = float(self.cycle.mitral_opening(phase))
        outflow = float(self.cycle.aortic_opening(phase))
        lv = self.layout.lv
        near_lv = np.zeros(echo.size, dtype=bool)
        near_lv[self.lv_idx] = self.lv_rho < 1.3
        box = near_lv & (np.abs(self.theta) < 0.6 * self.geometry.half_angle)
        blood = box & (echo <= 2.5 * self.blood_echo)
        along = (self.x - lv.centre[0]) * lv.e1[0] + (self.y - lv.centre[1]) * lv.e1[1]
        velocity = inflow * np.exp(-((along + lv.a) / (0.8 * lv.a)) ** 2) - 0.9 * outflow
        velocity = velocity * (0.8 + 0.4 * self.rng.random(echo.size))
        rgb = np.repeat(grey.reshape(-1, 1), 3, axis=1)
        strong = blood & (np.abs(velocity) > 0.12)
        level = (90 + 165 * np.clip(np.abs(velocity), 0, 1)).astype(np.uint8)
        red, blue = strong & (velocity > 0), strong & (velocity < 0)
        rgb[red] = np.stack([level[red], level[red] // 5, np.zeros_like(level[red])], axis=1)
        rgb[blue] = np.stack([np.zeros_like(level[blue]), level[blue] // 4, level[blue]], axis=1)
        return rgb.reshape(*self.shape, 3)

    def segment_mask(self, min_weight: float = 0.5) -> np.ndarray:
        """Polar-grid flat indices of the abnormal segment's end-diastolic myocardium (tests)."""
        rho = self.lv_rho
        wall = (rho >= 1.0) & (rho < 1.0 + self.lv_t0) & (self.segment_weight >= min_weight)
        return self.lv_idx[wall]

    def wall_mask(self, centre: float, half: float) -> np.ndarray:
        """Polar flat indices of end-diastolic myocardium between phi centre +- half (tests)."""
        rho = self.lv_rho
        near = np.abs(np.angle(np.exp(1j * (self.lv_phi - centre)))) <= half
        return self.lv_idx[(rho >= 1.0) & (rho < 1.0 + self.lv_t0) & near & ~self.lv_gap]


class _Texture:
    """Speckle (fine, Rayleigh-like, mean 1) and tissue heterogeneity (coarse, ~N(0, 1)) fields."""

    def __init__(self, rng: np.random.Generator, geometry: SectorGeometry) -> None:
        half_w = geometry.depth_cm * np.sin(geometry.half_angle) + 2.0
        self.x0, self.y0 = -half_w, -1.0
        nx = int(np.ceil(2 * half_w / _TEX_RES_CM)) + 1
        ny = int(np.ceil((geometry.depth_cm + 3.0) / _TEX_RES_CM)) + 1
        re = gaussian_filter(rng.standard_normal((ny, nx)).astype(np.float32), 1.0)
        im = gaussian_filter(rng.standard_normal((ny, nx)).astype(np.float32), 1.0)
        amp = np.hypot(re, im)
        self.fine_tex = (amp / amp.mean()).astype(np.float32)
        coarse = gaussian_filter(rng.standard_normal((ny // 20 + 2, nx // 20 + 2)), 1.0)
        self.coarse_tex = (coarse / (coarse.std() + 1e-9)).astype(np.float32)  # ~N(0, 1)

    def _index(self, x: np.ndarray, y: np.ndarray, tex: np.ndarray, cell: float) -> np.ndarray:
        ix = np.clip(((x - self.x0) / cell).astype(np.int32), 0, tex.shape[1] - 1)
        iy = np.clip(((y - self.y0) / cell).astype(np.int32), 0, tex.shape[0] - 1)
        return tex[iy, ix]

    def fine(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._index(x, y, self.fine_tex, _TEX_RES_CM)

    def coarse(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._index(x, y, self.coarse_tex, 20 * _TEX_RES_CM)
