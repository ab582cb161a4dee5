"""The dock's model work, run on its worker queue: predict, rank, suggest, pseudo-label, train, export.

No Qt here: functions take the open project and a job context (``should_stop()``,
``progress(...)``) and return plain results for the UI thread. They glue the core pieces
(:mod:`napari_hitl.model`, :mod:`napari_hitl.active`, :func:`napari_hitl.io.export_project`)
to a project on disk.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_hitl.active.pseudo import PseudoSettings, machine_labelled_images, pseudo_labels
from napari_hitl.active.ranking import ImageScore, rank_images, score_maps
from napari_hitl.active.uncertainty import Prediction
from napari_hitl.app.model_host import ModelHost, checkpoint_path
from napari_hitl.errors import InputError
from napari_hitl.project import HUMAN, MACHINE, PSEUDO

#: ranking choices of the panel -> strategy of :func:`napari_hitl.active.ranking.rank_images`
RANKINGS = {"local consistency": "consistency", "entropy": "entropy", "margin": "margin", "diversity": "diversity",
            "coverage": "coverage"}


def predict_images(host: ModelHost, names: list[str], done: dict, ctx) -> dict[str, list[Prediction]]:
    """Predict ``names`` (every frame of a time-lapse) into ``done``; stops early when asked."""
    from napari_hitl.model.segnet import predict_with_features

    model = host.get().model
    project = host.project
    for i, name in enumerate(names):
        if name in done:
            continue
        if ctx.should_stop():
            return done
        image = project.read_image(name)
        planes = list(image) if project.record(name).is_stack else [image]
        preds = []
        for plane in planes:
            p, f = predict_with_features(model, plane)
            preds.append(Prediction.from_probs(p, f.mean(axis=(1, 2)).astype(np.float32)))
        done[name] = preds
        ctx.progress(i + 1, len(names))
    return done


def image_score(index: int, name: str, preds: list[Prediction], beta: float) -> ImageScore:
    """One :class:`ImageScore` per image (a time-lapse: the mean over its frames)."""
    per = [score_maps(p.conf, p.pred, p.margin, p.entropy, beta, 0, index, name) for p in preds]
    fields = ("consistency", "entropy", "margin_uncertainty", "object_fraction", "unsure_fraction")
    return ImageScore(index, name, **{f: float(np.mean([getattr(s, f) for s in per])) for f in fields})


@dataclass
class RankedRow:
    """One row of the ranking panel."""

    name: str
    value: float      # the shown score (see :func:`rank_rows`)
    picked: bool      # a diversity pick
    score: ImageScore


def rank_rows(names: list[str], predictions: dict[str, list[Prediction]], choice: str, beta: float = 0.9,
              budget: int = 5, labelled=()) -> list[RankedRow]:
    """Rows in the order the person should look at them under ``choice`` (a key of RANKINGS).

    Shown value: local consistency (low first), mean entropy or mean margin uncertainty
    (high first); "diversity" orders by margin with its k-means picks on top; "coverage" puts
    on top typical images of what the ``labelled`` images (names) do not cover yet, the rest
    by margin (the start of a project, when the model's uncertainty means little). Images
    without a prediction come last, in project order.
    """
    if choice not in RANKINGS:
        raise InputError(f"unknown ranking {choice!r}; use one of {', '.join(RANKINGS)}")
    strategy = RANKINGS[choice]
    have = [n for n in names if n in predictions]
    scores = [image_score(i, n, predictions[n], beta) for i, n in enumerate(have)]
    rows: list[RankedRow] = []
    if scores:
        if strategy in ("diversity", "coverage"):
            feats = np.stack([np.mean([p.features for p in predictions[n]], axis=0) for n in have])
            if strategy == "diversity":
                ranking = rank_images(scores, "margin", min(budget, len(scores)), feats, diversity=True)
                by_margin = ranking.order
            else:
                lab = set(labelled)
                done = [i for i, n in enumerate(have) if n in lab]
                ranking = rank_images(scores, "coverage", min(budget, len(scores)), feats, exclude=done)
                by_margin = rank_images(scores, "margin", 0).order
            picked = list(ranking.picked)
            order = picked + [i for i in by_margin if i not in ranking.picked]
            value = "margin_uncertainty"
        else:
            ranking = rank_images(scores, strategy, 0)
            order, picked = list(ranking.order), []
            value = "consistency" if strategy == "consistency" else (
                "entropy" if strategy == "entropy" else "margin_uncertainty")
        for i in order:
            s = scores[i]
            rows.append(RankedRow(s.name, float(getattr(s, value)), i in picked, s))
    rows += [RankedRow(n, float("nan"), False, ImageScore(-1, n)) for n in names if n not in predictions]
    return rows


def superpixel_suggestions(image: np.ndarray, pred: Prediction, num_classes: int, k: int = 8,
                           n_segments: int = 150, exclude=()):
    """``(segments, suggestions)``: SLIC superpixels of one plane and the ``k`` most uncertain
    (margin, edge-weighted, class-balanced) as :class:`~napari_hitl.active.superpixels.Suggestion`."""
    from napari_hitl.active.superpixels import edge_strength, image_suggestions, slic_superpixels, suggest_superpixels

    seg = slic_superpixels(image, n_segments=n_segments)
    cands = image_suggestions(0, seg, 1.0 - pred.margin, pred.pred, num_classes, edge_strength(image), 1.0,
                              exclude=exclude)
    return seg, suggest_superpixels(cands, k, class_balanced=True)


def update_pseudo_labels(project, predictions: dict[str, list[Prediction]], settings: PseudoSettings, t: int,
                         lock: threading.RLock) -> int:
    """Replace last round's pseudo-labels by this round's: the gamma_t most consistent images
    (without any human label) keep their confident pixels (confidence > delta). Returns pixels."""
    with lock:
        return _update_pseudo(project, predictions, settings, t)


def _update_pseudo(project, predictions, settings: PseudoSettings, t: int) -> int:
    beta = settings.beta(t)
    names = [r.name for r in project.images]
    cons, human = {}, set()
    for i, name in enumerate(names):
        if project.counts(name).human:
            human.add(i)
        if name in predictions:
            cons[i] = image_score(i, name, predictions[name], beta).consistency
    chosen = set(machine_labelled_images(cons, settings.gamma(t), exclude=human)) if settings.enabled else set()
    total = 0
    for i, name in enumerate(names):
        if i not in chosen and not project.counts(name).pseudo:
            continue
        labels, prov = project.read_labels(name)
        stack = labels.ndim == 3
        for t_ in range(labels.shape[0]) if stack else [None]:
            lab = labels[t_] if stack else labels
            pv = prov[t_] if stack else prov
            old = pv == PSEUDO
            if old.any():
                project.clear_labels(name, where=old, frame=t_)
                lab, pv = np.where(old, 0, lab), np.where(old, 0, pv)
            if i not in chosen:
                continue
            p = predictions[name][t_ if stack else 0]
            new_lab, new_prov = pseudo_labels(p.conf, p.pred, settings.delta, lab, pv)
            where = (new_prov == PSEUDO) & (pv != HUMAN)
            if where.any():
                project.commit_labels(name, new_lab, source="pseudo", where=where, frame=t_)
                total += int(where.sum())
    return total


@dataclass
class TrainFigures:
    """What the last training round did, for the panel."""

    round: int
    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    images: int
    human_pixels: int
    machine_pixels: int
    pseudo_pixels: int
    device: str
    cancelled: bool = False

    def text(self) -> str:
        return (f"Round {self.round}: {self.steps} steps in {self.seconds:.1f} s on {self.device}; loss "
                f"{self.loss_first:.3f} → {self.loss_last:.3f}; {self.images} images "
                f"({self.human_pixels} human, {self.machine_pixels} accepted, {self.pseudo_pixels} pseudo pixels)")


def train_job(host: ModelHost, settings, steps: int, pseudo: PseudoSettings | None,
              predictions: dict, lock, state: dict, ctx) -> TrainFigures | None:
    """One training round (resumable: ``state`` carries what a preempted call already did)."""
    from napari_hitl.model.train import samples_from_project

    trainer = host.get(settings)
    project = host.project
    if "t0" not in state:
        state.update(t0=time.perf_counter(), losses=[], pseudo=0)
        if pseudo is not None and pseudo.enabled and predictions and trainer.history:
            state["pseudo"] = update_pseudo_labels(project, predictions, pseudo, len(trainer.history), lock)
    with lock:
        samples = samples_from_project(project)
    if not samples:
        raise InputError("nothing to train on yet: accept the labels of at least one image first")

    def progress(step, total, loss):
        state["losses"].append(loss)
        ctx.progress(step, total, loss)

    res = trainer.train_round(samples, steps=steps, progress=progress, should_stop=ctx.should_stop)
    if res.cancelled:
        return None
    counts = [np.bincount(np.asarray(s.provenance).ravel(), minlength=4) for s in samples]
    c = np.sum(counts, axis=0)
    losses = state["losses"] or [float("nan")]
    return TrainFigures(res.round, trainer.round_steps, time.perf_counter() - state["t0"], float(losses[0]),
                        float(np.mean(losses[-5:])), len(samples), int(c[1]), int(c[2]), int(c[3]),
                        trainer.device_description)


def export_all(project, out, fmt: str, lock, ctx) -> dict:
    """Export every label (``labels/``, ``provenance/``, ``manifest.json``), the model checkpoint
    (``model/``) and ``summary.json`` (human vs machine pixels) into ``out``; returns the summary."""
    from napari_hitl.io import export_project

    out = Path(out)
    with lock:
        manifest = export_project(project, out, fmt, should_stop=ctx.should_stop)
        per_image = {r.name: asdict(project.counts(r.name)) for r in project.images}
    total = {k: sum(v[k] for v in per_image.values()) for k in ("unlabelled", "human", "machine", "pseudo")}
    pixels = max(1, sum(total.values()))
    model = None
    ckpt = checkpoint_path(project)
    if ckpt.exists():
        (out / "model").mkdir(parents=True, exist_ok=True)
        model = out / "model" / ckpt.name
        shutil.copy2(ckpt, model)
    summary = {"project": str(project.root), "format": fmt, "manifest": str(manifest),
               "model": None if model is None else str(model), "pixels": total,
               "share": {k: v / pixels for k, v in total.items()}, "images": per_image}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_text(summary: dict) -> str:
    """'human 12.0% · machine 3.0% · pseudo 40.0% · unlabelled 45.0%' from an export summary."""
    share = summary["share"]
    return " · ".join(f"{k} {100 * share[k]:.1f}%" for k in ("human", "machine", "pseudo", "unlabelled"))


# -- time-lapse: units across frames, propagate by fine-tuning with the temporal term --------------
@dataclass
class UnitRow:
    """One row of the time-lapse units list: a unit to label next, its frame and box."""

    index: int
    frame: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive), full resolution
    score: float                      # mean margin uncertainty, or motion in round one (0: none)
    score_kind: str = "uncertainty"   # what ``score`` is: "uncertainty" or "motion" (px per frame)


class VideoHost:
    """The :class:`~napari_hitl.video.propagate.VideoSession` of one time-lapse of the project and
    its fine-tuned model; lives on the worker thread (built on first use, flows cached in the
    project's cache folder so they are computed once)."""

    def __init__(self, project, name: str, unit: str = "rect40", scale: float = 0.5):
        self.project, self.name, self.unit, self.scale = project, name, unit, scale
        self.session = None
        self.tuner = None
        self.probs = None  # (T, C, h, w) of the last prediction
        self.feats = None
        self.rounds = 0

    def get(self, lock, unit: str | None = None):
        """The session, its human labels and annotated units re-read from the project; ``unit``
        (e.g. 'rect80', 'superpixel300', 'frame') switches the annotation units, keeping the
        flows and the fine-tuned model."""
        from napari_hitl.video.propagate import VideoSession
        from napari_hitl.video.units import UnitSet, parse_unit

        if unit is not None and unit != self.unit:
            parse_unit(unit)  # a clear error before anything changes
            if self.session is not None:
                self.session.units = UnitSet.from_spec(unit, list(self.project.read_image(self.name)))
                self.session.annotated = np.zeros(len(self.session.units), bool)
            self.unit = unit
        if self.session is None:
            frames = self.project.read_image(self.name)
            self.session = VideoSession(list(frames), self.project.n_classes, self.unit,
                                        cache_dir=self.project.cache_dir / "flows", scale=self.scale)
        s = self.session
        with lock:
            labels, prov = self.project.read_labels(self.name)
        human = prov == HUMAN
        s.labels = np.where(human, labels, -1).astype(np.int16)
        for t in range(s.num_frames):
            sl = slice(s.units.offsets[t], s.units.offsets[t + 1])
            s.annotated[sl] = s.units.unit_means(t, human[t]) > 0.5
        return s

    def predict(self, ctx) -> bool:
        """Predict every frame with the current model (a fresh pretrained one before round one)."""
        if self.tuner is None:
            self.tuner = self.session.new_tuner()
        out = self.tuner.predict(with_features=True, should_stop=ctx.should_stop)
        if out is None:
            return False
        self.probs, self.feats = out
        return True


def video_units(host: VideoHost, k: int, lock, ctx, unit: str | None = None) -> list[UnitRow] | None:
    """The ``k`` units (of kind ``unit``, default the host's) of the time-lapse to label next
    (motion + diversity in round one, then margin uncertainty + diversity), skipping units a
    human already labelled."""
    s = host.get(lock, unit)
    if host.feats is None and not host.predict(ctx):
        return None
    from napari_hitl.video.propagate import select_units

    scores, pooled, ranked = s.scores(host.probs, host.feats, first_round=host.rounds == 0)
    picks = select_units(scores, pooled, k, s.annotated, not ranked)
    kind = "uncertainty" if host.rounds else "motion"
    return [UnitRow(int(i), s.units.frame_of(i), s.units.unit(i).bbox, float(scores[i]) if ranked else 0.0, kind)
            for i in picks]


@dataclass
class PropagateFigures:
    """What one propagation round did, for the panel."""

    round: int
    steps: int
    seconds: float
    loss: float
    human_frames: int
    pseudo_pixels: int

    def text(self) -> str:
        return (f"Propagation round {self.round}: {self.steps} steps in {self.seconds:.1f} s, loss {self.loss:.3f}; "
                f"{self.human_frames} frames with human labels, {self.pseudo_pixels} pseudo pixels written")


def video_propagate(host: VideoHost, steps: int, lock, ctx, state: dict | None = None) -> PropagateFigures | None:
    """One round on the time-lapse: fine-tune with the temporal loss on the human labels, predict
    every frame, and write the predictions as pseudo labels wherever no human or accepted
    (machine) label is. Returns None when cancelled (nothing is written then).

    Preemptible: a click waiting makes it stop between steps and return None; the queue then
    calls it again with the same ``state``, which carries the steps already done, so the round
    goes on where it stopped instead of starting over. Writing is never interrupted by a click.
    """
    state = {} if state is None else state
    s = host.get(lock)
    if "t0" not in state:
        if not (s.labels >= 0).any():
            raise InputError("no human labels in this time-lapse yet: label part of a frame and press Accept first")
        state.update(t0=time.perf_counter(), done=0, loss=float("nan"), labels=s.work_labels())
    s.flows.precompute(gaps=[g for g in s.settings.gaps if g < s.num_frames],
                       progress=lambda d, n: ctx.progress("flow", d, n))
    if host.tuner is None:
        host.tuner = s.new_tuner()
    if state["done"] < steps:
        fit = host.tuner.fit(state["labels"], steps=steps - state["done"], should_stop=ctx.should_stop,
                             progress=lambda i, n, loss: ctx.progress("fine-tune", state["done"] + i, steps))
        state["done"] += fit["steps"]
        state["loss"] = fit["loss"] if fit["steps"] else state["loss"]
        if fit["cancelled"]:
            return None
    if not host.predict(ctx):
        return None
    host.rounds += 1
    pred = s.labels_from_probs(host.probs)
    written = 0
    with lock:
        for t in range(s.num_frames):
            if ctx.job.cancelled:
                break
            _, prov = host.project.read_labels(host.name, frame=t)
            where = (prov != HUMAN) & (prov != MACHINE)
            if where.any():
                host.project.commit_labels(host.name, pred[t], source="pseudo", where=where, frame=t)
                written += int(where.sum())
            ctx.progress("write", t + 1, s.num_frames)
    human_frames = int(((s.labels >= 0).reshape(s.num_frames, -1)).any(1).sum())
    return PropagateFigures(host.rounds, state["done"], time.perf_counter() - state["t0"], state["loss"],
                            human_frames, written)
