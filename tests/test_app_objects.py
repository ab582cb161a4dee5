"""The model's object proposals in one image and the one-click answers to them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_hitl.app.objects import Proposal, Proposals, accept_object, propose_objects, reject_object
from napari_hitl.app.session import Session
from napari_hitl.errors import InputError
from napari_hitl.project import HUMAN, MACHINE, Project


@pytest.fixture
def session(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(imgs / "a.png")
    with Session(Project.create(tmp_path / "p", imgs, classes=["background", "cell"])) as s:
        yield s


def _proposals() -> Proposals:
    ids = np.zeros((40, 48), np.uint32)
    ids[5:15, 5:15] = 1
    ids[20:30, 20:30] = 2
    items = [Proposal(2, 1, 0.4, 100, (20, 20, 30, 30), (24.5, 24.5)),
             Proposal(1, 1, 0.9, 100, (5, 5, 15, 15), (9.5, 9.5))]
    return Proposals("a", None, ids, items)


def test_accept_saves_the_object_whole_and_reject_saves_background(session):
    person = np.zeros((40, 48), np.uint32)
    person[25:30, 25:30] = 7  # the person already labelled part of where object 2 is proposed
    session.commit_instances("a", person, {7: 1}, where=person > 0)
    props = _proposals()
    accept_object(session, props, 1)
    ids, prov, classes = session.read_instances("a")
    new = int(ids[10, 10])
    assert new not in (0, 7) and classes[new] == 1 and (ids[5:15, 5:15] == new).all()
    assert (prov[5:15, 5:15] == MACHINE).all() and [p.id for p in props.items] == [2]
    reject_object(session, props, 2)
    ids, prov, _ = session.read_instances("a")
    assert (ids[20:25, 20:30] == 0).all() and (prov[20:25, 20:30] == HUMAN).all()
    assert (ids[25:30, 25:30] == 7).all()  # the person's object is untouched
    events = [e["event"] for e in session.project.journal()]
    assert events[-2:] == ["accept_object", "reject_object"] and props.items == []
    with pytest.raises(InputError, match="no object 2"):
        reject_object(session, props, 2)


def test_proposals_come_least_certain_first(session):
    props = propose_objects(session.model, "a")
    assert props.instances.shape == (40, 48) and props.instances.dtype == np.uint32
    conf = [p.confidence for p in props.items]
    assert conf == sorted(conf) and all(0.0 <= c <= 1.0 for c in conf)
    assert {p.id for p in props.items} == set(np.unique(props.instances[props.instances > 0]).tolist())


def test_edits_leave_no_remnant_and_undo_only_what_is_still_theirs(session):
    saved = np.zeros((40, 48), np.uint32)
    saved[5:15, 5:15] = 2
    saved[20:30, 20:30] = 3
    session.commit_instances("a", saved, {2: 1, 3: 1})
    shown = saved.copy()
    shown[5:8, 5:15] = 0  # the person erased part of object 2 in the dock, unsaved
    new, classes = session.edit_objects("a", shown, {2: 1, 3: 1}, "delete", [2])
    ids, _, stored = session.read_instances("a")
    assert not (ids == 2).any() and stored == {3: 1}  # no saved remnant of object 2
    done = session.undo_edit()
    ids, _, stored = session.read_instances("a")
    assert done is not None and (ids[5:15, 5:15] == 2).all() and stored == {2: 1, 3: 1}
    # an edit saved over by a later commit cannot be undone (the later work would be lost)
    session.edit_objects("a", ids, stored, "delete", [3])
    later = np.zeros((40, 48), np.uint32)
    later[0:3, 0:3] = session.reserve_id("a")
    session.commit_instances("a", later, {int(later[0, 0]): 1}, where=later > 0)
    with pytest.raises(InputError, match="saved again"):
        session.undo_edit()
    assert int(later[0, 0]) not in (2, 3)  # ids are never handed out twice


def test_pseudo_labels_go_object_by_object(session):
    from napari_hitl.active.uncertainty import Prediction
    from napari_hitl.app.pseudo import commit_pseudo_objects
    from napari_hitl.project import PSEUDO

    person = np.zeros((40, 48), np.uint32)
    person[35:40, 0:5] = session.reserve_id("a")
    session.commit_instances("a", person, {int(person[36, 1]): 1}, where=person > 0)
    probs = np.zeros((2, 40, 48), np.float32)
    probs[0] = 0.99
    ids = np.zeros((40, 48), np.uint32)
    ids[5:15, 5:15], ids[20:30, 20:30] = 1, 2
    probs[1][ids > 0], probs[0][ids > 0] = 0.97, 0.03
    probs[1][ids == 2], probs[0][ids == 2] = 0.6, 0.4  # object 2 is unsure
    pred = Prediction.from_probs(probs)
    pred.instances, pred.classes = ids, {1: 1, 2: 1}
    pred.object_conf = np.array([1.0, 0.97, 0.6], np.float32)
    where, _ = commit_pseudo_objects(session.project, "a", pred, delta=0.9)
    saved, prov, classes = session.read_instances("a")
    assert (prov[5:15, 5:15] == PSEUDO).all() and len(set(saved[5:15, 5:15].ravel().tolist())) == 1
    assert not saved[20:30, 20:30].any() and not (prov[19:31, 19:31] == PSEUDO).any()  # unsure: nothing near it
    assert (prov[0:3, 40:48] == PSEUDO).all()  # confident background far from unsure objects
    assert (saved[35:40, 0:5] == person[35:40, 0:5]).all()  # the person's object is kept


def test_the_project_s_objects_train_the_instance_head(session):
    from napari_hitl.model.train import samples_from_project

    session.project.add_class("sky", kind="stuff")
    ids = np.zeros((40, 48), np.uint32)
    ids[5:15, 5:15], ids[5:15, 15:25], ids[30:, :] = 4, 5, 9  # two touching cells and a sky area
    session.commit_instances("a", ids, {4: 1, 5: 1, 9: 2})
    (smp,) = samples_from_project(session.project)
    assert (smp.labels[30:] == 2).all() and (smp.labels[5:15, 5:25] == 1).all()
    assert set(np.unique(smp.instances).tolist()) == {0, 4, 5}  # the sky is no object
