"""Weak localisation (cxr.localize): scores, heatmap -> boxes, coordinate frames, the CAM family on
every registered image model, and the localize stage on the tiny cohort with real (tiny) models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_params, tiny_workdir
from cxr.anatomy.coco import to_png
from cxr.data import load_png_square
from cxr.localize.boxes import BoxError, Geometry, heatmap_boxes, xywh_to_xyxy
from cxr.localize.cam import METHODS, CamError, gradcam_layer, heatmaps, image_heatmaps, supports_heatmaps
from cxr.localize.pipeline import LocalizeError, box_label_map
from cxr.localize.score import iobb, iou, score_boxes
from cxr.models.zoo import create_model, list_models

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- scores (hand-computed)


def test_iou_and_iobb_by_hand():
    gt = [[0, 0, 10, 10]]
    # half-overlapping box: inter 50, union 150, predicted area 100
    assert iou(gt, [[5, 0, 15, 10]])[0, 0] == pytest.approx(1 / 3)
    assert iobb(gt, [[5, 0, 15, 10]])[0, 0] == pytest.approx(0.5)
    # a small box inside the GT: IoU 16/100, IoBB 1 (the ChestX-ray8 definition favours it)
    assert iou(gt, [[2, 2, 6, 6]])[0, 0] == pytest.approx(0.16)
    assert iobb(gt, [[2, 2, 6, 6]])[0, 0] == pytest.approx(1.0)
    # a large box containing the GT: IoU 100/400, IoBB 100/400
    assert iou(gt, [[0, 0, 20, 20]])[0, 0] == pytest.approx(0.25)
    assert iobb(gt, [[0, 0, 20, 20]])[0, 0] == pytest.approx(0.25)
    assert iou(gt, [[20, 20, 30, 30]])[0, 0] == 0 and iobb(gt, [[3, 3, 3, 8]])[0, 0] == 0  # disjoint, empty


def test_score_counts_every_gt_box_and_matches_one_detection():
    pairs = [
        # image 1, class A: two GT boxes, one predicted box matching only the first exactly
        ("A", np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([[0, 0, 10, 10, 0.9]])),
        # image 2, class A: one GT box; a small spurious box inside it (IoU 0.16, IoBB 1) and a
        # half-overlapping one (IoU 1/3, IoBB 0.5): the GT box is matched to the second (best IoU),
        # whose IoBB is 0.5; the small box may not lend it its IoBB of 1
        ("A", np.array([[0, 0, 10, 10]]), np.array([[2, 2, 6, 6], [5, 0, 15, 10]])),
        # image 2, class B: no predicted box at all
        ("B", np.array([[0, 0, 4, 4]]), np.zeros((0, 4))),
    ]
    s = score_boxes(pairs, ["A", "B", "C"], thresholds=[0.1, 0.25, 0.5])
    a = s["per_class"]["A"]
    assert a["n_boxes"] == 3 and a["n_images"] == 2
    assert a["iou"] == {"0.1": pytest.approx(2 / 3), "0.25": pytest.approx(2 / 3), "0.5": pytest.approx(1 / 3)}
    assert a["iobb"] == {"0.1": pytest.approx(2 / 3), "0.25": pytest.approx(2 / 3), "0.5": pytest.approx(2 / 3)}
    assert a["mean_iou"] == pytest.approx((1 + 0 + 1 / 3) / 3) and a["mean_iobb"] == pytest.approx((1 + 0 + 0.5) / 3)
    # false positives per (image, class) pair: image 2's boxes miss at T(IoU) 0.25 (the small one) and
    # 0.5 (both); by IoBB both reach 0.5 with the GT box, so none is a false positive
    assert a["afp"]["iou"] == {"0.1": 0, "0.25": pytest.approx(0.5), "0.5": pytest.approx(1.0)}
    assert a["afp"]["iobb"] == {"0.1": 0, "0.25": 0, "0.5": 0}
    assert s["per_class"]["B"]["iou"]["0.1"] == 0 and s["per_class"]["B"]["mean_iou"] == 0
    assert s["per_class"]["B"]["afp"]["iou"]["0.5"] == 0
    assert s["per_class"]["C"]["n_boxes"] == 0 and s["per_class"]["C"]["iou"]["0.1"] is None
    assert s["macro"]["n_classes"] == 2 and s["macro"]["iou"]["0.1"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["macro"]["afp"]["iou"]["0.5"] == pytest.approx((1.0 + 0) / 2)
    assert s["micro"]["n_boxes"] == 4 and s["micro"]["n_pairs"] == 3
    assert s["micro"]["iou"]["0.25"] == pytest.approx(2 / 4)
    assert s["micro"]["afp"]["iou"] == {"0.1": 0, "0.25": pytest.approx(1 / 3), "0.5": pytest.approx(2 / 3)}


def test_match_ties_take_the_higher_iobb_then_the_first_box():
    from cxr.localize.score import matched_overlaps

    gt = [[0, 0, 10, 10]]
    # two predictions with the same IoU 0.25 against the GT: a box holding the GT (IoBB 0.25) and a
    # 5 x 5 box inside it (IoU 0.25, IoBB 1): the tie goes to the higher IoBB
    u, b = matched_overlaps(gt, [[0, 0, 20, 20], [0, 0, 5, 5]])
    assert u.tolist() == [pytest.approx(0.25)] and b.tolist() == [pytest.approx(1.0)]
    u, b = matched_overlaps(gt, np.zeros((0, 4)))
    assert u.tolist() == [0.0] and b.tolist() == [0.0]


def test_score_refuses_an_unknown_class():
    with pytest.raises(ValueError, match="not one of"):
        score_boxes([("Z", np.zeros((1, 4)), np.zeros((0, 4)))], ["A"])


# ---------------------------------------------------------------- heatmap -> boxes, frames


def test_heatmap_boxes_components_threshold_and_order():
    h = np.zeros((20, 30))
    h[2:5, 3:9] = 0.6  # component 1: rows 2-4, cols 3-8
    h[10:18, 20:25] = 1.0  # component 2 (the peak)
    h[17, 25] = 0.9  # diagonal neighbour: 8-connected to component 2
    b = heatmap_boxes(h, 0.5)
    assert b.tolist() == [[20, 10, 26, 18, 1.0], [3, 2, 9, 5, 0.6]]
    assert heatmap_boxes(h, 0.7).tolist() == [[20, 10, 26, 18, 1.0]]
    assert heatmap_boxes(h, 0.5, max_boxes=1).shape == (1, 5)
    assert heatmap_boxes(np.full((5, 5), 0.3), 0.5).shape == (0, 5)  # constant map: no box
    assert heatmap_boxes(h * 7 - 2, 0.5).tolist() == b.tolist()  # normalised first
    with pytest.raises(BoxError, match="threshold"):
        heatmap_boxes(h, 0)
    with pytest.raises(BoxError, match="non-finite"):
        heatmap_boxes(np.full((3, 3), np.nan), 0.5)


@pytest.mark.parametrize("geo", [
    Geometry(scale=0.82, offset_x=42, offset_y=0, png_width=512, png_height=512, size=128),   # padded sides
    Geometry(scale=1.14, offset_x=0, offset_y=-37, png_width=512, png_height=512, size=224),  # cropped rows
    Geometry(scale=0.5, offset_x=0, offset_y=0, png_width=300, png_height=200, size=64),      # non-square PNG
])
def test_box_round_trip_source_png_input(geo):
    src = np.array([[10.0, 20.0, 110.5, 230.25], [0.0, 0.0, 5.0, 5.0]])
    png = geo.source_to_png(src)
    # the same mapping as the coco stage (to_png), which clips to the PNG
    for s, p in zip(src, png):
        clipped = to_png(s, geo.scale, geo.offset_x, geo.offset_y, geo.png_width, geo.png_height)
        if clipped is not None:
            assert np.allclose(clipped, np.clip(p, 0, [geo.png_width, geo.png_height] * 2))
    assert np.allclose(geo.input_to_png(geo.png_to_input(png)), png, atol=1e-9)
    assert np.allclose(geo.input_to_source(geo.source_to_input(src)), src, atol=1e-9)
    assert np.allclose(geo.png_to_source(png), src, atol=1e-9)


def test_input_frame_matches_load_png_square(tmp_path):
    """A bright rectangle drawn in a non-square PNG is found where the geometry says in the model input."""
    png = np.zeros((120, 200), np.uint8)
    png[30:70, 100:160] = 255  # PNG box x 100..160, y 30..70
    Image.fromarray(png).save(tmp_path / "x.png")
    size = 100
    geo = Geometry(scale=1.0, offset_x=0, offset_y=0, png_width=200, png_height=120, size=size)
    arr = load_png_square(tmp_path / "x.png", size)
    found = heatmap_boxes(arr.astype(float), 0.5)[:, :4]
    assert len(found) == 1
    assert np.allclose(geo.input_to_png(found)[0], [100, 30, 160, 70], atol=geo.side / size)
    assert np.allclose(geo.png_to_input([[100, 30, 160, 70]])[0], found[0], atol=1.0)


def test_box_labels_map_into_the_model_label_space():
    from cxr.labels import label_names

    m = box_label_map(label_names("chexpert14"))
    assert m["Infiltration"] == ["Lung Opacity"] and m["Effusion"] == ["Pleural Effusion"]
    assert sorted(m["Pneumonia"]) == ["Lung Opacity", "Pneumonia"] and m["Mass"] == ["Lung Lesion"]
    assert box_label_map(["Cardiomegaly", "Edema"])["Infiltration"] == []
    assert box_label_map(label_names("anaxnet9"))["Mass"] == []
    assert box_label_map(["Abnormal"])["Nodule"] == ["Abnormal"]
    assert xywh_to_xyxy([[1, 2, 3, 4]]).tolist() == [[1, 2, 4, 6]]


# ---------------------------------------------------------------- CAM family across the registry


def _image_models():
    out = []
    for name in list_models():
        m = create_model(name, num_classes=3, image_size=64) if name not in ("anaxnet", "graph_transformer") \
            else create_model(name, num_classes=3)
        out.append((name, m))
    return out


def test_every_image_model_of_the_registry_yields_heatmaps():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64)
    seen = []
    for name, m in _image_models():
        if "image" not in m.input_keys or getattr(m, "hashing", False):
            # region models have no image heatmaps; hashing models are retrieval-only (never localised)
            assert not supports_heatmaps(m) or getattr(m, "hashing", False)
            with pytest.raises(CamError):
                heatmaps(m, x, [0])
            continue
        m.train()
        h = heatmaps(m, x, [0, 2], "gradcam")
        assert h.shape == (2, 2, 64, 64) and h.dtype == np.float32, name
        assert np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1, name
        assert m.training, f"{name}: train mode not restored"
        seen.append(name)
    assert {"densenet121", "vit_small", "swin_tiny", "mlgcn", "segfusion_van_gcn"} <= set(seen)


def test_cam_is_exact_and_gradcam_matches_the_library():
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    m = create_model("efficientnet_b0", num_classes=3, image_size=64).eval()
    x = torch.randn(3, 1, 64, 64)
    # CAM: the logit of an avg-pool head is the mean of the (unnormalised) class map
    f = m.cam_target_layers()[0](x)
    w, b = m.cam_classifier()
    raw = torch.einsum("bdhw,cd->bchw", f, w) + b[None, :, None, None]
    assert torch.allclose(raw.mean(dim=(2, 3)), m(x), atol=1e-4)
    cam = heatmaps(m, x, [1], "cam")
    assert cam.shape == (3, 1, 64, 64) and np.isclose(cam.max(), 1) and np.isclose(cam.min(), 0)
    # our one-forward-per-image Grad-CAM++ equals the library's own call, class by class
    with GradCAMPlusPlus(model=m, target_layers=m.cam_target_layers()) as lib:
        ref = {c: lib(input_tensor=x, targets=[ClassifierOutputTarget(c)] * 3) for c in (0, 2)}
    ours = image_heatmaps(m, x, [[0, 2], [2], [0]], "gradcam++")
    assert np.allclose(ours[0][0], ref[0][0]) and np.allclose(ours[0][1], ref[2][0])
    assert np.allclose(ours[1][0], ref[2][1]) and np.allclose(ours[2][0], ref[0][2])
    with torch.inference_mode():  # callable from inference code (cxr predict)
        assert heatmaps(m, x, [0], "gradcam").shape == (3, 1, 64, 64)


def test_gradcam_reads_the_finest_stage_asked_for_and_matches_the_library():
    """densenet121 at 128 px pools a 4 x 4 map (12 of 16 cells on the border); localize.cam_min_grid 16
    makes Grad-CAM read its 16 x 16 stage (denseblock2), with the library's own maps for that layer."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(2)
    m = create_model("densenet121", num_classes=3, image_size=128).eval()
    assert [r for _, _, r in m.cam_stages()] == [2, 4, 8, 16, 32]
    assert gradcam_layer(m, 128, 16)[0] == "features.denseblock2"
    assert gradcam_layer(m, 128, 8)[0] == "features.denseblock3"
    assert gradcam_layer(m, 128, 0)[0] == "head" and gradcam_layer(m, 128, 4)[0] == "head"  # the pooled map is 4 x 4
    assert gradcam_layer(m, 128, 512)[0] == "head"  # no stage that fine: the pooled map
    x = torch.randn(2, 1, 128, 128)
    fine = image_heatmaps(m, x, [[0, 2], [1]], "gradcam", min_grid=16)
    pooled = image_heatmaps(m, x, [[0, 2], [1]], "gradcam", min_grid=0)
    stage = dict(m.features.net.named_modules())["features.denseblock2"]
    with GradCAM(model=m, target_layers=[stage]) as lib:
        ref = {c: lib(input_tensor=x, targets=[ClassifierOutputTarget(c)] * 2) for c in (0, 1, 2)}
    assert np.allclose(fine[0][0], ref[0][0], atol=1e-5) and np.allclose(fine[0][1], ref[2][0], atol=1e-5)
    assert np.allclose(fine[1][0], ref[1][1], atol=1e-5)
    assert not np.allclose(fine[0][0], pooled[0][0], atol=1e-3)  # a different layer, a different map
    # CAM stays on the pooled map (its linear head is exact only there)
    assert heatmaps(m, x, [0], "cam").shape == (2, 1, 128, 128)


def test_cam_errors_name_the_problem():
    x = torch.randn(1, 1, 64, 64)
    mlgcn = create_model("mlgcn", num_classes=2, image_size=64)
    with pytest.raises(CamError, match="CAM is undefined"):
        heatmaps(mlgcn, x, [0], "cam")
    maxpool = create_model("resnet50", num_classes=2, image_size=64, pool="max")
    with pytest.raises(CamError, match="'max' pooling"):
        heatmaps(maxpool, x, [0], "cam")
    d = create_model("efficientnet_b0", num_classes=2, image_size=64)
    with pytest.raises(CamError, match="unknown heatmap method"):
        heatmaps(d, x, [0], "lime")
    with pytest.raises(CamError, match="out of range"):
        heatmaps(d, x, [5], "gradcam")
    with pytest.raises(CamError, match="out of range"):
        heatmaps(d, x, [5], "cam")
    with pytest.raises(CamError, match="normalised"):
        heatmaps(d, torch.zeros(1, 1, 64, 64, dtype=torch.uint8), [0])
    with pytest.raises(CamError, match=r"\[B, 1, S, S\]"):
        heatmaps(d, torch.zeros(1, 64, 64), [0])
    assert METHODS == ("cam", "gradcam", "gradcam++")


# ---------------------------------------------------------------- the stage on the tiny cohort


@pytest.fixture(scope="module")
def tiny_run(tiny_processed, tiny_model, tmp_path_factory):
    """The shared processed tiny cohort and trained efficientnet_b0 (conftest), with this module's localize params."""
    root = tiny_workdir(tiny_processed, tmp_path_factory.mktemp("loc"))
    (root / "m").symlink_to(tiny_model)
    p = str(tiny_params(root / "params.yaml", localize={"gallery_size": 3, "heatmap_thresholds": [0.4, 0.6, 0.8]}))
    common = ["--images", str(root / "images"), "--table", str(root / "images.parquet"),
              "--labels", str(root / "labels.parquet"), "--splits", str(root / "splits.parquet")]
    return {"root": root, "params": p, "common": common, "boxes": tiny_processed["raw"] / "nih" / "BBox_List_2017.csv"}


def _run_stage(run, model_dir, out, *extra):
    from stages import localize as localize_stage

    return localize_stage.main(["--params", run["params"], "--model-dir", str(model_dir), *run["common"],
                                "--boxes", str(run["boxes"]), "--out-dir", str(out / "loc"),
                                "--metrics", str(out / "report.json"), *extra])


def test_localize_stage_scores_test_boxes_with_a_val_threshold(tiny_run, tmp_path):
    from cxr.sources.nih import read_boxes

    assert _run_stage(tiny_run, tiny_run["root"] / "m", tmp_path / "a") == 0
    res = json.loads((tmp_path / "a" / "loc" / "localization.json").read_text())
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert res["supported"] and res["kind"] == "heatmap" and res["method"] == "gradcam"
    assert {k: v for k, v in res.items() if k not in ("gallery", "label_names")} == rep
    splits = pd.read_parquet(tiny_run["root"] / "splits.parquet")
    boxes, _ = read_boxes(tiny_run["boxes"])
    test_ids = set(boxes["image_id"]) & set(splits.loc[splits["split"] == "test", "image_id"])
    val_ids = set(boxes["image_id"]) & set(splits.loc[splits["split"] == "val", "image_id"])
    assert res["test_images"] == len(test_ids) and res["val_images"] == len(val_ids)
    assert res["ground_truth"]["gt_images_per_split"]["test"] == len(test_ids)
    assert test_ids and val_ids  # the tiny cohort (seed 7) has GT boxes in both splits
    # chosen among the candidates on VAL; the search table says how each did
    assert set(res["threshold_search"]) == {"0.4", "0.6", "0.8"}
    assert res["heatmap_threshold"] in (0.4, 0.6, 0.8) and "validation" in res["threshold_rule"]
    micro = res["test"]["micro"]
    assert set(micro["iou"]) == {"0.1", "0.25", "0.5", "0.75"} == set(micro["iobb"])
    assert micro["n_boxes"] >= len(test_ids) and 0 <= micro["mean_iou"] <= 1 and 0 <= micro["mean_iobb"] <= 1
    assert all(micro["iou"][t] <= micro["iou"]["0.1"] for t in ("0.25", "0.5", "0.75"))
    with Image.open(tmp_path / "a" / "loc" / "gallery.png") as im:
        assert im.mode == "RGB" and im.width >= 256
    # deterministic: same inputs -> same bytes
    assert _run_stage(tiny_run, tiny_run["root"] / "m", tmp_path / "b") == 0
    for f in ("localization.json", "gallery.png"):
        assert (tmp_path / "a" / "loc" / f).read_bytes() == (tmp_path / "b" / "loc" / f).read_bytes()


def test_localize_oracle_heatmaps_score_near_one(tiny_run, monkeypatch):
    """Heatmaps that light up exactly the GT boxes (mapped into the input frame) must score ~1:
    this is what catches a coordinate bug anywhere between source, PNG and model input."""
    from cxr.localize import pipeline
    from cxr.params import load_section

    r = tiny_run["root"]
    images = pd.read_parquet(r / "images.parquet")
    splits = pd.read_parquet(r / "splits.parquet")
    card = json.loads((r / "m" / "card.json").read_text())
    gt, _ = pipeline.ground_truth(tiny_run["boxes"], images, splits, card["label_names"])
    size = card["input"]["size"]

    def oracle(model, pairs, label_names, pixels, **kw):
        geos = pipeline.geometries(images, sorted({p[0] for p in pairs}), size)
        out = {}
        for i, lab, g in pairs:
            h = np.zeros((size, size))
            for x1, y1, x2, y2 in np.round(geos[i].source_to_input(g)).astype(int):
                h[max(y1, 0):y2, max(x1, 0):x2] = 1
            out[(i, lab)] = h
        return out

    monkeypatch.setattr(pipeline, "pair_heatmaps", oracle)
    params = load_section("localize", tiny_run["params"]).model_copy(update={"max_boxes": 0})
    res, _ = pipeline.localize_model(r / "m", images=images, labels=pd.read_parquet(r / "labels.parquet"), splits=splits,
                                     images_dir=r / "images", bbox_csv=tiny_run["boxes"], params=params, seed=0)
    assert len(gt[gt["split"] == "test"]) and res["test"]["micro"]["n_boxes"] == len(gt[gt["split"] == "test"])
    assert res["test"]["micro"]["iou"]["0.5"] == 1.0 and res["test"]["micro"]["iobb"]["0.75"] == 1.0


def test_localize_stage_unsupported_model_and_errors(tiny_run, tmp_path, monkeypatch, caplog):
    from cxr.localize import pipeline

    # no GT box file: a clear "unsupported" JSON, not a crash
    rc = _run_stage({**tiny_run, "boxes": tmp_path / "none.csv"}, tiny_run["root"] / "m", tmp_path / "n")
    assert rc == 0
    res = json.loads((tmp_path / "n" / "loc" / "localization.json").read_text())
    assert res["supported"] is False and "BBox_List_2017" in res["reason"]
    # a model with neither heatmaps nor region outputs
    monkeypatch.setattr(pipeline, "supports_heatmaps", lambda m: False)
    assert _run_stage(tiny_run, tiny_run["root"] / "m", tmp_path / "u") == 0
    res = json.loads((tmp_path / "u" / "report.json").read_text())
    assert res["supported"] is False and "nothing to localise" in res["reason"]
    assert not (tmp_path / "u" / "loc" / "gallery.png").exists()
    monkeypatch.undo()
    # not a model dir
    assert _run_stage(tiny_run, tmp_path, tmp_path / "e") == 1 and "not a model dir" in caplog.text


def test_region_model_localises_per_region(tiny_run, tmp_path):
    """AnaXNet on a features folder aligned with the tiny cohort: region AUROC + top-region pointing."""
    from cxr.params import TrainParams
    from cxr.train import train_model
    from cxr.labels import label_names
    from cxr.localize.pipeline import localize_model
    from cxr.params import load_section

    r = tiny_run["root"]
    images, labels, splits = (pd.read_parquet(r / f) for f in ("images.parquet", "labels.parquet", "splits.parquet"))
    ok = images[images["status"] == "ok"].sort_values("image_id")
    n, regions, findings = len(ok), 18, ["lung opacity", "pleural effusion", "atelectasis"]
    rng = np.random.default_rng(0)
    fdir = tmp_path / "features"
    fdir.mkdir()
    rl = (rng.random((n, regions, len(findings))) < 0.3).astype(np.float32)
    feats = rng.normal(size=(n, regions, 8)).astype(np.float16)
    feats[..., 0] += rl[..., 0] * 2
    pres = rng.random((n, regions)) > 0.1
    feats[~pres] = np.nan
    w, h = ok["out_cols"].to_numpy(float)[:, None], ok["out_rows"].to_numpy(float)[:, None]
    x1, y1 = rng.random((n, regions)) * w / 2, rng.random((n, regions)) * h / 2
    boxes = np.stack([x1, y1, x1 + w / 2, y1 + h / 2], axis=-1).astype(np.float32)  # PNG pixels
    for name, arr in (("features", feats), ("mask", pres), ("boxes", boxes), ("labels", rl)):
        np.save(fdir / f"{name}.npy", arr)
    pd.DataFrame({"row": range(n), "image_id": ok["image_id"].to_numpy()}).to_parquet(fdir / "index.parquet")
    (fdir / "meta.json").write_text(json.dumps({"regions": [f"region{k}" for k in range(regions)], "findings": findings}))
    train_model("anaxnet", images=images, labels=labels, splits=splits, images_dir=r / "images",
                names=label_names("chexpert14"), uncertainty={}, params=TrainParams(epochs=1, batch_size=8, graph={"hidden": 16}),
                seed=0, out_dir=tmp_path / "ax", log_dir=None, cache_dir=tmp_path / "c", features_dir=fdir, progress=False)
    params = load_section("localize", tiny_run["params"])
    res, png = localize_model(tmp_path / "ax", images=images, labels=labels, splits=splits, images_dir=r / "images",
                              bbox_csv=tiny_run["boxes"], params=params, seed=0, features_dir=fdir)
    assert res["supported"] and res["kind"] == "region" and res["findings"] == findings
    per = res["region_auroc"]["per_finding"]
    assert set(per) == set(findings) and all(v["auroc"] is None or 0 <= v["auroc"] <= 1 for v in per.values())
    pt = res["pointing"]
    assert set(pt["scores"]["per_class"]) <= set(findings)
    assert all(v in {f"region{k}" for k in range(regions)} | {None} for v in pt["top_regions"].values())
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LocalizeError, match="needs --features"):
        localize_model(tmp_path / "ax", images=images, labels=labels, splits=splits, images_dir=r / "images",
                       bbox_csv=tiny_run["boxes"], params=params, seed=0, features_dir=None)


def test_localize_params_are_validated(repo_root):
    from cxr.params import ParamsError, load_section, parse_section

    p = load_section("localize", repo_root / "params.yaml")
    assert p.method in METHODS and p.thresholds == [0.1, 0.25, 0.5, 0.75]
    for raw, needle in (({"method": "lime"}, "localize.method"), ({"heatmap_thresholds": [0, 0.5]}, "(0, 1]"),
                        ({"thresholds": [0.5, 0.5]}, "distinct"), ({"gallery": 3}, "unknown key localize.gallery")):
        with pytest.raises(ParamsError, match=re.escape(needle)):
            parse_section("localize", raw)


# ---------------------------------------------------------------- baselines without a finding model


def test_prior_box_is_the_mean_relative_train_box_placed_on_each_test_image():
    from cxr.localize.baselines import prior_box_predictions

    # two images of different sizes and scales; the train boxes of class A are the same relative box
    # (the left upper quarter), so the prior box on a third image is its own left upper quarter
    geos = {"a": Geometry(0.5, 0, 0, 100, 100, 64), "b": Geometry(1.0, 0, 0, 50, 80, 64),
            "c": Geometry(0.25, 10, 0, 120, 60, 64)}
    gt = pd.DataFrame([
        {"image_id": "a", "split": "train", "label": "A", "x1": 0, "y1": 0, "x2": 100, "y2": 100},   # png 0..50
        {"image_id": "b", "split": "train", "label": "A", "x1": 0, "y1": 0, "x2": 25, "y2": 40},
        {"image_id": "a", "split": "train", "label": "B", "x1": 100, "y1": 100, "x2": 200, "y2": 200},
    ])
    test = [("c", "A", np.array([[-40, 0, 200, 120]])), ("c", "C", np.array([[0, 0, 1, 1]]))]
    preds, rule = prior_box_predictions(gt, test, ["A", "C"], lambda ids: {i: geos[i] for i in ids})
    # c: png = src * 0.25 + (10, 0); its left upper quarter in png is (0, 0, 60, 30) -> source (-40, 0, 200, 120)
    np.testing.assert_allclose(preds[("c", "A")], [[-40, 0, 200, 120]])
    # C has no train box: the mean of all three train boxes (relative (1/3*0.5, ..)) and the rule says so
    assert "no train box for C" in rule and "A: 2" in rule
    s = score_boxes([(lab, g, preds[(i, lab)]) for i, lab, g in test], ["A", "C"], [0.5])
    assert s["per_class"]["A"]["iou"]["0.5"] == 1.0


def test_localize_stage_reports_baselines_on_the_same_test_boxes(tiny_run, tmp_path):
    from cxr.anatomy.unet import train_unet
    from cxr.params import UnetParams
    from cxr.sources.masks import find_masks

    r = tiny_run["root"]
    fast = dict(image_size=64, epochs=1, max_steps=1, batch_size=4, encoder_depth=3, decoder_channels=[16, 8, 4])
    raw = Path(tiny_run["boxes"]).parents[1]
    train_unet(pd.read_parquet(r / "images.parquet"), pd.read_parquet(r / "splits.parquet"), r / "images",
               find_masks(raw), tmp_path / "unet", UnetParams(**fast), seed=1, progress=False)
    assert _run_stage(tiny_run, r / "m", tmp_path / "a", "--unet", str(tmp_path / "unet")) == 0
    res = json.loads((tmp_path / "a" / "loc" / "localization.json").read_text())
    micro = res["test"]["micro"]
    prior, lung = res["baselines"]["prior_box"], res["baselines"]["lung_box"]
    for b in (prior, lung):
        assert b["test"]["micro"]["n_boxes"] == micro["n_boxes"] and b["test"]["micro"]["n_pairs"] == micro["n_pairs"]
        assert set(b["test"]["micro"]["iobb"]) == set(micro["iobb"])
        assert 0 <= b["test"]["micro"]["mean_iou"] <= 1
    assert "train-split GT boxes" in prior["rule"] and "UNet" in lung["rule"]
    # one box per (image, class) pair at most, so its false positives per pair are at most 1
    assert all(0 <= v <= 1 for v in prior["test"]["micro"]["afp"]["iou"].values())
    # without a UNet the lung box is not applicable, said so; the prior box is still there
    assert _run_stage(tiny_run, r / "m", tmp_path / "b") == 0
    res = json.loads((tmp_path / "b" / "loc" / "localization.json").read_text())
    assert "not_applicable" in res["baselines"]["lung_box"] and res["baselines"]["prior_box"]["test"]
