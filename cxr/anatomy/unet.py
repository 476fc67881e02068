"""Organ segmentation: a segmentation-models-pytorch UNet (Ronneberger et al., MICCAI 2015) on organ masks.

SegFusion-VAN-GCN pretrains a UNet on lung / heart / clavicle masks and fuses its masks into the
classifier's stages. Here: one sigmoid channel per structure (structures may overlap), loss =
BCE + soft Dice, trained with Lightning + DVCLive on the train split of the images that have
every configured mask; Dice and IoU per structure on val and test at the network's input size.

Model dir: ``model.pt`` (state_dict of :class:`OrganUNet`, load with ``weights_only=True``) +
``card.json`` (architecture, encoder, classes in channel order, input size, normalisation,
threshold, params, metrics). Load with :func:`load_unet`::

    model, classes = load_unet("models/unet")          # eval mode, CPU
    probs = torch.sigmoid(model(x))                    # x: [B, 1, S, S] float in [0, 1], S = card input size
    masks = probs > card["threshold"]                  # [B, len(classes), S, S]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr.anatomy.common import (
    AnatomyError,
    fit_size,
    gray_first_conv,
    lightning_accelerator,
    load_local_weights,
    ok_images,
    pick_device,
    read_gray,
    resize_float,
)
from cxr.anatomy.masks import dice_iou, read_mask, resize_mask, to_png_grid
from cxr.engine import OneCycleModule, check_finite, fit_module, make_logger, rank_zero_writes
from cxr.modeldir import save_model_dir
from cxr.models.unet import ARCHITECTURE, MEAN, STD, OrganUNet, load_unet  # noqa: F401  (re-exported)
from cxr.params import UnetParams
from cxr.precision import precision_for
from cxr.progress import tqdm

log = logging.getLogger(__name__)

def mask_table(images: pd.DataFrame, splits: pd.DataFrame, masks: pd.DataFrame,
               structures: Sequence[str]) -> pd.DataFrame:
    """Converted images with a split and a mask file for every structure: image rows + ``split`` +
    one ``mask:<structure>`` path column per structure.

    Args:
        masks: ``image_id, structure, path`` (:func:`cxr.sources.masks.find_masks`).
    """
    imgs = ok_images(images).reset_index(drop=True)
    wide = (masks[masks["structure"].isin(structures)]
            .pivot(index="image_id", columns="structure", values="path"))
    for s in structures:
        if s not in wide.columns:
            wide[s] = np.nan
    wide = wide[list(structures)].dropna().rename(columns={s: f"mask:{s}" for s in structures}).reset_index()
    out = imgs.merge(wide, on="image_id", how="inner").merge(splits[["image_id", "split"]], on="image_id", how="inner")
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


def mask_counts(masks: pd.DataFrame, structures: Sequence[str]) -> dict[str, int]:
    """Mask files found per configured structure (what the raw data holds, before the split join)."""
    return {s: int((masks["structure"] == s).sum()) for s in structures}


class MaskImages(Dataset):
    """Images and organ masks at ``size x size`` (long side resized, then padded bottom / right)."""

    def __init__(self, table: pd.DataFrame, images_dir: str | Path, structures: Sequence[str], size: int,
                 progress: bool = True):
        self.items = []
        for row in tqdm(table.to_dict("records"), total=len(table), desc="load masks", unit="img",
                        disable=not progress, mininterval=2):
            img = read_gray(Path(images_dir) / row["png_path"])
            h, w, _ = fit_size(*img.shape, size)
            x = np.zeros((1, size, size), np.uint8)
            x[0, :h, :w] = (resize_float(img, h, w) * 255).round().astype(np.uint8)
            y = np.zeros((len(structures), size, size), bool)
            for k, s in enumerate(structures):
                m = to_png_grid(read_mask(row[f"mask:{s}"]), float(row["scale"]), int(row["offset_x"]),
                                int(row["offset_y"]), int(row["out_rows"]), int(row["out_cols"]))
                y[k, :h, :w] = resize_mask(m, h, w)
            self.items.append((x, y))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.items[i]
        return torch.from_numpy(x).float().div_(255), torch.from_numpy(y).float()


def augment_pair(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same small random affine for images and their masks (rotation +-7 deg, scale +-8 %, shift +-5 %),
    plus brightness / contrast (+-10 %) and gamma (0.8-1.25) on the image only. No flips: left and right
    are different structures. ``x`` in ``[0, 1]``; the random state comes only from ``generator``."""
    import math

    b = x.shape[0]
    u = (torch.rand(b, 7, generator=generator) * 2 - 1).to(x.device)
    ang, sc = u[:, 0] * math.radians(7), 1 + 0.08 * u[:, 1]
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, 0.05 * u[:, 2]], 1), torch.stack([sin, cos, 0.05 * u[:, 3]], 1)], 1)
    grid = nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    xa = nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    ya = nn.functional.grid_sample(y, grid.to(y.dtype), align_corners=False, padding_mode="zeros")
    gamma = torch.exp(u[:, 4] * math.log(1.25))[:, None, None, None]
    mean = xa.mean(dim=(1, 2, 3), keepdim=True)
    xa = ((xa.clamp(0, 1) ** gamma - mean) * (1 + 0.1 * u[:, 5, None, None, None]) + mean
          + 0.1 * u[:, 6, None, None, None])
    return xa.clamp(0, 1), ya


class UNetModule(OneCycleModule):
    """BCE + soft Dice, AdamW, one-cycle LR (over this process's steps); channels_last; optional seeded
    paired augmentation."""

    def __init__(self, model: OrganUNet, train: MaskImages, params: UnetParams, seed: int,
                 augment_seed: int | None = None):
        super().__init__(train, params.batch_size, params.lr, params.weight_decay, seed=seed, workers=params.workers)
        self.model = model
        self.augment_seed = augment_seed

    def on_fit_start(self) -> None:
        # NHWC: oneDNN / cuDNN convolutions run faster (1.2x here in fp32, 2.6x with bf16 autocast)
        self.model.to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.augment_seed is not None:
            g = torch.Generator().manual_seed(self.augment_seed * 1_000_003 + self.global_step)
            x, y = augment_pair(x, y, g)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x).float()
        p = torch.sigmoid(logits)
        inter = (p * y).sum((2, 3))
        soft_dice = (2 * inter + 1) / (p.sum((2, 3)) + y.sum((2, 3)) + 1)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = bce + (1 - soft_dice).mean()
        check_finite(loss, "UNet", self.global_step, "lower unet.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        self.log("train/soft_dice", soft_dice.mean(), batch_size=len(x))
        return loss


@torch.inference_mode()
def evaluate_unet(model: OrganUNet, data: MaskImages, threshold: float = 0.5, batch_size: int = 8,
                  device: torch.device | None = None) -> dict[str, Any]:
    """Mean Dice and IoU per structure (and their means) over ``data``."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    scores: dict[str, list[tuple[float, float]]] = {c: [] for c in model.classes}
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        pred = (torch.sigmoid(model(x.to(device))) > threshold).cpu()
        for i in range(len(x)):
            for k, c in enumerate(model.classes):
                scores[c].append(dice_iou(pred[i, k], y[i, k] > 0.5))
    per = {c: {"dice": round(float(np.mean([d for d, _ in v])), 4), "iou": round(float(np.mean([j for _, j in v])), 4)}
           for c, v in scores.items() if v}
    out: dict[str, Any] = {"images": len(data), "per_structure": per}
    if per:
        out["mean_dice"] = round(float(np.mean([v["dice"] for v in per.values()])), 4)
        out["mean_iou"] = round(float(np.mean([v["iou"] for v in per.values()])), 4)
    return out


def prior_mask_baseline(train: MaskImages, data: MaskImages, structures: Sequence[str]) -> dict[str, Any]:
    """The no-model baseline: per structure, the TRAIN masks averaged pixelwise (in the same padded square
    grid) and thresholded at 0.5, scored on ``data`` as :func:`evaluate_unet` scores the UNet. A UNet
    that does not beat it has learnt no more than where each organ usually is."""
    if len(train) == 0:
        return {"images": len(data), "per_structure": {}}
    cover = np.zeros(train.items[0][1].shape, np.int32)  # [C, S, S] train masks covering each pixel
    for _, y in train.items:
        cover += y
    prior = torch.from_numpy(cover * 2 > len(train))
    scores: dict[str, list[tuple[float, float]]] = {c: [] for c in structures}
    for _, y in data.items:
        for k, c in enumerate(structures):
            scores[c].append(dice_iou(prior[k], torch.from_numpy(y[k])))
    per = {c: {"dice": round(float(np.mean([d for d, _ in v])), 4), "iou": round(float(np.mean([j for _, j in v])), 4)}
           for c, v in scores.items() if v}
    out: dict[str, Any] = {"images": len(data), "per_structure": per,
                           "rule": "per structure, the train masks averaged pixelwise and thresholded at 0.5"}
    if per:
        out["mean_dice"] = round(float(np.mean([v["dice"] for v in per.values()])), 4)
    return out


def foreground_fraction(data: MaskImages) -> np.ndarray:
    """Per structure, the fraction of input pixels inside its mask over ``data`` (padding counts as outside)."""
    return np.mean([y.reshape(len(y), -1).mean(1) for _, y in data.items], axis=0)


def set_prior_bias(model: OrganUNet, train: MaskImages, eps: float = 1e-4) -> np.ndarray:
    """Start each output channel at its TRAIN prior: bias = logit(foreground fraction), last conv's bias.

    At the default zero bias every pixel starts at p = 0.5, and the BCE term first spends epochs pushing
    the background down; a structure that covers under 1 % of the image (a clavicle) then gets almost
    no gradient from the soft Dice term until late in the schedule. Starting at the prior (as RetinaNet
    does for rare classes) removes that phase. Returns the fractions used.
    """
    frac = np.clip(foreground_fraction(train), eps, 1 - eps)
    conv = model.net.segmentation_head[0]
    with torch.no_grad():
        conv.bias.copy_(torch.as_tensor(np.log(frac / (1 - frac)), dtype=conv.bias.dtype))
    return frac


def train_unet(
    images: pd.DataFrame,
    splits: pd.DataFrame,
    images_dir: str | Path,
    masks: pd.DataFrame,
    out_dir: str | Path,
    params: UnetParams,
    seed: int = 42,
    live_dir: str | Path | None = None,
    progress: bool = True,
    convert: dict[str, Any] | None = None,
) -> tuple[OrganUNet, dict[str, Any]]:
    """Train on the train split, evaluate on val and test, save the model dir; returns the model and metrics.

    Raises:
        AnatomyError: no training image has every configured mask, or bad encoder / weights.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    device = pick_device(params.device)
    if params.image_size % (2 ** params.encoder_depth):
        raise AnatomyError(f"unet.image_size = {params.image_size} must be divisible by 2**encoder_depth = "
                           f"{2 ** params.encoder_depth}")
    table = mask_table(images, splits, masks, params.structures)
    counts = {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")}
    if counts["train"] == 0:
        raise AnatomyError(f"no training image has all masks {list(params.structures)} (mask files found per "
                           f"structure: {mask_counts(masks, params.structures)}; images with every mask per split: "
                           f"{counts})")
    data = {s: MaskImages(table[table["split"] == s], images_dir, params.structures, params.image_size,
                          progress=progress) for s in ("train", "val", "test")}
    try:
        model = OrganUNet(params.structures, params.encoder, params.encoder_depth, params.decoder_channels)
    except (KeyError, ValueError) as exc:
        raise AnatomyError(f"unet.encoder = {params.encoder!r}: {exc}") from None
    if params.pretrained:
        state = load_local_weights(params.pretrained)
        enc = model.net.encoder
        state = gray_first_conv(state, enc.state_dict())
        missing, unexpected = enc.load_state_dict(state, strict=False)
        log.info("loaded %s into the encoder: %d keys missing, %d unexpected", params.pretrained, len(missing),
                 len(unexpected))
    if params.prior_bias:
        set_prior_bias(model, data["train"])
    # the module builds its loader once the trainer knows the processes: batch_size per process
    module = UNetModule(model, data["train"], params, seed, augment_seed=seed if params.augment else None)
    precision = precision_for(params.precision, lightning_accelerator(device))
    trainer, seconds = fit_module(module, None, epochs=params.epochs, max_steps=params.max_steps,
                                  accelerator=lightning_accelerator(device), devices=params.devices,
                                  strategy=params.strategy, num_nodes=params.num_nodes, precision=precision,
                                  logger=make_logger(live_dir))
    if not rank_zero_writes(trainer, module.model, "UNet"):
        return module.model, {}  # DDP rank > 0: rank 0 scores the whole splits and writes the model dir
    model = module.model.to(memory_format=torch.contiguous_format)
    metrics: dict[str, Any] = {"images": counts, "train_seconds": round(seconds, 1), "precision": precision,
                               "steps": trainer.global_step, "world_size": trainer.world_size}
    for split in ("val", "test"):
        metrics[split] = evaluate_unet(model, data[split], params.threshold, device=device)
        metrics[split]["baseline_prior_mask"] = prior_mask_baseline(data["train"], data[split], params.structures)
    model = model.cpu().eval()
    card = {
        "architecture": ARCHITECTURE, "encoder": params.encoder, "encoder_depth": params.encoder_depth,
        "decoder_channels": list(params.decoder_channels), "classes": list(params.structures),
        "input": {"channels": 1, "size": params.image_size, "range": [0.0, 1.0],
                  "resize": "long side to size, aspect kept, padded bottom/right with 0"},
        "normalisation": {"mean": MEAN, "std": STD, "applied_by": "OrganUNet.forward"},
        "output": "logits [B, C, H, W]; sigmoid > threshold = mask", "threshold": params.threshold,
        "convert": convert, "precision": precision, "params": params.model_dump(), "seed": seed, "metrics": {s: metrics[s].get("mean_dice") for s in ("val", "test")},
        "data": {"images": counts, "datasets": sorted(table["dataset"].dropna().unique().tolist())},
    }
    save_model_dir(out_dir, model, card)
    log.info("unet: test mean Dice %s in %.0f s", metrics["test"].get("mean_dice"), seconds)
    return model, metrics
