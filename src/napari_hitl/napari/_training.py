"""Training and export controls of the dock.

Training: train now, or automatically after N saved answers; steps, batch and crop size;
pseudo-labels (confidence threshold delta and the progressive schedule of beta and gamma);
a progress bar with cancel; the last round's figures. Export: every label with its
provenance and a manifest, the model checkpoint, and a summary of human vs machine pixels.
The panels ask for work with signals; the dock runs it on the session.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_hitl.active.pseudo import PseudoSettings
from napari_hitl.io import LABEL_FORMATS
from napari_hitl.napari._progress import JobProgress
from napari_hitl.napari._section import section


def _spin(lo, hi, value, step=None, decimals=None, tip=""):
    box = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


class TrainingPanel(QWidget):
    """Train-now / auto-train controls, pseudo-label settings, progress and figures;
    ``train_requested`` on Train now, ``progress.cancel_requested`` on Cancel."""

    train_requested = Signal()

    def __init__(self):
        super().__init__()
        from napari_hitl.model.train import TrainSettings

        d = TrainSettings()
        p = PseudoSettings()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.train_button = QPushButton("Train now")
        self.train_button.setToolTip("Fine-tune the model on every labelled image in the background")
        layout.addWidget(self.train_button)
        self.progress = JobProgress("training", "stop the round between steps (the last checkpoint stays)")
        layout.addWidget(self.progress)
        form = QFormLayout()
        auto = QHBoxLayout()
        self.auto = QCheckBox("every")
        self.auto.setToolTip("Train a round by itself after this many saved answers")
        self.auto_n = _spin(1, 1000, 3, tip="Saved answers (accepted images, answered suggestions) between "
                                            "automatic training rounds")
        self.auto_n.setSuffix(" answers")
        auto.addWidget(self.auto)
        auto.addWidget(self.auto_n, 1)
        form.addRow("Train by itself", auto)
        self.steps = _spin(1, 100000, d.steps, tip="How many learning steps one round takes (more: slower, "
                                                   "closer fit to your labels)")
        self.batch = _spin(1, 64, d.batch_size, tip="How many image crops each step learns from")
        self.crop = _spin(32, 1024, d.crop, step=32, tip="Side of the square crops cut from your images, in pixels")
        self.crop.setSuffix(" px")
        form.addRow("Steps per round", self.steps)
        form.addRow("Crops per step", self.batch)
        form.addRow("Crop size", self.crop)
        layout.addLayout(form)
        group = QGroupBox("The model labels the pixels it is sure of")
        group.setCheckable(True)
        group.setChecked(p.enabled)
        group.setToolTip("Between rounds the model fills in the pixels it is sure of, on the images it is most "
                         "consistent on; your labels always win over them, and they weigh half in training")
        self.pseudo_group = group
        pform = QFormLayout(group)
        self.delta = _spin(0.5, 1.0, p.delta, 0.01, 3, "The model labels a pixel only when it is at least this sure "
                                                      "(1 = certain)")
        self.beta0 = _spin(0.0, 1.0, p.beta0, 0.01, 3, "How sure the model must be along object edges for an image "
                                                      "to count as consistent, in the first round (β₀)")
        self.dbeta = _spin(0.0, 0.5, p.dbeta, 0.01, 3, "Each round that bar drops by this much (Δβ), as the model "
                                                      "earns trust")
        self.gamma0 = _spin(0.0, 1.0, p.gamma0, 0.05, 3, "Share of the images the model may label in the first "
                                                        "round: the most consistent ones (γ₀)")
        self.dgamma = _spin(0.0, 1.0, p.dgamma, 0.05, 3, "Each round that share grows by this much (Δγ)")
        pform.addRow("Sure enough at (δ)", self.delta)
        pform.addRow("Edge sureness, round 1 (β₀)", self.beta0)
        pform.addRow("  less each round (Δβ)", self.dbeta)
        pform.addRow("Share of images, round 1 (γ₀)", self.gamma0)
        pform.addRow("  more each round (Δγ)", self.dgamma)
        layout.addWidget(section("Pseudo-labels", group, expanded=False))
        self.figures = QLabel("No training round yet.")
        self.figures.setWordWrap(True)
        layout.addWidget(self.figures)
        layout.addStretch(1)
        self.train_button.clicked.connect(self.train_requested.emit)

    def train_settings(self):
        from napari_hitl.model.train import TrainSettings

        return TrainSettings(steps=self.steps.value(), batch_size=self.batch.value(), crop=self.crop.value())

    def pseudo_settings(self) -> PseudoSettings:
        return PseudoSettings(delta=self.delta.value(), beta0=self.beta0.value(), dbeta=self.dbeta.value(),
                              gamma0=self.gamma0.value(), dgamma=self.dgamma.value(),
                              enabled=self.pseudo_group.isChecked())

    def running(self, on: bool) -> None:
        self.train_button.setEnabled(not on)
        if on:
            self.progress.start()
        else:
            self.progress.finish()

    def step(self, step: int, total: int, loss: float) -> None:
        self.progress.step(step, total, f"step {step}/{total} · loss {loss:.3f}")


class ExportPanel(QWidget):
    """Export every label, the model and a human-vs-machine summary into a folder;
    ``export_requested(folder, format)`` once a folder is chosen."""

    export_requested = Signal(str, str)

    def __init__(self):
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Format"))
        self.format = QComboBox()
        self.format.addItems(list(LABEL_FORMATS))
        row.addWidget(self.format)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Labels + provenance + manifest.json, model/segnet.pt, summary.json")
        row.addWidget(self.export_button, 1)
        layout.addLayout(row)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        layout.addStretch(1)
        self.export_button.clicked.connect(self._ask)

    def _ask(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export labels and model into")
        if path:
            self.export_requested.emit(path, self.format.currentText())
