"""The project store: persistence, atomicity, provenance rules, locking, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_hitl import io
from napari_hitl.errors import CorruptFileError, InputError, ProjectError, ProjectLockedError
from napari_hitl.project import HUMAN, MACHINE, PSEUDO, UNLABELLED, Project, is_project


def make_images(folder: Path, n: int = 3, size=(40, 60), rgb_every: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        if i % rgb_every == 1:
            arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        else:
            arr = rng.integers(0, 255, size, dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "proj", make_images(tmp_path / "imgs"), classes=["bg", "cell", "debris"]) as p:
        yield p


def test_create_open_roundtrip(tmp_path, project):
    assert [r.name for r in project.images] == ["img0", "img1", "img2"]
    assert project.record("img1").channels == 3 and project.record("img0").channels == 1
    assert project.read_image("img1").shape == (40, 60, 3)
    labels = np.zeros((40, 60), np.uint8)
    labels[5:20, 5:30] = 1
    labels[25:30, 40:50] = 2
    project.commit_labels("img0", labels)
    project.add_class("membrane")
    project.close()
    with Project.open(tmp_path / "proj") as again:
        got, prov = again.read_labels("img0")
        np.testing.assert_array_equal(got, labels)
        assert (prov == HUMAN).all()
        assert [c.name for c in again.classes] == ["bg", "cell", "debris", "membrane"]
        assert again.counts("img0").human == 40 * 60
        assert again.counts("img1").status == "new"
        events = [e["event"] for e in again.journal()]
        assert events[:1] == ["created"] and "commit" in events and "class_added" in events


def test_natural_order_and_unique_names(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ["a10.png", "a2.png", "a2.tif", "a1.jpg"]:
        arr = np.zeros((8, 8), np.uint8)
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, arr)
        else:
            Image.fromarray(arr).save(folder / name)
    with Project.create(tmp_path / "p", folder) as p:
        assert [r.files[0] for r in p.images] == ["a1.jpg", "a2.png", "a2.tif", "a10.png"]
        assert len({r.name for r in p.images}) == 4


def test_machine_labels_never_overwrite_human(project):
    human = np.zeros((40, 60), np.uint8)
    where = np.zeros((40, 60), bool)
    where[:10] = True
    human[:10] = 1
    project.commit_labels("img0", human, where=where)
    machine = np.full((40, 60), 2, np.uint8)
    project.commit_labels("img0", machine, source="machine")
    project.commit_labels("img0", np.zeros_like(machine), source="pseudo", where=~where)
    labels, prov = project.read_labels("img0")
    assert (labels[:10] == 1).all() and (prov[:10] == HUMAN).all()
    assert (labels[10:] == 0).all() and (prov[10:] == PSEUDO).all()
    counts = project.counts("img0")
    assert counts.human == 600 and counts.pseudo == 1800 and counts.machine == 0
    # a human commit does overwrite machine labels
    project.commit_labels("img0", np.full((40, 60), 2, np.uint8), source="machine")
    project.commit_labels("img0", np.ones((40, 60), np.uint8))
    assert (project.read_labels("img0")[1] == HUMAN).all()
    project.clear_labels("img0", where=where)
    labels, prov = project.read_labels("img0")
    assert (prov[:10] == UNLABELLED).all() and (labels[:10] == 0).all() and (prov[10:] == HUMAN).all()
    assert MACHINE == 2


@pytest.mark.parametrize("bad, message", [
    (np.zeros((40, 60), np.float32), "integer"),
    (np.zeros((40, 61), np.uint8), "shape"),
    (np.full((40, 60), 3, np.uint8), "beyond the class table"),
    (np.full((40, 60), -1, np.int16), "negative"),
    (np.zeros((0, 60), np.uint8), "empty"),
])
def test_bad_labels_are_rejected_and_nothing_is_lost(project, bad, message):
    good = np.ones((40, 60), np.uint8)
    project.commit_labels("img0", good)
    with pytest.raises(InputError, match=message):
        project.commit_labels("img0", bad)
    np.testing.assert_array_equal(project.read_labels("img0")[0], good)


def test_bad_requests(project):
    with pytest.raises(InputError, match="no image named"):
        project.read_labels("nope")
    with pytest.raises(InputError, match="'where' must be a boolean"):
        project.commit_labels("img0", np.zeros((40, 60), np.uint8), where=np.zeros((40, 60), np.uint8))
    with pytest.raises(InputError, match="source must be"):
        project.commit_labels("img0", np.zeros((40, 60), np.uint8), source="robot")
    with pytest.raises(InputError, match="already exists"):
        project.add_class("cell")


def test_bad_sources(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(InputError, match="no images"):
        Project.create(tmp_path / "p0", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "ok.png")
    with pytest.raises(CorruptFileError, match="broken.png"):
        Project.create(tmp_path / "p1", folder)
    assert not is_project(tmp_path / "p1")
    with Project.create(tmp_path / "p2", folder, skip_unreadable=True) as p:
        assert [r.name for r in p.images] == ["ok"]
        assert "broken.png" in json.dumps(p.journal()[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    tifffile.imwrite(empty / "zero.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises((InputError, CorruptFileError), match="zero.tif"):
        Project.create(tmp_path / "p3", empty)
    with pytest.raises(InputError, match="does not exist"):
        Project.create(tmp_path / "p4", tmp_path / "missing")
    with pytest.raises(ProjectError, match="not empty"):
        Project.create(folder, folder)


def test_corrupt_files_name_the_file_and_leave_the_rest(tmp_path, project):
    project.commit_labels("img0", np.ones((40, 60), np.uint8))
    project.commit_labels("img1", np.full((40, 60), 2, np.uint8))
    bad = project.label_file("img0")
    bad.write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match=bad.name):
        project.read_labels("img0")
    assert (project.read_labels("img1")[0] == 2).all()
    project.close()
    (tmp_path / "proj" / "project.db").write_bytes(b"{not a database" * 100)
    with pytest.raises(CorruptFileError, match="project.db"):
        Project.open(tmp_path / "proj")
    with pytest.raises(ProjectError, match="not a napari-hitl project"):
        Project.open(tmp_path / "imgs")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "project.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptFileError, match="project.json"):
        Project.open(foreign)


def test_counts_come_from_the_index(project):
    project.commit_labels("img0", np.ones((40, 60), np.uint8))
    project.commit_labels("img1", np.ones((40, 60), np.uint8), source="pseudo", where=np.eye(40, 60, dtype=bool))
    every = project.all_counts()
    assert every["img0"].human == 2400 and every["img1"].pseudo == 40 and every["img2"].status == "new"
    assert all(every[r.name] == project.counts(r.name) for r in project.images)
    assert project.total_counts().human == 2400 and [r.name for r in project.iter_labelled()] == ["img0"]


def test_readonly_and_lock(tmp_path, project):
    with Project.open(project.root, readonly=True) as ro:
        with pytest.raises(ProjectError, match="read-only"):
            ro.commit_labels("img0", np.zeros((40, 60), np.uint8))
    code = textwrap.dedent(f"""
        from napari_hitl.project import Project
        from napari_hitl.errors import ProjectLockedError
        try:
            Project.open({str(project.root)!r})
        except ProjectLockedError as err:
            print("LOCKED", err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOCKED" in out.stdout and f"process {os.getpid()}" in out.stdout, out.stderr
    project.close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOCKED" not in out.stdout, out.stdout
    with pytest.raises(ProjectLockedError):
        p1 = Project.open(project.root)
        Project.open(project.root)
    p1.close()


KILLER = """
import os, signal, sys
import numpy as np
from napari_hitl import io
from napari_hitl.project import Project
p = Project.open(sys.argv[1])
for k in range(1, 10_000):
    if sys.argv[2] == "mid-rename" and k == 3:
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die with the temp file written
    p.commit_labels("big", np.full((600, 800), k % 2, np.uint8), source="human")
    print("committed", k, flush=True)
"""


@pytest.mark.parametrize("mode", ["mid-rename", "random"])
def test_kill_during_save_keeps_committed_labels(tmp_path, mode):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((600, 800), np.uint8)).save(folder / "big.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small.png")
    with Project.create(tmp_path / "proj", folder) as p:
        p.commit_labels("small", np.ones((10, 10), np.uint8))
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(tmp_path / "proj"), mode],
                            stdout=subprocess.PIPE, text=True)
    last = 0
    if mode == "random":
        for line in proc.stdout:
            last = int(line.split()[1])
            if last >= 4:
                os.kill(proc.pid, signal.SIGKILL)
                break
    out, _ = proc.communicate(timeout=120)
    for line in out.splitlines():
        last = int(line.split()[1])
    assert proc.returncode == -signal.SIGKILL
    with Project.open(tmp_path / "proj") as again:  # the lock died with the process
        labels, prov = again.read_labels("big")
        assert (prov == 1).all()
        value = int(labels[0, 0])
        assert (labels == value).all(), "a half-written label file"
        assert value in (last % 2, (last + 1) % 2)
        if mode == "mid-rename":
            assert last == 2 and value == 0  # the third save never landed: the second stays
        assert (again.read_labels("small")[0] == 1).all()
        again.journal()  # a torn last line does not break reading


def test_timelapse_frame_folder_and_multipage(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(4):
        Image.fromarray(np.full((16, 20), t * 10, np.uint8)).save(frames / f"f{t}.png")
    with Project.create(tmp_path / "p", frames, timelapse=True) as p:
        (rec,) = p.images
        assert rec.frames == 4 and rec.label_shape == (4, 16, 20)
        assert p.read_image(rec.name).shape == (4, 16, 20)
        assert int(p.read_image(rec.name, frame=2)[0, 0]) == 20
        p.commit_labels(rec.name, np.ones((16, 20), np.uint8), frame=2)
        labels, prov = p.read_labels(rec.name)
        assert labels.shape == (4, 16, 20) and prov[2].all() and not prov[[0, 1, 3]].any()
        assert p.counts(rec.name).human == 320
        with pytest.raises(InputError, match="frame 7"):
            p.commit_labels(rec.name, np.ones((16, 20), np.uint8), frame=7)
    stack = tmp_path / "stack"
    stack.mkdir()
    tifffile.imwrite(stack / "movie.tif", np.zeros((5, 12, 14), np.uint16), metadata={"axes": "TYX"})
    with Project.create(tmp_path / "q", stack / "movie.tif") as q:
        assert q.images[0].frames == 5
        assert q.read_image(0).shape == (5, 12, 14)
        q.commit_labels(0, np.ones((5, 12, 14), np.uint8))
        assert q.counts(0).human == 5 * 12 * 14
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(mixed / "b.png")
    with pytest.raises(InputError, match="one size"):
        Project.create(tmp_path / "r", mixed, timelapse=True)


def test_copy_makes_project_self_contained(tmp_path):
    imgs = make_images(tmp_path / "imgs", n=2)
    with Project.create(tmp_path / "p", imgs, copy=True) as p:
        pass
    for f in imgs.iterdir():
        f.unlink()
    with Project.open(tmp_path / "p") as p:
        assert p.read_image("img0").shape == (40, 60)


def test_moved_or_changed_images_give_clear_errors(tmp_path, project):
    (tmp_path / "imgs" / "img0.png").unlink()
    with pytest.raises(ProjectError, match="img0.png.*missing"):
        project.read_image("img0")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "imgs" / "img2.png")
    with pytest.raises(CorruptFileError, match="recorded"):
        project.read_image("img2")


def test_open_reads_no_image(tmp_path, monkeypatch):
    with Project.create(tmp_path / "p", make_images(tmp_path / "imgs", n=30)):
        pass

    def boom(*a, **k):
        raise AssertionError("opening a project must not read images")

    monkeypatch.setattr(io, "read_image", boom)
    monkeypatch.setattr(io, "image_info", boom)
    monkeypatch.setattr(Image, "open", boom)
    with Project.open(tmp_path / "p") as p:
        assert len(p) == 30
        assert p.counts("img5").status == "new"


def test_checkpoints_roundtrip(project):
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    project.save_checkpoint(state, "round1")
    got = project.load_checkpoint("round1")
    assert got["step"] == 7 and torch.equal(got["w"], state["w"])
    assert project.load_checkpoint("absent") is None
    (project.checkpoint_dir / "bad.pt").write_bytes(b"nope")
    with pytest.raises(CorruptFileError, match="bad.pt"):
        project.load_checkpoint("bad")
