"""The real-data path on real radiographs: JSRT + SCR organ masks (the UNet, ``cxr segment``) and NIH
ChestX-ray14 thumbnails (the classifiers), from ../shared/realdata through the pipeline's own stages.

A subset keeps the suite fast: 48 JSRT images (both nodule classes) and the NIH images of 60
patients, laid out in a temp folder exactly as in the shared folder (the native layouts), then
ingest (local, ``ingest.local.folders``) -> convert -> label -> split -> unet, in process.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.anatomy.masks import dice_iou, read_mask
from cxr.sources import jsrt
from cxr.sources.masks import find_masks

STRUCTURES = ["right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle"]


@pytest.fixture(scope="module")
def real_subset(realdata, tmp_path_factory) -> Path:
    """A copy of part of ../shared/realdata in its native layouts (never written to the shared folder)."""
    root = tmp_path_factory.mktemp("realsrc")
    names = sorted(p.stem for p in (realdata / "jsrt" / "images").glob("*.png"))
    pick = [n for n in names if n.startswith("JPCLN")][:30] + [n for n in names if n.startswith("JPCNN")][:18]
    for n in pick:
        dst = root / "jsrt" / "images" / f"{n}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(realdata / "jsrt" / "images" / f"{n}.png", dst)
        for s in STRUCTURES:
            m = root / "jsrt" / "masks" / s / f"{n}.gif"
            m.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(realdata / "jsrt" / "masks" / s / f"{n}.gif", m)
    entry = pd.read_csv(realdata / "nih1000" / "Data_Entry_2017_v2020.csv", dtype=str, keep_default_na=False)
    patients = sorted(entry["Patient ID"].unique(), key=int)[:60]
    entry = entry[entry["Patient ID"].isin(patients)]
    (root / "nih1000" / "images").mkdir(parents=True)
    entry.to_csv(root / "nih1000" / "Data_Entry_2017_v2020.csv", index=False)
    for name in entry["Image Index"]:
        shutil.copyfile(realdata / "nih1000" / "images" / name, root / "nih1000" / "images" / name)
    (root / "unrelated").mkdir()  # not selected by ingest.local.folders: must not reach data/raw
    (root / "unrelated" / "x.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def real_run(real_subset, tmp_path_factory) -> dict:
    """ingest -> convert -> label -> split -> unet on the subset (UNet small and short: a CI-sized run)."""
    from stages import convert, ingest, label, split, unet

    root = tmp_path_factory.mktemp("realrun")
    params = root / "params.yaml"
    params.write_text(json.dumps({
        "base": {"label_space": "chestxray14"},
        "ingest": {"source": str(real_subset), "local": {"folders": {"jsrt": "jsrt", "nih": "nih1000"}, "mode": "copy"}},
        "convert": {"size": 256, "upscale": False, "workers": 1},
        "label": {"vocabulary": "chestxray14", "precedence": ["nih", "jsrt"], "uncertainty": {"blank": "ignore"}},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "unet": {"image_size": 128, "epochs": 30, "batch_size": 4, "lr": 0.003,
                 "decoder_channels": [64, 32, 16, 8]},
    }), encoding="utf-8")
    d = {"root": root, "params": params, "raw": root / "raw", "image_dir": root / "images",
         "images": root / "images.parquet", "labels": root / "labels.parquet", "splits": root / "splits.parquet",
         "unet": root / "unet", "unet_metrics": root / "unet.json"}
    p = ["--params", str(params)]
    assert ingest.main([*p, "--out", str(d["raw"])]) == 0
    assert convert.main([*p, "--raw", str(d["raw"]), "--images", str(d["image_dir"]), "--table", str(d["images"])]) == 0
    assert label.main([*p, "--raw", str(d["raw"]), "--out", str(d["labels"]), "--metrics", str(root / "label.json")]) == 0
    assert split.main([*p, "--images", str(d["images"]), "--labels", str(d["labels"]), "--raw", str(d["raw"]),
                       "--out", str(d["splits"]), "--metrics", str(root / "split.json")]) == 0
    assert unet.main([*p, "--images", str(d["images"]), "--image-dir", str(d["image_dir"]), "--splits", str(d["splits"]),
                      "--raw", str(d["raw"]), "--out", str(d["unet"]), "--metrics", str(d["unet_metrics"])]) == 0
    return d


def test_jsrt_adapter_reads_the_native_layout(realdata):
    t = jsrt.read_folder(realdata / "jsrt")
    assert len(t.images) == 158 and t.issues == []
    assert (t.images["view"] == "PA").all() and t.images["patient_id"].is_unique
    lab = t.labels.set_index("image_id")["Nodule"]
    assert lab["JPCLN003"] == 1.0 and lab[lab.index.str.startswith("JPCNN")].eq(0.0).all()
    assert int(lab.sum()) == sum(n.startswith("JPCLN") for n in lab.index)
    masks = find_masks(realdata)  # the shared folder's top level holds jsrt/ beside other datasets
    assert len(masks) == 158 * 5 and set(masks["structure"]) == set(STRUCTURES)
    assert jsrt.nodule_flag("JPCNN010.png") == 0.0 and jsrt.nodule_flag("scan.png") is None


def test_ingest_mirrors_only_the_selected_folders_renamed(real_run, real_subset):
    raw = real_run["raw"]
    assert sorted(p.name for p in raw.iterdir() if p.is_dir()) == ["jsrt", "nih"]
    assert (raw / "nih" / "Data_Entry_2017_v2020.csv").is_file()
    assert not (raw / "unrelated").exists()
    manifest = json.loads((raw / "ingest-manifest.json").read_text())
    assert all(f["path"].split("/")[0] in ("jsrt", "nih") for f in manifest["files"])
    from cxr.ingest.local import LocalIngestError, mirror
    from cxr.params import ParamsError, parse_section

    with pytest.raises(ParamsError, match="ingest.local.folders"):
        parse_section("ingest", {"local": {"folders": {"nih": "../etc"}}})
    with pytest.raises(LocalIngestError, match="not a directory"):
        mirror(real_subset, real_run["root"] / "other", folders={"nih": "missing"})


def test_thumbnails_keep_their_size_and_jsrt_is_downsampled(real_run):
    images = pd.read_parquet(real_run["images"])
    assert (images["status"] == "ok").all()
    nih, js = images[images["dataset"] == "nih"], images[images["dataset"] == "jsrt"]
    assert len(nih) > 100 and len(js) == 48
    # 64-px RGB thumbnails: read, made grey, never upsampled (convert.upscale: false)
    assert (nih[["rows", "cols", "out_rows", "out_cols"]] == 64).all().all() and (nih["scale"] == 1.0).all()
    assert (js[["out_rows", "out_cols"]] == 256).all().all() and (js["rows"] == 1024).all()
    with Image.open(real_run["image_dir"] / nih.iloc[0]["png_path"]) as im:
        assert im.mode == "L" and im.size == (64, 64)
    labels = pd.read_parquet(real_run["labels"]).set_index("image_id")
    assert (labels.loc[js["image_id"], "label_source"] == "jsrt").all()
    # JSRT annotates only the nodule flag: every other label stays unknown (never an invented 0)
    assert labels.loc[js["image_id"], "Effusion"].isna().all()
    assert set(labels.loc[js["image_id"], "Nodule"].unique()) == {0.0, 1.0}
    splits = pd.read_parquet(real_run["splits"])
    assert splits.groupby("patient_id")["split"].nunique().max() == 1


def test_nih_boxes_skip_images_off_the_1024_grid(real_run):
    from cxr.sources.nih import boxes_on_grid

    images = pd.read_parquet(real_run["images"])
    nih_id = images.loc[images["dataset"] == "nih", "image_id"].iloc[0]
    js_id = images.loc[images["dataset"] == "jsrt", "image_id"].iloc[0]
    boxes = pd.DataFrame({"image_id": [nih_id, js_id], "label": ["Mass", "Nodule"], "x": [1.0, 1.0], "y": [1.0, 1.0],
                          "w": [5.0, 5.0], "h": [5.0, 5.0]})
    kept, skipped = boxes_on_grid(boxes, images)
    assert skipped == 1 and list(kept["image_id"]) == [js_id]  # a 64-px thumbnail cannot carry a 1024-px box
    big = images.copy()
    big.loc[big["image_id"] == nih_id, ["rows", "cols"]] = 1024
    assert boxes_on_grid(boxes, big)[1] == 0


def test_unet_on_real_jsrt_masks_segments_unseen_images(real_run):
    m = json.loads(real_run["unet_metrics"].read_text())
    assert m["images"]["train"] >= 25 and m["images"]["val"] >= 5 and m["images"]["test"] >= 5
    dice = {s: v["dice"] for s, v in m["val"]["per_structure"].items()}
    # a short CI-sized run (128 px, 30 epochs, ~30 images): far from the full run, far above chance
    assert dice["right_lung"] > 0.85 and dice["left_lung"] > 0.85 and dice["heart"] > 0.75, dice
    card = json.loads((real_run["unet"] / "card.json").read_text())
    assert card["convert"]["size"] == 256 and card["convert"]["upscale"] is False
    assert card["data"]["datasets"] == ["jsrt"]
    assert card["precision"] in ("32-true", "bf16-mixed")


def test_segment_writes_masks_in_the_input_grid(real_run, realdata, tmp_path, caplog):
    from cxr import cli

    splits = pd.read_parquet(real_run["splits"])
    images = pd.read_parquet(real_run["images"]).merge(splits[["image_id", "split"]], on="image_id")
    test_ids = sorted(images.loc[(images["dataset"] == "jsrt") & (images["split"] == "test"), "image_id"])[:2]
    files = [realdata / "jsrt" / "images" / f"{i}.png" for i in test_ids]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "seg"
    rc = cli.main(["segment", *map(str, files), str(bad), "--model", str(real_run["unet"]), "-o", str(out)])
    assert rc == 1  # one unreadable input: reported, the others still segmented
    summary = json.loads((out / "summary.json").read_text())
    assert str(bad) in summary["failed"] and len(summary["ok"]) == 2
    for iid, f in zip(test_ids, files):
        rec = json.loads((out / f"{iid}.json").read_text())
        assert (rec["rows"], rec["cols"]) == (1024, 1024)
        lung = read_mask(out / iid / "right_lung.png")
        assert lung.shape == (1024, 1024)  # the input's own grid: overlays the original
        truth = read_mask(realdata / "jsrt" / "masks" / "right_lung" / f"{iid}.gif")
        assert dice_iou(lung, truth)[0] > 0.8
        assert rec["structures"]["heart"]["area_px"] > 0 and rec["structures"]["heart"]["area_mm2"] is None
        assert 0.3 < rec["cardiothoracic_ratio"] < 0.75
        with Image.open(out / f"{iid}_overlay.png") as im:
            assert im.mode == "RGB"
    # decoding settings come from the card; --params that decode differently are named in a warning
    other = tmp_path / "params.yaml"
    other.write_text("convert: {size: 128, upscale: false}\n")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["segment", str(files[0]), "--model", str(real_run["unet"]), "-o", str(tmp_path / "s2"),
                         "--params", str(other)]) == 0
    assert "size: 256 -> 128" in caplog.text


def test_segment_refuses_a_model_dir_that_is_not_a_unet(tmp_path, real_run, realdata, caplog):
    from cxr import cli

    fake = tmp_path / "notunet"
    fake.mkdir()
    shutil.copyfile(real_run["unet"] / "model.pt", fake / "model.pt")
    (fake / "card.json").write_text(json.dumps({"architecture": "densenet121"}))
    img = str(realdata / "jsrt" / "images" / "JPCLN003.png")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["segment", img, "--model", str(fake), "-o", str(tmp_path / "o")]) == 2
    assert "not an organ UNet" in caplog.text
    assert cli.main(["segment", img, "--model", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == 2


def test_cardiothoracic_ratio_is_the_ratio_of_column_spans():
    from cxr.segment import cardiothoracic_ratio, to_source_grid

    z = np.zeros((10, 20), bool)
    rl, ll, heart = z.copy(), z.copy(), z.copy()
    rl[2:8, 2:8] = True
    ll[2:8, 12:18] = True  # thorax: columns 2..17 = 16 px
    heart[5:9, 7:15] = True  # heart: columns 7..14 = 8 px
    ratio, d = cardiothoracic_ratio({"right_lung": rl, "left_lung": ll, "heart": heart})
    assert ratio == 0.5 and d == {"heart_width_px": 8, "thorax_width_px": 16}
    assert cardiothoracic_ratio({"heart": heart})[0] is None
    # geometry inverse of convert: a 40x20 source padded into a 20x20 PNG at scale 0.5, offset x 5
    png = np.zeros((20, 20), np.float32)
    png[:, 5:15] = 1.0
    src = to_source_grid(png, {"scale": 0.5, "offset_x": 5, "offset_y": 0}, 40, 20)
    assert src.shape == (40, 20) and src.min() > 0.99


def test_frozen_unet_sees_its_training_scale():
    import torch

    from cxr.models.segfusion import FrozenUNet

    seen = []

    class Net(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    f = FrozenUNet(Net(), unit_range=True, input_size=64)
    out = f(torch.zeros(3, 1, 32, 32))
    assert seen == [(64, 64)] and out.shape == (3, 2, 32, 32)  # fed at 64, masks back at the input's 32
    FrozenUNet(Net(), unit_range=True)(torch.zeros(1, 1, 32, 32))
    assert seen[-1] == (32, 32)


def test_anatomy_branch_says_not_applicable_without_scene_graphs(real_run, tmp_path):
    from cxr.applicability import reason_of
    from stages import coco, detector, features

    d, p = real_run, ["--params", str(real_run["params"])]
    assert coco.main([*p, "--scene-graphs", str(d["raw"] / "chest-imagenome"), "--images", str(d["images"]),
                      "--splits", str(d["splits"]), "--out", str(tmp_path / "coco"),
                      "--metrics", str(tmp_path / "coco.json")]) == 0
    assert "scene graphs" in reason_of(tmp_path / "coco.json")
    for s in ("train", "val", "test"):
        c = json.loads((tmp_path / "coco" / f"{s}.json").read_text())
        assert c["images"] == [] and reason_of(c)
    assert detector.main([*p, "--coco", str(tmp_path / "coco"), "--images", str(d["image_dir"]),
                          "--out", str(tmp_path / "det"), "--live", str(tmp_path / "live"),
                          "--metrics", str(tmp_path / "det.json")]) == 0
    assert reason_of(tmp_path / "det") == reason_of(tmp_path / "det.json") == reason_of(tmp_path / "coco.json")
    assert features.main([*p, "--model", str(tmp_path / "det"), "--coco", str(tmp_path / "coco"),
                          "--images", str(d["images"]), "--image-dir", str(d["image_dir"]), "--splits", str(d["splits"]),
                          "--out", str(tmp_path / "feat"), "--metrics", str(tmp_path / "feat.json")]) == 0
    assert reason_of(tmp_path / "feat.json") and reason_of(tmp_path / "feat")


def test_train_datasets_selects_images_and_names_unknown_ones(real_run):
    from cxr.data import DataError, join_split

    images, labels = pd.read_parquet(real_run["images"]), pd.read_parquet(real_run["labels"])
    splits = pd.read_parquet(real_run["splits"])
    nih = join_split(images, labels, splits, ["Effusion", "Nodule"], "train", datasets=["nih"])
    both = join_split(images, labels, splits, ["Effusion", "Nodule"], "train")
    ds = images.set_index("image_id")["dataset"]
    assert set(ds[nih["image_id"]]) == {"nih"} and set(ds[both["image_id"]]) == {"nih", "jsrt"}
    with pytest.raises(DataError, match="mimic"):
        join_split(images, labels, splits, ["Effusion"], "train", datasets=["mimic"])


def test_exp_run_passes_every_key_of_the_real_params_file(repo_root, capsys, tmp_path):
    from cxr import cli
    from cxr.params import ParamsError, override_args

    assert cli.main(["exp-run", "--dry-run", str(repo_root / "params-real.yaml"), "-S", "ingest.source=/data/x"]) == 0
    args = capsys.readouterr().out.splitlines()
    pairs = dict(a.removeprefix("++").split("=", 1) for a in args if "=" in a)
    assert args[:2] == ["exp", "run"] and pairs["ingest.source"] == "/data/x"
    assert pairs["ingest.local.folders"] == "{jsrt: jsrt, nih: nih1000}"
    assert pairs["train.models"] == "[densenet121, segfusion_van_gcn]" and pairs["base.label_space"] == "chestxray14"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochz: 3}\n")
    with pytest.raises(ParamsError, match="train.epochz"):
        override_args(bad)
