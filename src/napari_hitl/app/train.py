"""One training round of the project's model, pseudo-labels first (a resumable job)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generator

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


def train_job(host: ModelHost, settings, steps: int, pseudo: PseudoSettings | None, predictions: dict, lock,
              state: dict) -> Generator[tuple[int, int, float], None, TrainFigures]:
    """One training round as a generator job: yields ``(step, total, loss)`` and returns the
    round's figures. Resumable: closed between steps, the round stays in progress and ``state``
    carries what this call already did, so the next call goes on where it stopped."""
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

    res = yield from _recording(trainer.iter_round(samples, steps=steps), state["losses"])
    counts = [np.bincount(np.asarray(s.provenance).ravel(), minlength=4) for s in samples]
    c = np.sum(counts, axis=0)
    losses = state["losses"] or [float("nan")]
    return TrainFigures(res.round, trainer.round_steps, time.perf_counter() - state["t0"], float(losses[0]),
                        float(np.mean(losses[-5:])), len(samples), int(c[1]), int(c[2]), int(c[3]),
                        trainer.device_description)


def _recording(steps: Generator, losses: list) -> Generator:
    """``steps`` of a round, passed on, each loss appended to ``losses``; returns its result."""
    try:
        while True:
            try:
                item = next(steps)
            except StopIteration as done:
                return done.value
            losses.append(item[2])
            yield item
    finally:
        steps.close()
