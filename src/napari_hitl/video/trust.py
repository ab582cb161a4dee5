"""How far to trust optical flow, per pixel and per video, so the temporal term and round-one
selection lean on it only where it is right.

Per pixel (:func:`pixel_confidence`): a correspondence i -> j counts when it lands inside frame j,
the forward and backward flows agree within ``FB_THRESHOLD`` px, and frame j warped back looks
like frame i there; the weight falls smoothly with the forward-backward error and the
photometric error (fast motion, blur and occlusion fail one of them).

Per video (:func:`flow_evidence`): the human labels test the flow. Where an annotated pixel of
frame t maps along a trusted flow onto an annotated pixel of a frame up to three away, the two
labels should agree; the class-balanced agreement (object pixels count as much as background)
and the mean confidence on annotated pixels of each class (the object's pixels, where fast motion
breaks the flow, count as much as the background's) give one trust value in [0, 1], from
which :func:`temporal_weight` sets the video's temporal weight. A flow that moves labels onto
the wrong class drives the weight to 0, i.e. to plain fine-tuning.

Annotated units rarely overlap along the flow in round one (rectangles of 40 on 30 frames of
davis2016: 0 to 110 overlapping pixels, so the agreement above stays at its prior, 1.0), so
:func:`label_agreement` tests the flow on every annotated pixel instead: each annotated frame's
labels are carried along the flow onto its neighbours and compared there with a reference (the
human labels where the neighbour has them, else the model's own prediction after a round's first
steps on the labels alone, see :class:`~napari_hitl.video.finetune.VideoFineTuner`). Fast motion
and occlusion carry the object's labels onto what the model calls background (and back), and
the agreement of the worst class and frame distance falls; :func:`agreement_factor` bounds the
temporal weight by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.video.flow import FB_THRESHOLD, FlowCache, fb_error, inside, to_gray, warp

#: scale (px) of the forward-backward error and (grey levels of 255) of the photometric error
#: at which a pixel's confidence falls to exp(-1/2); set a priori, not tuned on benchmark data
SIGMA_FB = 0.5
SIGMA_PHOTO = 20.0


def pixel_confidence(frame_i: np.ndarray, frame_j: np.ndarray, flow_ij: np.ndarray, flow_ji: np.ndarray,
                     threshold: float = FB_THRESHOLD, sigma_fb: float = SIGMA_FB,
                     sigma_photo: float = SIGMA_PHOTO) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how much frame i's correspondence in frame j is trusted.

    0 where the flow leaves the frame or the forward-backward error exceeds ``threshold``;
    else exp(-e_fb^2 / 2 sigma_fb^2) * exp(-e_photo^2 / 2 sigma_photo^2).
    """
    if not (sigma_fb > 0 and sigma_photo > 0):
        raise InputError(f"sigma_fb and sigma_photo must be positive, got {sigma_fb}, {sigma_photo}")
    err = fb_error(flow_ij, flow_ji)
    gi = to_gray(frame_i).astype(np.float32)
    gj = warp(to_gray(frame_j).astype(np.float32), flow_ij)
    photo = np.abs(gi - gj)
    conf = np.exp(-0.5 * (err / sigma_fb) ** 2) * np.exp(-0.5 * (photo / sigma_photo) ** 2)
    conf[(err > threshold) | ~inside(flow_ij)] = 0.0
    return conf.astype(np.float32)


def flow_confidence(flows: FlowCache, i: int, j: int) -> np.ndarray:
    """:func:`pixel_confidence` of the cached flow i -> j (frames and threshold from the cache)."""
    return pixel_confidence(flows.frames[i], flows.frames[j], flows.flow(i, j), flows.flow(j, i),
                            flows.threshold)


@dataclass
class FlowEvidence:
    """What the human labels say about a video's flow (see :func:`flow_evidence`)."""

    agreement: float    # class-balanced share of overlapping annotated pixels whose labels agree (prior-smoothed)
    overlap: int        # annotated pixel pairs the agreement is measured on (confidence-weighted count)
    confidence: float   # class-balanced mean confidence of annotated pixels' correspondences
    trust: float        # agreement x confidence, in [0, 1]

    def as_dict(self) -> dict:
        return {"agreement": self.agreement, "overlap": self.overlap, "confidence": self.confidence,
                "trust": self.trust}


def flow_evidence(labels: np.ndarray, flows: FlowCache, gaps=(1, 2, 3), prior: float = 200.0,
                  confidence=None) -> FlowEvidence:
    """Test the flow on the human labels ((T, h, w), -1 unlabelled, at the flows' resolution).

    For every annotated frame t and neighbour u = t +- g: warp u's labels onto t along the flow
    t -> u; where both are labelled, count (confidence-weighted) whether they agree, per class of
    t's label. Per class, the agreement is smoothed towards 1 with ``prior`` pseudo-pixels (few
    overlaps: the photometric and forward-backward confidence alone decides).
    ``confidence(i, j)`` supplies cached confidence maps (default :func:`flow_confidence`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or len(labels) != len(flows):
        raise InputError(f"labels must be (T, h, w) for a video of {len(flows)} frames, got {labels.shape}")
    conf_of = confidence or (lambda i, j: flow_confidence(flows, i, j))
    classes = [int(c) for c in np.unique(labels) if c >= 0]
    if not classes:
        raise InputError("no labelled pixels: the flow cannot be tested on labels yet")
    n = len(labels)
    annotated = np.flatnonzero((labels >= 0).reshape(n, -1).any(1))
    agree = {c: 0.0 for c in classes}
    count = {c: 0.0 for c in classes}
    csum = {c: 0.0 for c in classes}
    cnum = {c: 0 for c in classes}
    for t in annotated:
        lt = labels[t]
        for g in gaps:
            for u in (t - g, t + g):
                if not 0 <= u < n:
                    continue
                conf = conf_of(int(t), int(u))
                for c in classes:
                    m = lt == c
                    if m.any():
                        csum[c] += float(conf[m].sum())
                        cnum[c] += int(m.sum())
                if not (labels[u] >= 0).any():
                    continue
                warped = warp(labels[u].astype(np.float32), flows.flow(int(t), int(u)), nearest=True)
                both = (lt >= 0) & (warped >= 0) & (conf > 0)
                for c in classes:
                    m = both & (lt == c)
                    if m.any():
                        w = conf[m]
                        agree[c] += float(w[warped[m] == c].sum())
                        count[c] += float(w.sum())
    mean_conf = {c: csum[c] / cnum[c] if cnum[c] else 0.0 for c in classes}
    per_class = [(agree[c] + prior) / (count[c] + prior) for c in classes]
    agreement = float(np.mean(per_class))
    confidence_ = float(np.mean(list(mean_conf.values())))
    return FlowEvidence(agreement, int(round(sum(count.values()))), confidence_,
                        float(np.clip(agreement * confidence_, 0.0, 1.0)))


def label_agreement(labels: np.ndarray, reference: np.ndarray, flows: FlowCache, gaps=(1, 2, 3),
                    prior: float = 50.0, confidence=None, frames=None) -> tuple[float, int]:
    """How well the flow carries the human labels onto the neighbouring frames: (agreement in
    [0, 1] of the worst class and frame distance, confidence-weighted count of the pixels it is
    measured on).

    ``labels`` (T, h, w): human labels, -1 unlabelled; ``reference`` (T, h, w): what each frame is
    taken to show (-1 unknown; e.g. the human labels where there are any, else the model's
    prediction). For every annotated frame t and neighbour u = t +- g (``frames``: only these t),
    t's labels are warped onto u along the flow u -> t (nearest) and compared with
    ``reference[u]`` where both are known, each pixel weighted by the confidence of u -> t
    (``confidence(i, j)``, default :func:`flow_confidence`). Per class of the carried label and
    per distance g the agreement is smoothed towards 1 with ``prior`` pseudo-pixels, and the
    least of them is returned: the flow fails on the object and at the longer distances first
    (davis2016 breakdance, round one's labels against the truth: the object's agreement 0.97,
    0.82, 0.36 at one, two and three frames, the background's 0.998, the classes' mean over all
    distances 0.95; blackswan >= 0.99 throughout). Nothing to compare: (1.0, 0).
    """
    labels = np.asarray(labels)
    reference = np.asarray(reference)
    if labels.ndim != 3 or len(labels) != len(flows) or reference.shape != labels.shape:
        raise InputError(f"labels and reference must be (T, h, w) for a video of {len(flows)} frames, "
                         f"got {labels.shape} and {reference.shape}")
    conf_of = confidence or (lambda i, j: flow_confidence(flows, i, j))
    n = len(labels)
    annotated = np.flatnonzero((labels >= 0).reshape(n, -1).any(1)) if frames is None else frames
    classes = [int(c) for c in np.unique(labels) if c >= 0]
    agree = {(c, g): 0.0 for c in classes for g in gaps}
    count = {(c, g): 0.0 for c in classes for g in gaps}
    for t in annotated:
        t = int(t)
        for g in gaps:
            for u in (t - g, t + g):
                if not 0 <= u < n or not (reference[u] >= 0).any():
                    continue
                carried = warp(labels[t].astype(np.float32), flows.flow(u, t), nearest=True)
                conf = conf_of(u, t)
                both = (carried >= 0) & (reference[u] >= 0) & (conf > 0)
                for c in classes:
                    m = both & (carried == c)
                    if m.any():
                        w = conf[m]
                        agree[(c, g)] += float(w[reference[u][m] == c].sum())
                        count[(c, g)] += float(w.sum())
    if not classes:
        return 1.0, 0
    worst = min((agree[k] + prior) / (count[k] + prior) for k in agree)
    return float(worst), int(round(sum(count.values())))


def agreement_factor(agreement: float, low: float, high: float) -> float:
    """The share of the temporal weight the labels' agreement along the flow allows: 0 at
    ``agreement <= low``, 1 at ``>= high``, linear between."""
    return temporal_weight(agreement, 1.0, low, high)


def temporal_weight(trust: float, lam_max: float, low: float, high: float) -> float:
    """The video's temporal weight: 0 at trust <= ``low``, ``lam_max`` at trust >= ``high``,
    linear between (so untrusted flow gives plain fine-tuning)."""
    if not 0 <= low < high <= 1:
        raise InputError(f"trust bounds must satisfy 0 <= low < high <= 1, got {low}, {high}")
    return float(lam_max * np.clip((trust - low) / (high - low), 0.0, 1.0))


def motion_trust(flows: FlowCache, min_motion: float = 1.0, stride: int = 1) -> float:
    """Mean confidence of the one-frame flows on the pixels that move against the frame's median
    motion by more than ``min_motion`` px: low when the flow fails exactly where things move
    (round one's motion ranking then has nothing to stand on). 1.0 when nothing moves."""
    n = len(flows)
    num = den = 0.0
    for t in range(0, n - 1, max(1, stride)):
        fl = flows.flow(t, t + 1)
        residual = np.linalg.norm(fl - np.median(fl.reshape(-1, 2), 0), axis=-1)
        moving = residual > min_motion
        if moving.any():
            num += float(flow_confidence(flows, t, t + 1)[moving].sum())
            den += float(moving.sum())
    return 1.0 if den == 0 else num / den
