"""The simulated person of the learning loop: answers from ground truth, counting clicks.

Every answer carries its cost in clicks: polygon clicks for a whole image (or click-robot
clicks correcting the prediction, object by object, when that is cheaper), one click for a
superpixel whose class is right (accept) or holds one class, polygon clicks inside a mixed
superpixel (or one click for any superpixel, its main class, as the panel answers). With
true instance maps, a whole image is answered object by object (:meth:`label_instances`):
each object traced, or the predicted objects corrected with the click robot when cheaper.
"""

from __future__ import annotations

import numpy as np

from napari_hitl.active.loop import Answer
from napari_hitl.active.superpixels import class_votes
from napari_hitl.errors import InputError
from napari_hitl.project import HUMAN, MACHINE
from napari_hitl.simulate.cost import image_clicks, sample_clicks

__all__ = ["SimulatedAnnotator"]


class SimulatedAnnotator:
    """Answers from ground-truth label maps, counting clicks like a careful person would.

    Whole image: the true labels, polygon cost, or (with an interactive ``engine``, two classes)
    the model's prediction corrected object by object with the click robot when cheaper.
    Superpixel: if at least ``purity`` of its (non-ignored) true pixels share one class, one
    click (accept when that is the predicted class, else pick the class) labels the whole
    superpixel with it; otherwise the person names the main class (one click) and traces the
    other classes inside as polygons. ``purity=0`` is what the napari panel offers: every
    superpixel gets its main class in one click ("dominant labelling"; the minority pixels
    inside become wrong labels, which the label mIoU counts). A whole image superpixel by
    superpixel: :meth:`answer_superpixels`.
    """

    def __init__(self, truths: list[np.ndarray], ignore_index: int | None = None, purity: float = 0.95,
                 engine=None, target: float = 0.9, instance_truths: list[np.ndarray] | None = None):
        self.truths = [np.asarray(t) for t in truths]
        if instance_truths is not None and len(instance_truths) != len(self.truths):
            raise InputError(f"{len(instance_truths)} instance maps for {len(self.truths)} label maps")
        self.instance_truths = None if instance_truths is None else [np.asarray(t) for t in instance_truths]
        self.ignore_index = ignore_index
        self.purity = float(purity)
        self.engine = engine
        self.target = float(target)
        self.corrections: list[dict] = []  # per corrected image: clicks and how its objects went

    def _valid(self, t: np.ndarray) -> np.ndarray:
        return np.ones(t.shape, bool) if self.ignore_index is None else t != self.ignore_index

    def label_image(self, index, image, pred) -> Answer:
        """The true labels at polygon cost; with an ``engine``, a two-class image whose prediction
        is given is corrected object by object instead when that costs fewer clicks
        (:func:`~napari_hitl.simulate.corrections.correct_objects`), and the corrected mask is
        the answer."""
        t = self.truths[index]
        valid = self._valid(t)
        polygons = image_clicks(t, ignore_index=self.ignore_index)
        if pred is not None and np.asarray(pred).shape != t.shape:
            raise InputError(f"prediction {np.asarray(pred).shape} and labels {t.shape} of image {index} differ "
                             "in shape")
        if self.engine is not None and pred is not None and t[valid].max(initial=0) <= 1:
            from napari_hitl.simulate.corrections import correct_objects

            fix = correct_objects(image, np.asarray(pred) == 1, (t == 1) & valid, self.engine, self.target,
                                  ignore=~valid)
            used = fix.clicks < polygons
            self.corrections.append({"image": int(index), "clicks": fix.clicks, "polygon_clicks": polygons,
                                     "used": bool(used), "erased": fix.erased, "cut": fix.cut,
                                     "kept": fix.kept, "clicked": fix.clicked, "drawn": fix.drawn})
            if used:
                return Answer(fix.mask.astype(t.dtype), valid, HUMAN, fix.clicks)
        return Answer(t.copy(), valid, HUMAN, polygons)

    def label_instances(self, index, image, pred_instances) -> Answer:
        """The true objects at polygon cost (each object traced, one more click names it); with an
        ``engine`` and a predicted instance map, the prediction corrected object by object
        (:func:`~napari_hitl.simulate.corrections.correct_instances`) when that costs fewer clicks."""
        from napari_hitl.model.instances import check_instances

        if self.instance_truths is None:
            raise InputError("label_instances needs true instance maps (SimulatedAnnotator(instance_truths=...))")
        t = self.truths[index]
        valid = self._valid(t)
        inst = check_instances(self.instance_truths[index], t.shape, f"true instance map of image {index}")
        polygons = image_clicks(np.where(valid, inst, 0))
        answer = inst.copy()
        clicks = polygons
        if self.engine is not None and pred_instances is not None:
            from napari_hitl.simulate.corrections import correct_instances

            pred = check_instances(pred_instances, t.shape, f"predicted instance map of image {index}")
            fix = correct_instances(image, pred, np.where(valid, inst, 0), self.engine, self.target, ignore=~valid)
            used = fix.clicks < polygons
            self.corrections.append({"image": int(index), "clicks": fix.clicks, "polygon_clicks": polygons,
                                     "used": bool(used), "kept": fix.kept, "clicked": fix.clicked,
                                     "drawn": fix.drawn, "added": fix.added, "deleted": fix.deleted})
            if used:
                answer, clicks = fix.instances, fix.clicks
        # each answered object takes the true class under most of it (objects are of one class)
        n = int(answer.max(initial=0))
        flat = answer.ravel()
        cls = np.zeros(n + 1, np.int64)
        if n:
            sem = np.where(valid, t, 0).astype(np.int64).ravel()
            votes = np.zeros((n + 1, int(sem.max(initial=0)) + 2), np.int64)
            np.add.at(votes, (flat, sem), 1)
            votes[:, 0] = 0
            cls = np.where(votes.max(1) > 0, votes.argmax(1), 1)
            cls[0] = 0
        labels = cls[answer]  # pixels of no object are background (stuff classes are not simulated here)
        return Answer(labels.astype(t.dtype), valid, HUMAN, int(clicks), instances=answer.astype(np.uint32))

    def label_superpixel(self, index, image, mask, predicted_class) -> Answer:
        t = self.truths[index]
        inside = mask & self._valid(t)
        if not inside.any():  # nothing scoreable: accepting costs one click and changes nothing
            return Answer(np.zeros_like(t), np.zeros(t.shape, bool), HUMAN, 1)
        counts = np.bincount(t[inside].astype(np.int64))
        main = int(counts.argmax())
        if counts[main] >= self.purity * inside.sum():
            labels = np.full_like(t, main)
            prov = MACHINE if main == int(predicted_class) else HUMAN
            return Answer(labels, mask.copy(), prov, 1)
        return Answer(t.copy(), inside, HUMAN, sample_clicks(t, mask, ignore_index=self.ignore_index))

    def answer_superpixels(self, index, image, segments, predicted, accept_rest: bool = False) -> list[Answer]:
        """A whole image superpixel by superpixel, each answered as :meth:`label_superpixel` does.

        ``predicted``: each superpixel's predicted class. ``accept_rest``: the superpixels whose
        predicted class is right are accepted together with one click (the panel's "Accept
        all"), so only the wrong and the mixed ones cost clicks; otherwise every superpixel
        costs its own click. Returns the accepted (MACHINE) and the drawn (HUMAN) answers.
        """
        t = self.truths[index]
        seg = np.asarray(segments)
        if seg.shape != t.shape:
            raise InputError(f"superpixels {seg.shape} and labels {t.shape} of image {index} differ in shape")
        valid = self._valid(t)
        predicted = np.asarray(predicted, np.int64)
        votes = class_votes(seg, t, int(t[valid].max(initial=0)) + 1, where=valid)
        n = votes.sum(1)
        main = votes.argmax(1)
        pure = (n > 0) & (votes.max(1) >= self.purity * n)
        right = pure & (main == predicted)
        wrong = pure & ~right
        mixed = (n > 0) & ~pure
        labels = main[seg].astype(t.dtype)
        clicks = int(wrong.sum())
        for j in np.flatnonzero(mixed):  # traced inside (never with purity 0)
            m = seg == j
            labels[m] = t[m]
            clicks += sample_clicks(t, m, ignore_index=self.ignore_index)
        area = np.bincount(seg.ravel(), minlength=len(n)) > 0
        if accept_rest:
            accept_clicks = int(right.any())
        else:  # one click each, also for superpixels with nothing to score (void only)
            accept_clicks = int(right.sum())
            clicks += int((area & (n == 0)).sum())
        drawn = wrong[seg] | (mixed[seg] & valid)  # a one-click answer labels the whole superpixel
        return [Answer(labels, right[seg], MACHINE, accept_clicks), Answer(labels, drawn, HUMAN, clicks)]
