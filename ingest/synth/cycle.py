"""One cardiac cycle as functions of its phase: contraction, valve opening and the ECG.

Phase ``p`` runs from 0 (the R wave, end-diastole) to 1. Systole lasts ~0.3 s whatever the heart
rate, so it takes a larger share of the cycle when the heart beats faster; diastole has a rapid early
filling, a slow diastasis and the atrial kick, as on a real volume curve. The echo phantom, the
valve leaflets and the burned-in ECG trace all read the same phase, so they stay in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Cycle:
    """Timing of one beat at a given heart rate."""

    heart_rate: float  # beats per minute

    @property
    def period_s(self) -> float:
        return 60.0 / self.heart_rate

    @property
    def systole(self) -> float:
        """Share of the cycle spent in systole (ejection), R wave to end-systole."""
        return float(np.clip(0.30 / self.period_s, 0.28, 0.48))

    def phase(self, t_s: np.ndarray, start_phase: float) -> np.ndarray:
        """Phase in [0, 1) at times ``t_s`` (seconds) for a clip starting at ``start_phase``."""
        return np.mod(np.asarray(t_s) / self.period_s + start_phase, 1.0)

    def contraction(self, p: np.ndarray) -> np.ndarray:
        """0 at end-diastole, 1 at end-systole: how far the walls have moved inward."""
        p = np.asarray(p, dtype=np.float64)
        ts = self.systole
        te = ts + 0.22  # end of rapid filling
        ta = 0.82  # atrial kick starts
        out = np.empty_like(p)
        sys = p < ts
        out[sys] = 0.5 - 0.5 * np.cos(np.pi * p[sys] / ts)
        early = (p >= ts) & (p < te)
        x = (p[early] - ts) / (te - ts)
        out[early] = 0.22 + 0.78 * (0.5 + 0.5 * np.cos(np.pi * x))
        dias = (p >= te) & (p < ta)
        x = (p[dias] - te) / (ta - te)
        out[dias] = 0.22 - 0.07 * x
        atrial = p >= ta
        x = (p[atrial] - ta) / (1.0 - ta)
        out[atrial] = 0.15 * (0.5 + 0.5 * np.cos(np.pi * x))
        return out

    def mitral_opening(self, p: np.ndarray) -> np.ndarray:
        """0 closed, 1 fully open: open in early filling (E) and at the atrial kick (A)."""
        p = np.asarray(p, dtype=np.float64)
        ts = self.systole
        e_wave = _bump(p, ts + 0.02, ts + 0.26)
        a_wave = 0.7 * _bump(p, 0.83, 0.99)
        return np.clip(np.maximum(e_wave, 0.3 * ((p > ts + 0.2) & (p < 0.85)) + a_wave), 0, 1)

    def aortic_opening(self, p: np.ndarray) -> np.ndarray:
        """0 closed, 1 open: open during ejection only."""
        ts = self.systole
        return _bump(np.asarray(p, dtype=np.float64), 0.04, ts)

    def ecg(self, p: np.ndarray) -> np.ndarray:
        """A lead-II-like trace (arbitrary units, ~1 at the R peak) as a function of phase."""
        p = np.asarray(p, dtype=np.float64)
        q = np.where(p > 0.5, p - 1.0, p)  # the QRS sits at phase 0
        ts = self.systole
        qrs = (
            1.0 * np.exp(-(((q - 0.0) / 0.012) ** 2))
            - 0.15 * np.exp(-(((q + 0.025) / 0.01) ** 2))
            - 0.25 * np.exp(-(((q - 0.03) / 0.012) ** 2))
        )
        t_wave = 0.28 * np.exp(-(((p - (ts - 0.04)) / 0.05) ** 2))
        p_wave = 0.12 * np.exp(-(((p - 0.88) / 0.025) ** 2))
        return qrs + t_wave + p_wave


def _bump(p: np.ndarray, start: float, end: float) -> np.ndarray:
    """A raised-sine hump that is 0 outside [start, end] and 1 in its middle."""
    x = np.clip((p - start) / max(end - start, 1e-6), 0.0, 1.0)
    return np.sin(np.pi * x) ** 0.5
