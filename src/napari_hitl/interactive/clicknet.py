"""Learned click engine ("clicknet"): clicks, scribbles, extreme points and the previous mask to logits.

The engine works on a square crop around the region (its extreme points, or its clicks and
previous mask, with a margin; the whole image while nothing else says where the region is),
resized to ``CROP_SIZE``. The frozen encoder stem runs once per crop and is cached; each
click runs only the prompt branch, the trainable encoder stages and the decoder
(:mod:`.clicknet_net`). Logits are pasted back at full resolution, strongly negative outside
the crop, then finished at native resolution (:mod:`.refine`, each step an option chosen on the
click model's validation split by ``benchmarks/tune_click_finish.py``): the boundary band
snapped to the image's edges, every click obeyed, and a negative click's whole false part
removed. In full-image mode the regions' logits are the priors of one joint random walk of
the graph engine (:meth:`ClickNetEngine.predict_all`), so the regions compete along the
image's edges. Weights ship in ``weights/clicknet.pt`` (trained by :mod:`.train_clicknet`).

A large image (an :class:`napari_hitl.io.LazyImage`) is never read whole: the first crop is a
``LARGE_FIRST_CROP`` window around the first clicks, each crop reads only its window (from the
coarsest pyramid level that still resolves it), the finishing uses that window's pixels, and
:meth:`ClickNetEngine.predict_window` returns the logits of the window with its offset, so a
click on a 40,000 x 40,000 slide costs what it costs on a small image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_hitl.errors import HitlError, InputError
from napari_hitl.interactive.clicknet_net import CLICK_RADIUS, CROP_SIZE, SCRIBBLE_WIDTH
from napari_hitl.interactive.engine import Engine, Window, register_engine
from napari_hitl.io import LazyImage, as_float_rgb
from napari_hitl.prompts import RegionPrompts

__all__ = ["ClickNetEngine", "weights_file", "square_crop", "full_crop", "crop_matrix", "to_crop", "warp_to_crop",
           "crop_prompt_maps", "paste_logits", "crop_logits", "read_crop", "OUTSIDE_LOGIT", "CROP_EXPAND",
           "EXTREME_EXPAND", "LARGE_FIRST_CROP"]

#: logit given to every pixel outside the crop
OUTSIDE_LOGIT = -20.0
#: crop side = this times the longer side of the clicks' and previous mask's box
CROP_EXPAND = 1.6
#: crop side = this times the longer side of the extreme points' box
EXTREME_EXPAND = 1.3
#: smallest crop side, in image pixels
MIN_CROP = 40
#: side, in image pixels, of the first crop on a large image: a window around the first clicks
#: (on a small image the first crop is the whole image)
LARGE_FIRST_CROP = 1024
#: encoded crops kept per image (a few MB each at most): full-image mode revisits every region's crop
MAX_ENCODINGS = 48
#: default edge-snap window radius, in logit cells; this and the other finishing defaults (obey and
#: refocus on) were chosen on the click model's validation split, gen-1 weights, 150 objects: NoC@90
#: 10.28 -> 9.88, IoU@1 0.442 -> 0.487 (docs/bench/clicknet_finish_tuning.json). Sweep scored best
#: there (9.24 with it) but lost clicks on every benchmark set (docs/bench/click_ablation), so it
#: is an option, off by default.
SNAP = 1.0
#: refocus (predict again closer) when the answer's crop would be under this share of the crop's side
REFOCUS_BELOW = 0.6
#: weight of the network's logits as priors of full-image mode's joint random walk (0: the
#: canvas's argmax of the logits alone). Chosen on camvid/val images 21-26 among 0.5, 1 and 2
#: (mean region IoU at 2 scribbles 0.752 / 0.754 / 0.756; argmax alone 0.695, graph 0.749);
#: the benchmark reports on images 1-20.
WALKER = 2.0


def weights_file() -> Path:
    """The packaged weights of the click network (``weights/clicknet.pt``)."""
    return Path(__file__).resolve().parent / "weights" / "clicknet.pt"


# --- crop geometry, shared with the trainer -------------------------------------------------

def square_crop(box: Sequence[float], expand: float = CROP_EXPAND, min_side: float = MIN_CROP
                ) -> tuple[float, float, float]:
    """Square crop (y0, x0, side) centred on ``box`` = (y0, x0, y1, x1) (end exclusive), its side
    ``expand`` times the box's longer side and at least ``min_side``; it may extend past the image."""
    y0, x0, y1, x1 = (float(v) for v in box)
    side = max(max(y1 - y0, x1 - x0) * expand, min_side)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    return cy - side / 2.0, cx - side / 2.0, side


def full_crop(shape: Sequence[int]) -> tuple[float, float, float]:
    """Square crop holding the whole image (padded along its shorter side)."""
    h, w = int(shape[0]), int(shape[1])
    return square_crop((0, 0, h, w), expand=1.0, min_side=1)


def crop_matrix(crop: Sequence[float], size: int = CROP_SIZE) -> np.ndarray:
    """2x3 affine map from image pixel coordinates (x, y) to crop pixel coordinates (pixel centres)."""
    y0, x0, side = crop
    k = size / side
    return np.array([[k, 0.0, (0.5 - x0) * k - 0.5], [0.0, k, (0.5 - y0) * k - 0.5]], np.float64)


def to_crop(points: np.ndarray, crop: Sequence[float], size: int = CROP_SIZE) -> np.ndarray:
    """(N, 2) (y, x) image points -> (N, 2) (y, x) crop points."""
    y0, x0, side = crop
    k = size / side
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return np.stack([(pts[:, 0] - y0 + 0.5) * k - 0.5, (pts[:, 1] - x0 + 0.5) * k - 0.5], axis=1)


def warp_to_crop(image: np.ndarray, crop: Sequence[float], size: int = CROP_SIZE,
                 nearest: bool = False, fill: float = 0.0) -> np.ndarray:
    """Resample ``image`` (HxW or HxWxC) into the ``size`` x ``size`` crop; outside the image: ``fill``."""
    import cv2

    flags = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if crop[2] > 1.5 * size else cv2.INTER_LINEAR)
    if flags == cv2.INTER_AREA:  # warpAffine has no area filter: shrink first, then warp
        k = size / crop[2]
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        sy, sx = h / small.shape[0], w / small.shape[1]
        m = crop_matrix(crop, size) @ np.array([[sx, 0, (sx - 1) / 2], [0, sy, (sy - 1) / 2], [0, 0, 1]])
        return cv2.warpAffine(small, m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    return cv2.warpAffine(image, crop_matrix(crop, size), (size, size), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def read_crop(image: LazyImage, crop: Sequence[float], size: int = CROP_SIZE,
              value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(size, size, 3) float32 crop of a large image, reading only its window: from the coarsest
    pyramid level that still has ``size`` pixels across the crop (0 outside the image)."""
    y0, x0, side = (float(v) for v in crop)
    level = 0
    for k in range(1, image.n_levels):
        if side / max(image.scale(k)) < size:
            break
        level = k
    sy, sx = image.scale(level)
    s = (sy + sx) / 2.0
    h, w = image.level_shape(level)
    # one pixel beyond the crop on each side: bilinear sampling near its edges needs it
    wy0, wx0 = max(int(np.floor(y0 / s)) - 1, 0), max(int(np.floor(x0 / s)) - 1, 0)
    wy1, wx1 = min(int(np.ceil((y0 + side) / s)) + 1, h), min(int(np.ceil((x0 + side) / s)) + 1, w)
    if wy1 <= wy0 or wx1 <= wx0:
        raise InputError(f"crop (y0={y0:.0f}, x0={x0:.0f}, side={side:.0f}) lies outside the "
                         f"{image.shape[0]}x{image.shape[1]} image")
    window = as_float_rgb(image.read(wy0, wx0, wy1, wx1, level), value_range)
    return warp_to_crop(window, (y0 / s - wy0, x0 / s - wx0, side / s), size, fill=0.0)


def crop_logits(logits: np.ndarray, crop: Sequence[float], shape: Sequence[int]) -> Window | None:
    """Square crop logits (any resolution) resampled to image pixels over the part of the crop
    inside the (H, W) image; None if the crop misses the image."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    y0, x0, side = crop
    iy0, ix0 = max(int(np.floor(y0)), 0), max(int(np.floor(x0)), 0)
    iy1, ix1 = min(int(np.ceil(y0 + side)), h), min(int(np.ceil(x0 + side)), w)
    if iy1 <= iy0 or ix1 <= ix0:
        return None
    n = logits.shape[0]
    s = side / n  # image pixels per logit pixel
    # logit pixel centre u maps to image x = x0 + (u + 0.5) * s - 0.5; inverse for warpAffine
    m = np.array([[1 / s, 0.0, (ix0 - x0 + 0.5) / s - 0.5], [0.0, 1 / s, (iy0 - y0 + 0.5) / s - 0.5]])
    data = cv2.warpAffine(np.ascontiguousarray(logits, np.float32), m, (ix1 - ix0, iy1 - iy0),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return Window(data, iy0, ix0)


def paste_logits(logits: np.ndarray, crop: Sequence[float], shape: Sequence[int],
                 fill: float = OUTSIDE_LOGIT) -> np.ndarray:
    """Float32 HxW full-resolution logits from square crop logits (any resolution), ``fill`` outside."""
    win = crop_logits(logits, crop, shape)
    if win is None:
        return np.full((int(shape[0]), int(shape[1])), fill, np.float32)
    return win.full(shape, np.float32(fill))


def crop_prompt_maps(region: RegionPrompts, crop: Sequence[float], others: Sequence[RegionPrompts] = (),
                     prev_crop: np.ndarray | None = None, size: int = CROP_SIZE) -> np.ndarray:
    """(3, size, size) float32: positive map, negative map (own negatives plus the others' positives)
    and previous mask, drawn in crop pixels (disk radius and line width fixed in crop pixels)."""
    from napari_hitl.prompts import disk_map, line_map

    maps = np.zeros((3, size, size), np.float32)

    def draw(reg: RegionPrompts, positive: bool, out: np.ndarray, with_extreme: bool) -> None:
        pts = [[c.y, c.x] for c in reg.clicks if c.positive == positive]
        if with_extreme and reg.extreme is not None:
            pts += reg.extreme.points.tolist()
        if pts:
            disk_map(to_crop(np.array(pts), crop, size), (size, size), CLICK_RADIUS, out=out)
        for s in reg.scribbles:
            if s.positive == positive:
                line_map(to_crop(s.points, crop, size), (size, size), SCRIBBLE_WIDTH, out=out)

    draw(region, True, maps[0], True)
    draw(region, False, maps[1], False)
    for other in others:
        if other is not region:
            draw(other, True, maps[1], True)
    if prev_crop is not None:
        maps[2] = prev_crop
    return maps


def load_network(path: Path):
    """The click network with its trainable part from ``path`` (torch, weights_only: no code, no
    network) and the file's metadata; the file's keys say which variant it is (:mod:`.clicknet_net`)."""
    import torch

    from napari_hitl.interactive.clicknet_net import build_clicknet, first_trained_block_of, frozen_prefixes

    if not path.is_file():
        raise HitlError(f"click-model weights are missing at {path}; reinstall napari-hitl or train them "
                        f"with `python -m napari_hitl.interactive.train_clicknet`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"a {type(state).__name__}, not a state dict")
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise HitlError(f"click-model weights at {path} cannot be read: {err}") from err
    first = first_trained_block_of(state)
    net = build_clicknet(pretrained=True, first_trained_block=first)
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(frozen_prefixes(first))]
    if missing or unexpected:
        raise HitlError(f"click-model weights at {path} do not match the network "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    meta = path.with_suffix(".json")
    return net, (json.loads(meta.read_text()) if meta.is_file() else {})


@register_engine("clicknet")
class ClickNetEngine(Engine):
    """Learned click model on the pretrained EfficientNet-Lite0 encoder (crop, cache, late prompts)."""

    # the prepared image: an array (``_image``) or a large one read by crops (``_lazy``)
    _image: np.ndarray | None = None
    _lazy: LazyImage | None = None
    _shape: tuple[int, int] | None = None
    _cues = None

    def __init__(self, device: str | None = None, weights: str | Path | None = None, threads: int | None = None,
                 connected: bool = True, snap: float = SNAP, snap_eps: float = 1e-3, obey: bool = True,
                 refocus: bool = True, sweep: bool = False, expand: float = CROP_EXPAND, flip: bool = False,
                 first_crop: int = LARGE_FIRST_CROP, walker: float = WALKER, walker_gamma: float = 0.002):
        """``connected``: drop mask parts that touch no positive prompt (stray blobs far from the clicks).
        ``snap``: guided-filter window radius in logit cells (image pixels per logit times this; 0:
        off) for snapping the boundary to the image's edges at native resolution, ``snap_eps`` its
        regularisation; ``obey``: move the whole part a violated click lands on to the click's
        side (:mod:`.refine`), and with ``sweep`` every negative click removes the whole false part
        it lands on; ``refocus``: predict a second time on a closer crop when the answer
        is small in its crop (zoom-in); ``expand``: crop side over the prompts' and previous mask's
        box; ``flip``: average the answer with the mirrored crop's (twice the network's work).
        ``first_crop``: side of the first crop on a large image (pixels). On a large image the
        finishing (snap, obey, sweep) works on the answer's window, with that window's cues.
        ``walker``: in full-image mode (:meth:`predict_all`) on an in-memory image, let the regions
        compete in the graph engine's joint random walk with this network's logits as priors of
        this weight (0: the canvas's argmax of the logits alone); ``walker_gamma``: that walk's
        prior weight against the image's edges."""
        import torch

        from napari_hitl.model.backbone import describe_device, select_device

        if threads:
            torch.set_num_threads(int(threads))
        self.device = select_device(device)
        self.device_name = describe_device(self.device)
        self.weights_path = Path(weights) if weights else weights_file()
        net, self.meta = load_network(self.weights_path)
        self.net = net.eval().fuse_batchnorm().to(self.device)
        self.connected = bool(connected)
        if not (0.0 <= float(snap) <= 8.0) or not (0.0 < float(snap_eps) < 1.0):
            raise InputError(f"clicknet: snap must be in [0, 8] and snap_eps in (0, 1), got {snap}, {snap_eps}")
        self.snap, self.snap_eps, self.obey, self.refocus = float(snap), float(snap_eps), bool(obey), bool(refocus)
        self.sweep, self.flip = bool(sweep), bool(flip)
        if not 1.0 <= float(expand) <= 4.0:
            raise InputError(f"clicknet: expand must be in [1, 4], got {expand}")
        self.expand = float(expand)
        self._cues = None
        if not (isinstance(first_crop, (int, np.integer)) and first_crop >= MIN_CROP):
            raise InputError(f"first_crop must be an integer of at least {MIN_CROP} pixels, got {first_crop!r}")
        self.first_crop = int(first_crop)
        if not (0.0 <= float(walker) <= 16.0) or not (0.0 < float(walker_gamma) <= 1.0):
            raise InputError(f"clicknet: walker must be in [0, 16] and walker_gamma in (0, 1], got {walker}, "
                             f"{walker_gamma}")
        self.walker, self.walker_gamma = float(walker), float(walker_gamma)
        self._graph = None  # the prepared graph engine of full-image mode's walk (walker > 0)
        self._image: np.ndarray | None = None
        self._lazy: LazyImage | None = None
        self._range: tuple[float, float] | None = None
        self._shape: tuple[int, int] | None = None
        self._crop: tuple[float, float, float] | None = None
        self._cache = None
        self._encodings: dict = {}  # crop -> encoder cache, most recent last (full-image mode revisits crops)
        self._window_cues = None  # (box, ImageCues) of a large image's last answer window

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the prepared image (the canvas of full-image mode)."""
        if self._shape is None:
            raise InputError("clicknet: call prepare(image) before predict()")
        return self._shape

    @property
    def large(self) -> bool:
        """Whether the prepared image is a large one, read crop by crop (a LazyImage)."""
        return self._lazy is not None

    def prepare(self, image: np.ndarray | LazyImage) -> None:
        """An array: keep it as float RGB and encode the whole-image crop that first clicks use.
        A :class:`~napari_hitl.io.LazyImage`: read nothing yet but its intensity range (from the
        coarsest level); each crop then reads its own window."""
        from napari_hitl.interactive.refine import ImageCues

        self._crop, self._cache = None, None
        self._encodings, self._window_cues = {}, None
        self._image = self._lazy = self._range = self._shape = self._cues = self._graph = None
        if isinstance(image, LazyImage):
            self._range = image.value_range()
            self._lazy, self._shape = image, tuple(int(v) for v in image.shape[:2])
            return
        self._image = as_float_rgb(image)
        self._shape = tuple(int(v) for v in self._image.shape[:2])
        self._cues = ImageCues.of(self._image) if (self.snap or self.obey or self.sweep) else None
        self._encode(full_crop(self._shape))

    def predict_all(self, regions: Sequence[RegionPrompts],
                    prev_masks: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Logits of every region (full-image mode): each region's own answer with the others as
        negatives; with ``walker`` > 0 those answers are the priors of one joint random walk
        (:meth:`GraphEngine.solve_with_priors`) in which the regions compete along the image's edges."""
        logits = super().predict_all(regions, prev_masks)
        if not self.walker or not logits:
            return logits
        if self._graph is None:
            from napari_hitl.interactive.graph import GraphEngine

            self._graph = GraphEngine(gamma=self.walker_gamma)
            self._graph.prepare(self._image)
        return self._graph.solve_with_priors(regions, prev_masks, logits, self.walker)

    def solves_jointly(self) -> bool:
        """On a large image each region keeps its own crop window (the joint walk would need the
        whole image)."""
        return not self.large

    def _encode(self, crop) -> None:
        import torch

        if self._crop is not None and np.allclose(self._crop, crop):
            return
        key = tuple(round(float(v), 3) for v in crop)
        if key in self._encodings:
            self._cache = self._encodings.pop(key)
            self._encodings[key] = self._cache
            self._crop = tuple(float(v) for v in crop)
            return
        if self._lazy is not None:
            patch = read_crop(self._lazy, crop, CROP_SIZE, self._range)
        else:
            patch = warp_to_crop(self._image, crop, CROP_SIZE, fill=0.0)
        x = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))[None].to(self.device)
        if self.flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        with torch.inference_mode():
            self._cache = self.net.encode(x)
        self._crop = tuple(float(v) for v in crop)
        self._encodings[key] = self._cache
        while len(self._encodings) > MAX_ENCODINGS:
            self._encodings.pop(next(iter(self._encodings)))

    def choose_crop(self, region: RegionPrompts, prev: np.ndarray | Window | None) -> tuple[float, float, float]:
        """The crop for this prediction: the extreme points' box, else the clicks' and previous
        mask's box (kept from the last call when it still fits), else the whole image (a large
        image: a ``first_crop`` window around the clicks)."""
        shape = self.shape
        if region.extreme is not None:
            y0, x0, y1, x1 = region.extreme.box
            return square_crop((y0, x0, y1 + 1, x1 + 1), EXTREME_EXPAND)
        if prev is not None and not isinstance(prev, Window):
            prev = Window(np.asarray(prev), 0, 0)
        prev_box = prev.nonzero_box() if prev is not None else None
        if prev_box is None:
            if not self.large:
                return full_crop(shape)
            return square_crop(_prompt_box(region, None, shape), self.expand, min_side=self.first_crop)
        box = _prompt_box(region, prev_box, shape)
        want = square_crop(box, self.expand)
        if self._crop is not None:
            y0, x0, side = self._crop
            by0, bx0, by1, bx1 = box
            pad = 0.05 * side
            inside = (by0 >= y0 + pad and bx0 >= x0 + pad and by1 <= y0 + side - pad and bx1 <= x0 + side - pad)
            if inside and want[2] >= 0.75 * side:
                return self._crop
        return want

    def predict(self, region: RegionPrompts, prev_mask: np.ndarray | Window | None = None,
                others: Sequence[RegionPrompts] = ()) -> np.ndarray:
        """Float32 HxW logits (> 0 inside), strongly negative outside the crop. A large image
        has no full-size answer (it would not fit memory): use :meth:`predict_window`."""
        if self.large:
            h, w = self.shape
            raise InputError(f"clicknet: the prepared image is large ({h}x{w}, read lazily); predict_window "
                             "gives the logits of the crop (a full-size array would not fit memory)")
        return self.predict_window(region, prev_mask, others).full(self.shape, np.float32(OUTSIDE_LOGIT))

    def predict_window(self, region: RegionPrompts, prev_mask: np.ndarray | Window | None = None,
                       others: Sequence[RegionPrompts] = ()) -> Window:
        """Logits over the crop's part of the image (> 0 inside), with its offset. ``prev_mask``:
        bool (H, W), or a :class:`Window` of it (False outside)."""
        if self._shape is None:
            raise InputError("clicknet: call prepare(image) before predict()")
        shape = self._shape
        prev = None
        if isinstance(prev_mask, Window):
            if prev_mask.box[2] > shape[0] or prev_mask.box[3] > shape[1]:
                raise InputError(f"prev_mask window {prev_mask.box} reaches past the {shape[0]}x{shape[1]} image")
            prev = Window(np.asarray(prev_mask.data) > 0, prev_mask.y0, prev_mask.x0)
        elif prev_mask is not None:
            arr = np.asarray(prev_mask)
            if arr.shape != shape:
                raise InputError(f"prev_mask has shape {arr.shape}, expected the image's {shape}")
            prev = Window(arr > 0 if arr.dtype != bool else arr, 0, 0)
        region.validate(shape, prior=None if prev is None else prev.data)
        for other in others:
            other.validate(shape)
        crop = self.choose_crop(region, prev)
        win = self._infer(crop, region, prev, others)
        if self.refocus:
            crop, win = self._refocus(crop, win, region, others)
        if self._cues is not None:  # a small image: finishing works on the whole image
            full = win.full(shape, np.float32(OUTSIDE_LOGIT))
            self._finish(full, self._cues, crop, region, others)
            win = Window(full, 0, 0)
        elif self.large and (self.snap or self.obey or self.sweep):  # a large one: on the answer's window
            self._finish_window(win, crop, region, others)
        if self.connected:
            _keep_prompted_components(win.data, region, None if prev is None else prev.over(win.box, False),
                                      offset=(win.y0, win.x0))
        return win

    def _infer(self, crop, region: RegionPrompts, prev: Window | None, others: Sequence[RegionPrompts]) -> Window:
        """The network's logits over the crop's window of the image (encoded once per crop)."""
        import torch

        self._encode(crop)
        prev_crop = None
        if prev is not None:
            y0, x0, side = crop
            prev_crop = (warp_to_crop(prev.data.astype(np.float32), (y0 - prev.y0, x0 - prev.x0, side),
                                      CROP_SIZE) > 0.5).astype(np.float32)
        maps = torch.from_numpy(crop_prompt_maps(region, crop, others, prev_crop))[None].to(self.device)
        if self.flip:
            maps = torch.cat([maps, torch.flip(maps, dims=[3])])
        with torch.inference_mode():
            logits = self.net.decode(self._cache, maps).float()
        if self.flip:
            logits = (logits[:1] + torch.flip(logits[1:], dims=[3])) / 2
        win = crop_logits(logits[0, 0].cpu().numpy(), crop, self._shape)
        if win is None:  # cannot happen for a crop around prompts inside the image
            raise InputError(f"clicknet: crop {crop} misses the {self._shape[0]}x{self._shape[1]} image")
        return win

    def _refocus(self, crop, win: Window, region: RegionPrompts, others: Sequence[RegionPrompts]):
        """Look again, closer: when the answer fills under ``REFOCUS_BELOW`` of the crop's side,
        predict once more on the crop around the answer and the prompts, the first answer given
        as the previous mask (the network then sees the object at a useful size)."""
        mask = Window(win.data > 0, win.y0, win.x0)
        mask_box = mask.nonzero_box()
        if region.extreme is not None or mask_box is None:
            return crop, win
        want = square_crop(_prompt_box(region, mask_box, self._shape), self.expand)
        if want[2] >= REFOCUS_BELOW * crop[2]:
            return crop, win
        return want, self._infer(want, region, mask, others)

    def _finish(self, out: np.ndarray, cues, crop, region: RegionPrompts, others: Sequence[RegionPrompts],
                origin: tuple[int, int] = (0, 0)) -> None:
        """Native-resolution finishing in place: edge snapping, then click obedience (:mod:`.refine`).
        ``out`` and ``cues`` cover the image from pixel ``origin`` on (the whole image: (0, 0));
        ``region`` and ``others`` are in those coordinates already."""
        from napari_hitl.interactive.refine import obey_clicks, snap_to_edges

        per_logit = crop[2] / (CROP_SIZE / 4)  # image pixels per logit cell
        if self.snap:
            snap_to_edges(out, cues, radius=max(1, round(self.snap * per_logit)), eps=self.snap_eps)
        if self.obey or self.sweep:  # sweeping obeys the violated positive clicks too
            h, w = out.shape
            y0, x0, side = crop[0] - origin[0], crop[1] - origin[1], crop[2]
            box = (max(int(y0), 0), max(int(x0), 0), min(int(np.ceil(y0 + side)), h), min(int(np.ceil(x0 + side)), w))
            # the hole the network cuts around a negative click: about twice its click disk
            reach = 2.0 * CLICK_RADIUS * side / CROP_SIZE
            obey_clicks(out, cues, region, others, box=box, sweep=self.sweep, reach=reach)

    def _finish_window(self, win: Window, crop, region: RegionPrompts, others: Sequence[RegionPrompts]) -> None:
        """Finishing on a large image: on the answer's window, with cues of that window's pixels
        (read at full resolution once per window), the prompts moved into its coordinates (a
        click outside the window is left out: the window holds every positive prompt, and a
        negative one outside it is obeyed already)."""
        from napari_hitl.interactive.refine import ImageCues

        if self._window_cues is None or self._window_cues[0] != win.box:
            y0, x0, y1, x1 = win.box
            pixels = as_float_rgb(self._lazy.read(y0, x0, y1, x1), self._range)
            self._window_cues = (win.box, ImageCues.of(pixels))
        cues = self._window_cues[1]
        origin = (win.y0, win.x0)
        h, w = win.data.shape
        moved = _moved(region, origin, (h, w))
        self._finish(win.data, cues, crop, moved, [_moved(o, origin, (h, w)) for o in others if o is not region],
                     origin)


def _moved(region: RegionPrompts, origin: tuple[int, int], shape: tuple[int, int]) -> RegionPrompts:
    """``region``'s prompts in the coordinates of a window starting at ``origin`` (clicks outside
    the (h, w) window left out; scribbles and extreme points kept, partly outside or not)."""
    from napari_hitl.prompts import Click, ExtremePoints, Scribble

    oy, ox = origin
    h, w = shape
    clicks = [Click(c.y - oy, c.x - ox, c.positive) for c in region.clicks
              if -0.5 <= c.y - oy < h - 0.5 and -0.5 <= c.x - ox < w - 0.5]
    scribbles = [Scribble(s.points - (oy, ox), s.positive) for s in region.scribbles]
    extreme = None if region.extreme is None else ExtremePoints(region.extreme.points - (oy, ox))
    return RegionPrompts(region.label, clicks, scribbles, extreme)


def _prompt_box(region: RegionPrompts, prev_box: tuple[int, int, int, int] | None, shape: Sequence[int]
                ) -> tuple[int, int, int, int]:
    """Box (y0, x0, y1, x1), end exclusive, clipped to the image, of the positive prompts and
    ``prev_box`` (the previous mask's box) together."""
    pts = region.positive_points()
    ys, xs = list(pts[:, 0]), list(pts[:, 1])
    if prev_box is not None:
        ys += [prev_box[0], prev_box[2] - 1]
        xs += [prev_box[1], prev_box[3] - 1]
    if not ys:
        raise InputError(f"region {region.label} has no positive prompt and no previous mask to crop around")
    h, w = int(shape[0]), int(shape[1])
    y0, x0 = max(int(np.floor(min(ys))), 0), max(int(np.floor(min(xs))), 0)
    y1, x1 = min(int(np.ceil(max(ys) + 1)), h), min(int(np.ceil(max(xs) + 1)), w)
    return y0, x0, y1, x1


def _keep_prompted_components(logits: np.ndarray, region: RegionPrompts, prev: np.ndarray | None = None,
                              offset: tuple[int, int] = (0, 0)) -> None:
    """In place: push below zero every connected part of ``logits > 0`` that holds no positive
    prompt point and does not overlap the previous mask ``prev``, unless no part holds one (then
    the model's answer stands). ``logits`` and ``prev`` cover the image from pixel ``offset`` on."""
    import cv2

    inside = logits > 0
    rows = np.flatnonzero(inside.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(inside.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    n, lab = cv2.connectedComponents(inside[y0:y1, x0:x1].astype(np.uint8), connectivity=8)
    if n <= 2:
        return
    pts = np.round(region.positive_points()).astype(int) - np.asarray(offset, int).reshape(1, 2)
    keep = set()
    for y, x in pts:
        if y0 <= y < y1 and x0 <= x < x1 and lab[y - y0, x - x0] > 0:
            keep.add(int(lab[y - y0, x - x0]))
    if keep and prev is not None:
        keep.update(int(v) for v in np.unique(lab[prev[y0:y1, x0:x1] & (lab > 0)]))
    if not keep:
        return
    drop = ~np.isin(lab, list(keep)) & (lab > 0)
    sub = logits[y0:y1, x0:x1]
    sub[drop] = np.minimum(sub[drop], -1.0)
