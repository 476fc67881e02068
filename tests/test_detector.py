"""Faster R-CNN region detector: one training step on the tiny cohort, model dir round trip, COCOeval."""

from __future__ import annotations

import json

import pytest
import torch

from cxr.anatomy.common import AnatomyError, WEIGHTS
from cxr.anatomy.detector import (
    BACKBONES,
    CocoImages,
    build_detector,
    coco_metrics,
    evaluate_detector,
    load_detector,
    train_detector,
)
from cxr.errors import ModelDirError
from cxr.params import DetectorParams, ParamsError, parse_section
from stages import detector as detector_stage

FAST = dict(image_size=128, epochs=1, max_steps=1, batch_size=2, rpn_pre_nms_top_n_test=50,
            rpn_post_nms_top_n_test=20, box_batch_size_per_image=32, rpn_batch_size_per_image=32)


@pytest.fixture(scope="module")
def trained(anatomy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "model"
    params = DetectorParams(**FAST)
    model, card = train_detector(anatomy_data["coco"], anatomy_data["image_dir"], out, params, seed=3,
                                 progress=False)
    return out, model, card


def test_one_step_writes_a_model_dir_that_reloads(trained, anatomy_data):
    out, model, card = trained
    assert card["regions"][0] == "right lung" and len(card["regions"]) == 18
    assert card["classes"][0] == "__background__" and card["input"]["size"] == 128
    assert card["normalisation"]["mean"] == [0.5] and card["params"]["backbone"] == "tiny_fpn"
    state = torch.load(out / WEIGHTS, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again, card2 = load_detector(out)
    assert card2 == card
    x = [torch.rand(1, 128, 128, generator=torch.Generator().manual_seed(0))]
    with torch.inference_mode():
        a, b = model.eval()(x)[0], again(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_every_parameter_trains_and_is_finite(anatomy_data):
    torch.manual_seed(0)
    model = build_detector(18, DetectorParams(**FAST)).train()
    data = CocoImages(anatomy_data["coco"] / "train.json", anatomy_data["image_dir"], 128, progress=False)
    imgs, tgts = zip(*[data[i] for i in range(2)])
    losses = model(list(imgs), [{"boxes": t["boxes"], "labels": t["labels"]} for t in tgts])
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert next(model.backbone.body.parameters()).shape[1] == 1  # grayscale input


def test_evaluation_reports_coco_metrics(trained, anatomy_data):
    _, model, _ = trained
    m = evaluate_detector(model, anatomy_data["coco"], anatomy_data["image_dir"], 128, splits=("test",),
                          progress=False)["test"]
    assert 0.0 <= m["AP50"] <= 1.0 and 0.0 <= m["mAP"] <= m["AP50"] + 1e-9
    assert set(m["baseline_prior_box"]) == {"mAP", "AP50", "AP75"}  # scored by the same COCOeval, same split
    assert set(m["per_region"]) <= set(json.loads((anatomy_data["coco"] / "test.json").read_text())["info"]["regions"])


def test_perfect_detections_score_one(anatomy_data):
    gt = json.loads((anatomy_data["coco"] / "val.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    m = coco_metrics(anatomy_data["coco"] / "val.json", results)
    assert m["AP50"] == pytest.approx(1.0) and m["mAP"] == pytest.approx(1.0)
    assert all(v["AP50"] == pytest.approx(1.0) for v in m["per_region"].values())


def test_prior_box_baseline_is_the_mean_train_box(anatomy_data, tmp_path):
    from cxr.anatomy.detector import prior_box_results

    coco = anatomy_data["coco"]
    res = prior_box_results(coco / "train.json", coco / "test.json")
    test = json.loads((coco / "test.json").read_text())
    cats = {a["category_id"] for a in json.loads((coco / "train.json").read_text())["annotations"]}
    assert len(res) == len(test["images"]) * len(cats) and all(r["score"] == 1.0 for r in res)
    m = coco_metrics(coco / "test.json", res)
    assert 0.0 <= m["AP50"] <= 1.0
    # a train set holding one image, evaluated on itself: its own boxes are the prior, AP50 = 1
    one = json.loads((coco / "train.json").read_text())
    first = one["images"][0]["id"]
    one["images"] = one["images"][:1]
    one["annotations"] = [a for a in one["annotations"] if a["image_id"] == first]
    (tmp_path / "one.json").write_text(json.dumps(one))
    m = coco_metrics(tmp_path / "one.json", prior_box_results(tmp_path / "one.json", tmp_path / "one.json"))
    assert m["AP50"] == pytest.approx(1.0)


def test_backbones_build_on_grayscale(anatomy_data):
    for name in BACKBONES:
        if name == "resnet50_fpn":
            continue  # slow to build on CPU; same code path as resnet18_fpn
        anchors = {} if name == "tiny_fpn" else {"anchor_sizes": [32, 64, 128]}  # the default lists tiny_fpn's 4 levels
        model = build_detector(3, DetectorParams(**{**FAST, "backbone": name, **anchors})).eval()
        with torch.inference_mode():
            out = model([torch.rand(1, 128, 128)])
        assert set(out[0]) == {"boxes", "labels", "scores"}


def test_anchor_sizes_per_level_and_roi_sampling_reach_the_network():
    """A list per FPN level gives each level its own sizes (the flat list gives every level all of them),
    and roi_sampling_ratio is the box head's RoIAlign sampling; both change what the network computes."""
    flat = build_detector(3, DetectorParams(**{**FAST, "anchor_sizes": [16, 32, 64, 128, 256], "roi_sampling_ratio": 2}))
    assert flat.rpn.anchor_generator.sizes == ((16, 32, 64, 128, 256),) * 4
    assert flat.roi_heads.box_roi_pool.sampling_ratio == 2
    per = build_detector(3, DetectorParams(**{**FAST, "anchor_sizes": [[16, 32], [48, 64], [96, 128], [192, 256]],
                                              "roi_sampling_ratio": 1}))
    assert per.rpn.anchor_generator.sizes == ((16, 32), (48, 64), (96, 128), (192, 256))
    assert per.rpn.anchor_generator.num_anchors_per_location() == [6, 6, 6, 6]
    assert per.roi_heads.box_roi_pool.sampling_ratio == 1
    images = [torch.rand(1, 128, 128)]
    feats = per.backbone(per.transform(images)[0].tensors)
    grids = [list(f.shape[-2:]) for f in feats.values()]
    anchors = per.rpn.anchor_generator(per.transform(images)[0], list(feats.values()))
    assert anchors[0].shape[0] == sum(6 * h * w for h, w in grids)  # 6 per location, not 15
    with pytest.raises(AnatomyError, match="3 levels but the backbone has 4"):
        build_detector(3, DetectorParams(**{**FAST, "anchor_sizes": [[16], [32], [64]]}))
    with pytest.raises(ParamsError, match="same number of anchor sizes"):
        parse_section("detector", {"anchor_sizes": [[16, 32], [64], [128], [256]]})
    with pytest.raises(ParamsError, match="increasing on each level"):
        parse_section("detector", {"anchor_sizes": [[32, 16], [64, 96], [128, 160], [256, 320]]})


def test_errors_name_the_value(anatomy_data, tmp_path):
    with pytest.raises(ParamsError, match="detector.backbone"):
        parse_section("detector", {"backbone": "yolo"})
    with pytest.raises(ParamsError, match="detector.anchor_sizes"):
        parse_section("detector", {"anchor_sizes": [64, 32]})
    with pytest.raises(AnatomyError, match="never downloaded"):
        build_detector(18, DetectorParams(**FAST), pretrained=str(tmp_path / "none.pth"))
    with pytest.raises(ModelDirError, match="not a model dir"):
        load_detector(tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text("detector: {epochs: 0}\n")
    assert detector_stage.main(["--params", str(params), "--coco", ".", "--images", ".", "--out", str(tmp_path),
                                "--metrics", str(tmp_path / "m.json")]) == 2


def test_stage_trains_and_writes_metrics(anatomy_data, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("detector: " + json.dumps(FAST) + "\n")
    rc = detector_stage.main(["--params", str(params), "--coco", str(anatomy_data["coco"]),
                              "--images", str(anatomy_data["image_dir"]), "--out", str(tmp_path / "model"),
                              "--live", str(tmp_path / "live"), "--metrics", str(tmp_path / "metrics.json")])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val", "test", "train_seconds"} <= set(m) and "AP50" in m["test"]
    assert (tmp_path / "live" / "metrics.json").is_file()
