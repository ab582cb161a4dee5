"""The project store as an untrusted, crash-prone place: transactions, snapshots, recovery,
migration from the first format, tampered files, full disks, exports."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.cli import main as cli
from napari_hitl.errors import CommitError, CorruptFileError, ExportError, InputError, ProjectError, ProjectLockedError
from napari_hitl.project import Project

FIXTURES = Path(__file__).parent / "fixtures"


def _images(folder: Path, n: int = 2, shape=(12, 14)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full(shape, 10 * i, np.uint8)).save(folder / f"img{i}.png")
    return folder


def _stack(folder: Path, frames: int = 6, shape=(12, 14)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(np.full(shape, t, np.uint8)).save(folder / f"f{t:02d}.png")
    return folder


def _label_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "labels").rglob("*.npz")}


def _commits(project: Project, image: str) -> int:
    return sum(1 for e in project.journal() if e["event"] == "commit" and e.get("image") == image)


# --------------------------------------------------------------------------- migration

def test_first_format_projects_migrate_without_loss(tmp_path):
    root = tmp_path / "images_v1"
    shutil.copytree(FIXTURES / "images_v1", root)
    old_labels = {n: np.load(root / "labels" / f"{n}.npz") for n in ("cells_a", "cells_b")}
    old_journal = (root / "journal.jsonl").read_text()
    with Project.open(root) as p:
        assert [r.name for r in p.images] == ["cells_a", "cells_b", "cells_c"]
        assert [c.name for c in p.classes] == ["background", "nucleus", "debris"]
        for name, old in old_labels.items():
            labels, prov = p.read_labels(name)
            np.testing.assert_array_equal(labels, old["labels"])
            np.testing.assert_array_equal(prov, old["provenance"])
        assert p.counts("cells_b").pseudo == 36 and p.counts("cells_b").human == 16
        assert p.counts("cells_c").status == "new" and p.read_image("cells_b").shape == (16, 20, 3)
        events = [e["event"] for e in p.journal()]
        # every entry kept, the one after a torn line too, and the migration itself journalled
        assert events == ["created", "commit", "class_added", "commit", "commit", "note", "migrated"]
        p.commit_labels("cells_c", np.ones((16, 20), np.uint8))
    meta = json.loads((root / "project.json").read_text())
    assert meta["version"] == store.VERSION and (root / "project.db").is_file()
    assert (root / "backup-v1" / "journal.jsonl").read_text() == old_journal
    assert not (root / "images.json").exists()
    with Project.open(root, readonly=True) as p:  # once migrated, opened as it is
        assert p.counts("cells_c").human == 320 and p.journal()[-1]["event"] == "commit"


def test_stack_migrates_and_readonly_open_migrates_too(tmp_path):
    root = tmp_path / "stack_v1"
    shutil.copytree(FIXTURES / "stack_v1", root)
    with Project.open(root, readonly=True) as p:
        labels, prov = p.read_labels(0)
        assert labels.shape == (4, 12, 14)
        assert prov[1].all() and prov[3].all() and not prov[0].any() and labels[3].sum() == 9
        assert p.counts(0).human == 2 * 12 * 14
    with Project.open(root) as p:  # the lock was released after migrating
        p.commit_labels(0, np.full((4, 12, 14), 1, np.uint8))
        assert p.counts(0).human == 4 * 12 * 14
        # the migrated frame files were replaced and collected
        assert all(name.startswith("labels/i") for name in _label_files(root))


def test_migration_is_crash_safe(tmp_path, monkeypatch):
    root = tmp_path / "images_v1"
    shutil.copytree(FIXTURES / "images_v1", root)
    real = io.atomic_write_json

    def die_on_marker(path, obj):
        if Path(path).name == "project.json":
            raise KeyboardInterrupt("killed before the switch")
        return real(path, obj)

    monkeypatch.setattr(io, "atomic_write_json", die_on_marker)
    with pytest.raises(KeyboardInterrupt):
        Project.open(root)
    monkeypatch.setattr(io, "atomic_write_json", real)
    assert json.loads((root / "project.json").read_text())["version"] == 1
    # the old index and label files are kept (moved to the backup just before the switch)
    assert (root / "backup-v1" / "images.json").exists() and (root / "backup-v1" / "labels" / "cells_a.npz").exists()
    with Project.open(root) as p:
        assert p.counts("cells_a").human == 16 * 20
        assert [e["event"] for e in p.journal()].count("migrated") == 1


def test_migration_refuses_tampered_first_format(tmp_path):
    root = tmp_path / "images_v1"
    shutil.copytree(FIXTURES / "images_v1", root)
    records = json.loads((root / "images.json").read_text())
    records[0]["name"] = "../../../victim"
    (root / "images.json").write_text(json.dumps(records))
    with pytest.raises(CorruptFileError, match="images.json.*victim"):
        Project.open(root)
    records[0]["name"] = "cells_a"
    records[1]["files"] = ["../../outside.png"]
    (root / "images.json").write_text(json.dumps(records))
    with pytest.raises(CorruptFileError, match="outside"):
        Project.open(root)
    assert json.loads((root / "project.json").read_text())["version"] == 1


# --------------------------------------------------------------------------- untrusted index

def _tamper(root: Path, sql: str, *args) -> None:
    db = sqlite3.connect(root / "project.db")
    db.execute(sql, args)
    db.commit()
    db.close()


@pytest.fixture
def proj(tmp_path):
    with Project.create(tmp_path / "proj", _images(tmp_path / "imgs"), classes=["bg", "cell", "debris"]) as p:
        yield p


def test_tampered_names_and_paths_are_refused(tmp_path, proj):
    root = proj.root
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    proj.close()
    cases = [
        ("UPDATE images SET name = ? WHERE id = 0", "../../../victim", "victim"),
        ("UPDATE images SET files = ? WHERE id = 1", json.dumps(["../../etc/passwd"]), "outside"),
        ("UPDATE images SET files = ? WHERE id = 1", json.dumps(["/etc/passwd"]), "outside"),
        ("UPDATE images SET height = ? WHERE id = 1", -5, "shape"),
        ("UPDATE classes SET color = ? WHERE id = 1", "[1, 2]", "class 1"),
    ]
    for k, (sql, value, message) in enumerate(cases):
        copy = shutil.copytree(root, tmp_path / f"case{k}")
        _tamper(copy, sql, value)
        with pytest.raises(CorruptFileError, match=message):
            Project.open(copy)
    _tamper(root, "UPDATE planes SET file = ?", "../../victim.npz")
    with pytest.warns(UserWarning, match="1 label file .* set aside"), Project.open(root) as p:  # img0's own file
        with pytest.raises(CorruptFileError, match="outside"):
            p.read_labels("img0")
        assert p.read_labels("img1")[1].sum() == 0  # the rest is readable
    assert not (tmp_path / "victim.npz").exists()


@pytest.mark.parametrize("content, message", [
    (dict(instances=np.full((12, 14), np.nan, np.float32), provenance=np.ones((12, 14), np.uint8)), "float32"),
    (dict(instances=np.full((12, 14), 9, np.uint32), provenance=np.ones((12, 14), np.uint8)),
     "object 9, which the index does not list"),
    (dict(instances=np.ones((12, 14), np.uint32), provenance=np.full((12, 14), 7, np.uint8)), "provenance code 7"),
    (dict(instances=np.ones((12, 14), np.uint32), provenance=np.zeros((12, 14), np.uint8)),
     "objects on unlabelled pixels"),
    (dict(instances=np.ones((3, 3), np.uint32), provenance=np.ones((3, 3), np.uint8)), "shape"),
    (dict(instances=np.ones((12, 14), np.uint32)), "unreadable"),
    (dict(labels=np.ones((12, 14), np.uint16), provenance=np.ones((12, 14), np.uint8)), "unreadable"),
])
def test_label_files_are_checked_on_read(proj, content, message):
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    path = proj.label_file("img0")
    np.savez(path.with_suffix(""), **content)  # np.savez adds .npz
    with pytest.raises(CorruptFileError, match=message) as err:
        proj.read_labels("img0")
    assert path.name in str(err.value)
    # the user's way out: a full commit replaces the bad file
    proj.commit_labels("img0", np.full((12, 14), 2, np.uint8))
    assert (proj.read_labels("img0")[0] == 2).all()


def test_values_classes_and_names_have_limits(tmp_path, proj, monkeypatch):
    with pytest.raises(InputError, match="70000"):
        proj.commit_labels("img0", np.full((12, 14), 70_000, np.uint32))
    assert proj.counts("img0").status == "new"
    monkeypatch.setattr(store, "MAX_CLASSES", 4)
    proj.add_class("membrane")
    with pytest.raises(InputError, match="at most 4 classes"):
        proj.add_class("one-too-many")
    assert proj.n_classes == 4
    with pytest.raises(InputError, match="control"):
        proj.add_class("bad\nname")
    # a 250-character file name becomes a stable short name that can be committed and exported
    long_dir = tmp_path / "long"
    long_dir.mkdir()
    stem = "x" * 250
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(long_dir / f"{stem}.png")
    with Project.create(tmp_path / "p_long", long_dir) as p:
        (rec,) = p.images
        assert len(rec.name.encode()) <= io.MAX_NAME_BYTES and rec.name == store.short_name(stem)
        p.commit_labels(rec.name, np.ones((8, 8), np.uint8))
        manifest = io.export_project(p, tmp_path / "long_out", "png")
        assert (tmp_path / "long_out" / json.loads(manifest.read_text())["images"][0]["labels"]).is_file()


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with Project.create(tmp_path / "p", _images(tmp_path / "imgs")) as p:
            p.commit_labels("img0", np.ones((12, 14), np.uint8))
            io.export_project(p, tmp_path / "out", "tiff")
            label_file = p.label_file("img0")
        for path in [p.root / "project.json", p.root / "project.db", label_file,
                     tmp_path / "out" / "manifest.json", tmp_path / "out" / "labels" / "img0.tif"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- recovery and locks

def test_recovery_on_open_removes_leftovers(proj):
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    current = proj.label_file("img0")
    root = proj.root
    proj.close()
    (root / "labels" / ".i000000-t00000-dead.npz.abc.tmp").write_bytes(b"half")
    (root / ".project.json.xyz.tmp").write_bytes(b"half")
    np.savez(root / "labels" / "i000001-t00000-orphan", labels=np.zeros((12, 14), np.uint16),
             provenance=np.zeros((12, 14), np.uint8))
    with Project.open(root, readonly=True) as ro:  # a reader does not clean up
        assert (root / "labels" / "i000001-t00000-orphan.npz").exists()
    with pytest.warns(UserWarning, match="1 label file .* set aside"):
        with Project.open(root) as p:
            assert _label_files(root) == {str(current.relative_to(root))}
            assert not list(root.rglob("*.tmp"))
            entry = p.journal()[-1]
            assert entry["event"] == "recovered" and entry["removed_files"] == 2 and entry["set_aside"] == 1
            assert (p.read_labels("img0")[0] == 1).all()
    # no commit explains the orphan, so it may hold someone's labels: kept aside, not deleted
    assert (root / entry["folder"] / "i000001-t00000-orphan.npz").is_file()
    del ro


def test_interrupted_create_can_be_retried(tmp_path, monkeypatch):
    imgs = _images(tmp_path / "imgs")
    real = io.atomic_write_json
    monkeypatch.setattr(io, "atomic_write_json", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        Project.create(tmp_path / "p", imgs)
    monkeypatch.setattr(io, "atomic_write_json", real)
    assert (tmp_path / "p" / "project.db").exists() and not store.is_project(tmp_path / "p")
    with pytest.raises(ProjectError, match="interrupted"):
        Project.open(tmp_path / "p")
    assert cli(["info", str(tmp_path / "p")]) == 1
    with Project.create(tmp_path / "p", imgs) as p:
        assert len(p) == 2
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "notes.txt").write_text("mine")
    with pytest.raises(ProjectError, match="not empty"):
        Project.create(tmp_path / "q", imgs)
    assert (tmp_path / "q" / "notes.txt").read_text() == "mine"


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(proj):
    (proj.root / ".lock").unlink()
    with pytest.raises(ProjectLockedError):
        Project.open(proj.root)
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))


# --------------------------------------------------------------------------- snapshots

def test_readers_see_one_commit_and_keep_their_files(tmp_path):
    with Project.create(tmp_path / "p", _stack(tmp_path / "frames"), timelapse=True,
                        classes=["bg", "a", "b", "c"]) as p:
        p.commit_labels(0, np.full((6, 12, 14), 1, np.uint8))
        with Project.open(p.root, readonly=True) as ro, ro.snapshot():
            before = ro.label_file(0, frame=2)
            p.commit_labels(0, np.full((6, 12, 14), 2, np.uint8))
            labels, _ = ro.read_labels(0)
            assert (labels == 1).all()  # the snapshot is still the first commit
            assert before.exists()      # and its files are kept while it is open
        assert (Project.open(p.root, readonly=True).read_labels(0)[0] == 2).all()
        p.commit_labels(0, np.full((6, 12, 14), 3, np.uint8))  # the next commit collects the old files
        assert not before.exists() and len(_label_files(p.root)) == 6


# --------------------------------------------------------------------------- full disks

def test_a_failed_label_write_rolls_the_whole_stack_commit_back(tmp_path, monkeypatch):
    with Project.create(tmp_path / "p", _stack(tmp_path / "frames"), timelapse=True) as p:
        p.commit_labels(0, np.zeros((6, 12, 14), np.uint8))
        files = _label_files(p.root)
        entries = len(p.journal())
        real, calls = store._write_npz, []

        def full_disk(path, labels, prov):
            calls.append(path)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real(path, labels, prov)

        monkeypatch.setattr(store, "_write_npz", full_disk)
        with pytest.raises(CommitError, match="rolled back, nothing changed.*No space left") as err:
            p.commit_labels(0, np.ones((6, 12, 14), np.uint8))
        assert calls[2].name in str(err.value)
        assert _label_files(p.root) == files and len(p.journal()) == entries
        assert (p.read_labels(0)[0] == 0).all()


def test_a_full_index_rolls_back_and_says_so(tmp_path):
    with Project.create(tmp_path / "p", _images(tmp_path / "imgs")) as p:
        pages = p._db.execute("PRAGMA page_count").fetchone()[0]
        p._db.execute(f"PRAGMA max_page_count = {pages + 2}")
        landed = 0
        with pytest.raises(CommitError, match="rolled back, nothing changed.*full") as err:
            for k in range(500):
                p.log("note", padding="x" * 2000)
                p.commit_labels("img0", np.full((12, 14), k % 2, np.uint8))
                landed = k + 1
        assert "project.db" in str(err.value)
        assert _commits(p, "img0") == landed
        assert (p.read_labels("img0")[0] == (landed - 1) % 2).all()
        assert len(_label_files(p.root)) == 1  # the failed commit's file is gone too


def _mount_tmpfs(path: Path, size: str, readonly: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_a_really_full_disk_gives_definite_answers(tmp_path, capsys):
    small, ro = tmp_path / "small", tmp_path / "ro"
    if not _mount_tmpfs(small, "600k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights); the injected "
                    "ENOSPC tests above cover the logic")
    try:
        rng = np.random.default_rng(0)
        imgs = _images(tmp_path / "imgs", n=1, shape=(256, 256))
        landed, last = 0, None
        with Project.create(small / "p", imgs, classes=[f"c{i}" for i in range(200)]) as p:
            with pytest.raises(CommitError) as err:
                for _ in range(100):
                    # blocks of random classes: a label file that hardly compresses, ~1000 objects
                    labels = np.kron(rng.integers(0, 200, (32, 32), dtype=np.uint8), np.ones((8, 8), np.uint8))
                    p.commit_labels("img0", labels)
                    landed, last = landed + 1, labels
            assert "rolled back, nothing changed" in str(err.value)
            assert landed >= 1 and _commits(p, "img0") == landed
            np.testing.assert_array_equal(p.read_labels("img0")[0], last)
            assert len(_label_files(p.root)) == 1
        try:  # take what the rolled-back commit freed
            with open(small / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        except OSError:
            pass
        # the command line: one line, no traceback, for a full disk, a read-only target, a file
        assert cli(["export", str(small / "p"), str(small / "out")]) == 1
        text = capsys.readouterr().err
        assert "no space left" in text.lower() and "Traceback" not in text and len(text.strip().splitlines()) == 1
        assert not (small / "out").exists()
        (small / "filler").unlink(missing_ok=True)
        if _mount_tmpfs(ro, "100k", readonly=True):
            with Project.open(small / "p", readonly=True) as rp, pytest.raises(ExportError, match="Read-only"):
                io.export_project(rp, ro / "out", "png")
            assert cli(["export", str(small / "p"), str(ro / "out")]) == 1
            text = capsys.readouterr().err
            assert "Read-only" in text and "Traceback" not in text and len(text.strip().splitlines()) == 1
    finally:
        for m in (ro, small):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)


# --------------------------------------------------------------------------- exports

def test_export_is_all_or_nothing_and_guarded(tmp_path, proj, capsys):
    out = tmp_path / "out"
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    io.export_project(proj, out, "tiff")
    first = json.loads((out / "manifest.json").read_text())
    with pytest.raises(InputError, match="earlier export"):
        io.export_project(proj, out, "tiff")
    proj.commit_labels("img1", np.full((12, 14), 2, np.uint8))
    with pytest.raises(KeyboardInterrupt):  # cancelled half way: the earlier export stays whole
        io.export_project(proj, out, "png", overwrite=True, should_stop=iter([False, True]).__next__)
    assert json.loads((out / "manifest.json").read_text()) == first
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["img0.tif", "img1.tif"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    io.export_project(proj, out, "png", overwrite=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "png" and manifest["totals"]["human"] == 2 * 12 * 14
    assert all((out / e["labels"]).is_file() for e in manifest["images"])
    assert not (out / "labels" / "img0.tif").exists()  # no file of the earlier export is left
    for bad, message in [(proj.root / "exports", "project folder itself"), (proj.root.parent, "contains the project")]:
        with pytest.raises(InputError, match=message):
            io.export_project(proj, bad, "tiff", overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("precious")
    with pytest.raises(InputError, match="not an export"):
        io.export_project(proj, mine, "tiff", overwrite=True)
    assert (mine / "thesis.docx").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    proj.close()
    assert cli(["export", str(proj.root), str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err
    assert cli(["export", str(proj.root), str(out)]) == 1 and "--overwrite" in capsys.readouterr().err
    assert cli(["export", str(proj.root), str(out), "--overwrite", "--format", "zarr"]) == 0


def test_export_reads_one_snapshot_while_a_writer_commits(tmp_path):
    with Project.create(tmp_path / "p", _stack(tmp_path / "frames"), timelapse=True) as p:
        p.commit_labels(0, np.zeros((6, 12, 14), np.uint8))
        ro = Project.open(p.root, readonly=True)
        seen = []

        def progress(done, total):  # a commit lands in the middle of the export
            p.commit_labels(0, np.ones((6, 12, 14), np.uint8))
            seen.append(done)

        manifest = json.loads(io.export_project(ro, tmp_path / "out", "tiff", progress=progress).read_text())
        ro.close()
        exported = io.read_labels(tmp_path / "out" / manifest["images"][0]["labels"])
        assert seen and (exported == 0).all() and manifest["totals"]["human"] == 6 * 12 * 14


def test_a_new_class_keeps_the_saved_model(tmp_path, proj, monkeypatch):
    torch = pytest.importorskip("torch")
    from napari_hitl.app.model_host import ModelHost
    from napari_hitl.model import train

    real = train.Trainer
    monkeypatch.setattr(train, "Trainer", lambda *a, **k: real(*a, **{**k, "pretrained": False, "device": "cpu"}))
    host = ModelHost(proj)
    first = host.get()
    first.save()
    old = first.model.head.weight.detach().clone()
    proj.add_class("membrane")
    grown = host.get()  # the host notices the new class and grows the model through its checkpoint
    assert grown is not first and grown.model.head.weight.shape[0] == 4
    assert torch.equal(grown.model.head.weight.detach()[:3], old)
    proj.close()
    again = ModelHost(Project.open(proj.root)).get()  # and a later session loads the saved model
    assert again.model.head.weight.shape[0] == 4


# --------------------------------------------------------------------------- kill -9

def test_kill_9_at_random_moments(tmp_path):
    """100 writers killed at random moments during stack commits, checkpoints and exports, a
    reader reading all the while: no half-applied commit, no torn read, no lost journal entry."""
    pytest.importorskip("torch")
    from napari_hitl.evaluate.bench_crash import probe

    report = probe(tmp_path, iterations=100)
    assert report.ok, report.failures[:5]
    # commits landing before the kills: about 340 on a quiet machine, 25-45 with the CPU shared
    # several ways; the floor only checks that the probe exercised commits at all
    assert report.iterations == 100 and report.commits >= 10 and report.reads >= 100
    assert report.exports_checked >= 5 and report.checkpoints_checked >= 5


def test_the_crash_probes_reader_imports_nothing_while_writers_fork():
    """The probe forks writers while its reader thread runs: a fork in the middle of an import
    (the reader's first np.unique imported numpy.ma) left the child blocked for good on that
    module's lock. The reader's check runs under the fork gate and imports nothing."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from napari_hitl.evaluate import bench_crash
        before = set(sys.modules)
        assert bench_crash._one_value(np.full((6, 12, 14), 3, np.uint8))
        assert not bench_crash._one_value(np.arange(4))
        assert set(sys.modules) == before, sorted(set(sys.modules) - before)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(store.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_copy_is_one_snapshot_and_stands_alone(tmp_path):
    imgs = _images(tmp_path / "imgs")
    with Project.create(tmp_path / "p", imgs, copy=True, classes=["bg", "a", "b"]) as p:
        p.commit_labels("img0", np.ones((12, 14), np.uint8))
        p.commit_labels("img1", np.full((12, 14), 2, np.uint8), source="simulated")
        copy = p.copy_to(tmp_path / "copy")
        p.commit_labels("img0", np.full((12, 14), 2, np.uint8))  # the original moves on
    shutil.rmtree(tmp_path / "p")
    with Project.open(copy) as c:
        assert (c.read_labels("img0")[0] == 1).all() and c.counts("img1").status == "simulated"
        assert c.read_image("img1").shape == (12, 14) and c.journal()[-1]["event"] == "copied"
        # machine labels never replace simulated ones, as they never replace a person's
        c.commit_labels("img1", np.ones((12, 14), np.uint8), source="pseudo")
        assert (c.read_labels("img1")[0] == 2).all()
    with pytest.raises(ProjectError, match="not empty"):
        Project.open(copy, readonly=True).copy_to(tmp_path / "imgs")


def test_label_files_the_index_no_longer_names_are_set_aside_not_deleted(proj):
    """A 'planes' row gone (a damaged table, a person's edit): the plane's label file holds a
    person's labels; opening for writing keeps it aside and says so instead of deleting it."""
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    proj.commit_labels("img1", np.full((12, 14), 2, np.uint8))
    lost, kept = proj.label_file("img0"), proj.label_file("img1")
    payload = lost.read_bytes()
    root = proj.root
    proj._db.execute("DELETE FROM planes WHERE image = 0")
    proj.close()
    with pytest.warns(UserWarning, match="1 label file .* set aside in .*orphaned-labels"):
        with Project.open(root) as p:
            entry = p.journal()[-1]
            assert entry["event"] == "recovered" and entry["set_aside"] == 1
            assert p.label_file("img1") == kept and (p.read_labels("img1")[0] == 2).all()
    assert [f.read_bytes() for f in (root / entry["folder"]).rglob("*.npz")] == [payload]
    assert _label_files(root) == {str(kept.relative_to(root))}


def test_files_replaced_while_a_reader_held_a_snapshot_are_removed_on_the_next_open(proj):
    """The writer closes while another process's snapshot still needs the replaced file: the
    commit's note explains it, so the next opening deletes it quietly (nothing set aside)."""
    import warnings

    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    first = proj.label_file("img0")
    root = proj.root
    assert not list((root / "labels").glob(".commit-*.json"))  # a commit's note goes with it
    with Project.open(root, readonly=True) as ro, ro.snapshot():
        proj.commit_labels("img0", np.full((12, 14), 2, np.uint8))
        current = proj.label_file("img0")
        proj.close()
        assert first.exists() and len(list((root / "labels").glob(".commit-*.json"))) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Project.open(root) as p:
            assert p.journal()[-1]["event"] == "recovered" and p.journal()[-1]["removed_files"] == 1
            assert (p.read_labels("img0")[0] == 2).all()
    assert _label_files(root) == {str(current.relative_to(root))}
    assert not (root / store.ORPHANS_DIR).exists() and not list((root / "labels").glob(".commit-*.json"))


def test_a_file_a_finished_commit_wrote_is_set_aside_if_its_entry_is_lost_later(proj):
    """A commit's note still on disk (a reader held a snapshot when the writer closed) names the
    file it wrote; if that file's entry is lost afterwards, the note does not make it garbage:
    the commit went through, so the file holds labels and is set aside, not deleted."""
    proj.commit_labels("img0", np.ones((12, 14), np.uint8))
    first = proj.label_file("img0")
    root = proj.root
    with Project.open(root, readonly=True) as ro, ro.snapshot():
        proj.commit_labels("img0", np.full((12, 14), 2, np.uint8))
        current = proj.label_file("img0")
        payload = current.read_bytes()
        proj._db.execute("DELETE FROM planes WHERE image = 0")  # the entry is lost after the commit
        proj.close()
    with pytest.warns(UserWarning, match="1 label file .* set aside"), Project.open(root) as p:
        entry = p.journal()[-1]
        assert entry["removed_files"] == 1 and entry["set_aside"] == 1  # the replaced file, the lost one
    assert not first.exists() and not current.exists()
    assert [f.read_bytes() for f in (root / entry["folder"]).rglob("*.npz")] == [payload]
