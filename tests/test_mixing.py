"""MixedClassifier (Bai et al., L4DC 2024): the mixture by hand, alpha 0 and 1, gradients, attacks on the mixture
(torchattacks, ART), validation."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks
from art.estimators.classification import PyTorchClassifier

from benchmarks.models import TinyCNN
from torchattacks_part import MixedClassifier

EPS = 8 / 255


@pytest.fixture
def branches():
    """Two different tiny CNNs (seeds 0 and 1), eval mode."""
    torch.manual_seed(0)
    accurate = TinyCNN().eval()
    torch.manual_seed(1)
    robust = TinyCNN().eval()
    return accurate, robust


@pytest.fixture
def images(cifar_batch):
    return cifar_batch[0][:8].clone(), cifar_batch[1][:8].clone()


def test_mixture_of_probabilities_by_hand(branches, images):
    accurate, robust = branches
    x, _ = images
    for alpha in (0.1, 0.5, 0.83):
        mixed = MixedClassifier(accurate, robust, alpha)
        with torch.no_grad():
            out = mixed(x)
            expected = (1 - alpha) * F.softmax(accurate(x), 1) + alpha * F.softmax(robust(x), 1)
        assert out.shape == (8, 10)
        torch.testing.assert_close(out.exp(), expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out.exp().sum(1), torch.ones(8), rtol=0, atol=1e-5)
        # The output is log-probabilities: softmax (what attacks and ART take as logits) gives the mixture back.
        torch.testing.assert_close(F.softmax(out, 1), expected, rtol=1e-5, atol=1e-7)


def test_extreme_logits_stay_finite(images):
    """Logits of magnitude 1e4: the naive log of mixed softmaxes underflows to -inf, the logsumexp does not."""
    x, _ = images
    torch.manual_seed(0)
    big = nn.Sequential(TinyCNN(), nn.Identity())
    with torch.no_grad():
        big[0].head[2].weight.mul_(1e4)
    mixed = MixedClassifier(big, TinyCNN().eval(), 0.5).eval()
    xg = x.clone().requires_grad_(True)
    out = mixed(xg)
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.logsumexp(1).sum() + out[:, 0].sum(), xg)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("alpha, branch", [(0, "accurate"), (1, "robust"), (0.0, "accurate"), (1.0, "robust")])
def test_alpha_zero_and_one_are_one_branch(branches, images, alpha, branch):
    accurate, robust = branches
    x, y = images
    mixed = MixedClassifier(accurate, robust, alpha)
    one = {"accurate": accurate, "robust": robust}[branch]
    xg = x.clone().requires_grad_(True)
    out = mixed(xg)
    torch.testing.assert_close(out, F.log_softmax(one(x), 1), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    xr = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(F.cross_entropy(F.log_softmax(one(xr), 1), y), xr)
    torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gradcheck_float64(alpha):
    torch.manual_seed(0)
    accurate = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    robust = nn.Sequential(nn.Linear(5, 4)).double()
    mixed = MixedClassifier(accurate, robust, alpha)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mixed, (x,), eps=1e-6, atol=1e-7)
    assert mixed(x).dtype == torch.float64


def test_attack_gradient_reaches_both_branches(branches, images):
    accurate, robust = branches
    x, y = images
    mixed = MixedClassifier(accurate, robust, 0.4)
    F.cross_entropy(mixed(x), y).backward()
    for branch in (accurate, robust):
        grads = [p.grad for p in branch.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_pgd_attacks_the_mixture_itself(resnet18, images):
    """torchattacks.PGD on the mixture (accurate: the pretrained ResNet-18; robust: a random tiny CNN) raises the
    mixture's loss well above clean and above PGD run on the robust branch and transferred.

    (PGD run on the accurate branch and transferred is about as strong, even a little stronger: where the
    ResNet is confident its softmax saturates, so the mixture's gradient leans on the robust branch; measured on 16
    images, PGD-10 on the mixture left 1 of 16 correct, PGD-10 transferred from the ResNet none. An evaluation
    of a mixture should add that transfer attack to the attacks on the mixture itself.)
    """
    x, y = images[0][:4], images[1][:4]
    torch.manual_seed(0)
    robust = TinyCNN().eval()
    mixed = MixedClassifier(resnet18, robust, 0.5).eval()

    def mixture_loss(adv):
        with torch.no_grad():
            out = mixed(adv)
        return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()

    def pgd(model):
        torch.manual_seed(0)
        return torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=3)(x, y)

    adv = pgd(mixed)
    assert (adv - x).abs().max() <= EPS + 1e-6
    (direct, direct_acc), (clean, clean_acc) = mixture_loss(adv), mixture_loss(x)
    transferred, _ = mixture_loss(pgd(robust))
    assert direct > clean + 1 and direct > transferred + 1
    assert clean_acc == 1.0 and direct_acc <= 0.25
    assert not mixed.training and not resnet18.training  # torchattacks restored eval mode


def test_autoattack_attacks_the_mixture(branches, images):
    """pyautoattack's APGD queries the mixture: every gradient step runs both branches with a graph to the input."""
    from pyautoattack import AutoAttack

    x, _ = images
    mixed = MixedClassifier(*branches, 0.5).eval()
    with torch.no_grad():
        y = mixed(x).argmax(1)  # every image correct on clean data, so APGD attacks them all
    calls = {"accurate": 0, "robust": 0}
    hooks = [branch.register_forward_hook(
        lambda module, inputs, output, name=name: calls.__setitem__(name, calls[name] + inputs[0].requires_grad))
        for name, branch in (("accurate", mixed.accurate), ("robust", mixed.robust))]
    adversary = AutoAttack(mixed, norm="Linf", eps=EPS, version="custom", attacks=["apgd-ce"], device="cpu", seed=0)
    adversary.verbose = False
    adversary.apgd.n_iter, adversary.apgd.n_restarts = 3, 1
    try:
        adv = adversary.run_standard_evaluation(x, y, batch_size=8)[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert adv.shape == x.shape and (adv - x).abs().max() <= EPS + 1e-5
    assert calls["accurate"] == calls["robust"] >= 3


def test_inside_an_art_classifier(branches, images):
    accurate, robust = branches
    x, y = images
    mixed = MixedClassifier(accurate, robust, 0.5)
    classifier = PyTorchClassifier(mixed, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0.0, 1.0))
    predictions = classifier.predict(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(predictions, mixed(x).numpy(), rtol=1e-5, atol=1e-6)
    one_hot = np.eye(10, dtype=np.float32)[y.numpy()]
    gradient = classifier.loss_gradient(x.numpy(), one_hot)
    xg = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(F.cross_entropy(mixed(xg), y), xg)
    assert gradient.shape == x.shape and np.isfinite(gradient).all()
    np.testing.assert_allclose(gradient, reference.numpy(), rtol=1e-4, atol=1e-7)


def test_module_behaviour(branches):
    accurate, robust = branches
    mixed = MixedClassifier(accurate, robust, 0.25)
    assert mixed.number_forward_passes == 2 and MixedClassifier.number_forward_passes == 2
    mixed.train()
    assert accurate.training and robust.training
    mixed.eval()
    assert not accurate.training and not robust.training
    assert set(mixed.state_dict()) == {f"accurate.{k}" for k in accurate.state_dict()} | {
        f"robust.{k}" for k in robust.state_dict()}
    assert "alpha=0.25" in repr(mixed)
    mixed.alpha = 1
    assert mixed.alpha == 1.0 and isinstance(mixed.alpha, float)
    with pytest.raises(ValueError, match="alpha"):
        mixed.alpha = 2
    assert mixed.alpha == 1.0


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf"), -float("inf"), "0.5", True, False, None,
                                   torch.tensor(0.5), [0.5]])
def test_bad_alpha(branches, alpha):
    with pytest.raises(ValueError, match="alpha"):
        MixedClassifier(*branches, alpha)


def test_bad_branches(branches):
    accurate, robust = branches
    with pytest.raises(TypeError, match="accurate"):
        MixedClassifier(lambda x: x, robust, 0.5)
    with pytest.raises(TypeError, match="robust"):
        MixedClassifier(accurate, "resnet18", 0.5)


def test_mismatched_class_counts(branches, images):
    accurate, _ = branches
    x, _ = images
    torch.manual_seed(2)
    other = TinyCNN(num_classes=7).eval()
    # At the first forward...
    mixed = MixedClassifier(accurate, other, 0.5)
    with pytest.raises(ValueError, match=r"same number of classes.*\(8, 10\).*\(8, 7\)"):
        mixed(x)
    # ...or at construction, given the input shape: one eval-mode no-grad pass that leaves the modes alone.
    accurate.train()
    before = copy.deepcopy(accurate.state_dict())
    with pytest.raises(ValueError, match="same number of classes"):
        MixedClassifier(accurate, other, 0.5, input_shape=(3, 32, 32))
    assert accurate.training and not other.training
    assert all(torch.equal(v, before[k]) for k, v in accurate.state_dict().items())  # BN statistics untouched
    assert MixedClassifier(accurate, TinyCNN(), 0.5, input_shape=(3, 32, 32)).alpha == 0.5
    with pytest.raises(ValueError, match="input_shape"):
        MixedClassifier(accurate, TinyCNN(), 0.5, input_shape=(3, 0, 32))
    # A branch that does not return (B, K) logits is named.
    with pytest.raises(ValueError, match="robust must return logits"):
        MixedClassifier(accurate, nn.Identity(), 0.5)(x)
    assert math.isclose(MixedClassifier(accurate, accurate, 0.5).eval()(x).exp().sum(1).mean().item(), 1.0,
                        rel_tol=1e-5)
