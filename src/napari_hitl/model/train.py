"""Trainer for the semantic model on human, machine-accepted and pseudo labels.

Works on plain arrays (:class:`Sample`: image, labels, provenance), so the UI worker, the
loop driver, the video code and the benchmarks share it; :func:`samples_from_project` adapts
an on-disk project. Human and machine-accepted pixels count fully, pseudo pixels with their
own weight, unlabelled pixels not at all. A sample with an instance map also trains the
instance head (boundary and distance-to-edge maps, :mod:`napari_hitl.model.instances`) on
its labelled pixels; semantic-only samples put no loss on that head. Each round fine-tunes the current weights;
checkpoints are written atomically, rounds can be resumed and cancelled between steps.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable

import numpy as np

from napari_hitl.errors import CorruptFileError, InputError
from napari_hitl.model.instances import check_instances, instance_targets, median_diameter, size_factor
from napari_hitl.project import ANSWERED, HUMAN, MACHINE, PSEUDO, UNLABELLED  # provenance codes of a pixel

CHECKPOINT_VERSION = 1

ProgressFn = Callable[[int, int, float], None]
log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One training image: ``labels`` (H, W) class ids, ``provenance`` (H, W) codes 0..3, and
    optionally ``instances`` (H, W) object ids (0 = none) that train the instance head."""

    image: np.ndarray
    labels: np.ndarray
    provenance: np.ndarray
    name: str = ""
    instances: np.ndarray | None = None

    def __post_init__(self):
        h, w = np.asarray(self.image).shape[:2]
        if np.shape(self.labels) != (h, w) or np.shape(self.provenance) != (h, w):
            raise InputError(f"sample {self.name!r}: labels {np.shape(self.labels)} and provenance "
                             f"{np.shape(self.provenance)} must both match the image size {(h, w)}")
        if self.instances is not None:
            self.instances = check_instances(self.instances, (h, w), f"sample {self.name!r}: instance map")

    @property
    def labelled_pixels(self) -> int:
        return int(np.count_nonzero(np.asarray(self.provenance) != UNLABELLED))


@dataclass
class TrainSettings:
    """Hyper-parameters of one training round (defaults: ~1.5 min on 2 CPU cores)."""

    steps: int = 150            # optimiser steps per round
    batch_size: int = 4
    crop: int = 256             # training crops are crop x crop (smaller images are padded)
    lr: float = 1e-3            # decoder learning rate
    encoder_lr_scale: float = 0.3  # encoder learning rate = lr * this
    weight_decay: float = 1e-4
    pseudo_weight: float = 0.5  # loss weight of PSEUDO pixels (HUMAN, MACHINE, SIMULATED: 1)
    instance_weight: float = 1.0  # weight of the instance head's loss (boundary + distance) beside the classes'
    # (3: no better on the dsb2018 pool's validation, worse on it zoomed 2x; docs/bench/dsb2018_recipe_pool_validation.json)
    instance_class_weights: bool = True  # the instance loss weighs pixels by their class weight, as the class
    # loss does (else every labelled pixel alike: the background, most pixels, then drowns the objects' insides)
    class_weight_clip: tuple[float, float] = (0.2, 5.0)  # inverse-frequency weights clipped here
    scale_range: tuple[float, float] = (0.7, 1.4)  # random rescale of crops ((0.5, 2.5): lower on the dsb2018
    # pool's validation, no better on it zoomed 2x; docs/bench/dsb2018_recipe_pool_validation.json)
    labelled_crop_bias: float = 0.8  # chance a crop is centred on a labelled pixel
    brightness: float = 0.15    # +/- additive brightness jitter
    contrast: float = 0.2       # +/- multiplicative contrast jitter
    # colour augmentations and per-sample rescaling: off. On the dsb2018 pool's validation images
    # (never its held-out ones; docs/bench/dsb2018_size_norm_validation.json) gray 0.25 + invert
    # 0.25 + channel 0.1 and object_diameter 20 each scored below the run without them
    channel_jitter: float = 0.0  # +/- multiplicative gain per colour channel
    gray_prob: float = 0.0      # chance a crop is made gray (its channel mean in all three)
    invert_prob: float = 0.0    # chance a crop is inverted (1 - pixels: bright objects on dark become dark on bright)
    object_diameter: float | None = None  # rescale each sample with instances so its objects' median diameter is this
    checkpoint_every: int = 50  # steps between checkpoints inside a round (0: end of round only)
    seed: int = 0


@dataclass
class TrainResult:
    """What a round did: steps run, mean loss per step, whether it was cancelled."""

    round: int
    steps_done: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    instance_losses: list[float] = field(default_factory=list)  # the instance head's part, steps that had any
    cancelled: bool = False
    checkpoint: Path | None = None
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return float(np.mean(tail)) if tail else float("nan")


def class_weights(samples: Iterable[Sample], num_classes: int, clip=(0.2, 5.0),
                  pseudo_weight: float = 0.5) -> np.ndarray:
    """Inverse-frequency class weights over labelled pixels, mean 1 over pixels, clipped.

    Classes never seen get the upper clip value (they cost nothing: no pixel carries them).
    """
    counts = np.zeros(num_classes, np.float64)
    for s in samples:
        prov = np.asarray(s.provenance)
        lab = np.asarray(s.labels)
        w = np.where(prov == PSEUDO, pseudo_weight, np.isin(prov, ANSWERED)).astype(np.float64)
        valid = (w > 0) & (lab < num_classes)
        counts += np.bincount(lab[valid].astype(np.int64), weights=w[valid], minlength=num_classes)[:num_classes]
    if counts.sum() <= 0:
        return np.ones(num_classes, np.float32)
    return inverse_frequency_weights(counts, clip)


def inverse_frequency_weights(counts: np.ndarray, clip=(0.2, 5.0)) -> np.ndarray:
    """float32 weights 1 / (frequency * classes seen) from per-class pixel ``counts``, clipped;
    classes never seen get the upper clip value. Shared by rounds on images and on videos."""
    counts = np.asarray(counts, np.float64)
    freq = counts / max(counts.sum(), 1e-12)
    seen = freq > 0
    weights = np.full(len(counts), clip[1], np.float64)
    weights[seen] = 1.0 / (freq[seen] * seen.sum())
    return np.clip(weights, clip[0], clip[1]).astype(np.float32)


def adamw(model, lr: float, encoder_lr_scale: float, weight_decay: float):
    """AdamW over the trainable encoder parameters (at ``lr * encoder_lr_scale``) and the decoder
    (at ``lr``); each group keeps its ``base_lr`` for the rounds' warm-up and cosine schedule."""
    import torch

    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    dec = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": enc, "lr": lr * encoder_lr_scale, "base_lr": lr * encoder_lr_scale}] if enc else []
    groups.append({"params": dec, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def _atomic_save(obj, path: Path) -> None:
    """torch.save through :func:`napari_hitl.io.atomic_write` (temp file, fsync, rename)."""
    import torch

    from napari_hitl.io import atomic_write

    atomic_write(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path) -> dict:
    """Read a checkpoint dict (raises CorruptFileError naming the file if it cannot be read)."""
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise CorruptFileError(f"model checkpoint {path} cannot be read: {err}") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "num_classes" not in ckpt:
        raise CorruptFileError(f"model checkpoint {path} is not a napari-hitl checkpoint")
    return ckpt


def extend_head(state: dict, fresh: dict, old_classes: int) -> dict:
    """``state`` of a model with ``old_classes`` outputs grown to the shape of ``fresh``: the
    old classes' head rows are kept, the new classes' rows come from ``fresh`` (initialised)."""
    out = dict(state)
    for key in ("head.weight", "head.bias"):
        if key not in state or key not in fresh:
            raise CorruptFileError(f"checkpoint has no {key}; it is not a napari-hitl segmentation model")
        grown = fresh[key].clone()
        grown[:old_classes] = state[key]
        out[key] = grown
    return out


class Trainer:
    """Fine-tunes a :func:`~napari_hitl.model.segnet.build_segnet` model round after round.

    ``trainer.train_round(samples, progress=cb, should_stop=event)`` runs
    ``settings.steps`` steps (or finishes an interrupted round), checkpointing to
    ``checkpoint_path`` when given. ``trainer.model`` is the live model (use it with
    :func:`~napari_hitl.model.segnet.predict_proba`). If ``checkpoint_path`` exists it is
    loaded, so a new Trainer resumes where the last one stopped.
    """

    def __init__(self, num_classes: int, checkpoint_path=None, settings: TrainSettings | None = None,
                 device=None, pretrained: bool = True):
        from napari_hitl.model.backbone import describe_device, select_device
        from napari_hitl.model.segnet import build_segnet

        self.num_classes = int(num_classes)
        self.settings = settings or TrainSettings()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.device = device if device is not None and not isinstance(device, str) else select_device(device)
        self.device_description = describe_device(self.device)
        self.model = build_segnet(self.num_classes, pretrained=pretrained).to(self.device)
        s = self.settings
        self.optimizer = adamw(self.model, s.lr, s.encoder_lr_scale, s.weight_decay)
        self.round = 0          # rounds started so far
        self.round_step = 0     # steps done in the current round
        self.round_steps = 0    # steps planned for the current round
        self.global_step = 0
        self.history: list[dict] = []
        self._rng = np.random.default_rng(s.seed)
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "num_classes": self.num_classes,
                "round": self.round, "round_step": self.round_step, "round_steps": self.round_steps,
                "global_step": self.global_step, "settings": asdict(self.settings),
                "history": list(self.history), "rng": self._rng.bit_generator.state}

    def save(self, path=None) -> Path:
        """Write a checkpoint atomically (temp file, flush, fsync, os.replace); returns its path."""
        path = Path(path) if path else self.checkpoint_path
        if path is None:
            raise InputError("no checkpoint path: pass one to save() or to Trainer(checkpoint_path=...)")
        _atomic_save(self.state_dict(), path)
        return path

    def load(self, path) -> None:
        """Restore model, optimiser, round and step counters from a checkpoint."""
        ckpt = load_checkpoint(path)
        old = int(ckpt["num_classes"])
        if old > self.num_classes:
            raise InputError(f"checkpoint {path} has {old} classes, the project only {self.num_classes}")
        if old < self.num_classes:  # classes were added since: keep the old ones, start the new ones fresh
            self.model.load_state_dict(extend_head(ckpt["model"], self.model.state_dict(), old))
        else:
            self.model.load_state_dict(ckpt["model"])
        fresh_head = getattr(self.model, "instance_head_fresh", False)
        if fresh_head:
            log.info("checkpoint %s predates the instance head: it starts fresh, the optimiser state too", path)
        if ckpt.get("optimizer") and old == self.num_classes and not fresh_head:  # other shapes do not fit
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.round = int(ckpt.get("round", 0))
        self.round_step = int(ckpt.get("round_step", 0))
        self.round_steps = int(ckpt.get("round_steps", 0))
        self.global_step = int(ckpt.get("global_step", 0))
        self.history = list(ckpt.get("history", []))
        if ckpt.get("rng"):
            self._rng.bit_generator.state = ckpt["rng"]

    @property
    def round_in_progress(self) -> bool:
        return self.round_step < self.round_steps

    # -- data --------------------------------------------------------------------------------
    def _crop(self, sample: Sample, img: np.ndarray, cw: np.ndarray, labelled: np.ndarray,
              inst: np.ndarray | None = None):
        """One augmented crop: (image 3xSxS, labels SxS, weight SxS, instance targets 3xSxS).

        ``inst``: (H, W, 3) float32 boundary, distance and instance-loss weight, or None (the
        targets are then zeros with weight 0)."""
        import cv2

        s, rng = self.settings, self._rng
        size = s.crop
        scale = float(np.exp(rng.uniform(np.log(s.scale_range[0]), np.log(s.scale_range[1]))))
        win = max(8, int(round(size / scale)))
        h, w = img.shape[:2]
        if labelled.size and rng.random() < s.labelled_crop_bias:
            cy, cx = labelled[rng.integers(len(labelled))]
            y0 = int(np.clip(cy - rng.integers(win), 0, max(0, h - win)))
            x0 = int(np.clip(cx - rng.integers(win), 0, max(0, w - win)))
        else:
            y0 = int(rng.integers(0, max(1, h - win + 1)))
            x0 = int(rng.integers(0, max(1, w - win + 1)))
        ci = img[y0:y0 + win, x0:x0 + win]
        cl = np.asarray(sample.labels)[y0:y0 + win, x0:x0 + win].astype(np.int64)
        cw_ = cw[y0:y0 + win, x0:x0 + win]
        ct = (np.zeros(ci.shape[:2] + (3,), np.float32) if inst is None
              else inst[y0:y0 + win, x0:x0 + win])
        # pad to the window (image smaller than the window): padded pixels weigh nothing
        ph, pw = win - ci.shape[0], win - ci.shape[1]
        if ph > 0 or pw > 0:
            ci = np.pad(ci, ((0, ph), (0, pw), (0, 0)), mode="constant")
            cl = np.pad(cl, ((0, ph), (0, pw)))
            cw_ = np.pad(cw_, ((0, ph), (0, pw)))
            ct = np.pad(ct, ((0, ph), (0, pw), (0, 0)))
        if win != size:
            ci = cv2.resize(ci, (size, size), interpolation=cv2.INTER_LINEAR)
            cl = cv2.resize(cl.astype(np.int32), (size, size), interpolation=cv2.INTER_NEAREST).astype(np.int64)
            cw_ = cv2.resize(cw_, (size, size), interpolation=cv2.INTER_NEAREST)
            ct = cv2.resize(np.ascontiguousarray(ct), (size, size), interpolation=cv2.INTER_NEAREST)
        k = int(rng.integers(4))
        ci, cl, cw_, ct = np.rot90(ci, k), np.rot90(cl, k), np.rot90(cw_, k), np.rot90(ct, k)
        if rng.random() < 0.5:
            ci, cl, cw_, ct = ci[:, ::-1], cl[:, ::-1], cw_[:, ::-1], ct[:, ::-1]
        gain = 1.0 + rng.uniform(-s.contrast, s.contrast)
        bias = rng.uniform(-s.brightness, s.brightness)
        mean = ci.mean()
        ci = np.clip((ci - mean) * gain + mean + bias, 0, 1)
        # the colour augmentations draw only when on, so a run without them crops as before
        if s.channel_jitter > 0:
            ci = np.clip(ci * (1.0 + rng.uniform(-s.channel_jitter, s.channel_jitter, 3)).astype(np.float32), 0, 1)
        if s.gray_prob > 0 and rng.random() < s.gray_prob:
            ci = np.repeat(ci.mean(2, keepdims=True), 3, 2)
        if s.invert_prob > 0 and rng.random() < s.invert_prob:
            ci = 1.0 - ci
        return (np.ascontiguousarray(ci.transpose(2, 0, 1), np.float32),
                np.ascontiguousarray(cl), np.ascontiguousarray(cw_, np.float32),
                np.ascontiguousarray(ct.transpose(2, 0, 1), np.float32))

    def _rescaled(self, smp: Sample) -> Sample:
        """``smp`` resized so its objects' median diameter is ``settings.object_diameter`` (by at
        most 4x either way); as it is without instances, objects, or that setting."""
        import cv2

        d = self.settings.object_diameter
        if not d or smp.instances is None:
            return smp
        f = size_factor(median_diameter(smp.instances), d, 1.0, 4.0)
        if f == 1.0:
            return smp
        h, w = np.asarray(smp.image).shape[:2]
        size = (max(1, int(round(w * f))), max(1, int(round(h * f))))

        def nearest(a):
            a = np.asarray(a)
            return cv2.resize(a.astype(np.int32), size, interpolation=cv2.INTER_NEAREST).astype(a.dtype)
        from napari_hitl.io import as_float_rgb

        img = cv2.resize(as_float_rgb(smp.image), size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        return Sample(img, nearest(smp.labels), nearest(smp.provenance), smp.name, nearest(smp.instances))

    def _prepare(self, samples: list[Sample], cweights: np.ndarray):
        from napari_hitl.model.segnet import model_input

        prepared = []
        s = self.settings
        for smp in samples:
            smp = self._rescaled(smp)
            prov = np.asarray(smp.provenance)
            lab = np.asarray(smp.labels)
            pix = np.where(prov == PSEUDO, s.pseudo_weight,
                           np.isin(prov, ANSWERED).astype(np.float32)).astype(np.float32)
            bad = lab >= self.num_classes
            pix[bad] = 0
            cw = pix * cweights[np.minimum(lab, self.num_classes - 1).astype(np.int64)]
            labelled = np.argwhere(np.isin(prov, ANSWERED))
            if len(labelled) == 0:
                labelled = np.argwhere(pix > 0)
            if len(labelled) > 20000:  # keep memory bounded; any subset is a fine crop-centre pool
                labelled = labelled[self._rng.choice(len(labelled), 20000, replace=False)]
            inst = None
            if smp.instances is not None:  # the instance head learns where the object ids are known
                boundary, distance = instance_targets(smp.instances)
                iw = cw if s.instance_class_weights else pix * (1 - bad)
                inst = np.stack([boundary.astype(np.float32), distance, iw], -1)
            prepared.append((smp, model_input(self.model, smp.image), cw, labelled, inst))
        return prepared

    # -- training ----------------------------------------------------------------------------
    def _train_mode(self) -> None:
        """Train mode with the encoder's BatchNorm statistics frozen (tiny batches, small data)."""
        import torch

        self.model.train()
        for m in self.model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()

    def train_round(self, samples: list[Sample], steps: int | None = None,
                    progress: ProgressFn | None = None,
                    should_stop: Callable[[], bool] | threading.Event | None = None) -> TrainResult:
        """Fine-tune on ``samples`` for one round; resumes an interrupted round if there is one.

        ``progress(step, total, loss)`` is called after each step. ``should_stop`` (a callable
        or a ``threading.Event``) is checked before each step; when it is set the round stops,
        nothing more is written (the last checkpoint stays intact) and ``cancelled`` is true;
        the next call continues the same round.
        """
        stop = should_stop.is_set if isinstance(should_stop, threading.Event) else should_stop
        steps_ = self.iter_round(samples, steps, stop)
        while True:
            try:
                step, total, loss = next(steps_)
            except StopIteration as done:
                return done.value
            if progress is not None:
                progress(step, total, loss)

    def iter_round(self, samples: list[Sample], steps: int | None = None, should_stop: Callable[[], bool] | None = None
                   ) -> Generator[tuple[int, int, float], None, TrainResult]:
        """:meth:`train_round` as a generator: yields ``(step, total, loss)`` after each step and
        returns the :class:`TrainResult`. Closing it between steps leaves the round in progress
        (the last checkpoint intact), like a cancel: the next round call continues it."""
        import time

        import torch
        from torch.nn import functional as F

        samples = [s for s in samples if s.labelled_pixels > 0]
        if not samples:
            raise InputError("no labelled pixels to train on: label at least part of one image first")
        if not self.round_in_progress:
            self.round += 1
            self.round_step = 0
            self.round_steps = int(steps if steps is not None else self.settings.steps)
        s = self.settings
        t0 = time.perf_counter()
        cweights = class_weights(samples, self.num_classes, s.class_weight_clip, s.pseudo_weight)
        prepared = self._prepare(samples, cweights)
        result = TrainResult(self.round, 0, self.round_steps)
        # pick images in proportion to the square root of their labelled pixels
        sizes = np.array([max(1, len(p[3])) for p in prepared], np.float64) ** 0.5
        pick_p = sizes / sizes.sum()
        try:
            while self.round_step < self.round_steps:
                if should_stop is not None and should_stop():
                    result.cancelled = True
                    break
                self._train_mode()  # every step: a prediction between steps leaves the model in eval or full train mode
                frac = self.round_step / max(1, self.round_steps)
                warm = min(1.0, (self.round_step + 1) / 10)
                for g in self.optimizer.param_groups:
                    g["lr"] = float(g["base_lr"] * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac))))
                idx = self._rng.choice(len(prepared), size=s.batch_size, p=pick_p)
                crops = [self._crop(*prepared[i]) for i in idx]
                x = torch.from_numpy(np.stack([c[0] for c in crops])).to(self.device)
                y = torch.from_numpy(np.stack([c[1] for c in crops])).to(self.device)
                w = torch.from_numpy(np.stack([c[2] for c in crops])).to(self.device)
                y = y.clamp(0, self.num_classes - 1)
                logits, inst_logits, _ = self.model.forward_all(x)
                per_pixel = F.cross_entropy(logits, y, reduction="none")
                loss = (per_pixel * w).sum() / w.sum().clamp_min(1.0)
                t = np.stack([c[3] for c in crops])
                inst_value = None
                if s.instance_weight > 0 and t[:, 2].any():
                    t = torch.from_numpy(t).to(self.device)
                    iw = t[:, 2]
                    bce = (F.binary_cross_entropy_with_logits(inst_logits[:, 0], t[:, 0], reduction="none")
                           + F.binary_cross_entropy_with_logits(inst_logits[:, 1], t[:, 1], reduction="none"))
                    inst_loss = (bce * iw).sum() / iw.sum().clamp_min(1.0)
                    loss = loss + s.instance_weight * inst_loss
                    inst_value = float(inst_loss.detach())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if inst_value is None:  # no instance target in this batch: the head is not touched (no decay)
                    for p in self.model.inst_head.parameters():
                        p.grad = None
                self.optimizer.step()
                self.round_step += 1
                self.global_step += 1
                value = float(loss.detach())
                result.losses.append(value)
                if inst_value is not None:
                    result.instance_losses.append(inst_value)
                result.steps_done += 1
                if (self.checkpoint_path is not None and s.checkpoint_every
                        and self.round_step % s.checkpoint_every == 0 and self.round_step < self.round_steps):
                    result.checkpoint = self.save()
                yield self.round_step, self.round_steps, value
        finally:
            self.model.eval()
        result.seconds = time.perf_counter() - t0
        if not result.cancelled:
            self.history.append({"round": self.round, "steps": self.round_steps,
                                 "final_loss": result.final_loss, "images": len(samples)})
            if self.checkpoint_path is not None:
                result.checkpoint = self.save()
        return result

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` probabilities of one image with the current weights."""
        from napari_hitl.model.segnet import predict_proba

        return predict_proba(self.model, image)


def samples_from_project(project, names: Iterable[str] | None = None,
                         include_pseudo: bool = True) -> list[Sample]:
    """Training samples of an open ``napari_hitl.project.Project``: every image (or frame) with a label.

    Uses ``project.images`` (records with ``.name`` and ``.is_stack``/``.frames``),
    ``project.read_image(name, frame)`` and ``project.read_instances(name, frame)`` (or
    ``read_labels`` for a store without objects). Images are read only when they hold labels.
    The objects of "thing" classes train the instance head; stuff areas do not. A slide (a large
    image) gives one sample per label chunk that holds answered pixels (:func:`slide_samples`).
    """
    from napari_hitl.instances import semantic

    out = []
    wanted = None if names is None else set(names)
    kinds = [getattr(c, "kind", "thing") for c in getattr(project, "classes", [])]
    with_objects = hasattr(project, "read_instances")
    is_slide = getattr(project, "is_slide", lambda name: False)
    for rec in project.images:
        name = getattr(rec, "name", rec)
        if wanted is not None and name not in wanted:
            continue
        if is_slide(name):  # a large image is never read whole: its labelled chunks are samples
            out += slide_samples(project, name, kinds)
            continue
        frames = range(rec.frames) if getattr(rec, "is_stack", False) else [None]
        for t in frames:
            objects = None
            if with_objects:
                ids, prov, classes = project.read_instances(name) if t is None else \
                    project.read_instances(name, frame=t)
                labels = semantic(ids, classes)
                things = [k for k, v in classes.items() if v < len(kinds) and kinds[v] == "thing"]
                objects = np.where(np.isin(ids, np.asarray(things, np.uint32)), ids, 0).astype(np.uint32)
            else:
                labels, prov = project.read_labels(name) if t is None else project.read_labels(name, frame=t)
            prov = np.asarray(prov)
            if not include_pseudo:
                prov = np.where(prov == PSEUDO, UNLABELLED, prov).astype(np.uint8)
            if not np.any(prov != UNLABELLED):
                continue
            image = project.read_image(name) if t is None else project.read_image(name, frame=t)
            out.append(Sample(image, np.asarray(labels), prov, name=name if t is None else f"{name}[{t}]",
                              instances=objects))
    return out


#: at most this many chunks of one slide become training samples (the most labelled ones), so a
#: round's memory stays bounded however much of a slide is labelled
SLIDE_SAMPLES_MAX = 64


def slide_samples(project, name: str, kinds=None, limit: int | None = None) -> list[Sample]:
    """Training samples of slide ``name`` of a project: one per stored label chunk that holds
    answered (human, accepted or simulated) pixels, its image window read alone, never the
    slide; the ``limit`` (default :data:`SLIDE_SAMPLES_MAX`) most labelled chunks when more do.
    Objects of "thing" classes (``kinds`` by class id) train the instance head."""
    from napari_hitl.instances import semantic

    kinds = [getattr(c, "kind", "thing") for c in project.classes] if kinds is None else kinds
    limit = SLIDE_SAMPLES_MAX if limit is None else int(limit)
    chunk = project.slide_chunk(name)
    h, w = project.record(name).shape
    found = []
    for cy, cx in sorted(project.chunk_files(name)):
        y0, x0, y1, x1 = cy * chunk, cx * chunk, min(h, (cy + 1) * chunk), min(w, (cx + 1) * chunk)
        _, prov, _ = project.read_window(name, y0, x0, y1, x1)
        n = int(np.count_nonzero(np.isin(prov, ANSWERED)))
        if n:
            found.append((n, (y0, x0, y1, x1)))
    found.sort(key=lambda f: -f[0])
    out = []
    if not found:
        return out
    image = project.open_image(name)
    try:
        for _, (y0, x0, y1, x1) in sorted(found[:limit], key=lambda f: f[1]):
            ids, prov, classes = project.read_window(name, y0, x0, y1, x1)
            prov = np.where(np.isin(prov, ANSWERED), prov, UNLABELLED).astype(np.uint8)
            things = [k for k, v in classes.items() if v < len(kinds) and kinds[v] == "thing"]
            objects = np.where(np.isin(ids, np.asarray(things, np.uint32)), ids, 0).astype(np.uint32)
            out.append(Sample(image.read(y0, x0, y1, x1), np.asarray(semantic(ids, classes)), prov,
                              name=f"{name}@{y0},{x0}", instances=objects))
    finally:
        image.close()
    return out
