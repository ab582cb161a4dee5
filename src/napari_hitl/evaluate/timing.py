"""Timing of the interactive engine: per-click and preparation times against the 50 ms /
1 s-per-megapixel targets. ``python -m napari_hitl.evaluate.timing [size]`` prints them."""

from __future__ import annotations

import json
import time

import numpy as np


def time_clicks(size: int = 1024, clicks: int = 10, repeats: int = 3, seed: int = 0) -> dict:
    """Per-click and preparation times (ms) on a synthetic ``size`` x ``size`` RGB image, the click
    robot correcting an elliptic object: what the 50 ms / 1 s-per-megapixel targets are about."""
    import cv2

    from napari_hitl.interactive.clicknet import ClickNetEngine
    from napari_hitl.simulate.clicker import run_clicks

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), size / 40)
    truth = np.zeros((size, size), np.uint8)
    cv2.ellipse(truth, (size // 2, size // 2), (size // 4, size // 6), 30, 0, 360, 1, -1)
    truth = truth.astype(bool)
    image = (np.clip((noise - noise.min()) / np.ptp(noise) * 0.6 + 0.3 * truth[..., None], 0, 1) * 255).astype(np.uint8)
    engine = ClickNetEngine()
    prep, per_click = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.prepare(image)
        prep.append((time.perf_counter() - t0) * 1000)
        run = run_clicks(engine, truth, clicks)
        per_click += run.ms
        pred = run.mask
    return {"size": size, "device": engine.device_name, "prepare_ms_median": float(np.median(prep)),
            "click_ms_median": float(np.median(per_click)), "click_ms_p95": float(np.percentile(per_click, 95)),
            "clicks": len(per_click), "final_iou": float((pred & truth).sum() / (pred | truth).sum())}


if __name__ == "__main__":  # python -m napari_hitl.evaluate.timing [size]
    import sys

    print(json.dumps(time_clicks(int(sys.argv[1]) if len(sys.argv) > 1 else 1024), indent=2))
