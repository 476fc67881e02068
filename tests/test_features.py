"""Region features: the [N, R, D] contract, row alignment of features / labels / boxes, gt vs pred boxes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.anatomy.common import AnatomyError, fit_size, read_gray, resize_float
from cxr.anatomy.detector import load_detector, train_detector
from cxr.anatomy.features import ARRAYS, _region_features, extract_features, load_features
from cxr.params import DetectorParams, ParamsError, parse_section
from stages import features as features_stage

FAST = dict(image_size=128, epochs=1, max_steps=1, batch_size=2, rpn_pre_nms_top_n_test=50,
            rpn_post_nms_top_n_test=20, box_batch_size_per_image=32, rpn_batch_size_per_image=32)


@pytest.fixture(scope="module")
def detector_dir(anatomy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("feat") / "detector"
    train_detector(anatomy_data["coco"], anatomy_data["image_dir"], out, DetectorParams(**FAST), seed=5,
                   progress=False)
    return out


def _extract(d, detector_dir, out, boxes="gt", images=None, **kw):
    return extract_features(detector_dir, d["coco"], images if images is not None else pd.read_parquet(d["images"]),
                            pd.read_parquet(d["splits"]), d["image_dir"], out, boxes=boxes, progress=False, **kw)


def test_gt_features_labels_and_boxes_stay_aligned_row_by_row(anatomy_data, detector_dir, tmp_path):
    d = anatomy_data
    # shuffled input rows must not change the output order (rows sorted by image_id)
    images = pd.read_parquet(d["images"]).sample(frac=1.0, random_state=1)
    meta = _extract(d, detector_dir, tmp_path / "f", boxes="gt", images=images, batch_size=3)
    arrays, index, meta2 = load_features(tmp_path / "f")
    assert meta == meta2 and meta["box_source"] == "gt" and meta["dim"] == 1024
    n, r = len(index), len(meta["regions"])
    assert arrays["features"].dtype == np.float16 and arrays["features"].shape == (n, r, 1024)
    assert arrays["mask"].shape == (n, r) and arrays["boxes"].shape == (n, r, 4)
    assert arrays["labels"].shape == (n, r, len(meta["findings"]))
    assert list(index["row"]) == list(range(n)) and index["image_id"].is_monotonic_increasing
    assert set(index["view"]) <= {"PA", "AP"}
    # every scene-graph image: boxes and labels equal its COCO annotations, in region order
    cocos = {s: json.loads((d["coco"] / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    checked = 0
    for split, coco in cocos.items():
        for img in coco["images"]:
            i = int(index.index[index["image_id"] == img["name"]][0])
            assert index.at[i, "split"] == split and index.at[i, "has_scene_graph"]
            for a in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
                k = a["category_id"] - 1
                x, y, w, h = a["bbox"]
                assert arrays["mask"][i, k]
                np.testing.assert_allclose(arrays["boxes"][i, k], [x, y, x + w, y + h], atol=0.02)
                assert list(arrays["labels"][i, k]) == a["attributes"]
            checked += 1
    assert checked == int(index["has_scene_graph"].sum()) > 0
    # no scene graph -> no gt region, NaN labels; missing regions are NaN, never zero-filled
    no_graph = ~index["has_scene_graph"].to_numpy()
    assert not arrays["mask"][no_graph].any() and np.isnan(arrays["labels"][no_graph]).all()
    assert np.isnan(arrays["features"][~arrays["mask"]].astype(np.float32)).all()
    assert np.isfinite(arrays["features"][arrays["mask"]].astype(np.float32)).all()
    # the features of one row are that image's own features, recomputed alone
    i = int(np.flatnonzero(index["has_scene_graph"])[-1])
    model, card = load_detector(detector_dir)
    img = read_gray(d["image_dir"] / index.at[i, "png_path"])
    h, w, s = fit_size(*img.shape, card["input"]["size"])
    x = torch.from_numpy(resize_float(img, h, w)).unsqueeze(0)
    feat, m, _, _ = _region_features(model, [x], [torch.from_numpy(arrays["boxes"][i] * s)], r, 0.05)[0]
    assert (m == arrays["mask"][i]).all()
    np.testing.assert_allclose(feat[m].astype(np.float16).astype(np.float32),
                               arrays["features"][i][m].astype(np.float32), rtol=1e-2, atol=1e-2)


def test_pred_boxes_mark_missing_regions_in_the_mask(anatomy_data, detector_dir, tmp_path):
    meta = _extract(anatomy_data, detector_dir, tmp_path / "p", boxes="pred", score_thresh=0.0)
    arrays, index, _ = load_features(tmp_path / "p")
    assert meta["box_source"] == "pred"
    m = arrays["mask"]
    assert (m == ~np.isnan(arrays["scores"])).all()
    assert (index["regions_found"].to_numpy() == m.sum(1)).all()
    assert meta["images_missing_regions"] == int((m.sum(1) < m.shape[1]).sum())
    assert np.isnan(arrays["boxes"][~m]).all() and np.isfinite(arrays["boxes"][m]).all()
    assert np.isnan(arrays["features"][~m].astype(np.float32)).all()
    # a deterministic stage: same inputs, same bytes
    _extract(anatomy_data, detector_dir, tmp_path / "p2", boxes="pred", score_thresh=0.0)
    for name in ARRAYS:
        assert (tmp_path / "p" / f"{name}.npy").read_bytes() == (tmp_path / "p2" / f"{name}.npy").read_bytes()


def test_errors_name_the_value(anatomy_data, detector_dir, tmp_path):
    with pytest.raises(AnatomyError, match="features.boxes"):
        _extract(anatomy_data, detector_dir, tmp_path / "x", boxes="both")
    with pytest.raises(AnatomyError, match="no converted image"):
        _extract(anatomy_data, detector_dir, tmp_path / "x", views=["OBLIQUE"])
    with pytest.raises(AnatomyError, match="incomplete features folder"):
        load_features(tmp_path)
    with pytest.raises(ParamsError, match="features.boxes"):
        parse_section("features", {"boxes": "oracle"})


def test_stage_writes_the_folder_and_summary(anatomy_data, detector_dir, tmp_path):
    d = anatomy_data
    params = tmp_path / "params.yaml"
    params.write_text("features: {boxes: gt, extractor: detector}\n")
    rc = features_stage.main(["--params", str(params), "--model", str(detector_dir), "--coco", str(d["coco"]),
                              "--images", str(d["images"]), "--image-dir", str(d["image_dir"]),
                              "--splits", str(d["splits"]), "--out", str(tmp_path / "f"),
                              "--metrics", str(tmp_path / "features.json")])
    assert rc == 0
    assert json.loads((tmp_path / "features.json").read_text())["box_source"] == "gt"
    load_features(tmp_path / "f")
    assert json.loads((tmp_path / "features.json").read_text())["extractor"]["kind"] == "detector"


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    """An untrained resnet18 classifier model dir at 64 px: what the backbone stage writes."""
    from cxr.intensity import NORMALISATION
    from cxr.modeldir import save_model_dir
    from cxr.models.zoo import create_model

    torch.manual_seed(3)
    kw = {"num_classes": 2, "image_size": 64}
    model = create_model("resnet18", **kw).eval()
    out = tmp_path_factory.mktemp("bb") / "backbone"
    save_model_dir(out, model, {"architecture": "resnet18", "model_kwargs": kw, "label_names": ["A", "B"],
                                "input": {"kind": "image", "size": 64, "channels": 1, "normalisation": dict(NORMALISATION)}})
    return out


def test_backbone_features_are_the_classifier_map_pooled_in_each_box(anatomy_data, detector_dir, backbone_dir,
                                                                     tmp_path):
    """features.extractor = a classifier: its feature map, roi-aligned in each region box mapped onto its square
    input the way the localisation code maps boxes (cxr.localize.boxes.Geometry)."""
    from torchvision.ops import roi_align

    from cxr.data import load_png_square, normalise
    from cxr.inference import load_model_dir
    from cxr.localize.boxes import Geometry

    d = anatomy_data
    meta = _extract(d, detector_dir, tmp_path / "f", boxes="gt", backbone_dir=backbone_dir)
    arrays, index, _ = load_features(tmp_path / "f")
    model, card = load_model_dir(backbone_dir)
    stage16 = next(m for n, m, stride in model.cam_stages() if stride == 16)  # resnet18's layer3
    dim = model.features.num_features + 256  # features.levels 2: the final map (512) + the stride-16 stage (256)
    assert meta["extractor"]["kind"] == "backbone" and meta["extractor"]["architecture"] == "resnet18"
    assert meta["extractor"]["levels"] == 2 and meta["extractor"]["maps"] == ["final", "layer3"]
    assert meta["dim"] == dim and arrays["features"].shape == (len(index), len(meta["regions"]), dim)
    m = arrays["mask"]
    assert np.isnan(arrays["features"][~m].astype(np.float32)).all()
    assert np.isfinite(arrays["features"][m].astype(np.float32)).all()
    # the same regions and boxes as the detector's own features: only the description of each box changed
    ref = _extract(d, detector_dir, tmp_path / "h", boxes="gt")
    head, _, _ = load_features(tmp_path / "h")
    assert (head["mask"] == m).all() and np.array_equal(head["boxes"], arrays["boxes"], equal_nan=True)
    assert ref["extractor"]["kind"] == "detector" and ref["dim"] == 1024
    # one row recomputed by hand
    images = pd.read_parquet(d["images"]).set_index("image_id")
    i = int(np.flatnonzero(m.any(1))[-1])
    row = images.loc[index.at[i, "image_id"]]
    geo = Geometry.from_row({"image_id": index.at[i, "image_id"], **row.to_dict()}, 64)
    x = np.array(load_png_square(d["image_dir"] / index.at[i, "png_path"], 64))
    grabbed = []
    hook = stage16.register_forward_hook(lambda mod, inp, out: grabbed.append(out))
    with torch.inference_mode():
        fmap = model.features(normalise(torch.from_numpy(x)[None, None]))
        b = torch.from_numpy(geo.png_to_input(arrays["boxes"][i][m[i]])).float()
        want = torch.cat([roi_align(f, [b], output_size=2, spatial_scale=f.shape[-1] / 64, sampling_ratio=2,
                                    aligned=True).mean((2, 3)) for f in (fmap, grabbed[0])], 1)
    hook.remove()
    assert grabbed[0].shape[-1] == 2 * fmap.shape[-1]  # the finer map has twice the cells per side
    np.testing.assert_allclose(arrays["features"][i][m[i]].astype(np.float32), want.numpy(), rtol=1e-2, atol=1e-2)
    # levels 1: the final map alone, the first 512 columns of the same features
    _extract(d, detector_dir, tmp_path / "one", boxes="gt", backbone_dir=backbone_dir, levels=1)
    one, _, meta1 = load_features(tmp_path / "one")
    assert meta1["dim"] == 512 and meta1["extractor"]["maps"] == ["final"]
    np.testing.assert_array_equal(one["features"][m], arrays["features"][m][:, :512])
    with pytest.raises(AnatomyError, match="features.levels = 7"):
        _extract(d, detector_dir, tmp_path / "five", boxes="gt", backbone_dir=backbone_dir, levels=7)


def test_stage_needs_the_backbone_it_is_told_to_use(anatomy_data, detector_dir, backbone_dir, tmp_path, caplog):
    from cxr.applicability import marker
    from cxr.io import write_json

    d = anatomy_data
    params = tmp_path / "params.yaml"
    params.write_text("features: {boxes: gt, extractor: resnet18}\n")
    args = ["--params", str(params), "--model", str(detector_dir), "--coco", str(d["coco"]), "--images",
            str(d["images"]), "--image-dir", str(d["image_dir"]), "--splits", str(d["splits"]),
            "--out", str(tmp_path / "f"), "--metrics", str(tmp_path / "features.json")]
    write_json(tmp_path / "marker" / "marker.json", marker("features.extractor is 'detector'"))
    for bad in ([], ["--backbone", str(tmp_path / "marker")]):
        caplog.clear()
        assert features_stage.main([*args, *bad]) == 1
        assert "features.extractor = 'resnet18'" in caplog.text and "backbone stage" in caplog.text
    assert not (tmp_path / "f").exists()
    caplog.clear()  # a backbone of another architecture than features.extractor names
    (tmp_path / "p2.yaml").write_text("features: {boxes: gt, extractor: densenet121}\n")
    assert features_stage.main(["--params", str(tmp_path / "p2.yaml"), *args[2:], "--backbone", str(backbone_dir)]) == 1
    assert "holds 'resnet18'" in caplog.text and not (tmp_path / "f").exists()
    assert features_stage.main([*args, "--backbone", str(backbone_dir)]) == 0
    assert json.loads((tmp_path / "features.json").read_text())["extractor"]["architecture"] == "resnet18"
    # extractor: detector keeps the box head even when a backbone dir is passed
    (tmp_path / "p3.yaml").write_text("features: {boxes: gt, extractor: detector}\n")
    assert features_stage.main(["--params", str(tmp_path / "p3.yaml"), *args[2:], "--backbone", str(backbone_dir)]) == 0
    assert json.loads((tmp_path / "features.json").read_text())["extractor"]["kind"] == "detector"
