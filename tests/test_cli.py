"""The command line: create, info, export, simulate, and demo's headless path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_hitl import cli, io
from napari_hitl.app.model_host import CHECKPOINT
from napari_hitl.errors import InputError
from napari_hitl.project import Project


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HITL_HOME", str(tmp_path / "home"))


def test_create_info_export(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(imgs / f"x{i}.png")
    assert cli.main(["create", str(tmp_path / "p"), str(imgs), "--classes", "bg", "cell"]) == 0
    with Project.open(tmp_path / "p") as p:
        p.commit_labels("x1", np.ones((10, 12), np.uint8))
    assert cli.main(["info", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("x1 "))
    assert row == ["x1", "12x10", "done", "1", "120", "0", "0", "0"]  # size, status, objects, pixels per provenance
    assert cli.main(["export", str(tmp_path / "p"), str(tmp_path / "out"), "--format", "png"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["human"] == 120
    # the same export as the dock's: a summary beside the manifest; unlabelled pixels distinct
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pixels"]["human"] == 120 and summary["model"] is None and "no trained model" in \
        capsys.readouterr().out
    out = tmp_path / "out"
    assert manifest["unlabelled_value"] == 255
    assert (io.read_labels(out / "labels" / "x0.png") == 255).all() and (io.read_labels(out / "labels" / "x1.png") == 1).all()
    assert cli.main(["export", str(tmp_path / "p"), str(out), "--colour", "--overwrite"]) == 1  # tiff has no colours
    assert "format png" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "p"), str(out), "--format", "png", "--colour", "--overwrite",
                     "--unlabelled-as-background"]) == 0
    with Image.open(out / "labels" / "x1.png") as img:
        assert img.mode == "P" and tuple(img.getpalette()[3:6]) == tuple(Project.open(tmp_path / "p", readonly=True)
                                                                          .classes[1].color)
    assert (io.read_labels(out / "labels" / "x1.png") == 1).all() and (io.read_labels(out / "labels" / "x0.png") == 0).all()


def test_user_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-hitl: error:") and "does not exist" in err and "Traceback" not in err
    assert cli.main(["create", str(tmp_path / "p"), str(tmp_path / "nothing")]) == 1


def test_simulate_runs_a_session_on_the_sample_project(capsys):
    assert cli.main(["simulate", "--max-clicks", "3", "--steps", "4", "--delta", "0.5"]) == 0
    out = capsys.readouterr().out
    for step in ("1. clicks", "2. training", "device: CPU (", "3. predicting", "4. correcting", "5. pseudo-labels"):
        assert step in out
    assert out.count("clicks  IoU") == 2 and "rank  image" in out
    root = out.split("project at ")[1].split()[0]
    with Project.open(root, readonly=True) as p:
        statuses = sorted(p.counts(r.name).status for r in p.images)
        assert statuses.count("simulated") == 2 and p.total_counts().pseudo > 0 and p.total_counts().human == 0
        assert p.load_checkpoint(CHECKPOINT) is not None
        commits = [e for e in p.journal() if e["event"] == "commit"]
        assert [e["source"] for e in commits[:2]] == ["simulated", "simulated"]
        assert {e["source"] for e in commits[2:]} == {"pseudo"}
    _dock_opens_the_simulated_model(root, out)
    assert cli.main(["simulate", "--engine-option", "nonsense"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err


def _dock_opens_the_simulated_model(root, out):
    """The model ``simulate`` trained is the one a session (the dock's) opens: predicting without
    training gives the IoU simulate printed for that image (an untrained model would not)."""
    from napari_hitl import samples
    from napari_hitl.app.jobs import drive
    from napari_hitl.app.session import Session
    from napari_hitl.evaluate.metrics import iou

    printed = {line.split()[3]: float(line.split()[4]) for line in out.splitlines()
               if line.strip().startswith("model IoU on")}
    assert printed
    with Session.open(root) as session:
        assert session.model.trained  # found before anything trains
        preds = drive(session.predict_job(list(printed))())
        assert len(session.model.get().history) == 1  # the one round simulate trained, none here
    for name, value in printed.items():
        got = iou(preds[name][0].pred > 0, samples.sample_truth("nuclei", name) > 0)
        assert abs(got - value) < 1.5e-3, (name, got, value)


def test_demo_without_display_explains_and_runs_headless(monkeypatch, capsys):
    from napari_hitl import commands

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(cli.sys, "platform", "linux")
    ran = []
    monkeypatch.setattr(commands, "simulate", lambda args: ran.append(args.engine) or 0)
    assert cli.main(["demo"]) == 0
    assert "No display found" in capsys.readouterr().out and ran == ["graph"]


def test_bench_commands_are_listed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    for name in ("interactive", "loop", "video"):
        assert name in out


def test_version_engine_choices_and_a_single_class(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("napari-hitl ")
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--engine", "nope"])
    assert "choose from" in capsys.readouterr().err
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "a.png")
    assert cli.main(["create", str(tmp_path / "p"), str(imgs), "--classes", "nucleus"]) == 0
    assert "background (0), nucleus (1)" in capsys.readouterr().out
    with Project.open(tmp_path / "p", readonly=True) as p:
        assert [c.name for c in p.classes] == ["background", "nucleus"]
    with pytest.raises(InputError, match="background class first"):
        Project.create(tmp_path / "q", imgs, classes=["nucleus"])
    assert cli.main(["create", str(tmp_path / "r"), str(imgs), "--classes", "nucleus", "background"]) == 1
    assert "list 'background' first" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_on_a_project_works_on_a_copy(tmp_path, capsys):
    """The robot's labels never land in the person's project unless --in-place, and then as simulated."""
    from napari_hitl import samples

    with samples.sample_project("nuclei", dest=tmp_path / "mine") as mine:
        root = mine.root
    truth = Path(samples.__file__).parent / "sample_data" / "nuclei" / "labels"
    args = ["simulate", "--project", str(root), "--truth", str(truth), "--max-clicks", "2", "--steps", "2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "working on a copy" in out and str(root) not in out.split("project at ")[1]
    with Project.open(root, readonly=True) as p:
        assert p.total_counts().total == p.total_counts().unlabelled  # untouched
    assert cli.main(args + ["--in-place"]) == 0
    with Project.open(root, readonly=True) as p:
        total = p.total_counts()
        assert total.simulated > 0 and total.human == 0


@pytest.mark.slow
def test_newcomer_demo_without_a_display(tmp_path):
    """The README's first command on a machine without a display: the headless demo explains
    itself, finishes within 3 minutes of CPU here, and prints no traceback and no nan."""
    import os
    import re
    import resource
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["NAPARI_HITL_HOME"] = str(tmp_path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "napari_hitl.cli", "demo"], env=env, capture_output=True,
                          text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-2000:]
    assert "No display found" in text and "This takes about" in text and "done:" in text
    assert "Traceback" not in text and not re.search(r"\bnan\b", text.lower())
    assert "\r" not in done.stderr  # a log gets plain lines, not a redrawn bar
    assert cpu < 180, f"the demo took {cpu:.0f} s of CPU"


def test_simulate_leaves_a_large_image_out_before_reading_its_truth(tmp_path, monkeypatch, capsys):
    import tifffile

    from napari_hitl import commands
    from napari_hitl import project as store

    monkeypatch.setattr(io, "LAZY_PIXELS", 100 * 100)
    monkeypatch.setattr(store, "SLIDE_CHUNK", 128)
    imgs, truth = tmp_path / "imgs", tmp_path / "truth"
    imgs.mkdir()
    truth.mkdir()
    tifffile.imwrite(imgs / "slide.tif", np.zeros((300, 400), np.uint8), tile=(128, 128))
    io.write_labels(truth / "slide.tif", np.ones((300, 400), np.uint8))
    for i in range(2):
        Image.fromarray(np.zeros((20, 24), np.uint8)).save(imgs / f"x{i}.png")
        io.write_labels(truth / f"x{i}.png", np.ones((20, 24), np.uint8))
    Project.create(tmp_path / "p", imgs, classes=["bg", "cell"]).close()
    read = []
    real = io.read_labels
    monkeypatch.setattr(io, "read_labels", lambda path: read.append(Path(path).stem) or real(path))

    def stop(*args, **kwargs):
        raise InputError("the robot stops here")

    monkeypatch.setattr(commands, "_click_session", stop)
    assert cli.main(["simulate", "--project", str(tmp_path / "p"), "--truth", str(truth), "--engine", "graph"]) == 1
    captured = capsys.readouterr()
    assert "the robot stops here" in captured.err
    assert "large images left out (never read whole): slide" in captured.out
    assert sorted(read) == ["x0", "x1"]  # the slide's truth was never read
