"""Learned click engine ("clicknet"): clicks, scribbles, extreme points and the previous mask to logits.

The engine works on a square crop around the region (its extreme points, or its clicks and
previous mask, with a margin; the whole image while nothing else says where the region is),
resized to ``CROP_SIZE``. The frozen encoder stem runs once per crop and is cached; each
click runs only the prompt branch, the trainable encoder stages and the decoder
(:mod:`.clicknet_net`). Logits are pasted back at full resolution, strongly negative outside
the crop, then finished at native resolution (:mod:`.refine`, each step an option chosen on the
click model's validation split by ``benchmarks/tune_click_finish.py``): the boundary band
snapped to the image's edges, every click obeyed, and a negative click's whole false part
removed. Weights ship in ``weights/clicknet.pt`` (trained by :mod:`.train_clicknet`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_hitl.errors import HitlError, InputError
from napari_hitl.interactive.clicknet_net import CLICK_RADIUS, CROP_SIZE, SCRIBBLE_WIDTH
from napari_hitl.interactive.engine import Engine, register_engine
from napari_hitl.io import as_float_rgb
from napari_hitl.prompts import RegionPrompts

__all__ = ["ClickNetEngine", "weights_file", "square_crop", "full_crop", "crop_matrix", "to_crop", "warp_to_crop",
           "crop_prompt_maps", "paste_logits", "OUTSIDE_LOGIT", "CROP_EXPAND", "EXTREME_EXPAND"]

#: logit given to every pixel outside the crop
OUTSIDE_LOGIT = -20.0
#: crop side = this times the longer side of the clicks' and previous mask's box
CROP_EXPAND = 1.6
#: crop side = this times the longer side of the extreme points' box
EXTREME_EXPAND = 1.3
#: smallest crop side, in image pixels
MIN_CROP = 40
#: encoded crops kept per image (a few MB each at most): full-image mode revisits every region's crop
MAX_ENCODINGS = 48
#: default edge-snap window radius, in logit cells; this and the other finishing defaults (obey,
#: sweep, refocus on) were chosen on the click model's validation split, gen-1 weights, 150 objects:
#: NoC@90 10.28 -> 9.24, IoU@1 0.442 -> 0.487 (docs/bench/clicknet_finish_tuning.json)
SNAP = 1.0
#: refocus (predict again closer) when the answer's crop would be under this share of the crop's side
REFOCUS_BELOW = 0.6


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


def paste_logits(logits: np.ndarray, crop: Sequence[float], shape: Sequence[int],
                 fill: float = OUTSIDE_LOGIT) -> np.ndarray:
    """Float32 HxW full-resolution logits from square crop logits (any resolution), ``fill`` outside."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    out = np.full((h, w), fill, np.float32)
    y0, x0, side = crop
    iy0, ix0 = max(int(np.floor(y0)), 0), max(int(np.floor(x0)), 0)
    iy1, ix1 = min(int(np.ceil(y0 + side)), h), min(int(np.ceil(x0 + side)), w)
    if iy1 <= iy0 or ix1 <= ix0:
        return out
    n = logits.shape[0]
    s = side / n  # image pixels per logit pixel
    # logit pixel centre u maps to image x = x0 + (u + 0.5) * s - 0.5; inverse for warpAffine
    m = np.array([[1 / s, 0.0, (ix0 - x0 + 0.5) / s - 0.5], [0.0, 1 / s, (iy0 - y0 + 0.5) / s - 0.5]])
    out[iy0:iy1, ix0:ix1] = cv2.warpAffine(np.ascontiguousarray(logits, np.float32), m, (ix1 - ix0, iy1 - iy0),
                                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                           borderMode=cv2.BORDER_REPLICATE)
    return out


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


def _load_weights(net, path: Path) -> dict:
    """Load the trainable part of the network from ``path`` (torch, weights_only: no code, no network)."""
    import torch

    if not path.is_file():
        raise HitlError(f"click-model weights are missing at {path}; reinstall napari-hitl or train them "
                        f"with `python -m napari_hitl.interactive.train_clicknet`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise HitlError(f"click-model weights at {path} cannot be read: {err}") from err
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    from napari_hitl.interactive.clicknet_net import FROZEN_PREFIXES

    missing = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]
    if missing or unexpected:
        raise HitlError(f"click-model weights at {path} do not match the network "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}


@register_engine("clicknet")
class ClickNetEngine(Engine):
    """Learned click model on the pretrained EfficientNet-Lite0 encoder (crop, cache, late prompts)."""

    def __init__(self, device: str | None = None, weights: str | Path | None = None, threads: int | None = None,
                 connected: bool = True, snap: float = SNAP, snap_eps: float = 1e-3, obey: bool = True,
                 refocus: bool = True, sweep: bool = True, expand: float = CROP_EXPAND, flip: bool = False,
                 local: float = 0.0):
        """``connected``: drop mask parts that touch no positive prompt (stray blobs far from the clicks).
        ``snap``: guided-filter window radius in logit cells (image pixels per logit times this; 0:
        off) for snapping the boundary to the image's edges at native resolution, ``snap_eps`` its
        regularisation; ``obey``: move the whole part a violated click lands on to the click's
        side (:mod:`.refine`), and with ``sweep`` every negative click removes the whole false part
        it lands on; ``refocus``: predict a second time on a closer crop when the answer
        is small in its crop (zoom-in); ``expand``: crop side over the prompts' and previous mask's
        box; ``flip``: average the answer with the mirrored crop's (twice the network's work);
        ``local``: a click's changes stand only within this share of the crop's side from it
        (elsewhere the previous mask stays; 0: off)."""
        import torch

        from napari_hitl.interactive.clicknet_net import build_clicknet
        from napari_hitl.model.backbone import describe_device, select_device

        if threads:
            torch.set_num_threads(int(threads))
        self.device = select_device(device)
        self.device_name = describe_device(self.device)
        self.weights_path = Path(weights) if weights else weights_file()
        net = build_clicknet(pretrained=True)
        self.meta = _load_weights(net, self.weights_path)
        self.net = net.eval().fuse_batchnorm().to(self.device)
        self.connected = bool(connected)
        if not (0.0 <= float(snap) <= 8.0) or not (0.0 < float(snap_eps) < 1.0):
            raise InputError(f"clicknet: snap must be in [0, 8] and snap_eps in (0, 1), got {snap}, {snap_eps}")
        self.snap, self.snap_eps, self.obey, self.refocus = float(snap), float(snap_eps), bool(obey), bool(refocus)
        self.sweep, self.flip, self.local = bool(sweep), bool(flip), float(local)
        if not 1.0 <= float(expand) <= 4.0:
            raise InputError(f"clicknet: expand must be in [1, 4], got {expand}")
        self.expand = float(expand)
        self._cues = None
        self._image: np.ndarray | None = None
        self._crop: tuple[float, float, float] | None = None
        self._cache = None
        self._encodings: dict = {}  # crop -> encoder cache, most recent last (full-image mode revisits crops)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the prepared image (the canvas of full-image mode)."""
        if self._image is None:
            raise InputError("clicknet: call prepare(image) before predict()")
        return tuple(self._image.shape[:2])

    def prepare(self, image: np.ndarray) -> None:
        """Keep the image (float RGB) and encode the whole-image crop that first clicks use."""
        from napari_hitl.interactive.refine import ImageCues

        self._image = as_float_rgb(image)
        self._crop, self._cache = None, None
        self._encodings = {}
        self._cues = ImageCues.of(self._image) if (self.snap or self.obey or self.sweep) else None
        self._encode(full_crop(self._image.shape))

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

    def choose_crop(self, region: RegionPrompts, prev: np.ndarray | None) -> tuple[float, float, float]:
        """The crop for this prediction: the extreme points' box, else the clicks' and previous
        mask's box (kept from the last call when it still fits), else the whole image."""
        shape = self._image.shape[:2]
        if region.extreme is not None:
            y0, x0, y1, x1 = region.extreme.box
            return square_crop((y0, x0, y1 + 1, x1 + 1), EXTREME_EXPAND)
        if prev is None or not prev.any():
            return full_crop(shape)
        box = region.bbox(shape, margin=0.0, min_size=1, include=prev)
        want = square_crop(box, self.expand)
        if self._crop is not None:
            y0, x0, side = self._crop
            by0, bx0, by1, bx1 = box
            pad = 0.05 * side
            inside = (by0 >= y0 + pad and bx0 >= x0 + pad and by1 <= y0 + side - pad and bx1 <= x0 + side - pad)
            if inside and want[2] >= 0.75 * side:
                return self._crop
        return want

    def predict(self, region: RegionPrompts, prev_mask: np.ndarray | None = None,
                others: Sequence[RegionPrompts] = ()) -> np.ndarray:
        """Float32 HxW logits (> 0 inside), strongly negative outside the crop."""
        if self._image is None:
            raise InputError("clicknet: call prepare(image) before predict()")
        shape = self._image.shape[:2]
        region.validate(shape, prior=prev_mask)
        for other in others:
            other.validate(shape)
        prev = None
        if prev_mask is not None:
            prev = np.asarray(prev_mask)
            if prev.shape != shape:
                raise InputError(f"prev_mask has shape {prev.shape}, expected the image's {shape}")
            prev = prev > 0 if prev.dtype != bool else prev
        crop = self.choose_crop(region, prev)
        out = self._infer(crop, region, prev, others)
        if self.refocus:
            crop, out = self._refocus(crop, out, region, others)
        self._finish(out, crop, region, others, prev)
        if self.connected:
            _keep_prompted_components(out, region, prev)
        return out

    def _infer(self, crop, region: RegionPrompts, prev: np.ndarray | None,
               others: Sequence[RegionPrompts]) -> np.ndarray:
        """The network's full-resolution logits for one crop (encoded once per crop)."""
        import torch

        self._encode(crop)
        prev_crop = None
        if prev is not None:
            prev_crop = (warp_to_crop(prev.astype(np.float32), crop, CROP_SIZE) > 0.5).astype(np.float32)
        maps = torch.from_numpy(crop_prompt_maps(region, crop, others, prev_crop))[None].to(self.device)
        if self.flip:
            maps = torch.cat([maps, torch.flip(maps, dims=[3])])
        with torch.inference_mode():
            logits = self.net.decode(self._cache, maps).float()
        if self.flip:
            logits = (logits[:1] + torch.flip(logits[1:], dims=[3])) / 2
        return paste_logits(logits[0, 0].cpu().numpy(), crop, self._image.shape[:2])

    def _refocus(self, crop, out: np.ndarray, region: RegionPrompts, others: Sequence[RegionPrompts]):
        """Look again, closer: when the answer fills under ``REFOCUS_BELOW`` of the crop's side,
        predict once more on the crop around the answer and the prompts, the first answer given
        as the previous mask (the network then sees the object at a useful size)."""
        mask = out > 0
        if region.extreme is not None or not mask.any():
            return crop, out
        shape = self._image.shape[:2]
        want = square_crop(region.bbox(shape, margin=0.0, min_size=1, include=mask), self.expand)
        if want[2] >= REFOCUS_BELOW * crop[2]:
            return crop, out
        return want, self._infer(want, region, mask, others)

    def _finish(self, out: np.ndarray, crop, region: RegionPrompts, others: Sequence[RegionPrompts],
                prev: np.ndarray | None = None) -> None:
        """Native-resolution finishing in place: edge snapping, the local update, then click
        obedience (:mod:`.refine`)."""
        from napari_hitl.interactive.refine import keep_local_change, obey_clicks, snap_to_edges

        per_logit = crop[2] / (CROP_SIZE / 4)  # image pixels per logit cell
        if self.snap:
            snap_to_edges(out, self._cues, radius=max(1, round(self.snap * per_logit)), eps=self.snap_eps)
        if self.local and prev is not None and prev.any() and region.clicks:
            last = region.clicks[-1]
            keep_local_change(out, prev, (last.y, last.x), reach=self.local * crop[2])
        if self.obey or self.sweep:  # sweeping obeys the violated positive clicks too
            h, w = out.shape
            y0, x0, side = crop
            box = (max(int(y0), 0), max(int(x0), 0), min(int(np.ceil(y0 + side)), h), min(int(np.ceil(x0 + side)), w))
            # the hole the network cuts around a negative click: about twice its click disk
            reach = 2.0 * CLICK_RADIUS * side / CROP_SIZE
            obey_clicks(out, self._cues, region, others, box=box, sweep=self.sweep, reach=reach)


def _keep_prompted_components(logits: np.ndarray, region: RegionPrompts, prev: np.ndarray | None = None) -> None:
    """In place: push below zero every connected part of ``logits > 0`` that holds no positive
    prompt point and does not overlap the previous mask ``prev``, unless no part holds one (then
    the model's answer stands)."""
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
    pts = np.round(region.positive_points()).astype(int)
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
