"""The model's objects in one image, least certain first, and the person's one-click answers.

:func:`propose_objects` predicts an image with the instance head, decodes its objects (a
seeded watershed, :mod:`napari_hitl.model.instances`) and scores each (class confidence
times boundary certainty, :mod:`napari_hitl.active.objects`). :func:`accept_object` saves an
object whole as an accepted machine label (a new id; a person's pixels keep theirs);
:func:`reject_object` says "no object here": its pixels become the person's background,
except where the person already labelled. Both are journalled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_hitl import instances as inst
from napari_hitl.errors import InputError
from napari_hitl.project import KEPT


@dataclass
class Proposal:
    """One object the model proposes: its id in the proposal map, class, confidence, size and box."""

    id: int
    cls: int
    confidence: float
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]


@dataclass
class Proposals:
    """The proposed objects of one image (or frame), least certain first."""

    name: str
    frame: int | None
    instances: np.ndarray
    items: list[Proposal] = field(default_factory=list)

    def get(self, oid: int) -> Proposal:
        for p in self.items:
            if p.id == oid:
                return p
        raise InputError(f"the model proposed no object {oid} in {self.name!r} (or it was answered)")

    def remove(self, oid: int) -> None:
        self.items = [p for p in self.items if p.id != oid]
        self.instances = np.where(self.instances == oid, np.uint32(0), self.instances)


def propose_objects(host, name: str, frame: int | None = None) -> Proposals:
    """Predict image ``name`` (a frame of a time-lapse) and return its objects, least certain first."""
    from napari_hitl.active.objects import object_confidence
    from napari_hitl.model.instances import instances_from_maps
    from napari_hitl.model.segnet import predict_instance_maps

    project = host.project
    rec = project.record(name)
    if rec.is_stack and frame is None:
        raise InputError(f"{name!r} is a time-lapse: give a frame")
    model = host.get().model
    image = project.read_image(name, frame) if rec.is_stack else project.read_image(name)
    probs, boundary, distance = predict_instance_maps(model, image)
    stuff = project.stuff_classes
    ids, classes = instances_from_maps(probs, boundary, distance, stuff=stuff)
    conf = object_confidence(ids, probs.max(0), boundary)
    items = [Proposal(o.id, o.cls, float(conf[o.id]), o.area, o.bbox, o.centroid) for o in inst.objects(ids, classes)]
    items.sort(key=lambda p: p.confidence)
    return Proposals(name, frame if rec.is_stack else None, ids, items)


def accept_object(session, proposals: Proposals, oid: int):
    """Save proposed object ``oid`` whole as an accepted machine label; returns the new counts."""
    p = proposals.get(oid)
    mask = proposals.instances == oid
    counts = session.commit_instances(proposals.name, np.where(mask, np.uint32(1), np.uint32(0)), {1: p.cls},
                                      source="machine", where=mask, frame=proposals.frame, event="accept_object",
                                      confidence=round(p.confidence, 4), area=p.area)
    proposals.remove(oid)
    return counts


def reject_object(session, proposals: Proposals, oid: int):
    """Proposed object ``oid`` is not an object: its pixels become the person's background
    (where no person labelled yet); returns the new counts."""
    p = proposals.get(oid)
    _, prov, _ = session.read_instances(proposals.name, frame=proposals.frame)
    where = (proposals.instances == oid) & ~np.isin(prov, KEPT)
    counts = session.commit_instances(proposals.name, np.zeros(where.shape, np.uint32), {}, source="human",
                                      where=where, frame=proposals.frame, event="reject_object",
                                      confidence=round(p.confidence, 4), area=p.area)
    proposals.remove(oid)
    return counts
