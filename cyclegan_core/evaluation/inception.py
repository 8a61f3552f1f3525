"""Inception-v3 pool3 features for FID / KID (``cyclegan_core.evaluation.metrics``): the extractor and its weights.

Input (as pytorch-fid / torchmetrics): images are mapped to [0, 1], quantised to 8 bits (the values a
saved PNG would hold), resized to 299x299 with bilinear interpolation (``align_corners=False``, no
antialiasing) and mapped back to [-1, 1], the range the network expects.

Inception weights are never bundled: ``InceptionFeatureExtractor.from_weights(path)`` loads a local
state-dict file, either torchvision's ``inception_v3`` IMAGENET1K_V1 (1000 classes) or pytorch-fid's
TF-ported ``pt_inception-2015-12-05`` (1008 classes; its slightly different pooling blocks are
reproduced so features match the reference FID implementation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv_inception

from cyclegan_core.evaluation.metrics import to_unit_range

logger = logging.getLogger(__name__)

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
TORCHVISION_INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
TF_FID_CLASSES = 1008  # pytorch-fid's TF-ported graph has 1008 outputs; torchvision's has 1000

InceptionVariant = Literal["torchvision", "tf_fid"]


class InceptionWeightsError(ValueError):
    """Inception weights that cannot be used: missing, unreadable, or not an Inception-v3 state dict."""

    def __init__(self, path: str | Path, detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"Inception weights {self.path}: {detail}")


class _TFPoolBranch:
    """Mixin reproducing the TF FID graph's pool branch (pytorch-fid's FIDInception* blocks).

    TF's average pool ignores padded zeros (``count_include_pad=False``), and the graph's last block
    uses a max pool. torchvision's blocks hard-code ``avg_pool2d(count_include_pad=True)``, so the pool
    branch (a 1x1 conv, a few % of the block's cost) is recomputed and replaced.
    """

    pool_kind: Literal["avg", "max"] = "avg"
    branch_pool: nn.Module

    def _forward(self, x: Tensor) -> list[Tensor]:
        outputs = super()._forward(x)  # type: ignore[misc]
        if self.pool_kind == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        outputs[-1] = self.branch_pool(pooled)
        return outputs


class _TFInceptionA(_TFPoolBranch, tv_inception.InceptionA):
    pass


class _TFInceptionC(_TFPoolBranch, tv_inception.InceptionC):
    pass


class _TFInceptionE1(_TFPoolBranch, tv_inception.InceptionE):
    pass


class _TFInceptionE2(_TFPoolBranch, tv_inception.InceptionE):
    pool_kind = "max"


def _use_tf_fid_blocks(net: tv_inception.Inception3) -> None:
    """Swap torchvision's mixed blocks for the TF FID graph's (same parameters, different pooling)."""
    net.Mixed_5b = _TFInceptionA(192, pool_features=32)
    net.Mixed_5c = _TFInceptionA(256, pool_features=64)
    net.Mixed_5d = _TFInceptionA(288, pool_features=64)
    net.Mixed_6b = _TFInceptionC(768, channels_7x7=128)
    net.Mixed_6c = _TFInceptionC(768, channels_7x7=160)
    net.Mixed_6d = _TFInceptionC(768, channels_7x7=160)
    net.Mixed_6e = _TFInceptionC(768, channels_7x7=192)
    net.Mixed_7b = _TFInceptionE1(1280)
    net.Mixed_7c = _TFInceptionE2(2048)


def load_inception_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an Inception-v3 state dict (``weights_only=True``) from a file.

    Accepts a plain ``state_dict`` file (torchvision's and pytorch-fid's downloads are one) or a
    checkpoint dict holding it under ``state_dict`` / ``model``; a DDP ``module.`` prefix is removed.
    Raises ``InceptionWeightsError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(path, "no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise InceptionWeightsError(path, f"not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise InceptionWeightsError(path, f"expected a state dict of tensors, found {type(loaded).__name__}")
    return {(k.removeprefix("module.")): v for k, v in loaded.items()}


def _build_inception(state_dict: Mapping[str, Tensor], path: Path) -> tuple[tv_inception.Inception3, InceptionVariant]:
    fc_weight = state_dict.get("fc.weight")
    if fc_weight is None or fc_weight.dim() != 2 or fc_weight.shape[1] != FEATURE_DIM:
        raise InceptionWeightsError(
            path, "not an Inception-v3 state dict: expected key 'fc.weight' of shape (classes, 2048), found "
                  + (f"shape {tuple(fc_weight.shape)}" if fc_weight is not None else
                     f"keys {sorted(state_dict)[:5]}...")
        )
    num_classes = fc_weight.shape[0]
    aux_logits = any(key.startswith("AuxLogits.") for key in state_dict)
    net = tv_inception.inception_v3(weights=None, aux_logits=aux_logits, init_weights=False,
                                    num_classes=num_classes, transform_input=False)
    variant: InceptionVariant = "tf_fid" if num_classes == TF_FID_CLASSES else "torchvision"
    if variant == "tf_fid":
        _use_tf_fid_blocks(net)
    result = net.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InceptionWeightsError(
            path, f"does not match torchvision's inception_v3 layout: missing keys {result.missing_keys[:5]}"
                  f" ({len(result.missing_keys)} in all), unexpected keys {result.unexpected_keys[:5]}"
                  f" ({len(result.unexpected_keys)} in all)"
        )
    return net, variant


class InceptionFeatureExtractor(nn.Module):
    """Inception-v3 pool3 features: [-1, 1] NCHW RGB images of any size -> (N, 2048) float32.

    Preprocessing (module docstring): [0, 1], 8-bit quantisation, bilinear resize to 299x299
    (``align_corners=False``), back to [-1, 1]. Build it with ``from_weights``.
    """

    def __init__(self, net: tv_inception.Inception3, *, variant: InceptionVariant, source: Path) -> None:
        super().__init__()
        net.fc = nn.Identity()  # the classifier heads are not needed for pool3 features
        net.AuxLogits = None
        net.aux_logits = False
        self.net = net.eval().requires_grad_(False)
        self.variant = variant
        self.source = source

    @classmethod
    def from_weights(cls, path: str | Path, *, device: str | torch.device = "cpu") -> InceptionFeatureExtractor:
        """Load a local Inception-v3 state-dict file; raises ``InceptionWeightsError`` naming it."""
        path = Path(path)
        net, variant = _build_inception(load_inception_state_dict(path), path)
        logger.info("loaded Inception-v3 FID weights from %s (%s layout)", path, variant)
        return cls(net, variant=variant, source=path).to(device)

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """[-1, 1] images -> the 299x299 [-1, 1] input the network expects."""
        unit = torch.round(to_unit_range(images) * 255.0) / 255.0
        resized = F.interpolate(unit, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                                align_corners=False, antialias=False)
        return resized * 2.0 - 1.0

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatureExtractor expects N x 3 x H x W images, got {tuple(images.shape)}")
        net = self.net
        x = self.preprocess(images.to(next(net.parameters()).device))
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1,
                      net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                      net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b,
                      net.Mixed_7c):
            x = layer(x)
        return torch.flatten(net.avgpool(x), 1).float()


def torchvision_inception_weights(*, download: bool) -> Path:
    """Path of torchvision's IMAGENET1K_V1 Inception-v3 file in the torch.hub cache.

    Returns the cached file when present; otherwise downloads it (hash-checked) when ``download`` is
    true. Raises ``InceptionWeightsError`` when it is not cached and cannot (or may not) be downloaded.
    """
    target = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_INCEPTION_URL.rsplit("/", 1)[1]
    if target.is_file():
        return target
    if not download:
        raise InceptionWeightsError(target, "not in the torch.hub cache and downloading was not requested")
    target.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = target.stem.rsplit("-", 1)[1]
    try:
        # download_url_to_file writes a temp file and renames it, so a failed download leaves nothing
        torch.hub.download_url_to_file(TORCHVISION_INCEPTION_URL, str(target), hash_prefix=hash_prefix,
                                       progress=False)
    except Exception as exc:  # offline, proxy, HTTP or hash errors: all mean "unavailable"
        raise InceptionWeightsError(target, f"download from {TORCHVISION_INCEPTION_URL} failed "
                                            f"({type(exc).__name__}: {exc})") from exc
    return target
