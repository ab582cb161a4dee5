"""napari's part of the large-image benchmark (:mod:`napari_hitl.evaluate.bench_bigimage`), run
in a process of its own under a display: ``python -m napari_hitl.napari._bench napari PATH``
prints one line of JSON."""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def measure_napari(path: str) -> dict:
    """napari: the file through the plugin's reader until the first frame is drawn; then a
    zoom to full resolution at the centre until that frame is drawn."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    QApplication.processEvents()
    t0 = time.perf_counter()
    layer, = viewer.open(path, plugin="napari-hitl")
    shot = viewer.screenshot(canvas_only=True)
    t_first = time.perf_counter() - t0
    first_level = int(layer.data_level)
    drawn = float(np.asarray(shot)[..., :3].std())
    h, w = layer.data[0].shape[:2]
    t0 = time.perf_counter()
    viewer.camera.center = (h / 2, w / 2)
    viewer.camera.zoom = 1.0
    for _ in range(20):  # napari picks the level on a draw; the next draw shows it
        QApplication.processEvents()
        viewer.screenshot(canvas_only=True)
        if layer.data_level == 0:
            viewer.screenshot(canvas_only=True)
            break
    t_zoom = time.perf_counter() - t0
    viewer.layers.clear()  # a second image in the same session: the modules are imported by now
    viewer.reset_view()
    t0 = time.perf_counter()
    viewer.open(path, plugin="napari-hitl")
    viewer.screenshot(canvas_only=True)
    t_again = time.perf_counter() - t0
    out = {"first_frame_s": t_first, "first_frame_again_s": t_again, "first_frame_level": first_level, "first_frame_std": drawn,
           "zoom_to_full_res_s": t_zoom, "zoomed_level": int(layer.data_level),
           "levels": len(layer.data), "peak_rss_mb": _peak_mb(), "napari": napari.__version__}
    viewer.close()
    return out


if __name__ == "__main__":
    if sys.argv[1:2] != ["napari"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m napari_hitl.napari._bench napari PATH")
    print(json.dumps(measure_napari(sys.argv[2])))
