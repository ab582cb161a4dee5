"""One video being labelled: frames, flows, units, human labels and the fine-tuned model.

A :class:`VideoSession` holds the frames, their flows (cached on disk), the annotation units
and the human labels so far; each round selects units (margin uncertainty + k-means diversity;
in round one, with no model yet, motion against the camera + diversity), takes their labels,
fine-tunes and re-predicts every frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner
from napari_hitl.video.flow import FlowCache
from napari_hitl.video.propagate import (NO_LABEL, propagate_labels, resize_frames, resize_labels, upsample_probs,
                                         working_shape)
from napari_hitl.video.selection import motion_scores, unit_scores
from napari_hitl.video.trust import motion_trust
from napari_hitl.video.units import UnitSet


#: round one ranks units by motion only when the one-frame flows' mean confidence on moving
#: pixels reaches this (davis2016, 30 frames at half resolution: breakdance 0.30, kite-surf 0.46,
#: car-roundabout 0.59, blackswan 0.72, camel 0.81, dog 0.87); set a priori, not tuned
MOTION_TRUST_MIN = 0.4


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
    diversity alone); it applies only while the flow is trusted where things move
    (:func:`~napari_hitl.video.trust.motion_trust` >= ``motion_trust_min``), else round one
    falls back to diversity alone.
    """

    def __init__(self, frames, num_classes: int, unit: str | UnitSet = "rect40", cache_dir=None,
                 scale: float = 0.5, flow_method: str = "dis", settings: FineTuneSettings | None = None,
                 progress: Callable[[str, int, int], None] | None = None, round_one_motion: bool = True,
                 motion_trust_min: float = MOTION_TRUST_MIN):
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
        self.labels = np.full((self.num_frames,) + self.shape, NO_LABEL, np.int16)
        self.annotated = np.zeros(len(self.units), bool)
        self.clicks = 0
        self.settings = settings or FineTuneSettings()
        self.progress = progress
        self.round_one_motion = bool(round_one_motion)
        if not 0 <= motion_trust_min <= 1:
            raise InputError(f"motion_trust_min must lie in [0, 1], got {motion_trust_min}")
        self.motion_trust_min = float(motion_trust_min)
        self.motion_trust: float | None = None  # measured on first use
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
        ``self.round_one_motion``, the video moves and its flow is trusted where it moves
        (:meth:`flow_trusted`), else nothing (diversity alone). Pass
        them to :func:`select_units` with ``first_round=not ranked``."""
        scores, pooled = unit_scores(self.units, None if first_round else probs, feats)
        if not first_round:
            return scores, pooled, True
        if self.round_one_motion and self.flow_trusted():
            scores = motion_scores(self.units, self.flows)
        return scores, pooled, bool(np.ptp(scores) > 0)

    def flow_trusted(self) -> bool:
        """Whether the flow is trusted where things move (:func:`motion_trust` >= ``motion_trust_min``)."""
        if self.motion_trust is None:
            self.motion_trust = motion_trust(self.flows) if self.num_frames > 1 else 0.0
        return self.motion_trust >= self.motion_trust_min

    def precompute_flows(self, gaps=(1, 2, 3)) -> None:
        """Compute every flow the propagation and the temporal term need (cached on disk)."""
        cb = None if self.progress is None else (lambda d, n: self.progress("flow", d, n))
        self.flows.precompute(gaps=[g for g in gaps if g < self.num_frames], progress=cb)
