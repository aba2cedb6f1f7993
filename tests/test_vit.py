"""PART on a Vision Transformer: token CAMs against pytorch-grad-cam, the default ViT layer, clear refusals of layers
without tokens, the attacks on a ViT, and one epoch of each training method on the tiny ViT (real CIFAR-10 images)."""

import copy

import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torch.nn as nn
import torchattacks
from art.estimators.classification import PyTorchClassifier
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.models.vision_transformer import VisionTransformer

from art_part.trainer import METHODS, AdversarialTrainerPARTPyTorch
from benchmarks.data import load_cifar10
from benchmarks.models import CAM_LAYERS, build_model
from torchattacks_part import MMA, MMAEval, PixelAG, cam_maps
from torchattacks_part.cam import layer_candidates, token_reshape_transform

LIBRARY_CLASS = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "gradcam++": "GradCAMPlusPlus"}
EPS, EPS_LOW = 8 / 255, 4 / 255


def tutorial_reshape(prefix, h, w):
    """pytorch-grad-cam's ViT tutorial reshape (``vit_example.py``), with ``prefix`` leading tokens dropped."""

    def reshape_transform(tensor):
        result = tensor[:, prefix:, :].reshape(tensor.size(0), h, w, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return reshape_transform


def library_maps(model, layer, images, method, reshape, targets=None):
    if targets is not None:
        targets = [ClassifierOutputTarget(int(t)) for t in targets]
    library_class = getattr(pytorch_grad_cam, LIBRARY_CLASS[method])
    with library_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=images, targets=targets)


def seeded(name, informative=True):
    """A model of benchmarks.models, seed 0, eval mode.

    ``informative``: its Linear weights re-drawn Xavier-uniform. At timm's own initialisation (trunc-normal, std
    0.02) the patch tokens of the predicted class contribute negatively almost everywhere, so after the ReLU about
    95 % of the GradCAMs are empty (for pytorch-grad-cam too): a comparison of empty maps would prove nothing.
    """
    torch.manual_seed(0)
    model = build_model(name).eval()
    if informative:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
    return model


@pytest.fixture
def vit():
    """The tiny test ViT (patch 8: 4x4 grid + class token, dim 32, depth 2), seed 0, eval mode, informative CAMs."""
    return seeded("vit-tiny-test")


@pytest.fixture
def images(cifar_batch):
    return cifar_batch[0][:8].clone(), cifar_batch[1][:8].clone()


# ------------------------------------------------------------------------------------- maps = pytorch-grad-cam


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam"])
@pytest.mark.parametrize("use_labels", [False, True])
def test_equals_pytorch_grad_cam_on_tiny_vit(vit, images, method, use_labels):
    x, labels = images
    targets = labels if use_labels else None
    layer = vit.blocks[-1].norm1
    ours = cam_maps(vit, x, target_layer=layer, method=method, targets=targets)
    reference = library_maps(vit, layer, x, method, tutorial_reshape(1, 4, 4), targets)
    assert ours.shape == (8, 32, 32) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5, rtol=0)
    # Informative maps, not all empty: every one for the predicted class (a random net's true-label class often
    # gets only negative contributions, so only some of those).
    informative = ours.amax(dim=(1, 2)) > 0.99
    assert informative.all() if targets is None else informative.any()


def test_equals_pytorch_grad_cam_on_vit_cifar(images):
    """The CIFAR ViT of benchmarks.models (patch 4: 8x8 grid), default layer blocks[-1].norm1."""
    model = seeded("vit-cifar")
    x, _ = images
    ours = cam_maps(model, x[:4])
    reference = library_maps(model, model.blocks[-1].norm1, x[:4], "gradcam", tutorial_reshape(1, 8, 8))
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5, rtol=0)
    assert ours.amax(dim=(1, 2)).min() > 0.99
    # Unresized: the layer's own 8x8 grid.
    assert cam_maps(model, x[:4], resize=False).shape == (4, 8, 8)


@pytest.mark.parametrize("reg_tokens, class_token, pool", [(2, True, "token"), (0, False, "avg")])
def test_prefix_tokens_follow_the_model(images, reg_tokens, class_token, pool):
    """Register tokens (num_prefix_tokens = 3) and a ViT without class token (0): the prefix comes from the model."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                              mlp_ratio=2.0, reg_tokens=reg_tokens, class_token=class_token, global_pool=pool).eval()
    x, _ = images
    ours = cam_maps(model, x)
    reference = library_maps(model, model.blocks[-1].norm1, x, "gradcam",
                             tutorial_reshape(model.num_prefix_tokens, 4, 4))
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5, rtol=0)
    assert (ours.amax(dim=(1, 2)) > 0.99).float().mean() >= 0.75  # (timm's init happens to be informative here)


def test_library_method_gets_the_token_reshape(vit, images):
    x, labels = images
    ours = cam_maps(vit, x, method="gradcam++", targets=labels)
    reference = library_maps(vit, vit.blocks[-1].norm1, x, "gradcam++", tutorial_reshape(1, 4, 4), labels)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6, rtol=0)
    # The public reshape is the tutorial's.
    tokens = torch.randn(2, 17, 32)
    assert torch.equal(token_reshape_transform(vit, vit.blocks[-1].norm1)(tokens), tutorial_reshape(1, 4, 4)(tokens))


# --------------------------------------------------------------------------------------------- the ViT layer


def test_default_layer_is_last_block_norm1(vit, images):
    x, _ = images
    assert layer_candidates(vit, None) == [vit.blocks[-1].norm1]
    assert CAM_LAYERS["vit-tiny-test"] == "blocks.1.norm1"
    # Inside a normalisation-style wrapper too.
    wrapped = nn.Sequential(nn.Identity(), vit)
    assert layer_candidates(wrapped, None)[0] is vit.blocks[-1].norm1
    assert torch.equal(cam_maps(wrapped, x), cam_maps(vit, x, target_layer="blocks.1.norm1"))
    # Other token layers work and differ.
    assert not torch.allclose(cam_maps(vit, x), cam_maps(vit, x, target_layer="blocks.0"))


@pytest.mark.parametrize("name, parameters, tokens", [("vit-cifar", 2_693_578, (65, 192)),
                                                      ("vit-tiny-test", 24_234, (17, 32))])
def test_registered_vits(name, parameters, tokens, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("building a model must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = seeded(name, informative=False)
    assert isinstance(model, VisionTransformer)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert layer_candidates(model, None)[0] is model.get_submodule(CAM_LAYERS[name])
    out = {}
    handle = model.get_submodule(CAM_LAYERS[name]).register_forward_hook(lambda m, i, o: out.setdefault("t", o))
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32))
    handle.remove()
    assert logits.shape == (2, 10) and tuple(out["t"].shape) == (2, *tokens)
    assert build_model(name, 100).head.out_features == 100


def test_batched_equals_per_image_and_state_untouched(vit, images):
    x, _ = images
    together = cam_maps(vit, x[:4])
    one_by_one = torch.cat([cam_maps(vit, x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)
    vit.train()
    vit.head.weight.grad = torch.full_like(vit.head.weight, 3.0)
    cam_maps(vit, x[:2])
    assert vit.training and torch.equal(vit.head.weight.grad, torch.full_like(vit.head.weight, 3.0))
    assert vit.blocks[0].norm1.weight.grad is None


class TokenNet(nn.Module):
    """A token model that is not timm's: conv patchify -> (B, N, C) tokens -> linear mixer -> mean -> head."""

    def __init__(self, grid=True, drop=0):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        if grid:
            self.patch_embed.grid_size = (4, 4)
        self.mixer = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)
        self.drop = drop

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)[:, self.drop:]
        return self.head(torch.tanh(self.mixer(tokens)).mean(dim=1))


def test_layers_without_tokens_of_a_grid_are_refused(vit, images):
    x, _ = images
    with pytest.raises(ValueError, match=r"target_layer 'head'.*\(8, 10\).*neither a feature map.*nor tokens"):
        cam_maps(vit, x, target_layer="head")
    with pytest.raises(ValueError, match=r"target_layer 'fc_norm'"):
        cam_maps(vit, x, target_layer=vit.fc_norm)  # the pooled class token: (B, C)
    with pytest.raises(ValueError, match=r"target_layer 'head'"):
        cam_maps(vit, x, target_layer="head", method="gradcam++")  # the library path says the same
    # A Linear inside a block's MLP works on tokens (B, 17, 64): those are tokens of the grid, accepted.
    maps = cam_maps(vit, x[:2], target_layer="blocks.1.mlp.fc1")
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_token_count_must_fit_the_grid(images):
    x, _ = images
    torch.manual_seed(0)
    # Known grid (4x4), 15 tokens: not the grid plus a prefix.
    with pytest.raises(ValueError, match=r"target_layer 'mixer'.*15 tokens are not the model's 4x4 patch grid"):
        cam_maps(TokenNet(grid=True, drop=1), x, target_layer="mixer")
    # No grid known: 15 tokens fill no square grid (after 1 or 0 prefix tokens).
    with pytest.raises(ValueError, match=r"target_layer 'mixer'.*do not fill a square patch grid"):
        cam_maps(TokenNet(grid=False, drop=1), x, target_layer="mixer")
    # 16 tokens, no grid attribute: the square check finds 4x4, no prefix; the same maps as the library's.
    model = TokenNet(grid=False, drop=0).eval()
    np.testing.assert_allclose(cam_maps(model, x, target_layer="mixer").numpy(),
                               library_maps(model, model.mixer, x, "gradcam", tutorial_reshape(0, 4, 4)), atol=1e-5)


# ------------------------------------------------------------------------------------------------- attacks


def test_attacks_run_on_the_vit(vit, images):
    x, y = images
    pixel = PixelAG(vit, eps=EPS, eps_low=EPS_LOW, steps=2)
    adv = pixel(x, y)
    delta = (adv - x).abs()
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1 and delta.max() <= EPS + 1e-6
    assert 0 < float(pixel.last_important_fraction) < 1  # the CAM split the budget
    assert (delta > EPS_LOW + 1e-6).any()  # the important pixels used more than eps_low

    mma = MMA(vit, eps=EPS, eps_low=EPS_LOW, steps=2, k=2)
    assert (mma(x, y) - x).abs().max() <= EPS + 1e-6 and 0 < float(mma.last_important_fraction) < 1

    mma_eval = MMAEval(vit, eps=EPS, eps_low=EPS_LOW, steps=2, k=2)
    assert (mma_eval(x, y) - x).abs().max() <= EPS + 1e-6 and mma_eval.last_robust.shape == (8,)

    pgd = torchattacks.PGD(vit, eps=EPS, alpha=2 / 255, steps=2)
    assert (pgd(x, y) - x).abs().max() <= EPS + 1e-6


def test_autoattack_runs_on_the_vit(vit, images):
    from pyautoattack import AutoAttack

    x, y = images
    adversary = AutoAttack(vit, norm="Linf", eps=EPS, version="custom", attacks=["apgd-ce"], device="cpu", seed=0)
    adversary.verbose = False
    adversary.apgd.n_iter, adversary.apgd.n_restarts = 3, 1
    adv = adversary.run_standard_evaluation(x, y, batch_size=8)[0]
    assert adv.shape == x.shape and (adv - x).abs().max() <= EPS + 1e-5


# ------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def train_data(data_dir):
    images, labels = load_cifar10(data_dir, train=True, n=64, download=False)
    return images.numpy(), labels.numpy()


@pytest.mark.parametrize("method", METHODS)
def test_one_epoch_of_each_method_on_the_vit(train_data, method):
    x, y = train_data
    model = seeded("vit-tiny-test").train()
    start = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0.0, 1.0), optimizer=optimizer)
    trainer = AdversarialTrainerPARTPyTorch(classifier, method=method, eps=EPS, eps_low=EPS_LOW, steps=2, burn_in=0,
                                            verbose=False)
    trainer.fit(x, y, batch_size=32, nb_epochs=1)
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters())]
    assert any(changed) and all(torch.isfinite(p).all() for p in model.parameters())
    (record,) = trainer.history
    fraction = record["important_fraction"]
    if method.startswith("part"):
        # The CAM budget was used: few degenerate maps (at timm's own init about 62 of 64 are), a split budget.
        assert record["phase"] == "part" and record["degenerate_cams"] <= 8 and 0.05 < fraction < 0.5
    elif method == "standard":  # no attack: no budget
        assert fraction is None and record["adversarial_acc"] is None and record["natural_acc"] is not None
    else:
        assert fraction == 1.0
