"""Instance maps: one integer per object, a class per object, and the edits people make on them.

An instance map is a uint32 array, 0 where there is no object, one id per object; a class
table maps each id to its class. Class 0 (background) and the other "stuff" classes (sky,
road) are not objects: background is id 0, and each other stuff class has one id per image.
The semantic map (a class per pixel) is derived from the two, never stored on its own.
Numpy in, numpy out: the store, the model, the robots and the dock all use these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from napari_hitl.errors import InputError

THING, STUFF = "thing", "stuff"
KINDS = (THING, STUFF)
#: instance ids are stored as uint32
MAX_ID = 2**32 - 1
_LUT_LIMIT = 1 << 22  # ids below this are mapped through a lookup table, above it through a search


@dataclass(frozen=True)
class ObjectInfo:
    """One object of one plane: its id, class, size, box (half-open) and dominant provenance."""

    id: int
    cls: int
    area: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1
    centroid: tuple[float, float]    # y, x
    provenance: int


def check_instances(instances, shape: tuple[int, ...] | None = None, what: str = "instance map") -> np.ndarray:
    """``instances`` as uint32 after checking it is an integer array of ids 0..2**32-1 (of ``shape``)."""
    arr = np.asarray(instances)
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(f"{what} has shape {arr.shape}, expected {tuple(shape)}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must hold integer object ids, got {arr.dtype}")
    if arr.size and arr.dtype != np.uint32:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > MAX_ID:
            raise InputError(f"{what} holds the id {lo if lo < 0 else hi}; object ids run 0..{MAX_ID} (uint32)")
    return arr.astype(np.uint32, copy=False)


def ids_of(instances: np.ndarray) -> np.ndarray:
    """The sorted object ids present (0 excluded)."""
    flat = instances.ravel()
    vals = flat[np.flatnonzero(flat)]
    if not vals.size:
        return np.zeros(0, np.uint32)
    if int(vals.max()) < _LUT_LIMIT:
        return np.flatnonzero(np.bincount(vals)).astype(np.uint32)
    return np.unique(vals)


def class_lut(classes: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, classes)`` as sorted arrays, from a mapping id -> class."""
    if not classes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids = np.fromiter((int(k) for k in classes), np.int64, len(classes))
    cls = np.fromiter((int(v) for v in classes.values()), np.int64, len(classes))
    order = np.argsort(ids)
    return ids[order], cls[order]


def semantic(instances: np.ndarray, classes: Mapping[int, int], dtype=np.uint16) -> np.ndarray:
    """The class of every pixel: ``classes[id]``, 0 where the id is 0.

    Raises :class:`InputError` naming the first id that has no class.
    """
    ids, cls = class_lut(classes)
    if not instances.size:
        return np.zeros(instances.shape, dtype)
    top = int(instances.max())
    if top == 0:
        return np.zeros(instances.shape, dtype)
    if top < _LUT_LIMIT:
        lut = np.full(top + 1, -1, np.int64)
        keep = ids <= top
        lut[ids[keep]] = cls[keep]
        lut[0] = 0
        out = lut[instances]
        if (out < 0).any():
            missing = int(instances[out < 0].ravel()[0])
            raise InputError(f"object id {missing} has no class")
        return out.astype(dtype)
    pos = np.searchsorted(ids, instances)
    pos = np.minimum(pos, max(len(ids) - 1, 0))
    found = (ids[pos] == instances) if len(ids) else np.zeros(instances.shape, bool)
    bad = ~found & (instances != 0)
    if bad.any():
        raise InputError(f"object id {int(instances[bad].ravel()[0])} has no class")
    return np.where(instances == 0, 0, cls[pos] if len(ids) else 0).astype(dtype)


def check_classes(instances: np.ndarray, classes: Mapping[int, int], n_classes: int,
                  what: str = "instance map") -> dict[int, int]:
    """``classes`` as a plain dict after checking it names exactly the ids in ``instances``,
    each with a class in 1..n_classes-1 (class 0 is the background: id 0)."""
    try:
        table = {int(k): int(v) for k, v in dict(classes).items()}
    except (TypeError, ValueError) as err:
        raise InputError(f"the classes of a {what} map object ids to class ids ({err})") from None
    present = set(ids_of(instances).tolist())
    missing = sorted(present - table.keys())
    if missing:
        raise InputError(f"{what}: object id {missing[0]} has no class" +
                         (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(table.keys() - present)
    if extra:
        raise InputError(f"{what}: a class is given for object id {extra[0]}, which is not in the map")
    bad = [(k, v) for k, v in table.items() if not 1 <= v < n_classes]
    if bad:
        raise InputError(f"{what}: object {bad[0][0]} has class {bad[0][1]}; objects take a class in "
                         f"1..{n_classes - 1} (0 is the background, where the id is 0)")
    return table


def from_semantic(labels: np.ndarray, kinds: list[str], *, where: np.ndarray | None = None,
                  old: np.ndarray | None = None, old_classes: Mapping[int, int] | None = None,
                  next_id: int = 1) -> tuple[np.ndarray, dict[int, int]]:
    """Instances for a semantic map: each connected area of a thing class is one object, each
    stuff class one id; background is id 0. Returns ``(instances, classes)``.

    With ``old`` (the current map and its classes), only the pixels in ``where`` change, and
    an area that lies on or touches an old object of the same class joins it (re-committing
    the same labels keeps the ids); new objects get ids from ``next_id`` up.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    take = np.ones(labels.shape, bool) if where is None else np.asarray(where, bool)
    old_classes = dict(old_classes or {})
    if old is None:
        out = np.zeros(labels.shape, np.uint32)
        classes: dict[int, int] = {}
    else:
        out = old.astype(np.uint32, copy=True)
        classes = dict(old_classes)
    nid = int(next_id)
    if old is not None and old.size:
        nid = max(nid, int(old.max()) + 1)
    out[take] = 0
    stuff_ids = {c: i for i, c in old_classes.items() if kinds[c] == STUFF} if old is not None else {}
    present = np.flatnonzero(np.bincount(labels[take].ravel().astype(np.int64), minlength=1)) if take.any() \
        else np.zeros(0, np.int64)
    structure = np.ones((3,) * labels.ndim, bool) if labels.ndim == 2 else None
    for c in (int(v) for v in present):
        if c == 0:
            continue
        region = take & (labels == c)
        if kinds[c] == STUFF:
            oid = stuff_ids.get(c)
            if oid is None:
                oid, nid = nid, nid + 1
                stuff_ids[c] = oid
            out[region] = oid
            classes[oid] = c
            continue
        comp, n = ndimage.label(region, structure=structure)
        if n == 0:
            continue
        reuse = _reused_ids(comp, n, old, old_classes, c) if old is not None else {}
        lut = np.zeros(n + 1, np.uint32)
        for k in range(1, n + 1):
            oid = reuse.get(k)
            if oid is None:
                oid, nid = nid, nid + 1
            lut[k] = oid
            classes[oid] = c
        sel = comp > 0
        out[sel] = lut[comp[sel]]
    if nid - 1 > MAX_ID:
        raise InputError(f"object ids ran past {MAX_ID}; renumber the image's objects (export and import)")
    present_ids = set(ids_of(out).tolist())
    return out, {k: v for k, v in classes.items() if k in present_ids}


def _reused_ids(comp: np.ndarray, n: int, old: np.ndarray, old_classes: Mapping[int, int], c: int) -> dict:
    """For each new area, the old object of class ``c`` it lies on most or, lying on none, the
    one it touches most (each old id goes to one area at most), so re-committing keeps ids
    and painting beside an object extends it."""
    from scipy import ndimage

    votes = _votes(comp, old, old_classes, c)
    lonely = np.setdiff1d(np.arange(1, n + 1), votes[0]) if votes[0].size else np.arange(1, n + 1)
    if lonely.size:  # areas on no old object: look at the ring around them
        sub = np.where(np.isin(comp, lonely), comp, 0)
        box = ndimage.find_objects((sub > 0).astype(np.uint8))[0]
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        ring = _votes(ndimage.grey_dilation(sub[box], size=(3,) * comp.ndim), old[box], old_classes, c)
        votes = tuple(np.concatenate([v, r]) for v, r in zip(votes, ring))
    out, taken = {}, set()
    for k in np.argsort(-votes[2], kind="stable"):
        ci, oi = int(votes[0][k]), int(votes[1][k])
        if ci in out or oi in taken:
            continue
        out[ci] = oi
        taken.add(oi)
    return out


def _votes(comp: np.ndarray, old: np.ndarray, old_classes: Mapping[int, int], c: int):
    """``(area, old id, pixel count)`` for every pair of a new area and an old object of class ``c``."""
    sel = comp > 0
    cvals, ovals = comp[sel].astype(np.int64), old[sel].astype(np.int64)
    same = (ovals != 0) & (_class_of(ovals, old_classes) == c)
    cvals, ovals = cvals[same], ovals[same]
    if not cvals.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    base = int(cvals.max()) + 1
    keys, counts = np.unique(ovals * base + cvals, return_counts=True)
    return keys % base, keys // base, counts


def _class_of(ids: np.ndarray, classes: Mapping[int, int]) -> np.ndarray:
    keys, vals = class_lut(classes)
    if not len(keys):
        return np.full(ids.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return np.where(keys[pos] == ids, vals[pos], -1)


@dataclass(frozen=True)
class ObjectSums:
    """Per-object sums over one plane or one chunk, which add up over chunks: ``ids`` (sorted),
    ``area``, ``sum_y`` / ``sum_x`` (of pixel coordinates), ``boxes`` ``(n, 4)`` y0, x0, y1, x1
    (half-open) and ``provenance`` ``(n, 8)`` pixel counts per provenance code."""

    ids: np.ndarray
    area: np.ndarray
    sum_y: np.ndarray
    sum_x: np.ndarray
    boxes: np.ndarray
    provenance: np.ndarray


def object_sums(instances: np.ndarray, provenance: np.ndarray | None = None,
                offset: tuple[int, int] = (0, 0)) -> ObjectSums:
    """The :class:`ObjectSums` of one plane whose pixel [0, 0] is pixel ``offset`` of its image."""
    from scipy import ndimage

    if instances.ndim != 2:
        raise InputError(f"objects() takes one plane (H, W), got shape {instances.shape}")
    flat = instances.ravel()
    nz = np.flatnonzero(flat)
    if not nz.size:
        z = np.zeros(0, np.int64)
        return ObjectSums(z, z, z.astype(np.float64), z.astype(np.float64), np.zeros((0, 4), np.int64),
                          np.zeros((0, 8), np.int64))
    vals = flat[nz]
    if int(vals.max()) < _LUT_LIMIT:  # compact ids through a table: no sort
        ids = np.flatnonzero(np.bincount(vals)).astype(np.int64)
        lut = np.zeros(int(ids[-1]) + 1, np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        comp = lut[vals]
    else:
        ids, comp = np.unique(vals, return_inverse=True)
        ids = ids.astype(np.int64)
        comp = comp.astype(np.int64) + 1
    n = len(ids)
    area = np.bincount(comp, minlength=n + 1)[1:]
    rr, cc = np.divmod(nz, instances.shape[1])
    oy, ox = int(offset[0]), int(offset[1])
    sum_y = np.bincount(comp, rr, n + 1)[1:] + oy * area
    sum_x = np.bincount(comp, cc, n + 1)[1:] + ox * area
    compact = np.zeros(instances.shape, np.int32)
    compact.ravel()[nz] = comp
    boxes = np.array([(sy.start + oy, sx.start + ox, sy.stop + oy, sx.stop + ox)
                      for sy, sx in ndimage.find_objects(compact)], np.int64).reshape(n, 4)
    if provenance is not None:
        prov = np.bincount(comp * 8 + provenance.ravel()[nz], minlength=(n + 1) * 8).reshape(n + 1, 8)[1:]
    else:
        prov = np.zeros((n, 8), np.int64)
    return ObjectSums(ids, area, sum_y, sum_x, boxes, prov)


def objects_of_sums(sums: ObjectSums, classes: Mapping[int, int]) -> list[ObjectInfo]:
    """The objects (class, area, box, centroid, dominant provenance) that ``sums`` add up to."""
    cls = _class_of(sums.ids.astype(np.int64), classes)
    prov = sums.provenance.argmax(1) if len(sums.ids) else np.zeros(0, np.int64)
    out = []
    for k in range(len(sums.ids)):
        if cls[k] < 0:
            raise InputError(f"object id {int(sums.ids[k])} has no class")
        a = int(sums.area[k])
        out.append(ObjectInfo(int(sums.ids[k]), int(cls[k]), a, tuple(int(v) for v in sums.boxes[k]),
                              (float(sums.sum_y[k] / a), float(sums.sum_x[k] / a)), int(prov[k])))
    return out


def objects(instances: np.ndarray, classes: Mapping[int, int], provenance: np.ndarray | None = None) -> list[ObjectInfo]:
    """The objects of one plane with their class, area, box, centroid and dominant provenance."""
    return objects_of_sums(object_sums(instances, provenance), classes)


# ------------------------------------------------------------------ edits a person makes

def outlines(instances: np.ndarray) -> np.ndarray:
    """The objects' edge pixels (an id where a 4-neighbour holds another id, 0 elsewhere), in the
    smallest unsigned dtype that holds the ids: a display layer of outlines that needs no contour
    pass (and no uint32 colour mapping) on the UI thread."""
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise InputError(f"outlines need a 2-D instance map, got shape {inst.shape}")
    edge = np.zeros(inst.shape, bool)
    dy, dx = inst[1:] != inst[:-1], inst[:, 1:] != inst[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    top = int(inst.max()) if inst.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return np.where(edge & (inst > 0), inst, 0).astype(dtype)


def next_id(instances: np.ndarray, classes: Mapping[int, int] | None = None) -> int:
    """The smallest id above every id in use (in the map or its class table)."""
    top = int(instances.max()) if instances.size else 0
    if classes:
        top = max(top, max(int(k) for k in classes))
    if top >= MAX_ID:
        raise InputError(f"object ids are used up to {MAX_ID}; renumber the image's objects")
    return top + 1


def delete(instances: np.ndarray, classes: Mapping[int, int], oid: int) -> tuple[np.ndarray, dict[int, int]]:
    """The map without object ``oid`` (its pixels become background)."""
    if int(oid) not in classes:
        raise InputError(f"there is no object {oid} to delete")
    out = np.where(instances == oid, np.uint32(0), instances).astype(np.uint32)
    return out, {k: v for k, v in classes.items() if k != int(oid)}


def merge(instances: np.ndarray, classes: Mapping[int, int], ids) -> tuple[np.ndarray, dict[int, int]]:
    """Objects ``ids`` become one, under the first id and its class."""
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise InputError("merging takes two or more objects")
    for i in ids:
        if i not in classes:
            raise InputError(f"there is no object {i} to merge")
    keep = ids[0]
    out = np.where(np.isin(instances, np.asarray(ids[1:], np.uint32)), np.uint32(keep), instances).astype(np.uint32)
    return out, {k: v for k, v in classes.items() if k not in ids[1:]}


def split(instances: np.ndarray, classes: Mapping[int, int], oid: int, *, line: np.ndarray | None = None,
          seeds: tuple[tuple[int, int], tuple[int, int]] | None = None) -> tuple[np.ndarray, dict[int, int], int]:
    """Split object ``oid`` in two: along a scribble ``line`` (a boolean mask drawn across it)
    or between two clicks ``seeds`` ((y, x), (y, x)) inside it. The part holding the larger
    area keeps the id; returns ``(instances, classes, new_id)``."""
    from scipy import ndimage

    oid = int(oid)
    if oid not in classes:
        raise InputError(f"there is no object {oid} to split")
    obj = instances == oid
    if line is not None:
        line = np.asarray(line, bool)
        if line.shape != instances.shape:
            raise InputError(f"the split line has shape {line.shape}, expected {instances.shape}")
        parts, n = ndimage.label(obj & ~line)
        if n < 2:
            raise InputError(f"the scribble does not cut object {oid} in two; draw it right across the object")
        sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
        order = np.argsort(-sizes)
        a, b = order[0] + 1, order[1] + 1
        seed_map = np.zeros(instances.shape, np.int32)
        seed_map[parts == a], seed_map[parts == b] = 1, 2
    elif seeds is not None:
        (y0, x0), (y1, x1) = (tuple(int(v) for v in s) for s in seeds)
        for y, x in ((y0, x0), (y1, x1)):
            if not (0 <= y < obj.shape[0] and 0 <= x < obj.shape[1]) or not obj[y, x]:
                raise InputError(f"the click at ({y}, {x}) is not on object {oid}")
        if (y0, x0) == (y1, x1):
            raise InputError("splitting needs two different clicks")
        seed_map = np.zeros(instances.shape, np.int32)
        seed_map[y0, x0], seed_map[y1, x1] = 1, 2
    else:
        raise InputError("a split needs a scribble across the object or two clicks in it")
    # every pixel of the object goes to the nearer part (geodesic inside the object is not
    # needed for convex-ish parts; the straight-line distance keeps this fast)
    _, (iy, ix) = ndimage.distance_transform_edt(seed_map == 0, return_indices=True)
    nearest = seed_map[iy, ix]
    new = next_id(instances, classes)
    out = instances.copy()
    second = obj & (nearest == 2)
    first = obj & (nearest == 1)
    if first.sum() < second.sum():
        first, second = second, first
    out[second] = new
    table = dict(classes)
    table[new] = classes[oid]
    return out.astype(np.uint32), table, new
