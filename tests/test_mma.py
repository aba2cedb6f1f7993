"""MMA against the published minimum-margin attack loop (Gao et al., ICML 2022), run target by target."""

import pytest
import torch
import torch.nn as nn

from torchattacks_part import MMA, budget_map, cam_maps

EPS, ALPHA = 8 / 255, 2 / 255


def mma_reference(model, x, y, start, eps, alpha, steps, k, kappa=50.0):
    """The authors' loop, target by target: from one shared start, PGD on -max(z_y - z_t + kappa, 0) per target,
    keep per image the run with the largest final z_t - z_y. ``eps`` may be a per-entry tensor."""
    with torch.no_grad():
        logits = model(x)
    onehot = torch.zeros_like(logits).scatter_(1, y[:, None], 1.0)
    index = torch.argsort(logits - 10000 * onehot)[:, logits.shape[1] - k:]  # ascending: last is most likely
    runs, margins = [], []
    for i in range(k):
        target = index[:, i]
        x_adv = start.clone()
        for _ in range(steps):
            x_adv.requires_grad_()
            out = model(x_adv)
            real, other = out.gather(1, y[:, None])[:, 0], out.gather(1, target[:, None])[:, 0]
            loss = -torch.clamp(real - other + kappa, min=0).sum()
            grad = torch.autograd.grad(loss, x_adv)[0]
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            out = model(x_adv)
        margins.append(out.gather(1, target[:, None])[:, 0] - out.gather(1, y[:, None])[:, 0])
        runs.append(x_adv)
    best = torch.stack(margins, 1).argmax(1)
    return torch.stack(runs, 0)[best, torch.arange(len(x))], torch.stack(margins, 1)


@pytest.mark.parametrize("k", [1, 3])
def test_matches_published_loop(tiny_model, cifar_batch, k):
    images, labels = cifar_batch
    ours = MMA(tiny_model, steps=6, k=k, random_start=False)(images, labels)
    reference, _ = mma_reference(tiny_model, images, labels, images, EPS, ALPHA, 6, k)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_matches_published_loop_with_random_start(tiny_model, cifar_batch):
    images, labels = cifar_batch
    torch.manual_seed(4)
    ours = MMA(tiny_model, steps=5)(images, labels)
    torch.manual_seed(4)
    start = torch.clamp(images + torch.empty_like(images).uniform_(-EPS, EPS), 0, 1)  # torchattacks.PGD's start
    reference, _ = mma_reference(tiny_model, images, labels, start, EPS, ALPHA, 5, 3)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_matches_published_loop_with_a_cam_budget(resnet18, cifar_batch):
    images, labels = cifar_batch
    images, labels = images[:12], labels[:12]
    budget = budget_map(cam_maps(resnet18, images), 12 / 255, 8 / 255)
    ours = MMA(resnet18, eps=12 / 255, steps=4, random_start=False)(images, labels, budget=budget)
    reference, _ = mma_reference(resnet18, images, labels, images, budget, ALPHA, 4, 3)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert ((ours - images).abs() <= budget + 1e-6).all()


def test_random_start_and_budget(tiny_model, cifar_batch):
    images, labels = cifar_batch
    attack = MMA(tiny_model, eps=8 / 255, eps_low=4 / 255, steps=5)
    torch.manual_seed(0)
    adv = attack(images, labels)
    budget = attack.budget(images)
    assert set(torch.unique(budget).tolist()) == {torch.tensor(8 / 255).item(), torch.tensor(4 / 255).item()}
    assert ((adv - images).abs() <= budget + 1e-6).all()
    torch.manual_seed(0)
    assert torch.equal(attack(images, labels), adv)  # seeded: deterministic


def test_breaks_a_non_robust_model_at_least_as_well_as_the_worst_target(resnet18, cifar_batch):
    images, labels = cifar_batch
    images, labels = images[:16], labels[:16]
    adv = MMA(resnet18, steps=10)(images, labels)
    with torch.no_grad():
        robust = (resnet18(adv).argmax(1) == labels).float().mean()
    assert robust < 0.2


def test_keeps_the_target_with_the_largest_margin(tiny_model, cifar_batch):
    images, labels = cifar_batch
    _, margins = mma_reference(tiny_model, images, labels, images, EPS, ALPHA, 6, 3)
    ours = MMA(tiny_model, steps=6, random_start=False)(images, labels)
    with torch.no_grad():
        out = tiny_model(ours)
    # The kept image's margin towards one of the k targets is the best final margin of the k runs.
    with torch.no_grad():
        natural = tiny_model(images)
    targets = natural.scatter(1, labels[:, None], float("-inf")).topk(3, dim=1).indices
    kept = out.gather(1, targets) - out.gather(1, labels[:, None])
    best = margins.max(1).values
    assert ((kept - best[:, None]).abs() < 1e-4).any(dim=1).all()
    assert (kept.max(1).values >= best - 1e-4).all()


def test_adaptive_preset(resnet18):
    attack = MMA.adaptive(resnet18, steps=40)
    assert (attack.eps, attack.eps_low, attack.steps, attack.k, attack.kappa) == (12 / 255, 8 / 255, 40, 3, 50.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(k=0), "k"), (dict(kappa=-1.0), "kappa"), (dict(eps=-0.1), "eps"), (dict(eps_low=0.5), "eps_low"),
     (dict(steps=0), "steps"), (dict(alpha=-1.0), "alpha")],
)
def test_bad_parameters(tiny_model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        MMA(tiny_model, **kwargs)


def test_too_many_targets(tiny_model, cifar_batch):
    images, labels = cifar_batch
    with pytest.raises(ValueError, match="k must be in"):
        MMA(tiny_model, k=10, steps=1)(images, labels)


def test_uniform_budget_needs_no_conv_layer(cifar_batch):
    images, labels = cifar_batch
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    adv = MMA(linear, steps=2)(images, labels)
    assert ((adv - images).abs() <= EPS + 1e-6).all()
