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
        assert set(rec["heatmaps"]) == {names[2]} and rec["heatmap_method"] == "gradcam"
        for cls, name in rec["heatmaps"].items():
            with Image.open(tmp_path / "a" / name) as im:
                assert im.mode == "RGB" and im.size == (rec["image"]["converted"]["cols"], rec["image"]["converted"]["rows"])
                rgb = np.asarray(im).astype(int)
            assert (cls in rec["empty_heatmaps"]) == (rgb[..., 0] == rgb[..., 2]).all()  # colour only where heat
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
    assert written == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(written) == 1 + 1 + 1
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
    assert _predict(tiny, [img], tmp_path / "o", "--method", "nope") == 2
    assert "choose one of" in caplog.text
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
                    "--no-heatmaps", model=tiny["model"]) == 0
    rec = json.loads((tmp_path / "o" / f"{src.stem}.json").read_text())
    hits = rec["similar"]
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
