"""Global image classifiers on timm backbones with CAM-friendly pooling heads.

CheXNet (Rajpurkar et al. 2017) is DenseNet-121 with one sigmoid output per label; the X_RAY
seed compares ResNet / DenseNet / EfficientNet backbones with AVG, MAX, LSE and PCAM pooling
(PCAM: Ye et al. 2020, "Weakly supervised lesion localization with probabilistic-CAM pooling").
Transformer backbones (ViT, DeiT, Swin; small variants) are those the SegFusion seed compared.

All take a 1-channel image ``[B, 1, H, W]`` normalised as in the model card and return logits
``[B, C]``. ``num_classes=1`` with the ``binary`` label space is the abnormality mode.
Backbones are always built with ``pretrained=False`` (no hub downloads); ``weights`` may name a
local state_dict file (``torch.load(weights_only=True)``) for the backbone.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from cxr.models.registry import ModelError, TrainStats, register_model

log = logging.getLogger(__name__)

POOLS = ("avg", "max", "lse", "pcam")

#: registry name -> (timm name, is a token transformer)
BACKBONES: dict[str, tuple[str, bool]] = {
    "densenet121": ("densenet121", False),
    "resnet18": ("resnet18", False),
    "resnet50": ("resnet50", False),
    "efficientnet_b0": ("efficientnet_b0", False),
    "convnext_tiny": ("convnext_tiny", False),
    "vit_small": ("vit_small_patch16_224", True),
    "deit_small": ("deit_small_patch16_224", True),
    "swin_tiny": ("swin_tiny_patch4_window7_224", True),
}


class FeatureMap(nn.Module):
    """A timm backbone returning a spatial feature map ``[B, D, h, w]`` for every family.

    ViT/DeiT patch tokens are reshaped to their grid (prefix tokens dropped); Swin's NHWC output
    is permuted to NCHW. That lets every pooling head (and CAM) work on every backbone.
    """

    def __init__(self, name: str, in_chans: int = 1, image_size: int = 224, weights: str | None = None):
        super().__init__()
        if name not in BACKBONES:
            raise ModelError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
        timm_name, self.is_transformer = BACKBONES[name]
        kw = {"img_size": image_size} if self.is_transformer else {}
        import timm  # here, not at module level: timm pulls in torchvision and torch._dynamo (seconds per process)

        self.net = timm.create_model(
            timm_name, pretrained=False, in_chans=in_chans, num_classes=0, global_pool="", **kw
        )
        self.num_features = int(self.net.num_features)
        self.timm_name = timm_name
        head = getattr(self.net, "head", None)
        self.head_norm = getattr(head, "norm", None) if isinstance(getattr(head, "norm", None), nn.Module) else None
        if weights:
            load_backbone_weights(self.net, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net.forward_features(x)
        if self.head_norm is not None:  # ConvNeXt normalises in its head, which we replace
            y = self.head_norm(y)
        if y.ndim == 3:  # ViT-like tokens [B, N, D]
            y = y[:, getattr(self.net, "num_prefix_tokens", 0):]
            side = int(math.isqrt(y.shape[1]))
            y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], side, side)
        elif y.ndim == 4 and self.timm_name.startswith("swin"):  # NHWC
            y = y.permute(0, 3, 1, 2)
        return y.contiguous()


def load_backbone_weights(net: nn.Module, path: str) -> None:
    """Load a local backbone state_dict (classifier keys and 3->1 channel stems adapted)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"backbone weights file {str(p)!r} not found (train.pretrained names a local file)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    own = net.state_dict()
    adapted = {}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape and v.ndim == 4 and own[k].shape[1] == 1 and v.shape[1] == 3:
            v = v.sum(1, keepdim=True)  # RGB stem -> grey stem (timm's adapt_input_conv does the same)
        if k in own and own[k].shape == v.shape:
            adapted[k] = v
    missing, _ = net.load_state_dict(adapted, strict=False)
    log.info("loaded %d tensors from %s (%d missing)", len(adapted), p, len(missing))


class PoolHead(nn.Module):
    """Pooling + linear classifier over a feature map ``[B, D, h, w]`` -> logits ``[B, C]``.

    * ``avg`` / ``max``: global average / max pooling, then a linear layer.
    * ``lse``: log-sum-exp pooling ``(1/r) log mean exp(r x)`` (r = ``lse_r``), between avg and max.
    * ``pcam``: per class c, a probability map ``sigmoid(w_c . f + b_c)`` weights the features
      (normalised over space) and the same ``w_c, b_c`` classify the pooled vector.
    """

    def __init__(self, in_features: int, num_classes: int, pool: str = "avg", lse_r: float = 10.0, dropout: float = 0.0):
        super().__init__()
        if pool not in POOLS:
            raise ModelError(f"unknown pooling {pool!r}; choose one of {list(POOLS)}")
        self.pool, self.lse_r = pool, float(lse_r)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def class_maps(self, f: torch.Tensor) -> torch.Tensor:
        """Per-class activation maps ``[B, C, h, w]`` (the CAM of this head)."""
        return torch.einsum("bdhw,cd->bchw", f, self.fc.weight) + self.fc.bias[None, :, None, None]

    def pooled(self, f: torch.Tensor) -> torch.Tensor:
        """The pooled vector ``[B, D]`` of ``avg`` / ``max`` / ``lse`` (``pcam``, per class, falls back to the average)."""
        if self.pool == "max":
            return f.amax(dim=(2, 3))
        if self.pool == "lse":
            r = self.lse_r
            return (torch.logsumexp(r * f.flatten(2), dim=2) - math.log(f.shape[2] * f.shape[3])) / r
        return f.mean(dim=(2, 3))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.pool == "pcam":
            prob = torch.sigmoid(self.class_maps(f))  # [B, C, h, w]
            w = prob / prob.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
            pooled = torch.einsum("bchw,bdhw->bcd", w, f)  # [B, C, D]
            pooled = self.drop(pooled)
            return (pooled * self.fc.weight[None]).sum(-1) + self.fc.bias
        return self.fc(self.drop(self.pooled(f)))


class GlobalClassifier(nn.Module):
    """Backbone feature map + :class:`PoolHead`. Input ``image [B, 1, H, W]``, output ``[B, C]``."""

    input_keys = ("image",)

    def __init__(self, backbone: str, num_classes: int, in_chans: int = 1, image_size: int = 224,
                 pool: str = "avg", lse_r: float = 10.0, dropout: float = 0.0, weights: str | None = None):
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"num_classes must be >= 1, got {num_classes}")
        self.features = FeatureMap(backbone, in_chans=in_chans, image_size=image_size, weights=weights)
        self.head = PoolHead(self.features.num_features, num_classes, pool=pool, lse_r=lse_r, dropout=dropout)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` the linear classifier reads (retrieval): the head's avg / max / LSE
        pooling; global average for ``pcam``, whose pooling is per class."""
        return self.head.pooled(self.features(image))

    def cam_target_layers(self) -> list[nn.Module]:
        """Layers whose output ``[B, D, h, w]`` the CAM family reads (``cxr.localize.cam``): the
        backbone feature map the head pools (transformer tokens already reshaped to their grid)."""
        return [self.features]

    def cam_stages(self) -> list[tuple[str, nn.Module, int]]:
        """``(name, module, output stride)`` of the backbone's feature stages, shallow to deep (timm's
        ``feature_info``; empty when the backbone declares none). Grad-CAM may read an earlier, finer
        stage than the pooled map (``localize.cam_min_grid``)."""
        net = self.features.net
        info = getattr(net, "feature_info", None) or []
        named = dict(net.named_modules())
        return [(f["module"], named[f["module"]], int(f["reduction"])) for f in info
                if isinstance(f, dict) and f.get("module") in named and f["module"]]

    def cam_classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Class weights ``[C, D]`` and bias ``[C]`` that make CAM exact for this head.

        Raises:
            ModelError: max / LSE pooling, where logits are no linear function of the feature map.
        """
        if self.head.pool not in ("avg", "pcam"):
            raise ModelError(f"CAM is undefined for {self.head.pool!r} pooling (only 'avg' and 'pcam' heads are linear "
                             "in the feature map); use method 'gradcam' or 'gradcam++'")
        return self.head.fc.weight, self.head.fc.bias


def _factory(backbone: str):
    def build(num_classes: int = 14, in_chans: int = 1, image_size: int = 224, pool: str = "avg",
              lse_r: float = 10.0, dropout: float = 0.0, weights: str | None = None) -> GlobalClassifier:
        return GlobalClassifier(backbone, num_classes, in_chans=in_chans, image_size=image_size, pool=pool,
                                lse_r=lse_r, dropout=dropout, weights=weights)

    build.__name__ = backbone
    build.__doc__ = f"{BACKBONES[backbone][0]} (timm, from scratch unless ``weights``) + pooling head."
    return build


def _kwargs(name: str):
    def kwargs(params, stats: TrainStats) -> dict:
        return {"num_classes": stats.num_classes, "image_size": params.image_size, "pool": params.pool,
                "weights": params.pretrained.get(name)}

    return kwargs


for _name in BACKBONES:
    register_model(_factory(_name), name=_name, kwargs=_kwargs(_name))
