"""Regions on a large image through the session: what a region may take (``claim``), saving it
(``commit_region``: a new object, or a correction of a saved one) and the saved pixels a
correction starts from (``object_seed``). The threshold and chunk side are lowered so that a
small generated TIFF counts as large."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.app import session as app_session
from napari_hitl.app.session import Session
from napari_hitl.errors import InputError
from napari_hitl.interactive.engine import Window
from napari_hitl.project import HUMAN, Project

from test_store_slides import CHUNK, H, W, make_slide


@pytest.fixture
def slide_session(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_PIXELS", 100 * 100)
    monkeypatch.setattr(store, "SLIDE_CHUNK", CHUNK)
    p = Project.create(tmp_path / "proj", make_slide(tmp_path / "imgs"), classes=["background", "cell", "nucleus"])
    s = Session(p)
    yield s
    s.close()


def _square(y0, x0, y1, x1, oid=5):
    ids = np.zeros((y1 - y0, x1 - x0), np.uint32)
    ids[:] = oid
    return ids


def test_a_new_region_takes_unlabelled_and_machine_pixels_never_a_persons_object(slide_session):
    s, p = slide_session, slide_session.project
    p.commit_window("slide", _square(200, 200, 300, 300, 5), {5: 1}, offset=(200, 200))  # a person's
    p.commit_window("slide", _square(200, 320, 300, 420, 1), {1: 1}, offset=(200, 320), source="machine")
    before = p.read_window("slide", 0, 0, H, W)[0]
    machine_id = int(before[250, 350])
    oid = s.reserve_id("slide")
    mask = Window(np.ones((200, 300), bool), 150, 150)  # over both objects and around them
    claimed = s.claim("slide", oid, mask)
    assert claimed.box == mask.box
    sub = before[150:350, 150:450]
    np.testing.assert_array_equal(claimed.data, sub != 5)  # the person's object stays, the machine's goes
    counts = s.commit_region("slide", oid, 2, mask)
    ids, prov, classes = p.read_window("slide", 0, 0, H, W)
    assert (ids[200:300, 200:300] == 5).all() and (prov[200:300, 200:300] == HUMAN).all()
    assert (ids[150:350, 150:450][sub != 5] == oid).all() and classes[oid] == 2
    assert machine_id not in classes and not any(o["id"] == machine_id for o in p.objects("slide"))
    (five,) = [o for o in p.objects("slide") if o["id"] == 5]
    assert five["area"] == 100 * 100
    assert counts.human == 200 * 300 and counts.machine == 0
    assert p.journal()[-1]["id"] == oid


def test_a_correction_replaces_the_saved_object_inside_its_window(slide_session):
    s, p = slide_session, slide_session.project
    p.commit_window("slide", _square(100, 100, 400, 600, 5), {5: 1}, offset=(100, 100))  # across chunks
    p.commit_window("slide", _square(420, 100, 480, 200, 6), {6: 2}, offset=(420, 100))  # a neighbour
    assert s.saved_object_at("slide", 150, 150) == (5, 1) and s.saved_object_at("slide", 10, 10) == (0, 0)
    seed = s.object_seed("slide", 5, (300, 300))
    assert seed.box == (100, 100, 400, 600) and seed.data.all()
    # the corrected object: shrunk at the top, grown downwards into unlabelled pixels and the neighbour
    new = np.zeros((400, 500), bool)
    new[100:370, :] = True  # image rows 200..470 of columns 100..600
    win = Window(new, 100, 100)
    s.commit_region("slide", 5, 1, win)
    ids, prov, classes = p.read_window("slide", 0, 0, H, W)
    assert (ids[100:200, 100:600] == 0).all() and (prov[100:200, 100:600] == HUMAN).all()  # a person said: not it
    assert (ids[200:420, 100:600] == 5).all()
    assert (ids[420:480, 100:200] == 6).all()  # the neighbour kept its pixels
    assert (ids[420:470, 200:600] == 5).all()
    (five,) = [o for o in p.objects("slide") if o["id"] == 5]
    assert five["area"] == int((ids == 5).sum()) and five["y0"] == 200 and classes[5] == 1
    # a correction that removes the whole object inside its window deletes it
    s.commit_region("slide", 5, 1, Window(np.zeros((H, W), bool), 0, 0))
    assert [o["id"] for o in p.objects("slide")] == [6]
    # nothing to change: nothing saved
    assert s.commit_region("slide", 5, 1, Window(np.zeros((10, 10), bool), 0, 0)) is None


def test_a_correction_of_a_large_object_starts_from_a_window_around_the_prompt(slide_session, monkeypatch):
    s, p = slide_session, slide_session.project
    monkeypatch.setattr(app_session, "SEED_SIDE", 100)
    p.commit_window("slide", _square(0, 0, H, W, 5), {5: 1}, offset=(0, 0))
    reads = []
    real = Project.read_window
    monkeypatch.setattr(Project, "read_window",
                        lambda self, image, y0, x0, y1, x1, **kw: reads.append((y1 - y0) * (x1 - x0))
                        or real(self, image, y0, x0, y1, x1, **kw))
    seed = s.object_seed("slide", 5, (300, 350))
    assert seed.box == (250, 300, 350, 400) and seed.data.all() and max(reads) == 100 * 100
    seed = s.object_seed("slide", 5, (5, 695))  # at the image's corner: clipped to it
    assert seed.box == (0, 645, 55, 700)
    with pytest.raises(InputError, match="no saved object 77"):
        s.object_seed("slide", 77, (5, 5))
    assert p.object("slide", 5)["area"] == H * W and p.object("slide", 77) is None


def test_a_correction_prompted_far_from_the_object_starts_from_its_box_on_every_side(slide_session, monkeypatch):
    """A prompt far from the object it corrects (the object picked as the selected label): the
    seed is the object's box from its corner, whether the prompt lies below, right, above or
    left of it (never a one-pixel strip of it)."""
    s, p = slide_session, slide_session.project
    monkeypatch.setattr(app_session, "SEED_SIDE", 100)
    p.commit_window("slide", _square(300, 300, 400, 400, 5), {5: 1}, offset=(300, 300))
    for near in ((550, 350), (350, 650), (50, 350), (350, 50), (50, 50)):
        seed = s.object_seed("slide", 5, near)
        assert seed.box == (300, 300, 400, 400) and seed.data.all(), (near, seed.box)
