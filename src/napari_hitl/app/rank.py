"""The ranking panel's orders: the project's images scored from their predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hitl.active.ranking import SCORERS, ImageScore, rank_images, score_maps
from napari_hitl.active.uncertainty import Prediction
from napari_hitl.errors import InputError

#: the panel's orders: label -> a strategy of :mod:`napari_hitl.active.ranking` (a scorer of its
#: SCORERS registry, or coverage), or "diversity" (margin, its k-means picks on top)
RANKINGS = {"local consistency": "consistency", "entropy": "entropy", "margin": "margin",
            "least certain objects": "objects", "diversity": "diversity", "coverage": "coverage"}
#: the ImageScore fields a batch run saves per image (what every ranking reads)
SCORE_FIELDS = ("consistency", "entropy", "margin_uncertainty", "object_fraction", "unsure_fraction",
                "object_uncertainty")


def image_score(index: int, name: str, preds: list[Prediction], beta: float) -> ImageScore:
    """One :class:`ImageScore` per image (a time-lapse: the mean over its frames)."""
    per = [score_maps(p.conf, p.pred, p.margin, p.entropy, beta, 0, index, name, instances=p.instances,
                      boundary=p.boundary, object_conf=p.object_conf if p.instances is not None else None)
           for p in preds]
    return ImageScore(index, name, **{f: float(np.mean([getattr(s, f) for s in per])) for f in SCORE_FIELDS})


@dataclass
class RankedRow:
    """One row of the ranking panel."""

    name: str
    value: float      # the shown score (see :func:`rank_rows`)
    picked: bool      # a diversity pick
    score: ImageScore
    window: tuple[int, int, int, int] | None = None  # a slide's window (y0, x0, y1, x1); None: the whole image

    @property
    def label(self) -> str:
        """How the row names what it points at: the image, or "slide, window (y, x)"."""
        return self.name if self.window is None else f"{self.name}, window ({self.window[0]}, {self.window[1]})"


def rank_rows(names: list[str], predictions: dict[str, list[Prediction]], choice: str, beta: float = 0.9,
              budget: int = 5, labelled=()) -> list[RankedRow]:
    """Rows in the order the person should look at them under ``choice`` (a key of RANKINGS).

    Shown value: local consistency (low first), mean entropy or mean margin uncertainty
    (high first); "diversity" orders by margin with its k-means picks on top; "coverage" puts
    on top typical images of what the ``labelled`` images (names) do not cover yet, the rest
    by margin (the start of a project, when the model's uncertainty means little). Images
    without a prediction come last, in project order.
    """
    if choice not in RANKINGS:
        raise InputError(f"unknown ranking {choice!r}; use one of {', '.join(RANKINGS)}")
    have = [n for n in names if n in predictions]
    scores = [image_score(i, n, predictions[n], beta) for i, n in enumerate(have)]
    return _rank(names, have, scores, lambda: np.stack([np.mean([p.features for p in predictions[n]], axis=0)
                                                         for n in have]), choice, budget, labelled)


def rank_results(names: list[str], results: dict[str, dict], choice: str, budget: int = 5,
                 labelled=(), windows=(), labelled_windows=()) -> list[RankedRow]:
    """:func:`rank_rows` from saved batch results (scores and pooled features, see
    :mod:`napari_hitl.app.batch`) instead of predictions held in memory.

    ``windows`` (:class:`napari_hitl.app.slides.WindowResult`, see
    :func:`napari_hitl.app.slides.window_results`) rank a slide's windows beside the images, each
    a row of its own (``window`` set) in place of the slide's one row. ``labelled_windows``:
    ``(name, box)`` of the windows that already hold a person's labels
    (:func:`napari_hitl.app.slides.labelled_windows`): they are never picked, coverage counts them
    as labelled (as the ``labelled`` images), and their rows come after every other predicted row,
    in score order (as the panel puts images a person finished last). Ranking by a score needs no
    features: ``results`` read with ``features=False`` keep the client's memory small."""
    if choice not in RANKINGS:
        raise InputError(f"unknown ranking {choice!r}; use one of {', '.join(RANKINGS)}")
    if RANKINGS[choice] not in SCORERS and any(r.get("features") is None for r in results.values()):
        raise InputError(f"ranking by {choice} needs the images' features: read the results with features=True")
    by_slide: dict[str, list] = {}
    for wr in windows:
        by_slide.setdefault(wr.name, []).append(wr)
    entries = []  # (name, window, scores, features), in project order, a slide's windows in its place
    for n in names:
        if n in by_slide:
            entries += [(n, tuple(int(v) for v in wr.box), wr.scores, wr.features) for wr in by_slide[n]]
        elif n in results:
            entries.append((n, None, results[n]["scores"], results[n]["features"]))
    scores = [ImageScore(i, n, **{f: float(sc.get(f, float("nan"))) for f in SCORE_FIELDS})
              for i, (n, _, sc, _) in enumerate(entries)]
    held = {(str(n), tuple(int(v) for v in box)) for n, box in labelled_windows}
    return _rank(names, [e[0] for e in entries], scores, lambda: np.stack([e[3] for e in entries]), choice,
                 budget, labelled, [e[1] for e in entries],
                 {i for i, e in enumerate(entries) if e[1] is not None and (e[0], e[1]) in held})


def _rank(names, have, scores, features, choice, budget, labelled, windows=None, held=frozenset()) -> list[RankedRow]:
    """Rows of ``scores`` (positions in ``have``) by ``choice``; the positions in ``held`` (windows
    holding a person's labels) are never picked and come after the other predicted rows."""
    strategy = RANKINGS[choice]
    rows: list[RankedRow] = []
    if scores:
        if strategy not in SCORERS:  # diversity or coverage: picks on top, the rest by margin
            feats = features()
            if strategy == "diversity":
                ranking = rank_images(scores, "margin", min(budget, len(scores) - len(held)), feats,
                                      diversity=True, exclude=held)
                by_margin = rank_images(scores, "margin", 0).order
            else:
                lab = set(labelled)
                done = [i for i, n in enumerate(have) if n in lab and (windows is None or windows[i] is None)
                        or i in held]
                ranking = rank_images(scores, "coverage", min(budget, len(scores)), feats, exclude=done)
                by_margin = rank_images(scores, "margin", 0).order
            picked = list(ranking.picked)
            order = picked + [i for i in by_margin if i not in ranking.picked]
            value = SCORERS["margin"].field
        else:
            ranking = rank_images(scores, strategy, 0)
            order, picked = list(ranking.order), []
            value = SCORERS[strategy].field
        order = [i for i in order if i not in held] + [i for i in order if i in held]
        for i in order:
            s = scores[i]
            rows.append(RankedRow(s.name, float(getattr(s, value)), i in picked, s,
                                  None if windows is None else windows[i]))
    done = set(have)
    rows += [RankedRow(n, float("nan"), False, ImageScore(-1, n)) for n in names if n not in done]
    return rows
