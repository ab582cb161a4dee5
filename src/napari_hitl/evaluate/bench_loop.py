"""Learning-loop benchmark: mIoU of labels and model against annotation clicks, per strategy.

A simulated annotator labels a pool for R rounds under each strategy (random, entropy,
margin, consistency, coverage, superpixel, superpixel-diversity); after each round it prints the mIoU
of the final labels over the pool (human + machine) and of the model on held-out images
against cumulative clicks, beside full supervision (every pool image traced by hand). On
two-class sets the annotator corrects the model's prediction of an asked image object by
object with the click robot when that costs fewer clicks than polygons (``--corrections``);
on any set it can answer superpixel by superpixel instead (``--image-answer``). Also times one
training round (50 images 512x512) and prediction + ranking throughput. ``--instances`` runs
the loop on objects instead (:mod:`napari_hitl.evaluate.bench_instances`: dsb2018 or ctc_sim,
object F1, AP and aggregated Jaccard against clicks). ``--merge`` averages
the JSON of runs with other seeds round by round and counts, per seed, the rounds above random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_hitl.active.loop import IMAGE_ANSWERS, LOOP_STRATEGIES
from napari_hitl.errors import InputError

DATASETS = ("camvid", "dsb2018")
CAMVID_CLASSES, CAMVID_VOID = 11, 11


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="../shared/data/camvid or ../shared/data/dsb2018 (not with --merge)")
    parser.add_argument("--strategy", default="all", help=f"one of {', '.join(LOOP_STRATEGIES)}, or 'all'")
    parser.add_argument("--rounds", type=int, default=4, help="annotate-then-train rounds (default: %(default)s)")
    parser.add_argument("--budget", type=int, default=2, help="images per round (superpixel strategies: "
                        "budget x --sp-per-image superpixels)")
    parser.add_argument("--sp-per-image", type=int, default=20, help="superpixels that count as one image of budget")
    parser.add_argument("--n-segments", type=int, default=150, help="SLIC superpixels per image")
    parser.add_argument("--image-answer", default="polygons", choices=IMAGE_ANSWERS,
                        help="how image strategies' picks are answered: traced; superpixel by superpixel, one "
                             "click each; or superpixel fixes: the superpixels whose predicted class is wrong "
                             "one click each, the rest accepted together with one click (the panel's Accept all)")
    parser.add_argument("--purity", type=float, default=0.95, help="superpixel answers: one click labels a "
                        "superpixel whose main true class covers at least this share, mixed ones are traced "
                        "as polygons; 0 = the panel's one-click answer (main class) for every superpixel")
    parser.add_argument("--steps", type=int, default=100, help="training steps per round")
    parser.add_argument("--batch", type=int, default=4, help="image crops per training step")
    parser.add_argument("--crop", type=int, default=160, help="side of the training crops, in pixels")
    parser.add_argument("--scale", type=float, default=0.5, help="downscale factor of all images (1 = full size)")
    parser.add_argument("--pool", type=int, default=60, help="at most this many pool images (0: all)")
    parser.add_argument("--heldout", type=int, default=30, help="at most this many held-out images (0: all)")
    parser.add_argument("--corrections", default="graph",
                        help="interactive engine the simulated annotator corrects two-class predictions "
                             "with, object by object, when cheaper than polygons (graph, clicknet; none: "
                             "always polygons). Sets of more classes always use polygons.")
    parser.add_argument("--no-pseudo", action="store_true", help="train on human labels only")
    parser.add_argument("--diversity", action="store_true", help="after round one, image strategies cluster "
                        "the more uncertain half into the budget instead of asking the top-k images")
    parser.add_argument("--cost-aware", action="store_true", help="with --image-answer superpixel-fixes, "
                        "image strategies rank by uncertainty per expected click (an uncertain image has more "
                        "superpixels to fix) instead of per image; on camvid it trailed random in early rounds "
                        "(docs/bench/loop_camvid_seeds400.json)")
    parser.add_argument("--no-full", action="store_true", help="skip the full-supervision reference run")
    parser.add_argument("--timing", action="store_true", help="also time a training round on 50 images "
                        "512x512 and prediction + ranking throughput")
    parser.add_argument("--timing-only", action="store_true", help="only the timings")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--plot", help="write a PNG plot of mIoU vs clicks here")
    parser.add_argument("--instances", action="store_true", help="every object its own label: the model's "
                        "instance head is decoded into objects, asked images are corrected object by object, "
                        "pseudo-labels are whole objects; scores object F1@0.5, AP@0.5:0.95 and aggregated Jaccard "
                        "on held-out images (dsb2018 or ctc_sim; --strategy all = objects,random)")
    parser.add_argument("--full-steps", type=int, default=0, help="--instances: training steps of the "
                        "full-supervision reference (0: rounds x steps)")
    parser.add_argument("--full-evals", type=int, default=6, help="--instances: held-out scores along the "
                        "full-supervision run (to see whether it flattened)")
    parser.add_argument("--full-one-round", action="store_true", help="--instances: train the full-supervision "
                        "reference as one round (one warm-up and cosine decay over --full-steps) scored along the "
                        "way, instead of one round per score (the schedule restarts at each)")
    parser.add_argument("--full-size-norm", action="store_true", help="--instances: also score the final "
                        "full-supervision model with object-size normalisation at prediction "
                        "(model.instances.SIZE_NORM_SETTINGS; off by default in the product)")
    parser.add_argument("--fg-threshold", type=float, default=0.7, help="--instances: foreground probability "
                        "above which a pixel belongs to an object (the decoder's default; chosen on 7 validation "
                        "images of the dsb2018 pool, never the held-out ones)")
    parser.add_argument("--boundary-threshold", type=float, default=0.3, help="--instances: boundary probability "
                        "at or above which a pixel cannot seed an object (the decoder's default)")
    parser.add_argument("--seed-threshold", type=float, default=0.4, help="--instances: distance-map value above "
                        "which an object interior seeds the watershed")
    parser.add_argument("--merge-saddle", type=float, default=None, help="--instances: join two touching "
                        "decoded pieces when the distance map's pass between them is at least this fraction of "
                        "the lower piece's peak (one object the seeds cut in two); off unless given")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="run nothing: average the --json files of "
                        "earlier runs (other seeds, other strategies) round by round, print the table of means "
                        "and how many seeds beat random, and write --json / --plot of the means")


# -- data ----------------------------------------------------------------------------------
def _read_rgb(path: Path) -> np.ndarray:
    from napari_hitl.io import read_image

    img = read_image(path)
    return img[..., :3] if img.ndim == 3 else img


def _resize(img: np.ndarray, scale: float, nearest: bool) -> np.ndarray:
    import cv2

    if scale == 1:
        return img
    h, w = img.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(img, size, interpolation=interp)


def dsb2018_split(data: Path, pool: int, heldout: int) -> tuple[list[Path], list[Path]]:
    """``(pool files, held-out files)`` of a dsb2018-style folder: a fixed 70/30 split (whatever
    --seed says), cut to ``pool`` and ``heldout`` images when those are given."""
    files = sorted((data / "images").glob("*.png"))
    if not files:
        raise InputError(f"--data {data}: no images/*.png")
    order = np.random.default_rng(1234).permutation(len(files))
    n_held = max(1, int(round(0.3 * len(files))))
    held = [files[i] for i in order[:n_held]]
    pool_files = [files[i] for i in order[n_held:]]
    if pool and pool < len(pool_files):
        pool_files = pool_files[:pool]
    if heldout and heldout < len(held):
        held = held[:heldout]
    return pool_files, held


def load_dataset(data: Path, scale: float, pool: int, heldout: int, seed: int = 0):
    """Return dict(name, num_classes, ignore_index, background, pool=[(name, img, gt)], heldout=[...])."""
    from PIL import Image

    data = Path(data)
    kind = data.name
    if kind not in DATASETS:
        if (data / "train" / "masks").is_dir():
            kind = "camvid"
        elif (data / "labels").is_dir():
            kind = "dsb2018"
        else:
            raise InputError(f"--data {data}: expected a camvid/ or dsb2018/ folder from ../shared/data")

    def load(img_path: Path, mask_path: Path, binary: bool):
        img = _resize(_read_rgb(img_path), scale, False)
        gt = np.asarray(Image.open(mask_path))
        gt = (gt > 0).astype(np.uint16) if binary else gt.astype(np.uint16)
        return img_path.stem, img, _resize(gt, scale, True)

    rng = np.random.default_rng(seed)
    if kind == "camvid":
        def split(name, limit):
            files = sorted((data / name / "images").glob("*.jpg"))
            if limit and limit < len(files):
                files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]
            return [load(f, data / name / "masks" / (f.stem + ".png"), False) for f in files]
        return dict(name="camvid", num_classes=CAMVID_CLASSES, ignore_index=CAMVID_VOID, background=None,
                    pool=split("train", pool), heldout=split("val", heldout))
    pool_files, held = dsb2018_split(data, pool, heldout)
    return dict(name="dsb2018", num_classes=2, ignore_index=None, background=0,
                pool=[load(f, data / "labels" / f.name, True) for f in pool_files],
                heldout=[load(f, data / "labels" / f.name, True) for f in held])


def dataset_miou(preds, truths, num_classes, ignore_index) -> float:
    """mIoU over a whole set (pixels of all images pooled), classes present in truth or prediction."""
    from napari_hitl.evaluate.metrics import mean_iou

    p = np.concatenate([np.asarray(x).ravel() for x in preds])
    t = np.concatenate([np.asarray(x).ravel() for x in truths])
    return float(mean_iou(p, t, num_classes + (1 if ignore_index == num_classes else 0), ignore_index))


# -- runs ----------------------------------------------------------------------------------
def _train_settings(args):
    from napari_hitl.model.train import TrainSettings

    return TrainSettings(steps=args.steps, batch_size=args.batch, crop=args.crop, checkpoint_every=0,
                         seed=args.seed)


def _heldout_miou(model, ds) -> float:
    from napari_hitl.model.segnet import predict_proba_batch

    probs = predict_proba_batch(model, [x[1] for x in ds["heldout"]], batch_size=4)
    return dataset_miou([p.argmax(0) for p in probs], [x[2] for x in ds["heldout"]], ds["num_classes"],
                        ds["ignore_index"])


def run_strategy(ds, strategy: str, args, log=print, engine=None) -> dict:
    """One strategy's rounds; ``engine`` (if any) corrects the predictions of asked images."""
    from napari_hitl.active.loop import LoopDriver, LoopSettings
    from napari_hitl.simulate.annotator import SimulatedAnnotator
    from napari_hitl.active.pseudo import PseudoSettings

    import torch

    torch.manual_seed(args.seed)
    truths = [x[2] for x in ds["pool"]]
    settings = LoopSettings(strategy=strategy, rounds=args.rounds, budget=args.budget,
                            superpixels_per_image=args.sp_per_image, n_segments=args.n_segments,
                            background=ds["background"], pseudo=PseudoSettings(enabled=not args.no_pseudo),
                            diversity=args.diversity, cost_aware=args.cost_aware, image_answer=args.image_answer,
                            train=_train_settings(args), seed=args.seed)

    def evaluate(driver):
        return {"label_miou": dataset_miou(driver.final_labels(), truths, ds["num_classes"], ds["ignore_index"]),
                "model_miou": _heldout_miou(driver.trainer.model, ds)}

    annotator = SimulatedAnnotator(truths, ds["ignore_index"], purity=args.purity, engine=engine)
    driver = LoopDriver([x[1] for x in ds["pool"]], annotator,
                        ds["num_classes"], settings, names=[x[0] for x in ds["pool"]], evaluate=evaluate)

    def on_round(rec):
        log(f"  {strategy:<21} round {rec.round}: clicks {rec.clicks:>6}  labels mIoU "
            f"{rec.metrics['label_miou']:.3f}  model mIoU {rec.metrics['model_miou']:.3f}  "
            f"(train {rec.train_seconds:.0f}s, predict {rec.predict_seconds:.0f}s, loss {rec.loss:.3f})"
            + ("" if rec.expected_clicks is None else
               f"; {rec.round_clicks} clicks this round, {rec.expected_clicks:.0f} expected"))

    driver.run(on_round=on_round)
    return {"strategy": strategy, "rounds": driver.records_as_dicts(), "corrections": annotator.corrections}


def run_full(ds, args, log=print) -> dict:
    """Every pool image traced by hand: polygon clicks, and a model trained as long as the loop trains."""
    from napari_hitl.simulate.cost import image_clicks
    from napari_hitl.model.train import HUMAN, Sample, Trainer

    import torch

    torch.manual_seed(args.seed)
    clicks = sum(image_clicks(x[2], ignore_index=ds["ignore_index"]) for x in ds["pool"])
    samples = []
    for name, img, gt in ds["pool"]:
        prov = np.full(gt.shape, HUMAN, np.uint8)
        if ds["ignore_index"] is not None:
            prov[gt == ds["ignore_index"]] = 0
        samples.append(Sample(img, gt, prov, name))
    trainer = Trainer(ds["num_classes"], settings=_train_settings(args))
    t0 = time.perf_counter()
    res = trainer.train_round(samples, steps=args.steps * args.rounds)
    out = {"clicks": int(clicks), "label_miou": 1.0, "model_miou": _heldout_miou(trainer.model, ds),
           "train_seconds": time.perf_counter() - t0, "final_loss": res.final_loss}
    log(f"  full supervision: clicks {clicks}, labels mIoU 1.000, model mIoU {out['model_miou']:.3f} "
        f"({args.steps * args.rounds} steps, {out['train_seconds']:.0f}s)")
    return out


def run_timings(ds, args, log=print) -> dict:
    """One default training round on 50 images 512x512; prediction + ranking throughput at 512x512."""
    from napari_hitl.active.ranking import rank_images, score_maps
    from napari_hitl.active.superpixels import edge_strength, image_suggestions, slic_superpixels, suggest_superpixels
    from napari_hitl.active.uncertainty import entropy, margin
    from napari_hitl.model.segnet import predict_proba_batch
    from napari_hitl.model.train import HUMAN, Sample, Trainer, TrainSettings

    import cv2

    src = ds["pool"] + ds["heldout"]
    imgs = [cv2.resize(src[i % len(src)][1], (512, 512), interpolation=cv2.INTER_LINEAR) for i in range(50)]
    gts = [cv2.resize(src[i % len(src)][2], (512, 512), interpolation=cv2.INTER_NEAREST) for i in range(50)]
    c = ds["num_classes"]
    samples = [Sample(im, np.minimum(g, c - 1), np.full(g.shape, HUMAN, np.uint8)) for im, g in zip(imgs, gts)]
    trainer = Trainer(c, settings=TrainSettings(seed=args.seed))
    s = trainer.settings
    log(f"timing on {trainer.device_description}: one training round, 50 images 512x512, "
        f"{s.steps} steps x batch {s.batch_size} x crop {s.crop} ...")
    cpu0 = time.process_time()
    res = trainer.train_round(samples, progress=lambda i, n, loss: (i % 25 == 0) and log(f"    step {i}/{n} loss {loss:.3f}"))
    cpu_train = time.process_time() - cpu0
    out = {"device": trainer.device_description, "train_round_seconds": res.seconds,
           "train_round_cpu_seconds": cpu_train,
           "train_steps": s.steps, "train_batch": s.batch_size, "train_crop": s.crop}
    log(f"  training round: {res.seconds:.1f} s wall, {cpu_train:.1f} s CPU (this process; other jobs share the cores)")
    n = 20
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    outs = predict_proba_batch(trainer.model, imgs[:n], batch_size=4, with_features=True)
    t_pred = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, feats = [], []
    for i, (p, f) in enumerate(outs):
        scores.append(score_maps(p.max(0), p.argmax(0), margin(p), entropy(p, normalize=True), 0.9, ds["background"], i))
        feats.append(f.reshape(f.shape[0], -1).mean(1))
    rank_images(scores, "consistency", 5, np.stack(feats), diversity=True)
    t_rank = time.perf_counter() - t0
    t0 = time.perf_counter()
    cands = []
    for i, (p, f) in enumerate(outs):
        seg = slic_superpixels(imgs[i], 150)
        cands += image_suggestions(i, seg, 1 - margin(p), p.argmax(0), c, edge_strength(imgs[i]), 1.0)
    suggest_superpixels(cands, 100)
    t_sp = time.perf_counter() - t0
    out["predict_rank_cpu_seconds_per_image"] = (time.process_time() - cpu0) / n
    per = {"predict": t_pred / n, "rank_images": t_rank / n, "superpixels": t_sp / n}
    out.update({"per_image_seconds": per,
                "images_per_second_image_ranking": n / (t_pred + t_rank),
                "images_per_second_superpixel_ranking": n / (t_pred + t_rank + t_sp),
                "minutes_per_1000_image_ranking": 1000 * (t_pred + t_rank) / n / 60,
                "minutes_per_1000_superpixel_ranking": 1000 * (t_pred + t_rank + t_sp) / n / 60})
    log(f"  prediction {per['predict'] * 1000:.0f} ms/image, image ranking {per['rank_images'] * 1000:.0f} ms/image, "
        f"superpixels {per['superpixels'] * 1000:.0f} ms/image")
    log(f"  1,000 images 512x512: {out['minutes_per_1000_image_ranking']:.1f} min (predict + image ranking), "
        f"{out['minutes_per_1000_superpixel_ranking']:.1f} min (+ superpixel suggestions); CPU time "
        f"{out['predict_rank_cpu_seconds_per_image'] * 1000 / 60:.1f} min per 1,000 (all steps)")
    return out


# -- report --------------------------------------------------------------------------------
def _at_budget(rounds: list[dict], max_clicks: float, key: str) -> float | None:
    vals = [r["metrics"][key] for r in rounds if r["clicks"] <= max_clicks]
    return max(vals) if vals else None


def _interp(rounds: list[dict], clicks: float, key: str) -> float | None:
    xs = [r["clicks"] for r in rounds]
    if not xs or clicks < xs[0] or clicks > xs[-1]:
        return None
    return float(np.interp(clicks, xs, [r["metrics"][key] for r in rounds]))


def _vs_random(rand: list[dict], r: dict, key: str) -> tuple[float | None, bool]:
    """Random's ``key`` at the clicks of round ``r`` (interpolated), else at the same round; (value, same round?)."""
    v = _interp(rand, r["clicks"], key)
    if v is not None:
        return v, False
    same = [x for x in rand if x["round"] == r["round"]]
    return (same[0]["metrics"][key], True) if same else (None, False)


def summarise(result: dict) -> str:
    full = result.get("full")
    lines = [f"{'strategy':<21} {'round':>5} {'clicks':>7} {'%full':>6} {'labels mIoU':>11} {'model mIoU':>10} "
             f"{'vs random (labels/model)':>38}"]
    runs = result["strategies"]
    rand = runs.get("random")
    for name, run in runs.items():
        for r in run["rounds"]:
            pct = f"{100 * r['clicks'] / full['clicks']:6.1f}" if full else "     -"
            vs = ""
            if rand is not None and name != "random" and run.get("seeds") != rand.get("seeds"):
                vs = "(random ran other seeds)"
            elif rand is not None and name != "random":
                (a, same), (b, _) = _vs_random(rand["rounds"], r, "label_miou"), _vs_random(rand["rounds"], r, "model_miou")
                if a is not None:
                    vs = f"{'(same round) ' if same else ''}{r['metrics']['label_miou'] - a:+.3f} / " \
                         f"{r['metrics']['model_miou'] - b:+.3f}"
            lines.append(f"{name:<21} {r['round']:>5} {r['clicks']:>7} {pct} {r['metrics']['label_miou']:11.3f} "
                         f"{r['metrics']['model_miou']:10.3f} {vs:>38}")
    if full:
        lines.append(f"{'full supervision':<21} {'-':>5} {full['clicks']:>7} {100.0:6.1f} {1.0:11.3f} "
                     f"{full['model_miou']:10.3f}")
        lines.append("")
        lines.append(f"at <= 15% of full clicks ({0.15 * full['clicks']:.0f}): best mIoU reached, as % of full supervision")
        for name, run in runs.items():
            a = _at_budget(run["rounds"], 0.15 * full["clicks"], "label_miou")
            b = _at_budget(run["rounds"], 0.15 * full["clicks"], "model_miou")
            if a is None:
                lines.append(f"  {name:<21} no round within budget")
            else:
                lines.append(f"  {name:<21} labels {a:.3f} ({100 * a:.1f}%)   model {b:.3f} "
                             f"({100 * b / max(full['model_miou'], 1e-9):.1f}% of {full['model_miou']:.3f})")
    return "\n".join(lines)


#: settings that must agree between runs that --merge averages
MERGE_KEYS = ("rounds", "budget", "sp_per_image", "n_segments", "image_answer", "purity", "steps", "batch",
              "crop", "scale", "pool", "heldout", "corrections", "no_pseudo")
#: settings the full-supervision reference depends on besides its steps (rounds x steps): it asks
#: nothing, so answers and budgets do not matter
FULL_KEYS = ("batch", "crop", "scale", "pool", "heldout")


def _full_settings(args: dict) -> tuple:
    return (args.get("rounds", 0) * args.get("steps", 0),) + tuple(args.get(k) for k in FULL_KEYS)


def _run_label(name: str, args: dict) -> str:
    """A strategy's name in a merge: image strategies run with --cost-aware or --diversity are kept apart."""
    if name not in ("entropy", "margin", "consistency"):
        return name
    return name + "/click" * bool(args.get("cost_aware")) + "+diversity" * bool(args.get("diversity"))


def merge(results: list[dict]) -> dict:
    """Average runs of several seeds round by round (clicks and mIoU), as ``summarise`` and ``plot`` read.

    Runs of one seed may come in several files (one strategy each); all must share the
    :data:`MERGE_KEYS` settings of the first file. A file whose full-supervision run trained
    as long (rounds x steps) on the same data (:data:`FULL_KEYS`) but that differs otherwise
    lends that reference alone (listed in ``notes``). ``seed_wins`` holds, per strategy and seed, the model mIoU
    against random at the same clicks (interpolated) and the best model mIoU within 15% of that
    seed's full-supervision clicks.
    """
    if not results:
        raise InputError("nothing to merge")
    base = results[0]
    per_seed: dict[int, dict] = {}
    notes: list[str] = []
    for res in results:
        a = res.get("args", {})
        if res.get("dataset") != base.get("dataset"):
            raise InputError(f"runs on different sets ({base.get('dataset')}, {res.get('dataset')}) do not average")
        diff = [k for k in MERGE_KEYS if a.get(k) != base.get("args", {}).get(k)]
        seed = int(a.get("seed", 0))
        slot = per_seed.setdefault(seed, {"strategies": {}, "full": None})
        if diff and res.get("full") and _full_settings(a) == _full_settings(base.get("args", {})):
            slot["full"] = slot["full"] or res["full"]
            notes.append(f"seed {seed}: full supervision only from a run with other {', '.join(diff)}")
            continue
        if diff:
            raise InputError(f"runs differ in {', '.join(diff)}: only runs with the same settings average")
        for name, run in res.get("strategies", {}).items():
            label = _run_label(name, a)
            if label in slot["strategies"]:
                raise InputError(f"seed {seed} has two runs of {label}")
            slot["strategies"][label] = run
        slot["full"] = slot["full"] or res.get("full")
    labels: list[str] = []
    for slot in per_seed.values():
        labels += [k for k in slot["strategies"] if k not in labels]
    strategies = {}
    for label in labels:
        runs = {seed: slot["strategies"][label] for seed, slot in sorted(per_seed.items()) if label in slot["strategies"]}
        n = min(len(r["rounds"]) for r in runs.values())
        rounds = []
        for j in range(n):
            rs = [r["rounds"][j] for r in runs.values()]
            rounds.append({"round": j, "clicks": int(round(np.mean([r["clicks"] for r in rs]))),
                           "metrics": {k: float(np.mean([r["metrics"][k] for r in rs]))
                                       for k in ("label_miou", "model_miou")},
                           "model_miou_sd": float(np.std([r["metrics"]["model_miou"] for r in rs]))})
        shown = label if len(runs) == len(per_seed) else f"{label} (seed {', '.join(map(str, runs))})"
        strategies[shown] = {"strategy": label, "seeds": list(runs), "rounds": rounds}
    fulls = [slot["full"] for slot in per_seed.values() if slot["full"]]
    full = None
    if fulls:
        full = {"clicks": int(round(np.mean([f["clicks"] for f in fulls]))), "label_miou": 1.0,
                "model_miou": float(np.mean([f["model_miou"] for f in fulls])), "seeds": len(fulls)}
    wins = {}
    for label in labels:
        for seed, slot in sorted(per_seed.items()):
            run, rand, f = slot["strategies"].get(label), slot["strategies"].get("random"), slot["full"]
            if run is None:
                continue
            row = {"seed": seed, "vs_random": [], "best_within_15pct": None, "full_model_miou": None}
            if rand is not None and label != "random":
                for r in run["rounds"]:
                    ref, _ = _vs_random(rand["rounds"], r, "model_miou")
                    row["vs_random"].append(None if ref is None else r["metrics"]["model_miou"] - ref)
            if f:
                row["best_within_15pct"] = _at_budget(run["rounds"], 0.15 * f["clicks"], "model_miou")
                row["full_model_miou"] = f["model_miou"]
            wins.setdefault(label, []).append(row)
    out = {"dataset": base.get("dataset"), "args": {k: base.get("args", {}).get(k) for k in MERGE_KEYS},
           "seeds": sorted(per_seed), "strategies": strategies, "seed_wins": wins, "notes": notes}
    if full:
        out["full"] = full
    return out


def seed_table(merged: dict) -> str:
    """Per strategy and seed: rounds above random (model mIoU, same clicks) and % of full within 15% clicks."""
    lines = ["per seed (model mIoU): rounds above random at the same clicks (or the same round where random's "
             "clicks do not reach); best within 15% of full clicks"]
    for label, rows in merged["seed_wins"].items():
        parts = []
        for row in rows:
            d = [v for v in row["vs_random"] if v is not None]
            above = f"{sum(v > 0 for v in d)}/{len(d)} above random" if d else "no random run"
            best = row["best_within_15pct"]
            pct = (f", {100 * best / max(row['full_model_miou'], 1e-9):.1f}% of full" if best is not None
                   else ", no round within 15%" if row["full_model_miou"] is not None else "")
            parts.append(f"seed {row['seed']}: {above if label != 'random' else 'reference'}{pct}")
        lines.append(f"  {label:<23} " + "; ".join(parts))
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    full = result.get("full")
    for ax, key, title in ((axes[0], "label_miou", "final labels (pool)"), (axes[1], "model_miou", "model (held-out)")):
        for name, run in result["strategies"].items():
            xs = [r["clicks"] for r in run["rounds"]]
            ys = np.array([r["metrics"][key] for r in run["rounds"]])
            line, = ax.plot(xs, ys, marker="o", label=name)
            if key == "model_miou" and all("model_miou_sd" in r for r in run["rounds"]):  # merged seeds
                sd = np.array([r["model_miou_sd"] for r in run["rounds"]])
                ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.15, lw=0)
        if full:
            ax.axhline(full[key], color="k", ls="--", lw=1, label=f"full supervision ({full['clicks']} clicks)")
            ax.axhline(0.95 * full[key], color="gray", ls=":", lw=1, label="95% of full")
            ax.axvline(0.15 * full["clicks"], color="gray", ls="-.", lw=1, label="15% of full clicks")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative clicks")
        ax.set_ylabel("mIoU")
        seeds = f" (mean of seeds {', '.join(map(str, result['seeds']))})" if result.get("seeds") else ""
        ax.set_title(f"{result['dataset']}: {title}{seeds}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    if args.merge:
        return _run_merge(args)
    if args.instances:
        from napari_hitl.evaluate.bench_instances import run as run_instances

        return run_instances(args)
    import torch

    if not args.data:
        raise InputError("--data is needed (a camvid/ or dsb2018/ folder from ../shared/data), or --merge")
    torch.set_num_threads(max(1, args.threads))
    strategies = list(LOOP_STRATEGIES) if args.strategy == "all" else [s.strip() for s in args.strategy.split(",")]
    for s in strategies:
        if s not in LOOP_STRATEGIES:
            raise InputError(f"unknown --strategy {s!r}; use one of {', '.join(LOOP_STRATEGIES)} or 'all'")
    engine = None
    if args.corrections != "none":
        from napari_hitl.interactive.engine import get_engine

        engine = get_engine(args.corrections)  # an unknown engine is named now, not after the data loads
    t0 = time.perf_counter()
    ds = load_dataset(Path(args.data), args.scale, args.pool, args.heldout, args.seed)
    if ds["num_classes"] != 2:
        engine = None  # corrections are object by object on two-class sets only
    shapes = sorted({x[1].shape[:2] for x in ds["pool"]})
    print(f"{ds['name']}: pool {len(ds['pool'])} images, held-out {len(ds['heldout'])}, scale {args.scale} "
          f"(sizes {shapes[0]}..{shapes[-1]}), {ds['num_classes']} classes; rounds {args.rounds}, budget "
          f"{args.budget}/round, {args.steps} steps x batch {args.batch} x crop {args.crop}; "
          f"torch threads {torch.get_num_threads()}; whole images {_answer_words(args, engine)}"
          + ("; every superpixel answer is one click (its main class)" if args.purity <= 0
             else f"; superpixels under {args.purity:.0%} one class are traced")
          + ("; image strategies ranked by uncertainty per expected click" if args.cost_aware else ""), flush=True)
    result = {"dataset": ds["name"], "args": {k: v for k, v in vars(args).items() if k != "func"},
              "pool": len(ds["pool"]), "heldout": len(ds["heldout"]), "strategies": {}}
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if not args.timing_only:
        if not args.no_full:
            result["full"] = run_full(ds, args, log)
        for s in strategies:
            result["strategies"][s] = run_strategy(ds, s, args, log, engine)
        print()
        print(summarise(result))
    if args.timing or args.timing_only:
        result["timing"] = run_timings(ds, args, log)
    result["seconds"] = time.perf_counter() - t0
    _write(result, args)
    sys.stdout.flush()
    return 0


def _answer_words(args, engine) -> str:
    """How the header says whole images are answered."""
    if args.image_answer == "polygons":
        return (f"corrected with the {args.corrections} engine when cheaper than polygons" if engine is not None
                else "drawn as polygons")
    return {"superpixels": "answered superpixel by superpixel",
            "superpixel-fixes": "answered by relabelling the wrong superpixels and accepting the rest in one click",
            }[args.image_answer]


def _write(result: dict, args, plot_fn=None) -> None:
    """Write ``--json`` and ``--plot`` (when there are strategies to plot) with ``plot_fn``
    (default: this module's :func:`plot`)."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
        print(f"wrote {args.json}")
    if args.plot and result["strategies"]:
        (plot_fn or plot)(result, args.plot)
        print(f"wrote {args.plot}")


def _run_merge(args) -> int:
    results = []
    for path in args.merge:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise InputError(f"--merge {path}: not a readable bench loop JSON ({err})") from err
    merged = merge(results)
    print(f"{merged['dataset']}: means over seeds {', '.join(map(str, merged['seeds']))} "
          f"({len(results)} files)")
    for note in merged["notes"]:
        print(f"  note: {note}")
    print(summarise(merged))
    print()
    print(seed_table(merged))
    _write(merged, args)
    return 0
