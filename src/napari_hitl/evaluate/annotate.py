"""Simulated labelling of a video session from ground truth: what the benchmarks and tests
spend clicks on (the cost model is :mod:`napari_hitl.simulate.cost`)."""

from __future__ import annotations

import time

import numpy as np

from napari_hitl.simulate.cost import unit_clicks
from napari_hitl.video.selection import select_units
from napari_hitl.video.session import RoundRecord


def annotate_from_truth(session, index: int, truth: np.ndarray, clicks: int | None = None) -> int:
    """Label unit ``index`` of a :class:`~napari_hitl.video.session.VideoSession` from the true
    frames (T, H, W); ``clicks`` is its cost when already known. Returns its clicks."""
    t = session.units.frame_of(index)
    (y0, x0, y1, x1), _ = session.units.local_mask(index)
    if clicks is None:
        clicks = unit_clicks(session.units, index, truth[t])
    session.set_unit_labels(index, np.asarray(truth[t][y0:y1, x0:x1]), clicks)
    return clicks


def annotate_budget(session, truth: np.ndarray, budget: int, probs, feats, first_round: bool,
                    seed: int = 0, mean_cost: float = 2.0) -> RoundRecord:
    """Simulated round of labelling: pick units and label them from ``truth`` until ``budget``
    clicks are spent (a unit that would exceed it is skipped). Returns the round's record."""
    rec = RoundRecord(len(session.rounds) + 1)
    t0 = time.perf_counter()
    tries = 0
    scores, pooled, ranked = session.scores(probs, feats, first_round)
    rec.seconds["score"] = time.perf_counter() - t0
    skipped = np.zeros(len(session.units), bool)
    while rec.clicks < budget and tries < 4:
        tries += 1
        k = max(1, int(np.ceil((budget - rec.clicks) / max(mean_cost, 1.0))))
        picks = select_units(scores, pooled, k, session.annotated | skipped, not ranked, seed + tries)
        if not picks:
            break
        for i in picks:
            cost = unit_clicks(session.units, i, truth[session.units.frame_of(i)])
            if rec.clicks + cost > budget:
                skipped[i] = True
                continue
            annotate_from_truth(session, i, truth, cost)
            rec.units.append(int(i))
            rec.clicks += cost
        if rec.units:
            mean_cost = rec.clicks / len(rec.units)
    rec.seconds["select+annotate"] = time.perf_counter() - t0
    session.rounds.append(rec)
    return rec
