"""Semantic segmentation network: pretrained EfficientNet-Lite0 encoder + light U-Net decoder.

Numpy in, numpy out at the edges: :func:`predict_proba` turns any gray or RGB image (any
size; large images are tiled with overlap) into ``(C, H, W)`` class probabilities,
:func:`predict_large` does the same for an image larger than memory (a lazily read TIFF or
zarr) into a chunked zarr array, one band of tiles at a time,
:func:`predict_instance_maps` adds the instance head's boundary and distance maps (what
separates touching objects, decoded by :mod:`napari_hitl.model.instances`), and
:func:`pooled_features` gives encoder features of an image or of masked regions of it (for
diversity picks). Torch is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.io import as_float_rgb
from napari_hitl.model.backbone import FEATURE_CHANNELS, build_backbone, describe_device, fold_batchnorm, select_device
from napari_hitl.model import instances as _inst
from napari_hitl.model.instances import INSTANCE_CHANNELS

log = logging.getLogger(__name__)

__all__ = [
    "DECODER_CHANNELS", "FEATURE_STRIDE", "build_segnet", "predict_proba",
    "predict_proba_batch", "predict_with_features", "predict_large", "large_rows_done", "predict_instance_maps", "split_instance_maps", "feature_map", "pool_features",
    "pooled_features", "place_model", "DeviceInfo", "FEATURE_DIM", "select_device", "describe_device",
    "contrast_limits", "stretch_contrast", "model_input", "normalise_object_size", "PREDICT_FLIPS",
]

#: decoder width at strides 32, 16, 8, 4, 2
DECODER_CHANNELS = (96, 64, 48, 32, 24)
#: stride of the feature map used for pooled features (levels 16 and 32 concatenated)
FEATURE_STRIDE = 16
#: length of a pooled feature vector
FEATURE_DIM = FEATURE_CHANNELS[3] + FEATURE_CHANNELS[4]
#: instance predictions average the maps of the image and its flips (left-right, up-down,
#: both) before decoding. Off: on the dsb2018 pool's 7 validation images (never its held-out
#: ones; benchmarks/dsb_diagnose.py) flips moved F1 / AP / AJI 0.766 / 0.514 / 0.675 to
#: 0.754 / 0.515 / 0.678 at about 1.5-2.7x the prediction time: not worth it.
PREDICT_FLIPS = False
_MULTIPLE = 32


def contrast_limits(image: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.8 percentiles of a float ``(H, W, 3)`` image's channel mean (what
    :func:`stretch_contrast` maps to 0 and 1); a million pixels, evenly spread, are plenty."""
    img = np.asarray(image, np.float32)
    # the channels added in order, then divided: what img.mean(2) gives, bit for bit, without
    # numpy's slow strided reduction over a last axis of three (4 ms -> 0.5 ms at 512 x 512)
    if img.ndim == 3 and img.shape[2] == 3:
        gray = (img[..., 0] + img[..., 1] + img[..., 2]) / np.float32(3)
    else:
        gray = img.mean(2) if img.ndim == 3 else img
    step = max(1, int(np.sqrt(gray.size / 1_000_000)))
    lo, hi = np.percentile(gray[::step, ::step], (0.5, 99.8))
    return float(lo), float(hi)


def stretch_contrast(image: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """A float ``(H, W, 3)`` image in [0, 1] stretched so that its :func:`contrast_limits` (or
    ``limits``) become 0 and 1. Dim fluorescence (nuclei at 2-10% of the 8-bit range) then
    looks to the network as bright as a photo; a photo that fills its range barely changes.
    The limits come from the whole image, so every tile and every training crop of it is
    stretched alike (a large image's from its coarsest level: :func:`predict_large`)."""
    img = np.asarray(image, np.float32)
    lo, hi = contrast_limits(img) if limits is None else limits
    if hi - lo < 1e-3:
        return img
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def model_input(model, image: np.ndarray) -> np.ndarray:
    """``image`` as ``model`` takes it: :func:`napari_hitl.io.as_float_rgb`, then
    :func:`stretch_contrast` when the model was trained so (``model.input_stretch``; models
    from checkpoints made before the stretch existed take the plain pixels, as they learned)."""
    img = as_float_rgb(image)
    if float(getattr(model, "input_stretch", 0)) > 0:
        img = stretch_contrast(img)
    return img


def build_segnet(num_classes: int, pretrained: bool = True, input_stretch: bool = True):
    """Return the segmentation ``nn.Module`` for ``num_classes`` classes (class 0 = background).

    ``model(x)`` takes a ``(B, 3, H, W)`` float tensor in [0, 1] (H, W multiples of 32) and
    returns ``(B, C, H, W)`` logits. ``model.forward_all(x)`` returns ``(logits, instance
    logits (B, 2, H, W): boundary and distance, stride-16 features)`` from one pass.
    ``model.features(x)`` returns the stride-16 feature map used for diversity.
    ``model.num_classes`` holds C. A state dict without the instance head (a checkpoint from
    before it existed) loads with the head freshly initialised, logged and flagged in
    ``model.instance_head_fresh``.

    ``input_stretch`` (a buffer, saved with the weights): the numpy edges (:func:`model_input`,
    used by prediction and by the trainer) stretch each image's contrast before the network
    sees it. A state dict without it (made before it existed) loads with it off, so an old
    model sees the pixels it was trained on.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    if int(num_classes) < 2:
        raise InputError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout),
                             nn.ReLU(inplace=True))

    class SegNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_classes = int(num_classes)
            self.encoder = build_backbone(pretrained=pretrained)
            skips = FEATURE_CHANNELS[::-1]  # 320, 112, 40, 24, 16
            self.top = block(skips[0], DECODER_CHANNELS[0])
            ups = []
            for i in range(1, 5):
                ups.append(block(DECODER_CHANNELS[i - 1] + skips[i], DECODER_CHANNELS[i]))
            self.ups = nn.ModuleList(ups)
            self.head = nn.Conv2d(DECODER_CHANNELS[-1], self.num_classes, 1)
            # what separates touching objects: boundary and distance-to-edge logits
            self.inst_head = nn.Conv2d(DECODER_CHANNELS[-1], INSTANCE_CHANNELS, 1)
            self.instance_head_fresh = False
            self.register_buffer("input_stretch", torch.tensor(1.0 if input_stretch else 0.0))

        def forward(self, x):
            return self.forward_all(x)[0]

        def forward_with_features(self, x):
            """Return ``(logits, stride-16 features)`` from one encoder pass."""
            logits, _, feats = self.forward_all(x)
            return logits, feats

        def forward_all(self, x):
            """Return ``(class logits, instance logits, stride-16 features)`` from one encoder pass."""
            pyramid = self.encoder(self.encoder.normalize(x))
            feats = pyramid[::-1]
            y = self.top(feats[0])
            for up, skip in zip(self.ups, feats[1:]):
                y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                y = up(torch.cat([y, skip], 1))
            both = torch.cat([self.head(y), self.inst_head(y)], 1)
            both = F.interpolate(both, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return both[:, :self.num_classes], both[:, self.num_classes:], self._pool_source(pyramid)

        def load_state_dict(self, state_dict, strict: bool = True, **kw):
            """Load weights; a state without the instance head keeps a freshly initialised one."""
            missing = [k for k in self.state_dict() if k.startswith("inst_head.") and k not in state_dict]
            if missing:
                state_dict = dict(state_dict)
                own = self.state_dict()
                for k in missing:
                    state_dict[k] = own[k]
                log.info("checkpoint has no instance head (made before it existed): %s freshly initialised",
                         ", ".join(missing))
            self.instance_head_fresh = bool(missing)
            if "input_stretch" not in state_dict:  # made before the contrast stretch: plain pixels, as trained
                state_dict = dict(state_dict)
                state_dict["input_stretch"] = torch.zeros(())
                log.info("checkpoint predates the input contrast stretch: the model keeps plain pixels")
            return super().load_state_dict(state_dict, strict=strict, **kw)

        def features(self, x):
            return self._pool_source(self.encoder(self.encoder.normalize(x)))

        @staticmethod
        def _pool_source(pyramid):
            deep = F.interpolate(pyramid[4], size=pyramid[3].shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([pyramid[3], deep], 1)

    return SegNet()


def for_prediction(model):
    """``model`` made cheaper to run for prediction only, in place (returned): its encoder's batch
    norms folded into their convolutions (:func:`~napari_hitl.model.backbone.fold_batchnorm`)
    and, on a CPU, its weights in channels-last layout (so the 1 x 1 convolutions run through
    oneDNN as the others do; on one core a 512 x 512 prediction then takes about a quarter less
    time). Outputs agree with the model as it was to float32 rounding (probabilities within a
    few 1e-6). For a model that is never trained or saved again (a batch worker's)."""
    import torch

    fold_batchnorm(model.eval())
    if _model_device(model).type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def _model_device(model):
    return next(model.parameters()).device


def _pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - arr.shape[0], w - arr.shape[1]
    if ph == 0 and pw == 0:
        return arr
    mode = "reflect" if arr.shape[0] > ph and arr.shape[1] > pw else "edge"
    return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _ceil(n: int, m: int = _MULTIPLE) -> int:
    return -(-n // m) * m


def _tiles(n: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of length ``tile`` covering ``n`` with at least ``overlap``."""
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _flips(flips: bool | None, with_instances: bool) -> bool:
    """Whether a prediction averages over flips: ``flips``, or for None :data:`PREDICT_FLIPS`
    on instance predictions (class-only predictions do not flip unless asked)."""
    return bool(PREDICT_FLIPS and with_instances) if flips is None else bool(flips)


def _forward_tiles(model, images: list[np.ndarray], with_features: bool, with_instances: bool = False,
                   flips: bool = False):
    """Run a batch of same-size float images (H, W multiples of 32); returns probs (and features).

    With ``with_instances`` the probabilities are followed by the instance head's two maps
    (sigmoid), so tiles blend all channels alike. With ``flips`` the probabilities (and maps)
    are the mean over the image and its left-right, up-down and double flips, each flipped
    back; features come from the image as it is."""
    import torch

    device = _model_device(model)
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).to(device)

    def run(xx):
        logits, inst, feats = model.forward_all(xx)
        probs = torch.softmax(logits, 1)
        if with_instances:
            probs = torch.cat([probs, torch.sigmoid(inst)], 1)
        return probs, feats

    with torch.inference_mode():
        probs, feats = run(x)
        if flips:
            for dims in ((3,), (2,), (2, 3)):
                probs = probs + torch.flip(run(torch.flip(x, dims))[0], dims)
            probs = probs / 4.0
        feats = feats.float().cpu().numpy() if with_features else None
        probs = probs.float().cpu().numpy()
    return probs, feats


def predict_with_features(model, image: np.ndarray, tile: int = 1024, overlap: int = 128,
                          with_features: bool = True, with_instances: bool = False, size_norm=True,
                          flips: bool | None = None):
    """Return ``(probs (C, H, W) float32, features (D, ceil(H/16), ceil(W/16)) float32 or None)``.

    Images larger than ``tile`` in either side are cut into overlapping tiles whose
    probabilities are blended with a linear ramp; features come from the same tiles. With
    ``with_instances`` probs has C + 2 channels: the boundary and distance maps follow the
    classes (see :func:`split_instance_maps`), and the maps go through
    :func:`normalise_object_size` (``size_norm``: True for
    :data:`napari_hitl.model.instances.SIZE_NORM`, a dict of its keys, or None / False for
    none). ``flips``: average over flips (:func:`_forward_tiles`; None: :data:`PREDICT_FLIPS`
    for instance predictions).
    """
    probs, feats = _predict_with_features(model, image, tile, overlap, with_features, with_instances,
                                          _flips(flips, with_instances))
    if with_instances:
        probs = normalise_object_size(model, image, probs, size_norm, tile, overlap, flips)
    return probs, feats


def _predict_with_features(model, image, tile, overlap, with_features, with_instances, flips):
    was_training = model.training
    # a model all in eval mode already (a batch worker's) stays as it is: eval() and train(False)
    # walk every module, setting an attribute on each, a few ms per image
    switch = any(m.training for m in model.modules())
    if switch:
        model.eval()
    try:
        img = model_input(model, image)
        h, w = img.shape[:2]
        if h <= tile and w <= tile:
            padded = _pad_to(img, _ceil(h), _ceil(w))
            probs, feats = _forward_tiles(model, [padded], with_features, with_instances, flips)
            fh, fw = _ceil(h, FEATURE_STRIDE) // FEATURE_STRIDE, _ceil(w, FEATURE_STRIDE) // FEATURE_STRIDE
            return (np.ascontiguousarray(probs[0, :, :h, :w]),
                    None if feats is None else np.ascontiguousarray(feats[0, :, :fh, :fw]))
        tile = _ceil(tile)
        overlap = min(overlap, tile // 2)
        th, tw = min(tile, _ceil(h)), min(tile, _ceil(w))
        padded = _pad_to(img, max(h, th), max(w, tw))
        ph, pw = padded.shape[:2]
        c = model.num_classes + (INSTANCE_CHANNELS if with_instances else 0)
        acc = np.zeros((c, ph, pw), np.float32)
        wsum = np.zeros((ph, pw), np.float32)
        ramp_h = _ramp(th, overlap)
        ramp_w = _ramp(tw, overlap)
        weight = np.minimum.outer(ramp_h, ramp_w)
        facc = fsum = None
        for y in _tiles(ph, th, overlap):
            for x in _tiles(pw, tw, overlap):
                probs, feats = _forward_tiles(model, [padded[y:y + th, x:x + tw]], with_features, with_instances,
                                              flips)
                acc[:, y:y + th, x:x + tw] += probs[0] * weight
                wsum[y:y + th, x:x + tw] += weight
                if feats is not None:
                    if facc is None:
                        fshape = (feats.shape[1], _ceil(ph, 16) // 16, _ceil(pw, 16) // 16)
                        facc = np.zeros(fshape, np.float32)
                        fsum = np.zeros(fshape[1:], np.float32)
                    fy, fx = y // FEATURE_STRIDE, x // FEATURE_STRIDE
                    fh, fw = feats.shape[2:]
                    facc[:, fy:fy + fh, fx:fx + fw] += feats[0]
                    fsum[fy:fy + fh, fx:fx + fw] += 1
        probs = acc[:, :h, :w] / np.maximum(wsum[:h, :w], 1e-6)
        feats = None
        if facc is not None:
            fh, fw = _ceil(h, FEATURE_STRIDE) // FEATURE_STRIDE, _ceil(w, FEATURE_STRIDE) // FEATURE_STRIDE
            feats = facc[:, :fh, :fw] / np.maximum(fsum[:fh, :fw], 1)
        return np.ascontiguousarray(probs, dtype=np.float32), feats
    finally:
        if switch:
            model.train(was_training)


def normalise_object_size(model, image: np.ndarray, stacked: np.ndarray, size_norm=True, tile: int = 1024,
                          overlap: int = 128, flips: bool | None = None) -> np.ndarray:
    """The ``with_instances`` maps ``stacked`` (C + 2, H, W) of ``image``, predicted again at the
    scale where its objects have the canonical size when they are far from it.

    The objects decoded from ``stacked`` (:data:`~napari_hitl.model.instances.DECODE_DEFAULTS`,
    foreground = not class 0) give the image's typical object diameter (the ``estimate`` of the
    settings: their foreground's :func:`~napari_hitl.model.instances.inscribed_diameter`, or
    their :func:`~napari_hitl.model.instances.median_diameter`); when
    :func:`~napari_hitl.model.instances.size_factor` says rescale, the image is resized by that
    factor (capped so it has at most ``max_pixels`` pixels), predicted, and every map is
    resized back to (H, W) (bilinear: class probabilities still sum to 1), so whoever decodes
    and scores them sees full-size maps. Otherwise ``stacked`` comes back as it is.
    ``size_norm``: True for :data:`~napari_hitl.model.instances.SIZE_NORM` (off by default), a
    dict of the keys of :data:`~napari_hitl.model.instances.SIZE_NORM_SETTINGS`, None / False
    for none.
    """
    import cv2

    cfg = _inst.SIZE_NORM if size_norm is True else (size_norm or None)
    if not cfg:
        return stacked
    nc = model.num_classes
    probs, boundary, distance = split_instance_maps(stacked, nc)
    found = _inst.decode_instances(1.0 - probs[0], boundary, distance, **_inst.DECODE_DEFAULTS)
    if cfg.get("estimate", "foreground") == "foreground":
        diam = _inst.inscribed_diameter(found > 0, int(cfg.get("min_objects", 1)))
    else:
        diam = _inst.median_diameter(found, int(cfg.get("min_objects", 1)))
    f = _inst.size_factor(diam, cfg["diameter"], cfg["tolerance"], cfg["max_shrink"], cfg["max_enlarge"])
    h, w = stacked.shape[1:]
    if f > 1.0:  # enlarge no further than max_pixels (an image already that large stays as it is)
        f = max(1.0, min(f, float(np.sqrt(cfg["max_pixels"] / float(h * w)))))
    if abs(f - 1.0) < 0.05:
        return stacked
    nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    img = as_float_rgb(image)
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    again, _ = _predict_with_features(model, small, tile, overlap, False, True, _flips(flips, True))
    back = np.stack([cv2.resize(np.ascontiguousarray(c), (w, h), interpolation=cv2.INTER_LINEAR) for c in again])
    return np.ascontiguousarray(back, dtype=np.float32)


def _ramp(n: int, overlap: int) -> np.ndarray:
    r = np.ones(n, np.float32)
    if overlap > 0:
        edge = np.linspace(1.0 / (overlap + 1), 1.0, overlap, dtype=np.float32)
        r[:overlap] = edge
        r[n - overlap:] = edge[::-1]
    return r


def predict_large(model, image, out, tile: int = 1024, overlap: int = 128, with_instances: bool = False,
                  progress=None, should_stop=None, resume: bool = False, on_features=None, on_rows=None,
                  replay_from: int | None = None, resume_carry=None):
    """Class probabilities of a large image (a :class:`napari_hitl.io.LazyImage`) written to the
    zarr array at ``out`` as float16 ``(C, H, W)``, never held whole: overlapping tiles are
    read one at a time and blended with the linear ramp of :func:`predict_with_features`; one
    band of tile rows is kept in memory (C x tile x W floats) and each finished band is
    written, so memory stays bounded by the image's width. With ``with_instances`` the
    instance head's two maps follow the classes (at the image's own scale: no
    :func:`normalise_object_size`, which needs the whole image). ``progress(done, total)`` counts tiles;
    ``should_stop()`` cancels (raises KeyboardInterrupt; ``out`` is then incomplete).

    ``out`` must not exist, unless ``resume``: then each written band is recorded in
    ``<out>.done.json`` (see :func:`large_rows_done`) and a run on an ``out`` left by a stopped or
    killed run with the same settings writes only the rows after the last recorded band,
    predicting again only the tile rows that reach into them (usually one; from ``replay_from``
    on when that is earlier, for a caller that needs every tile's features there).
    ``on_features(y, x, features)`` gets each tile's feature map (D, tile/16, tile/16);
    ``on_rows(top)`` is called once rows ``[0, top)`` are final in ``out``. Returns the zarr array.

    Stopped (``should_stop``), a resumable run also leaves the blend's carry: the sums the tile
    rows before the last written band added to the rows after it (``<out>.carry.npz``). A run
    resuming there asks ``resume_carry(rows)`` whether its caller has its own state of that moment too (for ``on_features``; ``lambda rows: True`` when it keeps
    none); if so it predicts no tile row again, else it replays as above."""
    import json

    import zarr

    from napari_hitl.io import LazyImage, atomic_write

    if not isinstance(image, LazyImage):
        raise InputError(f"predict_large takes a LazyImage (io.open_lazy), got {type(image).__name__}; "
                         "use predict_proba for an image in memory")
    tile = _ceil(int(tile))
    overlap = min(int(overlap), tile // 2)
    h, w = image.shape[:2]
    # a side shorter than a tile (a narrow slide) gets one tile along it, of that side rounded up to
    # the model's multiple; what lies past the image is padding (reflected), never written
    th, tw, ph, pw = _large_tiles(h, w, tile)
    c = model.num_classes + (INSTANCE_CHANNELS if with_instances else 0)
    settings = {"shape": [c, h, w], "tile": tile, "overlap": overlap}
    marker = Path(f"{out}.done.json")
    done_rows = large_rows_done(out, settings) if resume else 0
    if Path(out).exists() and not (resume and done_rows is not None):
        # zarr's mode "w" would delete whatever is there (the image itself, even)
        raise InputError(f"{out} exists" + (" and is not a prediction with these settings (other settings or none recorded)" if resume else "")
                         + "; choose a new path for the probabilities")
    done_rows = done_rows or 0
    value_range = image.value_range()
    limits = None
    if float(getattr(model, "input_stretch", 0)) > 0:  # as model_input does, limits from the coarsest level
        k = image.n_levels - 1
        limits = contrast_limits(as_float_rgb(image.read(0, 0, *image.level_shape(k), level=k), value_range))
    step_chunk = max(tile - overlap, 1)
    if done_rows:
        arr = zarr.open_array(str(out), mode="r+")
    else:
        arr = zarr.open_array(str(out), mode="w", shape=(c, h, w), dtype=np.float16,
                              chunks=(c, min(step_chunk, h), min(1024, w)))
        if resume:
            atomic_write(marker, lambda fh: fh.write(json.dumps({**settings, "rows": 0}).encode()))
    weight = np.minimum.outer(_ramp(th, min(overlap, th // 2)), _ramp(tw, min(overlap, tw // 2)))
    rows, cols = _tiles(ph, th, overlap), _tiles(pw, tw, overlap)
    total = len(rows) * len(cols)
    # the first tile row that reaches past the rows already written (or past replay_from): every
    # row from done_rows on gets the contributions of all its tiles again; rows before are not written
    reach = done_rows if replay_from is None else min(done_rows, max(0, int(replay_from)))
    first = next((k for k, y in enumerate(rows) if y + th > reach), len(rows)) if done_rows else 0
    carry = _read_carry(out, settings, th, pw) if resume and done_rows and done_rows in rows else None
    if carry is not None and (carry[0] != done_rows or resume_carry is None or not resume_carry(done_rows)):
        carry = None  # not of this band, or the caller cannot go on from there: replay
    if carry is not None:
        first = rows.index(done_rows)
    done = first * len(cols)
    if first >= len(rows):  # all written, and no tile is asked for again
        if on_rows is not None:
            on_rows(h)
        if progress is not None:
            progress(total, total)
        return arr

    def flush(lo: int, hi: int, data: np.ndarray, wsum: np.ndarray) -> None:
        """Rows [lo, hi) are final: write those at or after done_rows and record them."""
        a = max(lo, done_rows)
        if a < hi:
            arr[:, a:hi, :] = (data[:, a - lo:hi - lo, :w] / np.maximum(wsum[a - lo:hi - lo, :w], 1e-6)
                               ).astype(np.float16)
        if resume and hi > done_rows:
            atomic_write(marker, lambda fh: fh.write(json.dumps({**settings, "rows": hi}).encode()))
        written[0] = max(written[0], hi)
        if on_rows is not None and hi > done_rows:
            on_rows(hi)

    was_training = model.training
    model.eval()
    written = [done_rows]  # rows [0, written) are in ``out`` (and its marker)
    try:
        band = np.zeros((c, th, pw), np.float32)  # rows [top, top + th) of the image
        bsum = np.zeros((th, pw), np.float32)
        top = rows[first] if first < len(rows) else h
        if carry is not None:  # what the tile rows before ``first`` added to the rows from ``top`` on
            band[:, :carry[1].shape[1]] = carry[1]
            bsum[:carry[2].shape[0]] = carry[2]
        for k in range(first, len(rows)):
            y = rows[k]
            if y > top:  # rows [top, y) are final: no later tile reaches them
                n = y - top
                flush(top, y, band, bsum)
                kept, kept_sum = band[:, n:].copy(), bsum[n:].copy()
                band[:, :th - n] = kept
                band[:, th - n:] = 0
                bsum[:th - n] = kept_sum
                bsum[th - n:] = 0
                top = y
                if resume:
                    carry = (y, kept, kept_sum)
            for x in cols:
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt("prediction cancelled")
                patch = as_float_rgb(image.read(y, x, min(y + th, h), min(x + tw, w)), value_range)
                if limits is not None:
                    patch = stretch_contrast(patch, limits)
                probs, feats = _forward_tiles(model, [_pad_to(patch, th, tw)], on_features is not None,
                                              with_instances)
                band[:, :, x:x + tw] += probs[0] * weight
                bsum[:, x:x + tw] += weight
                if on_features is not None:
                    on_features(y, x, feats[0])
                done += 1
                if progress is not None:
                    progress(done, total)
        flush(top, h, band, bsum)
    except KeyboardInterrupt:  # stopped: the rows after the last band keep what the earlier tile rows added
        if resume and carry is not None and carry[0] == written[0]:
            _write_carry(out, settings, *carry)
        raise
    finally:
        model.train(was_training)
    Path(f"{out}.carry.npz").unlink(missing_ok=True)  # all written: nothing to carry
    return arr


def _write_carry(out, settings: dict, rows: int, band: np.ndarray, bsum: np.ndarray) -> None:
    """Save the blend's sums over the rows from ``rows`` on (exact float32: the resumed run's maps
    are those of a run never stopped)."""
    import io as _io
    import json

    from napari_hitl.io import atomic_write_bytes

    buf = _io.BytesIO()
    np.savez(buf, settings=np.asarray(json.dumps(settings)), rows=np.int64(rows), band=band, bsum=bsum)
    atomic_write_bytes(f"{out}.carry.npz", buf.getvalue())


def _read_carry(out, settings: dict, th: int, pw: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """``(rows, band, bsum)`` of ``<out>.carry.npz`` when it is whole and of these settings, else None."""
    import json

    try:
        with np.load(f"{out}.carry.npz", allow_pickle=False) as z:
            if json.loads(str(z["settings"])) != settings:
                return None
            rows, band, bsum = int(z["rows"]), z["band"], z["bsum"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    c = settings["shape"][0]
    if (band.dtype != np.float32 or bsum.dtype != np.float32 or band.ndim != 3 or band.shape[0] != c
            or band.shape[2] != pw or bsum.shape != band.shape[1:] or not 0 < band.shape[1] < th
            or not (np.isfinite(band).all() and np.isfinite(bsum).all())):
        return None
    return rows, band, bsum


def _large_tiles(h: int, w: int, tile: int) -> tuple[int, int, int, int]:
    """``(th, tw, ph, pw)``: the tile of :func:`predict_large` on an ``h`` x ``w`` image (``tile``
    already a multiple of 32) and the extent its tiles cover: a side shorter than ``tile`` gets one
    tile, that side rounded up to a multiple of 32, past the image's edge (padding)."""
    th, tw = min(tile, _ceil(h)), min(tile, _ceil(w))
    return th, tw, max(h, th), max(w, tw)


def large_tile_count(h: int, w: int, tile: int, overlap: int) -> int:
    """How many tiles :func:`predict_large` predicts on an ``h`` x ``w`` image (any shape)."""
    tile = _ceil(int(tile))
    overlap = min(int(overlap), tile // 2)
    th, tw, ph, pw = _large_tiles(int(h), int(w), tile)
    return len(_tiles(ph, th, overlap)) * len(_tiles(pw, tw, overlap))


def large_rows_done(out, settings: dict | None = None) -> int | None:
    """How many rows of a resumable :func:`predict_large` output ``out`` are written (its
    ``<out>.done.json``); None when there is no such record, or it is unreadable, or (given
    ``settings``: shape, tile, overlap) it was written with other settings."""
    import json

    marker = Path(f"{out}.done.json")
    if not Path(out).is_dir() or not marker.is_file():
        return None
    try:
        rec = json.loads(marker.read_text())
        rows, height = int(rec["rows"]), int(rec["shape"][1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # a damaged record: nothing to resume
        return None
    if settings is not None and any(rec.get(k) != v for k, v in settings.items()):
        return None
    return rows if 0 <= rows <= height else None


def predict_proba(model, image: np.ndarray, tile: int = 1024, overlap: int = 128) -> np.ndarray:
    """Class probabilities ``(C, H, W)`` float32 of one gray or RGB image (tiled above ``tile`` px)."""
    return predict_with_features(model, image, tile, overlap, with_features=False)[0]


def predict_proba_batch(model, images, batch_size: int = 8, tile: int = 1024, overlap: int = 128,
                        with_features: bool = False, progress=None, should_stop=None, with_instances: bool = False,
                        size_norm=True, flips: bool | None = None):
    """Predict many images; same-size images (up to ``tile``) run together in batches.

    With ``with_instances`` each probability array has C + 2 channels (classes, then the
    boundary and distance maps; :func:`split_instance_maps` separates them), object sizes
    normalised as :func:`predict_with_features` does (``size_norm``, ``flips``: as there).

    Returns a list of ``(C, H, W)`` arrays, or of ``(probs, features)`` pairs when
    ``with_features``. ``progress(done, total)`` is called after each batch; a true
    ``should_stop()`` stops early (the list then holds ``None`` for images not predicted).
    """
    images = list(images)
    out: list = [None] * len(images)
    was_training = model.training
    model.eval()
    try:
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            h, w = np.asarray(im).shape[:2]
            key = (_ceil(h), _ceil(w)) if h <= tile and w <= tile else ("tiled", i)
            groups.setdefault(key, []).append(i)
        done = 0
        for key, idx in groups.items():
            for s in range(0, len(idx), batch_size):
                if should_stop is not None and should_stop():
                    return out
                chunk = idx[s:s + batch_size]
                if key[0] == "tiled":
                    for i in chunk:
                        p, f = predict_with_features(model, images[i], tile, overlap, with_features,
                                                     with_instances, size_norm, flips)
                        out[i] = (p, f) if with_features else p
                else:
                    floats = [model_input(model, images[i]) for i in chunk]
                    padded = [_pad_to(f, key[0], key[1]) for f in floats]
                    probs, feats = _forward_tiles(model, padded, with_features, with_instances,
                                                  _flips(flips, with_instances))
                    for j, i in enumerate(chunk):
                        h, w = floats[j].shape[:2]
                        p = np.ascontiguousarray(probs[j, :, :h, :w])
                        if with_instances:
                            p = normalise_object_size(model, images[i], p, size_norm, tile, overlap, flips)
                        if with_features:
                            fh = _ceil(h, FEATURE_STRIDE) // FEATURE_STRIDE
                            fw = _ceil(w, FEATURE_STRIDE) // FEATURE_STRIDE
                            out[i] = (p, np.ascontiguousarray(feats[j, :, :fh, :fw]))
                        else:
                            out[i] = p
                done += len(chunk)
                if progress is not None:
                    progress(done, len(images))
        return out
    finally:
        model.train(was_training)


def split_instance_maps(stacked: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs (C, H, W), boundary (H, W), distance (H, W))`` of a ``with_instances`` prediction."""
    arr = np.asarray(stacked)
    if arr.ndim != 3 or arr.shape[0] != num_classes + INSTANCE_CHANNELS:
        raise InputError(f"expected ({num_classes} + {INSTANCE_CHANNELS}, H, W) maps, got shape {arr.shape}")
    return arr[:num_classes], arr[num_classes], arr[num_classes + 1]


def predict_instance_maps(model, image: np.ndarray, tile: int = 1024, overlap: int = 128, size_norm=True,
                          flips: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities ``(C, H, W)`` and the instance head's boundary and distance maps of one
    image (tiled above ``tile`` px, object sizes normalised: :func:`predict_with_features`);
    decode them with :func:`napari_hitl.model.instances.instances_from_maps`."""
    stacked = predict_with_features(model, image, tile, overlap, with_features=False, with_instances=True,
                                    size_norm=size_norm, flips=flips)[0]
    return split_instance_maps(stacked, model.num_classes)


def feature_map(model, image: np.ndarray, tile: int = 1024) -> np.ndarray:
    """Encoder feature map ``(D, ceil(H/16), ceil(W/16))`` of an image (for pooled features)."""
    return predict_with_features(model, image, tile, with_features=True)[1]


def pool_features(fmap: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Average a ``(D, h, w)`` feature map over the whole image, or over each of ``masks``.

    ``masks`` may be one ``(H, W)`` bool mask, a stack ``(K, H, W)`` of bool masks, or an
    ``(H, W)`` integer label map (one vector per label 0..max). Full-resolution masks are
    reduced to the feature grid by area, so small regions still get a weighted vector.
    Returns ``(D,)`` for the whole image or one mask, else ``(K, D)``.
    """
    d, fh, fw = fmap.shape
    if masks is None:
        return fmap.reshape(d, -1).mean(1)
    masks = np.asarray(masks)
    single = masks.ndim == 2 and masks.dtype == bool
    if masks.ndim == 2 and not single:
        seg = masks.astype(np.int64)
        h, w = seg.shape
        k = int(seg.max()) + 1
        weights = _label_area_weights(seg, k, fh, fw)
    else:
        stack = masks[None] if single else masks
        k, h, w = stack.shape
        weights = np.stack([_area_reduce(m.astype(np.float32), fh, fw) for m in stack])
    flat = fmap.reshape(d, -1)
    wflat = weights.reshape(k, -1)
    tot = wflat.sum(1, keepdims=True)
    pooled = (wflat @ flat.T) / np.maximum(tot, 1e-9)
    empty = tot[:, 0] <= 0
    if empty.any():
        pooled[empty] = flat.mean(1)
    return pooled[0] if single else pooled


def _area_reduce(mask: np.ndarray, fh: int, fw: int) -> np.ndarray:
    h, w = mask.shape
    padded = np.zeros((fh * FEATURE_STRIDE, fw * FEATURE_STRIDE), np.float32)
    padded[:min(h, padded.shape[0]), :min(w, padded.shape[1])] = mask[:padded.shape[0], :padded.shape[1]]
    return padded.reshape(fh, FEATURE_STRIDE, fw, FEATURE_STRIDE).sum((1, 3))


def _label_area_weights(seg: np.ndarray, k: int, fh: int, fw: int) -> np.ndarray:
    h, w = seg.shape
    cell = (np.minimum(np.arange(h) // FEATURE_STRIDE, fh - 1)[:, None] * fw
            + np.minimum(np.arange(w) // FEATURE_STRIDE, fw - 1)[None, :])
    idx = seg.ravel() * (fh * fw) + cell.ravel()
    counts = np.bincount(idx, minlength=k * fh * fw).astype(np.float32)
    return counts.reshape(k, fh, fw)


def pooled_features(model, image: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Pooled encoder features of an image ``(D,)`` or of masked regions of it ``(K, D)``.

    See :func:`pool_features` for the accepted ``masks``.
    """
    return pool_features(feature_map(model, image), masks)


@dataclass
class DeviceInfo:
    """Where the model runs, for the UI and the CLI."""

    device: object
    description: str


def place_model(model, prefer: str | None = None) -> DeviceInfo:
    """Move ``model`` to :func:`select_device` (CUDA, MPS, CPU) and say where it went."""
    device = select_device(prefer)
    model.to(device)
    return DeviceInfo(device, describe_device(device))
