"""Engine "graph": seeded segmentation on colour, no trained weights needed.

One region (click mode): a colour-GMM graph cut (OpenCV's GrabCut) on a crop around the
prompts, at a capped working resolution: clicks and scribbles are hard seeds, the previous
mask (or the extreme-point box, or a disk around the first click) starts the colour models,
the outside of the box and the other regions' prompts are background. Its logits are the
signed distance to the cut.

All regions of an image (full-image mode, :meth:`GraphEngine.predict_all`): a multi-label
random walker with colour priors (Grady's formulation) in which every region, plus
"unassigned", competes for every pixel in one linear solve whose matrix is shared by all
labels and factorised once; each region's label is allowed only inside its extreme-point
box, and the outside of all boxes is unassigned. :meth:`GraphEngine.prepare` caches the
image's Lab colours and colour-histogram bins.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_hitl.errors import HitlError, InputError
from napari_hitl.interactive.engine import Engine, register_engine
from napari_hitl.io import as_float_rgb
from napari_hitl.prompts import RegionPrompts

__all__ = ["GraphEngine"]

_BINS = 16  # colour histogram bins per Lab channel
_LOGIT_CLIP = 12.0


@register_engine("graph")
class GraphEngine(Engine):
    """GrabCut per region, multi-label random walker for all regions (see the module docstring).

    method: "grabcut" or "walker" for single-region predictions; joint: predict_all solves all
    regions in one random walk (else one graph cut per region, the canvas arbitrating);
    max_pixels: working resolution cap of the crop (speed); iterations: GrabCut EM rounds;
    beta: walker edge contrast sensitivity; gamma: weight of its colour prior; em_steps: re-fits
    of its colour models; margin: crop margin around the prompts.
    """

    def __init__(self, method: str = "grabcut", joint: bool = True, max_pixels: int = 160_000,
                 iterations: int = 2, click_radius: int = 5, beta: float = 20.0, gamma: float = 0.002,
                 em_steps: int = 0, margin: float = 0.3, border_seeds: bool = True,
                 prev_weight: float = 0.0):
        if method not in ("grabcut", "walker"):
            raise InputError(f"graph engine method must be 'grabcut' or 'walker', got {method!r}")
        self.method = method
        self.joint = bool(joint)
        self.iterations = int(iterations)
        self.click_radius = int(click_radius)
        self.max_pixels = int(max_pixels)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.em_steps = int(em_steps)
        self.margin = float(margin)
        self.border_seeds = bool(border_seeds)
        self.prev_weight = float(prev_weight)
        self._lab: np.ndarray | None = None
        self._bins: np.ndarray | None = None

    # ------------------------------------------------------------------ per image
    def prepare(self, image: np.ndarray) -> None:
        """Cache the Lab colour image (smoothed a little) and its histogram bin per pixel."""
        import cv2

        rgb = as_float_rgb(image)
        self._bgr = np.ascontiguousarray((rgb[..., ::-1] * 255.0 + 0.5).astype(np.uint8))
        rgb = cv2.GaussianBlur(rgb, (0, 0), 0.7)
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        scaled = np.empty_like(lab)
        scaled[..., 0] = lab[..., 0] / 100.0
        scaled[..., 1:] = (lab[..., 1:] + 128.0) / 256.0
        np.clip(scaled, 0.0, 0.999, out=scaled)
        self._lab = np.ascontiguousarray(scaled)
        q = (scaled * _BINS).astype(np.int32)
        self._bins = (q[..., 0] * _BINS + q[..., 1]) * _BINS + q[..., 2]

    @property
    def shape(self) -> tuple[int, int]:
        if self._lab is None:
            raise HitlError("engine 'graph': call prepare(image) before predict")
        return self._lab.shape[:2]

    # ------------------------------------------------------------------ predictions
    def predict(self, region: RegionPrompts, prev_mask: np.ndarray | None = None,
                others: Sequence[RegionPrompts] = ()) -> np.ndarray:
        """Logits of ``region`` (> 0 inside); the positive prompts of ``others`` are its background."""
        others = [o for o in others if o is not region]
        if self.method == "walker":
            return self._solve([region] + others, [prev_mask] + [None] * len(others), only_first=True)[0]
        return self._grabcut(region, prev_mask, others)

    def predict_all(self, regions: Sequence[RegionPrompts],
                    prev_masks: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Logits of every region; with ``joint=True`` from one multi-label random-walker solve in
        which all regions compete natively, else one colour graph cut per region with the
        others' prompts as its background (the canvas then lets them compete)."""
        if not regions:
            return []
        prev_masks = list(prev_masks) if prev_masks is not None else [None] * len(regions)
        if len(prev_masks) != len(regions):
            raise InputError(f"got {len(prev_masks)} previous masks for {len(regions)} regions")
        if self.joint or self.method == "walker":
            return self._solve(list(regions), prev_masks, only_first=False)
        return super().predict_all(regions, prev_masks)

    # ------------------------------------------------------------------ internals
    def _grabcut(self, region: RegionPrompts, prev_mask, others) -> np.ndarray:
        """Binary colour-GMM graph cut (GrabCut) on a crop around the region, as logits."""
        import cv2

        h, w = self.shape
        region.validate((h, w), prior=prev_mask)
        for o in others:
            o.validate((h, w))
        if prev_mask is not None:
            prev_mask = np.asarray(prev_mask, bool)
            if prev_mask.shape != (h, w):
                raise InputError(f"previous mask has shape {prev_mask.shape}, expected {(h, w)}")
            if not prev_mask.any():
                prev_mask = None
        if region.extreme is None and prev_mask is None:
            y0, x0, y1, x1 = 0, 0, h, w   # a first click says nothing of the extent: whole image
        else:
            y0, x0, y1, x1 = region.bbox((h, w), margin=0.5 if region.extreme is None else self.margin,
                                         min_size=64, include=prev_mask)
        ch, cw = y1 - y0, x1 - x0
        s = min(1.0, float(np.sqrt(self.max_pixels / (ch * cw))))
        gh, gw = max(8, int(round(ch * s))), max(8, int(round(cw * s)))
        sy, sx = gh / ch, gw / cw
        img = self._bgr[y0:y1, x0:x1]
        if (gh, gw) != (ch, cw):
            img = cv2.resize(img, (gw, gh), interpolation=cv2.INTER_AREA)

        def g(y, x):
            return int(round((x - x0 + 0.5) * sx - 0.5)), int(round((y - y0 + 0.5) * sy - 0.5))

        rad = max(1, int(round(self.click_radius * min(sx, sy))))
        mask = np.full((gh, gw), cv2.GC_PR_BGD, np.uint8)
        if prev_mask is not None:
            pm = prev_mask[y0:y1, x0:x1].astype(np.uint8)
            mask[cv2.resize(pm, (gw, gh), interpolation=cv2.INTER_NEAREST) > 0] = cv2.GC_PR_FGD
        elif region.extreme is None:
            # no extent known yet: a generous disk around each positive click starts the object model
            r0 = max(rad + 2, int(0.08 * np.hypot(gh, gw)))
            for c in region.clicks:
                if c.positive:
                    cv2.circle(mask, g(c.y, c.x), r0, cv2.GC_PR_FGD, -1)
        if region.extreme is not None:
            by0, bx0, by1, bx1 = region.extreme.box
            (gx0, gy0), (gx1, gy1) = g(by0, bx0), g(by1, bx1)
            inside = np.zeros((gh, gw), bool)
            inside[max(gy0, 0):gy1 + 1, max(gx0, 0):gx1 + 1] = True
            # extreme points are clicked a few pixels off: a band around the box stays undecided
            sl = max(2, int(round(4 * min(sx, sy))))
            near = np.zeros((gh, gw), bool)
            near[max(gy0 - sl, 0):gy1 + sl + 1, max(gx0 - sl, 0):gx1 + sl + 1] = True
            if prev_mask is None:
                mask[inside] = cv2.GC_PR_FGD
            mask[near & ~inside] = cv2.GC_PR_BGD
            mask[~near] = cv2.GC_BGD
        # the crop's sides inside the image are background (the object was cropped with a margin);
        # the image's own edge too when only clicks are given (objects mostly sit inside the
        # picture), but not under an extreme-point box, which says where the object runs off it
        if region.extreme is None:
            mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = cv2.GC_BGD
        if y0 > 0:
            mask[0, :] = cv2.GC_BGD
        if y1 < h:
            mask[-1, :] = cv2.GC_BGD
        if x0 > 0:
            mask[:, 0] = cv2.GC_BGD
        if x1 < w:
            mask[:, -1] = cv2.GC_BGD
        for o in others:   # other regions' positive prompts are this region's background
            self._draw_prompts(mask, o, True, cv2.GC_BGD, g, rad, sx, sy, x0, y0)
        self._draw_prompts(mask, region, False, cv2.GC_BGD, g, rad, sx, sy, x0, y0)
        self._draw_prompts(mask, region, True, cv2.GC_FGD, g, rad, sx, sy, x0, y0)
        fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        bg = np.isin(mask, (cv2.GC_BGD, cv2.GC_PR_BGD))
        if fg.sum() >= 2 and bg.sum() >= 2:
            bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
            iters = self.iterations if prev_mask is None else max(1, self.iterations - 1)
            try:
                cv2.grabCut(img, mask, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
            except cv2.error:  # degenerate colour model (e.g. a flat crop): keep the seeds' split
                pass
        inside = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        # logits: signed distance to the cut, in working pixels, so the canvas can weigh regions
        d_in = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
        d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3)
        logit = (np.where(inside > 0, d_in, -d_out) - 0.5 * (2 * inside - 1)).astype(np.float32)
        logit = np.clip(logit, -_LOGIT_CLIP, _LOGIT_CLIP)
        if (gh, gw) != (ch, cw):
            logit = cv2.resize(logit, (cw, ch), interpolation=cv2.INTER_LINEAR)
        full = np.full((h, w), -_LOGIT_CLIP, np.float32)
        full[y0:y1, x0:x1] = logit
        return full

    @staticmethod
    def _draw_prompts(mask, region, positive, value, g, rad, sx, sy, x0, y0) -> None:
        import cv2

        for c in region.clicks:
            if c.positive == positive:
                cv2.circle(mask, g(c.y, c.x), rad, int(value), -1)
        for sc in region.scribbles:
            if sc.positive == positive:
                pts = np.array([g(y, x) for y, x in sc.points], np.int32).reshape(-1, 1, 2)
                cv2.polylines(mask, [pts], False, int(value), thickness=max(1, rad // 2 + 1))
                cv2.circle(mask, tuple(int(v) for v in pts[0, 0]), max(1, rad // 2), int(value), -1)
        if positive and region.extreme is not None:
            for y, x in region.extreme.points:
                cv2.circle(mask, g(y, x), 1, int(value), -1)

    def _crop_box(self, regions, prev_masks) -> tuple[int, int, int, int]:
        h, w = self.shape
        if any(r.extreme is None for r in regions):
            return 0, 0, h, w  # clicks alone do not tell the object's extent: use the whole image
        boxes = [r.bbox((h, w), margin=self.margin, min_size=32, include=p)
                 for r, p in zip(regions, prev_masks)]
        b = np.array(boxes)
        return int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())

    def solve_with_priors(self, regions: Sequence[RegionPrompts], prev_masks: Sequence[np.ndarray | None] | None,
                          logits: Sequence[np.ndarray], weight: float = 1.0) -> list[np.ndarray]:
        """Full-image mode with learned priors: the joint random walk of :meth:`predict_all`, each
        region's colour prior multiplied by ``sigmoid(logit) ** weight`` of its learned logits
        (``logits``: one HxW map per region, e.g. the click model's), and "unassigned" by
        ``prod(1 - sigmoid) ** weight``. The walk keeps the image's edges and the competition,
        the logits bring what colour alone cannot tell apart."""
        regions = list(regions)
        prev_masks = list(prev_masks) if prev_masks is not None else [None] * len(regions)
        if not (len(prev_masks) == len(regions) == len(logits)):
            raise InputError(f"got {len(regions)} regions, {len(prev_masks)} previous masks and "
                             f"{len(logits)} logit maps")
        if not np.isfinite(weight) or weight < 0:
            raise InputError(f"the learned prior's weight must be >= 0, got {weight}")
        for lg in logits:
            if np.shape(lg) != self.shape:
                raise InputError(f"logit map has shape {np.shape(lg)}, expected {self.shape}")
        if not regions:
            return []
        return self._solve(regions, prev_masks, only_first=False, unary=(list(logits), float(weight)))

    def _solve(self, regions: list[RegionPrompts], prev_masks: list, only_first: bool,
               unary: tuple[list[np.ndarray], float] | None = None) -> list[np.ndarray]:
        import cv2

        h, w = self.shape
        for r, p in zip(regions, prev_masks):
            r.validate((h, w), prior=p)
        for p in prev_masks:
            if p is not None and np.shape(p) != (h, w):
                raise InputError(f"previous mask has shape {np.shape(p)}, expected {(h, w)}")
        y0, x0, y1, x1 = self._crop_box(regions, prev_masks)
        ch, cw = y1 - y0, x1 - x0
        s = min(1.0, float(np.sqrt(self.max_pixels / (ch * cw))))
        gh, gw = max(2, int(round(ch * s))), max(2, int(round(cw * s)))
        sy, sx = gh / ch, gw / cw
        lab = self._lab[y0:y1, x0:x1]
        bins = self._bins[y0:y1, x0:x1]
        if (gh, gw) != (ch, cw):
            lab = cv2.resize(lab, (gw, gh), interpolation=cv2.INTER_AREA)
            bins = cv2.resize(bins.astype(np.float32), (gw, gh), interpolation=cv2.INTER_NEAREST).astype(np.int32)

        nlab = len(regions) + 1  # label 0 = background / unassigned
        seeds = np.full((gh, gw), -1, np.int32)
        allowed = np.ones((nlab, gh, gw), bool)
        prior_masks = [None] * nlab

        def to_grid(pts):
            pts = np.asarray(pts, np.float64).reshape(-1, 2)
            return np.stack([(pts[:, 0] - y0 + 0.5) * sy - 0.5, (pts[:, 1] - x0 + 0.5) * sx - 0.5], 1)

        bg_seed = np.zeros((gh, gw), np.uint8)
        every_box = np.zeros((gh, gw), bool)
        all_boxed = all(r.extreme is not None for r in regions)
        for k, r in enumerate(regions, start=1):
            pos = np.zeros((gh, gw), np.uint8)
            neg = np.zeros((gh, gw), np.uint8)
            rad = max(1, int(round(3 * min(sy, sx))))
            for c in r.clicks:
                (py, px), = to_grid([[c.y, c.x]])
                cv2.circle(pos if c.positive else neg, (int(round(px)), int(round(py))), rad, 1, -1)
            for sc in r.scribbles:
                g = np.round(to_grid(sc.points)[:, ::-1]).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(pos if sc.positive else neg, [g], False, 1, thickness=max(1, rad))
                if len(g) == 1:
                    cv2.circle(pos if sc.positive else neg, tuple(int(v) for v in g[0, 0]), rad, 1, -1)
            if r.extreme is not None:
                for py, px in to_grid(r.extreme.points):
                    cv2.circle(pos, (int(round(px)), int(round(py))), 1, 1, -1)
                by0, bx0, by1, bx1 = r.extreme.box
                (gy0, gx0), (gy1, gx1) = to_grid([[by0, bx0], [by1, bx1]])
                inside = np.zeros((gh, gw), bool)
                m = 1  # a pixel of slack: a wider one lets big regions leak (measured on camvid)
                inside[max(int(np.floor(gy0)) - m, 0):int(np.ceil(gy1)) + m + 1,
                       max(int(np.floor(gx0)) - m, 0):int(np.ceil(gx1)) + m + 1] = True
                allowed[k] &= inside
                every_box |= inside
            bg_seed |= neg
            seeds[pos > 0] = k
            if prev_masks[k - 1] is not None:
                pm = np.asarray(prev_masks[k - 1], bool)[y0:y1, x0:x1].astype(np.uint8)
                prior_masks[k] = cv2.resize(pm, (gw, gh), interpolation=cv2.INTER_NEAREST) > 0
                if not r.has_positive:
                    seeds[_prior_seeds(prior_masks[k], neg) & (seeds < 0)] = k
        if all_boxed:
            # outside every box is unassigned; seeded only past a few pixels of slack, as extreme
            # points are clicked a few pixels inside the true extremes
            wide = cv2.dilate(every_box.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            bg_seed[~wide] = 1
        if len(regions) == 1:
            # one region alone: outside its box nothing else can be, so it is background
            bg_seed[~allowed[1]] = 1
        if not all_boxed and self.border_seeds:
            # no box says where the background is: take the crop's border ring as background
            bg_seed[0, :] = bg_seed[-1, :] = bg_seed[:, 0] = bg_seed[:, -1] = 1
        seeds[(bg_seed > 0) & (seeds < 0)] = 0

        # colour models: seeds, previous masks, and for the background the crop's border ring
        hist = np.zeros((nlab, _BINS ** 3), np.float64)
        ring = np.zeros((gh, gw), bool)
        ring[:2, :], ring[-2:, :], ring[:, :2], ring[:, -2:] = True, True, True, True
        for k in range(nlab):
            sel = seeds == k
            if k == 0:
                sel = sel | (ring & (seeds < 0))
            hist[k] += np.bincount(bins[sel], minlength=_BINS ** 3)
            if prior_masks[k] is not None and self.prev_weight > 0:
                ph = np.bincount(bins[prior_masks[k]], minlength=_BINS ** 3).astype(np.float64)
                hist[k] += self.prev_weight * max(hist[k].sum(), 1.0) * ph / max(ph.sum(), 1.0)
        learned = None
        if unary is not None:
            maps, weight = unary
            q = np.empty((nlab, gh, gw), np.float64)
            for k, lg in enumerate(maps, start=1):
                lg = np.asarray(lg, np.float32)[y0:y1, x0:x1]
                if (gh, gw) != (ch, cw):
                    lg = cv2.resize(lg, (gw, gh), interpolation=cv2.INTER_AREA)
                q[k] = 1.0 / (1.0 + np.exp(-np.clip(lg, -30.0, 30.0)))
            q[0] = np.prod(1.0 - q[1:], axis=0)
            learned = np.clip(q, 1e-4, 1.0) ** weight
        probs = self._random_walk(lab, seeds, hist, bins, allowed, learned)
        for _ in range(self.em_steps):
            hist = np.zeros_like(hist)
            conf = probs.argmax(0)
            pmax = probs.max(0)
            for k in range(nlab):
                sel = (conf == k) & (pmax > 0.6)
                sel |= seeds == k
                hist[k] += np.bincount(bins[sel], minlength=_BINS ** 3)
            probs = self._random_walk(lab, seeds, hist, bins, allowed, learned)

        out = []
        count = 1 if only_first else len(regions)
        eps = 1e-4
        for k in range(1, count + 1):
            p = probs[k]
            logit = np.log(p + eps) - np.log(1.0 - p + eps)
            if (gh, gw) != (ch, cw):
                logit = cv2.resize(logit.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR)
            full = np.full((h, w), -_LOGIT_CLIP, np.float32)
            full[y0:y1, x0:x1] = np.clip(logit, -_LOGIT_CLIP, _LOGIT_CLIP)
            out.append(full)
        return out

    def _random_walk(self, lab, seeds, hist, bins, allowed, learned=None) -> np.ndarray:
        """(nlab, gh, gw) label probabilities: seeded random walker with colour priors (times
        ``learned`` (nlab, gh, gw) when given)."""
        from scipy import sparse
        from scipy.sparse.linalg import splu

        gh, gw = seeds.shape
        n = gh * gw
        nlab = hist.shape[0]
        # edge weights on the 4-connected grid
        dv = ((lab[1:] - lab[:-1]) ** 2).sum(-1).ravel()
        dh = ((lab[:, 1:] - lab[:, :-1]) ** 2).sum(-1).ravel()
        scale = max(float(np.mean(np.concatenate([dv, dh]))), 1e-8)
        wv = np.exp(-self.beta * dv / scale) + 1e-6
        wh = np.exp(-self.beta * dh / scale) + 1e-6
        idx = np.arange(n).reshape(gh, gw)
        i = np.concatenate([idx[:-1].ravel(), idx[:, :-1].ravel()])
        j = np.concatenate([idx[1:].ravel(), idx[:, 1:].ravel()])
        wts = np.concatenate([wv, wh]).astype(np.float64)
        W = sparse.coo_matrix((np.concatenate([wts, wts]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                              shape=(n, n)).tocsr()
        deg = np.asarray(W.sum(1)).ravel()
        # colour priors: normalised per-label likelihood of each pixel's colour bin, 0 where not allowed
        # each label's colour histogram mixed with the crop's own, so that a colour no seed has
        # shown is equally likely under every label (plain additive smoothing would favour the
        # label with the fewest samples)
        crop_hist = np.bincount(bins.ravel(), minlength=hist.shape[1]).astype(np.float64)
        crop_hist /= crop_hist.sum()
        totals = hist.sum(1, keepdims=True)
        like = 0.85 * hist / np.maximum(totals, 1.0) + 0.15 * crop_hist[None, :] + 1e-9
        present = totals[:, 0] > 0
        like[~present] = crop_hist[None, :] * 1e-3 + 1e-12  # a label nobody has seeded: weak prior
        prior = like[:, bins.ravel()] * allowed.reshape(nlab, n)
        if learned is not None:
            prior *= learned.reshape(nlab, n)
        prior /= np.maximum(prior.sum(0, keepdims=True), 1e-12)
        flat = seeds.ravel()
        unk = flat < 0
        known = ~unk
        L = sparse.diags(deg + self.gamma) - W
        A = L[unk][:, unk].tocsc()
        rhs = self.gamma * prior[:, unk].T
        if known.any():
            B = W[unk][:, known]
            onehot = np.zeros((known.sum(), nlab))
            onehot[np.arange(known.sum()), flat[known]] = 1.0
            rhs = rhs + B @ onehot
        x = splu(A, permc_spec="COLAMD").solve(np.ascontiguousarray(rhs))
        probs = np.zeros((nlab, n))
        probs[:, unk] = x.T
        probs[flat[known], np.flatnonzero(known)] = 1.0
        probs *= allowed.reshape(nlab, n)
        probs /= np.maximum(probs.sum(0, keepdims=True), 1e-12)
        return probs.reshape(nlab, gh, gw)


def _prior_seeds(prior: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Seeds of a region known only by its previous mask (a correction with negative prompts
    alone): the eroded interior of each part of the mask that holds no negative prompt."""
    import cv2

    n, parts = cv2.connectedComponents(prior.astype(np.uint8), connectivity=8)
    refuted = np.unique(parts[(neg > 0) & (parts > 0)])
    keep = prior & ~np.isin(parts, refuted)
    return cv2.erode(keep.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
