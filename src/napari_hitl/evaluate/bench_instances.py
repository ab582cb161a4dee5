"""Learning-loop benchmark on instances (``napari-hitl bench loop --instances``).

Every object is its own label: the model's instance head is decoded into objects, the
simulated annotator corrects the predicted objects of each asked image one by one (match by
IoU; fix with the click robot, add the missed, delete the false with one click; polygons when
cheaper), pseudo-labels are whole confident objects. After each round the model's objects on
the held-out images are scored with object F1 at IoU 0.5, the DSB2018 AP over IoU 0.5:0.95
and aggregated Jaccard (mean and worst image), against cumulative clicks, beside a model
trained on every pool image with full instance labels (its held-out curve is recorded to say
whether it had flattened) and the polygon clicks of annotating the pool in full.
Sets: dsb2018 (images) and ctc_sim (frames of a time-lapse, each an image).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from napari_hitl.errors import InputError

KEYS = ("f1", "ap", "aji")


# -- data ----------------------------------------------------------------------------------
def load_instance_dataset(data: Path, scale: float, pool: int, heldout: int) -> dict:
    """dict(name, num_classes=2, pool=[(name, img, semantic, instances)], heldout=[...]).

    dsb2018: the fixed 70/30 split of bench loop. ctc_sim: the first 70% of frames of
    sequence 01 are the pool, the last 30% held out (later frames, no frame in both).
    ``pool`` / ``heldout`` (0 = all) keep that many, evenly spread.
    """
    from napari_hitl.evaluate.bench_loop import _read_rgb, _resize, dsb2018_split
    from napari_hitl.io import read_image

    data = Path(data)

    def spread(items, n):
        if not n or n >= len(items):
            return items
        return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]

    def entry(name, img, inst):
        inst = np.asarray(inst)
        if inst.max(initial=0) > np.iinfo(np.uint16).max:
            raise InputError(f"{name}: more than 65535 objects")
        inst = _resize(inst.astype(np.uint16), scale, True).astype(np.uint32)
        return name, _resize(img, scale, False), (inst > 0).astype(np.uint16), inst

    if (data / "labels").is_dir():
        pool_files, held = dsb2018_split(data, pool, heldout)  # the split of bench loop
        load = lambda f: entry(f.stem, _read_rgb(f), read_image(data / "labels" / f.name))  # noqa: E731
        return dict(name="dsb2018", num_classes=2, pool=[load(f) for f in pool_files],
                    heldout=[load(f) for f in held])
    seq = data / "01" if (data / "01" / "images").is_dir() else data
    if not (seq / "images").is_dir() or not (seq / "masks").is_dir():
        raise InputError(f"--data {data}: expected dsb2018/ (images/, labels/) or ctc_sim/ (01/images, 01/masks)")
    frames = sorted((seq / "images").glob("t*.tif"))
    if not frames:
        raise InputError(f"--data {data}: no frames t*.tif in {seq / 'images'}")
    n_held = max(1, int(round(0.3 * len(frames))))
    pool_f, held_f = spread(frames[:-n_held], pool), spread(frames[-n_held:], heldout)

    def load_frame(f):
        mask = seq / "masks" / f"man_seg{f.stem[1:]}.tif"
        if not mask.exists():
            raise InputError(f"{f.name} has no mask {mask.name}")
        return entry(f.stem, read_image(f), read_image(mask))
    return dict(name="ctc_sim", num_classes=2, pool=[load_frame(f) for f in pool_f],
                heldout=[load_frame(f) for f in held_f])


# -- scoring -------------------------------------------------------------------------------
def score_instances(preds, truths, names) -> dict:
    """Mean and worst-image object F1@0.5, AP@0.5:0.95 and aggregated Jaccard of instance maps."""
    from napari_hitl.evaluate.metrics import aggregated_jaccard, average_precision, object_f1

    per = [{"name": n, "f1": object_f1(p, t), "ap": average_precision(p, t), "aji": aggregated_jaccard(p, t),
            "objects": int(len(np.unique(t)) - (t.min() == 0)), "predicted": int(len(np.unique(p)) - (p.min() == 0))}
           for p, t, n in zip(preds, truths, names)]
    if not per:
        raise InputError("nothing to score")
    worst = min(per, key=lambda r: (r["ap"], r["f1"]))
    out = {k: float(np.mean([r[k] for r in per])) for k in KEYS}
    out.update({f"worst_{k}": float(worst[k]) for k in KEYS})
    out["worst_image"] = worst["name"]
    out["per_image"] = per
    return out


def decode_settings(args) -> dict:
    """Decoder thresholds from the command line (``--fg-threshold``, ``--boundary-threshold``,
    ``--seed-threshold``); the decoder's defaults where not given."""
    from napari_hitl.model.instances import DECODE_DEFAULTS

    return {k: getattr(args, k, None) if getattr(args, k, None) is not None else v
            for k, v in DECODE_DEFAULTS.items() if k != "min_seed" and k != "min_size"}


def model_instances(model, images, num_classes: int, decode: dict | None = None, size_norm=True,
                    flips: bool | None = None) -> list[np.ndarray]:
    """Decoded instance maps of ``images`` with the model's instance head (the product's
    prediction path: ``size_norm`` and ``flips`` as :func:`napari_hitl.model.segnet.predict_proba_batch`
    takes them, its defaults unless given)."""
    from napari_hitl.model.segnet import predict_proba_batch

    outs = predict_proba_batch(model, images, batch_size=4, with_instances=True, size_norm=size_norm, flips=flips)
    return decode_maps(outs, num_classes, decode)


def decode_maps(maps, num_classes: int, decode: dict | None = None) -> list[np.ndarray]:
    """Instance maps decoded from ``with_instances`` predictions ``maps`` (C + 2 channels each)."""
    from napari_hitl.model.instances import instances_from_maps
    from napari_hitl.model.segnet import split_instance_maps

    return [instances_from_maps(*split_instance_maps(p, num_classes), **(decode or {}))[0] for p in maps]


def heldout_scores(model, ds, decode: dict | None = None, size_norm=True) -> dict:
    preds = model_instances(model, [x[1] for x in ds["heldout"]], ds["num_classes"], decode, size_norm)
    return score_instances(preds, [x[3] for x in ds["heldout"]], [x[0] for x in ds["heldout"]])


# -- runs ----------------------------------------------------------------------------------
def full_annotation_clicks(ds) -> int:
    """Polygon clicks to trace every object of every pool image (each object outlined and named)."""
    from napari_hitl.simulate.cost import image_clicks

    return int(sum(image_clicks(x[3].astype(np.int64)) for x in ds["pool"]))


def run_full(ds, args, clicks: int, log=print) -> dict:
    """A model trained on every pool image with full instance labels; held-out scores along the way."""
    from napari_hitl.evaluate.bench_loop import _train_settings
    from napari_hitl.model.train import HUMAN, Sample, Trainer

    import torch

    torch.manual_seed(args.seed)
    samples = [Sample(img, sem, np.full(sem.shape, HUMAN, np.uint8), name, inst) for name, img, sem, inst in ds["pool"]]
    trainer = Trainer(ds["num_classes"], settings=_train_settings(args))
    total = args.full_steps or args.steps * args.rounds
    chunk = max(1, total // max(1, args.full_evals))
    curve, done, t0 = [], 0, time.perf_counter()

    def scored(done, loss):
        sc = heldout_scores(trainer.model, ds, decode_settings(args))
        curve.append({"steps": done, **{k: sc[k] for k in KEYS}, "loss": loss})
        log(f"  full supervision, {done:>5} steps: F1 {sc['f1']:.3f}  AP {sc['ap']:.3f}  AJI {sc['aji']:.3f}  "
            f"(loss {loss:.3f}, {time.perf_counter() - t0:.0f}s)")
        return sc

    if getattr(args, "full_one_round", False):  # one schedule over all steps, scored along it
        losses = []
        for step, _, loss in trainer.iter_round(samples, steps=total):
            losses.append(loss)
            if step % chunk == 0 or step == total:
                sc = scored(step, float(np.mean(losses[-10:])))
    while not getattr(args, "full_one_round", False) and done < total:
        n = min(chunk, total - done)
        res = trainer.train_round(samples, steps=n)
        done += n
        sc = scored(done, res.final_loss)
    last = curve[-1]
    flat = len(curve) >= 3 and max(abs(curve[-1]["ap"] - c["ap"]) for c in curve[-3:-1]) < 0.01
    out = {"clicks": clicks, "steps": total, "one_round": bool(getattr(args, "full_one_round", False)),
           "curve": curve, "flat": bool(flat),
           "train_seconds": time.perf_counter() - t0, **{k: last[k] for k in KEYS},
           **{k: sc[k] for k in ("worst_image", "worst_f1", "worst_ap", "worst_aji", "per_image")}}
    if getattr(args, "full_size_norm", False):  # the same final model, predicted with object-size normalisation
        from napari_hitl.model.instances import SIZE_NORM_SETTINGS

        sn = heldout_scores(trainer.model, ds, decode_settings(args), dict(SIZE_NORM_SETTINGS))
        out["size_norm"] = {"settings": dict(SIZE_NORM_SETTINGS),
                            **{k: sn[k] for k in (*KEYS, "worst_image", "worst_f1", "worst_ap", "worst_aji", "per_image")}}
        log(f"  full supervision, final model with size normalisation: F1 {sn['f1']:.3f}  AP {sn['ap']:.3f}  "
            f"AJI {sn['aji']:.3f} (worst {sn['worst_image'][:10]}: F1 {sn['worst_f1']:.3f})")
    return out


def run_strategy(ds, strategy: str, args, engine, log=print) -> dict:
    """The instance loop under one strategy; held-out and pool scores after every round."""
    from napari_hitl.active.loop import LoopDriver, LoopSettings
    from napari_hitl.active.pseudo import PseudoSettings
    from napari_hitl.evaluate.bench_loop import _train_settings
    from napari_hitl.simulate.annotator import SimulatedAnnotator

    import torch

    torch.manual_seed(args.seed)
    pool_inst = [x[3] for x in ds["pool"]]
    settings = LoopSettings(strategy=strategy, rounds=args.rounds, budget=args.budget, background=0,
                            pseudo=PseudoSettings(enabled=not args.no_pseudo), diversity=args.diversity,
                            train=_train_settings(args), seed=args.seed, instances=True,
                            decode=decode_settings(args))

    def evaluate(driver):
        held = heldout_scores(driver.trainer.model, ds, decode_settings(args))
        labels = score_instances(driver.final_instances(), pool_inst, [x[0] for x in ds["pool"]])
        out = {f"model_{k}": held[k] for k in KEYS}
        out.update({f"worst_{k}": held[f"worst_{k}"] for k in KEYS})
        out["worst_image"] = held["worst_image"]
        out.update({f"label_{k}": labels[k] for k in KEYS})
        return out

    annotator = SimulatedAnnotator([x[2] for x in ds["pool"]], None, engine=engine, instance_truths=pool_inst)
    driver = LoopDriver([x[1] for x in ds["pool"]], annotator, ds["num_classes"], settings,
                        names=[x[0] for x in ds["pool"]], evaluate=evaluate)

    def on_round(rec):
        m = rec.metrics
        log(f"  {strategy:<12} round {rec.round}: clicks {rec.clicks:>6}  held-out F1 {m['model_f1']:.3f} "
            f"AP {m['model_ap']:.3f} AJI {m['model_aji']:.3f} (worst {m['worst_image']}: AP {m['worst_ap']:.3f})  "
            f"labels AP {m['label_ap']:.3f}  (train {rec.train_seconds:.0f}s, ask {rec.select_seconds:.0f}s, "
            f"loss {rec.loss:.3f})")

    driver.run(on_round=on_round)
    return {"strategy": strategy, "rounds": driver.records_as_dicts(), "corrections": annotator.corrections}


def summarise(result: dict) -> str:
    full = result.get("full")
    lines = [f"{'strategy':<12} {'round':>5} {'clicks':>7} {'%full':>6} {'F1@0.5':>7} {'AP':>6} {'AJI':>6} "
             f"{'worst image (AP, F1)':>34} {'labels AP':>9}"]
    for name, run in result["strategies"].items():
        for r in run["rounds"]:
            m = r["metrics"]
            pct = f"{100 * r['clicks'] / full['clicks']:6.1f}" if full else "     -"
            worst = f"{m['worst_image'][:18]} ({m['worst_ap']:.3f}, {m['worst_f1']:.3f})"
            lines.append(f"{name:<12} {r['round']:>5} {r['clicks']:>7} {pct} {m['model_f1']:7.3f} {m['model_ap']:6.3f} "
                         f"{m['model_aji']:6.3f} {worst:>34} {m['label_ap']:9.3f}")
    if full:
        worst = f"{full['worst_image'][:18]} ({full['worst_ap']:.3f}, {full['worst_f1']:.3f})"
        lines.append(f"{'full':<12} {'-':>5} {full['clicks']:>7} {100.0:6.1f} {full['f1']:7.3f} {full['ap']:6.3f} "
                     f"{full['aji']:6.3f} {worst:>34} {1.0:9.3f}")
        lines.append(f"full supervision: {full['steps']} steps, held-out AP curve "
                     + ", ".join(f"{c['steps']}: {c['ap']:.3f}" for c in full["curve"])
                     + (" (flat: last three within 0.01)" if full["flat"] else " (NOT flat: still moving)"))
        budget = 0.15 * full["clicks"]
        for name, run in result["strategies"].items():
            ok = [r for r in run["rounds"] if r["clicks"] <= budget]
            if not ok:
                lines.append(f"  {name}: no round within 15% of full clicks ({budget:.0f})")
                continue
            best = max(ok, key=lambda r: r["metrics"]["model_ap"])
            m = best["metrics"]
            lines.append(f"  {name}: best within 15% of full clicks ({budget:.0f}): round {best['round']}, "
                         f"F1 {m['model_f1']:.3f}, AP {m['model_ap']:.3f}, AJI {m['model_aji']:.3f} at "
                         f"{100 * best['clicks'] / full['clicks']:.1f}% of the clicks")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    full = result.get("full")
    for ax, key, title in zip(axes, KEYS, ("object F1 @ IoU 0.5", "AP @ IoU 0.5:0.95", "aggregated Jaccard")):
        for name, run in result["strategies"].items():
            xs = [r["clicks"] for r in run["rounds"]]
            ax.plot(xs, [r["metrics"][f"model_{key}"] for r in run["rounds"]], marker="o", label=name)
            ax.plot(xs, [r["metrics"][f"worst_{key}"] for r in run["rounds"]], marker=".", ls=":", lw=1,
                    label=f"{name}, worst image")
        if full:
            ax.axhline(full[key], color="k", ls="--", lw=1, label=f"full supervision ({full['clicks']} clicks)")
            ax.axvline(0.15 * full["clicks"], color="gray", ls="-.", lw=1, label="15% of full clicks")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative clicks")
        ax.set_title(f"{result['dataset']} held-out: {title}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    """``bench loop --instances``: the instance loop per strategy, full supervision, JSON and plot."""
    import torch

    from napari_hitl.active.loop import LOOP_STRATEGIES

    if not args.data:
        raise InputError("--data is needed (../shared/data/dsb2018 or ../shared/data/ctc_sim)")
    torch.set_num_threads(max(1, args.threads))
    names = ["objects", "random"] if args.strategy == "all" else [s.strip() for s in args.strategy.split(",")]
    if args.rounds == 0:  # --rounds 0: the full-supervision reference alone
        names = []
    for s in names:
        if s not in LOOP_STRATEGIES or s.startswith("superpixel"):
            raise InputError(f"--instances: strategy {s!r} is not an image strategy of the loop")
    engine = None
    if args.corrections != "none":
        from napari_hitl.interactive.engine import get_engine

        engine = get_engine(args.corrections)
    t0 = time.perf_counter()
    ds = load_instance_dataset(Path(args.data), args.scale, args.pool, args.heldout)
    clicks = full_annotation_clicks(ds)
    n_obj = sum(len(np.unique(x[3][x[3] > 0])) for x in ds["pool"])
    print(f"{ds['name']} instances: pool {len(ds['pool'])} images ({n_obj} objects, {clicks} polygon clicks in full), "
          f"held-out {len(ds['heldout'])}, scale {args.scale}; rounds {args.rounds}, budget {args.budget}/round, "
          f"{args.steps} steps x batch {args.batch} x crop {args.crop}; torch threads {torch.get_num_threads()}; "
          f"objects corrected with {args.corrections}; decoder {decode_settings(args)}", flush=True)
    result = {"dataset": ds["name"], "instances": True,
              "args": {k: v for k, v in vars(args).items() if k != "func"},
              "pool": len(ds["pool"]), "heldout": len(ds["heldout"]), "pool_objects": n_obj, "strategies": {}}
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if not args.no_full:
        result["full"] = run_full(ds, args, clicks, log)
    for s in names:
        result["strategies"][s] = run_strategy(ds, s, args, engine, log)
    print()
    print(summarise(result))
    result["seconds"] = time.perf_counter() - t0
    from napari_hitl.evaluate.bench_loop import _write

    _write(result, args, plot)
    return 0
