"""Disk cache of the click network's frozen encoder outputs, one row per augmented training crop.

The frozen part of :mod:`.clicknet_net` (stem and blocks 0-10) ends before the prompts enter, so
its outputs (``f4``, ``f8``, ``f16``: what ``ClickNet.encode`` returns and the decoder uses) depend
only on the crop. Each row fixes one crop of one object (scale, box jitter, flip, colour jitter,
sometimes a neighbour merged into the target) and holds those features in float16 plus the
target and valid-pixel masks; a training step then costs only the trainable part. Rows live in
shards (``shard_NNNN/*.npy``, memory-mapped when read) under a folder outside git; a shard is
complete once its ``done`` file exists, so an interrupted build resumes shard by shard.
Torch is imported lazily.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from napari_hitl.interactive.clicknet_net import CROP_SIZE

#: cached feature maps: name -> (channels, side) for a CROP_SIZE crop (encoder blocks 2, 4 and 10)
FEATURES = {"f4": (24, CROP_SIZE // 4), "f8": (40, CROP_SIZE // 8), "f16": (112, CROP_SIZE // 16)}
#: rows per shard
SHARD_ROWS = 128
#: probability that a cached target is its object merged with a touching neighbour
MERGE_P = 0.15
#: bumped when the row recipe changes, so an old cache is never mixed with a new one
CACHE_VERSION = 1


# --- one crop: draw its parameters, then render it -------------------------------------------

def _neighbours(labels: np.ndarray, mask: np.ndarray, ids) -> list[int]:
    """Ids in ``ids`` of the objects touching ``mask`` (within 3 pixels)."""
    import cv2

    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 4, 0), min(ys.max() + 5, mask.shape[0])
    x0, x1 = max(xs.min() - 4, 0), min(xs.max() + 5, mask.shape[1])
    sub = mask[y0:y1, x0:x1].astype(np.uint8)
    ring = (cv2.dilate(sub, np.ones((7, 7), np.uint8)) > 0) & ~sub.astype(bool)
    near = set(np.unique(labels[y0:y1, x0:x1][ring]).tolist())
    return [int(i) for i in ids if i in near]


def draw_row(item: dict, oid: int, rng: np.random.Generator, merge_p: float = MERGE_P) -> dict:
    """Random parameters of one training crop of object ``oid`` of ``item`` (JSON-able).

    ``kind``: "extreme" (tight box, for extreme points), "local" (box times 1.3-2, clicks or
    scribbles) or "full" (the whole image, as the engine's first click sees it).
    """
    from napari_hitl.interactive.clicknet import full_crop, square_crop

    labels = item["labels"]
    mask = labels == oid
    merged = 0
    if rng.random() < merge_p:
        near = [i for i in _neighbours(labels, mask, item["ids"]) if i != oid]
        if near:
            merged = int(near[rng.integers(len(near))])
            mask = mask | (labels == merged)
    h, w = mask.shape
    frac = float(mask.mean())
    kind = "extreme" if rng.random() < 0.15 else "local"
    if kind == "local" and rng.random() < 0.3 and 0.01 < frac < 0.8:
        kind = "full"
    if kind == "full":
        crop = full_crop((h, w))
    else:
        ys, xs = np.nonzero(mask)
        box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)
        size = box[2:] - box[:2]
        box += np.concatenate([size, size]) * rng.uniform(-0.08, 0.08, 4)
        expand = rng.uniform(1.15, 1.5) if kind == "extreme" else rng.uniform(1.3, 2.0)
        crop = square_crop(box, expand, min_side=24 if kind == "extreme" else 40)
    return {"set": item["set"], "name": item["name"], "oid": int(oid), "merged": merged, "kind": kind,
            "crop": [float(v) for v in crop], "flip": bool(rng.random() < 0.5),
            "gain": [float(v) for v in rng.uniform(0.8, 1.2, 3)], "bias": float(rng.uniform(-0.06, 0.06))}


def render_row(item: dict, row: dict, size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patch HxWx3 float32 in [0, 1], target bool, valid bool) of a row drawn by :func:`draw_row`."""
    from napari_hitl.interactive.clicknet import warp_to_crop

    img, lab = item["image"], item["labels"]
    y0, x0, side = row["crop"]
    if row["flip"]:  # horizontal flip of the crop, done on the source
        img, lab = img[:, ::-1], lab[:, ::-1]
        x0 = img.shape[1] - x0 - side
    crop = (y0, x0, side)
    patch = warp_to_crop(np.ascontiguousarray(img), crop, size).astype(np.float32) / 255.0
    labc = warp_to_crop(np.ascontiguousarray(lab).astype(np.float32), crop, size, nearest=True, fill=-1)
    truth = labc == row["oid"]
    if row["merged"]:
        truth |= labc == row["merged"]
    patch = np.clip(patch * np.asarray(row["gain"], np.float32) + np.float32(row["bias"]), 0, 1).astype(np.float32)
    return patch, truth, labc >= 0


def crop_plan(items: list[dict], n: int, seed: int, share: dict[str, float]) -> list[tuple[int, int]]:
    """``n`` (item index, object id) pairs: sets drawn by ``share``, each set's objects in a seeded
    order, cycled (so objects get several copies). The first k entries do not depend on ``n``."""
    rng = np.random.default_rng([seed, 7])
    sets = [s for s in share if any(it["set"] == s for it in items)]
    objects = {}
    for s in sets:
        objs = [(i, oid) for i, it in enumerate(items) if it["set"] == s for oid in it["ids"]]
        objects[s] = [objs[k] for k in rng.permutation(len(objs))]
    p = np.array([share[s] for s in sets], np.float64)
    pick = np.searchsorted(np.cumsum(p / p.sum()), rng.random(n), side="right").clip(0, len(sets) - 1)
    used = {s: 0 for s in sets}
    plan = []
    for k in pick:
        s = sets[k]
        plan.append(objects[s][used[s] % len(objects[s])])
        used[s] += 1
    return plan


# --- build and read ---------------------------------------------------------------------------

def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def build_cache(root: Path, items: list[dict], n_rows: int, seed: int, share: dict[str, float], net=None,
                config: dict | None = None, shard_rows: int = SHARD_ROWS, merge_p: float = MERGE_P,
                log=print) -> "CropCache":
    """Fill ``root`` with ``n_rows`` cached crops (skipping complete shards) and return the cache.

    Row k of shard j is drawn with ``default_rng([seed, j, k])``, so a rebuilt or extended cache
    holds the same rows. ``config`` (data, limit, ...) is stored and must match on reuse.
    """
    import time

    import torch

    from napari_hitl.interactive.clicknet_net import build_clicknet

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"version": CACHE_VERSION, "seed": seed, "crop_size": CROP_SIZE, "share": share,
           "shard_rows": shard_rows, "merge_p": merge_p, **(config or {})}
    cfg_path = root / "config.json"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if old != json.loads(json.dumps(cfg)):
            raise RuntimeError(f"the crop cache at {root} was built with other settings ({old}); use another "
                               f"--cache folder or delete it")
    else:
        cfg_path.write_text(json.dumps(cfg, indent=1))
    plan = crop_plan(items, n_rows, seed, share)
    if net is None:
        net = build_clicknet(pretrained=True)
    net.eval()
    t0 = time.time()
    n_shards = (n_rows + shard_rows - 1) // shard_rows
    for j in range(n_shards):
        folder = root / f"shard_{j:04d}"
        entries = plan[j * shard_rows:(j + 1) * shard_rows]
        if (folder / "done").is_file() and len(json.loads((folder / "rows.json").read_text())) >= len(entries):
            continue
        (folder / "done").unlink(missing_ok=True)  # a short last shard of a smaller cache: rebuilt in full
        folder.mkdir(exist_ok=True)
        m = len(entries)
        feats = {k: np.zeros((m, c, s, s), np.float16) for k, (c, s) in FEATURES.items()}
        truth = np.zeros((m, CROP_SIZE * CROP_SIZE // 8), np.uint8)
        valid = np.zeros_like(truth)
        rows = []
        patches = []
        for k, (i, oid) in enumerate(entries):
            rng = np.random.default_rng([seed, j, k])
            while True:  # a crop whose target is too small after resampling: draw again
                row = draw_row(items[i], oid, rng, merge_p)
                patch, t, v = render_row(items[i], row)
                if t.sum() >= 20:
                    break
            rows.append(row)
            patches.append(patch)
            truth[k], valid[k] = np.packbits(t), np.packbits(v)
            if len(patches) == 8 or k == m - 1:
                x = torch.from_numpy(np.stack([p.transpose(2, 0, 1) for p in patches]))
                with torch.no_grad():
                    out = net.encode(x)
                for name in FEATURES:
                    feats[name][k + 1 - len(patches):k + 1] = out[name].numpy().astype(np.float16)
                patches = []
        for name, arr in feats.items():
            _save_npy(folder / f"{name}.npy", arr)
        _save_npy(folder / "truth.npy", truth)
        _save_npy(folder / "valid.npy", valid)
        (folder / "rows.json").write_text(json.dumps(rows))
        (folder / "done").write_text("")
        el = time.time() - t0
        log(f"cache shard {j + 1}/{n_shards} ({min((j + 1) * shard_rows, n_rows)} rows) {el:.0f}s")
    return CropCache(root, n_rows)


class CropCache:
    """Read side of the cache: features (float16), target and valid masks, row parameters."""

    def __init__(self, root: Path, n_rows: int | None = None):
        root = Path(root)
        self.root = root
        self.shards = []
        for folder in sorted(root.glob("shard_*")):
            if not (folder / "done").is_file():
                break
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in (*FEATURES, "truth", "valid")}
            arrays["rows"] = json.loads((folder / "rows.json").read_text())
            self.shards.append(arrays)
        sizes = [len(s["rows"]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.n = total if n_rows is None else min(total, int(n_rows))
        if self.n == 0:
            raise RuntimeError(f"no complete cache shards under {root}")

    def __len__(self) -> int:
        return self.n

    def _locate(self, idx):
        idx = np.asarray(idx, np.int64)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"cache rows {idx} outside 0..{self.n - 1}")
        j = np.searchsorted(self.offsets, idx, side="right") - 1
        return j, idx - self.offsets[j]

    def row(self, i: int) -> dict:
        j, k = self._locate([i])
        return self.shards[int(j[0])]["rows"][int(k[0])]

    def get(self, idx) -> dict:
        """Rows ``idx``: ``f4``/``f8``/``f16`` float16 arrays, ``truth``/``valid`` (n, S, S) bool, ``kind`` list."""
        js, ks = self._locate(idx)
        out = {name: np.stack([self.shards[j][name][k] for j, k in zip(js, ks)]) for name in FEATURES}
        for name in ("truth", "valid"):
            bits = np.stack([self.shards[j][name][k] for j, k in zip(js, ks)])
            out[name] = np.unpackbits(bits, axis=1).reshape(len(bits), CROP_SIZE, CROP_SIZE).astype(bool)
        out["kind"] = [self.shards[j]["rows"][k]["kind"] for j, k in zip(js, ks)]
        return out
