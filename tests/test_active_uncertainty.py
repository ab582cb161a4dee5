"""Uncertainty maps, local consistency, superpixel suggestions and pseudo-labels on hand-made inputs."""

import numpy as np
import pytest

from napari_hitl.active.pseudo import (CONFIDENT_BACKGROUND, CONFIDENT_OBJECT, IGNORED, PseudoSettings,
                                       machine_labelled_images, pseudo_labels, three_way_split)
from napari_hitl.active.ranking import (SCORERS, STRATEGIES, ImageScore, coverage_pick, diversity_pick, kmeans,
                                       rank_images, score_image)
from napari_hitl.active.superpixels import Suggestion, expected_fix_clicks, superpixel_stats, suggest_superpixels
from napari_hitl.active.uncertainty import (Prediction, confidence, entropy, margin, margin_uncertainty,
                                            uncertainty_map)
from napari_hitl.errors import InputError
from napari_hitl.project import HUMAN, MACHINE, PSEUDO, UNLABELLED


def _proba():
    # 3 classes, 1 x 3 pixels: certain, two-way tie, uniform
    return np.array([[[1.0, 0.5, 1 / 3]], [[0.0, 0.5, 1 / 3]], [[0.0, 0.0, 1 / 3]]], np.float32)


def test_uncertainty_maps_match_hand_computed_values():
    p = _proba()
    np.testing.assert_allclose(confidence(p), [[1.0, 0.5, 1 / 3]], atol=1e-6)
    np.testing.assert_allclose(entropy(p), [[0.0, np.log(2), np.log(3)]], atol=1e-5)
    np.testing.assert_allclose(entropy(p, normalize=True), [[0.0, np.log(2) / np.log(3), 1.0]], atol=1e-5)
    np.testing.assert_allclose(margin(p), [[1.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(margin_uncertainty(p), [[0.0, 1.0, 1.0]], atol=1e-6)
    q = np.array([[[0.7]], [[0.2]], [[0.1]]], np.float32)
    assert margin(q)[0, 0] == pytest.approx(0.5)
    assert uncertainty_map(q, "confidence")[0, 0] == pytest.approx(0.3)
    with pytest.raises(InputError, match="shape"):
        confidence(np.ones((4, 4)))
    with pytest.raises(InputError, match="bogus"):
        uncertainty_map(q, "bogus")
    pred = Prediction.from_probs(p, features=np.ones(4))
    assert pred.pred.dtype == np.uint16 and pred.pred.tolist() == [[0, 0, 0]] and pred.features.shape == (4,)
    np.testing.assert_allclose(pred.conf, confidence(p))
    np.testing.assert_allclose(pred.margin, margin(p))
    np.testing.assert_allclose(pred.entropy, entropy(p, normalize=True))


def test_margin_equals_the_sorted_top_two_for_any_class_count_and_ties():
    # margin takes the two largest by elementwise maxima; it must give the sort's values exactly
    rng = np.random.default_rng(3)
    for c in (2, 3, 5, 8):
        for p in (rng.random((c, 9, 7)), np.round(rng.random((c, 9, 7)) * 3) / 3):  # the second: many ties
            p = p.astype(np.float32)
            top = np.sort(p, axis=0)
            want = top[-1] - top[-2]
            assert margin(p).dtype == np.float32 and np.array_equal(margin(p), want)
            pred = Prediction.from_probs(p)
            assert np.array_equal(pred.margin, want) and np.array_equal(pred.conf, top[-1])


def _disk_proba(blur: float, size=64, r=16):
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2) - r
    fg = 1 / (1 + np.exp(d / blur))  # sigmoid edge: wide for large blur
    return np.stack([1 - fg, fg]).astype(np.float32)


def test_local_consistency_ranks_blurry_edges_below_crisp_ones():
    crisp = score_image(_disk_proba(0.5), beta=0.95)
    blurry = score_image(_disk_proba(4.0), beta=0.95)
    assert blurry.consistency < crisp.consistency
    ranking = rank_images([score_image(_disk_proba(0.5), 0.95, index=0),
                           score_image(_disk_proba(4.0), 0.95, index=1)], "consistency", budget=1)
    assert ranking.order == [1, 0] and ranking.picked == [1]
    assert "consist." in ranking.table()
    # an image with no unsure object pixel is fully consistent
    sure = np.stack([np.full((8, 8), 0.01), np.full((8, 8), 0.99)]).astype(np.float32)
    assert score_image(sure, beta=0.9).consistency == 1.0


def test_expected_fix_clicks_and_cost_aware_ranking():
    seg = np.repeat(np.arange(4), 4).reshape(4, 4)  # four rows, one superpixel each
    pred = np.zeros((4, 4), np.uint8)
    conf = np.ones((4, 4), np.float32)
    assert expected_fix_clicks(seg, pred, conf, 2) == 1.0  # sure of everything: one Accept all
    conf[1] = 0.5            # row 1 voted right with confidence 0.5: half a click
    pred[2, :2] = 1          # row 2 split 2/2: the vote (class 0) is backed by half its pixels
    assert expected_fix_clicks(seg, pred, conf, 2) == pytest.approx(1.0 + 0.5 + 0.5)
    with pytest.raises(InputError, match="differ in shape"):
        expected_fix_clicks(seg, pred[:2], conf, 2)
    # as unsure per image, but the second costs a third of the clicks: per click it comes first
    scores = [ImageScore(0, margin_uncertainty=0.3, expected_clicks=30.0),
              ImageScore(1, margin_uncertainty=0.2, expected_clicks=10.0),
              ImageScore(2, margin_uncertainty=0.1, expected_clicks=1.0)]
    assert rank_images(scores, "margin", 1).order == [0, 1, 2]
    per_click = rank_images(scores, "margin", 1, cost_aware=True)
    assert per_click.order == [2, 1, 0] and per_click.picked == [2]


def test_kmeans_and_diversity_pick_one_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 0], [0, 10], [-10, 0]], float)
    x = np.concatenate([c + rng.normal(0, 0.1, (20, 2)) for c in centres])
    _, assign = kmeans(x, 3)
    assert len(set(assign[:20])) == len(set(assign[20:40])) == len(set(assign[40:])) == 1
    assert len(set(assign)) == 3
    picks = diversity_pick(x, 3)
    assert sorted(p // 20 for p in picks) == [0, 1, 2]


def _clustered_features(seed, groups=5, per_group=30, dim=32):
    """Pooled-feature stand-ins: non-negative float32 rows around ``groups`` directions, a third
    of them exact copies of another row of their group (near-duplicate images, as in dsb2018)."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(2.0, 1.0, (groups, dim))
    label = np.repeat(np.arange(groups), per_group)
    x = np.maximum(centres[label] + rng.normal(0, 0.15, (len(label), dim)), 0)
    for i in np.flatnonzero(rng.random(len(label)) < 1 / 3):
        x[i] = x[rng.choice(np.flatnonzero(label == label[i]))]
    return x.astype(np.float32), label


def test_diversity_picks_do_not_move_with_float_noise():
    """1e-7 of relative noise on the features (rounding) leaves the picks as they were; before,
    ties between near-duplicate images were broken by the noise and most trials moved a pick."""
    for seed in range(4):
        x, label = _clustered_features(seed)
        for k in (5, 8):
            picks = diversity_pick(x, k, seed=seed)
            assert len(set(picks)) == k
            if k == 5:  # one pick per group
                assert sorted(label[picks]) == [0, 1, 2, 3, 4]
            for trial in range(5):
                rng = np.random.default_rng(1000 * seed + trial)
                noisy = (x * (1 + 1e-7 * rng.standard_normal(x.shape))).astype(np.float32)
                assert diversity_pick(noisy, k, seed=seed) == picks, (seed, k, trial)
            # exact copies tie: the lower index is the one picked
            assert all(not np.any(np.all(x[:p] == x[p], axis=1)) for p in picks)


def _group(centre, offsets):
    """A centre direction and points around it; the centre itself is the group's most typical."""
    c = np.asarray(centre, float)
    return np.stack([c] + [c + o for o in offsets])


def test_coverage_pick_takes_typical_images_of_the_least_covered_regions():
    e = np.eye(3)
    ring = [0.2 * e[1], -0.2 * e[1], 0.2 * e[2], -0.2 * e[2]]
    a = _group(e[0], ring + [0.1 * e[1], -0.1 * e[2], 0.15 * e[2], -0.12 * e[1]])  # rows 0-8, centre 0
    b = _group(e[1], [0.2 * e[0], -0.2 * e[0], 0.2 * e[2], -0.2 * e[2]])               # rows 9-13, centre 9
    c = _group(e[2], [0.2 * e[0], -0.2 * e[1]])                                       # rows 14-16, centre 14
    x = np.concatenate([a, b, c])
    # nothing labelled: one per region, the largest region first, each its most typical member
    assert coverage_pick(x, 3) == [0, 9, 14]
    # region a already holds a labelled image: the next pick is the centre of region b, then c
    assert coverage_pick(x[:14], 1, labelled=[3]) == [9]
    assert coverage_pick(x, 2, labelled=[3]) == [9, 14]
    # labelled rows are never picked again, and a tiny pool returns what is left
    assert coverage_pick(x[:2], 5, labelled=[0]) == [1]
    scores = [ImageScore(i) for i in range(len(x))]
    ranking = rank_images(scores, "coverage", 2, x, exclude=[3])
    assert ranking.picked == [9, 14] and ranking.order[:2] == [9, 14] and 3 not in ranking.order
    assert sorted(ranking.order) == [i for i in range(len(x)) if i != 3]
    with pytest.raises(InputError, match="features"):
        rank_images(scores, "coverage", 2)


def test_superpixel_stats_and_class_balanced_suggestions():
    seg = np.repeat(np.arange(4), 4).reshape(4, 4)  # 4 vertical... rows of superpixels
    unc = np.repeat([0.9, 0.8, 0.1, 0.7], 4).reshape(4, 4)
    pred = np.repeat([1, 1, 0, 2], 4).reshape(4, 4)
    score, cls, area, purity = superpixel_stats(seg, unc, pred, 3)
    np.testing.assert_allclose(score, [0.9, 0.8, 0.1, 0.7])
    assert list(cls) == [1, 1, 0, 2] and list(area) == [4] * 4 and np.all(purity == 1)
    cands = [Suggestion(0, i, float(score[i]), int(cls[i]), 4) for i in range(4)]
    plain = suggest_superpixels(cands, 2, class_balanced=False)
    balanced = suggest_superpixels(cands, 2, class_balanced=True)
    assert [s.segment for s in plain] == [0, 1]
    assert [s.segment for s in balanced] == [0, 3]  # class 1 and class 2, not twice class 1


def test_three_way_split_and_pseudo_labels_never_touch_human_pixels():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, (32, 32)).astype(np.float32)
    pred = rng.integers(0, 3, (32, 32)).astype(np.uint16)
    split = three_way_split(conf, pred, 0.8)
    assert np.all(split[conf <= 0.8] == IGNORED)
    assert np.all(split[(conf > 0.8) & (pred == 0)] == CONFIDENT_BACKGROUND)
    assert np.all(split[(conf > 0.8) & (pred != 0)] == CONFIDENT_OBJECT)
    labels = rng.integers(0, 3, (32, 32)).astype(np.uint16)
    prov = rng.choice([UNLABELLED, HUMAN, MACHINE, PSEUDO], (32, 32)).astype(np.uint8)
    conf[:] = 0.99  # the machine is sure everywhere, and still may not overwrite people
    new_l, new_p = pseudo_labels(conf, pred, 0.8, labels, prov)
    kept = (prov == HUMAN) | (prov == MACHINE)
    assert np.array_equal(new_l[kept], labels[kept]) and np.array_equal(new_p[kept], prov[kept])
    assert np.all(new_p[~kept] == PSEUDO) and np.array_equal(new_l[~kept], pred[~kept])


def test_progressive_schedules():
    s = PseudoSettings(beta0=0.9, dbeta=0.1, beta_min=0.6, gamma0=0.2, dgamma=0.25, gamma_max=0.7)
    assert [s.beta(t) for t in range(5)] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.6])
    assert [s.gamma(t) for t in range(4)] == pytest.approx([0.2, 0.45, 0.7, 0.7])
    assert machine_labelled_images({0: 0.5, 1: 0.9, 2: 0.7, 3: 0.95}, 0.5, exclude={3}) == [1, 2]
    with pytest.raises(InputError, match="delta"):
        PseudoSettings(delta=1.5)


def test_one_strategy_registry_for_ranking_the_loop_and_the_panel():
    from napari_hitl.active.loop import LOOP_STRATEGIES, LoopSettings
    from napari_hitl.active.ranking import usefulness
    from napari_hitl.app.rank import RANKINGS

    s = ImageScore(0, consistency=0.25, entropy=0.5, margin_uncertainty=0.75, object_uncertainty=0.4)
    assert {n: usefulness(s, n) for n in SCORERS} == {"entropy": 0.5, "margin": 0.75, "consistency": 0.75,
                                                     "objects": 0.4}
    assert set(SCORERS) < set(STRATEGIES) and LOOP_STRATEGIES[:len(STRATEGIES)] == STRATEGIES
    assert set(RANKINGS.values()) <= set(STRATEGIES) | {"diversity"}
    for name in LOOP_STRATEGIES:
        LoopSettings(strategy=name)
    with pytest.raises(InputError, match="unknown ranking strategy"):
        usefulness(s, "coverage")
