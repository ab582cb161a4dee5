"""The headless loop driver on a small synthetic set: labels and clicks accumulate, mIoU improves."""

import numpy as np
import pytest

from napari_hitl.active.loop import LoopDriver, LoopSettings
from napari_hitl.errors import InputError
from napari_hitl.model.train import TrainSettings
from napari_hitl.project import HUMAN, MACHINE
from napari_hitl.simulate.annotator import SimulatedAnnotator

torch = pytest.importorskip("torch")


def _set(n=8, size=64, seed=0):
    rng = np.random.default_rng(seed)
    images, truths = [], []
    for _ in range(n):
        yy, xx = np.mgrid[:size, :size]
        gt = np.zeros((size, size), np.uint16)
        for _ in range(2):
            cy, cx = rng.integers(12, size - 12, 2)
            gt[np.hypot(yy - cy, xx - cx) < rng.integers(6, 11)] = 1
        img = np.clip(50 + 140 * gt + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
        images.append(img)
        truths.append(gt)
    return images, truths


def _miou(labels, truths):
    from napari_hitl.evaluate.metrics import mean_iou

    return mean_iou(np.concatenate([x.ravel() for x in labels]), np.concatenate([x.ravel() for x in truths]), 2)


@pytest.mark.slow  # the quick run still drives LoopDriver rounds in the image-answer tests below
@pytest.mark.parametrize("strategy", ["consistency", "coverage", "superpixel"])
def test_loop_driver_improves_miou_over_two_rounds(strategy):
    torch.manual_seed(0)
    images, truths = _set()
    settings = LoopSettings(strategy=strategy, rounds=2, budget=1, superpixels_per_image=12, n_segments=40,
                            train=TrainSettings(steps=15, batch_size=2, crop=64, lr=3e-3, checkpoint_every=0))
    driver = LoopDriver(images, SimulatedAnnotator(truths), 2, settings,
                        evaluate=lambda d: {"miou": _miou(d.final_labels(), truths)})
    records = driver.run()
    assert len(records) == 2
    assert 0 < records[0].clicks < records[1].clicks
    assert records[1].labelled_fraction > records[0].labelled_fraction
    assert records[1].metrics["miou"] > records[0].metrics["miou"]
    # people's answers are kept exactly where they were given
    for lab, prov, gt in zip(driver.labels, driver.provenance, truths):
        human = prov == HUMAN
        assert np.array_equal(lab[human], gt[human])
        assert np.all(np.isin(prov, [0, 1, 2, 3]))
    if strategy == "superpixel":
        assert records[0].superpixels_asked == 12 and records[0].images_asked == 0
        assert any(np.any(p == MACHINE) or np.any(p == HUMAN) for p in driver.provenance)
    else:
        assert records[0].images_asked == 1 and len(driver.asked_images) == 2


def test_simulated_annotator_costs():
    gt = np.zeros((20, 20), np.uint16)
    gt[5:15, 5:15] = 1
    ann = SimulatedAnnotator([gt])
    pure = np.zeros((20, 20), bool)
    pure[0:4, 0:4] = True
    ans = ann.label_superpixel(0, None, pure, predicted_class=0)
    assert ans.clicks == 1 and ans.provenance == MACHINE and np.all(ans.labels[pure] == 0)
    ans = ann.label_superpixel(0, None, pure, predicted_class=1)
    assert ans.clicks == 1 and ans.provenance == HUMAN  # the class had to be changed
    mixed = np.zeros((20, 20), bool)
    mixed[0:10, 0:10] = True  # a quarter of it is object
    ans = ann.label_superpixel(0, None, mixed, predicted_class=0)
    assert ans.clicks > 1 and ans.provenance == HUMAN and np.array_equal(ans.labels[mixed], gt[mixed])
    # the panel's one-click answer (purity 0): the main class for all of it, right or not
    dominant = SimulatedAnnotator([gt], purity=0.0).label_superpixel(0, None, mixed, predicted_class=0)
    assert dominant.clicks == 1 and dominant.provenance == MACHINE and np.all(dominant.labels[mixed] == 0)
    whole = ann.label_image(0, None, None)
    assert whole.clicks >= 4 and np.array_equal(whole.labels, gt)
    with pytest.raises(InputError, match="strategy"):
        LoopSettings(strategy="telepathy")
    with pytest.raises(InputError, match="coverage picks are diverse"):
        LoopSettings(strategy="coverage", diversity=True)


def test_image_answered_superpixel_by_superpixel():
    """image_answer="superpixels": a picked image costs one click per superpixel and each
    superpixel holds its main true class (the panel's one-click answer, purity 0)."""
    torch.manual_seed(0)
    images, truths = _set(n=4)
    settings = LoopSettings(strategy="random", rounds=1, budget=1, n_segments=30, image_answer="superpixels",
                            train=TrainSettings(steps=2, batch_size=2, crop=64, checkpoint_every=0))
    driver = LoopDriver(images, SimulatedAnnotator(truths, purity=0.0), 2, settings)
    rec = driver.run()[0]
    (i,) = driver.asked_images
    seg = driver.segments(i)
    ids = np.unique(seg)
    assert rec.clicks == rec.superpixels_asked == len(ids) and rec.images_asked == 1
    assert np.all((driver.provenance[i] == HUMAN) | (driver.provenance[i] == MACHINE))
    for j in ids:
        inside = seg == j
        assert np.all(driver.labels[i][inside] == np.bincount(truths[i][inside]).argmax())
    with pytest.raises(InputError, match="image answer"):
        LoopSettings(image_answer="telepathy")


def _quadrants():
    """Truth 8x8 in four superpixels: class 1; class 2; 10 px class 1 and 6 px class 0; void (3)."""
    seg = np.zeros((8, 8), np.int32)
    seg[:4, 4:], seg[4:, :4], seg[4:, 4:] = 1, 2, 3
    t = np.ones((8, 8), np.uint16)
    t[:4, 4:] = 2
    t[4:6, 0:3] = 0
    t[4:, 4:] = 3
    return seg, t


def test_answer_superpixels_counts_accepts_once_with_accept_rest():
    seg, t = _quadrants()
    n1 = int((t[4:, :4] == 1).sum())
    assert n1 > 8  # main class 1 in the mixed superpixel
    ann = SimulatedAnnotator([t], ignore_index=3, purity=0.0)
    predicted = np.array([1, 0, 1, 0])  # right, wrong, right, (void)
    machine, human = ann.answer_superpixels(0, None, seg, predicted, accept_rest=True)
    assert machine.provenance == MACHINE and human.provenance == HUMAN
    assert machine.clicks + human.clicks == 2  # one relabel + one "accept all"
    assert np.array_equal(machine.where, np.isin(seg, [0, 2])) and np.array_equal(human.where, seg == 1)
    assert (machine.labels[seg == 2] == 1).all() and (human.labels[seg == 1] == 2).all()
    # without accept_rest every superpixel costs its click, as label_superpixel answers one by one
    machine, human = ann.answer_superpixels(0, None, seg, predicted)
    one_by_one = [ann.label_superpixel(0, None, seg == j, int(predicted[j])) for j in range(4)]
    assert machine.clicks + human.clicks == sum(a.clicks for a in one_by_one) == 4
    for j, a in enumerate(one_by_one):
        got = machine if a.provenance == MACHINE else human
        assert np.array_equal(got.where & (seg == j), a.where), j
        assert np.array_equal(got.labels[a.where], a.labels[a.where]), j
    # a mixed superpixel under the purity is traced inside, never accepted whole
    strict = SimulatedAnnotator([t], ignore_index=3, purity=0.95)
    machine, human = strict.answer_superpixels(0, None, seg, predicted, accept_rest=True)
    assert np.array_equal(machine.where, seg == 0)
    assert np.array_equal(human.labels[seg == 2], t[seg == 2]) and human.clicks > 2
    with pytest.raises(InputError, match="differ in shape"):
        ann.answer_superpixels(0, None, seg[:4], predicted)


def test_image_answered_with_superpixel_fixes_costs_the_wrong_ones_plus_one():
    torch.manual_seed(0)
    images, truths = _set(n=4)
    settings = LoopSettings(strategy="random", budget=1, n_segments=30, image_answer="superpixel-fixes")
    driver = LoopDriver(images, SimulatedAnnotator(truths, purity=0.0), 2, settings)
    driver.predict_all()  # the untrained model's prediction is what the person corrects
    preds = [p.pred.copy() for p in driver.predictions]
    spent, n_img, n_sp = driver.ask(first_round=True)
    (i,) = driver.asked_images
    seg = driver.segments(i)
    ids = np.unique(seg)
    wrong = sum(np.bincount(preds[i][seg == j], minlength=2).argmax() != np.bincount(truths[i][seg == j]).argmax()
                for j in ids)
    assert n_img == 1 and n_sp == len(ids)
    assert spent == driver.clicks == wrong + (wrong < len(ids))
    assert np.all((driver.provenance[i] == HUMAN) | (driver.provenance[i] == MACHINE))
    for j in ids:
        inside = seg == j
        assert np.all(driver.labels[i][inside] == np.bincount(truths[i][inside]).argmax())


def test_cost_aware_ranking_needs_superpixel_fixes():
    with pytest.raises(InputError, match="superpixel fixes"):
        LoopSettings(strategy="margin", cost_aware=True)  # traced answers: no per-image cost estimate
    with pytest.raises(InputError, match="superpixel fixes"):
        LoopSettings(strategy="superpixel", cost_aware=True, image_answer="superpixel-fixes")


@pytest.mark.slow
def test_cost_aware_loop_ranks_per_expected_click():
    torch.manual_seed(0)
    images, truths = _set(n=5)
    settings = LoopSettings(strategy="margin", rounds=2, budget=1, n_segments=30, image_answer="superpixel-fixes",
                            cost_aware=True, train=TrainSettings(steps=5, batch_size=2, crop=64, checkpoint_every=0))
    driver = LoopDriver(images, SimulatedAnnotator(truths, purity=0.0), 2, settings)
    first, second = driver.run()
    assert first.expected_clicks is None  # round one picks for diversity: nothing estimated
    ranking = driver.last_ranking
    by_index = {s.index: s for s in ranking.scores}
    (pick,) = ranking.picked
    assert second.expected_clicks == pytest.approx(by_index[pick].expected_clicks)
    assert all(s.expected_clicks >= 1.0 for s in ranking.scores)
    ratio = [by_index[i].margin_uncertainty / by_index[i].expected_clicks for i in ranking.order]
    assert ratio == sorted(ratio, reverse=True) and pick == ranking.order[0]


def test_simulated_annotator_refuses_a_prediction_of_another_shape():
    gt = np.zeros((20, 20), np.uint16)
    with pytest.raises(InputError, match="differ in shape"):
        SimulatedAnnotator([gt]).label_image(0, None, np.zeros((10, 20), np.uint16))
