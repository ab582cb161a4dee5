"""One training round of the project's model, pseudo-labels first (a resumable job)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from napari_hitl.active.pseudo import PseudoSettings
from napari_hitl.app.model_host import ModelHost
from napari_hitl.app.pseudo import update_pseudo_labels
from napari_hitl.errors import InputError


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
