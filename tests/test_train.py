"""The training engine, the dataset + image cache, and train -> evaluate on the tiny cohort."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_params, tiny_workdir
from cxr.data import DataError, ImageCache, RegionDataset, RegionFeatures, load_png_square, normalise
from cxr.errors import ModelDirError
from cxr.params import TrainParams
from cxr.train import (
    TrainError,
    fit,
    load_model_dir,
    masked_bce,
    save_model_dir,
    train_model,
    train_pos_weight,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- loss


def test_masked_entries_do_not_contribute():
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.randint(0, 2, (4, 3)).float()
    m = torch.ones(4, 3, dtype=torch.bool)
    m[0, 1] = m[2, 2] = False
    loss = masked_bce(logits, y, m)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[2, 2] == 0 and logits.grad[1, 1] != 0
    changed = logits.detach().clone()
    changed[0, 1] = 100.0
    assert torch.isclose(masked_bce(changed, y, m), loss.detach())
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach()[m], y[m])
    assert torch.isclose(loss.detach(), ref)  # mean over the unmasked entries only
    assert masked_bce(logits, y, torch.zeros_like(m)) == 0  # nothing to learn -> zero, not NaN


def test_pos_weight_and_focal():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], np.float32)
    m = np.ones_like(y, bool)
    m[1, 1] = False
    w = train_pos_weight(y, m)
    assert w.tolist() == [3.0, 2.0]
    logits, t = torch.tensor([[4.0, -4.0]]), torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert masked_bce(logits, t, mask, focal_gamma=2.0) < 0.01 * masked_bce(logits, t, mask)  # easy examples fade


# ---------------------------------------------------------------- data


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_image_cache_decodes_once_and_pads(tmp_path):
    a = _png(tmp_path / "a.png", np.full((40, 20), 200, np.uint8))
    b = _png(tmp_path / "b.png", (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60))  # 16-bit
    cache = ImageCache.build(["a", "b"], [a, b], 16, tmp_path / "cache", progress=False)
    assert cache.array.shape == (2, 16, 16) and cache.array.dtype == np.uint8
    assert isinstance(cache.array, np.memmap)
    assert cache["a"][:, 0].max() == 0 and cache["a"][8, 8] == 200  # centred on a black square
    assert cache["b"].max() > 200  # 16 bit rescaled to the 8-bit range
    stamp = (tmp_path / "cache" / "images.npy").stat().st_mtime_ns
    ImageCache.build(["a", "b"], [a, b], 16, tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "images.npy").stat().st_mtime_ns == stamp  # reused, not re-decoded
    ImageCache.build(["a", "b"], [a, b], 8, tmp_path / "cache", progress=False)
    assert ImageCache(tmp_path / "cache").size == 8  # another size -> rebuilt
    with pytest.raises(DataError, match="not found"):
        ImageCache.build(["c"], [tmp_path / "c.png"], 16, tmp_path / "cache2", progress=False)
    assert load_png_square(a, 16).shape == (16, 16)


def test_normalise_checks_input_range():
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(normalise(x), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(DataError, match=r"expected raw pixel values in \[0, 255\]"):
        normalise(torch.full((1, 1, 2, 2), -1.5))


def _region_dir(root: Path, n: int = 24, r: int = 18, d: int = 16, f: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rl = (rng.random((n, r, f)) < 0.3).astype(np.float32)
    feats = rng.normal(size=(n, r, d)).astype(np.float16)
    feats[..., 0] += rl.any(-1) * 2  # learnable signal
    pres = rng.random((n, r)) > 0.1
    feats[~pres] = np.nan  # the contract: NaN where a region is missing
    np.save(root / "features.npy", feats)
    np.save(root / "mask.npy", pres)
    np.save(root / "boxes.npy", rng.random((n, r, 4)).astype(np.float32))
    np.save(root / "labels.npy", rl)
    pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)]}).to_parquet(root / "index.parquet")
    return root


def _region_meta(n: int = 24, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)], "patient_id": [f"p{k // 2}" for k in range(n)],
                         "A": rng.integers(0, 2, n).astype(float), "B": rng.choice([1.0, 0.0, -1.0, np.nan], n)})


def test_region_dataset_contract(tmp_path):
    feats = RegionFeatures(_region_dir(tmp_path / "f"))
    ds = RegionDataset(_region_meta(), ["A", "B"], feats, {"default": "ignore"})
    s = ds[3]
    assert set(s) == {"features", "presence", "boxes", "region_targets", "region_mask", "targets", "mask", "index"}
    assert s["features"].shape == (18, 16) and s["features"].dtype == torch.float16
    assert torch.isfinite(s["features"].float()).all() and (s["features"][~s["presence"]] == 0).all()
    assert ds.mask[ds.raw[:, 1] == -1, 1].sum() == 0  # U-Ignore masks uncertain labels
    (tmp_path / "g").mkdir()
    with pytest.raises(DataError, match="missing"):
        RegionFeatures(tmp_path / "g")


def _fit_region(tmp_path, seed=3, lr=1e-2, **kw):
    from cxr.models.zoo import create_model

    feats = RegionFeatures(_region_dir(tmp_path / "f"))
    meta = _region_meta()
    tr = RegionDataset(meta.iloc[:16], ["A", "B"], feats)
    va = RegionDataset(meta.iloc[16:], ["A", "B"], feats)
    torch.manual_seed(seed)
    model = create_model("graph_transformer", num_classes=2, feature_dim=16, hidden=16, edge_dim=4, num_findings=3)
    summary = fit(model, tr, va, seed=seed, epochs=2, batch_size=8, lr=lr, graph_importance=0.5, progress=False,
                  device="cpu", **kw)
    return model, summary


def test_fit_is_seeded_and_logs_with_dvclive(tmp_path):
    m1, s1 = _fit_region(tmp_path / "a", log_dir=tmp_path / "live")
    m2, s2 = _fit_region(tmp_path / "b")
    assert s1["epochs_run"] == 2 and s1["best_epoch"] in (0, 1)
    for (k, v), w in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v, w), k  # same seed -> same weights
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert any((tmp_path / "live" / "plots" / "metrics").rglob("*macro_auroc*"))


class _Images(torch.utils.data.Dataset):
    """The image-dataset contract with random uint8 images (learnable: label A = bright top half)."""

    def __init__(self, n: int, seed: int):
        g = np.random.default_rng(seed)
        self.x = g.integers(0, 200, (n, 1, 32, 32), dtype=np.uint8)
        self.y = (g.random((n, 2)) < 0.5).astype(np.float32)
        self.x[self.y[:, 0] == 1, :, :16] += 50

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": torch.from_numpy(self.x[i]), "targets": torch.from_numpy(self.y[i]),
                "mask": torch.ones(2, dtype=torch.bool), "index": i}


@pytest.mark.parametrize("precision", ["auto", "32"])
def test_image_model_fit_is_seeded_in_channels_last(precision):
    from cxr.models.zoo import create_model
    from cxr.train import precision_for

    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=2, image_size=32)
        fit(model, _Images(16, 0), _Images(8, 1), seed=5, epochs=1, batch_size=8, lr=1e-3, progress=False,
            device="cpu", precision=precision)
        runs.append(model.state_dict())
    conv = next(v for v in runs[0].values() if v.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the engine trains NHWC
    for (k, v), w in zip(runs[0].items(), runs[1].values()):
        assert torch.equal(v, w), k  # same seed -> same weights, in bf16 autocast too
    assert precision_for(precision, "cpu") in ("32-true", "bf16-mixed")
    assert precision_for("auto", "cpu", convolutional=False) == "32-true"


def test_non_finite_loss_stops_training(tmp_path):
    with pytest.raises(TrainError, match="non-finite"):
        _fit_region(tmp_path, lr=1e30)


def test_model_dir_roundtrip(tmp_path):
    from cxr.models.zoo import create_model

    adj = np.eye(18, dtype=np.float32)
    m = create_model("anaxnet", num_classes=2, feature_dim=8, hidden=16, adjacency=adj).eval()
    save_model_dir(tmp_path / "m", m, {"architecture": "anaxnet", "label_names": ["A", "B"],
                                       "model_kwargs": {"num_classes": 2, "feature_dim": 8, "hidden": 16, "adjacency": adj}})
    m2, card = load_model_dir(tmp_path / "m")
    x = torch.randn(2, 18, 8), torch.ones(2, 18, dtype=torch.bool)
    assert torch.equal(m(*x), m2(*x)) and card["label_names"] == ["A", "B"]
    with pytest.raises(ModelDirError, match="not a model dir"):
        load_model_dir(tmp_path)


# ---------------------------------------------------------------- tiny cohort end to end (in-process stages)


@pytest.fixture(scope="module")
def tiny_proc(tiny_processed, tmp_path_factory):
    """The shared processed tiny cohort (conftest) in a folder of this module's own, evaluate.bootstrap 50."""
    root = tiny_workdir(tiny_processed, tmp_path_factory.mktemp("proc"))
    tiny_params(root / "params.yaml", evaluate={"bootstrap": 50})
    return root


def test_train_then_evaluate_stages_on_tiny_cohort(tiny_proc):
    from stages import evaluate as evaluate_stage
    from stages import train as train_stage

    r = tiny_proc
    common = ["--images", str(r / "images"), "--table", str(r / "images.parquet"), "--labels", str(r / "labels.parquet"),
              "--splits", str(r / "splits.parquet")]
    assert train_stage.main(["--params", str(r / "params.yaml"), "--model", "densenet121", "--out", str(r / "m"), *common]) == 0
    card = json.loads((r / "m" / "card.json").read_text())
    assert card["label_names"][0] == "No Finding" and card["input"]["size"] == 64
    assert set(card["thresholds"]) == set(card["label_names"]) and card["threshold_rule"].endswith("validation split")
    assert len(card["data_hashes"]["splits"]) == 64
    state = torch.load(r / "m" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    out = r / "rep"
    assert evaluate_stage.main(["--params", str(r / "params.yaml"), "--model-dir", str(r / "m"), *common,
                                "--metrics", str(out / "metrics.json"), "--roc", str(out / "roc.csv"), "--pr", str(out / "pr.csv"),
                                "--out-dir", str(out / "evaluation")]) == 0
    met = json.loads((out / "metrics.json").read_text())
    splits = pd.read_parquet(r / "splits.parquet")
    pred = pd.read_parquet(out / "evaluation" / "predictions.parquet")
    assert json.loads((out / "evaluation" / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())
    assert set(pred["image_id"]) <= set(splits.loc[splits["split"] == "test", "image_id"])  # never train or val
    assert met["test_images"] == len(pred) and met["bootstrap"] == 50
    assert met["macro_auroc"] is None or 0 <= met["macro_auroc"] <= 1
    # the image caches of both stages are gone (scratch_dir: on exit, SIGTERM, or the next start)
    assert not list(Path(tempfile.gettempdir()).glob(f"cxr-cache-{os.getpid()}-*"))


def test_train_stage_errors_name_the_problem(tiny_proc, caplog):
    from stages import train as train_stage

    r = tiny_proc
    rc = train_stage.main(["--params", str(r / "params.yaml"), "--model", "densenet12", "--out", str(r / "x"),
                           "--images", str(r / "images"), "--table", str(r / "images.parquet"),
                           "--labels", str(r / "labels.parquet"), "--splits", str(r / "splits.parquet")])
    assert rc == 1 and "registered models: " in caplog.text and "densenet121" in caplog.text
    rc = train_stage.main(["--params", str(r / "params.yaml"), "--model", "anaxnet", "--out", str(r / "x"),
                           "--images", str(r / "images"), "--table", str(r / "images.parquet"),
                           "--labels", str(r / "labels.parquet"), "--splits", str(r / "splits.parquet")])
    assert rc == 1 and "needs region features" in caplog.text


def test_train_model_uses_train_split_only_for_the_label_graph(tiny_proc, tmp_path):
    r = tiny_proc
    images, labels, splits = (pd.read_parquet(r / f) for f in ("images.parquet", "labels.parquet", "splits.parquet"))
    from cxr.labels import label_names
    from cxr.models.mlgcn import label_adjacency
    from cxr.train import build_datasets

    names = label_names("chexpert14")
    params = TrainParams(image_size=64, epochs=1, batch_size=8, mlgcn={"backbone": "efficientnet_b0"})
    card = train_model("mlgcn", images=images, labels=labels, splits=splits, images_dir=r / "images", names=names,
                       uncertainty={}, params=params, seed=1, out_dir=tmp_path / "m", log_dir=None,
                       cache_dir=tmp_path / "c", progress=False)
    tr = build_datasets("mlgcn", images=images, labels=labels, splits=splits, images_dir=r / "images", names=names,
                        uncertainty={}, which=("train",), image_size=64, frontal_only=True, cache_dir=tmp_path / "c",
                        progress=False)["train"]
    expected = label_adjacency(tr.targets, tr.mask, 0.4, 0.2)
    assert np.allclose(np.asarray(card["model_kwargs"]["adjacency"]), expected)
    model, _ = load_model_dir(tmp_path / "m")
    assert np.allclose(model.head.adjacency.numpy(), expected)


@pytest.mark.parametrize("name", ["anaxnet", "graph_transformer"])
def test_region_models_train_and_evaluate_on_feature_folder(tiny_proc, tmp_path, name):
    """The features-stage contract (random values) aligned with the tiny cohort's image ids."""
    from cxr.evaluate.classification import evaluate_model
    from cxr.labels import label_names

    r = tiny_proc
    images, labels, splits = (pd.read_parquet(r / f) for f in ("images.parquet", "labels.parquet", "splits.parquet"))
    ids = sorted(images.loc[images["status"] == "ok", "image_id"])
    fdir = _region_dir(tmp_path / "features", n=len(ids), d=8)
    pd.DataFrame({"row": range(len(ids)), "image_id": ids}).to_parquet(fdir / "index.parquet")
    extractor = {"kind": "backbone", "architecture": "densenet121", "input_size": 64, "weights_sha256": "0" * 64}
    (fdir / "meta.json").write_text(json.dumps({"regions": [f"region{k}" for k in range(18)], "findings": ["a", "b", "c"],
                                                "box_source": "gt", "extractor": extractor}))
    params = TrainParams(epochs=1, batch_size=8, graph={"hidden": 16, "edges": "cooccurrence"})
    card = train_model(name, images=images, labels=labels, splits=splits, images_dir=r / "images",
                       names=label_names("chexpert14"), uncertainty={}, params=params, seed=0, out_dir=tmp_path / "m",
                       log_dir=None, cache_dir=tmp_path / "c", features_dir=fdir, progress=False)
    # what computed the features travels into the card (cxr predict recomputes them with the same backbone)
    assert card["input"] == {"kind": "region_features", "num_regions": 18, "feature_dim": 8, "box_source": "gt",
                             "extractor": extractor}
    metrics, roc, pr, pred = evaluate_model(tmp_path / "m", images=images, labels=labels, splits=splits,
                                            images_dir=r / "images", cache_dir=tmp_path / "c2", features_dir=fdir,
                                            n_boot=20, progress=False)
    assert list(metrics["region_auroc"])[:2] == ["region0", "region1"] and metrics["model"] == name
    # GT scene-graph boxes at test time are declared in the metrics (and so in models.md and the report)
    assert metrics["region_boxes"]["source"] == "gt" and "oracle" in metrics["region_boxes"]["note"]
    assert set(metrics["by_view"]) <= {"AP", "PA"}
    assert set(pred["image_id"]) <= set(splits.loc[splits["split"] == "test", "image_id"])


def test_evaluation_truth_does_not_depend_on_the_training_policy(tiny_proc, tmp_path):
    """U-Ones and U-Zeros models are scored on one truth (uncertain test labels masked), and compared on it."""
    from cxr.evaluate.classification import evaluate_model
    from cxr.evaluate.report_table import paired_comparison
    from cxr.labels import label_names

    r = tiny_proc
    images, labels, splits = (pd.read_parquet(r / f) for f in ("images.parquet", "labels.parquet", "splits.parquet"))
    names = label_names("chexpert14")
    test_ids = sorted(set(splits.loc[splits["split"] == "test", "image_id"]) & set(labels["image_id"]))
    labels = labels.copy()
    labels.loc[labels["image_id"].isin(test_ids[::2]), names[1:]] = -1  # the case at stake: uncertain test labels
    ids = sorted(images.loc[images["status"] == "ok", "image_id"])
    fdir = _region_dir(tmp_path / "features", n=len(ids), d=8)
    pd.DataFrame({"row": range(len(ids)), "image_id": ids}).to_parquet(fdir / "index.parquet")
    (fdir / "meta.json").write_text(json.dumps({"regions": [f"region{k}" for k in range(18)], "findings": ["a", "b", "c"],
                                                "box_source": "gt"}))
    params = TrainParams(epochs=1, batch_size=8, graph={"hidden": 16, "edges": "cooccurrence"})
    preds = {}
    for policy in ("ones", "zeros"):
        train_model("anaxnet", images=images, labels=labels, splits=splits, images_dir=r / "images", names=names,
                    uncertainty={"default": policy}, params=params, seed=0, out_dir=tmp_path / policy, log_dir=None,
                    cache_dir=tmp_path / "c", features_dir=fdir, progress=False)
        metrics, _, _, preds[policy] = evaluate_model(tmp_path / policy, images=images, labels=labels, splits=splits,
                                                      images_dir=r / "images", cache_dir=tmp_path / "c2",
                                                      features_dir=fdir, n_boot=20, progress=False)
        assert metrics["truth"] == {"uncertain": "ignore", "blank": "zeros"}
    a, b = preds["ones"], preds["zeros"]
    raw = labels.set_index("image_id").loc[a["image_id"], names].to_numpy(float)
    for c, n in enumerate(names):
        assert (a[f"m:{n}"].to_numpy() == b[f"m:{n}"].to_numpy()).all()
        assert (a[f"y:{n}"].to_numpy() == b[f"y:{n}"].to_numpy()).all()
        assert not a[f"m:{n}"].to_numpy()[raw[:, c] == -1].any()  # an uncertain test label is not truth
    assert (raw == -1).any()
    assert a["patient_key"].str.contains(":").all()  # dataset:patient_id, the split's key
    assert paired_comparison(a, b, names, n_boot=20)["shared_images"] == len(a)
    b2 = b.copy()
    b2[f"y:{names[1]}"] = 1 - b2[f"y:{names[1]}"]
    b2[f"m:{names[1]}"] = True
    with pytest.raises(ValueError, match="different test truths"):
        paired_comparison(a, b2, names, n_boot=20)


def test_gpu_code_paths_build_on_cpu(monkeypatch):
    """What differs on a GPU at least builds here: the precision choice and its Lightning plugin,
    and the loader with persistent workers and pinned memory (same batches as in-process loading)."""
    import warnings

    from lightning.pytorch.plugins.precision import MixedPrecision

    from cxr.train import _loader, precision_for

    for bf16, expected in ((True, "bf16-mixed"), (False, "16-mixed")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert precision_for("auto", "gpu") == expected
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA is not available" from the disabled GradScaler
            plugin = MixedPrecision(expected, "cuda")
        assert plugin.precision == expected
    ds = _Images(12, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pin_memory without an accelerator is a no-op with a warning
        loader = _loader(ds, 4, True, 0, workers=2, pin_memory=True)
        assert loader.persistent_workers and loader.pin_memory and loader.num_workers == 2
        with_workers = [b["index"].tolist() for _ in range(2) for b in loader]  # two epochs, workers kept
    plain = _loader(ds, 4, True, 0, workers=0)
    in_process = [b["index"].tolist() for _ in range(2) for b in plain]
    # epoch 1 in the same order; later epochs reshuffle (persistent workers draw no new base seed)
    assert with_workers[:3] == in_process[:3]
    assert sorted(sum(with_workers[:3], [])) == sorted(sum(with_workers[3:], [])) == list(range(12))


def test_backbone_stage_trains_once_and_train_copies_it(tiny_proc, tmp_path, caplog):
    """The region-feature classifier (stage `backbone`) is trained exactly as train@M; train@M then copies it,
    and trains itself as soon as anything that changes the weights differs."""
    import logging

    from stages import backbone as backbone_stage
    from stages import train as train_stage

    r = tiny_proc
    common = ["--images", str(r / "images"), "--table", str(r / "images.parquet"), "--labels", str(r / "labels.parquet"),
              "--splits", str(r / "splits.parquet")]
    p = tiny_params(tmp_path / "params.yaml", evaluate={"bootstrap": 50}, features={"extractor": "resnet18"})
    bb, bb_log = tmp_path / "backbone", tmp_path / "backbone_live"
    assert backbone_stage.main(["--params", str(p), *common, "--out", str(bb), "--log-dir", str(bb_log)]) == 0
    assert json.loads((bb / "card.json").read_text())["architecture"] == "resnet18"
    # train@resnet18 on its own gives the very same weights: the backbone is that training, not another one
    assert train_stage.main(["--params", str(p), "--model", "resnet18", "--out", str(tmp_path / "alone"), *common]) == 0
    assert (tmp_path / "alone" / "model.pt").read_bytes() == (bb / "model.pt").read_bytes()
    caplog.set_level(logging.INFO)
    reuse = ["--backbone", str(bb), "--backbone-log", str(bb_log)]
    assert train_stage.main(["--params", str(p), "--model", "resnet18", *reuse, "--out", str(tmp_path / "copy"),
                             "--log-dir", str(tmp_path / "copy_live"), *common]) == 0
    assert "weights copied, not retrained" in caplog.text
    assert (tmp_path / "copy" / "model.pt").read_bytes() == (bb / "model.pt").read_bytes()
    assert (tmp_path / "copy" / "card.json").read_text() == (bb / "card.json").read_text()
    assert sorted(f.relative_to(bb_log) for f in bb_log.rglob("*")) == \
        sorted(f.relative_to(tmp_path / "copy_live") for f in (tmp_path / "copy_live").rglob("*"))
    # which models the matrix lists does not change one model's training: still copied
    caplog.clear()
    p3 = tiny_params(tmp_path / "params3.yaml", evaluate={"bootstrap": 50, "reference": "resnet18"}, features={"extractor": "resnet18"},
                     train={"models": ["resnet18"]})
    assert train_stage.main(["--params", str(p3), "--model", "resnet18", *reuse, "--out", str(tmp_path / "copy3"),
                             *common]) == 0
    assert "weights copied, not retrained" in caplog.text
    # another model, or the same model with another lr: trained here, and the log says why
    caplog.clear()
    p2 = tiny_params(tmp_path / "params2.yaml", train={"lr": 0.003}, features={"extractor": "resnet18"})
    assert train_stage.main(["--params", str(p2), "--model", "resnet18", *reuse, "--out", str(tmp_path / "lr"),
                             *common]) == 0
    assert "trained here, not copied" in caplog.text and "params" in caplog.text
    assert (tmp_path / "lr" / "model.pt").read_bytes() != (bb / "model.pt").read_bytes()
    caplog.clear()
    assert train_stage.main(["--params", str(p), "--model", "densenet121", *reuse, "--out", str(tmp_path / "dn"),
                             *common]) == 0
    assert "trained here, not copied" in caplog.text and "architecture" in caplog.text


def test_backbone_stage_markers_and_bad_extractor(tiny_proc, tmp_path, caplog):
    from cxr.applicability import reason_of
    from stages import backbone as backbone_stage

    r = tiny_proc
    common = ["--images", str(r / "images"), "--table", str(r / "images.parquet"), "--labels", str(r / "labels.parquet"),
              "--splits", str(r / "splits.parquet"), "--out", str(tmp_path / "bb"), "--log-dir", str(tmp_path / "live")]
    p = tiny_params(tmp_path / "params.yaml", features={"extractor": "detector"})
    assert backbone_stage.main(["--params", str(p), *common]) == 0
    assert "box-head" in reason_of(tmp_path / "bb")
    for f in ("metrics.json", "params.yaml", "plots/metrics/marker.json"):  # every declared output exists
        assert reason_of(json.loads((tmp_path / "live" / f).read_text()))
    for bad in ("anaxnet", "segfusion_van_gcn", "densenet12"):
        caplog.clear()
        p = tiny_params(tmp_path / "bad.yaml", features={"extractor": bad})
        assert backbone_stage.main(["--params", str(p), *common]) == 2
        assert f"features.extractor = {bad!r}" in caplog.text and "densenet121" in caplog.text
