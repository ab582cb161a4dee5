"""The interface every prompt -> mask engine implements, and the registry that names them.

An engine prepares an image once (caching whatever is expensive per image), then answers
each prompt update with full-resolution logits (> 0 = inside the region): over the whole
image (:meth:`Engine.predict`), or over the window it actually looked at
(:meth:`Engine.predict_window`, a :class:`Window`), which is what a large image needs: an
engine that works on crops (clicknet) then costs the same on a 40,000 x 40,000 slide as on
a small image. The UI and the CLI
pick engines by name through :func:`get_engine`; engine modules register on import.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

from napari_hitl.errors import HitlError, InputError
from napari_hitl.prompts import RegionPrompts

__all__ = ["Engine", "Window", "register_engine", "get_engine", "available_engines", "DEFAULT_ENGINE"]

#: the engine the dock, `napari-hitl simulate` and `bench interactive` start with: with the
#: generation-2 weights and its default finishing it needs 4.58 clicks for IoU 0.9 on grabcut,
#: 7.07 on berkeley, 11.65 on all 345 davis345 images and 5.50 on held-out dsb2018 nuclei, where
#: the graph engine needs 19.85 (docs/bench/click_gen2, docs/bench/click_ablation)
DEFAULT_ENGINE = "clicknet"

_REGISTRY: dict[str, type["Engine"]] = {}
#: engines known by name whose module is imported on first use
_LAZY = {"graph": "napari_hitl.interactive.graph", "clicknet": "napari_hitl.interactive.clicknet"}


@dataclass(frozen=True, eq=False)  # two windows are never compared by their arrays' truth value
class Window:
    """A map over part of an image: ``data`` (h, w) whose pixel [0, 0] is image pixel (y0, x0).

    Logits of a prediction, or a region's mask (False outside the window)."""

    data: np.ndarray
    y0: int
    x0: int

    def __post_init__(self):
        if np.ndim(self.data) != 2:
            raise InputError(f"a window holds a 2-D map, got shape {np.shape(self.data)}")
        if self.y0 < 0 or self.x0 < 0:
            raise InputError(f"a window starts inside the image, got offset ({self.y0}, {self.x0})")

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) in image pixels, end exclusive."""
        h, w = self.data.shape
        return self.y0, self.x0, self.y0 + h, self.x0 + w

    def over(self, box: Sequence[int], fill=0) -> np.ndarray:
        """The window's values over ``box`` = (y0, x0, y1, x1), ``fill`` where it has none."""
        y0, x0, y1, x1 = (int(v) for v in box)
        out = np.full((y1 - y0, x1 - x0), fill, self.data.dtype)
        wy0, wx0, wy1, wx1 = self.box
        iy0, ix0, iy1, ix1 = max(y0, wy0), max(x0, wx0), min(y1, wy1), min(x1, wx1)
        if iy1 > iy0 and ix1 > ix0:
            out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = self.data[iy0 - wy0:iy1 - wy0, ix0 - wx0:ix1 - wx0]
        return out

    def full(self, shape: Sequence[int], fill=0) -> np.ndarray:
        """The window pasted into an array of the image's (H, W), ``fill`` elsewhere."""
        return self.over((0, 0, int(shape[0]), int(shape[1])), fill)

    def nonzero_box(self) -> tuple[int, int, int, int] | None:
        """Image box (y0, x0, y1, x1) of the window's non-zero pixels; None if there are none."""
        rows = np.flatnonzero(self.data.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.data.any(axis=0))
        return (self.y0 + int(rows[0]), self.x0 + int(cols[0]), self.y0 + int(rows[-1]) + 1,
                self.x0 + int(cols[-1]) + 1)


def as_full_mask(mask, shape: Sequence[int]) -> np.ndarray | None:
    """A previous mask as a bool (H, W) array (a :class:`Window` is pasted), or None."""
    if mask is None:
        return None
    if isinstance(mask, Window):
        return mask.full(shape, False).astype(bool)
    return np.asarray(mask)


class Engine(abc.ABC):
    """Prompt -> mask engine: ``prepare(image)`` once, then ``predict(region, prev_mask, others)``.

    After ``prepare``, ``engine.shape`` is the (H, W) of the image (full-image mode's canvas).
    """

    #: the registry name (set by :func:`register_engine`)
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def prepare(self, image: np.ndarray) -> None:
        """Take a new image (HxW or HxWx3, uint8/uint16/float) and cache what is expensive for it."""

    @abc.abstractmethod
    def predict(self, region: RegionPrompts, prev_mask: np.ndarray | None = None,
                others: Sequence[RegionPrompts] = ()) -> np.ndarray:
        """Float32 HxW logits at full resolution (> 0 = inside ``region``).

        ``prev_mask`` is the region's previous mask (bool HxW) if any; ``others`` are the other
        regions of the image, whose positive prompts are negatives for this one.
        """

    def predict_window(self, region: RegionPrompts, prev_mask: "np.ndarray | Window | None" = None,
                       others: Sequence[RegionPrompts] = ()) -> Window:
        """Logits over the part of the image the engine looked at (outside it: strongly negative).

        ``prev_mask`` may be a :class:`Window` (False outside it). Engines that see the whole
        image return it whole; crop-based engines override this so that a large image is
        never materialised."""
        full = as_full_mask(prev_mask, self.shape) if isinstance(prev_mask, Window) else prev_mask
        return Window(np.asarray(self.predict(region, prev_mask=full, others=others), np.float32), 0, 0)

    def solves_jointly(self) -> bool:
        """Whether :meth:`predict_all` solves all regions of the prepared image at once, over the
        whole image (by default: whether the engine overrides it)."""
        return type(self).predict_all is not Engine.predict_all

    def predict_all_windows(self, regions: Sequence[RegionPrompts],
                            prev_masks: "Sequence[np.ndarray | Window | None] | None" = None) -> list[Window]:
        """:meth:`predict_all` as windows (full-image mode on a large image): each region's logits
        over the window its engine looked at. An engine that solves all regions jointly
        (:meth:`solves_jointly`) answers over the whole image."""
        prev_masks = list(prev_masks) if prev_masks is not None else [None] * len(regions)
        if len(prev_masks) != len(regions):
            raise InputError(f"got {len(prev_masks)} previous masks for {len(regions)} regions")
        if self.solves_jointly():
            full = [as_full_mask(p, self.shape) for p in prev_masks]
            return [Window(np.asarray(lg, np.float32), 0, 0) for lg in self.predict_all(regions, full)]
        return [self.predict_window(r, prev_mask=p, others=[o for o in regions if o is not r])
                for r, p in zip(regions, prev_masks)]

    def predict_mask(self, region: RegionPrompts, prev_mask: np.ndarray | None = None,
                     others: Sequence[RegionPrompts] = ()) -> np.ndarray:
        """Bool HxW mask of ``region``: ``predict(...) > 0``."""
        return self.predict(region, prev_mask=prev_mask, others=others) > 0

    def predict_all(self, regions: Sequence[RegionPrompts],
                    prev_masks: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Logits for every region of the image, each with the others as negatives (full-image
        mode). Engines that solve all regions jointly override this."""
        prev_masks = list(prev_masks) if prev_masks is not None else [None] * len(regions)
        if len(prev_masks) != len(regions):
            raise InputError(f"got {len(prev_masks)} previous masks for {len(regions)} regions")
        return [self.predict(r, prev_mask=p, others=[o for o in regions if o is not r])
                for r, p in zip(regions, prev_masks)]


def register_engine(name: str) -> Callable[[type[Engine]], type[Engine]]:
    """Class decorator: register an :class:`Engine` subclass under ``name``."""

    def deco(cls: type[Engine]) -> type[Engine]:
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            raise TypeError(f"{cls!r} is not an Engine subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_engines() -> list[str]:
    """Names :func:`get_engine` accepts (registered plus known lazily imported ones)."""
    return sorted(set(_REGISTRY) | set(_LAZY))


def get_engine(name: str, **kwargs) -> Engine:
    """Instantiate the engine registered as ``name`` (importing its module if needed)."""
    if name not in _REGISTRY and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ImportError as err:
            raise HitlError(f"engine {name!r} cannot be loaded: {err}") from err
    if name not in _REGISTRY:
        raise InputError(f"unknown engine {name!r}; available: {', '.join(available_engines())}")
    return _REGISTRY[name](**kwargs)
