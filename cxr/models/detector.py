"""The anatomical region detector network: torchvision Faster R-CNN (Ren et al., NeurIPS 2015)
with an FPN backbone, and its model-dir loader. Trained and scored by :mod:`cxr.anatomy.detector`;
read by the ``features`` stage and ``cxr predict``.

Input: grayscale ``[1, H, W]`` float in ``[0, 1]`` (long side ``image_size``); normalisation
``(x - 0.5) / 0.25`` inside the model. Classes: 0 = background, ``k >= 1`` = ``regions[k - 1]``.
Not part of the classifier zoo (:mod:`cxr.models.zoo` does not import it), so a change here
reruns only the stages that run the detector.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cxr.errors import AnatomyError
from cxr.modeldir import load_state, read_card
from cxr.models.weights import gray_first_conv, load_local_weights
from cxr.params import DetectorParams

log = logging.getLogger(__name__)

ARCHITECTURE = "torchvision.FasterRCNN"
MEAN, STD = (0.5,), (0.25,)
BACKBONES = ("tiny_fpn", "mobilenet_v3_large_fpn", "mobilenet_v3_small_fpn", "resnet18_fpn", "resnet50_fpn")


# ------------------------------------------------------------------------------------ model


def _to_gray(backbone: nn.Module) -> None:
    """Replace the first 3-channel conv of ``backbone`` with a 1-channel one (same geometry)."""
    for name, mod in backbone.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            new = nn.Conv2d(1, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                            mod.groups, mod.bias is not None)
            parent = backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else backbone
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return
    raise AnatomyError("backbone has no 3-channel input convolution to convert to grayscale")


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def tiny_fpn_backbone(out_channels: int = 96) -> BackboneWithFPN:
    """A small plain-convolution backbone (strides 8 / 16 / 32 + max-pool level) with an FPN.

    Dense 3x3 convolutions run several times faster on CPUs than the depthwise convolutions of
    MobileNetV3 at the same accuracy on radiograph anatomy, so this is the CPU default.
    """
    chans = (24, 32, 64, 128, 192)
    layers = [("stem", _conv_bn(1, chans[0], 2))]
    for i in range(1, 5):
        layers.append((f"layer{i}", nn.Sequential(_conv_bn(chans[i - 1], chans[i], 2), _conv_bn(chans[i], chans[i], 1))))
    body = nn.Sequential(OrderedDict(layers))
    return BackboneWithFPN(body, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                           in_channels_list=list(chans[2:]), out_channels=out_channels,
                           extra_blocks=LastLevelMaxPool())


def anchor_sizes(sizes: list[int] | list[list[int]], n_maps: int) -> tuple[tuple[int, ...], ...]:
    """Per-level anchor sizes: a flat list goes to every one of the ``n_maps`` FPN levels; a list of
    lists names each level's sizes, finest level first, and must have ``n_maps`` entries."""
    if sizes and isinstance(sizes[0], list):
        if len(sizes) != n_maps:
            raise AnatomyError(f"detector.anchor_sizes has {len(sizes)} levels but the backbone has {n_maps} "
                               f"feature maps; give {n_maps} lists or one flat list for every level, e.g. "
                               f"-S 'detector.anchor_sizes=[32,64,128,256]'")
        return tuple(tuple(int(a) for a in level) for level in sizes)
    return (tuple(int(a) for a in sizes),) * n_maps


def build_detector(num_classes: int, params: DetectorParams, pretrained: str | None = None) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` regions (+ background) on grayscale input.

    Args:
        num_classes: number of regions (the background class is added).
        params: the ``detector`` params section (backbone, sizes, proposal counts).
        pretrained: optional local backbone weights file (torchvision ImageNet state_dict of the
            plain classifier, or of ``backbone.body``); never downloaded.

    Raises:
        AnatomyError: unknown backbone or unusable weights file.
    """
    if params.backbone not in BACKBONES:
        raise AnatomyError(f"detector.backbone = {params.backbone!r}; choose one of {list(BACKBONES)}")
    norm = nn.BatchNorm2d  # from scratch: trainable batch norm (torchvision freezes it for pretrained nets)
    if params.backbone == "tiny_fpn":
        backbone = tiny_fpn_backbone()
        n_maps = 4
    elif params.backbone.startswith("mobilenet"):
        backbone = mobilenet_backbone(backbone_name=params.backbone.removesuffix("_fpn"), weights=None, fpn=True,
                                      norm_layer=norm, trainable_layers=6)
        n_maps = 3  # two returned stages + the max-pool level
    else:
        backbone = resnet_fpn_backbone(backbone_name=params.backbone.removesuffix("_fpn"), weights=None,
                                       norm_layer=norm, trainable_layers=5)
        n_maps = 5
    if params.backbone != "tiny_fpn":
        _to_gray(backbone.body)
    if pretrained:
        state = load_local_weights(pretrained)
        body = backbone.body.state_dict()
        state = {k.removeprefix("backbone.body.").removeprefix("features."): v for k, v in state.items()}
        if params.backbone.startswith("mobilenet"):  # torchvision classifier keys: features.<i>.* -> <i>.*
            state = {k: v for k, v in state.items() if k in body}
        state = gray_first_conv(state, body)
        missing, unexpected = backbone.body.load_state_dict(state, strict=False)
        if len(missing) == len(body):
            raise AnatomyError(f"{pretrained}: no key matches the {params.backbone} backbone")
        log.info("loaded %s: %d keys missing, %d unexpected", pretrained, len(missing), len(unexpected))
    anchors = AnchorGenerator(sizes=anchor_sizes(params.anchor_sizes, n_maps), aspect_ratios=((0.5, 1.0, 2.0),) * n_maps)
    # torchvision's default pooler (maps "0".."3"; the max-pool level is for the RPN only), with our sampling
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7,
                                  sampling_ratio=params.roi_sampling_ratio)
    return FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=params.image_size,
        max_size=params.image_size,
        image_mean=list(MEAN),
        image_std=list(STD),
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        rpn_pre_nms_top_n_train=params.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=params.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=params.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=params.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=params.rpn_batch_size_per_image,
        box_batch_size_per_image=params.box_batch_size_per_image,
        box_score_thresh=params.box_score_thresh,
        box_detections_per_img=params.box_detections_per_img,
    )


def load_detector(model_dir: str | Path) -> tuple[FasterRCNN, dict[str, Any]]:
    """Rebuild the trained detector of a model dir (eval mode, CPU) and return it with its card."""
    card = read_card(model_dir)
    if card.get("architecture") != ARCHITECTURE:
        raise AnatomyError(f"{model_dir}: architecture {card.get('architecture')!r} is not {ARCHITECTURE}")
    params = DetectorParams(**card["params"])
    model = build_detector(len(card["regions"]), params)
    model.load_state_dict(load_state(model_dir))
    return model.eval(), card
