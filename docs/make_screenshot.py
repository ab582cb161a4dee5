"""Screenshot of the annotation dock on the sample project in a real napari window.

Run under a virtual display:
``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshot.py``
It opens the viewer, docks the widget, loads the nuclei sample, trains one tiny round so the
images are ranked, makes a few clicks so masks and prompts show, and saves
``docs/screenshot_dock.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "screenshot_dock.png"))
    parser.add_argument("--engine", default="graph", help="interactive engine for the clicks")
    parser.add_argument("--steps", type=int, default=20, help="training steps before ranking")
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_HITL_HOME", tempfile.mkdtemp(prefix="napari-hitl-shot-"))

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication
    from skimage.measure import label, regionprops

    from napari_hitl.samples import sample_project, sample_truth

    viewer = napari.Viewer(title="napari-hitl")
    viewer.window._qt_window.resize(1600, 1000)
    _, dock = viewer.window.add_plugin_dock_widget("napari-hitl", "Annotation dock")
    app = QApplication.instance()

    def wait(cond, timeout=180.0):
        t0 = time.time()
        while not cond() and time.time() - t0 < timeout:
            app.processEvents()
            time.sleep(0.01)
        if not cond():
            raise SystemExit("timed out waiting for the dock")

    def idle():
        wait(lambda: not dock.queue.busy)

    dock.set_engine(args.engine)
    dock.open_project(sample_project("nuclei"))
    idle()
    name = dock.current
    # one human-labelled image and a tiny training round, so the list shows ranked scores
    dock.labels_layer.data = sample_truth("nuclei", name).astype(np.uint16)
    dock.accept_labels()
    dock.training.steps.setValue(args.steps)
    dock.training.crop.setValue(128)
    dock.training.batch.setValue(2)
    dock.train()
    wait(lambda: dock.training.figures.text().startswith("Round"))
    idle()
    dock.ranking.set_choice("local consistency")
    dock.open_next()
    idle()
    # a few clicks on the next image: two nuclei as regions, one negative click
    inst = label(sample_truth("nuclei", dock.current) > 0)
    props = sorted(regionprops(inst), key=lambda r: -r.area)
    dock.run_action("click")
    for k, p in enumerate(props[:2]):
        if k:
            dock.run_action("new_region")
        y, x = p.coords[len(p.coords) // 2]
        dock.tools.click(float(y), float(x), True)
        idle()
    y, x = np.argwhere(inst == 0)[len(np.argwhere(inst == 0)) // 3]
    dock.tools.click(float(y), float(x), False)
    idle()
    dock.say("2 regions · 3 prompts · Backspace undoes, Accept saves")
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}")
    dock.queue.stop()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
