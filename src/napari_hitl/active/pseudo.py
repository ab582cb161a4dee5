"""Pseudo-labels: which pixels the machine may label itself, and how that trust grows.

Three-way split of a prediction with threshold delta (confident object, confident
background, ignored); progressive schedules beta_t = beta_0 - dbeta*t (local-consistency
threshold) and gamma_t = gamma_0 + dgamma*t (share of images the machine may label).
Human and machine-accepted labels always win: pseudo-labels never touch those pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.model.train import ANSWERED, PSEUDO, UNLABELLED

__all__ = ["PseudoSettings", "IGNORED", "CONFIDENT_OBJECT", "CONFIDENT_BACKGROUND", "three_way_split",
           "pseudo_labels", "machine_labelled_images"]

IGNORED, CONFIDENT_OBJECT, CONFIDENT_BACKGROUND = 0, 1, 2


@dataclass
class PseudoSettings:
    """All thresholds of pseudo-labelling and their progressive schedules (t = round, from 0)."""

    delta: float = 0.9       # a pixel keeps the machine's label when its confidence exceeds this
    beta0: float = 0.9       # local-consistency confidence threshold at t = 0
    dbeta: float = 0.02      # beta_t = beta0 - dbeta * t ...
    beta_min: float = 0.5    # ... but never below this
    gamma0: float = 0.2      # share of (not human-labelled) images the machine may label at t = 0
    dgamma: float = 0.1      # gamma_t = gamma0 + dgamma * t ...
    gamma_max: float = 0.8   # ... but never above this
    enabled: bool = True

    def __post_init__(self):
        for name in ("delta", "beta0", "beta_min", "gamma0", "gamma_max"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {v}")

    def beta(self, t: int) -> float:
        """beta_t = beta0 - dbeta * t, clipped at beta_min."""
        return float(max(self.beta_min, self.beta0 - self.dbeta * t))

    def gamma(self, t: int) -> float:
        """gamma_t = gamma0 + dgamma * t, clipped at gamma_max."""
        return float(min(self.gamma_max, self.gamma0 + self.dgamma * t))


def three_way_split(conf: np.ndarray, pred: np.ndarray, delta: float, background: int | None = 0) -> np.ndarray:
    """``(H, W)`` uint8: CONFIDENT_OBJECT / CONFIDENT_BACKGROUND where confidence > delta, else IGNORED.

    With ``background=None`` every confident pixel counts as CONFIDENT_OBJECT.
    """
    conf, pred = np.asarray(conf), np.asarray(pred)
    out = np.full(conf.shape, IGNORED, np.uint8)
    sure = conf > delta
    is_bg = np.zeros(conf.shape, bool) if background is None else pred == background
    out[sure & ~is_bg] = CONFIDENT_OBJECT
    out[sure & is_bg] = CONFIDENT_BACKGROUND
    return out


def pseudo_labels(conf: np.ndarray, pred: np.ndarray, delta: float, labels: np.ndarray | None = None,
                  provenance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Merge confident predictions into a label map without touching human/accepted pixels.

    Returns new ``(labels, provenance)``: answered (HUMAN, MACHINE, SIMULATED) pixels are copied unchanged;
    every other pixel becomes PSEUDO with the predicted class if its confidence exceeds
    ``delta`` and UNLABELLED otherwise (old pseudo-labels are replaced by the new ones).
    """
    conf, pred = np.asarray(conf), np.asarray(pred)
    if labels is None:
        labels = np.zeros(conf.shape, np.uint16)
    if provenance is None:
        provenance = np.zeros(conf.shape, np.uint8)
    if np.shape(labels) != conf.shape or np.shape(provenance) != conf.shape or pred.shape != conf.shape:
        raise InputError(f"confidence {conf.shape}, prediction {pred.shape}, labels {np.shape(labels)} and "
                         f"provenance {np.shape(provenance)} must have the same shape")
    keep = np.isin(provenance, ANSWERED)
    sure = (conf > delta) & ~keep
    new_labels = np.where(keep, labels, np.where(sure, pred, 0)).astype(np.asarray(labels).dtype)
    new_prov = np.where(keep, provenance, np.where(sure, PSEUDO, UNLABELLED)).astype(np.uint8)
    return new_labels, new_prov


def machine_labelled_images(consistency: dict[int, float], gamma: float, exclude=()) -> list[int]:
    """The ``gamma`` share of images (not in ``exclude``) with the highest local consistency."""
    cands = [(v, i) for i, v in consistency.items() if i not in set(exclude)]
    n = int(round(gamma * len(cands)))
    return [i for _, i in sorted(cands, key=lambda t: (-t[0], t[1]))[:n]]
