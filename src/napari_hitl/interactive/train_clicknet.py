"""Train the click network with simulated interactions on the training sets only.

Objects come from ``bsds_regions`` (every region), ``camvid/train`` (connected areas of one
class) and ``dsb2018`` (nuclei); never from the benchmark sets (grabcut, berkeley, davis345).
Each sample is a crop around an object (or the whole image), with a few random clicks, or
extreme points, or scribbles to start; then, as in iterative training, the click robot
(:func:`napari_hitl.simulate.clicker.next_click`) adds clicks on the model's own errors for a
random number of rounds with the previous mask fed back, and the loss is taken on the last round.

    python -m napari_hitl.interactive.train_clicknet --data ../shared/data --out runs/clicknet
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRAIN_SETS = ("bsds_regions", "camvid/train", "dsb2018")
FORBIDDEN = ("grabcut", "berkeley", "davis345")
MIN_AREA = 150


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


def load_training_set(data: Path, limit: int | None = None, log=print) -> list[dict]:
    """Images with their instance maps and the ids of objects large enough to train on."""
    items = []
    for name in TRAIN_SETS:
        assert not any(f in name for f in FORBIDDEN)
        root = data / name
        if not root.is_dir():
            log(f"  (skipping absent {root})")
            continue
        images = sorted((root / "images").iterdir())[:limit]
        for p in images:
            if name == "bsds_regions":
                lab = _read_labels(root / "regions" / (p.stem + ".png")).astype(np.int32)
            elif name.startswith("camvid"):
                lab = _components(_read_labels(root / "masks" / (p.stem + ".png")))
            else:
                lab = _read_labels(root / "labels" / (p.stem + ".png")).astype(np.int32)
            areas = np.bincount(lab.ravel())
            ids = [i for i in range(1, len(areas)) if areas[i] >= MIN_AREA]
            if ids:
                items.append({"set": name, "name": p.stem, "image": _read_rgb(p), "labels": lab, "ids": ids})
        log(f"  {name}: {sum(1 for it in items if it['set'] == name)} images, "
            f"{sum(len(it['ids']) for it in items if it['set'] == name)} objects")
    return items


class Sampler:
    """Draws (image crop, object mask, initial prompt maps) training samples with a fixed seed."""

    def __init__(self, items: list[dict], seed: int, weights=(0.5, 0.3, 0.2)):
        self.rng = np.random.default_rng(seed)
        self.by_set = [[it for it in items if it["set"] == s] for s in TRAIN_SETS]
        w = np.array([wt if group else 0.0 for wt, group in zip(weights, self.by_set)])
        self.set_p = w / w.sum()

    def _crop(self, item, mask, mode):
        from napari_hitl.interactive.clicknet import EXTREME_EXPAND, full_crop, square_crop

        rng = self.rng
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)
        if mode == "full":
            return full_crop((h, w))
        size = box[2:] - box[:2]
        box += np.concatenate([size, size]) * rng.uniform(-0.08, 0.08, 4)
        expand = rng.uniform(1.15, 1.5) if mode == "extreme" else rng.uniform(1.3, 2.0)
        return square_crop(box, expand, min_side=40 if mode != "extreme" else 24)

    def sample(self):
        """(image crop HxWx3 float32, truth bool, maps (3,S,S) float32, mode)."""
        import cv2

        from napari_hitl.interactive.clicknet import warp_to_crop
        from napari_hitl.interactive.clicknet_net import CLICK_RADIUS, CROP_SIZE, SCRIBBLE_WIDTH

        rng = self.rng
        S = CROP_SIZE
        while True:
            group = self.by_set[rng.choice(len(self.by_set), p=self.set_p)]
            item = group[rng.integers(len(group))]
            oid = item["ids"][rng.integers(len(item["ids"]))]
            mask = item["labels"] == oid
            frac = mask.mean()
            u = rng.random()
            mode = "extreme" if u < 0.15 else "scribble" if u < 0.25 else "clicks"
            full = mode == "clicks" and rng.random() < 0.3 and 0.01 < frac < 0.8
            crop = self._crop(item, mask, "full" if full else mode)
            img = item["image"]
            if rng.random() < 0.5:  # horizontal flip of the crop, done on the source
                img, lab = img[:, ::-1], item["labels"][:, ::-1]
                crop = (crop[0], img.shape[1] - crop[1] - crop[2], crop[2])
            else:
                lab = item["labels"]
            patch = warp_to_crop(np.ascontiguousarray(img), crop, S).astype(np.float32) / 255.0
            labc = warp_to_crop(np.ascontiguousarray(lab).astype(np.float32), crop, S, nearest=True, fill=-1)
            truth = labc == oid
            if truth.sum() < 20:
                continue
            # mild colour jitter
            patch = np.clip(patch * rng.uniform(0.8, 1.2, 3) + rng.uniform(-0.06, 0.06), 0, 1).astype(np.float32)
            maps = np.zeros((3, S, S), np.float32)
            dist = cv2.distanceTransform(np.pad(truth, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            if mode == "extreme":
                yy, xx = np.nonzero(truth)
                pts = []
                for arr, pick in ((xx, np.argmin), (xx, np.argmax), (yy, np.argmin), (yy, np.argmax)):
                    ext = arr == arr[pick(arr)]
                    k = rng.choice(np.flatnonzero(ext))
                    pts.append((yy[k], xx[k]))
                pts = np.array(pts, np.float64) + rng.normal(0, 2.0, (4, 2))
                for y, x in pts:
                    cv2.circle(maps[0], (int(round(x)), int(round(y))), CLICK_RADIUS, 1.0, -1)
            elif mode == "scribble":
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
                bg = ~truth & (labc >= 0)
                near = bg & (cv2.dilate(truth.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0)
                cand = np.flatnonzero((near if rng.random() < 0.6 and near.any() else bg).ravel())
                if cand.size:
                    for k in rng.choice(cand, size=n_neg):
                        cv2.circle(maps[1], (int(k % S), int(k // S)), CLICK_RADIUS, 1.0, -1)
            return patch, truth, maps, mode


def git_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def loss_fn(logits, truth):
    """Binary cross-entropy plus soft IoU loss at crop resolution."""
    import torch.nn.functional as F

    up = F.interpolate(logits, size=truth.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(up, truth)
    p = up.sigmoid()
    inter = (p * truth).sum((1, 2, 3))
    union = (p + truth - p * truth).sum((1, 2, 3))
    return bce + (1 - (inter + 1) / (union + 1)).mean(), up


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("runs/clicknet"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-rounds", type=int, default=3, help="robot rounds before the loss, 0..N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--limit", type=int, default=None, help="images per set (smoke tests)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-time budget: the learning-rate schedule follows the larger of the step "
                         "and time fractions, and training stops when either runs out")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    args = ap.parse_args(argv)
    import cv2
    import torch
    import torch.nn.functional as F

    from napari_hitl.interactive.clicknet_net import CLICK_RADIUS, CROP_SIZE, build_clicknet
    from napari_hitl.model.backbone import describe_device, select_device
    from napari_hitl.simulate.clicker import next_click

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = select_device(args.device)
    print(f"device: {describe_device(device)}", flush=True)
    t_load = time.time()
    items = load_training_set(args.data, args.limit)
    print(f"loaded {len(items)} images in {time.time() - t_load:.0f}s", flush=True)
    sampler = Sampler(items, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    net = build_clicknet().to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in net.encoder.parameters()}
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) in enc_ids], "lr": args.lr * 0.3},
                             {"params": [p for p in params if id(p) not in enc_ids], "lr": args.lr}],
                            weight_decay=1e-4)
    base = [g["lr"] for g in opt.param_groups]
    start = 0
    if args.resume:
        ck = torch.load(args.resume, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in ck["model"].items()}, strict=False)
        opt.load_state_dict(ck["opt"])
        start = int(ck["step"])
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "train.log", "a")
    commit = git_commit(Path(__file__).resolve().parents[3])  # the code that runs, read once
    t0 = time.time()
    hist = []
    S = CROP_SIZE
    for step in range(start, args.steps):
        frac = step / args.steps
        if args.minutes:
            frac = max(frac, (time.time() - t0) / (60 * args.minutes))
        last = frac >= 1.0 or step + 1 == args.steps
        warm = min(1.0, (step + 1) / 50)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * warm * 0.5 * (1 + np.cos(np.pi * frac))
        samples = [sampler.sample() for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([s[0].transpose(2, 0, 1) for s in samples])).to(device)
        truth_np = np.stack([s[1] for s in samples])
        truth = torch.from_numpy(truth_np[:, None].astype(np.float32)).to(device)
        maps_np = np.stack([s[2] for s in samples])
        net.train()
        parts = [net.encode(x[i:i + 2]) for i in range(0, len(x), 2)]  # small chunks: less memory traffic
        cache = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        rounds = int(rng.integers(0, args.max_rounds + 1))
        if rounds:
            net.eval()
            with torch.no_grad():
                for _ in range(rounds):
                    logits = net.decode(cache, torch.from_numpy(maps_np).to(device))
                    up = F.interpolate(logits, size=(S, S), mode="bilinear", align_corners=False)
                    pred = (up[:, 0] > 0).cpu().numpy()
                    maps_np[:, 2] = pred
                    for i in range(len(samples)):
                        c = next_click(pred[i], truth_np[i])
                        if c is not None:
                            cv2.circle(maps_np[i, 0 if c.positive else 1], (int(c.x), int(c.y)),
                                       CLICK_RADIUS, 1.0, -1)
            net.train()
        maps = torch.from_numpy(maps_np).to(device)
        logits = net.decode(cache, maps)
        loss, up = loss_fn(logits, truth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            pb = up > 0
            iou = ((pb & (truth > 0)).sum((1, 2, 3)) / ((pb | (truth > 0)).sum((1, 2, 3)).clamp_min(1))).mean()
        hist.append((float(loss.detach()), float(iou), rounds))
        if (step + 1) % 10 == 0:
            h = np.array(hist[-50:])
            msg = (f"step {step + 1}/{args.steps} loss {h[:, 0].mean():.4f} iou {h[:, 1].mean():.3f} "
                   f"lr {opt.param_groups[1]['lr']:.2e} {time.time() - t0:.0f}s")
            print(msg, flush=True)
            log.write(msg + "\n")
            log.flush()
        if (step + 1) % args.save_every == 0 or last:
            state = {k: v.half() for k, v in net.trainable_state().items()}
            torch.save({"model": state, "opt": opt.state_dict(), "step": step + 1}, args.out / "last.pt")
            torch.save(state, args.out / "clicknet.pt")
            meta = {
                "command": "python -m napari_hitl.interactive.train_clicknet " + " ".join(sys.argv[1:] if argv is None else argv),
                "data": {s: "../shared/data/" + s for s in TRAIN_SETS},
                "never_trained_on": list(FORBIDDEN),
                "images": {s: sum(1 for it in items if it["set"] == s) for s in TRAIN_SETS},
                "objects": {s: sum(len(it["ids"]) for it in items if it["set"] == s) for s in TRAIN_SETS},
                "seed": args.seed, "steps": step + 1, "batch": args.batch,
                "samples": (step + 1) * args.batch, "max_robot_rounds": args.max_rounds, "lr": args.lr,
                "train_seconds": round(time.time() - t0, 1), "device": describe_device(device),
                "git_commit": commit,
                "last_train_iou": float(np.mean([h[1] for h in hist[-50:]])),
            }
            (args.out / "clicknet.json").write_text(json.dumps(meta, indent=2))
        if last:
            break
    log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
