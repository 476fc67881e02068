"""``cxr predict`` on the real DICOM / PNG / JPEG samples with a tiny model trained here.

The probabilities are those of a 1-epoch model trained on a tiny synthetic cohort: they mean
nothing clinically. What is checked: the inputs reach the model exactly as the pipeline would
have fed them, the output files and keys, determinism, the error paths, ``--similar``, and the
anatomy path (region detector -> region features -> AnaXNet) with untrained weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_params, tiny_workdir
from cxr.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
KEYS = {"input", "model", "label_names", "probabilities", "thresholds", "threshold_rule", "positive", "image"}


def _real_inputs(realdata: Path) -> list[Path]:
    """DICOM (JPEG baseline MONOCHROME2 and MONOCHROME1, JPEG 2000 MONOCHROME1), PNG and JPEG samples."""
    return [realdata / "siim" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
            realdata / "siim" / "Fake_MONOHR1.dcm", realdata / "cr" / "RG1_J2KI.dcm",
            realdata / "rsna" / "dicom" / "00c0b293-48e7-4e16-ac76-9269ba535a62.dcm",
            realdata / "nih" / "00000001_000.png", realdata / "lungmasks" / "1.jpg"]


@pytest.fixture(scope="module")
def tiny(tiny_processed, tiny_model, tmp_path_factory):
    """The shared processed tiny cohort and trained efficientnet_b0 (conftest), with this module's params."""
    root = tiny_workdir(tiny_processed, tmp_path_factory.mktemp("predict"))
    p = tiny_params(root / "params.yaml", features={"score_thresh": 0.0})
    # a copy whose thresholds make exactly one class positive, so the heatmap path always runs
    card = json.loads((tiny_model / "card.json").read_text())
    names = card["label_names"]
    card["thresholds"] = {n: (0.0 if n == names[2] else 1.01) for n in names}
    shutil.copytree(tiny_model, root / "m2")
    (root / "m2" / "card.json").write_text(json.dumps(card))
    return {"root": root, "params": p, "model": tiny_model, "model2": root / "m2", "raw": tiny_processed["raw"],
            "names": names}


def _predict(tiny, paths, out, *extra, model=None) -> int:
    return cli_main(["predict", *map(str, paths), "--model", str(model or tiny["model2"]), "--out", str(out),
                     "--params", str(tiny["params"]), "--device", "cpu", *extra])


def test_predict_real_files_writes_json_and_heatmaps(tiny, realdata, tmp_path):
    files = _real_inputs(realdata)
    assert _predict(tiny, files, tmp_path / "a") == 0
    names = tiny["names"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["failed"] == {} and len(summary["ok"]) == len(files)
    for f in files:
        rec = json.loads((tmp_path / "a" / f"{f.stem}.json").read_text())
        assert KEYS <= set(rec) and rec["input"] == str(f) and rec["label_names"] == names
        assert set(rec["probabilities"]) == set(names) and all(0 <= v <= 1 for v in rec["probabilities"].values())
        assert rec["positive"] == [names[2]]  # threshold 0 -> positive, 1.01 -> never
        assert rec["image"]["model_input_size"] == 64 and max(rec["image"]["converted"]["rows"],
                                                              rec["image"]["converted"]["cols"]) == 128
        assert rec["heatmap_method"] == "gradcam" and rec["model"]["data_source"]["kind"] == "synthetic"
        # the positive class has either a figure or a reason why not, never both
        assert set(rec["heatmaps"]) | set(rec["skipped_heatmaps"]) == {names[2]}
        assert not set(rec["heatmaps"]) & set(rec["skipped_heatmaps"])
        rows, cols = rec["image"]["converted"]["rows"], rec["image"]["converted"]["cols"]
        for cls, name in rec["heatmaps"].items():
            with Image.open(tmp_path / "a" / name) as im:
                assert im.mode == "RGB" and im.width == cols and im.height > rows  # overlay + caption + colour bar
                rgb = np.asarray(im).astype(int)
            assert not (rgb[:rows, :, 0] == rgb[:rows, :, 2]).all()  # a written map shows colour on the image
    # the two SIIM files differ only in the MONOCHROME1 tag: the reader inverts one of them
    a, b = (json.loads((tmp_path / "a" / f"{f.stem}.json").read_text()) for f in files[:2])
    assert a["image"]["photometric"] == "MONOCHROME2" and b["image"]["photometric"] == "MONOCHROME1"
    assert a["probabilities"] != b["probabilities"]


def test_heatmap_overlay_follows_the_pad_and_resize_of_the_model_input():
    from cxr.predict import overlay_heatmap

    png = np.full((20, 40), 128, np.uint8)  # wide image: the model input pads 10 rows above and below
    heat = np.zeros((8, 8), np.float32)
    heat[:4] = 1.0  # top half of the padded square = rows 0..9 of the image
    out = overlay_heatmap(png, heat).astype(int)
    assert out.shape == (20, 40, 3)
    assert (out[:6, :, 0] != out[:6, :, 2]).all()  # hot: coloured
    assert (out[14:] == 128).all()  # cold: the radiograph unchanged


def test_model_input_is_what_convert_and_the_training_cache_make(tiny, realdata, tmp_path):
    """Predictor.prepare == convert stage PNG -> ImageCache loader, pixel for pixel, on real files."""
    from cxr.convert import convert
    from cxr.data import load_png_square
    from cxr.params import load_section
    from cxr.predict import Predictor

    raw = tmp_path / "raw"
    raw.mkdir()
    files = _real_inputs(realdata)
    for f in files:
        (raw / f.name).symlink_to(f)
    params = load_section("convert", tiny["params"])
    convert(raw, tmp_path / "images", tmp_path / "images.parquet", params)
    table = pd.read_parquet(tmp_path / "images.parquet").set_index("source_path")
    pred = Predictor(tiny["model"], convert=params, device="cpu")
    for f in files:
        prep = pred.prepare(f)
        png = tmp_path / "images" / table.loc[f.name, "png_path"]
        with Image.open(png) as im:
            assert np.array_equal(prep.png, np.asarray(im)), f
        assert np.array_equal(prep.model_input, load_png_square(png, 64)), f
        assert prep.geo["scale"] == pytest.approx(table.loc[f.name, "scale"])


def test_predict_is_deterministic(tiny, realdata, tmp_path):
    files = _real_inputs(realdata)[3:4]
    assert _predict(tiny, files, tmp_path / "a") == 0
    assert _predict(tiny, files, tmp_path / "b") == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    rec = json.loads((tmp_path / "a" / f"{files[0].stem}.json").read_text())
    assert len(rec["heatmaps"]) + len(rec["skipped_heatmaps"]) == 1  # the one positive class: a figure or a reason
    assert written == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(written) == 2 + len(rec["heatmaps"])
    for name in written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_bad_files_are_reported_and_the_others_processed(tiny, realdata, tmp_path, caplog):
    good = realdata / "nih" / "00000001_000.png"
    dcm = realdata / "siim" / "Fake_MONOHR1.dcm"
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(dcm.read_bytes()[:3000])  # header intact, pixel data cut
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"this is not a DICOM file" * 40)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bad = [truncated, garbage, text, fake_png, tmp_path / "missing.dcm"]
    rc = _predict(tiny, [bad[0], good, *bad[1:]], tmp_path / "out", "--no-heatmaps")
    assert rc == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["ok"]) == [str(good)] and set(summary["failed"]) == {str(p) for p in bad}
    assert (tmp_path / "out" / "00000001_000.json").is_file()
    for p in bad:
        assert summary["failed"][str(p)].startswith(f"{p}: ")  # every message names its file
        assert str(p) in caplog.text
        assert not (tmp_path / "out" / f"{p.stem}.json").exists()
    assert "unknown image type '.txt'" in summary["failed"][str(text)]


def test_model_dir_errors(tiny, realdata, tmp_path, caplog):
    img = realdata / "nih" / "00000001_000.png"
    no_card = tmp_path / "no_card"
    shutil.copytree(tiny["model"], no_card)
    (no_card / "card.json").unlink()
    assert _predict(tiny, [img], tmp_path / "o", model=no_card) == 2
    assert f"{no_card}: no model card card.json" in caplog.text
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny["model"], no_weights)
    (no_weights / "model.pt").unlink()
    assert _predict(tiny, [img], tmp_path / "o", model=no_weights) == 2
    assert "no weights model.pt" in caplog.text
    assert _predict(tiny, [img], tmp_path / "o", model=tmp_path / "nowhere") == 2
    assert "does not exist" in caplog.text
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny["model"], wrong)
    card = json.loads((wrong / "card.json").read_text())
    card["model_kwargs"]["num_classes"] = 3
    (wrong / "card.json").write_text(json.dumps(card))
    assert _predict(tiny, [img], tmp_path / "o", model=wrong) == 2
    assert "cannot rebuild the model" in caplog.text
    with pytest.raises(SystemExit):  # argparse choices
        _predict(tiny, [img], tmp_path / "o", "--method", "nope")
    from cxr.predict import PredictError, run

    with pytest.raises(PredictError, match="choose one of"):  # the library entry point checks it too
        run([img], tiny["model"], tmp_path / "o", method="nope")
    assert _predict(tiny, [img], tmp_path / "o", "--similar", "2", "--index", str(tmp_path / "noindex")) == 2
    assert "retrieval index" in caplog.text


def test_similar_queries_a_small_index(tiny, tmp_path):
    """Index the tiny cohort's cached images; a raw cohort file, predicted from scratch, embeds exactly like
    its cached image did, and its hits are the index's answer for that vector."""
    from cxr.data import load_png_square
    from cxr.params import load_section
    from cxr.predict import Predictor
    from cxr.retrieve import SearchIndex, embed
    from cxr.train import load_model_dir

    r = tiny["root"]
    images = pd.read_parquet(r / "images.parquet")
    images = images[images["status"] == "ok"].sort_values("image_id").head(12).reset_index(drop=True)
    labels = pd.read_parquet(r / "labels.parquet").set_index("image_id")
    model, card = load_model_dir(tiny["model"])
    batch = np.stack([load_png_square(r / "images" / p, 64) for p in images["png_path"]])
    vectors = embed(model, {"image": torch.from_numpy(batch).unsqueeze(1)}, norm=card["input"]["normalisation"]).numpy()
    names = tiny["names"]
    items = images[["image_id", "patient_id", "png_path"]].assign(split="train")
    items = items.join(labels[names], on="image_id")
    index = SearchIndex.build(vectors, items, label_names=names)
    index.save(tmp_path / "index")

    target = images.iloc[5]
    src = tiny["raw"] / target["source_path"]
    pred = Predictor(tiny["model"], convert=load_section("convert", tiny["params"]), device="cpu")
    q = embed(pred.model, pred.raw_inputs(pred.prepare(src)), norm=card["input"]["normalisation"]).numpy()
    # the same pixels (convert stage decoding + the cache's resize); only batch-size float noise may differ
    assert np.allclose(q[0], vectors[5], atol=1e-5)
    expected = index.results(q, 3)  # (the tiny model's embeddings are nearly parallel: ranks hinge on float noise)
    assert _predict(tiny, [src], tmp_path / "o", "--similar", "3", "--index", str(tmp_path / "index"),
                    "--images", str(r / "images"), "--no-heatmaps", model=tiny["model"]) == 0
    rec = json.loads((tmp_path / "o" / f"{src.stem}.json").read_text())
    hits = rec["similar"]
    # the contact sheet: query + 3 thumbnails (one row of 4 tiles), all found
    assert rec["similar_metric"] == "cosine similarity" and "similar_missing_thumbnails" not in rec
    assert [h["png_path"] for h in hits] == list(expected["png_path"])
    from cxr.predict import TILE

    with Image.open(tmp_path / "o" / rec["similar_sheet"]) as im:
        sheet = np.asarray(im)
    assert sheet.shape[1] == 4 * TILE + 3 * 4 and sheet.shape[0] > TILE
    for i in range(4):
        tile = sheet[:TILE, i * (TILE + 4):i * (TILE + 4) + TILE]
        assert tile.std() > 5, i  # an image, not the "image not found" placeholder
    # no PNG folder for the thumbnails: the neighbours are still listed; a folder without them: placeholders
    assert _predict(tiny, [src], tmp_path / "o2", "--similar", "3", "--index", str(tmp_path / "index"),
                    "--images", str(tmp_path / "nowhere"), "--no-heatmaps", model=tiny["model"]) == 0
    rec2 = json.loads((tmp_path / "o2" / f"{src.stem}.json").read_text())
    assert rec2["similar_sheet"] is None and rec2["similar"] == hits
    (tmp_path / "empty").mkdir()
    assert _predict(tiny, [src], tmp_path / "o3", "--similar", "3", "--index", str(tmp_path / "index"),
                    "--images", str(tmp_path / "empty"), "--no-heatmaps", model=tiny["model"]) == 0
    rec3 = json.loads((tmp_path / "o3" / f"{src.stem}.json").read_text())
    assert rec3["similar_missing_thumbnails"] == 3
    with Image.open(tmp_path / "o3" / rec3["similar_sheet"]) as im:
        sheet = np.asarray(im)
    assert sheet[:TILE, TILE + 4:2 * TILE + 4].std() < sheet[:TILE, :TILE].std()  # placeholder vs the query
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert [h["image_id"] for h in hits] == list(expected["image_id"])
    assert [h["patient_id"] for h in hits] == list(expected["patient_id"])
    assert [h["score"] for h in hits] == pytest.approx(list(expected["score"]), abs=1e-6)
    assert hits[0]["score"] == pytest.approx(float(np.max(vectors @ q[0])), abs=1e-6)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert set(hits[0]["labels"]) == set(names) and all(v in (None, -1.0, 0.0, 1.0) for v in hits[0]["labels"].values())


def test_anatomy_model_needs_a_detector_and_runs_with_one(tiny, realdata, tmp_path, caplog):
    """AnaXNet on region features of an (untrained) tiny detector: regions in the JSON + an overlay."""
    from cxr.anatomy.detector import ARCHITECTURE, build_detector
    from cxr.models.zoo import create_model
    from cxr.modeldir import save_model_dir
    from cxr.params import DetectorParams

    regions = ["right lung", "left lung", "cardiac silhouette"]
    findings = ["lung opacity", "pleural effusion"]
    dp = DetectorParams(backbone="tiny_fpn", image_size=64)
    torch.manual_seed(0)
    det = build_detector(len(regions), dp)
    save_model_dir(tmp_path / "detector", det, {"architecture": ARCHITECTURE, "backbone": "tiny_fpn", "regions": regions,
                                                "findings": findings, "input": {"size": 64}, "params": dp.model_dump()})
    dim = det.roi_heads.box_head.fc7.out_features
    names = tiny["names"][:2]
    adj = np.eye(len(regions), dtype=np.float32)
    kw = {"num_classes": 2, "num_regions": len(regions), "feature_dim": dim, "num_findings": len(findings), "hidden": 16}
    ax = create_model("anaxnet", **kw, adjacency=adj)
    card = {"architecture": "anaxnet", "model_kwargs": {**kw, "adjacency": adj.tolist()}, "label_names": names,
            "input": {"kind": "region_features", "num_regions": len(regions), "feature_dim": dim},
            "thresholds": {names[0]: 0.0, names[1]: 1.01}}
    save_model_dir(tmp_path / "models" / "anaxnet", ax, card)

    img = realdata / "siim" / "Fake_MONOHR1.dcm"
    assert _predict(tiny, [img], tmp_path / "o", model=tmp_path / "models" / "anaxnet") == 2
    assert "anatomy model and needs region features" in caplog.text and "--detector" in caplog.text

    assert _predict(tiny, [img], tmp_path / "o", "--detector", str(tmp_path / "detector"),
                    model=tmp_path / "models" / "anaxnet") == 0
    rec = json.loads((tmp_path / "o" / "Fake_MONOHR1.json").read_text())
    assert rec["positive"] == [names[0]] and "heatmaps" not in rec
    assert list(rec["regions"]) == sorted(regions)  # JSON keys are sorted
    present = [r for r in rec["regions"].values() if r["present"]]
    assert present, "score_thresh 0 keeps every region the detector proposes"
    for r in present:
        assert set(r["findings"]) == set(findings) and len(r["box_png"]) == 4 and len(r["box_original"]) == 4
        x1, y1, x2, y2 = r["box_original"]
        assert 0 <= x1 <= x2 <= 1024 and 0 <= y1 <= y2 <= 1024  # original DICOM pixels (1024 x 1024)
    assert (tmp_path / "o" / rec["region_overlay"]).is_file()


def test_model_card_carries_the_convert_settings(tiny, realdata, tmp_path, monkeypatch, caplog):
    """A model dir decodes new files as its training images were decoded, without any params.yaml."""
    import logging

    card = json.loads((tiny["model"] / "card.json").read_text())
    assert card["convert"]["size"] == 128 and set(card["convert"]) >= {"side", "square", "bits", "voi", "upscale"}
    assert card["train"]["precision"] in ("32-true", "bf16-mixed")  # what the model was trained in
    monkeypatch.chdir(tmp_path)  # no ./params.yaml here
    f = realdata / "nih" / "00000001_000.png"
    assert cli_main(["predict", str(f), "--model", str(tiny["model"]), "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--no-heatmaps"]) == 0
    rec = json.loads((tmp_path / "o" / f"{f.stem}.json").read_text())
    assert max(rec["image"]["converted"]["rows"], rec["image"]["converted"]["cols"]) == 128  # the card's, not 512
    other = tmp_path / "p.yaml"
    other.write_text("convert: {size: 96}\n")
    with caplog.at_level(logging.WARNING):
        assert cli_main(["predict", str(f), "--model", str(tiny["model"]), "--out", str(tmp_path / "o2"),
                         "--device", "cpu", "--no-heatmaps", "--params", str(other)]) == 0
    assert "size: 128 -> 96" in caplog.text
    rec = json.loads((tmp_path / "o2" / f"{f.stem}.json").read_text())
    assert max(rec["image"]["converted"]["rows"], rec["image"]["converted"]["cols"]) == 96


def _card_dir(tmp_path: Path, **changes) -> Path:
    """A model dir with a well-formed image-model card (plus ``changes``) and placeholder weights."""
    card = {"architecture": "densenet121", "model_kwargs": {"num_classes": 2}, "label_names": ["A", "B"],
            "input": {"kind": "image", "size": 64, "channels": 1, "dtype": "uint8",
                      "normalisation": {"scale": 255.0, "mean": 0.5, "std": 0.25}},
            "thresholds": {"A": 0.5, "B": None}, "threshold_rule": "Youden J on the validation split"}
    card.update(changes)
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "card.json").write_text(json.dumps(card))
    (d / "model.pt").write_bytes(b"not read by read_model_card")
    return d


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"input": "notadict"}, r"field input = 'notadict'"),
        ({"input": {"kind": "image", "size": True}}, r"field input\.size = True: Input should be a valid integer"),
        ({"input": {"kind": "image", "size": "64"}}, r"field input\.size = '64'"),
        ({"input": {"kind": "image", "size": 64, "normalisation": {"scale": 255, "mean": 0.5, "std": 0}}},
         r"field input\.normalisation\.std = 0: Input should be greater than 0"),
        ({"input": {"kind": "region_features", "num_regions": 18}}, r"field input\.feature_dim = .*Field required"),
        ({"input": {"kind": "voxels"}}, r"input kind 'voxels' is not supported"),
        ({"label_names": "A,B"}, r"field label_names = 'A,B': Input should be a valid list"),
        ({"thresholds": {"A": "high"}}, r"field thresholds\.A = 'high'"),
        ({"model_kwargs": []}, r"field model_kwargs = \[\]"),
        ({"architecture": 7}, r"field architecture = 7"),
    ],
)
def test_model_card_is_validated_and_errors_name_the_field(tmp_path, changes, match):
    """Before: a wrong-typed field ("input": "notadict") crashed cxr predict with an AttributeError."""
    from cxr.predict import PredictError, read_model_card

    with pytest.raises(PredictError, match=r"card\.json: .*" + match):
        read_model_card(_card_dir(tmp_path, **changes))


def test_model_card_keeps_unknown_fields_for_forward_compatibility(tmp_path):
    from cxr.predict import read_model_card

    card = read_model_card(_card_dir(tmp_path, convert={"size": 512, "voi": "window"}, future_field=[1, 2]))
    assert card["convert"] == {"size": 512, "voi": "window"} and card["future_field"] == [1, 2]
    assert card["input"]["size"] == 64


def test_predict_cli_reports_a_bad_card_without_a_traceback(tmp_path, realdata, caplog):
    d = _card_dir(tmp_path, input="notadict")
    rc = cli_main(["predict", str(realdata / "nih" / "00000001_000.png"), "--model", str(d), "--out",
                   str(tmp_path / "o"), "--params", str(REPO / "params.yaml"), "--device", "cpu"])
    assert rc == 2 and "field input = 'notadict'" in caplog.text and "Traceback" not in caplog.text


def test_heatmap_figure_is_the_overlay_with_caption_and_colour_bar():
    from cxr.predict import _colormap, heatmap_caption, heatmap_figure, overlay_heatmap

    png = np.full((60, 80), 100, np.uint8)
    heat = np.zeros((16, 16), np.float32)
    heat[4:8, 4:8] = 1.0
    fig = heatmap_figure(png, heat, label="Edema", probability=0.73, threshold=0.412,
                         rule="Youden J on the validation split", method="gradcam", note="synthetic!")
    assert fig.shape[1] == 80 and fig.shape[0] > 60
    assert np.array_equal(fig[:60], overlay_heatmap(png, heat))  # the overlay itself is untouched
    below = fig[60:].reshape(-1, 3)
    for v in (0.0, 1.0):  # the colour bar spans the overlay's colour map
        c = _colormap(np.array([v]))[0]
        assert (np.abs(below.astype(int) - c).sum(1) <= 3).any(), v
    assert (below.min(1) > 150).any()  # caption text (anti-aliased, so not always pure white)
    lines = heatmap_caption("Edema", 0.73, 0.412, "Youden J on the validation split", "gradcam", "synthetic!")
    assert lines[0] == "Edema: p = 0.730 >= threshold 0.412 (Youden J on the validation split)"
    assert "relative to this map's maximum" in lines[1] and lines[2] == "synthetic!"
    assert heatmap_caption("A", 0.2, None, "r", "cam")[0] == "A: p = 0.200, no validation threshold"
    assert heatmap_caption("A", 0.2, 0.3, "r", "cam")[0].startswith("A: p = 0.200 < threshold 0.300")


@pytest.mark.parametrize("heat, problem", [
    (np.zeros((4, 4)), "all_zero"),
    (np.full((4, 4), np.nan), "non_finite"),
    (np.array([[0.5, np.inf], [0, 0]]), "non_finite"),
    (np.full((4, 4), 0.5), "constant"),
    (np.array([[0.0, 0.2], [1.0, 0.0]]), None),
])
def test_heatmap_problem(heat, problem):
    from cxr.predict import heatmap_problem

    assert heatmap_problem(heat) == problem


def test_empty_heatmaps_are_skipped_and_counted(tiny, realdata, tmp_path, monkeypatch, caplog):
    """Four positive classes whose maps are fine / all zero / NaN / constant: one figure, three reasons."""
    import logging

    from cxr.predict import Predictor

    names = tiny["names"]
    d = tmp_path / "m4"
    shutil.copytree(tiny["model"], d)
    card = json.loads((d / "card.json").read_text())
    card["thresholds"] = {n: (0.0 if n in names[:4] else 1.01) for n in names}
    (d / "card.json").write_text(json.dumps(card))
    good = np.zeros((64, 64), np.float32)
    good[10:30, 20:40] = 1.0
    maps = {names[0]: good, names[1]: np.zeros((64, 64), np.float32),
            names[2]: np.full((64, 64), np.nan, np.float32), names[3]: np.full((64, 64), 0.3, np.float32)}
    monkeypatch.setattr(Predictor, "_heatmaps", lambda self, image, classes: {c: maps[c] for c in classes})
    f = realdata / "nih" / "00000001_000.png"
    with caplog.at_level(logging.WARNING):
        assert _predict(tiny, [f], tmp_path / "o", model=d) == 0
    rec = json.loads((tmp_path / "o" / f"{f.stem}.json").read_text())
    assert rec["positive"] == names[:4]
    assert list(rec["heatmaps"]) == [names[0]]
    assert rec["skipped_heatmaps"] == {names[1]: "all_zero", names[2]: "non_finite", names[3]: "constant"}
    written = sorted(p.name for p in (tmp_path / "o").glob("*.heatmap.*.png"))
    assert written == [rec["heatmaps"][names[0]]]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["heatmaps"] == {"written": 1, "skipped": {"all_zero": 1, "constant": 1, "non_finite": 1}}
    assert f"no heatmap written for {names[1]} (all zero" in caplog.text
    assert "heatmaps: 1 written, 3 skipped" in caplog.text


def test_console_says_when_the_model_was_trained_on_synthetic_data(tiny, realdata, tmp_path, caplog):
    import logging

    f = realdata / "nih" / "00000001_000.png"
    card = json.loads((tiny["model"] / "card.json").read_text())
    assert card["data_source"] == {"kind": "synthetic", "source": "synthetic://default"}  # the train stage wrote it
    with caplog.at_level(logging.WARNING):
        assert _predict(tiny, [f], tmp_path / "o", "--no-heatmaps", model=tiny["model"]) == 0
    assert "trained on synthetic data (synthetic://default)" in caplog.text
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["data_source"]["kind"] == "synthetic"
    for source, expect in (({"kind": "local"}, None), (None, "does not record its training data")):
        d = tmp_path / f"m-{source and source['kind']}"
        shutil.copytree(tiny["model"], d)
        c = dict(card)
        if source is None:
            c.pop("data_source")
        else:
            c["data_source"] = source
        (d / "card.json").write_text(json.dumps(c))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert _predict(tiny, [f], tmp_path / "o", "--no-heatmaps", model=d) == 0
        assert "trained on synthetic data" not in caplog.text
        assert (expect is None) or expect in caplog.text


def test_heatmap_methods_are_the_cam_modules():
    from cxr.localize.cam import METHODS
    from cxr.predict import HEATMAP_METHODS

    assert tuple(METHODS) == tuple(HEATMAP_METHODS)


def test_similar_sheet_tiles_and_captions(tmp_path):
    """Query + 2 neighbours (one PNG present, one missing); a 44-character UID wraps inside its tile."""
    from cxr.predict import TILE, _font, _wrap, similar_sheet

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8)).save(tmp_path / "a.png")
    uid = "1.2.276.0.7230010.3.1.4.8323329.6904.151787"
    hits = [{"rank": 1, "image_id": uid, "patient_id": "p1", "split": "train", "score": 0.93, "png_path": "a.png"},
            {"rank": 2, "image_id": "b", "patient_id": "p2", "split": None, "score": 0.5, "png_path": "gone.png"}]
    sheet, missing = similar_sheet(rng.integers(0, 255, (64, 64), dtype=np.uint8), "q.dcm", hits, tmp_path,
                                   "cosine similarity", note="synthetic")
    assert missing == 1 and sheet.shape[1] == 3 * TILE + 2 * 4 and sheet.shape[0] > TILE
    tiles = [sheet[:TILE, i * (TILE + 4):i * (TILE + 4) + TILE].astype(int) for i in range(3)]
    assert tiles[0].std() > 20 and tiles[1].std() > 20  # query and the found neighbour: images
    assert (tiles[2] == 40).mean() > 0.9  # the missing one: the placeholder
    lines = _wrap(f"image {uid}", _font(11), TILE - 6)
    assert "".join(lines).replace(" ", "") == f"image{uid}" and len(lines) > 1


def test_predict_reads_converted_images_from_shards_as_from_files(tiny, tmp_path):
    """``cxr predict`` on ``<shard folder>/<png_path>`` (convert.storage: shards) and on the shard folder
    itself reads each member by its index: the same records as for the PNG files."""
    from cxr.shards import write_shards

    table = pd.read_parquet(tiny["root"] / "images.parquet")
    pngs = sorted(table.loc[table["status"] == "ok", "png_path"])[:3]
    images = tiny["root"] / "images"
    write_shards([images / p for p in pngs], tmp_path / "shards", per_shard=2, root=images)
    assert _predict(tiny, [images / p for p in pngs], tmp_path / "files") == 0
    assert _predict(tiny, [tmp_path / "shards" / p for p in pngs], tmp_path / "members") == 0
    assert _predict(tiny, [tmp_path / "shards"], tmp_path / "folder") == 0
    for p in pngs:
        stem = Path(p).stem
        a, b, c = (json.loads((tmp_path / d / f"{stem}.json").read_text()) for d in ("files", "members", "folder"))
        assert b["input"] == c["input"] == str(tmp_path / "shards" / p)
        a.pop("input"), b.pop("input"), c.pop("input")
        assert a == b == c
    assert _predict(tiny, [tmp_path / "shards" / "nope" / "x.png"], tmp_path / "bad") == 1


def test_anatomy_model_on_backbone_features_needs_that_backbone(tiny, realdata, tmp_path, caplog):
    """A region model trained on a classifier's map pooled in the boxes (features.extractor) recomputes them with
    that very classifier: a missing or different backbone is refused, naming --backbone."""
    from cxr.anatomy.detector import ARCHITECTURE, build_detector
    from cxr.intensity import NORMALISATION
    from cxr.io import sha256_file
    from cxr.models.zoo import create_model
    from cxr.modeldir import save_model_dir
    from cxr.params import DetectorParams

    regions, findings = ["right lung", "left lung"], ["lung opacity"]
    dp = DetectorParams(backbone="tiny_fpn", image_size=64)
    torch.manual_seed(0)
    save_model_dir(tmp_path / "models" / "detector", build_detector(len(regions), dp),
                   {"architecture": ARCHITECTURE, "backbone": "tiny_fpn", "regions": regions, "findings": findings,
                    "input": {"size": 64}, "params": dp.model_dump()})
    bkw = {"num_classes": 2, "image_size": 64}
    bcard = {"architecture": "resnet18", "model_kwargs": bkw, "label_names": ["A", "B"],
             "input": {"kind": "image", "size": 64, "channels": 1, "normalisation": dict(NORMALISATION)}}
    for name, seed in (("backbone", 1), ("other", 2)):
        torch.manual_seed(seed)
        save_model_dir(tmp_path / name, create_model("resnet18", **bkw).eval(), bcard)
    dim = 512 + 256  # resnet18's final map and its stride-16 stage (features.levels 2)
    names = tiny["names"][:2]
    kw = {"num_classes": 2, "num_regions": len(regions), "feature_dim": dim, "num_findings": len(findings), "hidden": 16}
    adj = np.eye(len(regions), dtype=np.float32)
    extractor = {"kind": "backbone", "architecture": "resnet18", "input_size": 64, "levels": 2,
                 "weights_sha256": sha256_file(tmp_path / "backbone" / "model.pt")}
    save_model_dir(tmp_path / "models" / "anaxnet", create_model("anaxnet", **kw, adjacency=adj),
                   {"architecture": "anaxnet", "model_kwargs": {**kw, "adjacency": adj.tolist()}, "label_names": names,
                    "input": {"kind": "region_features", "num_regions": len(regions), "feature_dim": dim,
                              "extractor": extractor}, "thresholds": {names[0]: 0.0, names[1]: 1.01}})
    img = realdata / "siim" / "Fake_MONOHR1.dcm"
    model = tmp_path / "models" / "anaxnet"
    assert _predict(tiny, [img], tmp_path / "o", model=model) == 2  # no models/backbone beside it
    assert "pass --backbone" in caplog.text
    caplog.clear()
    assert _predict(tiny, [img], tmp_path / "o", "--backbone", str(tmp_path / "other"), model=model) == 2
    assert "weights digest differs" in caplog.text
    assert _predict(tiny, [img], tmp_path / "o", "--backbone", str(tmp_path / "backbone"), model=model) == 0
    rec = json.loads((tmp_path / "o" / "Fake_MONOHR1.json").read_text())
    assert rec["positive"] == [names[0]] and any(r["present"] for r in rec["regions"].values())
