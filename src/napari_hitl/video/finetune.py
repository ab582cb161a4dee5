"""Test-time fine-tuning of the segmentation model on one video, with a temporal-consistency
loss along optical flow. Labels mark unlabelled pixels with ``NO_LABEL`` (-1). Torch is
imported lazily."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.model.train import adamw, inverse_frequency_weights
from napari_hitl.video.flow import FlowCache, inside
from napari_hitl.video.trust import agreement_factor, flow_confidence, flow_evidence, label_agreement, temporal_weight

#: index of the first encoder block that is fine-tuned (stem and blocks 0-4, strides 2-8, stay frozen)
FROZEN_BLOCKS = 5


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


def temporal_loss(probs, warped_probs, weight):
    """Temporal-consistency term: the squared difference between a frame's class probabilities
    (B, C, H, W) and its neighbour's probabilities warped onto it, weighted per pixel by
    ``weight`` ((B, H, W), bool or flow confidence in [0, 1]) and averaged over all pixels, so
    the term shrinks with the share of the frame whose flow is trusted (0 when none is)."""
    sq = ((probs - warped_probs) ** 2).sum(1)
    return (sq * weight.to(sq.dtype)).sum() / max(1, sq.numel())


def anchored(probs, annotated):
    """``probs`` (B, C, H, W) with the gradient cut on ``annotated`` pixels ((B, H, W) bool):
    there the temporal term may pull the neighbour towards the human-labelled frame but never
    moves the prediction of a labelled pixel (only the labels' cross-entropy does)."""
    import torch

    return torch.where(annotated[:, None], probs.detach(), probs)


def crop_shape(h: int, w: int, crop: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of the windows fine-tuning trains on for (h, w) frames: ``crop`` is
    (short side, long side), laid along the frame's orientation and capped by the frame (a side
    no longer than the window's is used whole); None: the whole frame."""
    if crop is None:
        return int(h), int(w)
    short, long_ = (int(c) for c in crop)
    if short <= 0 or long_ < short or short % 32 or long_ % 32:
        raise InputError(f"crop must be (short, long) px, multiples of 32 with short <= long, got {crop}")
    ch, cw = (short, long_) if h <= w else (long_, short)
    return min(int(h), ch), min(int(w), cw)


class LabelledPixels:
    """The flat indices of one frame's labelled pixels (``labels >= 0``) in row-major order, as
    ``np.flatnonzero`` gives them, found when asked: it keeps the frame (a view) and a running
    count per row (``h`` integers), not an int64 per labelled pixel (280 MB for 90 labelled
    frames of 480x864). ``len()`` and ``[i]`` answer exactly as that array would."""

    def __init__(self, labels: np.ndarray):
        self._labels = labels
        self._rows = np.cumsum(np.count_nonzero(labels >= 0, axis=1))

    def __len__(self) -> int:
        return int(self._rows[-1]) if len(self._rows) else 0

    def __getitem__(self, i) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"labelled pixel {i} of {len(self)}")
        y = int(np.searchsorted(self._rows, i, side="right"))
        before = int(self._rows[y - 1]) if y else 0
        return y * self._labels.shape[1] + int(np.flatnonzero(self._labels[y] >= 0)[i - before])


def _start_around(p: int, c: int, n: int, rng) -> int:
    """Start of a length-``c`` window inside [0, n) that holds position ``p``, uniformly drawn."""
    return int(rng.integers(max(0, p - c + 1), min(p, n - c) + 1))


# -- test-time fine-tuning ----------------------------------------------------------------------
@dataclass
class FineTuneSettings:
    """Hyper-parameters of fine-tuning the model on one video (see :class:`VideoFineTuner`)."""

    steps: int = 120               # optimiser steps per round
    pairs: int = 2                 # temporal pairs per step; 2 * pairs labelled frames per step
    # weight of the temporal term (0: fine-tune only); with ``adaptive`` the most it may reach:
    # each round the video's weight is set from how well the flow explains the human labels
    # (:func:`napari_hitl.video.trust.temporal_weight` of the trust of
    # :func:`~napari_hitl.video.trust.flow_evidence`: 0 at trust <= trust_low, lam at >= trust_high).
    # The term is now averaged over all pixels and weighted by flow confidence (about 0.5 on
    # annotated davis2016 pixels), so lam 100 here is about the old fixed lam 50 on trusted flow.
    # lam and the bounds were set a priori from the trust values seen on davis2016 (0.44 - 0.79
    # with round-one labels). The bounds are cross-validated against 0.3 / 0.6 (round one only,
    # one seed, folds of three sequences; ``napari-hitl bench video-cv``,
    # docs/bench/davis2016_cv.md): the fold with trusts >= 0.6 cannot tell them apart, the other
    # chooses 0.3 / 0.6 (0.2 / 0.4 puts breakdance, trust 0.50, 0.021 below plain fine-tuning;
    # 0.3 / 0.6 0.006); the folds disagree, so these stay. lam itself is not cross-validated.
    # Held out, 30 frames, 2.4% clicks: fine-tune + temporal 0.795 mIoU mean, worst 0.562
    # (fine-tune 0.594, propagation 0.637)
    lam: float = 100.0
    adaptive: bool = True
    trust_low: float = 0.2
    trust_high: float = 0.4
    gaps: tuple[int, ...] = (1, 2, 3)  # frame distances of the pairs the temporal term sees
    # chance a pair starts at one of the step's labelled frames (else at any frame), and the share
    # of a round's steps over which the temporal weight ramps 0 -> lam. Measured when the pairs
    # were the whole batch: pairs of unlabelled frames and a full-weight term from step one starved
    # the cross-entropy in round one (davis2016 breakdance / car-roundabout: 0.520 / 0.540 mIoU at
    # 0.5 and no ramp, 0.641 / 0.613 at 0.8 + 0.5)
    annotated_share: float = 0.8
    lam_warmup: float = 0.5
    # the temporal term enters only after the first ``probe_share`` of a round's steps (labels
    # alone until then, so fine-tune and fine-tune + temporal with one seed are the same model up
    # to that step), ramping 0 -> the weight by step ``lam_warmup * steps``. With ``adaptive``
    # and agreement bounds, at that step the model predicts the annotated frames' neighbours and
    # the flow is tested on them (:func:`~napari_hitl.video.trust.label_agreement`: the labels
    # carried along the flow against the human labels there, else that prediction); the weight
    # is multiplied by :func:`~napari_hitl.video.trust.agreement_factor` (0 at agreement <=
    # agree_low, 1 at >= agree_high). None: the weight from the flow's confidence alone.
    # Both off: measured on davis2016 round one (docs/bench/davis2016_cv_v2.md, one seed, fine-tune
    # alone unchanged), a probe at 0.25 (30 of 120 steps) puts fine-tune + temporal lower on five
    # sequences (equal on kite-surf) than the term from step one (mIoU 0.675 / 0.882 / 0.918 / 0.518 / 0.813 / 0.837
    # against 0.751 / 0.883 / 0.921 / 0.562 / 0.813 / 0.841 for blackswan, camel, dog,
    # breakdance, kite-surf, car-roundabout), and the agreement with that model does not find the
    # fast-motion sequence: breakdance 0.854 (lam stays 100, f+t 0.065 below fine-tune alone)
    # while kite-surf and car-roundabout, where the term gains 0.23 and 0.25, come out near 0.73.
    # Against the true masks the same measure does separate them (breakdance 0.55, the others
    # >= 0.91): the model after 30 steps is too poor a reference. probe_share 0 with no bounds is
    # exactly the fit of before.
    probe_share: float = 0.0
    agree_low: float | None = None
    agree_high: float | None = None
    lr: float = 1e-3               # decoder learning rate
    encoder_lr_scale: float = 0.1  # fine-tuned encoder blocks learn at lr * this
    weight_decay: float = 1e-4
    frozen_blocks: int = FROZEN_BLOCKS
    class_weight_clip: tuple[float, float] = (0.2, 5.0)
    # (short side, long side) in px of the windows a step trains on, laid along the frame's own
    # orientation; a frame no larger than the window along a side is used whole along it, so
    # 256x416 frames (davis2016 at --scale 0.5, where every value above was set) train on whole
    # frames exactly as before. Larger frames train on random crops of that size: a labelled
    # frame's window holds one of its labelled pixels, a temporal pair shares one window (see
    # :meth:`VideoFineTuner._draw_windows`). Chosen a priori, not tuned: a window of the
    # half-resolution working frame's size keeps the pixels per step the settings were set on,
    # and cuts a step on 480x864 frames (davis2016 full resolution) to 0.28 of the pixels (CPU
    # seconds per step 8.3 -> 1.7). Measured after the choice, camel, 90 frames at full
    # resolution, one round, one seed (docs/bench/davis2016_full_length_v2.json): fit 1966 ->
    # 532 s (both under load), fine-tune + temporal mIoU 0.699 -> 0.677. None: whole frames.
    crop: tuple[int, int] | None = (256, 448)
    seed: int = 0


class VideoFineTuner:
    """Fine-tunes a segmentation model on one video and predicts all its frames.

    ``frames``: (T, h, w[, 3]) uint8 frames at the working resolution (h, w multiples of 32),
    ``flows``: the :class:`FlowCache` of those frames. The loss of a step is cross-entropy on
    the labelled pixels of ``2 * pairs`` annotated frames plus the video's temporal weight times
    :func:`temporal_loss` over ``pairs`` pairs of frames ``gaps`` apart, each pixel weighted by
    its flow confidence (:func:`~napari_hitl.video.trust.pixel_confidence`) and labelled pixels
    :func:`anchored`; the pairs' extra frames join the step's batch (see :meth:`_draw_batch`).
    Frames larger than ``settings.crop`` train on windows of that size (:meth:`_draw_windows`);
    prediction always runs on whole frames.
    With ``settings.adaptive`` the weight is set each round from the flow's agreement with the
    human labels (untrusted flow: weight 0, i.e. exactly plain fine-tuning), and, with agreement
    bounds, from how well the flow carries the labels onto the neighbouring frames, tested at the
    round's probe step against the model's own prediction (:meth:`probe`). The temporal term
    enters only at that step (``probe_share`` of the round), so until then the round is plain
    fine-tuning. Without the
    term, fine-tuning on a few labelled units overfits them as rounds go on (ctc_sim, one seed:
    0.897, 0.862, 0.763 mIoU over three rounds; with it 0.902, 0.911, 0.913).
    Rounds continue from the previous round's weights. The model's random start and every
    step's draws come from ``settings.seed``: with one seed and labels, fine-tune and
    fine-tune + temporal start from the same weights, are the same model up to the probe step of
    round one and differ only by the temporal term after it, and a tuner whose weight is 0
    (:meth:`temporal_weight`) repeats plain fine-tuning exactly.
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
        s = self.settings
        # the decoder's random start comes from the seed (global torch state untouched), so two
        # tuners with one seed (fine-tune and fine-tune + temporal) start from the same weights
        # and a run repeats exactly on one machine
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            # frames reach the network as plain pixels (no contrast stretch): its own batches below
            self.model = build_segnet(self.num_classes, pretrained=pretrained, input_stretch=False).to(self.device)
        for name, p in self.model.named_parameters():
            if name.startswith(("encoder._conv_stem", "encoder._bn0")):
                p.requires_grad = False
            elif name.startswith("encoder._blocks."):
                p.requires_grad = int(name.split(".")[2]) >= s.frozen_blocks
        self.optimizer = adamw(self.model, s.lr, s.encoder_lr_scale, s.weight_decay)
        if frames.dtype == np.uint8:  # kept as bytes (a quarter of float32: 300 frames of 480p in 370 MB)
            rgb = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, -1)
            self._x = torch.from_numpy(np.ascontiguousarray(rgb[..., :3].transpose(0, 3, 1, 2)))
        else:
            self._x = torch.from_numpy(np.stack([as_float_rgb(f).transpose(2, 0, 1) for f in frames]))
        self._rng = np.random.default_rng(s.seed)  # the cross-entropy frames of each step
        self._pair_rng = np.random.default_rng([s.seed, 1])  # the temporal pairs
        self._crop_rng = np.random.default_rng([s.seed, 2])  # the cross-entropy frames' windows
        self.crop_shape = crop_shape(h, w, s.crop)
        self.cropping = self.crop_shape != (h, w)
        self._conf: dict[tuple[int, int], np.ndarray] = {}  # flow confidence, uint8 (0..255)
        self.history: list[dict] = []

    def confidence(self, i: int, j: int) -> np.ndarray:
        """Flow confidence i -> j as float32 (kept as uint8 per pair: 600 pairs of 480p fit in 250 MB)."""
        if (i, j) not in self._conf:
            self._conf[(i, j)] = np.rint(flow_confidence(self.flows, i, j) * 255).astype(np.uint8)
        return self._conf[(i, j)].astype(np.float32) / 255.0

    def temporal_weight(self, labels: np.ndarray) -> tuple[float, dict]:
        """This round's temporal weight for ``labels`` from the flow's confidence and the human
        labels' overlaps (:func:`~napari_hitl.video.trust.flow_evidence`), and the evidence
        behind it; :meth:`probe` may lower it further."""
        s = self.settings
        if s.lam <= 0 or len(labels) < 2:
            return 0.0, {}
        if not s.adaptive:
            return float(s.lam), {}
        ev = flow_evidence(labels, self.flows, [g for g in s.gaps if g < len(labels)], confidence=self.confidence)
        return temporal_weight(ev.trust, s.lam, s.trust_low, s.trust_high), ev.as_dict()

    @property
    def probes(self) -> bool:
        """Whether the weight is bounded by the labels' agreement with the model's prediction."""
        s = self.settings
        return s.adaptive and s.agree_low is not None and s.agree_high is not None

    def probe(self, labels: np.ndarray) -> tuple[float, int]:
        """(agreement, pixels) of :func:`~napari_hitl.video.trust.label_agreement` for ``labels``,
        the reference being the human labels where a frame has them, else the current model's
        prediction (only the annotated frames' neighbours are predicted)."""
        from napari_hitl.model.segnet import predict_proba_batch

        s = self.settings
        n = len(labels)
        gaps = [g for g in s.gaps if g < n]
        annotated = np.flatnonzero((labels >= 0).reshape(n, -1).any(1))
        need = sorted({int(u) for t in annotated for g in gaps for u in (t - g, t + g) if 0 <= u < n})
        reference = np.full(labels.shape, -1, np.int16)
        if need:
            probs = predict_proba_batch(self.model, [self.frames[u] for u in need], batch_size=4)
            self._train_mode()
            for u, p in zip(need, probs):
                reference[u] = np.where(labels[u] >= 0, labels[u], np.asarray(p).argmax(0))
        return label_agreement(labels, reference, self.flows, gaps, confidence=self.confidence, frames=annotated)

    def _train_mode(self) -> None:
        import torch

        self.model.train()
        for m in self.model.encoder.modules():  # frozen BN statistics: tiny batches from one video
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()

    def _pair_tensors(self, i: int, j: int, window: tuple[int, int] = (0, 0)):
        """Flow i -> j and its confidence inside the training window starting at ``window``
        (y0, x0): a correspondence that leaves the window gets confidence 0 (its partner pixel
        is not in the batch)."""
        import torch

        if not self.cropping:
            return torch.from_numpy(self.flows.flow(i, j)), torch.from_numpy(self.confidence(i, j))
        (y0, x0), (ch, cw) = window, self.crop_shape
        flow = np.ascontiguousarray(self.flows.flow(i, j)[y0:y0 + ch, x0:x0 + cw])
        conf = self.confidence(i, j)[y0:y0 + ch, x0:x0 + cw] * inside(flow)
        return torch.from_numpy(flow), torch.from_numpy(np.ascontiguousarray(conf, np.float32))

    def _draw_windows(self, idx: list[int], n_ce: int, pairs: list, labelled: dict[int, np.ndarray]
                      ) -> list[tuple[int, int]]:
        """The (y0, x0) start of each batch frame's training window (:attr:`crop_shape`).

        A cross-entropy frame's window holds one of its labelled pixels (``labelled[t]``: their
        flat indices, e.g. :class:`LabelledPixels`), drawn uniformly, at a uniformly drawn place in the window; these draws come
        from their own stream, so fine-tune and fine-tune + temporal with one seed crop the same
        labelled batches alike. A pair's partner takes the window of the frame it pairs with
        (one that started at any frame gets a uniform window from the pairs' stream), so the flow
        between them is the flow cropped to that window. Frames no larger than the window: all
        (0, 0) and no draws, i.e. exactly the whole-frame steps of before.
        """
        if not self.cropping:
            return [(0, 0)] * len(idx)
        h, w = self.frames.shape[1:3]
        ch, cw = self.crop_shape
        rng = self._crop_rng
        win: list = [None] * len(idx)
        for k in range(n_ce):
            flat = labelled[idx[k]]
            py, px = divmod(int(flat[rng.integers(len(flat))]), w)
            win[k] = (_start_around(py, ch, h, rng), _start_around(px, cw, w, rng))
        for a, b, _, _ in pairs:
            if win[a] is None:
                win[a] = (int(self._pair_rng.integers(h - ch + 1)), int(self._pair_rng.integers(w - cw + 1)))
            win[b] = win[a]
        return win

    def _cut(self, data, frames: list[int], windows: list[tuple[int, int]]):
        """``data[frames]`` (a tensor of frames first, pixels last) cut to each frame's window."""
        import torch

        if not self.cropping:
            return data[frames]
        ch, cw = self.crop_shape
        return torch.stack([data[t, ..., y0:y0 + ch, x0:x0 + cw] for t, (y0, x0) in zip(frames, windows)])

    def _class_weights(self, labels: np.ndarray) -> np.ndarray:
        counts = np.zeros(self.num_classes, np.int64)  # frame by frame: no int64 copy of every labelled pixel
        for frame in labels:
            counts += np.bincount(frame[frame >= 0].ravel().astype(np.int64), minlength=self.num_classes)[:self.num_classes]
        return inverse_frequency_weights(counts, self.settings.class_weight_clip)

    def _draw_batch(self, annotated: np.ndarray, pick_p: np.ndarray, n: int, lam: float | None = None):
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
        if (s.lam if lam is None else lam) > 0 and n > 1:
            rng = self._pair_rng
            for k in range(s.pairs):
                if rng.random() < s.annotated_share:
                    a, t = k, idx[k]
                else:
                    a, t = len(idx), int(rng.integers(n))
                    idx.append(t)
                # a partner inside the video (in one of 2 * max gap frames or fewer, some gaps fit
                # neither way for some frames; from 2 * max gap frames on, every gap < n fits)
                g = int(rng.choice([g for g in s.gaps if t + g < n or t - g >= 0]))
                u = t + g if (rng.random() < 0.5 and t + g < n) or t - g < 0 else t - g
                pairs.append((a, len(idx), t, u))
                idx.append(u)
        return idx, n_ce, pairs

    def fit(self, labels: np.ndarray, steps: int | None = None,
            progress: Callable[[int, int, float], None] | None = None,
            should_stop: Callable[[], bool] | threading.Event | None = None) -> dict:
        """Fine-tune on ``labels`` ((T, h, w), -1 unlabelled, working resolution) for one round.

        ``progress(step, total, loss)`` after each step; a true ``should_stop()`` ends the
        round early. Returns {'steps', 'seconds', 'loss', 'ce', 'temporal', 'cancelled', 'lam'
        (this round's temporal weight), 'evidence' (what set it, see :meth:`temporal_weight`
        and :meth:`probe`)}. The round is :meth:`begin_round`, :meth:`train` up to the probe
        step, :meth:`weigh`, :meth:`train` to the end, :meth:`end_round` (the benchmarks that
        share the first part between settings call these themselves).
        """
        run = self.begin_round(labels, steps, progress, should_stop)
        self.train(run, run.probe_step)
        self.weigh(run)
        self.train(run, run.steps)
        return self.end_round(run)

    def begin_round(self, labels: np.ndarray, steps: int | None = None,
                    progress: Callable[[int, int, float], None] | None = None,
                    should_stop: Callable[[], bool] | threading.Event | None = None) -> "_Round":
        """The state of one round of :meth:`fit` before its first step (weight not set yet)."""
        import torch

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
        labelled = {int(t): LabelledPixels(labels[t]) for t in annotated} if self.cropping else {}
        return _Round(labels=labels, steps=steps, probe_step=min(steps, int(round(s.probe_share * steps))),
                      annotated=annotated, pick_p=pick_p, labelled=labelled,
                      class_weights=torch.from_numpy(self._class_weights(labels)).to(self.device),
                      y_all=torch.from_numpy(  # the labels as they are (cut windows become int64 for the loss)
                           np.ascontiguousarray(labels) if labels.dtype.kind == "i" else labels.astype(np.int64)),
                      ann_all=torch.from_numpy(labels >= 0),
                      progress=progress, stop=stop, t0=time.perf_counter())

    def evidence(self, labels: np.ndarray, probe: bool | None = None) -> tuple[float, dict]:
        """(weight, evidence) for ``labels`` at a round's probe step: :meth:`temporal_weight`,
        and with ``probe`` (default :attr:`probes`) the labels' agreement along the flow with
        the current model (:meth:`probe`; keys 'label_agreement', 'agreement_pixels'), whose
        :func:`~napari_hitl.video.trust.agreement_factor` scales the weight when :attr:`probes`.
        No probe where the weight is already 0."""
        lam, evidence = self.temporal_weight(labels)
        if (self.probes if probe is None else probe) and lam > 0 and evidence:
            t = time.perf_counter()
            agreement, pixels = self.probe(labels)
            evidence = {**evidence, "label_agreement": agreement, "agreement_pixels": pixels,
                        "probe_seconds": time.perf_counter() - t}
            if self.probes:
                lam *= agreement_factor(agreement, self.settings.agree_low, self.settings.agree_high)
        return float(lam), evidence

    def weigh(self, run: "_Round") -> float:
        """Set the round's temporal weight and its evidence (:meth:`evidence`), at its probe step."""
        run.lam, run.evidence = self.evidence(run.labels) if not run.cancelled else (0.0, {})
        return run.lam

    def train(self, run: "_Round", until: int) -> None:
        """Steps of ``run`` up to step ``until`` (its weight from :meth:`weigh` once past the probe step)."""
        import torch
        from torch.nn import functional as F

        s = self.settings
        n = len(run.labels)
        self._train_mode()
        while run.step < until:
            step = run.step
            if run.stop is not None and run.stop():
                run.cancelled = True
                break
            lam = run.lam if step >= run.probe_step else 0.0
            frac = step / max(1, run.steps)
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * min(1.0, (step + 1) / 10) * (0.1 + 0.45 * (1 + np.cos(np.pi * frac)))
            idx, n_ce, pairs = self._draw_batch(run.annotated, run.pick_p, n, lam)
            win = self._draw_windows(idx, n_ce, pairs, run.labelled)
            x = self._cut(self._x, idx, win).to(self.device)
            if x.dtype == torch.uint8:
                x = x.float() / 255.0  # as as_float_rgb does for 8-bit frames
            y = self._cut(run.y_all, idx[:n_ce], win).to(self.device, torch.int64)
            logits = self.model(x)
            per_px = F.cross_entropy(logits[:n_ce], y.clamp_min(0), weight=None, reduction="none")
            wpx = (y >= 0).to(per_px.dtype) * run.class_weights[y.clamp_min(0)]
            ce = (per_px * wpx).sum() / wpx.sum().clamp_min(1.0)
            loss = ce
            temp = torch.zeros((), device=self.device)
            if pairs:
                probs = torch.softmax(logits, 1)
                a = [p[0] for p in pairs]
                b = [p[1] for p in pairs]
                fl, tr = zip(*(self._pair_tensors(p[2], p[3], win[p[0]]) for p in pairs))
                ann_a = self._cut(run.ann_all, [p[2] for p in pairs], [win[p] for p in a]).to(self.device)
                ann_b = self._cut(run.ann_all, [p[3] for p in pairs], [win[p] for p in b]).to(self.device)
                warped = warp_torch(anchored(probs[b], ann_b), torch.stack(fl).to(self.device))
                temp = temporal_loss(anchored(probs[a], ann_a), warped, torch.stack(tr).to(self.device))
                # 0 -> 1 from the probe step to step lam_warmup * steps
                end = s.lam_warmup * run.steps
                ramp = min(1.0, (step + 1 - run.probe_step) / max(1.0, end - run.probe_step)) if end > 0 else 1.0
                loss = ce + lam * ramp * temp
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            run.losses.append(float(loss.detach()))
            run.ces.append(float(ce.detach()))
            run.temps.append(float(temp.detach()))
            run.step += 1
            if run.progress is not None:
                run.progress(run.step, run.steps, run.losses[-1])
        self.model.eval()

    def end_round(self, run: "_Round") -> dict:
        """The round's record (as :meth:`fit` returns it), kept in :attr:`history`."""
        out = {"steps": len(run.losses), "seconds": time.perf_counter() - run.t0, "cancelled": run.cancelled,
               "loss": float(np.mean(run.losses[-10:])) if run.losses else float("nan"),
               "ce": float(np.mean(run.ces[-10:])) if run.ces else float("nan"),
               "temporal": float(np.mean(run.temps[-10:])) if run.temps else float("nan"),
               "lam": run.lam, "evidence": run.evidence}
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


@dataclass
class _Round:
    """One round of :meth:`VideoFineTuner.fit` in progress (:meth:`~VideoFineTuner.begin_round`)."""

    labels: np.ndarray
    steps: int
    probe_step: int
    annotated: np.ndarray
    pick_p: np.ndarray
    labelled: dict
    class_weights: object
    y_all: object
    ann_all: object
    progress: Callable | None = None
    stop: Callable | None = None
    t0: float = 0.0
    step: int = 0
    lam: float = 0.0
    evidence: dict = field(default_factory=dict)
    cancelled: bool = False
    losses: list = field(default_factory=list)
    ces: list = field(default_factory=list)
    temps: list = field(default_factory=list)

    def fork(self) -> "_Round":
        """A copy that goes on on its own (lists copied, label tensors shared)."""
        return replace(self, evidence=dict(self.evidence), losses=list(self.losses), ces=list(self.ces),
                       temps=list(self.temps))
