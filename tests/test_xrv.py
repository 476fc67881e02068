"""torchxrayvision DenseNet checkpoints in ``train.pretrained`` (cxr.models.xrv): detection, the
tensor mapping onto our densenet121, a short training that starts from them, and clear errors.

The xrv model is randomly initialised (``weights=None``): nothing is downloaded.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cxr.errors import PretrainedError
from cxr.intensity import NORMALISATION, XRV_NORMALISATION
from cxr.labelspace import ANAXNET9, CHESTXRAY14, CHEXPERT14
from cxr.models.xrv import XRV_PATHOLOGIES, apply_xrv, read_xrv_checkpoint, xrv_label
from cxr.models.zoo import create_model

FRESH_CHEXPERT = ["No Finding", "Pleural Other", "Support Devices"]


@pytest.fixture(scope="module")
def xrv_net():
    xrv = pytest.importorskip("torchxrayvision")  # pinned in requirements.txt; skip only where it is absent
    torch.manual_seed(3)
    net = xrv.models.DenseNet(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a missed buffer shows in the outputs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return xrv, net


@pytest.fixture(scope="module")
def xrv_file(xrv_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("xrv") / "xrv-densenet.pt"
    torch.save(xrv_net[1].state_dict(), path)
    return path


def test_pathology_list_is_xrvs(xrv_net):
    xrv, net = xrv_net
    assert XRV_PATHOLOGIES == tuple(xrv.datasets.default_pathologies) == tuple(net.targets)


def test_label_mapping_across_spaces():
    ours = {n: XRV_PATHOLOGIES[j] for n in CHEXPERT14 if (j := xrv_label(n)) is not None}
    assert ours["Pleural Effusion"] == "Effusion" and ours["Cardiomegaly"] == "Cardiomegaly"
    assert sorted(set(CHEXPERT14) - set(ours)) == sorted(FRESH_CHEXPERT)
    assert {n for n in CHESTXRAY14 if xrv_label(n) is None} == {"No Finding"}  # xrv covers all 14 NIH findings
    assert XRV_PATHOLOGIES[xrv_label("enlarged cardiac silhouette")] == "Cardiomegaly"
    assert [n for n in ANAXNET9 if xrv_label(n) is None] == ["fluid overload/heart failure"]
    # an output a weight set did not train ("") maps nothing
    assert xrv_label("Cardiomegaly", ["", "Edema"]) is None


@pytest.mark.parametrize("fmt", ["state_dict", "pickled model", "wrapped"])
def test_mapped_tensors_equal_xrvs(xrv_net, tmp_path, fmt):
    _, net = xrv_net
    path = tmp_path / "w.pt"
    if fmt == "pickled model":
        torch.save(net, path)
    elif fmt == "wrapped":  # a state dict with its own pathology order
        order = list(reversed(XRV_PATHOLOGIES))
        sd = net.state_dict()
        perm = [XRV_PATHOLOGIES.index(p) for p in order]
        sd = {**sd, "classifier.weight": sd["classifier.weight"][perm], "classifier.bias": sd["classifier.bias"][perm]}
        torch.save({"state_dict": sd, "pathologies": order}, path)
    else:
        torch.save(net.state_dict(), path)
    ckpt = read_xrv_checkpoint(path)
    assert ckpt is not None and ckpt.fmt == ("pickled model" if fmt == "pickled model" else "state_dict")
    model = create_model("densenet121", num_classes=len(CHEXPERT14), image_size=64).eval()
    rec = apply_xrv(model, ckpt, CHEXPERT14)
    theirs = net.state_dict()
    ours = model.features.net.state_dict()
    feats = [k for k in theirs if k.startswith("features.")]
    assert len(feats) == rec["backbone_tensors"] == len(ours) == 725
    assert all(torch.equal(ours[k], theirs[k]) for k in feats)
    for i, name in enumerate(CHEXPERT14):
        j = xrv_label(name)
        if j is not None:
            assert torch.equal(model.head.fc.weight[i], theirs["classifier.weight"][j])
            assert torch.equal(model.head.fc.bias[i], theirs["classifier.bias"][j])
    assert rec["classes_fresh"] == FRESH_CHEXPERT and rec["classes_from_xrv"]["Pleural Effusion"] == "Effusion"
    assert rec["file"] == "w.pt" and "/" not in rec["file"]
    # same network: our logits equal xrv's for every mapped class (eval mode, any input size)
    x = torch.rand(2, 1, 64, 64) * 2048 - 1024
    with torch.no_grad():
        a, b = model(x), net(x)
    for i, name in enumerate(CHEXPERT14):
        if (j := xrv_label(name)) is not None:
            assert torch.allclose(a[:, i], b[:, j], atol=1e-4), name


def test_other_weight_files_are_not_xrv(tmp_path):
    timm_like = create_model("densenet121", num_classes=3, image_size=64).features.net.state_dict()
    torch.save(timm_like, tmp_path / "timm.pt")  # no classifier: a plain backbone file
    assert read_xrv_checkpoint(tmp_path / "timm.pt") is None


def test_bad_checkpoints_name_the_file(xrv_file, tmp_path):
    with pytest.raises(PretrainedError, match="nowhere.pt not found"):
        read_xrv_checkpoint(tmp_path / "nowhere.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file\x00\x01" * 10)
    with pytest.raises(PretrainedError, match=r"junk\.pt: not a readable torch weights file"):
        read_xrv_checkpoint(junk)
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(xrv_file.read_bytes()[: 100_000])
    with pytest.raises(PretrainedError, match=r"truncated\.pt: not a readable torch weights file"):
        read_xrv_checkpoint(cut)
    other = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(2, 2), other)  # a pickled module, but not torchxrayvision's
    with pytest.raises(PretrainedError, match=r"linear\.pt: not a state dict.*torch\.save\(model\.state_dict"):
        read_xrv_checkpoint(other)
    sd = torch.load(xrv_file, weights_only=True)
    odd = tmp_path / "odd.pt"
    torch.save({**sd, "classifier.weight": sd["classifier.weight"][:5], "classifier.bias": sd["classifier.bias"][:5]},
               odd)
    with pytest.raises(PretrainedError, match=r"odd\.pt: a torchxrayvision-style DenseNet with 5 outputs"):
        read_xrv_checkpoint(odd)
    bad = tmp_path / "bad_block.pt"
    torch.save({k: v for k, v in sd.items() if "denseblock4" not in k}, bad)
    with pytest.raises(PretrainedError, match=r"bad_block\.pt: the DenseNet does not fit densenet121"):
        apply_xrv(create_model("densenet121", num_classes=14, image_size=64), read_xrv_checkpoint(bad), CHEXPERT14)
    with pytest.raises(PretrainedError, match="fits the densenet121 model only, not resnet18"):
        apply_xrv(create_model("resnet18", num_classes=14, image_size=64), read_xrv_checkpoint(xrv_file), CHEXPERT14)


def test_training_starts_from_xrv_weights(tiny_processed, xrv_file, tmp_path, caplog):
    from cxr.params import TrainParams
    from cxr.train import load_model_dir, train_model

    r = tiny_processed["root"]
    images, labels, splits = (pd.read_parquet(r / f) for f in ("images.parquet", "labels.parquet", "splits.parquet"))
    local = tmp_path / "xrv.pt"
    local.write_bytes(xrv_file.read_bytes())
    # lr 1e-9: one epoch leaves the weights where they started, so the model dir shows the starting point
    params = TrainParams(image_size=32, epochs=1, batch_size=16, lr=1e-9, weight_decay=0.0, augment=False,
                         pretrained={"densenet121": str(local)})
    with caplog.at_level("WARNING"):
        card = train_model("densenet121", images=images, labels=labels, splits=splits, images_dir=r / "images",
                           names=list(CHEXPERT14), uncertainty={}, params=params, seed=0, out_dir=tmp_path / "m",
                           log_dir=None, cache_dir=tmp_path / "c", progress=False,
                           data_source={"kind": "synthetic", "source": "synthetic://tiny"})
    assert "trained at 224 px, train.image_size is 32" in caplog.text
    assert card["input"]["normalisation"] == XRV_NORMALISATION != NORMALISATION
    assert card["pretrained"]["kind"] == "torchxrayvision" and card["pretrained"]["classes_fresh"] == FRESH_CHEXPERT
    assert card["model_kwargs"]["weights"] is None  # no machine path; model.pt alone rebuilds the model
    assert card["data_source"] == {"kind": "synthetic", "source": "synthetic://tiny"}
    saved = json.loads((tmp_path / "m" / "card.json").read_text())
    assert saved["pretrained"]["file"] == "xrv.pt" and saved["params"]["pretrained"] == {"densenet121": "xrv.pt"}
    assert str(tmp_path) not in json.dumps(saved)  # no machine path anywhere in the card
    local.unlink()  # the model dir does not need the pretrained file any more
    model, _ = load_model_dir(tmp_path / "m")
    theirs = torch.load(xrv_file, weights_only=True)
    ours = model.features.net.state_dict()
    convs = [k for k in theirs if k.startswith("features.") and k.endswith("conv2.weight")] + ["features.conv0.weight"]
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in convs)
    i, j = CHEXPERT14.index("Pleural Effusion"), XRV_PATHOLOGIES.index("Effusion")
    assert torch.allclose(model.head.fc.weight[i], theirs["classifier.weight"][j], atol=1e-6)
