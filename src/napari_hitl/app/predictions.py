"""The session's predictions, read from the project's cache one image at a time.

A batch run (:mod:`napari_hitl.app.batch`) saves every image's scores and features in the
project and its class probabilities as zarr in the project's cache. This mapping gives
``name -> [Prediction per frame]`` over them, loading an image's maps only when asked and
keeping a few in memory, so a project of any size costs the same memory. Predictions made in
this process (one image, for superpixel suggestions) can be added with :meth:`update`. A slide
(a large image) is never a key: its maps are never loaded whole; its saved result and the
scores of its windows (:meth:`windows`) are what the ranking reads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from napari_hitl.active.uncertainty import Prediction

#: images whose full maps are kept in memory at a time
KEEP = 8


class CachedPredictions(Mapping):
    """``name -> list[Prediction]`` of the current model: batch results on disk, plus added ones."""

    def __init__(self, project, keep: int = KEEP):
        self.project = project
        self.keep = keep
        self.model: str | None = None  # the token of the model whose batch results are used
        self._results: dict[str, dict] = {}
        self._plain: dict[str, dict] = {}  # the results of images that are not slides (the mapping's keys)
        self._windows: list | None = None  # the slides' window scores, read on first use
        self._added: dict[str, list[Prediction]] = {}
        self._loaded: OrderedDict[str, list[Prediction]] = OrderedDict()
        self._lock = threading.Lock()  # the UI thread and the worker both read

    # ------------------------------------------------------------------ what there is
    def use(self, model: str, results: dict | None = None, windows: list | None = None) -> None:
        """Use the batch results of ``model`` (a token), as saved in the project now, or
        ``results`` and the slides' ``windows`` already read (on a worker: then nothing is read here)."""
        self.model = model
        self._results = self.project.results(model) if results is None else results
        self._plain = {n: r for n, r in self._results.items() if not self.project.is_slide(n)}
        self._windows = windows
        self._loaded.clear()

    def results(self) -> dict[str, dict]:
        """The saved batch results in use: scores and features by image name."""
        return self._results

    def windows(self) -> list:
        """The window scores of the slides among the results in use
        (:class:`napari_hitl.app.slides.WindowResult`; read from the cache once)."""
        if self._windows is None:
            from napari_hitl.app.slides import window_results

            self._windows = window_results(self.project, self._results)
        return self._windows

    def reset(self) -> None:
        """Forget everything (the model changed: its old predictions no longer hold)."""
        self.model = None
        self._results, self._plain, self._added, self._windows = {}, {}, {}, None
        self._loaded.clear()

    def update(self, predictions: dict[str, list[Prediction]]) -> None:
        """Add predictions made in this process."""
        self._added.update(predictions)

    # ------------------------------------------------------------------ Mapping
    def __contains__(self, name) -> bool:
        return name in self._added or name in self._plain

    def __iter__(self):
        yield from self._added
        yield from (n for n in self._plain if n not in self._added)

    def __len__(self) -> int:
        return len(self._added) + sum(1 for n in self._plain if n not in self._added)

    def __getitem__(self, name: str) -> list[Prediction]:
        if name in self._added:
            return self._added[name]
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
        result = self._plain.get(name)
        if result is None:
            raise KeyError(name)
        from napari_hitl.app.batch import open_probs

        probs = open_probs(name, result)
        features = result["features"]
        n = self.project.n_classes
        stuff = self.project.stuff_classes
        if probs.shape[1] == n + 2:  # class probabilities, then the instance head's two maps
            preds = [Prediction.from_instance_maps(np.asarray(probs[t], np.float32), n, features, stuff)
                     for t in range(probs.shape[0])]
        else:
            preds = [Prediction.from_probs(np.asarray(probs[t], np.float32), features) for t in range(probs.shape[0])]
        with self._lock:
            self._loaded[name] = preds
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        return preds
