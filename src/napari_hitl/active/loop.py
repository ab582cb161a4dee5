"""Headless learning loop: predict all, rank, ask the annotator, pseudo-label, train, repeat.

The annotator is anything with the :class:`Annotator` methods: the UI (a person) or
:class:`~napari_hitl.simulate.annotator.SimulatedAnnotator` (answers from ground truth, for
benchmarks and tests). Every answer carries its cost in clicks. A whole image can also be
answered superpixel by superpixel (``LoopSettings.image_answer``): one click each, or only
the wrong ones relabelled and the rest accepted with one click (the multi-class counterpart
of correcting the prediction). With ``LoopSettings.instances`` the model's instance head is
decoded into objects, images are answered object by object (``Annotator.label_instances``),
pseudo-labels are whole confident objects, and the driver keeps an instance map per image.
:class:`LoopDriver` keeps labels and provenance as plain arrays.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np

from napari_hitl.active.objects import pseudo_instances
from napari_hitl.active.pseudo import PseudoSettings, machine_labelled_images, pseudo_labels
from napari_hitl.active.ranking import SCORERS, STRATEGIES, ImageScore, Ranking, rank_images, score_maps
from napari_hitl.active.superpixels import (Suggestion, class_votes, diverse_suggestions, edge_strength,
                                            expected_fix_clicks, image_suggestions, slic_superpixels,
                                            suggest_superpixels)
from napari_hitl.active.uncertainty import Prediction
from napari_hitl.errors import InputError
from napari_hitl.model.train import HUMAN, MACHINE, PSEUDO, UNLABELLED, Sample, Trainer, TrainSettings

__all__ = ["LOOP_STRATEGIES", "IMAGE_ANSWERS", "Answer", "Annotator", "LoopSettings",
           "RoundRecord", "Prediction", "LoopDriver"]

#: strategies of :class:`LoopDriver`: five pick whole images, two pick superpixels. "coverage"
#: ignores the model's uncertainty (typical images of what is not labelled yet); on camvid with
#: superpixel fixes it beat random in round 0 on all 367 images (+0.039 model mIoU, 3 seeds,
#: docs/bench/loop_camvid_coverage.json) but not in every round, on either pool size.
LOOP_STRATEGIES = (*STRATEGIES, "superpixel", "superpixel-diversity")
#: how a picked whole image is answered: traced (polygons / corrections), superpixel by superpixel
#: (one click each), or superpixel fixes (the wrong ones one click each, the rest accepted in one)
IMAGE_ANSWERS = ("polygons", "superpixels", "superpixel-fixes")


@dataclass
class Answer:
    """An annotator's answer: ``labels`` on the pixels in ``where``, with provenance and cost."""

    labels: np.ndarray       # (H, W) class ids (only ``where`` pixels matter)
    where: np.ndarray        # (H, W) bool: pixels this answer labels
    provenance: int          # HUMAN (drawn) or MACHINE (prediction accepted)
    clicks: int
    instances: np.ndarray | None = None  # (H, W) object ids on ``where`` (instance answers)


class Annotator(Protocol):
    """Who answers the loop's questions (a person in the UI, or a simulation)."""

    def label_image(self, index: int, image: np.ndarray, pred: np.ndarray | None) -> Answer:
        """Label a whole image (``pred``: current arg-max prediction, may be None)."""

    def label_superpixel(self, index: int, image: np.ndarray, mask: np.ndarray, predicted_class: int) -> Answer:
        """Accept ``predicted_class`` for the superpixel ``mask`` (one click) or relabel it."""

    def answer_superpixels(self, index: int, image: np.ndarray, segments: np.ndarray, predicted: np.ndarray,
                           accept_rest: bool = False) -> list[Answer]:
        """Answer every superpixel of an image (``predicted``: class per superpixel id)."""

    def label_instances(self, index: int, image: np.ndarray, pred_instances: np.ndarray | None) -> Answer:
        """Label a whole image object by object (``pred_instances``: the decoded prediction, may be
        None); the answer carries ``instances``."""


@dataclass
class LoopSettings:
    """Everything the loop driver needs to know besides the data."""

    strategy: str = "superpixel"
    rounds: int = 5
    budget: int = 5                  # images per round (superpixel strategies: budget * superpixels_per_image)
    superpixels_per_image: int = 20
    n_segments: int = 150            # SLIC superpixels per image
    compactness: float = 10.0
    edge_weight: float = 1.0         # superpixel score weight of image edges (0: plain mean)
    measure: str = "margin"          # pixel uncertainty for superpixels: margin, entropy, confidence
    class_balanced: bool = True
    # instances: the model's instance head is decoded into objects (model.instances), picked
    # images are answered object by object, pseudo-labels are whole confident objects
    instances: bool = False
    stuff: tuple = ()                # classes that are not objects (stay semantic) in instance mode
    decode: dict = field(default_factory=dict)  # keywords of model.instances.decode_instances (thresholds)
    # image strategies: how a picked image is answered. "polygons": traced (two-class sets:
    # corrected object by object with the click robot when cheaper). "superpixels": one click
    # per superpixel, accepted or relabelled. "superpixel-fixes": the superpixels whose
    # predicted class is wrong are relabelled one click each and the rest accepted with one
    # (the panel's Accept all). Same labels as "superpixels", far fewer clicks once the model
    # has trained a round: on camvid ~30 clicks an image against ~150 superpixels and ~620
    # polygon clicks. Measured on camvid (8 rounds x 10 images, docs/bench/loop_camvid_seeds.json):
    # margin reached model mIoU 0.450 at 3,757 clicks on seed 0 (98.5% of tracing all 100
    # images, 6.0% of its clicks; 0.451 took 8,981 clicks with "superpixels"), but 0.425
    # (92.6%) and 0.437 (90.6%) on seeds 1 and 2, and beat random in 2/8 and 5/8 rounds there.
    # With every pool image answered so (seed 1, 4,228 clicks) the model reached 0.430 against
    # 0.470: one class per superpixel (label mIoU 0.606, thin classes lost) caps it, not the picks.
    # With 400 superpixels (docs/bench/loop_camvid_seeds400.json, mean of seeds 0-2) margin reached
    # 96.8% of full within 15% of its clicks, but random 97.7%: fixes make uncertain images cost more.
    # Over seeds 0-4 (docs/bench/loop_camvid_5seeds400.json) margin+diversity trails random at the
    # same clicks by 0.025, 0.031, 0.014 in rounds 0-2 (cold start) and ties it after (within 0.008).
    # Default "polygons": superpixel answers are measured on camvid only, and on dsb2018
    # traced / corrected answers already meet the targets.
    image_answer: str = "polygons"
    # image strategies after round one: cluster the more uncertain half into the budget (k-means
    # over pooled features) instead of asking the top-k. Measured both ways: on camvid (consecutive
    # frames of four drives, where the top-k are near-duplicates) entropy with diversity reached
    # model mIoU 0.380 at 5,553 clicks against 0.328 at 5,047 without; on dsb2018 (few images, the
    # hard ones matter) 0.533 at 1,737 against 0.718 at 1,873. With superpixel answers (camvid
    # seed 1) it changed nothing: margin 0.420 with, 0.416 without, random 0.420
    # (docs/bench/camvid_runs). Off by default: microscopy first.
    diversity: bool = False
    # image strategies answered by superpixel fixes: rank by uncertainty per expected click
    # (expected_fix_clicks) instead of per image, since there an uncertain image costs more.
    # Measured on camvid (400 superpixels, seeds 0-2, docs/bench/loop_camvid_seeds400.json):
    # margin per click spent 597 clicks a round after the first (margin 774, random 656) but bought
    # less: model mIoU below random at the same clicks in rounds 0-4 (-0.012 to -0.030 on the
    # mean) and just above in 5-7 (+0.001 to +0.005); 96.7% of full within 15% of its clicks
    # against random's 97.7%.
    # The cheap, confident images it prefers teach little. Off by default.
    cost_aware: bool = False
    background: int | None = 0       # class that is not "object" for local consistency (None: none)
    pseudo: PseudoSettings = field(default_factory=PseudoSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in LOOP_STRATEGIES:
            raise InputError(f"unknown strategy {self.strategy!r}; use one of {', '.join(LOOP_STRATEGIES)}")
        if self.image_answer not in IMAGE_ANSWERS:
            raise InputError(f"unknown image answer {self.image_answer!r}; use one of {', '.join(IMAGE_ANSWERS)}")
        if self.cost_aware and (self.image_answer != "superpixel-fixes" or self.superpixel_mode):
            raise InputError("cost-aware ranking needs an image strategy answered by superpixel fixes "
                             "(the other answers cost about the same for every image)")
        if self.strategy == "coverage" and (self.diversity or self.cost_aware):
            raise InputError("coverage picks are diverse by themselves and rank no uncertainty: "
                             "use it without diversity or cost-aware ranking")
        if self.instances and (self.superpixel_mode or self.image_answer != "polygons"):
            raise InputError("instance mode answers whole images object by object: use an image strategy "
                             "with image answer 'polygons'")
        if self.budget < 1 or self.rounds < 1:
            raise InputError(f"budget and rounds must be >= 1, got {self.budget} and {self.rounds}")

    @property
    def superpixel_mode(self) -> bool:
        return self.strategy.startswith("superpixel")


@dataclass
class RoundRecord:
    """State after a round: cost so far and what it bought."""

    round: int
    clicks: int                 # cumulative
    round_clicks: int
    images_asked: int
    superpixels_asked: int
    labelled_fraction: float    # share of pool pixels with HUMAN/MACHINE labels
    pseudo_fraction: float
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    select_seconds: float = 0.0
    loss: float = float("nan")
    expected_clicks: float | None = None  # cost-aware ranking: its estimate of round_clicks
    metrics: dict = field(default_factory=dict)


class LoopDriver:
    """Runs the loop on in-memory images; ``run()`` returns one :class:`RoundRecord` per round.

    ``evaluate(driver) -> dict`` (optional) is called after each round's training, e.g. to
    score :meth:`final_labels` and held-out predictions; its dict lands in the record.
    """

    def __init__(self, images: list[np.ndarray], annotator: Annotator, num_classes: int,
                 settings: LoopSettings | None = None, trainer: Trainer | None = None,
                 names: list[str] | None = None,
                 evaluate: Callable[[LoopDriver], dict] | None = None):
        if not images:
            raise InputError("the loop needs at least one image")
        self.images = list(images)
        self.names = list(names) if names else [str(i) for i in range(len(images))]
        self.annotator = annotator
        self.num_classes = int(num_classes)
        self.settings = settings or LoopSettings()
        self.trainer = trainer or Trainer(self.num_classes, settings=self.settings.train)
        self.evaluate = evaluate
        self.labels = [np.zeros(np.asarray(im).shape[:2], np.uint16) for im in self.images]
        self.provenance = [np.zeros(np.asarray(im).shape[:2], np.uint8) for im in self.images]
        self.instance_labels = ([np.zeros(np.asarray(im).shape[:2], np.uint32) for im in self.images]
                                if self.settings.instances else None)
        self.predictions: list[Prediction | None] = [None] * len(self.images)
        self.asked_images: set[int] = set()
        self.asked_superpixels: dict[int, set[int]] = {}
        self._segments: dict[int, np.ndarray] = {}
        self._edges: dict[int, np.ndarray] = {}
        self.clicks = 0
        self.round = 0
        self.trained = False
        self.records: list[RoundRecord] = []
        self.last_ranking: Ranking | None = None

    # -- prediction ---------------------------------------------------------------------------
    def predict_all(self, should_stop=None) -> float:
        """Predict every image (probabilities reduced to maps + features); returns seconds."""
        from napari_hitl.model.segnet import predict_proba_batch

        t0 = time.perf_counter()
        inst = self.settings.instances
        outs = predict_proba_batch(self.trainer.model, self.images, batch_size=4, with_features=True,
                                   should_stop=should_stop, with_instances=inst)
        for i, out in enumerate(outs):
            if out is None:
                continue
            p, f = out
            self.predictions[i] = (Prediction.from_instance_maps(p, self.num_classes, f.astype(np.float16),
                                                                 self.settings.stuff, **self.settings.decode)
                                   if inst else Prediction.from_probs(p, f.astype(np.float16)))
        return time.perf_counter() - t0

    def segments(self, i: int) -> np.ndarray:
        if i not in self._segments:
            self._segments[i] = slic_superpixels(self.images[i], self.settings.n_segments, self.settings.compactness)
        return self._segments[i]

    def edges(self, i: int) -> np.ndarray:
        if i not in self._edges:
            self._edges[i] = edge_strength(self.images[i])
        return self._edges[i]

    def scores(self, beta: float) -> list[ImageScore]:
        s = self.settings
        out = [score_maps(p.conf, p.pred, p.margin, p.entropy, beta, s.background, i, self.names[i],
                          p.instances, p.boundary)
               for i, p in enumerate(self.predictions)]
        if s.cost_aware:
            for sc, p in zip(out, self.predictions):
                sc.expected_clicks = expected_fix_clicks(self.segments(sc.index), p.pred, p.conf, self.num_classes)
        return out

    # -- selection and answers ----------------------------------------------------------------
    def _uncertainty(self, p: Prediction) -> np.ndarray:
        m = self.settings.measure
        if m == "margin":
            return 1.0 - p.margin
        if m == "entropy":
            return p.entropy
        if m == "confidence":
            return 1.0 - p.conf
        raise InputError(f"unknown uncertainty measure {m!r}")

    def select_images(self, first_round: bool) -> list[int]:
        s = self.settings
        scores = self.scores(s.pseudo.beta(self.round))
        feats = np.stack([p.features.astype(np.float32).reshape(p.features.shape[0], -1).mean(1)
                          for p in self.predictions])
        own_first = s.strategy not in SCORERS  # the uncertainty strategies open with k-means picks
        strategy = "consistency" if first_round and not own_first else s.strategy
        ranking = rank_images(scores, strategy, s.budget, feats, diversity=s.diversity,
                              first_round=first_round and not own_first,
                              exclude=self.asked_images, seed=s.seed + self.round, cost_aware=s.cost_aware)
        self.last_ranking = ranking
        return ranking.picked

    def select_superpixels(self, first_round: bool) -> list[Suggestion]:
        from napari_hitl.model.segnet import pool_features

        s = self.settings
        k = s.budget * s.superpixels_per_image
        cands: list[Suggestion] = []
        feats = []
        diverse = first_round or s.strategy == "superpixel-diversity"
        for i, p in enumerate(self.predictions):
            seg = self.segments(i)
            cand = image_suggestions(i, seg, self._uncertainty(p), p.pred, self.num_classes,
                                     self.edges(i) if s.edge_weight else None, s.edge_weight,
                                     exclude=self.asked_superpixels.get(i, ()))
            cands.extend(cand)
            if diverse and cand:
                pooled = pool_features(p.features.astype(np.float32), seg)
                feats.append(pooled[[c.segment for c in cand]])
        if not cands:
            return []
        if diverse:
            return diverse_suggestions(cands, np.concatenate(feats), k, first_round=first_round,
                                       seed=s.seed + self.round)
        return suggest_superpixels(cands, k, s.class_balanced)

    def _apply(self, i: int, ans: Answer) -> None:
        where = ans.where & (self.provenance[i] != HUMAN) if ans.provenance != HUMAN else ans.where
        self.labels[i][where] = ans.labels[where]
        self.provenance[i][where] = ans.provenance
        if self.instance_labels is not None:
            if ans.instances is None:
                raise InputError("instance mode needs answers with an instance map")
            self.instance_labels[i][where] = np.asarray(ans.instances)[where]
        self.clicks += int(ans.clicks)

    def ask(self, first_round: bool) -> tuple[int, int, int]:
        """Select and ask; returns (clicks spent, images asked, superpixels asked)."""
        before = self.clicks
        if self.settings.superpixel_mode:
            picks = self.select_superpixels(first_round)
            for sug in picks:
                i = sug.image_index
                mask = self.segments(i) == sug.segment
                self._apply(i, self.annotator.label_superpixel(i, self.images[i], mask, sug.predicted_class))
                self.asked_superpixels.setdefault(i, set()).add(sug.segment)
            return self.clicks - before, 0, len(picks)
        picks = self.select_images(first_round)
        n_sp = 0
        for i in picks:
            p = self.predictions[i]
            if self.settings.image_answer != "polygons":
                seg = self.segments(i)
                votes = class_votes(seg, p.pred, self.num_classes)
                for ans in self.annotator.answer_superpixels(i, self.images[i], seg, votes.argmax(1),
                                                             self.settings.image_answer == "superpixel-fixes"):
                    self._apply(i, ans)
                n_sp += int(np.count_nonzero(votes.sum(1)))
            elif self.settings.instances:
                self._apply(i, self.annotator.label_instances(i, self.images[i], None if p is None else p.instances))
            else:
                self._apply(i, self.annotator.label_image(i, self.images[i], None if p is None else p.pred))
            self.asked_images.add(i)
        return self.clicks - before, len(picks), n_sp

    def update_pseudo(self) -> None:
        """Pseudo-label the gamma_t most consistent images (confidence > delta); humans win."""
        s = self.settings.pseudo
        for i in range(len(self.images)):  # drop last round's pseudo-labels
            stale = self.provenance[i] == PSEUDO
            self.provenance[i][stale] = UNLABELLED
            self.labels[i][stale] = 0
            if self.instance_labels is not None:
                self.instance_labels[i][stale] = 0
        if not s.enabled or not self.trained:
            return
        scores = self.scores(s.beta(self.round))
        if self.instance_labels is not None:  # the images whose least certain objects are surest
            cons = {sc.index: 1.0 - sc.object_uncertainty for sc in scores}
        else:
            cons = {sc.index: sc.consistency for sc in scores}
        for i in machine_labelled_images(cons, s.gamma(self.round), exclude=self.asked_images):
            p = self.predictions[i]
            if self.instance_labels is not None:
                bg = self.settings.background
                bg_conf = None if bg is None else np.where(p.pred == bg, p.conf, 0.0)
                self.labels[i], self.provenance[i], self.instance_labels[i] = pseudo_instances(
                    p.instances, p.object_conf, s.delta, p.classes, self.labels[i], self.provenance[i],
                    self.instance_labels[i], bg_conf)
            else:
                self.labels[i], self.provenance[i] = pseudo_labels(p.conf, p.pred, s.delta, self.labels[i],
                                                                   self.provenance[i])

    def samples(self) -> list[Sample]:
        inst = self.instance_labels
        return [Sample(self.images[i], self.labels[i], self.provenance[i], self.names[i],
                       None if inst is None else inst[i])
                for i in range(len(self.images)) if np.any(self.provenance[i] != UNLABELLED)]

    def final_instances(self) -> list[np.ndarray]:
        """Instance maps of every image: the answered objects of asked images, the model's elsewhere."""
        if self.instance_labels is None:
            raise InputError("final_instances needs the loop in instance mode (LoopSettings.instances)")
        out = []
        for i, p in enumerate(self.predictions):
            if i in self.asked_images or p is None or p.instances is None:
                out.append(self.instance_labels[i].copy())
            else:
                out.append(p.instances.copy())
        return out

    def final_labels(self) -> list[np.ndarray]:
        """Labels of every image: human/accepted where labelled, the model's prediction elsewhere."""
        out = []
        for i, p in enumerate(self.predictions):
            lab = p.pred.astype(np.uint16).copy() if p is not None else np.zeros_like(self.labels[i])
            done = (self.provenance[i] == HUMAN) | (self.provenance[i] == MACHINE)
            lab[done] = self.labels[i][done]
            out.append(lab)
        return out

    # -- the loop -----------------------------------------------------------------------------
    def run_round(self, progress=None, should_stop=None) -> RoundRecord | None:
        """One round: predict (if needed), ask, pseudo-label, train, re-predict, evaluate."""
        first = not self.trained
        t_pred = 0.0
        if any(p is None for p in self.predictions):
            t_pred = self.predict_all(should_stop)
        t0 = time.perf_counter()
        spent, n_img, n_sp = self.ask(first)
        t_sel = time.perf_counter() - t0
        self.update_pseudo()
        samples = self.samples()
        res = self.trainer.train_round(samples, progress=progress, should_stop=should_stop)
        if res.cancelled:
            return None
        self.trained = True
        t_pred += self.predict_all(should_stop)
        total = sum(p.size for p in self.provenance)
        done = sum(int(np.count_nonzero((p == HUMAN) | (p == MACHINE))) for p in self.provenance)
        pseudo = sum(int(np.count_nonzero(p == PSEUDO)) for p in self.provenance)
        rec = RoundRecord(self.round, self.clicks, spent, n_img, n_sp, done / total, pseudo / total,
                          res.seconds, t_pred, t_sel, res.final_loss)
        if self.settings.cost_aware and not first and self.last_ranking is not None:
            by_index = {sc.index: sc for sc in self.last_ranking.scores}
            rec.expected_clicks = sum(by_index[i].expected_clicks for i in self.last_ranking.picked)
        if self.evaluate is not None:
            rec.metrics = dict(self.evaluate(self))
        self.records.append(rec)
        self.round += 1
        return rec

    def run(self, rounds: int | None = None, progress=None, should_stop=None,
            on_round: Callable[[RoundRecord], None] | None = None) -> list[RoundRecord]:
        """Run ``rounds`` rounds (default settings.rounds); stops early when ``should_stop()``."""
        for _ in range(rounds or self.settings.rounds):
            if should_stop is not None and should_stop():
                break
            rec = self.run_round(progress, should_stop)
            if rec is None:
                break
            if on_round is not None:
                on_round(rec)
        return self.records

    def records_as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.records]
