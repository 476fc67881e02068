"""Registry-wide checks (after timm's tests/test_models.py): every registered model does forward
and backward on a 64-px CPU batch, every trainable parameter gets a gradient, nothing is NaN, and
a weights_only save/load round trip reproduces the outputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cxr.models.zoo import ModelError, create_model, list_models
from cxr.models.anaxnet import region_adjacency
from cxr.models.cnn import POOLS
from cxr.models.mlgcn import label_adjacency

NUM_CLASSES = 5
# small sizes keep the whole registry under a few seconds per model on CPU
SMALL = {"anaxnet": {"feature_dim": 32, "hidden": 32}, "graph_transformer": {"feature_dim": 32, "hidden": 32, "edge_dim": 4}}


def _inputs(model, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if model.input_keys == ("image",):
        return {"image": torch.randn(batch, 1, 64, 64, generator=g)}
    presence = torch.ones(batch, model.num_regions, dtype=torch.bool)
    presence[1, :2] = False  # absent regions must not break anything
    return {
        "features": torch.randn(batch, model.num_regions, model.feature_dim, generator=g).half(),
        "presence": presence,
        "boxes": torch.rand(batch, model.num_regions, 4, generator=g),
    }


def _build(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, **({"image_size": 64} if name not in SMALL else SMALL[name]), **kw)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_param_gets_grad(name):
    model = _build(name)
    model.train()
    out = model(**_inputs(model))
    assert out.shape == (2, NUM_CLASSES)
    loss = out.pow(2).mean()
    if hasattr(model, "forward_all"):
        _, node = model.forward_all(**_inputs(model))
        assert node.shape[:2] == (2, model.num_regions)
        loss = loss + node.pow(2).mean()
    loss.backward()
    assert torch.isfinite(out).all()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{name}: parameters without a finite gradient: {no_grad[:10]}"
    # Exactly zero gradients: a parameter cut off from the loss. A residual branch whose last norm starts
    # at zero (timm's zero_init_last in the ResNets) gets its gradient only once that norm moved, so such
    # parameters get one SGD step to come alive; one still at zero after it is dead.
    dead = [n for n, p in trainable if p.grad.abs().sum() == 0]
    if dead:
        with torch.no_grad():
            for _, p in trainable:
                p -= 0.1 * p.grad
        model.zero_grad()
        model(**_inputs(model)).pow(2).mean().backward()
        grads = dict(trainable)
        dead = [n for n in dead if grads[n].grad is None or grads[n].grad.abs().sum() == 0]
    assert not dead, f"{name}: parameters whose gradient stays exactly zero: {dead[:10]}"


@pytest.mark.parametrize("name", list_models())
def test_weights_only_roundtrip_reproduces_outputs(name):
    model = _build(name).eval()
    x = _inputs(model, seed=1)
    with torch.no_grad():
        ref = model(**x)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a different init: loading must overwrite all of it
    other = create_model(name, num_classes=NUM_CLASSES, **({"image_size": 64} if name not in SMALL else SMALL[name])).eval()
    other.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(other(**x), ref, atol=1e-5)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="densenet121"):
        create_model("densenet12")


@pytest.mark.parametrize("pool", POOLS)
def test_pooling_heads_and_binary_mode(pool):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1, image_size=64, pool=pool)
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_pooling_is_named():
    with pytest.raises(ModelError, match="'median'.*avg"):
        create_model("resnet50", num_classes=2, pool="median")


def test_label_adjacency_from_cooccurrence():
    y = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    a = label_adjacency(y, t=0.5, p=0.2)
    assert a.shape == (3, 3) and np.isfinite(a).all()
    assert a[0, 1] > 0 and a[1, 0] > 0  # P(1|0) = 2/3, P(0|1) = 1 >= t
    assert a[0, 2] == 0 and a[2, 0] == 0  # never together
    masked = label_adjacency(y, mask=np.array([[1, 0, 1]] * 4, bool), t=0.5, p=0.2)
    assert masked[0, 1] == 0  # masked entries do not count as co-occurrence
    with pytest.raises(ModelError, match="t=2"):
        label_adjacency(y, t=2)


def test_region_adjacency_and_cooccurrence_edges():
    rl = np.zeros((4, 18, 9), np.float32)
    rl[:2, 0, 1] = 1
    rl[:2, 3, 2] = 1
    adj = region_adjacency(rl)
    assert adj.shape == (18, 18) and adj[0, 3] > 0 and adj[0, 5] == 0
    m = create_model("graph_transformer", num_classes=3, feature_dim=8, hidden=16, edges="cooccurrence", cooccurrence=adj)
    assert m.edge_template.shape[1] == 2  # only 0->3 and 3->0
    assert isinstance(m.edge_attr, torch.nn.Parameter)
    with pytest.raises(ModelError, match="expected \\[B, 18, 8\\]"):
        m(torch.zeros(1, 18, 4), torch.ones(1, 18, dtype=torch.bool))


def test_segfusion_with_the_anatomy_unet_stays_frozen():
    from cxr.anatomy.unet import OrganUNet

    torch.manual_seed(0)
    unet = OrganUNet(["right_lung", "left_lung"], encoder_depth=3, decoder_channels=(16, 8, 4))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    from cxr.models.segfusion import SegFusionVANGCN

    model = SegFusionVANGCN(num_classes=3, unet=unet, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)).train()
    assert model.fuse[0].gate.in_channels == 2  # one fusion input per UNet structure
    x = torch.randn(2, 1, 64, 64).clamp(-2, 2)  # normalised input; the UNet gets it back in [0, 1]
    out = model(x)
    out.sum().backward()
    assert not model.unet.net.training
    assert all(p.grad is None for p in model.unet.parameters())
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_graph_transformer_v0_has_no_unused_parameters():
    m = create_model("graph_transformer", num_classes=2, feature_dim=8, hidden=16, layers=0)
    assert m.edge_attr is None and len(m.convs) == 0
    out = m(torch.randn(2, 18, 8), torch.ones(2, 18, dtype=torch.bool))
    out.sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None and not n.startswith("node_cls")]
    assert not missing  # node_cls is trained by the region loss only
