"""SegFusion-VAN-GCN (seed 000): VAN backbone, frozen UNet organ masks fused into each of the
four stages, and an ML-GCN label head.

A pre-trained UNet (the ``unet`` stage, loaded with ``cxr.models.unet.load_unet``) is kept frozen
(``requires_grad=False``, always in eval mode) and predicts K organ masks ``[B, K, H, W]`` from
the input image. Before stage ``i`` of the VAN, the masks resized to that stage's resolution gate
the features: ``f * (1 + tanh(conv1x1(masks)))`` plus a learned additive term, so a region of
the lungs / heart can be emphasised per channel. Global average pooling of the last stage goes
to :class:`~cxr.models.mlgcn.LabelGCNHead`. Input ``image [B, 1, H, W]``; output ``[B, C]``.

Every trainable weight is a registered parameter; the UNet weights are saved with the model so
the model dir is self-contained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.intensity import NORMALISATION
from cxr.modeldir import read_card
from cxr.models.mlgcn import LabelGCNHead, train_label_adjacency
from cxr.precision import cpu_has_bf16
from cxr.models.registry import TrainStats, register_model
from cxr.models.unet import load_unet
from cxr.models.van import VAN


def default_unet(in_chans: int = 1, classes: int = 3) -> nn.Module:
    """A small untrained UNet (segmentation-models-pytorch), used when no ``unet_dir`` is given."""
    import segmentation_models_pytorch as smp  # here: it imports timm (seconds); only building a UNet needs it

    return smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(64, 32, 16),
                    in_channels=in_chans, classes=classes)


class FrozenUNet(nn.Module):
    """Wraps a segmentation net: frozen, always eval, outputs sigmoid masks without autograd.

    Args:
        net: the segmentation network (logits ``[B, K, H, W]``).
        unit_range: the net expects intensities in [0, 1] (``cxr.models.unet.OrganUNet``): the
            classifier input, normalised as ``(x - 0.5) / 0.25`` (cxr.data.NORMALISATION), is mapped back.
        input_size: the side the net was trained at (the UNet card's ``input.size``): the (square)
            classifier input is resized to it and the masks back to the input's size, so the UNet
            sees images at the scale it learnt (None = feed the input as it is).
    """

    def __init__(self, net: nn.Module, unit_range: bool = False, input_size: int | None = None):
        super().__init__()
        self.net, self.unit_range, self.input_size = net, unit_range, input_size
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> FrozenUNet:  # the UNet never leaves eval mode
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the frozen UNet runs in bf16 on a CPU with native bf16 (about 2.5x faster; masks only gate features, and
        # the trainable VAN stays in the run's precision); on a GPU the run's autocast applies as it is
        bf16 = x.device.type == "cpu" and cpu_has_bf16()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = self._masks(x)
        return out.float()

    def _masks(self, x: torch.Tensor) -> torch.Tensor:
        if self.unit_range:
            x = (x * NORMALISATION["std"] + NORMALISATION["mean"]).clamp(0, 1)
        size = x.shape[-2:]
        if self.input_size and tuple(size) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=self.input_size < max(size))
            return F.interpolate(torch.sigmoid(self.net(x)).float(), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.net(x))


class MaskFusion(nn.Module):
    """Fuse K masks into C feature channels: ``f * (1 + tanh(g(m))) + h(m)``."""

    def __init__(self, num_masks: int, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(num_masks, channels, 1)
        self.add = nn.Conv2d(num_masks, channels, 1)

    def forward(self, f: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        m = F.interpolate(masks, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return f * (1 + torch.tanh(self.gate(m))) + self.add(m)


class SegFusionVANGCN(nn.Module):
    input_keys = ("image",)
    # bf16 autocast on a CPU overflows in the large-kernel attention (NaN loss within two epochs on the
    # default cohort), so `train.precision: auto` keeps this model in fp32 on a CPU (cxr.train.precision_for)
    cpu_bf16 = False

    def __init__(self, num_classes: int = 14, in_chans: int = 1, image_size: int = 224, unet: nn.Module | None = None,
                 num_masks: int = 3, dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), adjacency: np.ndarray | None = None,
                 node_dim: int = 64, hidden: int = 256, unet_size: int | None = None):
        super().__init__()
        self.unet = FrozenUNet(unet if unet is not None else default_unet(in_chans, num_masks), unit_range=unet is not None,
                               input_size=unet_size)
        with torch.no_grad():
            num_masks = int(self.unet(torch.zeros(1, in_chans, 64, 64)).shape[1])
        self.van = VAN(in_chans, tuple(dims), tuple(depths))
        # stage 0 fuses on the input resolution (before the stem), stages 1-3 on the previous output
        self.fuse = nn.ModuleList(MaskFusion(num_masks, c) for c in (in_chans, *dims[:3]))
        self.head = LabelGCNHead(dims[3], num_classes, adjacency, node_dim, hidden)
        self.last = nn.Identity()  # marks the pooled feature map [B, D, h, w] for the CAM family (no weights)

    def pooled(self, image: torch.Tensor) -> torch.Tensor:
        """Mask-fused VAN features, globally averaged: ``[B, dims[3]]`` (what the GCN head classifies)."""
        masks = self.unet(image)
        x = image
        for i in range(4):
            x = self.van.stage(i, self.fuse[i](x, masks))
        return self.last(x).mean(dim=(2, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(image))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The pooled features ``[B, dims[3]]`` before the label-GCN head (retrieval)."""
        return self.pooled(image)

    def cam_target_layers(self) -> list[nn.Module]:
        """The last VAN stage output (after its LayerNorm) that the head averages, for the CAM family."""
        return [self.last]

    def cam_classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """GCN-generated class weights ``[C, D]`` and bias ``[C]``: the head is linear in the average-pooled map."""
        return self.head.classifiers(), self.head.bias


def _kwargs(params, stats: TrainStats) -> dict:
    return {"num_classes": stats.num_classes, "image_size": params.image_size, "unet_dir": stats.unet_dir,
            "dims": list(params.segfusion.dims), "depths": list(params.segfusion.depths),
            "adjacency": train_label_adjacency(params, stats)}


@register_model(kwargs=_kwargs)
def segfusion_van_gcn(num_classes: int = 14, in_chans: int = 1, image_size: int = 224, unet_dir: str | None = None,
                      num_masks: int = 3, dims=(32, 64, 160, 256), depths=(2, 2, 2, 2),
                      adjacency: np.ndarray | None = None, node_dim: int = 64, hidden: int = 256) -> SegFusionVANGCN:
    """SegFusion-VAN-GCN. ``unet_dir``: model dir of the ``unet`` stage (``cxr.models.unet.load_unet``)."""
    unet, unet_size = None, None
    if unet_dir:
        unet, _ = load_unet(unet_dir)
        unet_size = int(read_card(unet_dir)["input"]["size"])  # masks are predicted at the UNet's training scale
    return SegFusionVANGCN(num_classes, in_chans, image_size, unet, num_masks, dims, depths, adjacency, node_dim, hidden,
                           unet_size)
