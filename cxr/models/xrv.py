"""torchxrayvision DenseNet checkpoints as a starting point for our ``densenet121``.

torchxrayvision (Cohen et al. 2022, "TorchXRayVision: A library of chest X-ray datasets and
models") ships DenseNet-121 classifiers trained on public chest X-ray sets. Its ``DenseNet`` has
torchvision's layer names (``features.conv0`` ... ``features.norm5``) with a 1-channel stem, then
ReLU, global average pooling and ``classifier`` (``Linear(1024, 18)``, one output per entry of
``model.targets``, :data:`XRV_PATHOLOGIES` by default; ``""`` marks an output a weight set did not
train). That is exactly timm's ``densenet121`` (whose ``norm5`` carries the ReLU) under our
``avg`` :class:`~cxr.models.cnn.PoolHead`, so the mapping is:

* ``features.*`` -> the backbone, tensor for tensor (all 725 must fit, or the file is refused);
* ``classifier`` rows -> rows of our head for the labels both spaces have (:func:`xrv_label`,
  e.g. ``Pleural Effusion`` = xrv ``Effusion``); other labels keep their fresh, seeded initialisation.

Its input convention differs from ours: one channel, pixels linearly onto ``[-1024, 1024]``
(:data:`cxr.intensity.XRV_NORMALISATION`), 224 px. The train stage records all of it in the card.

A file is a state dict (``torch.save(model.state_dict())``, optionally ``{"state_dict": ...,
"pathologies": [...]}``) or a whole pickled ``xrv.models.DenseNet``; the latter is read with
``weights_only=True`` and only torch layer classes and torchxrayvision's model classes allowed
(unpickling anything else could run code).
"""

from __future__ import annotations

import importlib
import logging
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.errors import PretrainedError
from cxr.io import sha256_file

log = logging.getLogger(__name__)

#: ``torchxrayvision.datasets.default_pathologies`` (1.5.7): the outputs of an 18-class xrv DenseNet, in order
XRV_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)
#: the input side xrv's DenseNet weights were trained at
XRV_INPUT_SIZE = 224
#: our label names (lower case, ``_`` as space) -> the xrv pathology they are; same-named labels need no entry
_ALIASES = {
    "pleural effusion": "effusion",
    "infiltrates": "infiltration",
    "pulmonary edema": "edema",
    "pulmonary edema/hazy opacity": "edema",
    "pulmonary fibrosis": "fibrosis",
    "enlarged cardiac silhouette": "cardiomegaly",
}
#: classes a pickled xrv model may reference (torch layers, torchxrayvision's model classes)
_PICKLE_MODULES = ("torch.nn.modules.", "torchxrayvision.models")


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def xrv_label(name: str, pathologies: Sequence[str] = XRV_PATHOLOGIES) -> int | None:
    """Index of our label ``name`` among xrv's ``pathologies`` (None: xrv has no such output)."""
    keys = [_key(p) if p else None for p in pathologies]
    k = _key(name)
    k = _ALIASES.get(k, k)
    return keys.index(k) if k in keys else None


@dataclass(frozen=True)
class XrvCheckpoint:
    """A torchxrayvision DenseNet read from a local file.

    Attributes:
        state: its ``features.*`` and ``classifier.*`` tensors.
        pathologies: the classifier's outputs in order (``""`` = not trained by that weight set).
        fmt: ``state_dict`` or ``pickled model``.
        weights_name: xrv's name of the weight set of a pickled model (e.g. ``densenet121-res224-all``).
    """

    path: Path
    state: dict[str, torch.Tensor]
    pathologies: tuple[str, ...]
    fmt: str
    weights_name: str | None
    sha256: str


def _load_pickled_model(path: Path) -> Any:
    """A whole pickled xrv model, with only torch layers and xrv model classes allowed to unpickle."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    bad = [n for n in names if not n.startswith(_PICKLE_MODULES)]
    if bad or not any(n.startswith("torchxrayvision.") for n in names):
        raise PretrainedError(f"{path}: not a state dict, and a pickled object other than a torchxrayvision model "
                              f"(it references {sorted(bad or names)[:5]}); save weights with "
                              "torch.save(model.state_dict(), path)")
    allowed = []
    for n in names:
        module, _, attr = n.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError) as exc:
            raise PretrainedError(f"{path}: a pickled torchxrayvision model needs {n}, which cannot be imported "
                                  f"({type(exc).__name__}: {exc}); pip install torchxrayvision==1.5.7, or save "
                                  "its state_dict instead") from None
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_xrv_densenet(state: Mapping[str, Any]) -> bool:
    """A DenseNet state dict with torchvision's names, a 1-channel stem and a classifier (torchxrayvision's)."""
    conv0, fc = state.get("features.conv0.weight"), state.get("classifier.weight")
    return (isinstance(conv0, torch.Tensor) and conv0.ndim == 4 and conv0.shape[1] == 1
            and isinstance(fc, torch.Tensor) and fc.ndim == 2 and "features.norm5.weight" in state)


def read_xrv_checkpoint(path: str | Path) -> XrvCheckpoint | None:
    """Read ``path`` if it holds a torchxrayvision DenseNet; None for any other readable weights file.

    Raises:
        PretrainedError: the file is missing, corrupt or unreadable, an unsafe pickle, or an xrv-like
            DenseNet whose classifier size does not fit its pathology list.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights file {path} not found (weights are never downloaded; put a local "
                              "file there or remove the model from train.pretrained)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            fmt = "state_dict"
        except pickle.UnpicklingError:
            obj, fmt = _load_pickled_model(path), "pickled model"
    except PretrainedError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            AttributeError, ImportError, KeyError, TypeError, IndexError) as exc:
        raise PretrainedError(f"{path}: not a readable torch weights file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); is it truncated or another format?") from None
    pathologies: Sequence[str] | None = None
    weights_name = None
    if isinstance(obj, nn.Module):
        pathologies = getattr(obj, "targets", None) or getattr(obj, "pathologies", None)
        weights_name = getattr(obj, "weights", None)
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        pathologies = obj.get("pathologies") or obj.get("targets") or pathologies
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
    if not isinstance(obj, Mapping) or not _is_xrv_densenet(obj):
        return None
    n_out = int(obj["classifier.weight"].shape[0])
    if pathologies is None and n_out == len(XRV_PATHOLOGIES):
        pathologies = XRV_PATHOLOGIES
    if pathologies is None or len(pathologies) != n_out:
        raise PretrainedError(
            f"{path}: a torchxrayvision-style DenseNet with {n_out} outputs, but "
            + ("no pathology list" if pathologies is None else f"{len(pathologies)} pathologies")
            + "; save it as {'state_dict': model.state_dict(), 'pathologies': model.targets}")
    state = {k: v for k, v in obj.items() if k.startswith(("features.", "classifier."))}
    return XrvCheckpoint(path=path, state=state, pathologies=tuple(str(p) for p in pathologies), fmt=fmt,
                         weights_name=None if weights_name is None else str(weights_name), sha256=sha256_file(path))


def apply_xrv(model: nn.Module, ckpt: XrvCheckpoint, names: Sequence[str]) -> dict[str, Any]:
    """Copy an xrv DenseNet onto our densenet121 ``model`` in place: the whole backbone, and the
    classifier rows of the labels both have (the others stay as initialised).

    Returns:
        the card's ``pretrained`` record: file name (no directory) and hash, the classes taken from
        xrv (ours -> xrv's), the classes left freshly initialised, xrv's input conventions.

    Raises:
        PretrainedError: ``model`` is not a densenet121 global classifier, or the backbone tensors do not fit.
    """
    feats = getattr(model, "features", None)
    head = getattr(model, "head", None)
    if getattr(feats, "timm_name", None) != "densenet121" or not isinstance(getattr(head, "fc", None), nn.Linear):
        raise PretrainedError(f"{ckpt.path}: a torchxrayvision DenseNet fits the densenet121 model only, not "
                              f"{getattr(model, 'model_name', type(model).__name__)}")
    own = feats.net.state_dict()
    backbone = {k: v for k, v in ckpt.state.items() if k.startswith("features.")}
    bad = [k for k, v in backbone.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in backbone]
    if bad or missing:
        raise PretrainedError(f"{ckpt.path}: the DenseNet does not fit densenet121 ({len(bad)} tensors of another "
                              f"name or shape, e.g. {bad[:3]}; {len(missing)} missing, e.g. {missing[:3]})")
    feats.net.load_state_dict(backbone, strict=True)
    weight, bias = ckpt.state["classifier.weight"], ckpt.state.get("classifier.bias")
    if weight.shape[1] != head.fc.in_features:
        raise PretrainedError(f"{ckpt.path}: classifier takes {weight.shape[1]} features, densenet121 gives "
                              f"{head.fc.in_features}")
    mapped: dict[str, str] = {}
    with torch.no_grad():
        for i, name in enumerate(names):
            j = xrv_label(name, ckpt.pathologies)
            if j is None:
                continue
            head.fc.weight[i] = weight[j].to(head.fc.weight.dtype)
            if bias is not None:
                head.fc.bias[i] = bias[j].to(head.fc.bias.dtype)
            mapped[name] = ckpt.pathologies[j]
    fresh = [n for n in names if n not in mapped]
    log.info("%s: torchxrayvision DenseNet (%s): %d backbone tensors; classifier rows for %d of %d labels (%s "
             "freshly initialised)", ckpt.path.name, ckpt.fmt, len(backbone), len(mapped), len(names),
             ", ".join(fresh) or "none")
    return {
        "kind": "torchxrayvision",
        "file": ckpt.path.name,
        "sha256": ckpt.sha256,
        "format": ckpt.fmt,
        "xrv_weights": ckpt.weights_name,
        "backbone_tensors": len(backbone),
        "classes_from_xrv": mapped,
        "classes_fresh": fresh,
        "xrv_pathologies": list(ckpt.pathologies),
        "input_convention": {"channels": 1, "range": [-1024, 1024], "size": XRV_INPUT_SIZE},
    }
