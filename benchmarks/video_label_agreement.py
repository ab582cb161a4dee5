"""How well the flow carries round one's human labels onto the neighbouring frames, against the
true masks (what :func:`napari_hitl.video.trust.label_agreement` would see with a perfect model),
per class and frame distance, on davis2016 (30 frames, scale 0.5, rect40, 2.4% clicks, seed 0:
the units bench video-cv labels in round one).

    PYTHONPATH=src python benchmarks/video_label_agreement.py blackswan,breakdance,... [CACHE_DIR]

Prints per sequence, for g = 1, 2, 3 frames: [background, object agreement, object pixels],
weighted by flow confidence ('w') or not ('u'). Measured 2026-12-02 (load 10-16 on 2 cores):
breakdance object 0.974 / 0.817 / 0.358 (w, g = 1 / 2 / 3); blackswan >= 0.99; kite-surf object
0.913 / 0.950 / 0.957; car-roundabout and camel >= 0.99.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_hitl.evaluate import bench_video as bv
from napari_hitl.evaluate.annotate import annotate_budget
from napari_hitl.simulate.cost import full_annotation_cost
from napari_hitl.video.flow import warp
from napari_hitl.video.propagate import resize_labels

torch.set_num_threads(1)
seqs = sys.argv[1].split(",")
cache = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/video-label-agreement")
args = argparse.Namespace(steps=120, lam=100.0, seed=0, fixed_lam=False, trust_low=None, trust_high=None,
                          motion_trust_min=None, unit="rect40", scale=0.5, flow="dis", budget=2.4)
for name in seqs:
    t0 = time.time()
    frames, truth = bv.load_video(Path(__file__).resolve().parents[2] / "shared/data/davis2016" / name, "davis", 30)
    sess = bv.new_session(frames, args, cache / name)
    sess.precompute_flows()
    tt = sess.new_tuner()
    probs, feats = tt.predict(with_features=True)
    annotate_budget(sess, truth, bv.round_budget(full_annotation_cost(truth), args), probs, feats,
                    first_round=True, seed=1)
    labels = sess.work_labels()
    ref = resize_labels(truth, sess.work_shape)
    n = len(labels)
    ann = np.flatnonzero((labels >= 0).reshape(n, -1).any(1))
    res = {}
    for g in (1, 2, 3):
        for mode in ("w", "u"):
            a = {0: [0.0, 0.0], 1: [0.0, 0.0]}
            for t in ann:
                for u in (t - g, t + g):
                    if not 0 <= u < n:
                        continue
                    car = warp(labels[t].astype(np.float32), sess.flows.flow(u, t), nearest=True)
                    conf = tt.confidence(u, t)
                    w = conf if mode == "w" else (conf > 0).astype(np.float32)
                    for c in (0, 1):
                        m = (car == c) & (conf > 0)
                        a[c][0] += float(w[m][ref[u][m] == c].sum())
                        a[c][1] += float(w[m].sum())
            res[f"g{g}{mode}"] = [round(a[c][0] / max(a[c][1], 1), 3) for c in (0, 1)] + [int(a[1][1])]
    print(json.dumps({"name": name, **res, "s": round(time.time() - t0)}), flush=True)
