"""Instances: the maps and edits in ``instances.py`` and the store's format 3 (objects per plane)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_hitl import instances as inst
from napari_hitl import project as store
from napari_hitl.errors import InputError
from napari_hitl.project import HUMAN, PSEUDO, Project

FIXTURES = Path(__file__).parent / "fixtures"


def _images(folder: Path, n: int = 2, shape=(12, 14)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def proj(tmp_path):
    p = Project.create(tmp_path / "proj", _images(tmp_path / "imgs"), classes=["background", "cell", "sky"],
                       stuff=["sky"])
    yield p
    p.close()


def _two_touching() -> np.ndarray:
    ids = np.zeros((12, 14), np.uint32)
    ids[2:8, 2:6] = 5
    ids[2:8, 6:10] = 9  # touches object 5 along a whole edge
    return ids


# --------------------------------------------------------------------------- maps

def test_semantic_is_derived_and_missing_classes_are_named():
    ids = _two_touching()
    sem = inst.semantic(ids, {5: 1, 9: 2})
    assert sem.dtype == np.uint16 and sem[3, 3] == 1 and sem[3, 7] == 2 and sem[0, 0] == 0
    with pytest.raises(InputError, match="object id 9 has no class"):
        inst.semantic(ids, {5: 1})
    big = ids.copy()
    big[big == 9] = 3_000_000_000  # beyond the lookup table: the search path
    assert inst.semantic(big, {5: 1, 3_000_000_000: 2})[3, 7] == 2


def test_from_semantic_makes_objects_and_keeps_ids_on_recommit():
    lab = np.zeros((12, 14), np.uint8)
    lab[1:4, 1:4] = 1
    lab[8:11, 8:11] = 1        # a second, separate cell
    lab[:, 12:] = 2            # sky (stuff): one area
    lab[0, 13] = 2
    kinds = ["stuff", "thing", "stuff"]
    ids, classes = inst.from_semantic(lab, kinds)
    assert len(inst.ids_of(ids)) == 3 and sorted(classes.values()) == [1, 1, 2]
    np.testing.assert_array_equal(inst.semantic(ids, classes), lab)
    again, classes2 = inst.from_semantic(lab, kinds, old=ids, old_classes=classes)
    np.testing.assert_array_equal(again, ids)
    # painting beside a cell extends that cell instead of making a new one
    more = lab.copy()
    more[4, 1:4] = 1
    where = np.zeros(lab.shape, bool)
    where[4, 1:4] = True
    grown, classes3 = inst.from_semantic(more, kinds, where=where, old=ids, old_classes=classes)
    assert grown[4, 2] == ids[2, 2] and len(inst.ids_of(grown)) == 3


def test_edits_delete_merge_split():
    ids = _two_touching()
    classes = {5: 1, 9: 1}
    merged, mc = inst.merge(ids, classes, [5, 9])
    assert set(inst.ids_of(merged).tolist()) == {5} and mc == {5: 1}
    line = np.zeros(ids.shape, bool)
    line[:, 6] = True  # a scribble right across the merged object
    split, sc, new = inst.split(merged, mc, 5, line=line)
    assert len(inst.ids_of(split)) == 2 and sc[new] == 1 and (split[2:8, 2:6] != split[2:8, 7:10][0, 0]).all()
    by_clicks, _, new2 = inst.split(merged, mc, 5, seeds=((4, 3), (4, 9)))
    assert by_clicks[4, 3] != by_clicks[4, 9] and new2 in (by_clicks[4, 3], by_clicks[4, 9])
    gone, gc = inst.delete(ids, classes, 9)
    assert not (gone == 9).any() and gc == {5: 1}
    with pytest.raises(InputError, match="does not cut"):
        inst.split(merged, mc, 5, line=np.zeros(ids.shape, bool))
    with pytest.raises(InputError, match="not on object"):
        inst.split(merged, mc, 5, seeds=((0, 0), (4, 9)))
    with pytest.raises(InputError, match="no object 7"):
        inst.delete(ids, classes, 7)


def test_objects_table():
    ids = _two_touching()
    prov = np.where(ids > 0, HUMAN, 0).astype(np.uint8)
    prov[2:8, 6:10] = PSEUDO
    objs = {o.id: o for o in inst.objects(ids, {5: 1, 9: 2}, prov)}
    assert objs[5].area == 24 and objs[5].bbox == (2, 2, 8, 6) and objs[5].centroid == (4.5, 3.5)
    assert objs[9].cls == 2 and objs[9].provenance == PSEUDO


# --------------------------------------------------------------------------- the store

def test_touching_objects_are_two_ids_in_the_store(proj):
    ids = _two_touching()
    proj.commit_instances("img0", ids, {5: 1, 9: 1})
    got, prov, classes = proj.read_instances("img0")
    np.testing.assert_array_equal(got, ids)
    assert classes == {5: 1, 9: 1} and (prov == HUMAN).all()
    labels, _ = proj.read_labels("img0")
    assert (labels[ids > 0] == 1).all() and (labels[ids == 0] == 0).all()
    rows = proj.objects("img0")
    assert [(r["id"], r["class"], r["area"]) for r in rows] == [(5, 1, 24), (9, 1, 24)]
    assert rows[0]["y0"] == 2 and rows[0]["x1"] == 6 and rows[0]["provenance"] == HUMAN


@pytest.mark.parametrize("ids, classes, message", [
    (np.full((12, 14), 2**33, np.int64), {2**33: 1}, "object ids run 0"),
    (np.full((12, 14), -1, np.int64), {}, "holds the id -1"),
    (_two_touching(), {5: 1, 9: 1, 11: 1}, "object id 11, which is not in the map"),
    (_two_touching(), {5: 1}, "object id 9 has no class"),
    (_two_touching(), {5: 1, 9: 7}, "class 7"),
    (_two_touching(), {5: 0, 9: 1}, "0 is the background"),
    (np.ones((3, 3), np.uint32), {1: 1}, "shape"),
    (np.ones((12, 14), np.float32), {1: 1}, "integer"),
])
def test_bad_instance_maps_are_refused_and_change_nothing(proj, ids, classes, message):
    proj.commit_instances("img0", _two_touching(), {5: 1, 9: 1})
    before = proj.label_file("img0")
    with pytest.raises(InputError, match=message):
        proj.commit_instances("img0", ids, classes)
    assert proj.label_file("img0") == before and proj.read_instances("img0")[2] == {5: 1, 9: 1}


def test_machine_objects_get_fresh_ids_and_never_replace_human_pixels(proj):
    proj.commit_instances("img0", _two_touching(), {5: 1, 9: 1}, where=_two_touching() > 0)
    pred = np.zeros((12, 14), np.uint32)
    pred[0:4, 0:4] = 1   # overlaps the human object 5 in its corner
    pred[9:12, 10:14] = 2
    proj.commit_instances("img0", pred, {1: 1, 2: 1}, source="pseudo")
    ids, prov, classes = proj.read_instances("img0")
    assert (ids[2:8, 2:6] == 5).all() and (prov[2:8, 2:6] == HUMAN).all()
    fresh = set(classes) - {5, 9}
    assert len(fresh) == 2 and min(fresh) > 9 and (prov[9:12, 10:14] == PSEUDO).all()


def test_stuff_keeps_one_area_per_image(proj):
    a = np.zeros((12, 14), np.uint32)
    a[:2] = 3
    a[10:] = 4  # two ids given for sky: stuff joins into one area
    proj.commit_instances("img0", a, {3: 2, 4: 2})
    ids, _, classes = proj.read_instances("img0")
    assert classes == {3: 2} and set(np.unique(ids).tolist()) == {0, 3}
    lab = np.zeros((12, 14), np.uint8)
    lab[5:7] = 2
    where = lab > 0
    proj.commit_labels("img0", lab, where=where)  # more sky joins the same area
    ids, _, classes = proj.read_instances("img0")
    assert classes == {3: 2} and (ids[5:7] == 3).all()
    with pytest.raises(InputError, match="already has"):
        proj.set_class_kind(2, "thing")
    proj.set_class_kind(1, "stuff")  # unused so far: allowed
    assert proj.classes[1].kind == "stuff"


def test_edits_are_journalled_and_undone_by_a_commit(proj):
    ids = _two_touching()
    proj.commit_instances("img0", ids, {5: 1, 9: 1})
    merged, mc = inst.merge(ids, {5: 1, 9: 1}, [5, 9])
    proj.commit_instances("img0", merged, mc, event="merge", ids=[5, 9])
    assert proj.read_instances("img0")[2] == {5: 1}
    proj.commit_instances("img0", ids, {5: 1, 9: 1}, event="undo", of="merge")
    assert proj.read_instances("img0")[2] == {5: 1, 9: 1}
    events = [(e["event"], e.get("ids"), e.get("of")) for e in proj.journal()]
    assert events[-2:] == [("merge", [5, 9], None), ("undo", None, "merge")]
    with pytest.raises(InputError, match="must be a word"):
        proj.commit_instances("img0", ids, {5: 1, 9: 1}, event="no such; thing")


def test_a_time_lapse_keeps_ids_over_frames(tmp_path):
    frames = _images(tmp_path / "frames", n=3)
    with Project.create(tmp_path / "p", frames, timelapse=True) as p:
        stack = np.zeros((3, 12, 14), np.uint32)
        for t in range(3):
            stack[t, 2:5, 2 + t:5 + t] = 7
        p.commit_instances(0, stack, {7: 1})
        ids, prov, classes = p.read_instances(0)
        assert classes == {7: 1} and ids.shape == (3, 12, 14) and (ids[2, 2:5, 4:7] == 7).all()
        assert [(r["frame"], r["id"]) for r in p.objects(0)] == [(0, 7), (1, 7), (2, 7)]
        one, _, c1 = p.read_instances(0, frame=1)
        assert c1 == {7: 1} and (one == stack[1]).all()


# --------------------------------------------------------------------------- migration from format 2

def test_second_format_projects_migrate_without_loss(tmp_path):
    root = tmp_path / "images_v2"
    shutil.copytree(FIXTURES / "images_v2", root)
    import sqlite3

    old = sqlite3.connect(root / "project.db")
    old_files = dict(((i, f) for i, f in old.execute("SELECT image, file FROM planes")))
    old_events = [e for (e,) in old.execute("SELECT event FROM journal ORDER BY seq")]
    old.close()
    before = {i: np.load(root / "labels" / f) for i, f in old_files.items()}
    before = {i: (z["labels"].copy(), z["provenance"].copy()) for i, z in before.items()}
    with Project.open(root) as p:
        assert [c.name for c in p.classes] == ["background", "nucleus", "debris", "membrane"]
        assert [c.kind for c in p.classes] == ["stuff", "thing", "thing", "thing"]
        for i, (labels, prov) in before.items():
            got, got_prov = p.read_labels(i)
            np.testing.assert_array_equal(got, labels)
            np.testing.assert_array_equal(got_prov, prov)
        ids, _, classes = p.read_instances("cells_a")
        # the two nuclei that touched were one area of a class map: one object; the third
        # nucleus and the debris are objects of their own
        assert sorted(classes.values()) == [1, 1, 2]
        c = p.counts("cells_b")
        assert (c.human, c.pseudo, c.simulated) == (16, 36, 40)
        events = [e["event"] for e in p.journal()]
        assert events == old_events + ["migrated"] and p.journal()[-1]["objects"] == 6
    assert json.loads((root / "project.json").read_text())["version"] == store.VERSION
    for f in old_files.values():  # the old files are kept in the backup, the old index too
        assert (root / "backup-v2" / "labels" / f).is_file() and not (root / "labels" / f).exists()
    assert (root / "backup-v2" / "project.db").is_file()
    with Project.open(root, readonly=True) as p:  # migrated once
        assert [e["event"] for e in p.journal()].count("migrated") == 1


def test_second_format_stack_migrates_and_a_crash_midway_is_finished_on_open(tmp_path, monkeypatch):
    from napari_hitl import io

    root = tmp_path / "stack_v2"
    shutil.copytree(FIXTURES / "stack_v2", root)
    real = io.atomic_write_json

    def die(path, obj):
        if Path(path).name == "project.json":
            raise KeyboardInterrupt("killed before the switch")
        return real(path, obj)

    monkeypatch.setattr(io, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        Project.open(root)
    monkeypatch.setattr(io, "atomic_write_json", real)
    assert json.loads((root / "project.json").read_text())["version"] == 2
    with Project.open(root, readonly=True) as p:
        labels, prov = p.read_labels(0)
        assert labels.shape == (4, 12, 14) and prov[1].sum() == 12 * 14 and not prov[0].any()
        assert labels[1].sum() == 9 + 12 and labels[3].sum() == 9 + 12 and (prov[3] == store.MACHINE).all()
        ids, _, classes = p.read_instances(0, frame=1)
        assert len(classes) == 2  # two separate cells on frame 1
        assert [e["event"] for e in p.journal()].count("migrated") == 1


# --------------------------------------------------------------------------- export and import

@pytest.mark.parametrize("fmt", ["tiff", "png", "zarr"])
def test_export_round_trip_keeps_ids_classes_and_provenance(tmp_path, fmt):
    import csv

    from napari_hitl.cli import main

    imgs = _images(tmp_path / "imgs", n=2)
    with Project.create(tmp_path / "p", imgs, classes=["background", "cell", "sky"], stuff=["sky"]) as p:
        ids = _two_touching()
        ids[10:, :] = 40_000  # a stuff area with a large id (16-bit PNG still holds it)
        p.commit_instances("img0", ids, {5: 1, 9: 1, 40_000: 2})
        pred = np.zeros((12, 14), np.uint32)
        pred[1:4, 1:5] = 3
        p.commit_instances("img1", pred, {3: 1}, source="pseudo", where=pred > 0)
        want = {n: p.read_instances(n) for n in ("img0", "img1")}
    assert main(["export", str(tmp_path / "p"), str(tmp_path / "out"), "--format", fmt]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "objects.csv")))
    assert [(r["image"], r["id"], r["class_name"], r["area"], r["provenance"]) for r in rows] == [
        ("img0", "5", "cell", "24", "human"), ("img0", "9", "cell", "24", "human"),
        ("img0", "40000", "sky", "28", "human"), ("img1", "1", "cell", "12", "pseudo")]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [c["kind"] for c in manifest["classes"]] == ["stuff", "thing", "stuff"] and manifest["objects"] == 4
    assert main(["create", str(tmp_path / "q"), str(imgs), "--labels-from", str(tmp_path / "out")]) == 0
    with Project.open(tmp_path / "q", readonly=True) as q:
        assert [(c.name, c.kind) for c in q.classes] == [("background", "stuff"), ("cell", "thing"), ("sky", "stuff")]
        for name, (ids, prov, classes) in want.items():
            got = q.read_instances(name)
            np.testing.assert_array_equal(got[0], ids)
            np.testing.assert_array_equal(got[1], prov)
            assert got[2] == classes


def test_png_export_refuses_ids_beyond_16_bits_and_import_checks_the_export(tmp_path):
    from napari_hitl.io import export_project, import_export

    imgs = _images(tmp_path / "imgs", n=1)
    with Project.create(tmp_path / "p", imgs) as p:
        p.commit_instances("img0", np.full((12, 14), 70_000, np.uint32), {70_000: 1})
        with pytest.raises(InputError, match="beyond 16-bit PNG"):
            export_project(p, tmp_path / "out", "png")
        assert not (tmp_path / "out").exists()
        export_project(p, tmp_path / "out", "tiff")
    with Project.create(tmp_path / "r", imgs, classes=["background", "nucleus"]) as r:
        with pytest.raises(InputError, match="differ"):
            import_export(r, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["images"][0]["instances"] = "../../etc/passwd"
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with Project.create(tmp_path / "q", imgs) as q:
        with pytest.raises(store.CorruptFileError, match="outside instances"):
            import_export(q, tmp_path / "out")
        assert q.counts("img0").total == q.counts("img0").unlabelled  # nothing was imported


# --------------------------------------------------------------------------- ids over time and never reused

def test_ids_are_image_wide_never_reused_and_one_object_over_time(tmp_path):
    frames = _images(tmp_path / "frames", n=3)
    with Project.create(tmp_path / "p", frames, timelapse=True, classes=["background", "cell", "debris"]) as p:
        a = np.zeros((12, 14), np.uint32)
        a[2:5, 2:5] = 4
        p.commit_instances(0, a, {4: 1}, frame=0)
        with pytest.raises(InputError, match="one object over time"):
            p.commit_instances(0, a, {4: 2}, frame=2)  # id 4 is a cell on frame 0
        lab = np.zeros((12, 14), np.uint8)
        lab[6:9, 6:9] = 2
        p.commit_labels(0, lab, frame=1, where=lab > 0)  # a new object: an id no frame uses
        ids, _, classes = p.read_instances(0)
        assert classes[4] == 1 and set(classes) - {4} and min(set(classes) - {4}) > 4
        first = p.reserve_ids(0, 3)
        assert first > max(classes) and p.reserve_ids(0) == first + 3
        p.clear_labels(0, frame=0)  # object 4 goes
        pred = np.zeros((12, 14), np.uint32)
        pred[0:2, 0:2] = 1
        p.commit_instances(0, pred, {1: 2}, frame=0, source="machine", where=pred > 0)
        assert 4 not in p.read_instances(0, frame=0)[2] and min(p.read_instances(0, frame=0)[2]) > first + 3


def test_migrated_stack_frames_do_not_share_ids(tmp_path):
    root = tmp_path / "stack_v2"
    shutil.copytree(FIXTURES / "stack_v2", root)
    with Project.open(root) as p:
        f1, f3 = p.read_instances(0, frame=1)[2], p.read_instances(0, frame=3)[2]
        assert f1 and f3 and not set(f1) & set(f3)


def test_a_long_first_format_name_keeps_its_labels(tmp_path):
    root = tmp_path / "images_v1"
    shutil.copytree(FIXTURES / "images_v1", root)
    long = "cells_a_" + "x" * 130
    records = json.loads((root / "images.json").read_text())
    records[0]["name"] = long
    (root / "images.json").write_text(json.dumps(records))
    (root / "labels" / "cells_a.npz").rename(root / "labels" / f"{long}.npz")
    with Project.open(root) as p:
        name = p.images[0].name
        assert name != long and p.counts(name).human == 16 * 20


def test_import_refuses_links_and_wrong_shapes(tmp_path):
    from napari_hitl.io import export_project, import_export

    imgs = _images(tmp_path / "imgs", n=1)
    with Project.create(tmp_path / "p", imgs) as p:
        p.commit_instances("img0", _two_touching(), {5: 1, 9: 1})
        export_project(p, tmp_path / "out", "png")
    out = tmp_path / "out"
    (out / "instances" / "img0.png").unlink()
    (out / "instances" / "img0.png").symlink_to(tmp_path / "p" / "project.json")
    with Project.create(tmp_path / "q", imgs) as q:
        with pytest.raises(store.CorruptFileError, match="link"):
            import_export(q, out)
    (out / "instances" / "img0.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(out / "instances" / "img0.png")
    with Project.create(tmp_path / "r", imgs) as r:
        with pytest.raises(store.CorruptFileError, match="shape"):
            import_export(r, out)
        assert r.counts("img0").human == 0
