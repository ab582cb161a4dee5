"""Video benchmark: label a few units per round, propagate to every frame; mIoU against clicks.

Per round a simulated annotator labels units (frames, rectangles or superpixels) picked by
margin uncertainty + k-means diversity (motion + diversity in round one where the flow is
trusted, else diversity alone) from the fine-tune + temporal model; then three methods label
every frame from the same human labels: plain label propagation along optical flow,
fine-tuning without the temporal term (lambda = 0) and fine-tuning with it (its weight set per
video from the flow's evidence). Prints clicks (% of full annotation), mIoU (classes pooled over
frames, background included), the DAVIS J (object IoU per frame), F (boundary F-measure) and
J&F, pixel accuracy, boundary IoU and temporal consistency per round and per sequence; writes
JSON and a PNG plot. ``napari-hitl bench video-cv`` chooses the temporal term's settings by
cross-validation over sequences (:mod:`napari_hitl.evaluate.bench_video_cv`).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from napari_hitl.errors import InputError

METHODS = ("propagation", "finetune", "finetune+temporal")
METRICS = ("miou", "J", "F", "J&F", "pixel_acc", "boundary_iou", "temporal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="../shared/data/davis2016, ../shared/data/ctc_sim, "
                        "or one sequence folder (frames/ + masks/)")
    parser.add_argument("--unit", default="rect40", help="annotation unit: frame, rect<N> (e.g. rect40), "
                        "superpixel<N> (e.g. superpixel300)")
    parser.add_argument("--rounds", type=int, default=3, help="annotate-then-propagate rounds (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=1.5,
                        help="clicks per round, in %% of the clicks a full annotation of the video costs")
    parser.add_argument("--sequences", help="comma-separated subset of sequences (default: all)")
    parser.add_argument("--limit-frames", type=int, default=0, help="use at most N frames per sequence (0: all)")
    parser.add_argument("--scale", type=float, default=0.5,
                        help="working resolution of flow and model, as a factor of the frame size")
    parser.add_argument("--steps", type=int, default=120, help="fine-tuning steps per round")
    parser.add_argument("--lam", type=float, default=None,
                        help="weight of the temporal-consistency term, the most it may reach with the adaptive "
                        "weight (default: FineTuneSettings.lam)")
    parser.add_argument("--fixed-lam", action="store_true",
                        help="use --lam on every video as it is (the seed's global weight) instead of setting it "
                        "per video from the flow's evidence")
    parser.add_argument("--trust-low", type=float, default=None,
                        help="flow trust at or below which the temporal weight is 0 (default: FineTuneSettings)")
    parser.add_argument("--trust-high", type=float, default=None,
                        help="flow trust from which the temporal weight is --lam (default: FineTuneSettings)")
    parser.add_argument("--agree-low", type=float, default=None,
                        help="agreement of the labels carried along the flow with the model's prediction at or "
                        "below which the temporal weight is 0 (default: FineTuneSettings; give both bounds)")
    parser.add_argument("--agree-high", type=float, default=None,
                        help="agreement from which it no longer lowers the weight (default: FineTuneSettings)")
    parser.add_argument("--motion-trust-min", type=float, default=None,
                        help="round one ranks by motion only when the flow's confidence on moving pixels reaches "
                        "this (default: session.MOTION_TRUST_MIN; 0: always, as before)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of methods (finetune+temporal always runs: it picks the units)")
    parser.add_argument("--flow", default="dis", help="flow method: dis, dis_fast, farneback")
    parser.add_argument("--cache", help="folder for cached flows (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true",
                        help="only time one round as the dock runs it (flows, pick, fine-tune + temporal, "
                        "predict) on 100 frames: the first sequence played forward and back")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--plot", help="write a PNG plot of mIoU and temporal consistency vs clicks here")


# -- data ---------------------------------------------------------------------------------------

def select_videos(videos: list, sequences: str | None) -> list:
    """The ``videos`` (from :func:`find_videos`) named in the comma-separated ``sequences``
    (all when empty); an unknown name is an error that lists the ones there are."""
    if not sequences:
        return videos
    wanted = [s.strip() for s in sequences.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {v[0] for v in videos})
    if unknown:
        raise InputError(f"unknown sequence(s) {', '.join(unknown)}; have {', '.join(v[0] for v in videos)}")
    return [v for v in videos if v[0] in wanted]

def find_videos(root: Path) -> list[tuple[str, Path, str]]:
    """(name, folder, layout) of every video under ``root``: DAVIS style (frames/ + masks/) or
    Cell Tracking Challenge style (NN/images/tNNN.tif + NN/masks/man_segNNN.tif)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"video data folder {root} does not exist")

    def layout(p: Path) -> str | None:
        if (p / "frames").is_dir() and (p / "masks").is_dir():
            return "davis"
        if (p / "images").is_dir() and (p / "masks").is_dir():
            return "ctc"
        return None

    if layout(root):
        return [(root.name, root, layout(root))]
    out = [(p.name, p, layout(p)) for p in sorted(root.iterdir()) if p.is_dir() and layout(p)]
    if not out:
        raise InputError(f"no videos in {root}: expected <seq>/frames + <seq>/masks or NN/images + NN/masks")
    return out


def load_video(folder: Path, layout: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W[, 3]) uint8 and binary truth (T, H, W) int16 (0 background, 1 object)."""
    from napari_hitl.io import list_images, read_image

    # frames and masks pair by the number in their names (00012.jpg / 00012.png, t012 / man_seg012)
    frames = list_images(folder / ("frames" if layout == "davis" else "images"))
    pairs = _match(frames, list_images(folder / "masks"), lambda p: int(re.sub(r"\D", "", p.stem) or -1))
    if limit:
        pairs = pairs[:limit]
    imgs = np.stack([read_image(f) for f, _ in pairs])
    truth = np.stack([(read_image(m) > 0).astype(np.int16) for _, m in pairs])
    if imgs.ndim == 4:
        imgs = imgs[..., :3]
    if imgs.dtype != np.uint8:  # one stretch for the whole stack keeps brightness comparable over time
        lo, hi = np.percentile(imgs[::max(1, len(imgs) // 10)], (0.5, 99.8))
        imgs = np.clip((imgs.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)) + 0.5, 0, 255).astype(np.uint8)
    return imgs, truth


def _match(frames, masks, key):
    by_key = {key(m): m for m in masks}
    pairs = [(f, by_key[key(f)]) for f in frames if key(f) in by_key]
    if not pairs:
        raise InputError(f"no frame in {frames[0].parent if frames else '?'} has a mask of the same number")
    return pairs


# -- metrics ------------------------------------------------------------------------------------
def temporal_consistency(pred: np.ndarray, flows, num_classes: int) -> float:
    """Mean IoU between consecutive predictions after warping the later one onto the earlier
    (along the flow, on trusted pixels only); predictions are resampled to the flows' size."""
    from napari_hitl.evaluate.metrics import confusion_matrix
    from napari_hitl.video.flow import warp_labels
    from napari_hitl.video.propagate import resize_labels

    shape = np.asarray(flows.frames[0]).shape[:2]
    small = resize_labels(pred, shape)
    vals = []
    for t in range(len(small) - 1):
        warped = warp_labels(small[t + 1], flows.flow(t, t + 1)).astype(np.int64)
        warped[~flows.trusted(t, t + 1)] = -1  # left out of the confusion matrix
        cm = confusion_matrix(small[t], warped, num_classes)
        inter = np.diag(cm).astype(np.float64)
        union = cm.sum(0) + cm.sum(1) - inter
        vals.append(float(np.mean(inter[union > 0] / union[union > 0])) if (union > 0).any() else 1.0)
    return float(np.mean(vals)) if vals else 1.0


def score(pred: np.ndarray, truth: np.ndarray, flows, num_classes: int = 2) -> dict:
    """mIoU (over classes, pixels of all frames pooled), the DAVIS J, F and J&F of the object
    (class 1; means over frames), pixel accuracy, mean boundary IoU of the object classes per
    frame, temporal consistency."""
    from napari_hitl.evaluate.metrics import boundary_iou, confusion_matrix, j_and_f

    cm = np.zeros((num_classes, num_classes), np.int64)
    bious = []
    for p, t in zip(pred, truth):
        cm += confusion_matrix(p, t, num_classes)
        for c in range(1, num_classes):
            if (t == c).any() or (p == c).any():
                bious.append(boundary_iou(p == c, t == c))
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    jf = j_and_f(pred, truth, obj=1)
    return {"miou": float(np.mean(inter[union > 0] / union[union > 0])),
            "J": jf["J"], "F": jf["F"], "J&F": jf["J&F"],
            "pixel_acc": float(inter.sum() / max(cm.sum(), 1)),
            "boundary_iou": float(np.mean(bious)) if bious else 1.0,
            "temporal": temporal_consistency(pred, flows, num_classes)}


# -- the run ------------------------------------------------------------------------------------
class _Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, text: str, done: int | None = None, total: int | None = None) -> None:
        now = time.perf_counter()
        final = done is None or done == total
        if not final and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        msg = text if done is None else f"{text} {done}/{total}"
        if self.tty:
            sys.stderr.write("\r\033[K" + msg + ("\n" if done is None else ""))
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def new_session(frames: np.ndarray, args, cache_dir: Path, progress=None):
    """The binary :class:`~napari_hitl.video.session.VideoSession` a run works with (unit,
    scale, flow method and fine-tuning settings from the command line)."""
    from dataclasses import replace

    from napari_hitl.video.finetune import FineTuneSettings
    from napari_hitl.video.session import MOTION_TRUST_MIN, VideoSession

    settings = FineTuneSettings(steps=args.steps, lam=session_lam(args), seed=args.seed)
    if getattr(args, "fixed_lam", False):
        settings = replace(settings, adaptive=False)
    for key in ("trust_low", "trust_high", "agree_low", "agree_high"):
        if getattr(args, key, None) is not None:
            settings = replace(settings, **{key: float(getattr(args, key))})
    mt = getattr(args, "motion_trust_min", None)
    return VideoSession(frames, 2, args.unit, cache_dir=cache_dir, scale=args.scale, flow_method=args.flow,
                        settings=settings, progress=progress,
                        motion_trust_min=MOTION_TRUST_MIN if mt is None else float(mt))


def round_budget(full_cost: int, args) -> int:
    """Clicks per round: ``--budget`` percent of the full annotation's clicks (at least one)."""
    return max(1, int(round(full_cost * args.budget / 100.0)))


def run_video(name: str, frames: np.ndarray, truth: np.ndarray, args, cache: Path, say,
              on_round: Callable[[dict], None] | None = None) -> dict:
    """All rounds of one video; returns its figures (per round, per method). ``on_round(record)``
    gets the video's record so far after every round (a long run then keeps finished rounds)."""
    from napari_hitl.evaluate.annotate import annotate_budget
    from napari_hitl.simulate.cost import full_annotation_cost

    t0 = time.perf_counter()
    session = new_session(frames, args, cache / name, progress=lambda what, d, n: say(f"[{name}] {what}", d, n))
    setup = {"units": time.perf_counter() - t0}
    t = time.perf_counter()
    session.precompute_flows()
    setup["flows"] = time.perf_counter() - t
    t = time.perf_counter()
    full = full_annotation_cost(truth)
    setup["full_cost"] = time.perf_counter() - t
    budget = round_budget(full, args)
    say(f"[{name}] {len(frames)} frames {frames.shape[2]}x{frames.shape[1]} -> working "
        f"{session.work_shape[1]}x{session.work_shape[0]}; {len(session.units)} units ({session.units.name}); "
        f"full annotation {full} clicks, {budget} per round; flows {setup['flows']:.0f} s")
    methods = _methods(args)
    tuners = {"finetune+temporal": session.new_tuner()}
    if "finetune" in methods:
        tuners["finetune"] = session.new_tuner(0.0)
    t = time.perf_counter()
    probs, feats = tuners["finetune+temporal"].predict(with_features=True)  # ImageNet features for round one
    setup["first_features"] = time.perf_counter() - t
    rounds = []
    for r in range(1, args.rounds + 1):
        rec = annotate_budget(session, truth, budget, probs, feats, first_round=(r == 1), seed=args.seed + r)
        row = {"round": r, "units": len(rec.units), "unit_ids": list(rec.units), "clicks": session.clicks,
               "clicks_pct": 100.0 * session.clicks / full, "seconds": dict(rec.seconds), "methods": {}}
        if "propagation" in methods:
            t = time.perf_counter()
            pred = session.propagate()
            row["seconds"]["propagation"] = time.perf_counter() - t
            row["methods"]["propagation"] = score(pred, truth, session.flows)
        labels = session.work_labels()
        for method in [m for m in ("finetune", "finetune+temporal") if m in methods]:
            tuner = tuners[method]
            t = time.perf_counter()
            fit = tuner.fit(labels, progress=lambda s, n, loss: say(f"[{name}] round {r} {method} step", s, n))
            row["seconds"][f"{method} fit"] = fit["seconds"]
            t = time.perf_counter()
            out = tuner.predict(with_features=method == "finetune+temporal",
                                progress=lambda d, n: say(f"[{name}] round {r} {method} predict", d, n))
            row["seconds"][f"{method} predict"] = time.perf_counter() - t
            if method == "finetune+temporal":
                probs, feats = out  # the next round picks units with this model
                out = probs
            pred = session.labels_from_probs(out)
            row["methods"][method] = score(pred, truth, session.flows)
            row["methods"][method]["loss"] = {k: fit[k] for k in ("loss", "ce", "temporal")}
            row["methods"][method]["lam"] = fit["lam"]
            row["methods"][method]["evidence"] = fit["evidence"]
        s = row["seconds"]
        # what a person waits for per round in the product: pick + fine-tune + temporal, predict
        row["round_seconds"] = (s["score"] + s["finetune+temporal fit"] + s["finetune+temporal predict"])
        rounds.append(row)
        if on_round is not None:
            on_round(_video_record(name, frames, session, full, budget, setup, rounds, tuners))
        say(f"[{name}] round {r}: {row['units']} units, clicks {row['clicks_pct']:.2f}% | " + " | ".join(
            f"{m} mIoU {row['methods'][m]['miou']:.3f} J {row['methods'][m]['J']:.3f}" for m in methods)
            + f" | lam {row['methods']['finetune+temporal']['lam']:.1f} | round {row['round_seconds']:.0f} s")
    return _video_record(name, frames, session, full, budget, setup, rounds, tuners)


def _video_record(name, frames, session, full, budget, setup, rounds, tuners) -> dict:
    return {"name": name, "frames": int(len(frames)), "size": [int(frames.shape[1]), int(frames.shape[2])],
            "work_size": list(session.work_shape), "units": len(session.units), "unit": session.units.name,
            "full_cost": int(full), "budget_per_round": budget, "setup_seconds": setup, "rounds": rounds,
            "motion_trust": session.motion_trust, "round_one_motion": bool(session.flow_trusted()),
            "device": tuners["finetune+temporal"].device_description}


def session_lam(args) -> float:
    """The temporal weight a run uses: ``--lam``, else the default of FineTuneSettings."""
    from napari_hitl.video.finetune import FineTuneSettings

    return FineTuneSettings().lam if args.lam is None else float(args.lam)


def _trust_settings(args) -> dict:
    """The trust bounds and round-one motion threshold a run uses (flags, else the defaults)."""
    from napari_hitl.video.finetune import FineTuneSettings
    from napari_hitl.video.session import MOTION_TRUST_MIN

    d = FineTuneSettings()
    pick = lambda v, default: float(default if v is None else v)  # noqa: E731
    agree = [getattr(args, k, None) for k in ("agree_low", "agree_high")]
    agree = [d.agree_low, d.agree_high] if agree == [None, None] else agree
    if (agree[0] is None) != (agree[1] is None):
        raise InputError("give both --agree-low and --agree-high, or neither")
    return {"trust_low": pick(args.trust_low, d.trust_low), "trust_high": pick(args.trust_high, d.trust_high),
            "agree_low": agree[0] if agree[0] is None else float(agree[0]),
            "agree_high": agree[1] if agree[1] is None else float(agree[1]),
            "motion_trust_min": pick(args.motion_trust_min, MOTION_TRUST_MIN)}


def _methods(args) -> list[str]:
    wanted = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    bad = sorted(set(wanted) - set(METHODS))
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in wanted or m == "finetune+temporal"]


def summarise(videos: list[dict], rounds: int) -> list[dict]:
    """Per round: clicks % over all videos (pooled clicks / pooled full cost), each metric's
    mean over videos per method, and the worst video's mIoU and J (name and value)."""
    out = []
    full = sum(v["full_cost"] for v in videos)
    for r in range(rounds):
        have = [v for v in videos if len(v["rounds"]) > r]
        rows = [v["rounds"][r] for v in have]
        if not rows:
            break
        entry = {"round": r + 1, "clicks_pct": 100.0 * sum(x["clicks"] for x in rows) / max(full, 1),
                 "round_seconds": float(np.mean([x["round_seconds"] for x in rows])), "methods": {}}
        for m in METHODS:
            if all(m in x["methods"] for x in rows):
                entry["methods"][m] = {k: float(np.mean([x["methods"][m][k] for x in rows])) for k in METRICS}
                for k in ("miou", "J"):
                    w = int(np.argmin([x["methods"][m][k] for x in rows]))
                    entry["methods"][m][f"worst_{k}"] = [have[w]["name"], float(rows[w]["methods"][m][k])]
        out.append(entry)
    return out


def table(title: str, rows: list[dict]) -> str:
    """Plain-text table: one line per round and method."""
    lines = [title, f"{'round':>5} {'clicks%':>8} {'method':<18} {'mIoU':>6} {'J':>6} {'F':>6} {'J&F':>6} "
                    f"{'pixacc':>7} {'bIoU':>6} {'temporal':>8} {'round s':>8}"]
    for row in rows:
        for m in [m for m in METHODS if m in row["methods"]]:
            v = row["methods"][m]
            lines.append(f"{row['round']:>5} {row['clicks_pct']:8.2f} {m:<18} {v['miou']:6.3f} {v['J']:6.3f} "
                         f"{v['F']:6.3f} {v['J&F']:6.3f} {v['pixel_acc']:7.3f} {v['boundary_iou']:6.3f} {v['temporal']:8.3f} "
                         f"{row['round_seconds'] if m == 'finetune+temporal' else float('nan'):8.0f}")
    return "\n".join(lines)


def per_sequence_table(videos: list[dict]) -> str:
    """Plain-text table: one line per video, round and method (mIoU, J, F, J&F, temporal weight)."""
    lines = [f"{'video':<16} {'round':>5} {'clicks%':>8} {'method':<18} {'mIoU':>6} {'J':>6} {'F':>6} {'J&F':>6} {'lam':>6}"]
    for v in videos:
        for row in v["rounds"]:
            for m in [m for m in METHODS if m in row["methods"]]:
                x = row["methods"][m]
                lam = f"{x['lam']:6.1f}" if "lam" in x and m == "finetune+temporal" else f"{'':>6}"
                lines.append(f"{v['name']:<16} {row['round']:>5} {row['clicks_pct']:8.2f} {m:<18} {x['miou']:6.3f} "
                             f"{x['J']:6.3f} {x['F']:6.3f} {x['J&F']:6.3f} {lam}")
    return "\n".join(lines)


def plot(path: Path, summary: list[dict], title: str, videos: list[dict] | None = None) -> None:
    """mIoU, J&F and temporal consistency against clicks (% of full annotation), one line per
    method (means over videos; with ``videos``, thin lines and dots per video for mIoU and J&F)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = [r["clicks_pct"] for r in summary]
    for k, m in enumerate([m for m in METHODS if summary and m in summary[0]["methods"]]):
        colour = f"C{k}"
        axes[0].plot(x, [r["methods"][m]["miou"] for r in summary], "o-", color=colour, lw=2, label=m)
        axes[1].plot(x, [r["methods"][m]["J&F"] for r in summary], "o-", color=colour, lw=2, label=m)
        axes[2].plot(x, [r["methods"][m]["temporal"] for r in summary], "o-", color=colour, lw=2, label=m)
        for v in videos or []:
            vx = [r["clicks_pct"] for r in v["rounds"]]
            axes[0].plot(vx, [r["methods"][m]["miou"] for r in v["rounds"]], ".-", color=colour, lw=0.6, ms=4, alpha=0.5)
            axes[1].plot(vx, [r["methods"][m]["J&F"] for r in v["rounds"]], ".-", color=colour, lw=0.6, ms=4, alpha=0.5)
    axes[0].set_ylabel("mIoU (background pooled in)")
    axes[1].set_ylabel("J&F (DAVIS: object IoU, boundary F)")
    axes[2].set_ylabel("temporal consistency (warped IoU)")
    for ax in axes:
        ax.set_xlabel("clicks (% of full annotation)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_timing(name: str, frames: np.ndarray, truth: np.ndarray, args, cache: Path, n: int = 100) -> dict:
    """Seconds of one round on ``n`` frames (the sequence played forward and back): flows, pick a
    budget of units from the truth, fine-tune with the temporal term, predict every frame."""
    from napari_hitl.evaluate.annotate import annotate_budget
    from napari_hitl.simulate.cost import full_annotation_cost

    order = (list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))) or [0]
    idx = [order[i % len(order)] for i in range(n)]
    frames, truth = frames[idx], truth[idx]
    out = {"video": name, "frames": n, "size": [int(frames.shape[1]), int(frames.shape[2])], "steps": args.steps}
    t0 = time.perf_counter()
    session = new_session(frames, args, cache / f"timing-{name}")
    out["units"] = time.perf_counter() - t0
    t = time.perf_counter()
    session.precompute_flows()
    out["flows"] = time.perf_counter() - t
    t = time.perf_counter()
    tuner = session.new_tuner()
    probs, feats = tuner.predict(with_features=True)
    out["first_predict"] = time.perf_counter() - t
    budget = round_budget(full_annotation_cost(truth), args)
    t = time.perf_counter()
    annotate_budget(session, truth, budget, probs, feats, first_round=True, seed=args.seed)
    out["pick"] = time.perf_counter() - t
    t = time.perf_counter()
    tuner.fit(session.work_labels())
    out["fine_tune"] = time.perf_counter() - t
    t = time.perf_counter()
    session.labels_from_probs(tuner.predict())
    out["predict"] = time.perf_counter() - t
    out["round"] = out["pick"] + out["fine_tune"] + out["predict"]
    out["round_with_flows"] = out["round"] + out["flows"] + out["first_predict"]
    out["device"] = tuner.device_description
    print(f"one round on {n} frames {frames.shape[2]}x{frames.shape[1]} ({name}, working "
          f"{session.work_shape[1]}x{session.work_shape[0]}, {args.steps} steps, {tuner.device_description}): "
          f"flows {out['flows']:.0f} s (once per video), first prediction {out['first_predict']:.0f} s, "
          f"pick {out['pick']:.0f} s, fine-tune {out['fine_tune']:.0f} s, predict {out['predict']:.0f} s; "
          f"round {out['round'] / 60:.1f} min, {out['round_with_flows'] / 60:.1f} min with flows and the "
          f"first prediction", flush=True)
    return out


def command_line() -> str:
    """The command line this process was started with, as a shell would take it back."""
    import shlex

    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name] + sys.argv[1:])


def run(args) -> int:
    import torch

    from napari_hitl.io import atomic_write_json
    from napari_hitl.video.trust import temporal_weight
    from napari_hitl.video.units import parse_unit

    parse_unit(args.unit)  # bad options fail before any work
    _methods(args)
    if args.rounds < 1 or not args.budget > 0:
        raise InputError(f"--rounds must be >= 1 and --budget > 0, got {args.rounds} and {args.budget}")
    trust = _trust_settings(args)
    temporal_weight(0.5, 1.0, trust["trust_low"], trust["trust_high"])  # bounds out of order: a clear error now
    if trust["agree_low"] is not None:
        temporal_weight(0.5, 1.0, trust["agree_low"], trust["agree_high"])
    if not 0 <= trust["motion_trust_min"] <= 1:
        raise InputError(f"--motion-trust-min must lie in [0, 1], got {trust['motion_trust_min']}")
    torch.set_num_threads(max(1, int(args.threads)))
    videos = select_videos(find_videos(Path(args.data)), args.sequences)
    say = _Progress()
    tmp = None
    if args.cache:
        cache = Path(args.cache)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="napari-hitl-bench-video-")
        cache = Path(tmp.name)
    results: list[dict] = []
    report = {"benchmark": "video", "command": command_line(),
              "data": str(args.data), "unit": args.unit, "rounds": args.rounds,
              "budget_pct_per_round": args.budget, "scale": args.scale, "steps": args.steps,
              "lam": session_lam(args), "adaptive_lam": not args.fixed_lam,
              **_trust_settings(args),
              "flow": args.flow, "limit_frames": args.limit_frames, "threads": args.threads,
              "seed": args.seed, "videos": results}
    t_all = time.perf_counter()
    if args.timing:
        name, folder, layout = videos[0]
        frames, truth = load_video(folder, layout, 0)
        try:
            report["timing"] = run_timing(name, frames, truth, args, cache)
        finally:
            if tmp is not None:
                tmp.cleanup()
        if args.json:
            atomic_write_json(args.json, report)
            print(f"wrote {args.json}")
        return 0
    try:
        for name, folder, layout in videos:
            frames, truth = load_video(folder, layout, args.limit_frames)
            def partial(record, done=list(results)):
                report["videos"] = done + [record]
                report["summary"] = summarise(report["videos"], args.rounds)
                if args.json:
                    atomic_write_json(args.json, report)

            results.append(run_video(name, frames, truth, args, cache, say, on_round=partial))
            report["videos"] = results
            print(table(f"{name}: {len(frames)} frames, unit {args.unit}, scale {args.scale}",
                        summarise([results[-1]], args.rounds)), flush=True)
            report["summary"] = summarise(results, args.rounds)
            if args.json:  # written after every video, so an interrupted run keeps what it did
                atomic_write_json(args.json, report)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["seconds"] = time.perf_counter() - t_all
    summary = report["summary"]
    title = (f"{Path(args.data).name}: {len(results)} videos, {sum(v['frames'] for v in results)} frames, "
             f"unit {args.unit}, scale {args.scale}, {args.steps} steps/round")
    print()
    print(per_sequence_table(results))
    print(table("mean over videos (clicks% = all clicks / all full-annotation clicks)\n" + title, summary))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.plot:
        plot(Path(args.plot), summary, title, results)
        print(f"wrote {args.plot}")
    return 0
