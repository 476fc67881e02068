"""One training engine for every model of the zoo (Lightning), after torchvision's
``references/detection/engine.py``: the architecture differs, the loop does not.

* Loss: masked BCE on logits (:func:`masked_bce`): entries the uncertainty policy ignores
  (``cxr.labels.apply_uncertainty``) contribute nothing; optional per-class ``pos_weight``
  (negatives / positives on TRAIN) or a per-element focal term. Models with ``forward_all``
  (anatomy models) add a node (per-region) loss: ``g * image + (1 - g) * node`` with
  ``g = graph_importance``.
  A model with ``training_loss(batch, inputs) -> (loss, logits)`` (ATH) supplies its own loss;
  its logits still feed the validation macro AUROC.
* AdamW + cosine or plateau schedule; the run stops on a non-finite loss; validation under
  ``torch.inference_mode()`` gives the macro AUROC that early stopping and the best-epoch
  checkpoint follow.
* Seeds: ``seed_everything(seed, workers=True)``, deterministic algorithms; batch
  augmentation (small affine + contrast) uses a generator seeded by (seed, epoch, step).
* Device auto: CPU here; on GPU bf16 (or fp16) mixed precision and any Lightning strategy (DDP).
* DVCLive logs per-epoch curves and params into the run's log dir.

A model dir (:func:`save_model_dir`) holds ``model.pt`` (a state_dict, loadable with
``weights_only=True``) and ``card.json`` (architecture, model kwargs, label names in order, input
size, normalisation, thresholds chosen on VALIDATION, params, data hashes).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr.distributed import digests_agree, gather_by_index, is_rank_zero
from cxr import modeldir
from cxr.convert import card_settings
from cxr.io import atomic_dir, scratch_dir, sha256_file
from cxr.labels import label_names
from cxr.engine import TrainError, fit_module, make_logger
from cxr.evaluate.metrics import macro_auroc, val_thresholds  # noqa: F401  (re-exported: cxr.train.val_thresholds)
from cxr.inference import build_datasets, load_model_dir, model_inputs, predict  # noqa: F401  (re-exported)
from cxr.intensity import NORMALISATION, XRV_NORMALISATION
from cxr.models.losses import masked_bce, train_pos_weight  # noqa: F401  (re-exported: cxr.train.masked_bce)
from cxr.models.registry import TrainStats
from cxr.models.xrv import XRV_INPUT_SIZE, apply_xrv, read_xrv_checkpoint
from cxr.models.zoo import create_model, input_kind, model_kwargs
from cxr.precision import cpu_has_bf16, precision_for  # noqa: F401  (re-exported: cxr.train.precision_for)
from cxr.quiet import quiet

log = logging.getLogger(__name__)

def augment(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Small random affine (rotation +-5 deg, scale +-5 %, shift +-4 %) and contrast (+-10 %) per image.

    ``x`` is a normalised float batch ``[B, 1, H, W]``; the random state comes only from ``generator``.
    No horizontal flips: laterality (left/right regions, dextrocardia) is meaningful in a radiograph.
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator).to(x.device) * 2 - 1
    ang = u[:, 0] * math.radians(5) * strength
    sc = 1 + 0.05 * strength * u[:, 1]
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, 0.04 * strength * u[:, 2]], 1),
                         torch.stack([sin, cos, 0.04 * strength * u[:, 3]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    y = F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg
    return y * (1 + 0.1 * strength * u[:, 4, None, None, None])


class Classifier(L.LightningModule):
    """The Lightning module shared by every registered model.

    Args:
        model: a registered model (``input_keys`` + ``forward``; optional ``forward_all``).
        lr, weight_decay, schedule, epochs: AdamW and the ``cosine`` / ``plateau`` schedule.
        pos_weight: ``[C]`` or None.
        focal_gamma: 0 = plain BCE.
        graph_importance: weight of the image loss vs the node loss for models with ``forward_all``.
        augment_seed: None = no augmentation; else batch augmentation seeded by (seed, epoch, step).
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4, schedule: str = "cosine",
                 epochs: int = 5, pos_weight: torch.Tensor | None = None, focal_gamma: float = 0.0,
                 graph_importance: float = 1.0, augment_seed: int | None = None, norm: Mapping | None = None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.schedule, self.epochs = lr, weight_decay, schedule, epochs
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None, persistent=False)
        self.focal_gamma, self.graph_importance = focal_gamma, graph_importance
        self.augment_seed, self.norm = augment_seed, dict(norm or NORMALISATION)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.history: list[dict[str, float]] = []

    def inputs(self, batch: Mapping[str, torch.Tensor], train: bool = False) -> dict[str, torch.Tensor]:
        out = model_inputs(self.model, batch, self.norm)
        if "image" in out:
            x = out["image"]
            if train and self.augment_seed is not None:
                g = torch.Generator().manual_seed(hash((self.augment_seed, self.current_epoch, self.global_step)) & 0x7FFFFFFF)
                x = augment(x, g)
            # NHWC: oneDNN (CPU) and cuDNN (GPU) convolutions run faster in channels_last (1.2x densenet121,
            # 1.9x the VAN of segfusion at 128 px on this CPU); the model is converted in on_fit_start
            out["image"] = x.contiguous(memory_format=torch.channels_last)
        return out

    def on_fit_start(self) -> None:
        if "image" in self.model.input_keys:
            self.model.to(memory_format=torch.channels_last)

    def _loss(self, batch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(batch, train)
        if hasattr(self.model, "training_loss"):  # a model with its own objective (ATH: triplet hashing + auxiliary BCE)
            return self.model.training_loss(batch, x)
        if hasattr(self.model, "forward_all") and "region_targets" in batch and self.graph_importance < 1:
            logits, node = self.model.forward_all(**x)
            img = masked_bce(logits, batch["targets"], batch["mask"], self.pos_weight, self.focal_gamma)
            nd = masked_bce(node, batch["region_targets"], batch["region_mask"] & batch["presence"].unsqueeze(-1), None,
                            self.focal_gamma)
            loss = self.graph_importance * img + (1 - self.graph_importance) * nd
        else:
            logits = self.model(**x)
            loss = masked_bce(logits, batch["targets"], batch["mask"], self.pos_weight, self.focal_gamma)
        return loss, logits

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch, train=True)
        if not torch.isfinite(loss):
            raise TrainError(f"non-finite training loss {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                             "lower train.lr or check the inputs")
        self.log("loss/training", loss, on_step=False, on_epoch=True, batch_size=len(batch["targets"]), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits = self._loss(batch, train=False)
        self.log("loss/validation", loss, on_step=False, on_epoch=True, batch_size=len(batch["targets"]), sync_dist=True)
        self._val.append((batch["index"].cpu(), torch.sigmoid(logits.float()).cpu(), batch["targets"].cpu(),
                          batch["mask"].cpu()))

    def on_validation_epoch_end(self):
        # Under DDP every rank holds its shard: score the whole split, gathered from all ranks
        # (cxr.distributed), so early stopping, best epoch and thresholds see what one process sees.
        idx, p, y, m = (torch.cat(t) for t in zip(*self._val)) if self._val else (torch.zeros(0),) * 4
        self._val.clear()
        idx, p, y, m = gather_by_index(idx, p, y, m)
        if not len(idx):
            return
        auc = macro_auroc(p, y, m)
        # an undefined AUROC (tiny val split) must not stop training as "no improvement forever"
        # the same value on every rank (gathered): sync_dist averages identical numbers, exactly
        self.log("val/macro_auroc", auc if math.isfinite(auc) else 0.5, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, "val_macro_auroc": auc, "val_images": int(len(idx))})

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs, 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/macro_auroc", "interval": "epoch"}}


class BestState(L.Callback):
    """Keeps an in-memory copy of the model's state_dict at the best validation macro AUROC."""

    def __init__(self, monitor: str = "val/macro_auroc"):
        self.monitor, self.best, self.state, self.epoch = monitor, -math.inf, None, -1

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        v = trainer.callback_metrics.get(self.monitor)
        if v is not None and float(v) > self.best:
            self.best, self.epoch = float(v), trainer.current_epoch
            self.state = {k: t.detach().cpu().clone() for k, t in pl_module.model.state_dict().items()}


def _loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Seeded loader; ``workers`` > 0 keeps them alive across epochs; pinned host memory for a GPU run."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory, drop_last=False)


@quiet
def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset, *, seed: int, epochs: int, batch_size: int, lr: float,
        weight_decay: float = 1e-4, schedule: str = "cosine", pos_weight: torch.Tensor | None = None,
        focal_gamma: float = 0.0, graph_importance: float = 1.0, augment_images: bool = True, patience: int = 3,
        device: str = "auto", precision: str = "auto", devices: str | int = "auto", strategy: str = "auto",
        num_nodes: int = 1, num_workers: int = 0, log_dir: str | Path | None = None, hparams: Mapping | None = None,
        progress: bool = True, norm: Mapping | None = None) -> dict[str, Any]:
    """Train ``model`` in place and load its best-epoch weights.

    ``norm``: the image normalisation (default :data:`~cxr.intensity.NORMALISATION`; the model card records it).

    Returns:
        ``{"best_epoch", "best_val_macro_auroc", "epochs_run", "history", "precision"}`` (``precision``:
        the Lightning precision the run trained in, e.g. ``bf16-mixed``; the model card records it).
    """
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise TrainError(f"empty split: {len(train_ds)} train / {len(val_ds)} val samples")
    L.seed_everything(seed, workers=True, verbose=False)
    module = Classifier(model, lr=lr, weight_decay=weight_decay, schedule=schedule, epochs=epochs, pos_weight=pos_weight,
                        focal_gamma=focal_gamma, graph_importance=graph_importance,
                        augment_seed=seed if augment_images else None, norm=norm)
    best = BestState()
    callbacks: list[L.Callback] = [best, L.pytorch.callbacks.EarlyStopping("val/macro_auroc", mode="max", patience=patience)]
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}[device]
    run_precision = precision_for(precision, accelerator,
                                  convolutional="image" in model.input_keys and getattr(model, "cpu_bf16", True))
    pin = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    trainer, _ = fit_module(
        module, _loader(train_ds, batch_size, True, seed, num_workers, pin),
        _loader(val_ds, batch_size, False, seed, num_workers, pin),
        epochs=epochs, accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
        precision=run_precision,
        # CPU kernels are deterministic; some CUDA backward kernels (scatter, pooling) have no
        # deterministic version, so on a GPU ask for determinism but only warn where it is missing
        deterministic=True if accelerator == "cpu" or not torch.cuda.is_available() else "warn",
        logger=make_logger(log_dir, hparams, dvcyaml=None), callbacks=callbacks, progress=progress,
    )
    if best.state is None:
        raise TrainError("no validation result was recorded; nothing to keep")
    model.load_state_dict(best.state)
    # every rank must reach this collective before any returns (ranks > 0 then write nothing)
    agree = digests_agree(model) if trainer.world_size > 1 else True
    return {"precision": run_precision, "best_epoch": best.epoch, "best_val_macro_auroc": best.best,
            "epochs_run": trainer.current_epoch, "world_size": trainer.world_size, "global_rank": trainer.global_rank,
            "ranks_agree": agree, "history": module.history}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def save_model_dir(out_dir: str | Path, model: nn.Module, card: Mapping[str, Any]) -> None:
    """Write a model dir (:mod:`cxr.modeldir`); the card is made JSON-safe first."""
    modeldir.save_model_dir(out_dir, model, _jsonable(dict(card)))


def card_identity(name: str, *, names: Sequence[str], uncertainty: Mapping[str, Any], convert: Mapping[str, Any] | None,
                  params: Any, seed: int, data_source: Mapping[str, str] | None,
                  data_hashes: Mapping[str, str] | None) -> dict[str, Any]:
    """The card entries that fix what a training run computes (model, labels, label policy, decoding, params,
    seed, data): two runs with equal identities train the same weights (training is deterministic)."""
    return {
        "architecture": name, "label_names": list(names), "uncertainty": dict(uncertainty),
        "convert": dict(convert) if convert is not None else None,
        # pretrained files by name only: a card holds no machine path
        "params": {**params.model_dump(), "pretrained": {k: Path(v).name for k, v in params.pretrained.items()}},
        "seed": seed, "data_source": dict(data_source) if data_source is not None else None,
        "data_hashes": dict(data_hashes or {}),
    }


def identity_mismatch(card: Mapping[str, Any], ident: Mapping[str, Any]) -> list[str]:
    """Keys of :func:`card_identity` on which a saved card differs (as JSON) from ``ident``; [] = the same run.

    ``params.models`` (which models the matrix trains) is left out: it does not change one model's training."""
    def norm(k: str, v: Any) -> str:
        if k == "params" and isinstance(v, Mapping):
            v = {a: b for a, b in v.items() if a != "models"}
        return json.dumps(v, sort_keys=True)

    return [k for k, v in _jsonable(dict(ident)).items() if norm(k, card.get(k)) != norm(k, v)]


def train_model(name: str, *, images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, images_dir: str | Path,
                names: Sequence[str], uncertainty: Mapping[str, Any], params: Any, seed: int, out_dir: str | Path,
                log_dir: str | Path | None, cache_dir: str | Path, features_dir: str | Path | None = None,
                unet_dir: str | None = None, data_hashes: Mapping[str, str] | None = None,
                progress: bool = True, convert: Mapping[str, Any] | None = None,
                data_source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train model ``name`` on the TRAIN split, select the epoch and the thresholds on VAL, write the model dir.

    ``data_source``: the kind of data trained on (:meth:`cxr.params.IngestParams.source_kind`, e.g.
    ``{"kind": "synthetic", "source": "synthetic://default"}``); ``cxr predict`` warns on synthetic-trained models.

    ``convert``: the convert settings the training PNGs were made with (``cxr.convert.card_settings``),
    recorded in the card so that ``cxr predict`` decodes new files the same way.

    Returns:
        the model card (also written to ``out_dir/card.json``).
    """
    ds = build_datasets(name, images=images, labels=labels, splits=splits, images_dir=images_dir, names=names,
                        uncertainty=uncertainty, which=("train", "val"), image_size=params.image_size,
                        frontal_only=params.frontal_only, cache_dir=cache_dir, features_dir=features_dir,
                        progress=progress, datasets=params.datasets)
    tr, va = ds["train"], ds["val"]
    regions = input_kind(name) == "region_features"
    region_info = None
    if regions:
        f = tr.feats
        region_info = {"num_regions": f.features.shape[1], "feature_dim": f.features.shape[2],
                       "num_findings": f.region_labels.shape[2], "train_region_labels": f.region_labels[tr._rows],
                       "train_presence": f.presence[tr._rows]}
    kwargs = model_kwargs(name, params, TrainStats(num_classes=len(names), targets=tr.targets, mask=tr.mask,
                                                   regions=region_info, unet_dir=unet_dir))
    # a torchxrayvision DenseNet file is mapped here (it needs the label names), any other file by the factory
    xrv = read_xrv_checkpoint(kwargs["weights"]) if kwargs.get("weights") else None
    if xrv is not None:
        kwargs = {**kwargs, "weights": None}
    L.seed_everything(seed, workers=True, verbose=False)
    model = create_model(name, **kwargs)
    norm, pretrained = NORMALISATION, None
    if xrv is not None:
        pretrained = apply_xrv(model, xrv, names)
        norm = XRV_NORMALISATION
        if params.image_size != XRV_INPUT_SIZE:
            log.warning("%s: torchxrayvision weights were trained at %d px, train.image_size is %d", name,
                        XRV_INPUT_SIZE, params.image_size)
        if params.pool != "avg":
            log.warning("%s: torchxrayvision's classifier reads average-pooled features, train.pool is %r", name,
                        params.pool)
    elif kwargs.get("weights"):
        pretrained = {"kind": "backbone state_dict", "file": Path(kwargs["weights"]).name}
    graph_importance = params.graph.graph_importance if regions else 1.0
    hparams = {"model": name, **params.model_dump(exclude={"models"})}
    summary = fit(model, tr, va, seed=seed, epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                  weight_decay=params.weight_decay, schedule=params.schedule,
                  pos_weight=train_pos_weight(tr.targets, tr.mask) if params.pos_weight else None,
                  focal_gamma=params.focal_gamma if params.loss == "focal" else 0.0,
                  graph_importance=graph_importance, augment_images=params.augment, patience=params.patience,
                  device=params.device, precision=params.precision, devices=params.devices, strategy=params.strategy,
                  num_nodes=params.num_nodes, num_workers=params.num_workers, log_dir=log_dir, hparams=hparams, progress=progress,
                  norm=norm)
    if summary["global_rank"] != 0:
        return {}  # DDP: only rank 0 writes the model dir (and DVCLive logs, through Lightning)
    if not summary["ranks_agree"]:
        raise TrainError(f"the {summary['world_size']} DDP ranks ended with different weights; not saving")
    model.cpu()
    val_probs = predict(model, va, batch_size=params.batch_size, norm=norm)
    thresholds = val_thresholds(val_probs, va.targets, va.mask, names)
    ident = card_identity(name, names=names, uncertainty=uncertainty, convert=convert, params=params, seed=seed,
                          data_source=data_source, data_hashes=data_hashes)
    card = {
        "architecture": name,
        # the weights file is read once, here: a model dir is rebuilt from model.pt alone
        "model_kwargs": {**kwargs, "weights": None} if "weights" in kwargs else kwargs,
        "label_names": ident["label_names"],
        "input": ({"kind": "image", "size": params.image_size, "channels": 1, "dtype": "uint8", "normalisation": dict(norm)}
                  if not regions else {"kind": "region_features", "num_regions": kwargs["num_regions"],
                                       "feature_dim": kwargs["feature_dim"],
                                       # GT scene-graph boxes at test time are an oracle: say so everywhere
                                       "box_source": tr.feats.meta.get("box_source"),
                                       # what computed the features (cxr predict recomputes them the same way)
                                       "extractor": tr.feats.meta.get("extractor",
                                                                      {"kind": "detector"})}),
        "pretrained": pretrained,
        "thresholds": thresholds,
        "threshold_rule": "Youden J on the validation split",
        "uncertainty": ident["uncertainty"],
        "convert": ident["convert"],
        # What the loss saw per class (after the uncertainty/blank policy): a class trained on one
        # value only would show here. "No Finding" blanks where another finding is 1 / -1 are
        # negatives under every blank policy (cxr.labels.apply_uncertainty).
        "train_targets": {n: {"positives": int((tr.targets[:, c][tr.mask[:, c]] == 1).sum()),
                              "negatives": int((tr.targets[:, c][tr.mask[:, c]] == 0).sum()),
                              "masked": int((~tr.mask[:, c]).sum())} for c, n in enumerate(names)},
        # pretrained files by name only: a card holds no machine path (the sha256 above identifies an xrv file)
        "params": ident["params"],
        "seed": seed,
        "data_source": ident["data_source"],
        "data_hashes": ident["data_hashes"],
        "train": {"images": len(tr), "val_images": len(va), **{k: v for k, v in summary.items()}},
    }
    save_model_dir(out_dir, model, card)
    log.info("%s: best epoch %d, val macro AUROC %.3f -> %s", name, summary["best_epoch"], summary["best_val_macro_auroc"], out_dir)
    return card


# ----------------------------------------------------------------------------- the training stages


def reuse_trained(src_dir: str | Path, src_log: str | Path | None, out_dir: str | Path, log_dir: str | Path | None,
                  ident: Mapping[str, Any]) -> str | None:
    """Copy the model dir ``src_dir`` (and its DVCLive log) to ``out_dir`` when its card records the same
    :func:`card_identity`: that run trained exactly what this one would. Returns None when copied, else why not.

    The ``backbone`` stage trains the region-feature classifier (``features.extractor``); ``train@M`` of the same
    model, with the same params and data, takes its weights instead of training them a second time.
    """
    src = Path(src_dir)
    try:
        card = modeldir.read_card(src)
    except Exception as exc:  # noqa: BLE001  (a marker folder or no model dir: train normally)
        return f"{src} is no model dir ({type(exc).__name__})"
    if not (src / modeldir.WEIGHTS).is_file():
        return f"{src} has no {modeldir.WEIGHTS}"
    diff = identity_mismatch(card, ident)
    if diff:
        return f"{src} was trained with other {', '.join(diff)}"
    if not is_rank_zero():
        return None  # under a launcher: rank 0 copies
    with atomic_dir(out_dir) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    if log_dir is not None and src_log is not None and Path(src_log).is_dir():
        with atomic_dir(log_dir) as tmp:
            shutil.copytree(src_log, tmp, dirs_exist_ok=True)
    return None


def train_stage(name: str, *, table: str | Path, labels: str | Path, splits: str | Path, images_dir: str | Path,
                base: Any, label: Any, params: Any, convert: Any, ingest: Any, out_dir: str | Path,
                log_dir: str | Path | None, cache_dir: str | Path | None = None, features_dir: str | Path | None = None,
                unet_dir: str | Path | None = None, reuse: tuple[str | Path, str | Path | None] | None = None,
                log: logging.Logger | None = None) -> dict[str, Any]:
    """What ``train@M`` and ``backbone`` run: read the stage's tables, train ``name`` (:func:`train_model`) with
    the params sections, or copy ``reuse = (model dir, log dir)`` when it was trained with the same identity.

    Returns:
        the card written (``{}`` on DDP ranks > 0).
    """
    log = log or logging.getLogger(__name__)
    hashes = {k: sha256_file(v) for k, v in (("images", table), ("labels", labels), ("splits", splits))}
    names = label_names(base.label_space)
    unc = {"policy": dict(label.uncertainty.per_class), "default": label.uncertainty.default,
           "blank": label.uncertainty.blank}
    conv, source = card_settings(convert), ingest.source_kind()
    if reuse is not None:
        ident = card_identity(name, names=names, uncertainty=unc, convert=conv, params=params, seed=base.seed,
                              data_source=source, data_hashes=hashes)
        why = reuse_trained(reuse[0], reuse[1], out_dir, log_dir, ident)
        if why is None:
            log.info("%s: the same training as %s (model, params, seed, data): its weights copied, not retrained",
                     name, reuse[0])
            return modeldir.read_card(out_dir) if is_rank_zero() else {}
        log.info("%s: trained here, not copied from %s: %s", name, reuse[0], why)
    with scratch_dir("cxr-cache") as tmp:
        return train_model(
            name, images=pd.read_parquet(table), labels=pd.read_parquet(labels), splits=pd.read_parquet(splits),
            images_dir=images_dir, names=names, uncertainty=unc, params=params, seed=base.seed, out_dir=out_dir,
            log_dir=log_dir, cache_dir=cache_dir or tmp, features_dir=features_dir, unet_dir=unet_dir,
            data_hashes=hashes, convert=conv, data_source=source)
