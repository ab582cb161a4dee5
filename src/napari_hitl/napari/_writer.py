"""npe2 writers for Labels layers: TIFF, PNG (8/16-bit by value range) and zarr."""

from __future__ import annotations

from napari_hitl import io


def _write(path: str, data) -> list[str]:
    import numpy as np

    return [str(io.write_labels(path, np.asarray(data)))]


def write_labels_tiff(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data)


def write_labels_png(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data)


def write_labels_zarr(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data)
