"""The dock's panels on their own: a session and signals in, no viewer (Qt offscreen is enough)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_hitl.active.uncertainty import Prediction
from napari_hitl.app.session import Session
from napari_hitl.napari._progress import JobProgress
from napari_hitl.napari._ranking import RankingPanel
from napari_hitl.napari._training import ExportPanel, TrainingPanel
from napari_hitl.project import Project


@pytest.fixture
def session(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(imgs / f"img{i}.png")
    with Session(Project.create(tmp_path / "proj", imgs, classes=["bg", "cell"])) as s:
        yield s


def _prediction(uncertain: float) -> list[Prediction]:
    p = np.zeros((2, 8, 8), np.float32)
    p[0], p[1] = 1 - uncertain / 2, uncertain / 2
    return [Prediction.from_probs(p, np.ones(4, np.float32))]


def test_ranking_panel_lists_and_ranks_the_sessions_images(qtbot, session):
    panel = RankingPanel()
    qtbot.addWidget(panel)
    panel.set_session(session)
    assert panel.order() == ["img0", "img1", "img2"] and all(np.isnan(panel.values()))
    session.predicted({"img0": _prediction(0.1), "img1": _prediction(0.9), "img2": _prediction(0.5)})
    panel.set_choice("margin")
    assert panel.order() == ["img1", "img2", "img0"]  # most uncertain first
    session.commit("img1", np.ones((8, 8), np.uint8))  # a human finished it: it goes last
    panel.refresh()
    assert panel.order() == ["img2", "img0", "img1"]
    with qtbot.waitSignal(panel.rank_requested, timeout=1000):
        panel.rank_button.click()
    panel.set_session(None)
    assert panel.order() == []


def test_training_and_export_panels_ask_with_signals(qtbot, monkeypatch, tmp_path):
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.steps.setValue(7)
    assert panel.train_settings().steps == 7 and panel.pseudo_settings().enabled
    with qtbot.waitSignal(panel.train_requested, timeout=1000):
        panel.train_button.click()
    panel.running(True)
    assert not panel.train_button.isEnabled() and panel.progress.running
    panel.step(3, 7, 0.5)
    assert panel.progress.bar.format() == "step 3/7 · loss 0.500"
    with qtbot.waitSignal(panel.progress.cancel_requested, timeout=1000):
        panel.progress.cancel_button.click()
    panel.running(False)
    assert panel.train_button.isEnabled() and not panel.progress.running

    export = ExportPanel()
    qtbot.addWidget(export)
    monkeypatch.setattr("napari_hitl.napari._training.QFileDialog.getExistingDirectory",
                        lambda *a: str(tmp_path))
    with qtbot.waitSignal(export.export_requested, timeout=1000) as got:
        export.export_button.click()
    assert got.args == [str(tmp_path), export.format.currentText()]


def test_job_progress_shows_in_napari_activity_while_running(qtbot):
    widget = JobProgress("training")
    qtbot.addWidget(widget)
    assert widget.activity is None and not widget.running
    widget.start()
    activity = widget.activity
    assert activity is not None and widget.running
    widget.step(2, 5, "step 2/5")
    assert (activity.n, activity.total) == (2, 5) and "step 2/5" in activity.desc
    widget.step(1, 4, "write 1/4")  # a new stage counts from zero
    assert (activity.n, activity.total) == (1, 4)
    widget.finish("Round 1 done")
    assert widget.activity is None and widget.status.text() == "Round 1 done" and widget.bar.format() == "idle"


def test_annotate_panel_tells_with_signals_and_shows_what_it_is_told(qtbot):
    from napari_hitl.napari._annotate import AnnotatePanel
    from napari_hitl.project import ClassInfo

    panel = AnnotatePanel("graph", full_image=True)
    qtbot.addWidget(panel)
    assert panel.engine_box.currentText() == "graph" and panel.full_image.isChecked()
    with qtbot.assertNotEmitted(panel.class_chosen):
        panel.set_classes([ClassInfo(1, "cell", (255, 0, 0)), ClassInfo(2, "debris", (0, 255, 0))])
    with qtbot.waitSignal(panel.class_chosen, timeout=1000) as got:
        panel.class_box.setCurrentIndex(1)
    assert got.args == [2]
    with qtbot.waitSignal(panel.mode_chosen, timeout=1000) as got:
        panel.tool_buttons["scribble"].click()
    assert got.args == ["scribble"]
    panel.show_mode("click")
    assert panel.tool_buttons["click"].isChecked() and not panel.tool_buttons["scribble"].isChecked()
    for action in ("new_region", "undo", "reset", "accept", "next"):
        button = {"new_region": panel.new_region_button, "undo": panel.undo_button, "reset": panel.reset_button,
                  "accept": panel.accept_button, "next": panel.next_button}[action]
        with qtbot.waitSignal(panel.action_requested, timeout=1000) as got:
            button.click()
        assert got.args == [action]


def test_shortcuts_keep_napari_and_micro_sam_keys():
    """Our tool keys live on the labels layer: none may take a key napari gives labels layers
    (B preserves labels, M a new label, ...), and S stays micro-sam's "segment"."""
    from napari.utils.shortcuts import default_shortcuts

    from napari_hitl.napari._tools import SHORTCUTS

    labels_keys = {str(k) for name, keys in default_shortcuts.items()
                   if "labels" in name or name.endswith(("new_label", "preserve_labels")) for k in keys}
    ours = {key.replace("-", "+").replace("Control", "Ctrl") for key in SHORTCUTS}
    assert not ours & labels_keys, ours & labels_keys
    assert "S" not in ours and SHORTCUTS["W"][1] == "scribble"
