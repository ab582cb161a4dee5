"""Per-image scores (local consistency, mean entropy, mean margin uncertainty) and picks.

:func:`score_image` summarises a prediction; :func:`rank_images` orders images by a
strategy and picks the budget, optionally per expected click (cost-aware: uncertainty over
what answering the image should cost) and for diversity (k-means over pooled encoder
features: on the first round diversity alone, later the uncertain half clustered into the
budget, taking the sample nearest each centre). ``coverage`` ignores uncertainty and picks
typical images of the feature regions the labelled images cover least (:func:`coverage_pick`).
``objects`` ranks by the least certain objects of an image (:mod:`napari_hitl.active.objects`).
:class:`Ranking` prints as a table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from napari_hitl.active.uncertainty import check_proba
from napari_hitl.errors import InputError

__all__ = ["ImageScore", "Ranking", "Scorer", "SCORERS", "STRATEGIES", "local_consistency", "score_image", "score_maps",
           "usefulness", "rank_images", "kmeans", "TIE_TOLERANCE", "diversity_pick", "coverage_pick"]

@dataclass(frozen=True)
class Scorer:
    """How an uncertainty strategy scores an image: the :class:`ImageScore` field it reads, and
    whether a high value means ask first (local consistency: a low value does)."""

    field: str
    high_first: bool = True

    def __call__(self, score: ImageScore) -> float:
        value = float(getattr(score, self.field))
        return value if self.high_first else 1.0 - value


#: the strategy registry: name -> scorer of the strategies that rank by uncertainty
SCORERS = {"entropy": Scorer("entropy"), "margin": Scorer("margin_uncertainty"),
           "consistency": Scorer("consistency", high_first=False), "objects": Scorer("object_uncertainty")}
#: image-level strategies understood by :func:`rank_images`: the scorers, random order, and
#: coverage (typical images of what is not labelled, no uncertainty)
STRATEGIES = ("random", *SCORERS, "coverage")


@dataclass
class ImageScore:
    """Summary of one image's prediction; higher ``usefulness`` = more worth a human's time."""

    index: int
    name: str = ""
    consistency: float = 1.0        # local consistency (low = unreliable object edges)
    entropy: float = 0.0            # mean normalised entropy
    margin_uncertainty: float = 0.0  # mean (1 - margin)
    object_fraction: float = 0.0    # share of pixels predicted as a non-background class
    unsure_fraction: float = 0.0    # share of object pixels with confidence < beta
    expected_clicks: float = 1.0    # what answering it should cost (cost-aware ranking divides by it)
    object_uncertainty: float = 0.0  # 1 - mean confidence of its least certain objects (active.objects)


def local_consistency(conf: np.ndarray, pred: np.ndarray, beta: float = 0.9,
                      background: int | None = 0) -> float:
    """Mean confidence of object-predicted pixels whose confidence is below ``beta``.

    ``conf``/``pred``: (H, W) confidence and arg-max class maps. Object = any class but
    ``background`` (None: every class counts, for sets like street scenes without one).
    Low = unreliable object edges (ask the human); 1.0 when no object pixel is unsure.
    """
    conf = np.asarray(conf)
    obj = np.ones(conf.shape, bool) if background is None else np.asarray(pred) != background
    unsure = obj & (conf < beta)
    if not unsure.any():
        return 1.0
    return float(conf[unsure].mean())


def score_maps(conf: np.ndarray, pred: np.ndarray, margin_map: np.ndarray, entropy_map: np.ndarray,
               beta: float = 0.9, background: int | None = 0, index: int = 0, name: str = "",
               instances: np.ndarray | None = None, boundary: np.ndarray | None = None,
               object_conf: np.ndarray | None = None) -> ImageScore:
    """:class:`ImageScore` from precomputed maps (confidence, arg-max, margin, normalised entropy).

    ``instances`` (and the instance head's ``boundary`` map) give the objects the object score
    reads; without them the connected pieces of each predicted non-background class are the objects.
    ``object_conf``: the objects' confidences when already computed from these maps
    (:attr:`~napari_hitl.active.uncertainty.Prediction.object_conf`), so they are not computed twice.
    """
    from napari_hitl.active.objects import object_confidence, object_uncertainty, objects_from_prediction

    obj = np.ones(conf.shape, bool) if background is None else pred != background
    n_obj = int(obj.sum())
    inst = objects_from_prediction(pred, background) if instances is None else instances
    return ImageScore(
        object_uncertainty=object_uncertainty(object_confidence(inst, conf, boundary) if object_conf is None
                                              else object_conf),
        index=index, name=name, consistency=local_consistency(conf, pred, beta, background),
        entropy=float(np.mean(entropy_map)), margin_uncertainty=float(np.mean(1.0 - margin_map)),
        object_fraction=n_obj / max(1, conf.size),
        unsure_fraction=float((obj & (conf < beta)).sum()) / max(1, n_obj))


def score_image(proba: np.ndarray, beta: float = 0.9, background: int | None = 0, index: int = 0,
                name: str = "") -> ImageScore:
    """Score a ``(C, H, W)`` probability map (see :class:`ImageScore`)."""
    from napari_hitl.active.uncertainty import entropy, margin

    p = check_proba(proba)
    return score_maps(p.max(0), p.argmax(0), margin(p), entropy(p, normalize=True), beta, background,
                      index, name)


def usefulness(score: ImageScore, strategy: str) -> float:
    """How much asking the human about this image should help under ``strategy`` (higher first)."""
    if strategy in SCORERS:
        return SCORERS[strategy](score)
    raise InputError(f"unknown ranking strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


#: squared distances that differ by less than this share of the largest squared row length
#: count as equal, and the tie goes to the lower index: well above the float noise of pooled
#: features (float32 rounding, 1e-7 of jitter moved picks on near-duplicate images), far below
#: a real difference between two images
TIE_TOLERANCE = 1e-5


def _tie(x: np.ndarray) -> float:
    """The tie tolerance of squared distances between rows of ``x`` (:data:`TIE_TOLERANCE`)."""
    return TIE_TOLERANCE * max(float((x ** 2).sum(1).max()), 1e-300)


def _first_nearest(dist: np.ndarray, tie: float) -> np.ndarray:
    """Per row of ``dist``, the lowest column within ``tie`` of the row's smallest value."""
    return (dist <= dist.min(1, keepdims=True) + tie).argmax(1)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50, restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """k-means (k-means++ seeding, Lloyd iterations) on rows of ``x``; returns (centres, assignment).

    Seeding skips samples within the tolerance of a centre (they are covered), and a sample
    about as near two centres (squared distances within :data:`TIE_TOLERANCE` of the
    largest squared row length) joins the lower-numbered one, so float noise does not move it.
    With ``restarts`` > 1 it runs from that many seedings and keeps the tightest clustering
    (the earliest seeding among those equally tight).
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if n == 0 or k < 1:
        raise InputError(f"k-means needs at least one sample and k >= 1 (got {n} samples, k={k})")
    k = min(k, n)
    tie = _tie(x)
    runs = [_kmeans_once(x, k, np.random.default_rng(seed + r), iters, tie) for r in range(max(1, restarts))]
    inertia = [float(((x - c[a]) ** 2).sum()) for c, a in runs]
    return runs[int(np.argmax(np.asarray(inertia) <= min(inertia) + tie * n))]


def _kmeans_once(x: np.ndarray, k: int, rng: np.random.Generator, iters: int,
                 tie: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        w = np.where(d2 > tie, d2, 0.0)  # a sample within the tolerance of a centre is covered
        total = w.sum()
        i = int(rng.choice(n, p=w / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.stack(centres)
    assign = np.zeros(n, np.int64)
    for it in range(iters):
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
        new = _first_nearest(dist, tie)
        if it > 0 and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c, assign


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so k-means compares directions."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def diversity_pick(features: np.ndarray, k: int, candidates=None, seed: int = 0) -> list[int]:
    """Cluster ``features[candidates]`` into ``k`` groups and return the candidate nearest each centre.

    ``features``: (N, D) pooled features (rows are L2-normalised here). Returns up to ``k``
    distinct indices into ``features``. Distances closer than :data:`TIE_TOLERANCE` count as
    equal and the lower feature index wins, so near-duplicate images and float noise (a 1e-7
    jitter of the features) do not change the picks.
    """
    feats = np.asarray(features, np.float64)
    cand = np.arange(len(feats)) if candidates is None else \
        np.asarray(list(dict.fromkeys(int(i) for i in candidates)), np.int64)
    if len(cand) == 0 or k <= 0:
        return []
    if len(cand) <= k:
        return [int(i) for i in cand]
    x = feats[cand]
    x = _unit_rows(x)
    centres, _ = kmeans(x, k, seed)
    dist = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
    tie = _tie(x)
    free = np.ones(len(cand), bool)
    picked: list[int] = []
    for j in range(len(centres)):
        d = np.where(free, dist[:, j], np.inf)
        near = np.flatnonzero(d <= d.min() + tie)
        best = near[np.argmin(cand[near])]
        free[best] = False
        picked.append(int(cand[best]))
    return picked


def coverage_pick(features: np.ndarray, k: int, labelled=(), candidates=None, seed: int = 0,
                  neighbours: int = 20) -> list[int]:
    """Pick ``k`` typical images of the feature regions the labelled images cover least.

    Clusters all rows of ``features`` into len(labelled) + k groups (k-means on L2-normalised
    rows); then, k times, takes the group holding the fewest labelled or picked images (the
    larger group first on ties) and picks its most typical candidate: the one whose
    ``neighbours`` nearest group members lie closest (TypiClust, Hacohen et al. 2022: with few
    labels, representative picks teach more than uncertain ones). Returns indices into
    ``features``; ``candidates`` defaults to every row not in ``labelled``.
    """
    feats = np.asarray(features, np.float64)
    n = len(feats)
    done = {int(i) for i in labelled}
    cand = [i for i in range(n) if i not in done] if candidates is None else \
        [int(i) for i in candidates if int(i) not in done]
    if not cand or k <= 0:
        return []
    if len(cand) <= k:
        return cand
    x = _unit_rows(feats)
    _, assign = kmeans(x, min(n, len(done) + k), seed, restarts=5)
    groups = {int(g): np.flatnonzero(assign == g) for g in np.unique(assign)}
    covered = {g: sum(int(i) in done for i in m) for g, m in groups.items()}
    cand_set = set(cand)
    open_ = {g: [i for i in m if int(i) in cand_set] for g, m in groups.items()}
    typical = {}
    for g, members in groups.items():
        xm = x[members]
        d = np.sqrt(np.maximum(2.0 - 2.0 * xm @ xm.T, 0.0))  # rows are unit length
        nn = np.sort(d, axis=1)[:, 1:1 + neighbours]
        t = 1.0 / np.maximum(nn.mean(1), 1e-12) if nn.shape[1] else np.ones(len(members))
        typical.update({int(i): float(v) for i, v in zip(members, t)})
    picked: list[int] = []
    while len(picked) < k:
        live = [g for g in groups if open_[g]]
        if not live:
            break
        g = min(live, key=lambda g: (covered[g], -len(groups[g]), g))
        best = max(open_[g], key=lambda i: (typical[int(i)], -int(i)))
        picked.append(int(best))
        open_[g].remove(best)
        covered[g] += 1
    return picked


@dataclass
class Ranking:
    """Images ordered by a strategy (most useful first) and the ones picked for the human."""

    strategy: str
    scores: list[ImageScore]
    order: list[int]                     # image indices, most useful first
    picked: list[int] = field(default_factory=list)  # image indices chosen this round
    diversity: bool = False

    def table(self, top: int = 10) -> str:
        """A plain-text table of the top ``top`` images (the CLI prints it, the UI can show it)."""
        by_index = {s.index: s for s in self.scores}
        rows = [f"{'rank':>4}  {'image':<28} {'consist.':>8} {'entropy':>8} {'1-margin':>8} {'object%':>7}  pick"]
        for r, i in enumerate(self.order[:top], 1):
            s = by_index[i]
            name = (s.name or str(s.index))[-28:]
            rows.append(f"{r:>4}  {name:<28} {s.consistency:8.3f} {s.entropy:8.3f} "
                        f"{s.margin_uncertainty:8.3f} {100 * s.object_fraction:7.1f}  "
                        f"{'*' if i in self.picked else ''}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "order": list(self.order), "picked": list(self.picked),
                "diversity": self.diversity, "scores": [asdict(s) for s in self.scores]}


def rank_images(scores: list[ImageScore], strategy: str, budget: int, features: np.ndarray | None = None,
                diversity: bool = False, first_round: bool = False, exclude=(), seed: int = 0,
                cost_aware: bool = False) -> Ranking:
    """Order images by ``strategy`` and pick ``budget`` of them (never those in ``exclude``).

    With ``cost_aware`` the usefulness is divided by each score's ``expected_clicks``
    (uncertainty bought per click rather than per image).
    With ``diversity`` (needs ``features``, one row per score, same order): on
    ``first_round`` pick by k-means over all candidates; otherwise cluster the more
    uncertain half of the candidates into ``budget`` clusters and take the nearest to each
    centre. ``random`` orders at random (seeded). ``coverage`` (needs ``features``) treats
    ``exclude`` as the labelled images and picks with :func:`coverage_pick`; its order is the
    picks, then the rest by index.
    """
    excluded = set(int(i) for i in exclude)
    pos = [p for p, s in enumerate(scores) if s.index not in excluded]
    rng = np.random.default_rng(seed)
    if strategy == "coverage":
        if features is None:
            raise InputError("coverage picks need pooled features, one row per image score")
        done = [p for p, s in enumerate(scores) if s.index in excluded]
        chosen = coverage_pick(np.asarray(features), max(0, int(budget)), done, pos, seed)
        ordered = chosen + sorted(set(pos) - set(chosen))
        return Ranking(strategy, list(scores), [scores[p].index for p in ordered],
                       [scores[p].index for p in chosen], True)
    if strategy == "random":
        ordered = [pos[i] for i in rng.permutation(len(pos))]
    elif first_round:
        ordered = list(pos)
    else:
        vals = np.array([usefulness(scores[p], strategy) for p in pos])
        if cost_aware:
            vals = vals / np.maximum([scores[p].expected_clicks for p in pos], 1e-12)
        ordered = [pos[i] for i in np.argsort(-vals, kind="stable")]
    budget = max(0, min(int(budget), len(ordered)))
    if (diversity or first_round) and strategy != "random" and budget > 0:
        if features is None:
            raise InputError("diversity picks need pooled features, one row per image score")
        pool = ordered if first_round else ordered[:max(budget, (len(ordered) + 1) // 2)]
        chosen = diversity_pick(np.asarray(features), budget, pool, seed)
    else:
        chosen = ordered[:budget]
    order = [scores[p].index for p in ordered]
    picked = [scores[p].index for p in chosen]
    return Ranking(strategy, list(scores), order, picked, diversity or first_round)
