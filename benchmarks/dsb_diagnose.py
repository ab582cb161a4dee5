"""Diagnose the dsb2018 instance model on the POOL only (never the held-out images).

Trains on the first 28 images of the pool of ``bench loop --data ../shared/data/dsb2018
--instances`` (its 70/30 split, all 35 pool images) with full instance labels, and scores
the model's objects on the pool's last 7 images: object F1 at IoU 0.5, AP over IoU
0.5:0.95 and aggregated Jaccard per image, their mean and the worst image. The held-out 15
are never used (the shared loader reads one of them; it is dropped). Settings chosen with it
are pool-validation choices. ``--zoom`` scores the validation images enlarged (or shrunk),
to see objects of sizes the 7 images do not have.

    # train (600 steps, scored at 300 and 600), keep the model
    python benchmarks/dsb_diagnose.py --steps 600 --evals 2 --save /tmp/dsb/base.pt --json out.json
    # score a kept model under prediction variants (JSON list of model_instances keywords)
    python benchmarks/dsb_diagnose.py --load /tmp/dsb/base.pt [--zoom 3] \
        --variants '[{}, {"size_norm": null}, {"flips": true}]' --json out.json
    # one warm-up and cosine over 1200 steps, scored at 600 and 1200, then also on the 7 images zoomed 2x
    python benchmarks/dsb_diagnose.py --steps 1200 --evals 2 --one-round --extra-zoom 2 --json out.json

Training settings beyond the loop bench's (batch, crop, seed) can be set with ``--train``
(a JSON dict of TrainSettings fields). Run with one torch thread (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dsb2018"
N_TRAIN = 28


def load_pool(data: Path, zoom: float = 1.0):
    """(train, validation) lists of (name, image, semantic, instances): the pool's first 28 and
    last 7, the validation images (and labels) zoomed by ``zoom``."""
    from napari_hitl.evaluate.bench_instances import load_instance_dataset
    from napari_hitl.evaluate.bench_loop import _resize

    ds = load_instance_dataset(data, 1.0, 0, 1)  # the loader reads >= 1 held-out image: never used here
    pool = ds["pool"]
    val = [(n, _resize(img, zoom, False), _resize(sem, zoom, True), _resize(inst.astype(np.uint16), zoom, True)
            .astype(np.uint32)) for n, img, sem, inst in pool[N_TRAIN:]]
    return pool[:N_TRAIN], val


_MAPS: dict = {}  # (validation set, size_norm, flips) -> predicted maps, for decoder variants of one model


def score(model, val, variant: dict, reuse: bool = False) -> dict:
    """Scores of ``model`` on ``val`` predicted as ``variant`` (model_instances keywords); with
    ``reuse`` the maps of an earlier variant with the same prediction keywords are decoded again."""
    from napari_hitl.evaluate.bench_instances import decode_maps, score_instances
    from napari_hitl.model.instances import median_diameter
    from napari_hitl.model.segnet import predict_proba_batch

    t0 = time.perf_counter()
    pk = {k: variant[k] for k in ("size_norm", "flips") if k in variant}
    key = (id(val), json.dumps(pk, sort_keys=True, default=str))
    maps = _MAPS.get(key) if reuse else None
    if maps is None:
        maps = predict_proba_batch(model, [x[1] for x in val], batch_size=4, with_instances=True, **pk)
        if reuse:
            _MAPS[key] = maps
    preds = decode_maps(maps, 2, variant.get("decode"))
    seconds = time.perf_counter() - t0
    out = score_instances(preds, [x[3] for x in val], [x[0] for x in val])
    for r, pr, x in zip(out["per_image"], preds, val):  # object sizes: the truth's and what the model found
        r["diameter"], r["pred_diameter"] = median_diameter(x[3]), median_diameter(pr)
    out["predict_seconds"] = seconds
    return out


def show(tag: str, sc: dict) -> None:
    print(f"{tag}: mean F1 {sc['f1']:.3f} AP {sc['ap']:.3f} AJI {sc['aji']:.3f} | worst {sc['worst_image'][:10]} "
          f"F1 {sc['worst_f1']:.3f} AP {sc['worst_ap']:.3f} AJI {sc['worst_aji']:.3f} | predict {sc['predict_seconds']:.1f}s",
          flush=True)
    for r in sc["per_image"]:
        print(f"    {r['name'][:10]}  F1 {r['f1']:.3f}  AP {r['ap']:.3f}  AJI {r['aji']:.3f}  "
              f"objects {r['objects']:>3} predicted {r['predicted']:>3}  diameter {r['diameter'] or 0:5.1f} "
              f"predicted {r['pred_diameter'] or 0:5.1f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--evals", type=int, default=2, help="score this many times along the training")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", default="{}", help="JSON dict of further TrainSettings fields")
    p.add_argument("--save", type=Path, help="write the trained model here")
    p.add_argument("--load", type=Path, help="score this model instead of training one")
    p.add_argument("--variants", default="[{}]", help="JSON list of model_instances keyword dicts to score")
    p.add_argument("--n-train", type=int, default=N_TRAIN,
                   help="train on only the first N of the 28 training images (a model as weak as the loop's early ones)")
    p.add_argument("--zoom", type=float, default=1.0,
                   help="score the validation images zoomed by this factor (objects of other sizes than trained on)")
    p.add_argument("--extra-zoom", type=float, nargs="*", default=[],
                   help="after training, also score the final model on the validation images zoomed by these "
                        "factors (objects larger than the 7 images have)")
    p.add_argument("--one-round", action="store_true",
                   help="train all steps as one round (one warm-up and one cosine decay) and score along it, "
                        "instead of one round per score (a restart of the schedule at each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from napari_hitl.model.train import HUMAN, Sample, Trainer, TrainSettings

    torch.set_num_threads(args.threads)
    variants = json.loads(args.variants)
    train, val = load_pool(args.data, args.zoom)
    train = train[:args.n_train]
    from napari_hitl.model.instances import inscribed_diameter, median_diameter

    print(f"train {len(train)} images, validation {len(val)} (pool only); load {os.getloadavg()}", flush=True)
    diam = {x[0]: median_diameter(x[3]) for x in train + val}
    tr = np.array([diam[x[0]] for x in train])
    print(f"median object diameter (px) of the training images: median {np.median(tr):.1f}, "
          f"range {tr.min():.1f}-{tr.max():.1f}; validation: "
          + ", ".join(f"{x[0][:10]} {diam[x[0]]:.1f}" for x in val), flush=True)
    insc = {x[0]: inscribed_diameter(x[3] > 0) for x in train + val}
    tr = np.array([insc[x[0]] for x in train])
    print(f"inscribed diameter of the labelled foreground: training median {np.median(tr):.1f}, range "
          f"{tr.min():.1f}-{tr.max():.1f}; validation: " + ", ".join(f"{x[0][:10]} {insc[x[0]]:.1f}" for x in val),
          flush=True)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch, crop=args.crop, checkpoint_every=0,
                             seed=args.seed, **json.loads(args.train))
    torch.manual_seed(args.seed)
    trainer = Trainer(2, settings=settings)
    result = {"what": "pool-only validation: trained on the dsb2018 pool's first 28 images, scored on its last 7",
              "command_line": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "settings": {k: v for k, v in vars(settings).items()}, "diameters": diam, "inscribed_diameters": insc,
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "curve": [], "variants": []}
    if args.load:
        trainer.load(args.load)
        result["loaded"] = str(args.load)
    else:
        samples = [Sample(img, sem, np.full(sem.shape, HUMAN, np.uint8), name, inst) for name, img, sem, inst in train]
        chunk = max(1, args.steps // max(1, args.evals))
        done, t0 = 0, time.perf_counter()

        def scored(done, loss):
            sc = score(trainer.model, val, variants[0])
            row = {"steps": done, "train_seconds": time.perf_counter() - t0, "loss": loss,
                   "load": os.getloadavg()[0], **{k: v for k, v in sc.items()}}
            result["curve"].append(row)
            show(f"{done} steps ({row['train_seconds']:.0f}s, loss {loss:.3f}, load {row['load']:.1f})", sc)

        if args.one_round:
            losses = []
            for step, _, loss in trainer.iter_round(samples, steps=args.steps):
                losses.append(loss)
                if step % chunk == 0 or step == args.steps:
                    scored(step, float(np.mean(losses[-10:])))  # the trainer re-freezes its BN each step
        while not args.one_round and done < args.steps:
            n = min(chunk, args.steps - done)
            res = trainer.train_round(samples, steps=n)
            done += n
            scored(done, res.final_loss)
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            trainer.save(args.save)
    for v in variants if args.load else variants[1:]:
        sc = score(trainer.model, val, v, reuse=True)
        result["variants"].append({"variant": v, "load": os.getloadavg()[0], **sc})
        show(json.dumps(v), sc)
    result["zooms"] = []
    for z in args.extra_zoom:
        zval = load_pool(args.data, z)[1]
        for v in variants if args.load else variants[:1]:
            sc = score(trainer.model, zval, v, reuse=True)
            result["zooms"].append({"zoom": z, "variant": v, "load": os.getloadavg()[0], **sc})
            show(f"zoom {z} {json.dumps(v)}", sc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
