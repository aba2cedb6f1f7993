"""The paper's networks: shapes, CAM layers (and that cam_maps picks them by default), parameter counts."""

import pytest
import torch

from benchmarks import models as bm
from benchmarks.models import CAM_LAYERS, MODELS, build_model
from torchattacks_part import cam_maps
from torchattacks_part.cam import layer_candidates

# name -> (parameters for 10 classes, CAM map (C, h, w) on 32x32)
EXPECTED = {
    "tiny": (5_514, (32, 8, 8)),
    "resnet18": (11_173_962, (512, 4, 4)),  # the CIFAR ResNet-18 everyone quotes as 11.2M
    "wrn-34-10": (46_160_474, (640, 8, 8)),  # the TRADES / MART WRN-34-10, 46.2M
}


@pytest.fixture(scope="module")
def models():
    """One model of each kind, seeded, eval mode (WRN-34-10 is built once: 46M parameters)."""
    torch.manual_seed(0)
    return {name: build_model(name).eval() for name in MODELS}


def feature_map(model, layer, x):
    out = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.setdefault("map", o))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, out["map"]


def test_registry_matches_the_named_constructors():
    assert set(MODELS) == set(CAM_LAYERS) == {"tiny", "resnet18", "wrn-34-10", "vit-cifar", "vit-tiny-test"}
    torch.manual_seed(1)
    a = bm.resnet18(num_classes=7)
    torch.manual_seed(1)
    b = build_model("resnet18", 7)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.linear.out_features == 7
    assert bm.wide_resnet34_10(num_classes=100).fc.out_features == 100
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("tiny", 1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count(models, name):
    count = sum(p.numel() for p in models[name].parameters())
    assert count == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_logits_and_cam_layer_shapes_on_32x32(models, cifar_batch, name):
    x = cifar_batch[0][:2]
    logits, fmap = feature_map(models[name], CAM_LAYERS[name], x)
    assert logits.shape == (2, 10)
    assert tuple(fmap.shape) == (2, *EXPECTED[name][1])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cam_maps_default_layer_is_the_documented_one(models, cifar_batch, name):
    model, layer = models[name], CAM_LAYERS[name]
    x = cifar_batch[0][:2]
    assert layer_candidates(model, None)[0] is model.get_submodule(layer)
    default = cam_maps(model, x)
    named = cam_maps(model, x, target_layer=layer)
    assert default.shape == (2, 32, 32)
    torch.testing.assert_close(default, named, rtol=0, atol=0)
    # The comparison can tell layers apart: an earlier layer gives other maps.
    earlier = {"tiny": "features.2", "resnet18": "layer3", "wrn-34-10": "block2"}[name]
    assert not torch.allclose(default, cam_maps(model, x, target_layer=earlier))


def test_wrn_on_64x64_tinyimagenet_inputs(models):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = models["wrn-34-10"]
    logits, fmap = feature_map(model, "block3", x)
    assert logits.shape == (2, 10) and tuple(fmap.shape) == (2, 640, 16, 16)
    logits, fmap = feature_map(models["resnet18"], "layer4", x)
    assert logits.shape == (2, 10) and tuple(fmap.shape) == (2, 512, 8, 8)


def test_resnet18_is_the_pyautoattack_network(resnet18, cifar_batch):
    """``resnet18`` is conftest's pretrained pyautoattack network: its weights load into resnet18() and give the same logits."""
    ours = build_model("resnet18")
    ours.load_state_dict(resnet18.state_dict())
    ours.eval()
    x = cifar_batch[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), resnet18(x), rtol=1e-5, atol=1e-5)


def test_pretrained_resnet18_unchanged(resnet18):
    assert not resnet18.training and sum(p.numel() for p in resnet18.parameters()) == EXPECTED["resnet18"][0]
