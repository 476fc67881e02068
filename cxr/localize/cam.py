"""Class activation heatmaps of the image classifiers: CAM, Grad-CAM and Grad-CAM++.

* ``cam`` (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization"): the
  class weights of a head that is linear in the average-pooled feature map, applied to every
  position of that map, ``M_c(x, y) = sum_k w_ck f_k(x, y) + b_c`` (the image logit is the mean
  of ``M_c``). Implemented here; the model supplies the weights through ``cam_classifier()``
  and raises where CAM is undefined (max / LSE pooling, ML-GCN's max-pooled head).
* ``gradcam`` (Selvaraju et al. 2017) and ``gradcam++`` (Chattopadhay et al. 2018) through
  pytorch-grad-cam: channel weights from the gradients of the class logit w.r.t. the feature map,
  ReLU of the weighted sum.

Every map is upsampled bilinearly to the input size ``S`` and min-max normalised per image and
class to ``[0, 1]`` (a constant map becomes all zeros). The layer each model exposes is chosen in
the model registry (``cam_target_layers()`` of the model class), never here; region models
(AnaXNet, graph transformer) have no image heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.errors import CxrError

#: heatmap methods accepted by :func:`heatmaps`
METHODS = ("cam", "gradcam", "gradcam++")


class CamError(CxrError, ValueError):
    """A heatmap cannot be computed: unknown method, model without a target layer, bad input or class."""


def _name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def supports_heatmaps(model: nn.Module) -> bool:
    """True when ``model`` exposes CAM target layers (image classifiers of the registry)."""
    return callable(getattr(model, "cam_target_layers", None))


def target_layers(model: nn.Module) -> list[nn.Module]:
    """The registry-chosen layers of ``model`` whose output ``[B, D, h, w]`` the CAM family reads.

    Raises:
        CamError: the model has no ``cam_target_layers`` (e.g. a region-feature model).
    """
    if not supports_heatmaps(model):
        raise CamError(f"model {_name(model)!r} has no class activation maps (no cam_target_layers(); region-feature "
                       "models such as anaxnet / graph_transformer localise per anatomical region instead)")
    layers = list(model.cam_target_layers())
    if not layers:
        raise CamError(f"model {_name(model)!r}: cam_target_layers() returned no layer")
    return layers


def gradcam_layer(model: nn.Module, input_size: int, min_grid: int = 0) -> tuple[str, nn.Module]:
    """The layer Grad-CAM reads: the deepest backbone stage whose map has at least ``min_grid`` cells per
    side at ``input_size`` (``cam_stages()`` of the model), else the pooled map of ``cam_target_layers()``.

    ``min_grid`` 0 (or a model without stages, or a pooled map already that fine) keeps the pooled map,
    named ``"head"``. Why: densenet121 at 128 px pools a 4 x 4 map, 12 of whose 16 cells touch the border,
    so its Grad-CAM peaks at borders and corners; its 16 x 16 stage localises better than the prior box
    (``bench/cam_layers.py``).
    """
    head = target_layers(model)[-1]
    stages = model.cam_stages() if callable(getattr(model, "cam_stages", None)) else []
    if min_grid <= 0 or not stages or input_size // stages[-1][2] >= min_grid:
        return "head", head
    fine = [(name, mod) for name, mod, stride in stages if input_size // stride >= min_grid]
    return fine[-1] if fine else ("head", head)


def _normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per map over the last two dims -> ``[0, 1]`` (constant maps -> 0)."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def _check_inputs(model: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str) -> list[int]:
    if method not in METHODS:
        raise CamError(f"unknown heatmap method {method!r}; choose one of {list(METHODS)}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise CamError(f"images must be a normalised float batch [B, 1, S, S] (cxr.data.normalise), got {shape}")
    if images.dtype == torch.uint8 or not images.is_floating_point():
        raise CamError(f"images must be normalised float tensors (cxr.data.normalise), got dtype {images.dtype}")
    cls = [int(c) for c in classes]
    if not cls:
        raise CamError("classes is empty: name at least one class index")
    return cls


def _cam(model: nn.Module, images: torch.Tensor, classes: list[list[int]]) -> list[torch.Tensor]:
    """CAM maps ``[len(classes[b]), S, S]`` for each image ``b`` (one forward pass, no autograd)."""
    fn = getattr(model, "cam_classifier", None)
    if not callable(fn):
        raise CamError(f"CAM is undefined for model {_name(model)!r} (its head is not linear in an average-pooled "
                       "feature map); use method 'gradcam' or 'gradcam++'")
    layer = target_layers(model)[-1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            logits = model(images)
            try:
                weight, bias = fn()
            except ValueError as e:  # ModelError: pooling without a CAM
                raise CamError(str(e)) from e
    finally:
        handle.remove()
    _check_classes(model, [c for cs in classes for c in cs], int(logits.shape[-1]))
    if not seen or seen[-1].ndim != 4:
        raise CamError(f"model {_name(model)!r}: the CAM target layer did not produce a [B, D, h, w] feature map")
    f = seen[-1].float()
    out = []
    for b, cs in enumerate(classes):
        idx = torch.as_tensor(cs, device=f.device)
        maps = torch.einsum("dhw,kd->khw", f[b], weight.float()[idx]) + bias.float()[idx][:, None, None]
        maps = F.interpolate(maps[None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[0]
        out.append(_normalise_maps(maps))
    return out


def _check_classes(model: nn.Module, classes: list[int], num_classes: int) -> None:
    bad = sorted({c for c in classes if not 0 <= c < num_classes})
    if bad:
        raise CamError(f"class index(es) {bad} out of range for model {_name(model)!r} with {num_classes} outputs")


def _gradcam(model: nn.Module, images: torch.Tensor, classes: list[list[int]], method: str,
             min_grid: int = 0) -> list[torch.Tensor]:
    """Grad-CAM / Grad-CAM++ maps ``[len(classes[b]), S, S]`` for each image ``b``.

    pytorch-grad-cam's explainer records the target layer's activations and gradients and turns
    them into maps (``compute_cam_per_layer`` + ``aggregate_multi_layers``: the library's own
    weighting, ReLU, resize and min-max scaling). Its ``__call__`` runs one forward pass per
    class; here each image goes forward once and every requested class gets a backward pass on
    the retained graph. Only the gradient w.r.t. the target layer's output is needed, so the
    backbone runs without autograd and that output becomes a fresh leaf: the backward passes
    cover the head only. The maps are those of the plain library call (tests check it).
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    layers = [gradcam_layer(model, int(images.shape[-1]), min_grid)[1]]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    leaf_hooks = [m.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True)) for m in layers]
    explainer = None
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        explainer = (GradCAM if method == "gradcam" else GradCAMPlusPlus)(model=model, target_layers=layers)
        recorder = explainer.activations_and_grads
        logits = recorder(images)  # one forward; activations recorded, gradient hooks registered
        _check_classes(model, [c for cs in classes for c in cs], int(logits.shape[-1]))
        out: list[list[torch.Tensor]] = [[] for _ in classes]
        for k in range(max(len(cs) for cs in classes)):
            items = [b for b, cs in enumerate(classes) if len(cs) > k]
            recorder.gradients = []
            loss = sum(logits[b, classes[b][k]] for b in items)
            loss.backward(retain_graph=True)
            maps = explainer.aggregate_multi_layers(explainer.compute_cam_per_layer(images, None, False))  # [B, S, S]
            for b in items:
                out[b].append(torch.from_numpy(np.asarray(maps[b], dtype=np.float32)))
    finally:
        if explainer is not None:
            explainer.activations_and_grads.release()
        for h in leaf_hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return [torch.stack(m) for m in out]


def _run(model: nn.Module, images: torch.Tensor, classes: list[list[int]], method: str,
         min_grid: int = 0) -> list[np.ndarray]:
    """float32 maps ``[len(classes[b]), S, S]`` per image, model in eval mode (mode restored)."""
    target_layers(model)  # fails early and clearly for region models
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = images.to(device=device, dtype=torch.float32)
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()  # usable by autograd even when the caller runs under inference_mode
            maps = _cam(model, x, classes) if method == "cam" else _gradcam(model, x, classes, method, min_grid)
    finally:
        model.train(was_training)
    out = [m.detach().cpu().numpy().astype(np.float32, copy=False) for m in maps]
    if not all(np.isfinite(m).all() for m in out):
        raise CamError(f"model {_name(model)!r} produced non-finite {method} heatmaps (check the weights and the input)")
    return [np.clip(m, 0.0, 1.0) for m in out]


def image_heatmaps(model: nn.Module, images: torch.Tensor, classes: Sequence[Sequence[int]],
                   method: str = "gradcam", min_grid: int = 0) -> list[np.ndarray]:
    """Heatmaps with classes chosen per image: ``classes[b]`` lists the classes explained for ``images[b]``.

    Each image goes forward once whatever the number of its classes. Same inputs, errors and
    normalisation as :func:`heatmaps`; ``min_grid``: see :func:`gradcam_layer` (Grad-CAM / Grad-CAM++;
    CAM always reads the pooled map, the only one its linear head is exact for).

    Returns:
        One float32 array ``[len(classes[b]), S, S]`` in ``[0, 1]`` per image.
    """
    per = [[int(c) for c in cs] for cs in classes]
    _check_inputs(model, images, [c for cs in per for c in cs], method)
    if len(per) != images.shape[0] or any(not cs for cs in per):
        raise CamError(f"image_heatmaps needs a non-empty class list per image: {len(per)} lists for "
                       f"{images.shape[0]} images")
    return _run(model, images, per, method, min_grid)


def heatmaps(model: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str = "gradcam") -> np.ndarray:
    """Class activation heatmaps of ``model`` for a batch.

    Args:
        model: a registered image model with ``cam_target_layers()`` (``cxr.models``); it is
            run in eval mode (its train/eval mode is restored afterwards).
        images: the model input ``[B, 1, S, S]`` exactly as the engine feeds it: uint8 pixels
            through :func:`cxr.data.normalise` with the card's normalisation (float32).
        classes: output indices (label order of the model card) to explain, the same for every image.
        method: one of :data:`METHODS`.

    Returns:
        float32 ``[B, len(classes), S, S]`` in ``[0, 1]`` (per image and class min-max normalised).

    Raises:
        CamError: unknown method, a model without heatmaps (region models) or without CAM for
            ``method="cam"``, a non-normalised input, a class index out of range.
    """
    cls = _check_inputs(model, images, classes, method)
    return np.stack(_run(model, images, [cls] * images.shape[0], method))
