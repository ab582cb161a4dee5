"""Readers and writers: images in, label arrays out, every write atomic.

Images are PNG, JPEG or TIFF, 2-D gray or RGB (RGBA loses its alpha), or a multi-page TIFF
(a time-lapse, ``(T, H, W[, 3])``). Large 2-D images (a whole-slide TIFF, zarr) open lazily
(:func:`open_lazy`, :class:`LazyImage`): read window by window, with a pyramid for display
(the file's own levels, else coarsened ones; :func:`write_pyramid` stores one as zarr for a
file that has none); :func:`load_image` picks by size.
Labels are written as TIFF, PNG (8- or 16-bit) or zarr.
All writes go through :func:`atomic_write`: a temporary file in the same folder, flushed and
fsynced, then renamed over the target, so a process killed mid-write leaves the old file.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from napari_hitl.errors import CorruptFileError, ExportError, HitlError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABEL_FORMATS = ("tiff", "png", "zarr")
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class ImageInfo:
    """What an image file holds, read from its header only."""

    shape: tuple[int, int]  # (H, W)
    channels: int  # 1 gray, 3 RGB
    frames: int  # pages of a TIFF, 1 otherwise
    dtype: str


def natural_key(text: str) -> list:
    """Sort key so that 'img2' comes before 'img10', as file browsers sort."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _channels_of_mode(mode: str, path: Path) -> int:
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "P", "LA", "PA"):
        return 3 if mode in ("P", "PA") else 1
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        return 3
    raise CorruptFileError(f"{path}: unsupported image mode {mode!r}")


def image_info(path: str | os.PathLike) -> ImageInfo:
    """Shape, channels and frame count of an image, reading only its header."""
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = tuple(int(s) for s in series.shape)
                axes = series.axes
                dtype = str(series.dtype)
            frames = 1
            for ax, n in zip(axes, shape):
                if ax in "TZIQ":
                    frames *= n
            if "S" in axes:
                channels = shape[axes.index("S")]
            elif "C" in axes:
                channels = shape[axes.index("C")]
            else:
                channels = 1
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
        else:
            from PIL import Image

            with Image.open(path) as im:
                w, h = im.size
                channels = _channels_of_mode(im.mode, path)
                frames = 1
                dtype = "uint16" if im.mode.startswith("I;16") else "uint8"
    except (CorruptFileError, InputError):
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure names the file
        raise CorruptFileError(f"cannot read image {path}: {err}") from err
    if h == 0 or w == 0 or frames == 0:
        raise InputError(f"image {path} is empty (size {h}x{w}, {frames} frame(s))")
    if channels not in (1, 3, 4):
        raise InputError(f"image {path} has {channels} channels; expected gray or RGB")
    return ImageInfo((int(h), int(w)), 1 if channels == 1 else 3, int(frames), dtype)


def _to_gray_or_rgb(arr: np.ndarray, path: Path, stack: bool) -> np.ndarray:
    """Drop alpha, squeeze singleton channels; check the result is gray or RGB."""
    core = arr.ndim - (1 if stack else 0)
    if core == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., 0]
    elif core == 3 and arr.shape[-3] in (3, 4) and arr.shape[-1] > 4:  # channel-first TIFF
        arr = np.moveaxis(arr[..., :3, :, :], -3, -1)
    elif core != 2:
        raise InputError(f"image {path} has shape {arr.shape}; expected (H, W) gray or (H, W, 3) RGB")
    if arr.size == 0:
        raise InputError(f"image {path} is empty (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as ``(H, W)`` or ``(H, W, 3)``; a multi-page TIFF as ``(T, H, W[, 3])``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                arr = series.asarray()
                axes = series.axes
            stack = False
            lead = [i for i, ax in enumerate(axes) if ax in "TZIQ"]
            if lead:
                n = int(np.prod([arr.shape[i] for i in lead]))
                rest = [i for i in range(arr.ndim) if i not in lead]
                arr = np.transpose(arr, lead + rest).reshape((n,) + tuple(arr.shape[i] for i in rest))
                stack = n > 1
                if not stack:
                    arr = arr[0]
            if "C" in axes and not stack and arr.ndim == 3 and axes.replace("T", "").startswith("C"):
                arr = np.moveaxis(arr, 0, -1)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "CMYK", "YCbCr"):
                    im = im.convert("RGBA" if "A" in im.mode else "RGB")
                elif im.mode == "LA":
                    im = im.convert("L")
                elif im.mode == "1":
                    im = im.convert("L")
                arr = np.asarray(im)
            stack = False
        else:
            raise InputError(f"{path}: unsupported file type {path.suffix!r}; expected one of {IMAGE_SUFFIXES}")
    except (CorruptFileError, InputError):
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure names the file
        raise CorruptFileError(f"cannot read image {path}: {err}") from err
    return _to_gray_or_rgb(arr, path, stack)


def as_float_rgb(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Pixels as every engine and model takes them: ``(H, W, 3)`` float32 in [0, 1].

    Gray is replicated, alpha dropped. uint8 is divided by 255 and float already in [0, 1]
    is kept; other data (uint16 microscopy, floats) is stretched between its 0.5 and 99.8
    percentiles, since microscopes rarely fill their 12/16-bit range, or between
    ``value_range`` when given (a crop of a large image: :meth:`LazyImage.value_range`, so
    every crop is scaled alike).
    """
    if isinstance(image, LazyImage):
        raise InputError(f"{image.path} is a large image read lazily ({image.shape[0]}x{image.shape[1]}); "
                         "read a window of it (LazyImage.read), or use an engine that works on crops (clicknet)")
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (1, 3, 4):
        img = img[..., 0] if img.shape[2] == 1 else img[..., :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"image must be HxW or HxWx3 (gray or RGB), got shape {np.asarray(image).shape}")
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.bool_:
        out = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError("image contains NaN or infinite values")
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            out = np.clip((out - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(out)
        elif not (np.issubdtype(img.dtype, np.floating) and out.min() >= 0.0 and out.max() <= 1.0):
            lo, hi = np.percentile(out, (0.5, 99.8))
            out = np.clip((out - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(out)
    else:
        raise InputError(f"image dtype {img.dtype} is not supported (use uint8, uint16 or float)")
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- large images, read lazily

#: an image with more pixels per plane than this (a 6144 x 6144 plane) is opened lazily by
#: :func:`load_image`; smaller ones are read whole, as before
LAZY_PIXELS = 6144 * 6144
#: :func:`open_lazy` coarsens by 2 until the longer side is at most this (a pyramid for display)
PYRAMID_MIN_SIDE = 1024
#: chunk side of a lazily read image whose file has no chunks of its own (a contiguous TIFF)
LAZY_CHUNK = 1024


class _Level:
    """One resolution of a lazy image: a sliceable source (zarr array, memmap or dask array)
    and where its channel axis sits, so a window reads as ``(h, w)`` or ``(h, w, 3)``."""

    def __init__(self, source, channel_axis: int | None, chunks: tuple[int, int]):
        self.source, self.channel_axis, self.chunks = source, channel_axis, chunks
        shape = tuple(int(s) for s in source.shape)
        if channel_axis is None:
            self.hw, self.channels = shape, 1
        elif channel_axis == 0:
            self.hw, self.channels = shape[1:], shape[0]
        else:
            self.hw, self.channels = shape[:2], shape[2]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.channel_axis is None:
            out = self.source[y0:y1, x0:x1]
        elif self.channel_axis == 0:
            out = np.moveaxis(np.asarray(self.source[:3, y0:y1, x0:x1]), 0, -1)
        else:
            out = self.source[y0:y1, x0:x1, :3]
        if hasattr(out, "compute"):
            # in this process, always: on a Dask worker the default scheduler is the worker's client,
            # which would ship the graph (an open file) to the cluster and fail to pickle it
            out = out.compute(scheduler="threads")
        out = np.asarray(out)
        return out[..., 0] if out.ndim == 3 and out.shape[-1] == 1 else out

    def dask(self):
        """The level as a dask array ``(H, W)`` or ``(H, W, 3)`` (what napari shows)."""
        import dask.array as da

        src = self.source
        arr = src if isinstance(src, da.Array) else da.from_array(
            src, chunks=(self.chunks + ((self.channels,) if self.channel_axis == 2 else ()))
            if self.channel_axis != 0 else ((self.channels,) + self.chunks), asarray=True, lock=False)
        if self.channel_axis == 0:
            arr = arr[0] if self.channels == 1 else da.moveaxis(arr[:3], 0, -1)
        elif self.channel_axis == 2:
            arr = arr[..., 0] if self.channels == 1 else arr[..., :3]
        return arr


@dataclass(frozen=True, eq=False)
class LazyImage:
    """A 2-D image read window by window: TIFF (tiled, striped, contiguous; its pyramid levels
    if it has them) or zarr (an array, or a multiscale group). Nothing is read until asked.

    ``levels`` go from full resolution down, each about half the previous; a file without a
    pyramid gets levels coarsened from the full one (a window of level k reads 4**k times its
    pixels of the full image, each time: :func:`write_pyramid` stores a pyramid once).
    Pixels are ``(H, W)`` gray or ``(H, W, 3)`` RGB (alpha dropped), as :func:`read_image` gives.
    """

    path: Path
    _levels: tuple
    own_pyramid: bool  # the levels beyond the first come from the file (cheap to show)
    _closers: tuple = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """``(H, W)`` or ``(H, W, 3)`` of the full resolution."""
        lv = self._levels[0]
        return tuple(lv.hw) + ((3,) if self.channels == 3 else ())

    @property
    def channels(self) -> int:
        return 3 if self._levels[0].channels >= 3 else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._levels[0].source.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_levels(self) -> int:
        return len(self._levels)

    def level_shape(self, level: int) -> tuple[int, int]:
        """``(H, W)`` of pyramid level ``level``."""
        return tuple(self._levels[self._level(level)].hw)

    def scale(self, level: int) -> tuple[float, float]:
        """Full-resolution pixels per pixel of ``level`` along (y, x)."""
        h, w = self.level_shape(level)
        return self.shape[0] / h, self.shape[1] / w

    def _level(self, level: int) -> int:
        if not (isinstance(level, (int, np.integer)) and 0 <= level < len(self._levels)):
            raise InputError(f"{self.path}: pyramid level {level!r} does not exist (levels 0..{len(self._levels) - 1})")
        return int(level)

    def read(self, y0: int, x0: int, y1: int, x1: int, level: int = 0) -> np.ndarray:
        """The window ``[y0:y1, x0:x1]`` of ``level`` (end exclusive; must lie inside it)."""
        lv = self._levels[self._level(level)]
        h, w = lv.hw
        y0, x0, y1, x1 = (int(v) for v in (y0, x0, y1, x1))
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(f"{self.path}: window y {y0}:{y1}, x {x0}:{x1} is empty or outside the "
                             f"{h}x{w} image (level {level})")
        try:
            return np.ascontiguousarray(lv.read(y0, y1, x0, x1))
        except (HitlError, MemoryError):  # a window too large for memory is not a damaged file
            raise
        except Exception as err:  # noqa: BLE001 - a damaged tile or chunk names the file
            raise CorruptFileError(f"cannot read {self.path} (level {level}, y {y0}:{y1}, x {x0}:{x1}): "
                                   f"{err}") from err

    def levels(self) -> list:
        """Every level as a dask array, full resolution first (for dask computations)."""
        return [lv.dask() for lv in self._levels]

    def arrays(self) -> list:
        """Every level as a plain array-like (shape, dtype, slicing reads that window only),
        full resolution first: napari's multiscale data, without importing dask for a file
        that has its own pyramid."""
        return [WindowView(tuple(self.level_shape(k)) + ((3,) if self.channels == 3 else ()), self.dtype,
                           lambda y0, x0, y1, x1, k=k: self.read(y0, x0, y1, x1, k))
                for k in range(len(self._levels))]

    def value_range(self) -> tuple[float, float] | None:
        """The intensity range that maps to [0, 1] for the models (see :func:`as_float_rgb`):
        None for uint8; otherwise the 0.5 and 99.8 percentiles of the coarsest level, so
        every crop of the image is scaled alike without reading all of it."""
        if self.dtype == np.uint8 or self.dtype == np.bool_:
            return None
        h, w = self.level_shape(self.n_levels - 1)
        small = self.read(0, 0, h, w, self.n_levels - 1).astype(np.float32)
        if not np.isfinite(small).all():
            raise InputError(f"{self.path} contains NaN or infinite values")
        if np.issubdtype(self.dtype, np.floating) and small.min() >= 0.0 and small.max() <= 1.0:
            return 0.0, 1.0
        lo, hi = np.percentile(small, (0.5, 99.8))
        return float(lo), float(hi)

    def close(self) -> None:
        """Close the file handles (a TIFF stays open while its image is read)."""
        for close in self._closers:
            close()

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WindowView:
    """A 2-D map read window by window as an array-like: ``view[ys, xs(, c)]`` calls
    ``read(y0, x0, y1, x1)`` for that window only (ints, slices with steps, negative indices
    as numpy has them). A level of a :class:`LazyImage`, or a large image's labels in a
    project (:meth:`napari_hitl.project.Project.lazy_instances`): what napari slices."""

    def __init__(self, shape: tuple[int, ...], dtype, read: Callable[[int, int, int, int], np.ndarray]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.read = read
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(n for n, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices ({len(key)}) for an array of shape {self.shape}")
        key = key + (slice(None),) * (self.ndim - len(key))
        spans, picks = [], []
        for k, n in zip(key[:2], self.shape[:2]):
            if isinstance(k, (int, np.integer)):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for size {n}")
                spans.append((i, i + 1, 1))
                picks.append(0)
            elif isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 0:
                    raise IndexError("negative steps are not supported on a lazily read image")
                spans.append((start, max(stop, start), step))
                picks.append(slice(None, None, step))
            else:
                raise IndexError(f"index {k!r} is not supported on a lazily read image (use ints and slices)")
        (y0, y1, _), (x0, x1, _) = spans
        if y1 <= y0 or x1 <= x0:
            data = np.zeros((y1 - y0, x1 - x0) + self.shape[2:], self.dtype)
        else:
            data = self.read(y0, x0, y1, x1)
        return data[tuple(picks) + tuple(key[2:])]

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def _add_coarsened(levels: list, min_side: int) -> None:
    """Append levels coarsened by 2 (mean) until the longer side is at most ``min_side``."""
    import dask.array as da

    while max(levels[-1].hw) > min_side and min(levels[-1].hw) >= 2:
        prev = levels[-1].dask()
        axes = {0: 2, 1: 2}
        small = da.coarsen(np.mean, prev, axes, trim_excess=True).astype(prev.dtype)
        levels.append(_Level(small, 2 if small.ndim == 3 else None, tuple(int(c) for c in small.chunksize[:2])))


def _channel_axis(shape: tuple[int, ...], path: Path) -> int | None:
    if len(shape) == 2:
        return None
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return 2
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] > 4:
        return 0
    raise InputError(f"{path}: shape {shape} is not a 2-D gray or RGB image (H, W), (H, W, 3) or (3, H, W); "
                     "open stacks with read_image")


def _open_tiff_lazy(path: Path) -> LazyImage:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes = series.axes
        if any(ax in "TZIQ" for ax, n in zip(axes, series.shape) if n > 1):
            raise InputError(f"{path} is a stack ({axes} {series.shape}); only single 2-D images open lazily")
        levels = []
        for k, lv in enumerate(series.levels):
            shape = tuple(int(s) for s in lv.shape)
            squeezed = tuple(n for ax, n in zip(lv.axes, shape) if ax not in "TZIQ")
            page = lv.keyframe
            if k == 0 and not (page.is_tiled or len(page.dataoffsets) > 1) and series.dataoffset is not None:
                src = tifffile.memmap(path, mode="r", series=0).reshape(squeezed)  # contiguous, uncompressed
                chunks = (LAZY_CHUNK, LAZY_CHUNK)
            elif page.is_tiled or len(page.dataoffsets) > 1:
                src = zarr.open(series.aszarr(level=k), mode="r")
                if tuple(src.shape) != squeezed:
                    keep = ([i for i, ax in enumerate(lv.axes) if ax not in "TZIQ"] if tuple(src.shape) == shape
                            else [i for i, n in enumerate(src.shape) if n != 1])
                    src = _Squeezed(src, keep)
                width = squeezed[2] if _channel_axis(squeezed, path) == 0 else squeezed[1]
                chunks = (int(page.tilelength or page.rowsperstrip or LAZY_CHUNK), int(page.tilewidth or width))
            else:
                if k == 0:
                    raise InputError(f"{path} is one compressed block of {squeezed}; it cannot be read in parts. "
                                     "Save it as a tiled TIFF (e.g. tifffile.imwrite(..., tile=(512, 512)))")
                break  # a level that cannot be read in parts: coarsen instead
            levels.append(_Level(src, _channel_axis(squeezed, path), chunks))
    except HitlError:
        tif.close()
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure names the file
        tif.close()
        raise CorruptFileError(f"cannot read image {path}: {err}") from err
    own = len(levels) > 1
    _add_coarsened(levels, PYRAMID_MIN_SIDE)
    return LazyImage(path, tuple(levels), own, (tif.close,))


class _Squeezed:
    """A zarr array seen through the axes ``keep`` only (the others have length 1 and are read
    at 0): a TIFF page's singletons, or the leading t/c/z of OME-NGFF. ``keep`` is explicit
    because a kept axis may have length 1 too (a gray image's channel axis)."""

    def __init__(self, arr, keep):
        self._keep = [int(i) for i in keep]
        if any(int(n) != 1 for i, n in enumerate(arr.shape) if i not in self._keep):
            raise InputError(f"cannot drop axes of length > 1 from shape {tuple(arr.shape)}")
        self.arr, self.dtype = arr, arr.dtype
        self.shape = tuple(int(arr.shape[i]) for i in self._keep)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        full, it = [], iter(key)
        for i in range(len(self.arr.shape)):
            full.append(next(it, slice(None)) if i in self._keep else 0)
        return self.arr[tuple(full)]


def _open_zarr_lazy(path: Path) -> LazyImage:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            arrays = [node]
        else:
            multiscales = node.attrs.get("multiscales")
            if multiscales:
                paths = [d["path"] for d in multiscales[0]["datasets"]]
            else:
                paths = sorted((k for k, _ in node.arrays() if k.isdigit()), key=int)
            if not paths:
                raise InputError(f"{path} is a zarr group without image arrays (no multiscales, no 0, 1, ...)")
            arrays = [node[p] for p in paths]
    except HitlError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CorruptFileError(f"cannot read zarr image {path}: {err}") from err
    levels = []
    for arr in arrays:
        shape = tuple(int(s) for s in arr.shape)
        if len(shape) > 3:  # leading singleton axes (t, z of OME-NGFF)
            if any(n != 1 for n in shape[:-3]):
                raise InputError(f"{path} has shape {shape}; only single 2-D images open lazily")
            arr = _Squeezed(arr, range(len(shape) - 3, len(shape)))
            shape = shape[-3:]
        axis = _channel_axis(shape, path)
        ch = tuple(int(c) for c in (arr.arr if isinstance(arr, _Squeezed) else arr).chunks)
        chunks = ch[-2:] if axis == 0 else ch[-3:-1] if axis == 2 else ch[-2:]
        levels.append(_Level(arr, axis, chunks))
    own = len(levels) > 1
    _add_coarsened(levels, PYRAMID_MIN_SIDE)
    return LazyImage(path, tuple(levels), own)


def open_lazy(path: str | os.PathLike) -> LazyImage:
    """Open a 2-D TIFF or zarr image without reading its pixels (see :class:`LazyImage`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".zarr" or (path.is_dir() and ((path / ".zarray").exists() or (path / "zarr.json").exists()
                                                or (path / ".zgroup").exists())):
        img = _open_zarr_lazy(path)
    elif suffix in _TIFF:
        img = _open_tiff_lazy(path)
    else:
        raise InputError(f"{path}: only TIFF and zarr images open lazily (got {suffix or 'a folder'!r})")
    if min(img.shape[:2]) == 0:
        img.close()
        raise InputError(f"image {path} is empty (shape {img.shape})")
    if img.dtype.kind not in "uifb":
        img.close()
        raise InputError(f"image {path} has dtype {img.dtype}; expected integers or floats")
    return img


def write_pyramid(image: LazyImage, out: str | os.PathLike, chunk: int = 512,
                  progress: Callable[[int, int], Any] | None = None) -> Path:
    """Write ``image`` as a multiscale zarr group at ``out`` (levels ``0``, ``1``, ... each half the
    previous, mean of 2 x 2, down to :data:`PYRAMID_MIN_SIDE`; listed in the group's
    ``multiscales`` attribute), so a large image without a pyramid of its own shows fast.

    Memory stays bounded: level 0 is copied block by block, and each further level is made
    from the one just written, so the image is read once. The group is built in a hidden
    folder beside ``out`` and renamed into place; ``out`` must not exist.
    ``progress(done, total)`` counts blocks of level 0."""
    import zarr

    out = Path(out)
    if out.exists():
        raise InputError(f"{out} exists; choose a new path for the pyramid")
    if out.suffix.lower() != ".zarr":
        raise InputError(f"{out}: a pyramid is written as zarr; name it ...zarr")
    if not (isinstance(chunk, (int, np.integer)) and chunk >= 16):
        raise InputError(f"chunk must be an integer of at least 16 pixels, got {chunk!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        group = zarr.open_group(str(tmp / "p.zarr"), mode="w")
        h, w = image.shape[:2]
        extra = image.shape[2:]
        level = group.create_array("0", shape=(h, w) + extra, dtype=image.dtype, chunks=(chunk, chunk) + extra)
        bh, bw = _read_block(image._levels[0].chunks, (h, w), chunk)
        blocks = [(y, x) for y in range(0, h, bh) for x in range(0, w, bw)]
        for k, (y, x) in enumerate(blocks):
            level[y:y + bh, x:x + bw] = image.read(y, x, min(y + bh, h), min(x + bw, w))
            if progress is not None:
                progress(k + 1, len(blocks))
        paths = ["0"]
        while max(h, w) > PYRAMID_MIN_SIDE and min(h, w) >= 2:
            prev = level
            h, w = h // 2, w // 2
            level = group.create_array(str(len(paths)), shape=(h, w) + extra, dtype=image.dtype,
                                       chunks=(chunk, chunk) + extra)
            for y in range(0, h, chunk):
                for x in range(0, w, chunk):
                    y1, x1 = min(y + chunk, h), min(x + chunk, w)
                    src = np.asarray(prev[2 * y:2 * y1, 2 * x:2 * x1], np.float64)
                    small = src.reshape((y1 - y, 2, x1 - x, 2) + extra).mean(axis=(1, 3))
                    if np.issubdtype(image.dtype, np.integer):
                        small = np.floor(small)  # as dask's coarsening (np.mean, then astype) gives
                    level[y:y1, x:x1] = small.astype(image.dtype)
            paths.append(str(len(paths)))
        group.attrs["multiscales"] = [{"version": "0.4", "name": image.path.name,
                                       "datasets": [{"path": p} for p in paths]}]
        os.replace(tmp / "p.zarr", out)
    except HitlError:
        raise
    except OSError as err:
        raise ExportError(f"cannot write the pyramid {out}: {err.strerror or err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(out.parent)
    return out


#: most pixels :func:`write_pyramid` reads at once (a block aligned to the file's strips or tiles)
MAX_BLOCK_PIXELS = 2 ** 25


def _read_block(source_chunks, hw, chunk: int) -> tuple[int, int]:
    """(height, width) of the blocks :func:`write_pyramid` copies: multiples of ``chunk`` that
    hold whole chunks of the source (a strip of a striped TIFF is as wide as the image: read in
    ``chunk``-wide pieces, each strip would be decoded width / chunk times), up to
    :data:`MAX_BLOCK_PIXELS`."""
    (ch, cw), (h, w) = (int(v) for v in source_chunks), hw
    bh, bw = chunk * -(-min(ch, h) // chunk), chunk * -(-min(cw, w) // chunk)
    if bh * bw > MAX_BLOCK_PIXELS:
        bh = chunk
    if bh * bw > MAX_BLOCK_PIXELS:
        bw = chunk
    return bh, bw


def is_large(path: str | os.PathLike) -> bool:
    """Whether :func:`load_image` opens ``path`` lazily: a zarr image, or a single-plane TIFF
    of more than :data:`LAZY_PIXELS` pixels (read from its header)."""
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return True
    if path.suffix.lower() not in _TIFF:
        return False
    info = image_info(path)
    return info.frames == 1 and info.shape[0] * info.shape[1] > LAZY_PIXELS


def load_image(path: str | os.PathLike) -> np.ndarray | LazyImage:
    """An image as the engines take it: small ones read whole (:func:`read_image`), large
    ones (:func:`is_large`) as a :class:`LazyImage`, which nothing reads whole."""
    return open_lazy(path) if is_large(path) else read_image(path)


# --------------------------------------------------------------------------- atomic writes

def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_UMASK_LOCK = threading.Lock()
#: image and class names become file-name parts (exports): at most this many UTF-8 bytes
MAX_NAME_BYTES = 120


def check_name(name: Any, what: str = "image name", path_part: bool = True) -> str:
    """A name of at most 120 bytes without control characters; with ``path_part`` also safe as
    one file-name part (exports use image names so): no separators, no leading '.'."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} must be a non-empty string, got {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InputError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 for c in name):
        raise InputError(f"{what} {name!r} holds control characters")
    if path_part and (name.startswith(".") or any(c in name for c in "/\\:")):
        raise InputError(f"{what} {name!r} may not start with '.' or hold '/', '\\' or ':'")
    return name


def _umask() -> int:
    try:  # Linux: read the umask without changing it (os.umask would race other threads)
        with open("/proc/self/status") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        with _UMASK_LOCK:
            mask = os.umask(0o022)
            os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the user's umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new folder gets under the user's umask (0o755 under umask 022)."""
    return 0o777 & ~_umask()


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` through ``writer(fileobj)`` so that it is either all old or all new.

    The data goes to a temporary file beside ``path``, is flushed and fsynced, and then
    replaces ``path`` with one rename; the folder is fsynced so the rename survives a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; files follow the user's umask
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or corrupt file raises an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CorruptFileError(f"{path} is missing") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); restore it from a backup") from err


# --------------------------------------------------------------------------- labels

def check_labels(labels: np.ndarray, shape: tuple[int, ...] | None = None,
                 n_classes: int | None = None, what: str = "labels") -> np.ndarray:
    """Validate a label array (integer dtype, shape, values in the class table); return it."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what} must be an integer array, got dtype {labels.dtype}")
    if labels.size == 0:
        raise InputError(f"{what} are empty (shape {labels.shape})")
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise InputError(f"{what} have shape {labels.shape} but the image needs {tuple(shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise InputError(f"{what} contain the negative value {lo}")
    if n_classes is not None and hi >= n_classes:
        raise InputError(f"{what} contain the value {hi}, beyond the class table "
                         f"(classes 0..{n_classes - 1}); add the class first")
    return labels


def label_format(path: str | os.PathLike) -> str:
    """'tiff', 'png' or 'zarr' from a path's suffix."""
    suffix = Path(path).suffix.lower()
    fmt = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".zarr": "zarr"}.get(suffix)
    if fmt is None:
        raise InputError(f"{path}: unknown label format {suffix!r}; use .tif, .png or .zarr")
    return fmt


def write_labels(path: str | os.PathLike, labels: np.ndarray,
                 palette: Sequence[Sequence[int]] | None = None, png16: bool = False) -> Path:
    """Write a label array to TIFF, PNG (8-bit if values fit, else 16-bit) or zarr, atomically.

    PNG holds one 2-D plane; TIFF and zarr hold any dimensionality (a time-lapse stack too).
    With ``palette`` (RGB per value) an 8-bit PNG is written indexed, so image viewers show
    the colours while the values stay the labels. ``png16`` always writes 16-bit PNG
    (instance ids: one type for every image of an export).
    """
    path = Path(path)
    labels = check_labels(labels)
    fmt = label_format(path)
    hi = int(labels.max())
    if fmt == "png":
        if labels.ndim != 2:
            raise InputError(f"PNG holds one 2-D plane; labels have shape {labels.shape} (use TIFF or zarr)")
        if hi > 65535:
            raise InputError(f"PNG holds at most 16-bit values; labels reach {hi} (use TIFF or zarr)")
        if palette is not None and hi < 256:
            from PIL import Image

            img = Image.fromarray(labels.astype(np.uint8), mode="P")
            flat = [int(v) for rgb in list(palette)[:256] for v in rgb]
            img.putpalette(flat + [0] * (768 - len(flat)))
            buf = BytesIO()
            img.save(buf, format="PNG")
            return atomic_write_bytes(path, buf.getvalue())
        import cv2

        data = labels.astype(np.uint8 if hi < 256 and not png16 else np.uint16)
        ok, buf = cv2.imencode(".png", data)
        if not ok:  # pragma: no cover - cv2 reports no reason
            raise InputError(f"could not encode {path} as PNG")
        return atomic_write_bytes(path, buf.tobytes())
    if fmt == "tiff":
        import tifffile

        data = labels.astype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32)
        buf = BytesIO()
        tifffile.imwrite(buf, data, compression="zlib")
        return atomic_write_bytes(path, buf.getvalue())
    return _write_zarr(path, labels)


def _write_zarr(path: Path, labels: np.ndarray) -> Path:
    """zarr is a folder: write it beside the target, then swap it in with renames."""
    import zarr

    hi = int(labels.max())
    data = labels.astype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        chunks = tuple(min(s, 512) for s in data.shape[-2:])
        chunks = (1,) * (data.ndim - 2) + chunks
        arr = zarr.open_array(str(tmp / "data.zarr"), mode="w", shape=data.shape, dtype=data.dtype,
                              chunks=chunks)
        arr[...] = data
        staged = tmp / "data.zarr"
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(staged, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(path.parent)
    return path


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read labels written by :func:`write_labels` (or any single-channel TIFF/PNG/zarr)."""
    path = Path(path)
    fmt = label_format(path)
    if not path.exists():
        raise InputError(f"label file {path} does not exist")
    try:
        if fmt == "zarr":
            import zarr

            return np.asarray(zarr.open_array(str(path), mode="r")[...])
        if fmt == "tiff":
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as img:
            if img.mode == "P":  # an indexed PNG: the indices are the labels
                return np.asarray(img)
        import cv2

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError("not a PNG image")
        if arr.ndim != 2:
            raise ValueError(f"has {arr.shape[-1]} channels; labels are single-channel")
        return arr
    except Exception as err:  # noqa: BLE001 - any decoder failure names the file
        raise CorruptFileError(f"cannot read labels {path}: {err}") from err


# --------------------------------------------------------------------------- export

EXPORT_ENTRIES = {"labels", "instances", "provenance", "objects.csv", "model", "manifest.json", "summary.json"}


#: what the provenance codes mean (the project's codes; the exports name them)
PROVENANCE_LABELS = {0: "unlabelled", 1: "human", 2: "machine", 3: "pseudo", 4: "simulated"}
#: the columns of an export's objects.csv
OBJECT_COLUMNS = ("image", "frame", "id", "class", "class_name", "area", "y0", "x0", "y1", "x1", "cy", "cx",
                  "provenance")

#: the formats a large image's labels export to, window by window
SLIDE_FORMATS = ("zarr", "tiff")
#: tile side of a large image's labels exported as TIFF (a multiple of 16, as TIFF tiles are)
SLIDE_TIFF_TILE = 512

#: the label value an export writes where no one labelled (Pascal VOC's "void"), if classes fit 8 bits
UNLABELLED_VALUE = 255


def export_project(project, out: str | os.PathLike, fmt: str = "tiff", *, overwrite: bool = False,
                   progress: Callable[[int, int], Any] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   extra: Callable[[Path, dict], Any] | None = None,
                   unlabelled: int | str | None = "auto", colour: bool = False) -> Path:
    """Write every image's labels, instances and provenance of ``project`` to ``out``, plus
    ``objects.csv`` (one row per object) and ``manifest.json``.

    ``fmt`` is 'tiff', 'png' or 'zarr' (PNG writes a time-lapse as one file per frame; its
    instance maps are 16-bit, so an image with object ids above 65535 needs TIFF or zarr).
    ``labels/`` holds the class of each pixel, ``instances/`` the object id of each pixel
    (0: none; the ids are the project's, so an import gives the same ids). The manifest
    lists, per image, its source files, the files written, its shape and its provenance
    counts (unlabelled/human/machine/pseudo pixels), and the class table with each class's
    kind (thing: objects; stuff: one area per image).
    Everything is read from one snapshot of the project and written into a fresh hidden
    folder beside ``out`` that is renamed into place at the end, so ``out`` holds either the
    whole export or what it held before; ``extra(folder, manifest)`` may add files (the
    model, a summary) before the swap. ``out`` must be empty or absent, or hold an earlier
    export and ``overwrite`` be set; it may not lie inside the project or contain it.
    Unlabelled pixels get the label ``unlabelled`` ('auto': 255, or 65535 with more than 255
    classes; None: 0, like the background), named in the manifest; the provenance files say
    the same with 0. ``colour`` writes PNG labels indexed with the class colours. A large
    image of the project (``project.is_slide``) is written window by window, never whole: as
    zarr in the project's chunks, or as a tiled BigTIFF (:data:`SLIDE_TIFF_TILE` pixel tiles,
    object ids uint32); PNG refuses a project that holds one.
    Returns the manifest's path.
    """
    if fmt not in LABEL_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {LABEL_FORMATS}")
    if colour and fmt != "png":
        raise InputError(f"colour applies to PNG labels; export with format png (not {fmt})")
    n_classes = len(project.classes)
    if unlabelled == "auto":
        unlabelled = UNLABELLED_VALUE if n_classes <= UNLABELLED_VALUE else 65535
    if unlabelled is not None and not (n_classes <= int(unlabelled) <= 65535):
        raise InputError(f"the unlabelled value {unlabelled} must lie beyond the classes (0..{n_classes - 1}) "
                         "and fit 16 bits")
    out = Path(out).expanduser().absolute()
    _check_export_target(project, out, overwrite)
    is_slide = getattr(project, "is_slide", lambda name: False)
    large = [r for r in project.images if is_slide(r.name)]
    if large and fmt not in SLIDE_FORMATS:
        r = large[0]
        raise InputError(f"{r.name!r} is a large image ({r.shape[0]}x{r.shape[1]}); its labels are exported only as "
                         f"zarr or tiled TIFF, window by window, never whole: export with format zarr or tiff "
                         f"(--format zarr)")
    ext = {"tiff": ".tif", "png": ".png", "zarr": ".zarr"}[fmt]
    for stale in list(out.parent.glob(f".{out.name}.export-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
        os.chmod(stage, dir_mode())
    except OSError as err:
        raise ExportError(f"cannot export to {out}: cannot create a folder in {out.parent} "
                          f"({err.strerror or err})") from err
    try:
        with project.snapshot():
            manifest = _export_into(project, stage, fmt, ext, progress, should_stop, unlabelled, colour)
        if extra is not None:
            extra(stage, manifest)
        atomic_write_json(stage / "manifest.json", manifest)
        _swap_into_place(stage, out)
    except OSError as err:
        shutil.rmtree(stage, ignore_errors=True)
        raise ExportError(f"export to {out} failed, nothing there changed: "
                          f"{err.strerror or err}{f' ({err.filename})' if err.filename else ''}") from err
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if hasattr(project, "log") and not getattr(project, "readonly", True):
        project.log("export", out=str(out), format=fmt, images=len(manifest["images"]))
    return out / "manifest.json"


def _check_export_target(project, out: Path, overwrite: bool) -> None:
    root = Path(project.root).resolve()
    real = out.resolve()
    if real == root or root in real.parents:
        raise InputError(f"cannot export into the project folder itself ({out}); choose a folder outside it")
    if real in root.parents:
        raise InputError(f"cannot export to {out}: it contains the project folder; choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot export to {out}: it is a file, not a folder")
    if not out.parent.is_dir():
        raise InputError(f"cannot export to {out}: the folder {out.parent} does not exist")
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if entries - EXPORT_ENTRIES:
        raise InputError(f"{out} holds files that are not an export ({', '.join(sorted(entries - EXPORT_ENTRIES)[:3])}"
                         "); choose an empty folder")
    if entries and not overwrite:
        raise InputError(f"{out} holds an earlier export; replace it with --overwrite, or choose an empty folder")


def _export_into(project, stage: Path, fmt: str, ext: str, progress, should_stop, unlabelled: int | None,
                 colour: bool) -> dict:
    """Every image's labels, instances and provenance into ``stage`` and ``objects.csv``;
    returns the manifest."""
    entries, totals = [], {}
    records = project.images
    classes = project.classes
    colours = [list(c.color) for c in classes]
    if unlabelled == UNLABELLED_VALUE:
        colours += [[0, 0, 0]] * (UNLABELLED_VALUE - len(colours)) + [[255, 255, 255]]
    palettes = {"labels": colours if colour else None, "instances": None,
                "provenance": [[0, 0, 0], [0, 200, 0], [0, 120, 255], [255, 160, 0], [160, 160, 160]] if colour
                else None}
    n_objects = 0
    is_slide = getattr(project, "is_slide", lambda name: False)  # a large image: exported chunk by chunk
    with open(stage / "objects.csv", "w", newline="", encoding="utf-8") as fh:
        table = csv.writer(fh)
        table.writerow(OBJECT_COLUMNS)
        for k, rec in enumerate(records):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("export cancelled")
            name = check_name(rec.name)  # file names come from the project: never a path
            if is_slide(name):
                written = _export_slide(project, rec, stage, fmt, unlabelled)
            else:
                ids, prov, id_classes = project.read_instances(name)
                written = _export_plane(stage, name, fmt, ext, ids, prov, id_classes, unlabelled, palettes)
            objs = project.objects(name)
            for o in objs:
                table.writerow([name, o["frame"] if rec.is_stack else "", o["id"], o["class"],
                                classes[o["class"]].name, o["area"], o["y0"], o["x0"], o["y1"], o["x1"],
                                f"{o['cy']:.2f}", f"{o['cx']:.2f}", PROVENANCE_LABELS.get(o["provenance"], "?")])
            n_objects += len(objs)
            counts = project.counts(name)
            for key, value in vars(counts).items():
                totals[key] = totals.get(key, 0) + value
            entries.append({"name": name, "source_files": [str(p) for p in project.image_paths(name)],
                            "shape": list(rec.label_shape), "counts": vars(counts), "objects": len(objs),
                            **written})
            if progress is not None:
                progress(k + 1, len(records))
    return {
        "project": str(project.root), "format": fmt,
        "classes": [{"id": c.id, "name": c.name, "color": list(c.color), "kind": c.kind} for c in classes],
        "provenance_codes": {str(k): v for k, v in PROVENANCE_LABELS.items()},
        "unlabelled_value": unlabelled,
        "unlabelled": ("labels hold unlabelled_value where no one labelled (provenance 0)" if unlabelled is not None
                       else "labels hold 0 where no one labelled, like the background: read provenance 0"),
        "instances": "instances hold one id per object (0: no object); objects.csv gives each id's class, "
                     "area, box (y0, x0, y1, x1; end exclusive), centroid and provenance",
        "images": entries, "objects": n_objects, "totals": totals,
    }


def _export_plane(stage: Path, name: str, fmt: str, ext: str, ids: np.ndarray, prov: np.ndarray, id_classes: dict,
                  unlabelled: int | None, palettes: dict) -> dict:
    """One image's labels, instances and provenance, held whole, into ``stage``; returns the files written."""
    from napari_hitl import instances as inst

    labels = inst.semantic(ids, id_classes)
    if unlabelled is not None:
        labels = np.where(prov == 0, np.uint16(unlabelled), labels)
    if fmt == "png" and ids.size and int(ids.max()) > 65535:
        raise InputError(f"{name!r} has object ids up to {int(ids.max())}, beyond 16-bit PNG; "
                         "export as tiff or zarr")
    written = {}
    for kind, arr in (("labels", labels), ("instances", ids), ("provenance", prov)):
        if fmt == "png" and arr.ndim == 3:
            files = []
            for t in range(arr.shape[0]):
                rel = f"{kind}/{name}/t{t:05d}.png"
                write_labels(stage / rel, arr[t], palettes[kind], png16=kind == "instances")
                files.append(rel)
            written[kind] = files
        else:
            rel = f"{kind}/{name}{ext}"
            write_labels(stage / rel, arr, palettes[kind], png16=kind == "instances")
            written[kind] = rel
    return written


def _slide_windows(project, rec, side: int, unlabelled: int | None):
    """A large image's labels, instances and provenance, window by window (``side`` pixels a
    side, row by row): ``(y0, x0, {"labels": ..., "instances": ..., "provenance": ...})``, one
    window in memory at a time."""
    from napari_hitl import instances as inst

    h, w = rec.shape
    for y0 in range(0, h, side):
        for x0 in range(0, w, side):
            ids, prov, classes = project.read_window(rec.name, y0, x0, min(h, y0 + side), min(w, x0 + side))
            labels = inst.semantic(ids, classes)
            if unlabelled is not None:
                labels = np.where(prov == 0, np.uint16(unlabelled), labels)
            yield y0, x0, {"labels": labels, "instances": ids, "provenance": prov}


def _export_slide(project, rec, stage: Path, fmt: str, unlabelled: int | None) -> dict:
    """A large image's labels, instances (uint32) and provenance (uint8), written window by
    window (never whole): zarr arrays in the project's chunks (labels uint16), or tiled BigTIFF
    files whose tiles come from a generator (labels uint8 when the classes and the unlabelled
    value fit, else uint16), zlib-compressed like a plane's."""
    h, w = rec.shape
    if fmt == "zarr":
        import zarr

        chunk = project.slide_chunk(rec.name)
        arrays = {kind: zarr.open_array(str(stage / kind / f"{rec.name}.zarr"), mode="w", shape=(h, w), dtype=dtype,
                                        chunks=(chunk, chunk))
                  for kind, dtype in (("labels", np.uint16), ("instances", np.uint32), ("provenance", np.uint8))}
        for y0, x0, parts in _slide_windows(project, rec, chunk, unlabelled):
            for kind, arr in parts.items():
                arrays[kind][y0:y0 + arr.shape[0], x0:x0 + arr.shape[1]] = arr
        return {kind: f"{kind}/{rec.name}.zarr" for kind in arrays}
    top = max(len(project.classes) - 1, 0 if unlabelled is None else int(unlabelled))
    tile = SLIDE_TIFF_TILE
    files = {kind: (f"{kind}/{rec.name}.tif", dtype)
             for kind, dtype in (("labels", np.uint8 if top < 256 else np.uint16), ("instances", np.uint32),
                                 ("provenance", np.uint8))}
    for kind in files:
        (stage / kind).mkdir(parents=True, exist_ok=True)
    _write_tiled_tiffs({stage / rel: dtype for rel, dtype in files.values()},
                       ([parts[kind] for kind in files] for _, _, parts in _slide_windows(project, rec, tile, unlabelled)),
                       (h, w), tile)
    return {kind: rel for kind, (rel, _) in files.items()}


#: tiles waiting for each file's writer in :func:`_write_tiled_tiffs` (bounds its memory)
TIFF_QUEUE_TILES = 4


def _write_tiled_tiffs(files: dict[Path, Any], tiles, shape: tuple[int, int], tile: int) -> None:
    """Write several tiled, zlib-compressed BigTIFFs of ``shape`` at once from one pass over
    ``tiles`` (an iterator of lists: each file's tile, row by row; edge tiles may be short and
    are padded to full size), so the windows behind them are read once for all the files, not
    once per file. A thread per file runs :func:`tifffile.imwrite` on its tiles, at most
    :data:`TIFF_QUEUE_TILES` of them waiting; the files are byte for byte what one
    ``imwrite`` per file over the same tiles writes. An error in reading or in any writer stops
    all of them and is raised (the files are then incomplete: the caller discards them)."""
    import queue
    import threading

    import tifffile

    paths, dtypes = list(files), list(files.values())
    queues = [queue.Queue(maxsize=TIFF_QUEUE_TILES) for _ in paths]
    errors: list[BaseException] = []
    failed = threading.Event()
    end = object()

    def feed(q):
        while True:
            item = q.get()
            if item is end:
                return
            yield item

    def write(k):
        try:
            tifffile.imwrite(paths[k], feed(queues[k]), shape=shape, dtype=dtypes[k], tile=(tile, tile),
                             bigtiff=True, compression="zlib")
        except BaseException as err:  # noqa: BLE001 - handed to the reading thread, which raises it
            errors.append(err)
            failed.set()

    threads = [threading.Thread(target=write, args=(k,), name=f"tiff-writer-{k}", daemon=True)
               for k in range(len(paths))]
    for t in threads:
        t.start()

    def put(k, item) -> None:
        if failed.is_set() and item is not end:
            raise errors[0]
        while threads[k].is_alive():
            if failed.is_set() and item is not end:
                raise errors[0]
            try:
                queues[k].put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        for parts in tiles:
            for k, arr in enumerate(parts):
                arr = arr.astype(dtypes[k], copy=False)
                put(k, np.pad(arr, ((0, tile - arr.shape[0]), (0, tile - arr.shape[1]))))  # edge tiles: full size
    finally:
        for k in range(len(paths)):
            put(k, end)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def read_export_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an export folder, checked (an export is untrusted input)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a napari-hitl export (no manifest.json)")
    manifest = read_json(path)
    try:
        classes = manifest["classes"]
        if [int(c["id"]) for c in classes] != list(range(len(classes))):
            raise ValueError("class ids must be 0..N-1 in order")
        for c in classes:
            check_name(c["name"], "class name", path_part=False)
            if c.get("kind", "thing") not in ("thing", "stuff"):
                raise ValueError(f"kind {c.get('kind')!r}")
        for e in manifest["images"]:
            check_name(e["name"])
            for kind in ("instances", "provenance", "labels"):
                rels = e[kind] if isinstance(e[kind], list) else [e[kind]]
                for rel in rels:
                    parts = Path(str(rel)).parts
                    if Path(str(rel)).is_absolute() or ".." in parts or not parts or parts[0] != kind:
                        raise ValueError(f"file {rel!r} lies outside {kind}/")
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise CorruptFileError(f"{path} is not a valid export manifest ({err})") from err
    return manifest


def import_export(project, folder: str | os.PathLike, *, progress: Callable[[int, int], Any] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> int:
    """Commit the labels of an export (:func:`export_project`) into ``project``, image by image,
    with the export's object ids, classes and per-pixel provenance. Images are matched by
    name; the class tables must agree. An export holding a large image of the project
    (``project.is_slide``) is refused before anything is read. Returns the number of images imported."""
    folder = Path(folder)
    root = folder.resolve()
    manifest = read_export_manifest(folder)
    theirs = [(c["name"], c.get("kind", "thing")) for c in manifest["classes"]]
    ours = [(c.name, c.kind) for c in project.classes]
    if theirs != ours:
        raise InputError(f"the export's classes {theirs} differ from the project's {ours}; create the project "
                         "with the export's classes")
    unlabelled = manifest.get("unlabelled_value")
    names = {r.name for r in project.images}
    missing = [e["name"] for e in manifest["images"] if e["name"] not in names]
    if missing:
        raise InputError(f"the export has images the project lacks: {missing[:3]}")
    is_slide = getattr(project, "is_slide", lambda name: False)
    large = [e["name"] for e in manifest["images"] if is_slide(e["name"])]
    if large:  # refused before anything is read (its arrays whole would not fit memory) or imported
        raise InputError(f"the export holds the large image {large[0]!r}, whose labels are never read or "
                         "committed whole; importing large images is not supported (commit them by window)")
    done = 0
    for k, e in enumerate(manifest["images"]):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt("import cancelled")
        rec = project.record(e["name"])

        def read(kind):
            rels = e[kind] if isinstance(e[kind], list) else [e[kind]]
            want = rec.label_shape if len(rels) == 1 else rec.shape
            if len(rels) not in (1, rec.frames):
                raise CorruptFileError(f"{folder}: {e['name']!r} lists {len(rels)} {kind} files for "
                                       f"{rec.frames} frame(s)")
            arrs = []
            for rel in rels:
                path = folder / rel
                if path.is_symlink() or root not in path.resolve().parents:
                    raise CorruptFileError(f"{folder}: {rel} is a link or leads outside the export; refused")
                arr = read_labels(path)
                if arr.shape != tuple(want):
                    raise CorruptFileError(f"{path} has shape {arr.shape}; {e['name']!r} needs {tuple(want)}")
                arrs.append(arr)
            return arrs[0] if len(arrs) == 1 else np.stack(arrs)

        ids, prov, labels = read("instances"), read("provenance"), read("labels")
        if not (ids.shape == prov.shape == labels.shape == tuple(rec.label_shape)):
            raise CorruptFileError(f"{folder}: the files of {e['name']!r} have shapes {ids.shape}, {prov.shape}, "
                                   f"{labels.shape}; the image needs {tuple(rec.label_shape)}")
        if unlabelled is not None:
            labels = np.where(prov == 0, 0, labels)
        sel = ids != 0
        pairs = np.unique(np.stack([ids[sel].astype(np.int64), labels[sel].astype(np.int64)]), axis=1)
        if len(np.unique(pairs[0])) != pairs.shape[1]:
            bad = pairs[0][np.flatnonzero(np.diff(pairs[0]) == 0)[0]]
            raise CorruptFileError(f"{folder}: object {int(bad)} of {e['name']!r} has pixels of two classes")
        classes = {int(i): int(c) for i, c in pairs.T}
        if ids.any() or prov.any():
            project.commit_instances(e["name"], ids, classes, provenance=prov, event="import", export=str(folder))
            done += 1
        if progress is not None:
            progress(k + 1, len(manifest["images"]))
    return done


def _swap_into_place(stage: Path, out: Path) -> None:
    """Rename the finished export to ``out``; an earlier export there is moved aside first."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
