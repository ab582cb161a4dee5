"""The shipped sample data and ready-to-try sample projects built from it.

Sample projects are created (once) under ``$NAPARI_HITL_HOME`` or ``~/.cache/napari-hitl``
with the images copied in, so they are self-contained and can be annotated freely.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from napari_hitl import io
from napari_hitl.errors import InputError, ProjectLockedError
from napari_hitl.project import Project, is_project

SAMPLES = {
    # key: (images source inside sample_data, ground truth, is time-lapse, class names)
    "nuclei": ("nuclei/images", "nuclei/labels", False, ["background", "nucleus"]),
    "timelapse": ("timelapse/drift.tif", "timelapse/drift_labels.tif", False, ["background", "nucleus"]),
}


def sample_root() -> Path:
    """Folder of the shipped sample data (inside the package, or the checkout's top level)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sample_data", here.parents[1] / "sample_data"):
        if (candidate / "nuclei").is_dir():
            return candidate
    raise RuntimeError(f"the sample data is missing from this installation ({here / 'sample_data'}); reinstall napari-hitl")


def home() -> Path:
    """Where napari-hitl keeps sample projects and other per-user files."""
    return Path(os.environ.get("NAPARI_HITL_HOME", Path.home() / ".cache" / "napari-hitl"))


def _check(name: str) -> tuple:
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    return SAMPLES[name]


def sample_project(name: str = "nuclei", dest: str | os.PathLike | None = None) -> Project:
    """Open (creating it the first time) the sample project ``name`` for writing.

    With ``dest`` the project is made there; otherwise in :func:`home`. If the default
    project is already open in another process, a fresh copy in a temporary folder is used.
    """
    src, _, timelapse, classes = _check(name)
    path = Path(dest) if dest is not None else home() / "samples" / f"{name}-project"
    if is_project(path):
        try:
            return Project.open(path)
        except ProjectLockedError:
            if dest is not None:
                raise
            path = Path(tempfile.mkdtemp(prefix=f"napari-hitl-{name}-")) / "project"
    return Project.create(path, sample_root() / src, classes=classes, timelapse=timelapse, copy=True)


def sample_truth(name: str, image: str) -> np.ndarray:
    """Ground-truth labels of one image of a sample (for the simulated annotator and tests)."""
    src, truth, _, _ = _check(name)
    root = sample_root()
    if (root / truth).is_dir():
        path = root / truth / f"{image}.png"
        if not path.exists():
            raise InputError(f"sample {name!r} has no image {image!r}")
        return io.read_labels(path)
    return io.read_labels(root / truth)
