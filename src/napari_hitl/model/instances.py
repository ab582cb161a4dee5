"""Instance maps: checks, training targets for the instance head, and decoding predictions to objects.

An instance map is a uint32 ``(H, W)`` array, 0 = no object, one id per object; ``classes``
maps id -> class id (a dict, or a 1-D array indexed by id). The semantic map is
``class_of[instances]``. The segmentation model's instance head predicts two maps that
separate touching objects: a *boundary* probability (the outer ring of every object, where
two objects meet or an object meets background) and a *distance* map (distance to the
object's edge, divided by its largest value in the object: 1 at centres, 0 at edges).
:func:`decode_instances` turns them into objects with a seeded watershed: seeds are the
object interiors (foreground, far from the edge, not on a boundary), each seed grows over
the foreground along the descending distance map. Numpy in, numpy out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_hitl import instances as core
from napari_hitl.errors import InputError

__all__ = ["INSTANCE_CHANNELS", "BOUNDARY_WIDTH", "DECODE_DEFAULTS", "SIZE_NORM", "SIZE_NORM_SETTINGS", "check_instances",
           "class_lookup", "semantic_from_instances", "instance_targets", "decode_instances", "merge_shallow_saddles", "instances_from_maps", "relabel_sequential",
           "median_diameter", "inscribed_diameter", "size_factor"]

#: channels of the instance head: boundary logit, distance-to-edge logit
INSTANCE_CHANNELS = 2
#: width in pixels of the boundary ring a training target marks inside each object
BOUNDARY_WIDTH = 2
#: the decoder's thresholds, chosen on 7 validation images of the dsb2018 pool (never its
#: held-out images; a 28-image model, 600 steps): validation AP 0.42 at (0.5, 0.5) -> 0.52 at
#: (0.7, 0.3). The class loss's inverse-frequency weights make the foreground probability
#: generous at object edges; 0.7 puts the edge back where the objects end.
DECODE_DEFAULTS = {"fg_threshold": 0.7, "boundary_threshold": 0.3, "seed_threshold": 0.4, "min_seed": 4, "min_size": 8,
                   "merge_saddle": None}
#: object-size normalisation at prediction (:func:`napari_hitl.model.segnet.normalise_object_size`):
#: when an image's typical object diameter after a first pass (``estimate``: "foreground", the
#: :func:`inscribed_diameter` of the decoded objects' mask, or "objects", their
#: :func:`median_diameter`) is more than ``tolerance`` times off ``diameter`` (px), the image is
#: predicted again rescaled so its objects come out near ``diameter``: shrunk by at most
#: ``max_shrink``, enlarged by at most ``max_enlarge`` and to at most ``max_pixels`` pixels;
#: fewer than ``min_objects`` pieces leave it alone.
#: Chosen on the dsb2018 POOL (never its held-out images; benchmarks/dsb_diagnose.py, a
#: 600-step model trained on the pool's first 28 images, scored on its last 7;
#: docs/bench/dsb2018_size_norm_validation.json): validation F1 / AP / AJI 0.766 / 0.514 / 0.675
#: -> 0.784 / 0.546 / 0.698, the worst image (stained tissue) not worse; the 7 images zoomed 3x
#: (nuclei of 30-130 px) 0.585 / 0.336 / 0.622 -> 0.722 / 0.459 / 0.674. The "objects"
#: estimate misses nuclei the first pass cut into pieces (zoomed 3x: 0.665 / 0.423 / 0.650).
#: Shrink only (``max_enlarge`` 1): on a 1200-step pool model (docs/bench/dsb2018_decoder_pool_s32.json)
#: enlarging the small-nucleus images cost F1 at zoom 1 (0.771 -> 0.764) and gained nothing at
#: zoom 2; shrinking alone leaves every zoom-1 image as it was and keeps the gain on large nuclei
#: (zoom 2: F1 / AP 0.660 / 0.389 -> 0.715 / 0.448).
SIZE_NORM_SETTINGS: dict = {"diameter": 20.0, "tolerance": 1.5, "max_shrink": 4.0, "max_enlarge": 1.0,
                            "max_pixels": 4_000_000, "min_objects": 2, "estimate": "foreground"}
#: the size normalisation predictions use by default (``size_norm=True``); None: off. OFF for
#: now: a weak model (6 pool images, 400 steps; the loop's models are like it) gained nothing on
#: the same 7 pool validation images (F1 / AP / AJI 0.737 / 0.486 / 0.661 -> 0.726 / 0.488 /
#: 0.665, 4.5x the prediction time), and the held-out loop with it on came out lower
#: (docs/bench/loop_dsb2018_instances_v3*.json). ``size_norm=SIZE_NORM_SETTINGS`` turns it on.
SIZE_NORM: dict | None = None


def check_instances(instances, shape=None, name: str = "instance map") -> np.ndarray:
    """Return ``instances`` as a uint32 ``(H, W)`` array, or raise InputError saying what is wrong
    (:func:`napari_hitl.instances.check_instances`, for one plane)."""
    arr = np.asarray(instances)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (H, W), got shape {arr.shape}")
    return core.check_instances(arr, None if shape is None else tuple(shape[:2]), name)


def class_lookup(classes, max_id: int, default: int = 1) -> np.ndarray:
    """``classes`` (dict id -> class, or a 1-D array indexed by id) as an array of length max_id+1;
    ids it does not name get ``default``; id 0 is always class 0 (background)."""
    out = np.full(int(max_id) + 1, default, np.int64)
    out[0] = 0
    if classes is None:
        return out
    if isinstance(classes, dict):
        for k, v in classes.items():
            if 0 < int(k) <= max_id:
                out[int(k)] = int(v)
        return out
    arr = np.asarray(classes)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"classes must be a dict id -> class or a 1-D integer array, got {arr.dtype} {arr.shape}")
    n = min(len(arr), max_id + 1)
    out[1:n] = arr[1:n]
    return out


def semantic_from_instances(instances, classes=None) -> np.ndarray:
    """The semantic map (uint16, :func:`napari_hitl.instances.semantic`); objects ``classes``
    does not name (or all, without it) are class 1."""
    inst = check_instances(instances)
    ids = core.ids_of(inst)
    lut = class_lookup(classes, int(ids[-1]) if ids.size else 0)
    return core.semantic(inst, {int(i): int(lut[i]) for i in ids})


def relabel_sequential(instances) -> np.ndarray:
    """Ids renumbered 1..N in order of first appearance in a raster scan (0 stays 0), uint32."""
    inst = check_instances(instances)
    ids, first = np.unique(inst.ravel(), return_index=True)
    keep = ids != 0
    order = ids[keep][np.argsort(first[keep], kind="stable")]
    lut = np.zeros(int(inst.max(initial=0)) + 1, np.uint32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    return lut[inst]


def instance_targets(instances, width: int = BOUNDARY_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of the instance head from an instance map: ``(boundary uint8, distance float32)``.

    ``boundary`` is 1 on the ring of ``width`` pixels inside each object along its edge (next
    to background or to another object), so two touching objects get a 2*width line between
    them. ``distance`` is each object pixel's distance to the object's edge over the largest
    such distance in that object (0..1), 0 on background.
    """
    inst = check_instances(instances)
    h, w = inst.shape
    boundary = np.zeros((h, w), np.uint8)
    distance = np.zeros((h, w), np.float32)
    for k, sl in enumerate(ndimage.find_objects(inst), 1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - 1), min(h, sl[0].stop + 1)
        x0, x1 = max(0, sl[1].start - 1), min(w, sl[1].stop + 1)
        obj = inst[y0:y1, x0:x1] == k
        d = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]  # the image edge is no object edge
        d = np.where(obj, d, 0)
        peak = float(d.max())
        if peak <= 0:
            continue
        ring = obj & (d <= width)
        boundary[y0:y1, x0:x1][ring] = 1
        distance[y0:y1, x0:x1][obj] = (d[obj] / peak).astype(np.float32)
    return boundary, distance


def decode_instances(foreground, boundary, distance, fg_threshold: float = DECODE_DEFAULTS["fg_threshold"],
                     boundary_threshold: float = DECODE_DEFAULTS["boundary_threshold"],
                     seed_threshold: float = DECODE_DEFAULTS["seed_threshold"],
                     min_seed: int = DECODE_DEFAULTS["min_seed"], min_size: int = DECODE_DEFAULTS["min_size"],
                     merge_saddle: float | None = DECODE_DEFAULTS["merge_saddle"]) -> np.ndarray:
    """Objects from the model's maps by a seeded watershed; returns a uint32 instance map.

    ``foreground``: (H, W) probability that a pixel belongs to any object (1 - P(background)).
    ``boundary``, ``distance``: the instance head's maps in [0, 1]. Seeds are the connected
    interiors (foreground above ``fg_threshold``, boundary below ``boundary_threshold``,
    distance above ``seed_threshold``) of at least ``min_seed`` pixels; every seed floods the
    foreground down the distance map, so a boundary line between two touching objects keeps
    them apart. With ``merge_saddle`` (0..1) two touching pieces are joined when the pass
    between them is high (:func:`merge_shallow_saddles`): one object the seeds cut in two.
    Foreground pieces no seed reaches become objects of their own; objects under ``min_size``
    pixels are dropped. Ids are 1..N in raster order.
    """
    from skimage.segmentation import watershed

    fg_p = np.asarray(foreground, np.float32)
    if fg_p.ndim != 2:
        raise InputError(f"foreground must be an (H, W) probability map, got shape {fg_p.shape}")
    b = np.asarray(boundary, np.float32)
    d = np.asarray(distance, np.float32)
    if b.shape != fg_p.shape or d.shape != fg_p.shape:
        raise InputError(f"foreground {fg_p.shape}, boundary {b.shape} and distance {d.shape} must have one shape")
    fg = fg_p > fg_threshold
    if not fg.any():
        return np.zeros(fg.shape, np.uint32)
    core = fg & (b < boundary_threshold) & (d > seed_threshold)
    seeds, n = ndimage.label(core)
    if n:
        sizes = np.bincount(seeds.ravel(), minlength=n + 1)
        small = sizes < min_seed
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
    # the flooding height: low at centres, high on boundaries
    height = (1.0 - d) + b
    out = watershed(height, markers=seeds, mask=fg) if seeds.any() else np.zeros(fg.shape, np.int64)
    if merge_saddle is not None and n > 1:
        out = merge_shallow_saddles(out, d, b, merge_saddle, boundary_threshold)
    rest, m = ndimage.label(fg & (out == 0))
    if m:
        out = np.where(rest > 0, rest + int(out.max()), out)
    sizes = np.bincount(out.ravel())
    tiny = sizes < min_size
    tiny[0] = False
    if tiny.any():
        out[tiny[out]] = 0
    return relabel_sequential(out.astype(np.uint32))


def merge_shallow_saddles(labels, distance, boundary, ratio: float,
                          boundary_threshold: float = DECODE_DEFAULTS["boundary_threshold"]) -> np.ndarray:
    """Join touching pieces of ``labels`` that the distance map says are one object.

    Between two touching objects the distance map falls to about 0 along their contact line and
    the boundary map is high there; between two pieces of one object that the seeds cut apart
    it stays high along the cut (the cut runs through the object's middle). For each touching
    pair, the *saddle* is the 90th percentile of the distance on their shared border (the
    smaller of the two sides at each border pixel); the pair is joined when the saddle is at
    least ``ratio`` times the lower of the two pieces' peaks and the border's median boundary
    probability is below ``boundary_threshold``. Pairs join strongest first, transitively.
    Returns a label map of the same dtype (joined pieces take the lower id).
    """
    lab = np.asarray(labels)
    d = np.asarray(distance, np.float32)
    b = np.asarray(boundary, np.float32)
    n = int(lab.max(initial=0))
    if n < 2:
        return lab
    peaks = np.zeros(n + 1, np.float32)
    ids = np.arange(1, n + 1)
    peaks[1:] = np.asarray(ndimage.maximum(d, lab, ids), np.float32)
    pa, pb, sd, sb = [], [], [], []
    for sl_a, sl_b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                       ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        la, lb = lab[sl_a], lab[sl_b]
        m = (la > 0) & (lb > 0) & (la != lb)
        if not m.any():
            continue
        a, c = la[m], lb[m]
        pa.append(np.minimum(a, c))
        pb.append(np.maximum(a, c))
        sd.append(np.minimum(d[sl_a][m], d[sl_b][m]))
        sb.append(np.maximum(b[sl_a][m], b[sl_b][m]))
    if not pa:
        return lab
    pa, pb, sd, sb = (np.concatenate(x) for x in (pa, pb, sd, sb))
    key = pa.astype(np.int64) * (n + 1) + pb
    order = np.argsort(key, kind="stable")
    key, sd, sb = key[order], sd[order], sb[order]
    uniq, start = np.unique(key, return_index=True)
    stops = np.append(start[1:], len(key))
    cands = []
    for k, s0, s1 in zip(uniq, start, stops):
        i, j = int(k // (n + 1)), int(k % (n + 1))
        low = float(min(peaks[i], peaks[j]))
        if low <= 0:
            continue
        saddle = float(np.percentile(sd[s0:s1], 90))
        if saddle >= ratio * low and float(np.median(sb[s0:s1])) < boundary_threshold:
            cands.append((saddle / low, i, j))
    if not cands:
        return lab
    parent = np.arange(n + 1)

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, i, j in sorted(cands, reverse=True):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    root = np.array([find(x) for x in range(n + 1)], dtype=lab.dtype)
    return root[lab]


def median_diameter(instances, min_objects: int = 1) -> float | None:
    """Median equivalent diameter (``sqrt(4 area / pi)``, px) of the objects of an instance map;
    None when it has fewer than ``min_objects`` objects."""
    inst = check_instances(instances)
    areas = np.bincount(inst.ravel())[1:]
    areas = areas[areas > 0]
    if len(areas) == 0 or len(areas) < min_objects:
        return None
    return float(np.median(np.sqrt(4.0 * areas / np.pi)))


def inscribed_diameter(foreground, min_objects: int = 1, min_size: int = DECODE_DEFAULTS["min_size"]) -> float | None:
    """Median over the connected pieces of a foreground mask (of at least ``min_size`` pixels) of
    twice the largest distance to the background inside each: the diameter of the largest disc
    each piece holds. Unlike :func:`median_diameter` of decoded objects it does not shrink when
    the decoder cuts a large object into pieces (the mask is the same); a clump of touching
    objects counts as one piece about as wide as one of them. None under ``min_objects`` pieces."""
    fg = np.asarray(foreground, bool)
    lab, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    peaks = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(fg), lab, np.arange(1, n + 1)))
    peaks = peaks[sizes >= min_size]
    if len(peaks) == 0 or len(peaks) < min_objects:
        return None
    return float(np.median(2.0 * peaks))


def size_factor(diameter: float | None, canonical: float, tolerance: float, max_shrink: float,
                max_enlarge: float | None = None) -> float:
    """The factor that brings objects of ``diameter`` px to ``canonical`` px, clipped to
    ``[1/max_shrink, max_enlarge]`` (``max_enlarge`` defaults to ``max_shrink``); 1.0 when
    ``diameter`` is None or within ``tolerance`` times ``canonical`` (either way)."""
    if diameter is None or diameter <= 0:
        return 1.0
    f = float(canonical) / float(diameter)
    if 1.0 / tolerance <= f <= tolerance:
        return 1.0
    return float(np.clip(f, 1.0 / max_shrink, max_shrink if max_enlarge is None else max_enlarge))


def instances_from_maps(probs, boundary, distance, stuff=(), **decode_kw) -> tuple[np.ndarray, dict[int, int]]:
    """Instance map and classes of one image from ``(C, H, W)`` class probabilities and the head's maps.

    Class 0 and the ``stuff`` classes are not objects: the foreground is the probability of
    the other classes. Each object takes the class with the most probability inside it.
    Returns ``(instances uint32, {id: class})``; :func:`decode_instances` keywords pass through.
    """
    p = np.asarray(probs, np.float32)
    if p.ndim != 3 or p.shape[0] < 2:
        raise InputError(f"probabilities must have shape (C, H, W) with C >= 2, got {p.shape}")
    things = [c for c in range(1, p.shape[0]) if c not in set(int(s) for s in stuff)]
    if not things:
        return np.zeros(p.shape[1:], np.uint32), {}
    fg = p[things].sum(0)
    inst = decode_instances(fg, boundary, distance, **decode_kw)
    n = int(inst.max(initial=0))
    if n == 0:
        return inst, {}
    flat = inst.ravel()
    sums = np.stack([np.bincount(flat, weights=p[c].ravel(), minlength=n + 1) for c in things])
    cls = np.asarray(things)[sums[:, 1:].argmax(0)]
    return inst, {i + 1: int(c) for i, c in enumerate(cls)}
