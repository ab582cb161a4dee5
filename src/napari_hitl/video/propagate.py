"""Spread a few labelled units to every frame: plain label propagation along optical flow (the
baseline), and test-time fine-tuning of the segmentation model with a temporal-consistency loss.

A :class:`VideoSession` holds the frames, their flows (cached on disk), the annotation units
and the human labels so far; each round selects units (margin uncertainty + k-means diversity;
in round one, with no model yet, motion against the camera + diversity), takes their labels,
fine-tunes and re-predicts every frame.
Labels use -1 (:data:`UNLABELLED`) for pixels nobody has labelled. Torch is imported lazily.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.video.flow import FlowCache, warp
from napari_hitl.video.units import UnitSet, mean_per_unit

#: label value of pixels no human has labelled
UNLABELLED = -1
#: index of the first encoder block that is fine-tuned (stem and blocks 0-4, strides 2-8, stay frozen)
FROZEN_BLOCKS = 5


# -- geometry --------------------------------------------------------------------------------
def working_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """Frame size used for flow and the model: ``shape * scale`` rounded to multiples of 32."""
    if not scale > 0:
        raise InputError(f"scale must be positive, got {scale}")
    h, w = shape
    return max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)


def resize_frames(frames, shape: tuple[int, int]) -> np.ndarray:
    """Resize every frame (area interpolation) to ``shape``; returns a (T, h, w[, 3]) array."""
    import cv2

    out = []
    for f in frames:
        f = np.asarray(f)
        out.append(f if f.shape[:2] == tuple(shape) else
                   cv2.resize(f, (shape[1], shape[0]), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of one (H, W) or a stack (T, H, W) of label maps (-1 kept)."""
    import cv2

    labels = np.asarray(labels)
    if labels.ndim == 3:
        return np.stack([resize_labels(lab, shape) for lab in labels])
    if labels.shape == tuple(shape):
        return labels
    small = cv2.resize(labels.astype(np.int16), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return small.astype(labels.dtype)


def upsample_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, h, w) probabilities to (C, H, W)."""
    import cv2

    p = np.asarray(probs, np.float32)
    if p.shape[1:] == tuple(shape):
        return p
    return np.stack([cv2.resize(c, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for c in p])


# -- the baseline: label propagation ------------------------------------------------------------
def propagate_labels(labels: np.ndarray, flows: FlowCache, fill: bool = True,
                     fallback: int = 0) -> np.ndarray:
    """Carry labelled pixels to every frame along the flow (the baseline).

    ``labels``: (T, H, W) ints, -1 where unlabelled, at the flows' resolution. Each
    unlabelled pixel takes the label of the nearest (in time) labelled frame, chained
    frame by frame through one-frame flows and only across trusted (forward-backward
    consistent) pixels; what stays unlabelled (occlusions, areas nobody labelled) takes the
    nearest labelled pixel of its frame (``fill``), or ``fallback`` if its frame has none.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be (T, H, W), got shape {labels.shape}")
    if len(labels) != len(flows):
        raise InputError(f"{len(labels)} label frames for a video of {len(flows)} frames")
    known = labels >= 0
    big = np.float32(1e9)
    age0 = np.where(known, 0, big).astype(np.float32)

    def sweep(order):
        lab, age = labels.copy(), age0.copy()
        for prev, t in zip(order[:-1], order[1:]):
            if not (age[prev] < big).any():
                continue
            fl = flows.flow(t, prev)
            cand_lab = warp(lab[prev], fl, nearest=True)
            cand_age = warp(age[prev], fl, nearest=True) + 1
            better = flows.trusted(t, prev) & (cand_age < age[t]) & (cand_lab >= 0)
            lab[t][better], age[t][better] = cand_lab[better], cand_age[better]
        return lab, age

    n = len(labels)
    fwd, fage = sweep(list(range(n)))
    bwd, bage = sweep(list(range(n - 1, -1, -1)))
    out = np.where(fage <= bage, fwd, bwd)
    if fill:
        out = np.stack([fill_nearest(f, fallback) for f in out])
    return out


def fill_nearest(labels: np.ndarray, fallback: int = 0) -> np.ndarray:
    """Give every unlabelled (-1) pixel the label of the nearest labelled pixel (``fallback`` if none)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    unknown = labels < 0
    if not unknown.any():
        return labels
    if unknown.all():
        return np.full_like(labels, fallback)
    idx = ndimage.distance_transform_edt(unknown, return_distances=False, return_indices=True)
    return labels[tuple(idx)]


# -- the temporal-consistency term ------------------------------------------------------------
def warp_torch(x, flow):
    """Warp a (B, C, H, W) tensor of frame j onto frame i with a (B, H, W, 2) flow i -> j (bilinear)."""
    import torch
    from torch.nn import functional as F

    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                            torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    gx = (xs[None] + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys[None] + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def temporal_loss(probs, warped_probs, trusted):
    """Temporal-consistency term: mean over trusted pixels of the squared difference between a
    frame's class probabilities (B, C, H, W) and its neighbour's probabilities warped onto it.

    ``trusted`` is a (B, H, W) bool tensor; returns 0 when no pixel is trusted.
    """
    sq = ((probs - warped_probs) ** 2).sum(1)
    m = trusted.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp_min(1.0)


# -- test-time fine-tuning ----------------------------------------------------------------------
@dataclass
class FineTuneSettings:
    """Hyper-parameters of fine-tuning the model on one video (see :class:`VideoFineTuner`)."""

    steps: int = 120               # optimiser steps per round
    pairs: int = 2                 # temporal pairs per step; 2 * pairs labelled frames per step
    # weight of the temporal term (0: fine-tune only). The term is a mean squared difference of
    # probabilities, small beside the cross-entropy: on davis2016 round one (blackswan / breakdance,
    # same labels and batches) lam 0, 1, 5, 20, 50 gave 0.652 / 0.637, 0.653 / 0.641,
    # 0.660 / 0.653, 0.676 / 0.681, 0.695 / 0.686 mIoU
    lam: float = 50.0
    gaps: tuple[int, ...] = (1, 2, 3)  # frame distances of the pairs the temporal term sees
    # chance a pair starts at one of the step's labelled frames (else at any frame), and the share
    # of a round's steps over which the temporal weight ramps 0 -> lam. Measured when the pairs
    # were the whole batch: pairs of unlabelled frames and a full-weight term from step one starved
    # the cross-entropy in round one (davis2016 breakdance / car-roundabout: 0.520 / 0.540 mIoU at
    # 0.5 and no ramp, 0.641 / 0.613 at 0.8 + 0.5)
    annotated_share: float = 0.8
    lam_warmup: float = 0.5
    lr: float = 1e-3               # decoder learning rate
    encoder_lr_scale: float = 0.1  # fine-tuned encoder blocks learn at lr * this
    weight_decay: float = 1e-4
    frozen_blocks: int = FROZEN_BLOCKS
    class_weight_clip: tuple[float, float] = (0.2, 5.0)
    seed: int = 0


class VideoFineTuner:
    """Fine-tunes a segmentation model on one video and predicts all its frames.

    ``frames``: (T, h, w[, 3]) uint8 frames at the working resolution (h, w multiples of 32),
    ``flows``: the :class:`FlowCache` of those frames. The loss of a step is cross-entropy on
    the labelled pixels of ``2 * pairs`` annotated frames plus ``lam`` times
    :func:`temporal_loss` over ``pairs`` pairs of frames ``gaps`` apart, on pixels the flow check
    trusts; the pairs' extra frames join the step's batch (see :meth:`_draw_batch`). Without the
    term, fine-tuning on a few labelled units overfits them as rounds go on (ctc_sim, one seed:
    0.897, 0.862, 0.763 mIoU over three rounds; with it 0.902, 0.911, 0.913).
    Rounds continue from the previous round's weights.
    """

    def __init__(self, frames: np.ndarray, flows: FlowCache, num_classes: int,
                 settings: FineTuneSettings | None = None, device=None, pretrained: bool = True):
        import torch

        from napari_hitl.model.backbone import describe_device, select_device
        from napari_hitl.io import as_float_rgb
        from napari_hitl.model.segnet import build_segnet

        frames = np.asarray(frames)
        if len(frames) != len(flows):
            raise InputError(f"{len(frames)} frames but a flow cache of {len(flows)}")
        h, w = frames.shape[1:3]
        if h % 32 or w % 32:
            raise InputError(f"working frames must be multiples of 32 px, got {h}x{w} (see working_shape)")
        self.frames = frames
        self.flows = flows
        self.num_classes = int(num_classes)
        self.settings = settings or FineTuneSettings()
        self.device = device if device is not None and not isinstance(device, str) else select_device(device)
        self.device_description = describe_device(self.device)
        self.model = build_segnet(self.num_classes, pretrained=pretrained).to(self.device)
        s = self.settings
        for name, p in self.model.named_parameters():
            if name.startswith(("encoder._conv_stem", "encoder._bn0")):
                p.requires_grad = False
            elif name.startswith("encoder._blocks."):
                p.requires_grad = int(name.split(".")[2]) >= s.frozen_blocks
        enc = [p for n, p in self.model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
        dec = [p for n, p in self.model.named_parameters() if not n.startswith("encoder.")]
        groups = [{"params": dec, "lr": s.lr, "base_lr": s.lr}]
        if enc:
            groups.append({"params": enc, "lr": s.lr * s.encoder_lr_scale, "base_lr": s.lr * s.encoder_lr_scale})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
        self._x = torch.from_numpy(np.stack([as_float_rgb(f).transpose(2, 0, 1) for f in frames]))
        self._rng = np.random.default_rng(s.seed)  # the cross-entropy frames of each step
        self._pair_rng = np.random.default_rng([s.seed, 1])  # the temporal pairs
        self._trust: dict[tuple[int, int], np.ndarray] = {}
        self.history: list[dict] = []

    def _pair_tensors(self, i: int, j: int):
        import torch

        if (i, j) not in self._trust:
            self._trust[(i, j)] = self.flows.trusted(i, j)
        return (torch.from_numpy(self.flows.flow(i, j)), torch.from_numpy(self._trust[(i, j)]))

    def _class_weights(self, labels: np.ndarray) -> np.ndarray:
        counts = np.bincount(labels[labels >= 0].ravel().astype(np.int64), minlength=self.num_classes)
        counts = counts[:self.num_classes].astype(np.float64)
        seen = counts > 0
        w = np.full(self.num_classes, self.settings.class_weight_clip[1])
        if seen.any():
            w[seen] = counts.sum() / (counts[seen] * seen.sum())
        return np.clip(w, *self.settings.class_weight_clip).astype(np.float32)

    def _draw_batch(self, annotated: np.ndarray, pick_p: np.ndarray, n: int):
        """One step's frames: ``2 * pairs`` annotated frames for the cross-entropy, then (with a
        temporal term) the extra frames of its pairs. Returns (frame indices, how many lead for
        the cross-entropy, pairs as (batch position a, batch position b, frame a, frame b)).

        The cross-entropy frames come from their own random stream, so fine-tune and
        fine-tune + temporal with one seed see the same labelled batches and differ only by the
        temporal term. A pair starts at one of those frames (``annotated_share`` of the time) or
        at any frame, and its partner lies ``gaps`` away.
        """
        s = self.settings
        idx = [int(annotated[i]) for i in self._rng.choice(len(annotated), 2 * s.pairs, p=pick_p)]
        n_ce = len(idx)
        pairs = []
        if s.lam > 0 and n > 1:
            rng = self._pair_rng
            for k in range(s.pairs):
                if rng.random() < s.annotated_share:
                    a, t = k, idx[k]
                else:
                    a, t = len(idx), int(rng.integers(n))
                    idx.append(t)
                g = int(rng.choice([g for g in s.gaps if g < n]))
                u = t + g if (rng.random() < 0.5 and t + g < n) or t - g < 0 else t - g
                pairs.append((a, len(idx), t, u))
                idx.append(u)
        return idx, n_ce, pairs

    def fit(self, labels: np.ndarray, steps: int | None = None,
            progress: Callable[[int, int, float], None] | None = None,
            should_stop: Callable[[], bool] | threading.Event | None = None) -> dict:
        """Fine-tune on ``labels`` ((T, h, w), -1 unlabelled, working resolution) for one round.

        ``progress(step, total, loss)`` after each step; a true ``should_stop()`` ends the
        round early. Returns {'steps', 'seconds', 'loss', 'ce', 'temporal', 'cancelled'}.
        """
        import torch
        from torch.nn import functional as F

        stop = should_stop.is_set if isinstance(should_stop, threading.Event) else should_stop
        labels = np.asarray(labels)
        if labels.shape != self.frames.shape[:3]:
            raise InputError(f"labels of shape {labels.shape} do not match the frames {self.frames.shape[:3]}")
        s = self.settings
        steps = int(s.steps if steps is None else steps)
        per_frame = (labels >= 0).reshape(len(labels), -1).sum(1)
        annotated = np.flatnonzero(per_frame)
        if len(annotated) == 0:
            raise InputError("no labelled pixels in the video: label at least one unit first")
        pick_p = np.sqrt(per_frame[annotated].astype(np.float64))
        pick_p /= pick_p.sum()
        cw = torch.from_numpy(self._class_weights(labels)).to(self.device)
        y_all = torch.from_numpy(labels.astype(np.int64))
        n = len(labels)
        t0 = time.perf_counter()
        self.model.train()
        for m in self.model.encoder.modules():  # frozen BN statistics: tiny batches from one video
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        losses, ces, temps = [], [], []
        cancelled = False
        for step in range(steps):
            if stop is not None and stop():
                cancelled = True
                break
            frac = step / max(1, steps)
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * min(1.0, (step + 1) / 10) * (0.1 + 0.45 * (1 + np.cos(np.pi * frac)))
            idx, n_ce, pairs = self._draw_batch(annotated, pick_p, n)
            x = self._x[idx].to(self.device)
            y = y_all[idx[:n_ce]].to(self.device)
            logits = self.model(x)
            per_px = F.cross_entropy(logits[:n_ce], y.clamp_min(0), weight=None, reduction="none")
            wpx = (y >= 0).to(per_px.dtype) * cw[y.clamp_min(0)]
            ce = (per_px * wpx).sum() / wpx.sum().clamp_min(1.0)
            loss = ce
            temp = torch.zeros((), device=self.device)
            if pairs:
                probs = torch.softmax(logits, 1)
                a = [p[0] for p in pairs]
                b = [p[1] for p in pairs]
                fl, tr = zip(*(self._pair_tensors(p[2], p[3]) for p in pairs))
                warped = warp_torch(probs[b], torch.stack(fl).to(self.device))
                temp = temporal_loss(probs[a], warped, torch.stack(tr).to(self.device))
                ramp = min(1.0, (step + 1) / (s.lam_warmup * steps)) if s.lam_warmup > 0 else 1.0
                loss = ce + s.lam * ramp * temp
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
            ces.append(float(ce.detach()))
            temps.append(float(temp.detach()))
            if progress is not None:
                progress(step + 1, steps, losses[-1])
        self.model.eval()
        out = {"steps": len(losses), "seconds": time.perf_counter() - t0, "cancelled": cancelled,
               "loss": float(np.mean(losses[-10:])) if losses else float("nan"),
               "ce": float(np.mean(ces[-10:])) if ces else float("nan"),
               "temporal": float(np.mean(temps[-10:])) if temps else float("nan")}
        self.history.append(out)
        return out

    def predict(self, with_features: bool = False, progress=None, should_stop=None):
        """Probabilities (T, C, h, w) float32 of every frame (and (T, D, h/16, w/16) features)."""
        from napari_hitl.model.segnet import predict_proba_batch

        out = predict_proba_batch(self.model, list(self.frames), batch_size=4, with_features=with_features,
                                  progress=progress, should_stop=should_stop)
        if any(o is None for o in out):
            return None
        if with_features:
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        return np.stack(out)


# -- choosing what to annotate ------------------------------------------------------------------
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


def motion_scores(units: UnitSet, flows: FlowCache) -> np.ndarray:
    """Per unit: mean motion of its pixels against the frame's dominant (median) motion.

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


# -- a session: rounds of select, annotate, fine-tune, predict ----------------------------------
@dataclass
class RoundRecord:
    """What one round did: units labelled, their clicks, seconds spent per stage."""

    round: int
    units: list[int] = field(default_factory=list)
    clicks: int = 0
    seconds: dict = field(default_factory=dict)


class VideoSession:
    """One video being labelled: frames, flows, units, human labels and the fine-tuned model.

    ``frames`` (T, H, W[, 3]) at full resolution; the model and flows work at ``scale``
    (see :func:`working_shape`); units, labels and clicks stay at full resolution.
    ``cache_dir`` keeps the flows (e.g. the project's cache folder) so they are computed once.
    ``round_one_motion``: rank round one's units by motion before the diversity pick (False:
    diversity alone).
    """

    def __init__(self, frames, num_classes: int, unit: str | UnitSet = "rect40", cache_dir=None,
                 scale: float = 0.5, flow_method: str = "dis", settings: FineTuneSettings | None = None,
                 progress: Callable[[str, int, int], None] | None = None, round_one_motion: bool = True):
        import tempfile

        from napari_hitl.video.flow import to_gray

        frames = [np.asarray(f) for f in frames]
        if not frames:
            raise InputError("a video needs at least one frame")
        if any(f.shape != frames[0].shape for f in frames):
            raise InputError("all frames of a video must have one shape")
        self.num_frames = len(frames)
        self.shape = frames[0].shape[:2]
        self.num_classes = int(num_classes)
        self.work_shape = working_shape(self.shape, scale)
        eight = [f if f.dtype == np.uint8 else to_gray(f) for f in frames]
        self.work_frames = resize_frames(eight, self.work_shape)
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-hitl-flow-")
            cache_dir = self._tmp.name
        self.flows = FlowCache(self.work_frames, cache_dir, method=flow_method)
        self.units = unit if isinstance(unit, UnitSet) else UnitSet.from_spec(unit, frames)
        if self.units.num_frames != self.num_frames or self.units.shape != self.shape:
            raise InputError("the units do not match the video's frames")
        self.labels = np.full((self.num_frames,) + self.shape, UNLABELLED, np.int16)
        self.annotated = np.zeros(len(self.units), bool)
        self.clicks = 0
        self.settings = settings or FineTuneSettings()
        self.progress = progress
        self.round_one_motion = bool(round_one_motion)
        self.rounds: list[RoundRecord] = []

    # -- human labels ---------------------------------------------------------------------------
    def set_unit_labels(self, index: int, unit_labels: np.ndarray, clicks: int) -> None:
        """Store the labels of unit ``index`` (an array over the unit's bbox) and what they cost."""
        bbox, local = self.units.local_mask(index)
        y0, x0, y1, x1 = bbox
        unit_labels = np.asarray(unit_labels)
        if unit_labels.shape != local.shape:
            raise InputError(f"labels of unit {index} must have its bbox shape {local.shape}, got {unit_labels.shape}")
        if unit_labels[local].min(initial=0) < 0 or unit_labels[local].max(initial=0) >= self.num_classes:
            raise InputError(f"labels of unit {index} must be classes 0..{self.num_classes - 1}")
        t = self.units.frame_of(index)
        self.labels[t, y0:y1, x0:x1][local] = unit_labels[local]
        self.annotated[index] = True
        self.clicks += int(clicks)

    def work_labels(self) -> np.ndarray:
        """Human labels at the working resolution (-1 unlabelled)."""
        return resize_labels(self.labels, self.work_shape)

    # -- predictions ------------------------------------------------------------------------------
    def propagate(self) -> np.ndarray:
        """Baseline labels (T, H, W) for every frame: :func:`propagate_labels`, human labels on top."""
        small = propagate_labels(self.work_labels(), self.flows)
        return self.with_human_labels(resize_labels(small, self.shape))

    def with_human_labels(self, pred: np.ndarray) -> np.ndarray:
        """``pred`` (T, H, W) with every human-labelled pixel set to its human label."""
        return np.where(self.labels >= 0, self.labels, pred).astype(np.int16)

    def labels_from_probs(self, probs: np.ndarray) -> np.ndarray:
        """Full-resolution labels (T, H, W) from working-resolution probabilities, humans on top."""
        out = np.empty((self.num_frames,) + self.shape, np.int16)
        for t in range(self.num_frames):
            out[t] = upsample_probs(probs[t], self.shape).argmax(0)
        return self.with_human_labels(out)

    def new_tuner(self, lam: float | None = None, device=None, pretrained: bool = True) -> VideoFineTuner:
        """A fresh model to fine-tune on this video (``lam`` overrides the temporal weight)."""
        from dataclasses import replace

        s = self.settings if lam is None else replace(self.settings, lam=float(lam))
        return VideoFineTuner(self.work_frames, self.flows, self.num_classes, s, device, pretrained)

    def scores(self, probs: np.ndarray | None, feats: np.ndarray, first_round: bool
               ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Per unit: score, pooled features, and whether the score ranks units. Later rounds
        score margin uncertainty; round one scores motion (:func:`motion_scores`) when
        ``self.round_one_motion`` and the video moves, else nothing (diversity alone). Pass
        them to :func:`select_units` with ``first_round=not ranked``."""
        scores, pooled = unit_scores(self.units, None if first_round else probs, feats)
        if not first_round:
            return scores, pooled, True
        if self.round_one_motion:
            scores = motion_scores(self.units, self.flows)
        return scores, pooled, bool(np.ptp(scores) > 0)

    def precompute_flows(self, gaps=(1, 2, 3)) -> None:
        """Compute every flow the propagation and the temporal term need (cached on disk)."""
        cb = None if self.progress is None else (lambda d, n: self.progress("flow", d, n))
        self.flows.precompute(gaps=[g for g in gaps if g < self.num_frames], progress=cb)
