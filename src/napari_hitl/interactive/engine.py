"""The interface every prompt -> mask engine implements, and the registry that names them.

An engine prepares an image once (caching whatever is expensive per image), then answers
each prompt update with full-resolution logits (> 0 = inside the region). The UI and the CLI
pick engines by name through :func:`get_engine`; engine modules register on import.
"""

from __future__ import annotations

import abc
import importlib
from typing import Callable, ClassVar, Sequence

import numpy as np

from napari_hitl.errors import HitlError, InputError
from napari_hitl.prompts import RegionPrompts

__all__ = ["Engine", "register_engine", "get_engine", "available_engines", "DEFAULT_ENGINE"]

#: the engine the dock, `napari-hitl simulate` and `bench interactive` start with: on the first
#: 40 davis345 images it needs 11.9 clicks for IoU 0.9 at 63 ms a click, the graph engine 16.3
#: at 360 ms (docs/bench/interactive_davis345_first40_*.json)
DEFAULT_ENGINE = "clicknet"

_REGISTRY: dict[str, type["Engine"]] = {}
#: engines known by name whose module is imported on first use
_LAZY = {"graph": "napari_hitl.interactive.graph", "clicknet": "napari_hitl.interactive.clicknet"}


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
