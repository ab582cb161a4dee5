"""Large images in the store: labels in chunks, committed and read by window (``Project.commit_window``).

The threshold and the chunk side are lowered so that a small generated TIFF counts as large.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_hitl import instances as inst
from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.errors import CommitError, CorruptFileError, InputError
from napari_hitl.project import HUMAN, MACHINE, Project

H, W, CHUNK = 600, 700, 256


def make_slide(folder: Path, shape=(H, W)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, shape, dtype=np.uint8)
    tifffile.imwrite(folder / "slide.tif", img, tile=(128, 128))
    small = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    tifffile.imwrite(folder / "small.tif", small)
    return folder


@pytest.fixture
def slide_project(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_PIXELS", 100 * 100)
    monkeypatch.setattr(store, "SLIDE_CHUNK", CHUNK)
    p = Project.create(tmp_path / "proj", make_slide(tmp_path / "imgs"), classes=["background", "cell", "sky"],
                       stuff=["sky"])
    yield p
    p.close()


def _full(p: Project) -> tuple[np.ndarray, np.ndarray, dict]:
    return p.read_window("slide", 0, 0, H, W)


def test_a_large_image_is_stored_in_chunks_and_never_read_whole(slide_project):
    p = slide_project
    assert p.is_slide("slide") and not p.is_slide("small") and p.slide_chunk("slide") == CHUNK
    # format 4: a release that knows only format 3 refuses the project instead of deleting its chunks
    assert json.loads((p.root / "project.json").read_text())["version"] == store.SLIDE_VERSION == 4
    with pytest.raises(InputError, match="large image .*never read whole"):
        p.read_image("slide")
    with pytest.raises(InputError, match="read_window"):
        p.read_instances("slide")
    with pytest.raises(InputError, match="commit_window"):
        p.commit_instances("slide", np.zeros((H, W), np.uint32), {})
    with p.open_image("slide") as img:
        assert img.shape == (H, W)
    ids, prov, classes = _full(p)
    assert ids.shape == (H, W) and not ids.any() and not prov.any() and classes == {}
    assert p.counts("slide").unlabelled == H * W
    p.commit_instances("small", np.zeros((40, 50), np.uint32), {})  # a small image keeps whole planes
    assert p.label_file("small").suffix == ".npz"


def test_a_window_commit_changes_only_its_chunks_and_reads_back(slide_project):
    p = slide_project
    win = np.zeros((100, 120), np.uint32)
    win[10:90, 10:110] = 7
    p.commit_window("slide", win, {7: 1}, offset=(20, 30))
    first = p.chunk_files("slide")
    assert set(first) == {(0, 0)}
    # a window over the corner of four chunks (rows 200..300, columns 200..320)
    win2 = np.zeros((100, 120), np.uint32)
    win2[20:80, 20:100] = 8
    p.commit_window("slide", win2, {8: 1}, offset=(200, 200))
    second = p.chunk_files("slide")
    assert set(second) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert second[(0, 0)] != first[(0, 0)]  # (0, 0) changed: a new file
    assert not first[(0, 0)].exists()  # the replaced one is gone (no reader held it)
    # a window inside chunk (1, 1) only: the other three keep their files
    win3 = np.full((10, 10), 9, np.uint32)
    p.commit_window("slide", win3, {9: 1}, offset=(400, 400))
    third = p.chunk_files("slide")
    assert {k: v for k, v in third.items() if k != (1, 1)} == {k: v for k, v in second.items() if k != (1, 1)}
    assert third[(1, 1)] != second[(1, 1)]
    expected = np.zeros((H, W), np.uint32)
    expected[30:110, 40:140] = 7
    expected[220:280, 220:300] = 8
    expected[400:410, 400:410] = 9
    ids, prov, classes = _full(p)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(prov, np.where((expected > 0) | np.pad(np.ones((100, 120), bool), (
        (20, H - 120), (30, W - 150))), HUMAN, 0).astype(np.uint8) | np.pad(np.ones((100, 120), np.uint8), (
            (200, H - 300), (200, W - 320))) | np.pad(np.ones((10, 10), np.uint8), ((400, H - 410), (400, W - 410))))
    assert classes == {7: 1, 8: 1, 9: 1}
    # a window read and a strided (coarse) read see the same pixels
    sub, _, sub_classes = p.read_window("slide", 250, 250, 420, 430)
    np.testing.assert_array_equal(sub, expected[250:420, 250:430])
    assert sub_classes == {8: 1, 9: 1}
    coarse, _, _ = p.read_window("slide", 3, 5, H, W, step=4)
    np.testing.assert_array_equal(coarse, expected[3::4, 5::4])
    views = p.lazy_instances("slide", min_side=100)
    assert [v.shape for v in views] == [(600, 700), (300, 350), (150, 175), (75, 88)]
    np.testing.assert_array_equal(views[2][10:100, 7:170], expected[::4, ::4][10:100, 7:170])
    # a coarse read keeps the chunks it sampled; a commit writes new chunk files, so it is seen
    p.commit_window("slide", np.full((8, 8), 10, np.uint32), {10: 1}, offset=(40, 48))
    expected[40:48, 48:56] = 10
    np.testing.assert_array_equal(np.asarray(views[2]), expected[::4, ::4])
    np.testing.assert_array_equal(np.asarray(views[-1]), expected[::8, ::8])
    small = p.lazy_instances("slide", min_side=20)
    for step, view in ((16, small[4]), (32, small[5])):
        np.testing.assert_array_equal(np.asarray(view), expected[::step, ::step])  # from the chunks' overviews
    p.commit_window("slide", np.zeros((8, 8), np.uint32), {}, offset=(40, 48), where=np.ones((8, 8), bool))
    expected[40:48, 48:56] = 0
    np.testing.assert_array_equal(np.asarray(views[2]), expected[::4, ::4])
    c = p.counts("slide")
    assert c.human == 100 * 120 * 2 + 100 and c.unlabelled == H * W - c.human
    assert [e["event"] for e in p.journal()][-5:] == ["commit"] * 5


def test_objects_spanning_chunks_have_their_whole_area_box_and_centroid(slide_project):
    p = slide_project
    win = np.zeros((200, 300), np.uint32)
    win[50:150, 20:280] = 4  # columns 220..480: across the chunk border at 256
    win[60:70, 100:110] = 0
    p.commit_window("slide", win, {4: 1}, offset=(100, 200))
    full = np.zeros((H, W), np.uint32)
    full[100:300, 200:500] = win
    ref = inst.objects(full, {4: 1}, np.where(full > 0, HUMAN, 0))
    (row,) = p.objects("slide")
    assert (row["area"], (row["y0"], row["x0"], row["y1"], row["x1"])) == (ref[0].area, ref[0].bbox)
    assert (row["cy"], row["cx"]) == pytest.approx(ref[0].centroid)
    assert row["provenance"] == HUMAN
    # cut the part of the object in the right chunk away: its box shrinks to the left chunk
    cut = np.zeros((200, 200), np.uint32)
    p.commit_window("slide", cut, {}, offset=(100, 256), where=np.ones((200, 200), bool))
    full[:, 256:456] = 0
    ref = inst.objects(full, {4: 1})
    (row,) = p.objects("slide")
    assert (row["area"], (row["y0"], row["x0"], row["y1"], row["x1"])) == (ref[0].area, ref[0].bbox)
    assert (row["cy"], row["cx"]) == pytest.approx(ref[0].centroid)
    # and the rest of it: the object is gone from the table
    p.commit_window("slide", np.zeros((200, 300), np.uint32), {}, offset=(100, 200))
    assert p.objects("slide") == []


def test_machine_windows_get_fresh_ids_and_never_replace_human_pixels(slide_project):
    p = slide_project
    human = np.zeros((50, 50), np.uint32)
    human[:25] = 3
    p.commit_window("slide", human, {3: 1}, offset=(240, 240), where=human > 0)
    machine = np.full((50, 50), 1, np.uint32)
    p.commit_window("slide", machine, {1: 1}, offset=(240, 240), source="machine")
    ids, prov, classes = p.read_window("slide", 240, 240, 290, 290)
    assert (ids[:25] == 3).all() and (prov[:25] == HUMAN).all()
    new = set(np.unique(ids[25:]).tolist())
    assert len(new) == 1 and new != {1} and (prov[25:] == MACHINE).all()
    # sky is stuff: one id per image, even from windows far apart
    sky = np.full((10, 10), 50, np.uint32)
    p.commit_window("slide", sky, {50: 2}, offset=(0, 0))
    p.commit_window("slide", np.full((10, 10), 60, np.uint32), {60: 2}, offset=(500, 600))
    sky_rows = [o for o in p.objects("slide") if o["class"] == 2]
    assert len(sky_rows) == 1 and sky_rows[0]["area"] == 200


def test_a_failed_window_commit_leaves_the_previous_state(slide_project, monkeypatch):
    p = slide_project
    win = np.full((300, 300), 5, np.uint32)
    p.commit_window("slide", win, {5: 1}, offset=(100, 100))
    before_files, before_objects, before_counts = p.chunk_files("slide"), p.objects("slide"), p.counts("slide")
    real, calls = store._write_npz, []

    def failing(path, ids, prov, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, ids, prov, **kw)

    monkeypatch.setattr(store, "_write_npz", failing)
    with pytest.raises(CommitError, match="rolled back, nothing changed"):
        p.commit_window("slide", np.full((300, 300), 6, np.uint32), {6: 1}, offset=(100, 100))
    assert len(calls) == 3 and not any(c.exists() for c in calls)
    assert p.chunk_files("slide") == before_files and p.objects("slide") == before_objects
    assert p.counts("slide") == before_counts
    ids, _, _ = p.read_window("slide", 100, 100, 400, 400)
    assert (ids == 5).all()


def test_a_process_killed_between_chunk_writes_leaves_the_old_state(tmp_path):
    """kill -9 (os._exit) after the second of four chunk files: the project opens with the
    previous commit whole and the new files cleaned up."""
    root = tmp_path / "proj"
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        from napari_hitl import io, project as store
        io.LAZY_PIXELS = 100 * 100
        store.SLIDE_CHUNK = {CHUNK}
        p = store.Project.create({str(root)!r}, {str(make_slide(tmp_path / 'imgs'))!r}, classes=["background", "cell"])
        p.commit_window("slide", np.full((300, 300), 5, np.uint32), {{5: 1}}, offset=(100, 100))
        real, n = store._write_npz, [0]
        def dying(path, ids, prov, **kw):
            real(path, ids, prov, **kw)
            n[0] += 1
            if n[0] == 2:
                os._exit(9)
        store._write_npz = dying
        p.commit_window("slide", np.full((300, 300), 6, np.uint32), {{6: 1}}, offset=(100, 100))
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(store.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    files = sorted((root / "labels").rglob("*.npz"))
    assert len(files) == 4 + 2  # the four chunks of the first commit and two orphans
    with Project.open(root) as p:  # recovers: the orphans go
        ids, prov, classes = p.read_window("slide", 100, 100, 400, 400)
        assert (ids == 5).all() and classes == {5: 1}
        assert [o["area"] for o in p.objects("slide")] == [300 * 300]
        assert len(list((root / "labels").rglob("*.npz"))) == 4
        assert p.journal()[-1]["event"] == "recovered"


def _rewrite_chunk(p: Project, key, ids, prov) -> None:
    path = p.chunk_files("slide")[key]
    os.chmod(path, 0o644)
    np.savez(path.with_suffix(""), instances=ids, provenance=prov)


@pytest.mark.parametrize("ids, prov, message", [
    (np.zeros((CHUNK, CHUNK), np.uint16), np.zeros((CHUNK, CHUNK), np.uint8), "holds uint16 object ids"),
    (np.zeros((CHUNK, CHUNK - 1), np.uint32), np.zeros((CHUNK, CHUNK - 1), np.uint8),
     r"has shape \(256, 255\), expected \(256, 256\)"),
    (np.full((CHUNK, CHUNK), 77, np.uint32), np.ones((CHUNK, CHUNK), np.uint8), "holds object 77, which the index"),
])
def test_a_bad_chunk_file_is_named(slide_project, ids, prov, message):
    p = slide_project
    p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
    _rewrite_chunk(p, (0, 0), ids, prov)
    with pytest.raises(CorruptFileError, match=message):
        p.read_window("slide", 0, 0, 20, 20)
    with pytest.raises(CorruptFileError, match=message):
        p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
    # other chunks still read
    assert not p.read_window("slide", 300, 300, 310, 310)[0].any()


def test_chunk_pointers_outside_the_project_are_refused(slide_project):
    p = slide_project
    p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
    p._db.execute("UPDATE chunks SET file = '../../etc/passwd.npz'")
    with pytest.raises(CorruptFileError, match="points outside its folder"):
        p.read_window("slide", 0, 0, 20, 20)
    p._db.execute("UPDATE slides SET chunk = 3")
    with pytest.raises(CorruptFileError, match="malformed entry"):
        Project.open(p.root, readonly=True)


def test_a_project_copy_keeps_the_chunks(slide_project, tmp_path):
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    with Project.open(p.copy_to(tmp_path / "copy"), readonly=True) as q:
        assert q.is_slide("slide")
        np.testing.assert_array_equal(q.read_window("slide", 0, 0, H, W)[0], p.read_window("slide", 0, 0, H, W)[0])
        assert q.objects("slide") == p.objects("slide")


def test_export_writes_a_large_image_chunk_by_chunk_as_zarr_and_refuses_png(slide_project, tmp_path):
    import zarr

    p = slide_project
    win = np.zeros((300, 300), np.uint32)
    win[50:250, 50:250] = 5
    p.commit_window("slide", win, {5: 1}, offset=(100, 100))
    with pytest.raises(InputError, match="large image .*only as zarr or tiled TIFF"):
        io.export_project(p, tmp_path / "out-png", "png")
    assert not (tmp_path / "out-png").exists()
    io.export_project(p, tmp_path / "out", "zarr")
    ids = zarr.open_array(str(tmp_path / "out" / "instances" / "slide.zarr"), mode="r")
    labels = zarr.open_array(str(tmp_path / "out" / "labels" / "slide.zarr"), mode="r")
    assert ids.shape == (H, W) and ids.chunks == (CHUNK, CHUNK)
    np.testing.assert_array_equal(ids[:], p.read_window("slide", 0, 0, H, W)[0])
    assert labels[200, 200] == 1 and labels[110, 110] == 0 and labels[0, 0] == io.UNLABELLED_VALUE
    rows = (tmp_path / "out" / "objects.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("slide,,5,1,cell,40000,")


def test_export_writes_a_large_image_as_tiled_bigtiff_window_by_window(slide_project, tmp_path, monkeypatch):
    p = slide_project
    a = np.zeros((300, 300), np.uint32)
    a[50:250, 50:250] = 5
    p.commit_window("slide", a, {5: 1}, offset=(100, 100))
    p.commit_window("slide", np.full((40, 60), 9, np.uint32), {9: 2}, offset=(H - 40, W - 60))  # the last tile
    p.commit_window("slide", np.full((10, 10), 70000, np.uint32), {70000: 1}, offset=(0, 0))  # beyond 16 bits
    ids, prov, classes = p.read_window("slide", 0, 0, H, W)
    monkeypatch.setattr(io, "SLIDE_TIFF_TILE", 128)
    reads = []
    real = Project.read_window
    monkeypatch.setattr(Project, "read_window", lambda self, image, y0, x0, y1, x1, **kw: reads.append(
        (image, (y1 - y0) * (x1 - x0))) or real(self, image, y0, x0, y1, x1, **kw))
    written = []
    real_write = tifffile.imwrite
    monkeypatch.setattr(tifffile, "imwrite", lambda path, data=None, **kw: written.append((path, data, kw))
                        or real_write(path, data, **kw))
    io.export_project(p, tmp_path / "out", "tiff")
    # never whole: every read of the slide is one tile, and each file's tiles come from a generator
    assert reads and max(n for name, n in reads if name == "slide") == 128 * 128
    slide_files = [(path, data, kw) for path, data, kw in written if "slide" in str(path)]
    assert len(slide_files) == 3 and all(not isinstance(data, np.ndarray) for _, data, _ in slide_files)
    out = tmp_path / "out"
    with tifffile.TiffFile(out / "instances" / "slide.tif") as tf:
        page = tf.pages[0]
        assert tf.is_bigtiff and page.is_tiled and page.tilelength == 128 and page.dtype == np.uint32
        np.testing.assert_array_equal(page.asarray(), ids)
    np.testing.assert_array_equal(tifffile.imread(out / "provenance" / "slide.tif"), prov)
    labels = tifffile.imread(out / "labels" / "slide.tif")
    assert labels.dtype == np.uint8 and labels.shape == (H, W)
    np.testing.assert_array_equal(labels, np.where(prov == 0, io.UNLABELLED_VALUE, inst.semantic(ids, classes)))
    assert labels[200, 200] == 1 and labels[H - 1, W - 1] == 2 and labels[110, 110] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = [e for e in manifest["images"] if e["name"] == "slide"]
    assert entry["instances"] == "instances/slide.tif" and entry["objects"] == 3
    rows = (out / "objects.csv").read_text().splitlines()
    assert any(r.startswith("slide,,5,1,cell,40000,") for r in rows) and len(rows) == 4
    # the small image of the project is exported whole, as always
    assert tifffile.imread(out / "instances" / "small.tif").shape == (40, 50)


def test_training_reads_only_the_labelled_chunks_of_a_large_image(slide_project):
    from napari_hitl.model.train import samples_from_project, slide_samples

    p = slide_project
    p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(300, 520))
    p.commit_window("slide", np.full((4, 4), 6, np.uint32), {6: 1}, offset=(0, 0), source=MACHINE)
    p.commit_instances("small", np.ones((40, 50), np.uint32), {1: 1})
    got = {s.name: s for s in samples_from_project(p)}
    assert set(got) == {"small", "slide@256,512", "slide@0,0"}  # accepted machine labels count as answers
    smp = got["slide@256,512"]
    assert smp.image.shape == (256, 188) and smp.labelled_pixels == 100  # chunk (1, 2): 256 x (700 - 512)
    assert (smp.labels[44:54, 8:18] == 1).all() and (smp.instances[44:54, 8:18] > 0).all()
    assert [s.name for s in slide_samples(p, "slide", limit=1)] == ["slide@256,512"]  # the most labelled first


def test_a_bad_chunk_overview_is_named(slide_project):
    p = slide_project
    p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
    ids, prov, _ = p.read_window("slide", 0, 0, CHUNK, CHUNK)
    path = p.chunk_files("slide")[(0, 0)]
    os.chmod(path, 0o644)
    np.savez(path.with_suffix(""), instances=ids, provenance=prov, overview_instances=ids[::16, ::16].astype(np.int64),
             overview_provenance=prov[::16, ::16])
    q = Project.open(p.root, readonly=True)  # a fresh reader: nothing of the chunk kept yet
    try:
        assert (q.read_window("slide", 0, 0, 20, 20)[0][:10, :10] == 5).all()
        with pytest.raises(CorruptFileError, match="holds int64 object ids"):
            q.read_window("slide", 0, 0, H, W, step=16)
    finally:
        q.close()


def test_a_window_that_only_changes_an_objects_class_saves_it(slide_project):
    """A person re-classes an object without changing a pixel (no chunk is rewritten): the
    class is saved, as a whole-plane commit saves it."""
    p = slide_project
    win = np.zeros((100, 300), np.uint32)
    win[10:90, 10:290] = 5  # crosses chunks (0, 0) and (0, 1)
    p.commit_window("slide", win, {5: 1}, offset=(20, 20))
    ids, _, classes = p.read_window("slide", 20, 20, 120, 320)
    assert classes == {5: 1}
    p.commit_window("slide", ids, {5: 2}, offset=(20, 20))
    assert p.read_window("slide", 20, 20, 120, 320)[2] == {5: 2}
    [row] = p.objects("slide")
    assert row["class"] == 2 and row["area"] == 80 * 280
    # a window over only part of the object re-classes all of it (an id is one object)
    part, _, _ = p.read_window("slide", 20, 20, 60, 100)
    p.commit_window("slide", part, {5: 1}, offset=(20, 20))
    assert p.read_window("slide", 0, 0, H, W)[2] == {5: 1} and p.objects("slide")[0]["area"] == 80 * 280


def test_opening_removes_no_temporary_file_outside_the_project(slide_project, tmp_path):
    """A tampered project whose labels folder holds a link named like a chunk folder: opening
    it for writing cleans up only inside the project."""
    p = slide_project
    root = p.root
    p.close()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / ".keep.tmp"
    victim.write_text("not the project's")
    (root / "labels").mkdir(exist_ok=True)
    (root / "labels" / "i000009-t00000.slide").symlink_to(outside, target_is_directory=True)
    own = root / "labels" / "i000000-t00000.slide"
    own.mkdir(exist_ok=True)
    (own / ".c.npz.1234.tmp").write_text("a killed write")
    with Project.open(root):
        pass
    assert victim.exists()
    assert not (own / ".c.npz.1234.tmp").exists()


def test_the_first_commit_of_a_slide_makes_its_chunk_folder_durable(slide_project, monkeypatch):
    """The chunk folder is made by the first commit: its entry in labels/ is fsynced before the
    index points into it (else a power loss could drop the folder the index names)."""
    p = slide_project
    synced = []
    real = io.fsync_dir
    monkeypatch.setattr(io, "fsync_dir", lambda folder: (synced.append(Path(folder)), real(folder))[1])
    p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
    assert p.root / "labels" in synced


def test_importing_an_export_never_reads_a_large_images_labels_whole(slide_project, tmp_path, monkeypatch):
    """An export of a project with a slide (zarr) imported into it: the slide is refused up
    front, before its whole-image arrays are read and before any image is imported."""
    p = slide_project
    p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
    p.commit_instances("small", np.ones((40, 50), np.uint32), {1: 1})
    io.export_project(p, tmp_path / "out", "zarr")
    read = []
    real = io.read_labels
    monkeypatch.setattr(io, "read_labels", lambda path, *a, **kw: (read.append(Path(path).name), real(path, *a, **kw))[1])
    journal = len(p.journal())
    with pytest.raises(InputError, match="large image"):
        io.import_export(p, tmp_path / "out")
    assert not read and len(p.journal()) == journal


def test_a_slide_with_a_damaged_chunk_can_be_cleared_as_its_error_says(slide_project):
    """A damaged chunk blocks every read and commit over it and the error says to clear the
    image's labels: clear_labels of a slide (whole) is that way out."""
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    files = p.chunk_files("slide")
    _rewrite_chunk(p, (0, 0), np.zeros((CHUNK, CHUNK), np.uint16), np.zeros((CHUNK, CHUNK), np.uint8))
    with pytest.raises(CorruptFileError, match="holds uint16"):
        p.commit_window("slide", np.full((10, 10), 6, np.uint32), {6: 1}, offset=(0, 0))
    files[(0, 1)].write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError, match="Clear this image's labels"):
        p.read_window("slide", 0, 300, 10, 310)
    counts = p.clear_labels("slide")
    assert counts.unlabelled == H * W and counts.human == 0
    assert p.chunk_files("slide") == {} and p.objects("slide") == []
    assert not any(f.exists() for f in files.values())
    ids, prov, classes = p.read_window("slide", 0, 0, H, W)
    assert not ids.any() and not prov.any() and classes == {}
    assert p.reserve_ids("slide") > 5  # ids are never reused
    assert p.journal()[-1]["event"] == "clear"
    p.commit_window("slide", np.full((10, 10), 9, np.uint32), {9: 1}, offset=(0, 0))
    assert p.counts("slide").human == 100
    with pytest.raises(InputError, match="whole"):
        p.clear_labels("slide", where=np.ones((H, W), bool))


def test_two_chunk_entries_on_one_file_are_named_and_nothing_is_lost(slide_project):
    """A tampered index whose ``chunks`` rows point at one file (or at a plane's file): reads and
    commits over them say so, and neither a commit nor a clear deletes a file another entry needs."""
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))  # chunks (0..1, 0..1)
    p.commit_instances("small", np.ones((40, 50), np.uint32), {1: 1})
    files = p.chunk_files("slide")
    small_file = p.label_file("small")
    root = p.root
    p._db.execute("UPDATE chunks SET file = (SELECT file FROM chunks WHERE cy = 0 AND cx = 0) WHERE cy = 0 AND cx = 1")
    p._db.execute("UPDATE chunks SET file = (SELECT file FROM planes WHERE file LIKE '%.npz') WHERE cy = 1 AND cx = 1")
    p.close()
    with pytest.warns(UserWarning, match="2 label files .* set aside"):  # the files of chunks (0, 1) and (1, 1)
        p = Project.open(root)
    try:
        for y, x in ((10, 10), (10, 300), (300, 300)):
            with pytest.raises(CorruptFileError, match="table 'chunks'.*another entry points at too"):
                p.read_window("slide", y, x, y + 5, x + 5)
        with pytest.raises(CorruptFileError, match="another entry"):
            p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(0, 0))
        assert p.read_window("slide", 300, 110, 310, 120)[0].all()  # chunk (1, 0) is its own
        p.clear_labels("slide")  # the way out the error names
        assert files[(0, 0)].exists() and small_file.exists()  # still pointed at (by the small image)
        ids, _, classes = p.read_instances("small")
        assert ids.all() and classes == {1: 1}
        assert not files[(1, 0)].exists()  # the slide's own chunk file went
    finally:
        p.close()


@pytest.mark.parametrize("tamper, message", [
    ("DROP TABLE chunks", "no table 'chunks'"),
    ("DROP TABLE chunk_objects", "no table 'chunk_objects'"),
    ("ALTER TABLE chunks RENAME COLUMN file TO name", "table 'chunks' lacks the column 'file'"),
    ("DROP TABLE slides; DROP TABLE chunks; DROP TABLE chunk_objects", "no table 'slides'.*holds the chunks"),
])
def test_damaged_tables_of_large_images_are_named_on_opening_and_nothing_is_lost(slide_project, tamper, message):
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    files = p.chunk_files("slide")
    root = p.root
    p._db.executescript(tamper)
    p.close()
    for readonly in (True, False):
        with pytest.raises(CorruptFileError, match=message):
            Project.open(root, readonly=readonly)
    assert all(f.exists() for f in files.values())  # no writer took the chunk files for leftovers


def test_malformed_values_in_the_tables_of_large_images_are_named(slide_project):
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    p._db.execute("UPDATE chunk_objects SET area = 'many' WHERE cy = 1 AND cx = 1")
    with pytest.raises(CorruptFileError, match="table 'chunk_objects' has a malformed entry"):
        p.commit_window("slide", np.full((10, 10), 6, np.uint32), {6: 1}, offset=(100, 100))  # object 5 shrinks
    p._db.execute("UPDATE objects SET class = 'cell'")
    with pytest.raises(CorruptFileError, match="table 'chunk_objects' or 'objects' has a malformed entry"):
        p.read_window("slide", 100, 100, 110, 110)
    p._db.execute("UPDATE objects SET class = 1")
    p._db.execute("UPDATE planes SET human = 'all'")
    with pytest.raises(CorruptFileError, match="table 'planes' has a malformed entry"):
        p.commit_window("slide", np.full((10, 10), 5, np.uint32), {5: 1}, offset=(400, 400))


def test_two_entries_naming_one_file_in_different_words_are_shared_too(slide_project):
    """A tampered index may name one label file in two ways ('x.npz' and './x.npz'): it is one
    file, so a commit that replaces one entry's file must not delete what the other points at."""
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    p.commit_instances("small", np.ones((40, 50), np.uint32), {1: 1})
    small_file = p.label_file("small")
    root = p.root
    p._db.execute("UPDATE chunks SET file = './' || (SELECT file FROM planes WHERE file LIKE '%.npz') "
                  "WHERE cy = 1 AND cx = 1")
    p.close()
    with pytest.warns(UserWarning, match="1 label file .* set aside"):  # chunk (1, 1)'s own file
        p = Project.open(root)
    try:
        p.commit_instances("small", np.full((40, 50), 2, np.uint32), {2: 1})  # replaces the small image's file
        assert small_file.exists()  # the chunk entry still points at it: kept
        with pytest.raises(CorruptFileError, match="another entry points at too"):
            p.read_window("slide", 300, 300, 305, 305)
        p.clear_labels("slide")  # drops the chunk entry that named it './...'
        assert small_file.exists()  # (opening sets it aside once no entry points at it)
    finally:
        p.close()


def test_a_project_made_before_the_tables_of_large_images_keeps_a_shared_plane_file(tmp_path):
    """Two planes pointing at one label file (a tampered index) in a project made before the
    tables of large images: the writer that adds the tables must not delete that file when it
    replaces one plane's labels (the other plane still needs it)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(folder / f"{name}.tif", np.zeros((20, 30), np.uint8))
    p = Project.create(tmp_path / "proj", folder, classes=["background", "cell"])
    p.commit_instances("a", np.ones((20, 30), np.uint32), {1: 1})
    p.commit_instances("b", np.ones((20, 30), np.uint32), {1: 1})
    shared = p.label_file("a")
    p._db.executescript("DROP TABLE slides; DROP TABLE chunks; DROP TABLE chunk_objects")  # as made before them
    p._db.execute("UPDATE planes SET file = ? WHERE image = (SELECT max(image) FROM planes)",
                  (shared.name,))
    root = p.root
    p.close()
    with pytest.warns(UserWarning, match="1 label file .* set aside"):  # b's own file
        p = Project.open(root)
    try:
        assert p.read_instances("b")[0].all()
        p.commit_instances("a", np.zeros((20, 30), np.uint32), {})  # replaces a's file
        assert shared.exists()
        ids, _, classes = p.read_instances("b")
        assert ids.all() and classes == {1: 1}
    finally:
        p.close()


def test_chunk_files_the_index_no_longer_names_are_set_aside_not_deleted(slide_project):
    """Rows of 'chunks' gone (a damaged table, a person's edit): opening for writing must not take
    the chunk files that hold a person's labels for a crash's leftovers and delete them."""
    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    files = p.chunk_files("slide")
    payload = {f.name: f.read_bytes() for f in files.values()}
    root = p.root
    p._db.execute("DELETE FROM chunks")
    p.close()
    with pytest.warns(UserWarning, match=f"{len(files)} label files .* set aside in .*orphaned-labels"):
        with Project.open(root) as q:
            entry = q.journal()[-1]
            assert entry["event"] == "recovered" and entry["set_aside"] == len(files)
    kept = {f.name: f.read_bytes() for f in (root / entry["folder"]).rglob("*.npz")}
    assert kept == payload  # every byte of the person's labels is still on disk
    assert not list((root / "labels").rglob("*.npz"))


def test_tiff_export_reads_each_chunk_for_all_three_files_at_once(slide_project, tmp_path, monkeypatch):
    """A slide wider than the chunk cache holds (here: one chunk): the export decodes each stored
    chunk at most twice (once per row of tiles it spans), not twice per file; its files are
    byte for byte what one tifffile.imwrite per file over the whole arrays writes."""
    p = slide_project
    a = np.zeros((400, 500), np.uint32)
    a[50:350, 50:450] = 5
    a[300:390, 100:200] = 6
    p.commit_window("slide", a, {5: 1, 6: 2}, offset=(100, 100))
    ids, prov, classes = p.read_window("slide", 0, 0, H, W)
    labels = np.where(prov == 0, io.UNLABELLED_VALUE, inst.semantic(ids, classes)).astype(np.uint8)
    monkeypatch.setattr(io, "SLIDE_TIFF_TILE", 128)  # two rows of tiles per chunk of 256
    monkeypatch.setattr(p, "COARSE_CACHE_BYTES", CHUNK * CHUNK * 5)  # one chunk's ids and provenance
    p._sampled.clear()
    p._sampled_bytes = 0
    decodes = {}
    real = Project._read_file
    monkeypatch.setattr(Project, "_read_file", lambda self, rec, rel, *a, **kw: decodes.__setitem__(
        rel, decodes.get(rel, 0) + 1) or real(self, rec, rel, *a, **kw))
    io.export_project(p, tmp_path / "out", "tiff")
    stored = {str(f.relative_to(p.root / "labels")) for f in p.chunk_files("slide").values()}
    slide_decodes = {rel: n for rel, n in decodes.items() if rel in stored}
    assert set(slide_decodes) == stored and max(slide_decodes.values()) <= 2, slide_decodes
    for kind, whole in (("labels", labels), ("instances", ids), ("provenance", prov)):
        tifffile.imwrite(tmp_path / f"{kind}.tif", whole, tile=(128, 128), bigtiff=True, compression="zlib")
        assert (tmp_path / "out" / kind / "slide.tif").read_bytes() == (tmp_path / f"{kind}.tif").read_bytes(), kind


@pytest.mark.parametrize("where", ["reading", "writing"])
def test_a_tiff_export_that_fails_midway_says_so_and_leaves_no_writer_behind(slide_project, tmp_path, monkeypatch,
                                                                           where):
    import threading

    from napari_hitl.errors import ExportError

    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    monkeypatch.setattr(io, "SLIDE_TIFF_TILE", 128)
    before = threading.active_count()
    if where == "reading":  # a damaged chunk file
        path = p.chunk_files("slide")[(1, 1)]
        os.chmod(path, 0o644)
        path.write_bytes(b"not a chunk")
        error, message = CorruptFileError, "c00001-00001"
    else:  # the disk fills while the instances are written
        real = tifffile.imwrite

        def full(path, data=None, **kw):
            if "instances" in str(path) and "slide" in str(path):
                next(data)
                raise OSError(28, "No space left on device")
            return real(path, data, **kw)

        monkeypatch.setattr(tifffile, "imwrite", full)
        error, message = ExportError, "No space left"
    with pytest.raises(error, match=message):
        io.export_project(p, tmp_path / "out", "tiff")
    assert threading.active_count() == before and not (tmp_path / "out").exists()


def test_a_crash_after_a_clear_went_through_removes_its_chunks_without_an_orphan_warning(slide_project, monkeypatch):
    """Clearing a slide writes no new label file: its note names only the chunk files it replaces.
    A crash after its transaction, before the note is marked done, leaves those files unnamed by
    the index; reopening must see that the clear went through (every file it replaces is
    unreferenced) and delete them quietly, not set them aside warning of a damaged index."""
    import warnings

    p = slide_project
    p.commit_window("slide", np.full((300, 300), 5, np.uint32), {5: 1}, offset=(100, 100))
    files = list(p.chunk_files("slide").values())
    assert files and all(f.exists() for f in files)

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(Project, "_retire", crash)
    with pytest.raises(KeyboardInterrupt):
        p.clear_labels("slide")
    monkeypatch.undo()
    assert list((p.root / "labels").glob(".commit-*.json")) and all(f.exists() for f in files)
    root = p.root
    p.close()
    monkeypatch.setattr(io, "LAZY_PIXELS", 100 * 100)
    monkeypatch.setattr(store, "SLIDE_CHUNK", CHUNK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "orphaned labels" warning
        with Project.open(root) as q:
            assert not q.chunk_files("slide") and not (_full(q)[0]).any()
            assert not any(f.exists() for f in files)
            assert not (root / store.ORPHANS_DIR).exists()
            assert not list((root / "labels").glob(".commit-*"))
