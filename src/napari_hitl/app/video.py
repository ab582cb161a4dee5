"""A time-lapse of the project: units to label next, and propagation by fine-tuning with the
temporal term (the video session and its tuner live on the worker thread)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.project import ANSWERED, KEPT
from napari_hitl.video.propagate import human_labels


@dataclass
class UnitRow:
    """One row of the time-lapse units list: a unit to label next, its frame and box."""

    index: int
    frame: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive), full resolution
    score: float                      # mean margin uncertainty, or motion in round one (0: none)
    score_kind: str = "uncertainty"   # what ``score`` is: "uncertainty" or "motion" (px per frame)


class VideoHost:
    """The :class:`~napari_hitl.video.session.VideoSession` of one time-lapse of the project and
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
        from napari_hitl.video.session import VideoSession
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
        human = np.isin(prov, KEPT)
        s.labels = human_labels(labels, prov)
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
    from napari_hitl.video.selection import select_units

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
            where = ~np.isin(prov, ANSWERED)
            if where.any():
                host.project.commit_labels(host.name, pred[t], source="pseudo", where=where, frame=t)
                written += int(where.sum())
            ctx.progress("write", t + 1, s.num_frames)
    human_frames = int(((s.labels >= 0).reshape(s.num_frames, -1)).any(1).sum())
    return PropagateFigures(host.rounds, state["done"], time.perf_counter() - state["t0"], state["loss"],
                            human_frames, written)
