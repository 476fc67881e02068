"""Organ masks and UNet: mask reader on real lung masks, Dice / IoU, geometry, one training step, model dir."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.anatomy.common import WEIGHTS, AnatomyError
from cxr.anatomy.masks import dice_iou, read_mask, to_png_grid
from cxr.anatomy.unet import OrganUNet, load_unet, mask_table, train_unet
from cxr.sources.masks import find_masks
from cxr.errors import ModelDirError
from cxr.params import ParamsError, UnetParams, parse_section
from stages import unet as unet_stage

FAST = dict(image_size=64, epochs=1, max_steps=1, batch_size=2)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_real_lung_masks_read_and_score(realdata, n):
    mask = read_mask(realdata / "lungmasks" / f"{n}-mask.png")
    assert mask.dtype == bool and mask.shape == (512, 512)
    assert 0.1 < mask.mean() < 0.6  # two lungs, not the whole image
    assert dice_iou(mask, mask) == (1.0, 1.0)
    assert dice_iou(mask, np.zeros_like(mask)) == (0.0, 0.0)
    assert dice_iou(np.zeros_like(mask), mask)[0] == 0.0


def test_dice_iou_known_values_and_errors():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b[1:3] = True  # 8 px, 4 shared
    d, j = dice_iou(a, b)
    assert d == pytest.approx(0.5) and j == pytest.approx(4 / 12)
    assert dice_iou(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)
    with pytest.raises(AnatomyError, match="shapes differ"):
        dice_iou(a, np.zeros((3, 3)))


def test_to_png_grid_follows_the_convert_geometry():
    m = np.zeros((40, 20), bool)
    m[10:20, 4:8] = True
    out = to_png_grid(m, scale=0.5, offset_x=5, offset_y=0, out_rows=20, out_cols=20)  # pad: x + 5
    ys, xs = np.nonzero(out)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 9, 7, 8)
    crop = to_png_grid(m, scale=1.0, offset_x=0, offset_y=-10, out_rows=20, out_cols=20)  # centre crop
    ys, _ = np.nonzero(crop)
    assert (ys.min(), ys.max()) == (0, 9)


def test_synthetic_masks_land_on_the_converted_image(anatomy_data):
    d = anatomy_data
    table = mask_table(pd.read_parquet(d["images"]), pd.read_parquet(d["splits"]), find_masks(d["raw"]),
                       ["right_lung", "left_lung"])
    assert len(table) > 0
    row = table.iloc[0]
    raw = read_mask(d["raw"] / "masks" / row["image_id"] / "right_lung.png")
    assert raw.shape == (row["rows"], row["cols"])
    png = to_png_grid(raw, row["scale"], row["offset_x"], row["offset_y"], row["out_rows"], row["out_cols"])
    assert png.shape == (row["out_rows"], row["out_cols"])
    assert abs(png.sum() - raw.sum() * row["scale"] ** 2) / png.sum() < 0.05


def test_one_step_model_dir_round_trip(anatomy_data, tmp_path):
    d = anatomy_data
    model, metrics = train_unet(pd.read_parquet(d["images"]), pd.read_parquet(d["splits"]), d["image_dir"],
                                find_masks(d["raw"]), tmp_path / "unet", UnetParams(**FAST), seed=1, progress=False)
    assert metrics["images"]["train"] > 0
    assert set(metrics["test"]["per_structure"]) == set(UnetParams().structures) or metrics["test"]["images"] == 0
    base = metrics["test"]["baseline_prior_mask"]  # the mean train mask, scored like the UNet
    assert base["images"] == metrics["test"]["images"] and "train masks averaged" in base["rule"]
    assert base["images"] == 0 or 0.0 <= base["mean_dice"] <= 1.0
    card = json.loads((tmp_path / "unet" / "card.json").read_text())
    assert card["classes"] == list(UnetParams().structures) and card["input"]["size"] == 64
    torch.load(tmp_path / "unet" / WEIGHTS, weights_only=True)
    again, classes = load_unet(tmp_path / "unet")
    assert classes == card["classes"]
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), again(x))
        assert again(x).shape == (2, 5, 64, 64)


def test_every_parameter_trains():
    torch.manual_seed(0)
    model = OrganUNet(["a", "b"], encoder_depth=3, decoder_channels=(16, 8, 4))
    y = torch.rand(2, 2, 64, 64) > 0.5
    torch.nn.functional.binary_cross_entropy_with_logits(model(torch.rand(2, 1, 64, 64)), y.float()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_errors_name_the_value(anatomy_data, tmp_path):
    model = OrganUNet(["a"], encoder_depth=3, decoder_channels=(16, 8, 4))
    with pytest.raises(AnatomyError, match=r"\[0, 1\]"):
        model(torch.full((1, 1, 32, 32), 255.0))
    with pytest.raises(AnatomyError, match=r"\[B, 1, H, W\]"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ParamsError, match="decoder_channels"):
        parse_section("unet", {"encoder_depth": 3})
    with pytest.raises(AnatomyError, match="no training image has all masks"):
        train_unet(pd.read_parquet(anatomy_data["images"]), pd.read_parquet(anatomy_data["splits"]),
                   anatomy_data["image_dir"], find_masks(anatomy_data["raw"]), tmp_path / "u",
                   UnetParams(**FAST, structures=["spleen"]), progress=False)
    with pytest.raises(AnatomyError, match="mask not found"):
        read_mask(tmp_path / "none.png")
    with pytest.raises(ModelDirError, match="not a model dir"):
        load_unet(tmp_path)


def test_stage_writes_metrics(anatomy_data, tmp_path):
    d = anatomy_data
    params = tmp_path / "params.yaml"
    params.write_text("unet: " + json.dumps(FAST) + "\n")
    rc = unet_stage.main(["--params", str(params), "--images", str(d["images"]), "--image-dir", str(d["image_dir"]),
                          "--splits", str(d["splits"]), "--raw", str(d["raw"]),
                          "--out", str(tmp_path / "m"), "--live", str(tmp_path / "live"),
                          "--metrics", str(tmp_path / "unet.json")])
    assert rc == 0
    m = json.loads((tmp_path / "unet.json").read_text())
    assert {"val", "test", "images", "train_seconds"} <= set(m)


def test_prior_mask_baseline_by_hand():
    from cxr.anatomy.unet import MaskImages, prior_mask_baseline

    def data(masks):
        d = object.__new__(MaskImages)
        d.items = [(np.zeros((1, 4, 4), np.uint8), m) for m in masks]
        return d

    a = np.zeros((1, 4, 4), bool)
    a[0, :2, :2] = True
    b = np.zeros((1, 4, 4), bool)
    b[0, :2, :] = True
    # two of three train masks cover the left upper quarter: that is the prior; b covers it only half
    res = prior_mask_baseline(data([a, a, b]), data([a, b]), ["heart"])
    assert res["per_structure"]["heart"]["dice"] == pytest.approx((1.0 + 2 * 4 / (4 + 8)) / 2, abs=1e-4)
    assert res["images"] == 2


def test_prior_bias_starts_each_structure_at_its_train_fraction():
    """unet.prior_bias: each output channel's bias is logit(TRAIN foreground fraction), so an untrained
    network's mean probability per structure is near that fraction rather than 0.5 everywhere."""
    from cxr.anatomy.unet import MaskImages, foreground_fraction, set_prior_bias

    rng = np.random.default_rng(0)
    train = object.__new__(MaskImages)
    big = np.zeros((2, 32, 32), bool)
    big[0, :, :16] = True  # a lung: half the image
    big[1, 10:12, 4:12] = True  # a clavicle: 16 of 1024 pixels
    train.items = [(rng.integers(0, 255, (1, 32, 32), dtype=np.uint8), big) for _ in range(3)]
    assert foreground_fraction(train) == pytest.approx([0.5, 16 / 1024])
    torch.manual_seed(0)
    model = OrganUNet(["lung", "clavicle"], encoder_depth=3, decoder_channels=(16, 8, 4)).eval()
    frac = set_prior_bias(model, train)
    bias = model.net.segmentation_head[0].bias.detach().numpy()
    assert bias == pytest.approx(np.log(frac / (1 - frac)), abs=1e-5)
    assert bias[1] < -4 < bias[0] + 4
    with torch.no_grad():
        p = torch.sigmoid(model(torch.rand(2, 1, 32, 32))).mean((0, 2, 3)).numpy()
    assert p[1] < 0.1 and abs(p[0] - 0.5) < 0.2  # at the default zero bias both would start near 0.5
    assert UnetParams().prior_bias is True and UnetParams(prior_bias=False).prior_bias is False
