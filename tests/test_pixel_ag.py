"""PixelAG against torchattacks.PGD, a closed-form linear case, TRADES' published inner loop and the CAM budget."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

from torchattacks_part import PixelAG, budget_map, cam_maps

EPS, EPS_LOW, ALPHA = 8 / 255, 7 / 255, 2 / 255


def quadrant_budget(n, low=6 / 255, high=12 / 255):
    """Figure 1 of the paper: the upper-left quarter at 6/255, the rest at 12/255."""
    budget = torch.full((n, 1, 32, 32), high)
    budget[:, :, :16, :16] = low
    return budget


@pytest.mark.parametrize("random_start", [True, False])
def test_equal_budgets_reproduce_torchattacks_pgd_exactly(tiny_model, cifar_batch, random_start):
    images, labels = cifar_batch
    torch.manual_seed(7)
    ours = PixelAG(tiny_model, eps=EPS, eps_low=EPS, steps=5, random_start=random_start)(images, labels)
    torch.manual_seed(7)
    reference = torchattacks.PGD(tiny_model, eps=EPS, alpha=ALPHA, steps=5, random_start=random_start)(images, labels)
    assert torch.equal(ours, reference)


def test_equal_budgets_reproduce_pgd_on_resnet18(resnet18, cifar_batch):
    images, labels = cifar_batch
    torch.manual_seed(3)
    ours = PixelAG(resnet18, eps_low=EPS, steps=3)(images[:8], labels[:8])
    torch.manual_seed(3)
    assert torch.equal(ours, torchattacks.PGD(resnet18, steps=3)(images[:8], labels[:8]))


def test_closed_form_on_a_linear_model(cifar_batch):
    """For a 2-class linear model the CE gradient's sign is constant: the optimum is x + budget * sign(w_other - w_y)."""
    images, _ = cifar_batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    labels = torch.zeros(len(images), dtype=torch.long)
    budget = quadrant_budget(len(images))
    adv = PixelAG(model, eps=12 / 255, eps_low=12 / 255, alpha=1 / 255, steps=30)(images, labels, budget=budget)
    direction = (model[1].weight[1] - model[1].weight[0]).sign().view(1, 3, 32, 32)
    expected = torch.clamp(images + budget * direction, 0, 1)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_stays_in_each_entrys_box_and_uses_it(resnet18, cifar_batch):
    images, labels = cifar_batch
    attack = PixelAG(resnet18, steps=10)
    adv = attack(images, labels)
    budget = budget_map(cam_maps(resnet18, images), EPS, EPS_LOW)
    delta = (adv - images).abs()
    assert (delta <= budget + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1
    # The budget is used, not just respected: both bands reach their bound somewhere.
    important = (budget == EPS).expand_as(delta)
    assert delta[important].max() > EPS - 1e-6
    assert delta[~important].max() > EPS_LOW - 1e-6
    assert torch.isclose(attack.last_important_fraction, (budget == EPS).float().mean())
    assert attack.last_degenerate.item() == 0


def test_attack_budget_is_the_cam_budget_of_the_attacked_model(resnet18, cifar_batch):
    images, _ = cifar_batch
    for rule in ("cam", "jet"):
        attack = PixelAG(resnet18, rule=rule, cam="xgradcam")
        maps = cam_maps(resnet18, images, method="xgradcam", resize=rule != "jet")  # jet resizes as released
        expected = budget_map(maps, EPS, EPS_LOW, rule, size=images.shape[-2:])
        assert torch.equal(attack.budget(images), expected)


def test_given_budget_replaces_the_cam(tiny_model, cifar_batch):
    images, labels = cifar_batch
    budget = quadrant_budget(len(images))
    torch.manual_seed(1)
    adv = PixelAG(tiny_model, eps=12 / 255, eps_low=12 / 255, steps=10)(images, labels, budget=budget)
    delta = (adv - images).abs()
    assert delta[:, :, :16, :16].max() <= 6 / 255 + 1e-6
    assert delta[:, :, 16:, 16:].max() > 6 / 255 + 1 / 255


def test_random_start_is_uniform_in_each_box(tiny_model, cifar_batch):
    """With one tiny step the result is the random start, which must fill [-budget_i, budget_i] per entry."""
    images, labels = cifar_batch
    images = images.clamp(0.1, 0.9)  # keep away from the [0, 1] clamp
    budget = quadrant_budget(len(images))
    adv = PixelAG(tiny_model, eps=12 / 255, eps_low=12 / 255, alpha=1e-9, steps=1)(images, labels, budget=budget)
    delta = adv - images
    low, high = delta[:, :, :16, :16], delta[:, :, 16:, :]
    assert low.abs().max() <= 6 / 255 + 1e-6 and low.abs().max() > 0.95 * 6 / 255
    assert high.abs().max() > 0.95 * 12 / 255
    assert abs(low.mean()) < 1e-3 and abs(low.abs().mean() - 3 / 255) < 2e-3  # U(-b, b): E|d| = b/2


def trades_inner_reference(model, x, eps, alpha, steps):
    """The inner loop of TRADES (Zhang et al. 2019, trades.py), with a per-entry eps."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    x_adv = x.detach() + 0.001 * torch.randn(x.shape).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def test_kl_loss_is_trades_inner_maximisation(tiny_model, cifar_batch):
    images, labels = cifar_batch
    budget = quadrant_budget(len(images), low=EPS_LOW, high=EPS)
    torch.manual_seed(5)
    ours = PixelAG(tiny_model, loss="kl", steps=5)(images, labels, budget=budget)
    torch.manual_seed(5)
    reference = trades_inner_reference(tiny_model, images, budget, ALPHA, 5)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert (ours - images).abs().max() > 0  # it moved


def test_attack_breaks_a_non_robust_model(resnet18, cifar_batch):
    images, labels = cifar_batch
    clean = (resnet18(images).argmax(1) == labels).float().mean()
    adv = PixelAG(resnet18, steps=10)(images, labels)
    robust = (resnet18(adv).argmax(1) == labels).float().mean()
    assert clean > 0.8 and robust < 0.2


def test_normalization_used(tiny_model, cifar_batch):
    """An attack told about normalisation equals one on a model that normalises inside."""
    images, labels = cifar_batch
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    class Normalized(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net((x - m) / s)

    torch.manual_seed(2)
    inside = PixelAG(Normalized(tiny_model), steps=4)(images, labels)
    attack = PixelAG(tiny_model, steps=4)
    attack.set_normalization_used(mean, std)
    torch.manual_seed(2)
    outside = attack((images - m) / s, labels) * s + m  # torchattacks takes and returns normalised images
    torch.testing.assert_close(outside, inside, atol=1e-5, rtol=0)


def test_model_mode_restored(tiny_model, cifar_batch):
    images, labels = cifar_batch
    tiny_model.train()
    PixelAG(tiny_model, steps=2)(images[:4], labels[:4])
    assert tiny_model.training


def test_adaptive_preset(resnet18):
    attack = PixelAG.adaptive(resnet18)
    assert (attack.eps, attack.eps_low, attack.steps, attack.alpha) == (12 / 255, 8 / 255, 20, 2 / 255)
    assert PixelAG.adaptive(resnet18, steps=100).steps == 100


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(eps=-1 / 255), "eps"),
        (dict(eps_low=-1 / 255), "eps_low"),
        (dict(alpha=-1 / 255), "alpha"),
        (dict(alpha=0), "alpha"),
        (dict(eps=4 / 255, eps_low=7 / 255), "eps_low"),
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(cam="gradcam+++"), "cam"),
        (dict(rule="box"), "rule"),
        (dict(loss="mse"), "loss"),
        (dict(random_start="yes"), "random_start"),
        (dict(start="normal"), "start"),
        (dict(keep="best"), "keep"),
        (dict(full_eps_on="everywhere"), "full_eps_on"),
    ],
)
def test_bad_parameters(tiny_model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        PixelAG(tiny_model, **kwargs)


def test_no_conv_layer_when_a_cam_is_needed():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ValueError, match="target_layer"):
        PixelAG(linear)
    PixelAG(linear, eps_low=EPS)  # no CAM needed: fine


def test_bad_inputs(tiny_model, cifar_batch):
    images, labels = cifar_batch
    attack = PixelAG(tiny_model, steps=1)
    nan_images = images.clone()
    nan_images[0, 0, 0, 0] = float("nan")
    cases = [
        ((images * 1.5, labels), "images"),
        ((images - 0.5, labels), "images"),
        ((nan_images, labels), "images"),
        ((images[0], labels), "images"),
        ((images, labels[:5]), "labels"),
        ((images, labels[:, None]), "labels"),
        ((images, labels.float()), "labels"),
        ((images, torch.full_like(labels, 10)), "labels"),
        ((images, torch.full_like(labels, -1)), "labels"),
    ]
    for args, name in cases:
        with pytest.raises(ValueError, match=name):
            attack(*args)
    for budget in (torch.full((len(images), 1, 16, 16), EPS), torch.full((3, 1, 32, 32), EPS),
                   torch.full((len(images), 32, 32), EPS), torch.full((len(images), 1, 32, 32), -EPS)):
        with pytest.raises(ValueError, match="budget"):
            attack(images, labels, budget=budget)


def test_normalization_rounding_at_black_pixels(tiny_model, cifar_batch):
    """torchattacks un-normalises z * std + mean, which can land a hair below 0 for a black pixel."""
    images, labels = cifar_batch
    images = images.clone()
    images[:, :, 0, 0] = 0.0
    mean, std = [0.793160617351532] * 3, [0.3570721447467804] * 3
    attack = PixelAG(tiny_model, steps=1)
    attack.set_normalization_used(mean, std)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    adv = attack((images - m) / s, labels) * s + m
    assert adv.shape == images.shape and torch.isfinite(adv).all()


def test_budget_outside_a_call_sees_normalised_input(tiny_model, cifar_batch):
    images, _ = cifar_batch
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    attack = PixelAG(tiny_model)
    attack.set_normalization_used(mean, std)
    expected = budget_map(cam_maps(tiny_model, (images - m) / s), EPS, EPS_LOW)
    assert torch.equal(attack.budget(images), expected)


def _iterates(model, images, labels, steps):
    """Every iterate of torchattacks.PGD-k (k = 0..steps, same seed each time): the reference for "any iterate"."""
    out = []
    for k in range(steps + 1):
        torch.manual_seed(11)
        if k == 0:  # the random start itself, drawn as torchattacks.PGD draws it
            noise = torch.empty_like(images).uniform_(-EPS, EPS)
            out.append(torch.clamp(images + noise, 0, 1))
        else:
            out.append(torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=k)(images, labels))
    return out


def test_keep_misclassified_counts_any_iterate(tiny_model, cifar_batch):
    """Broken by "misclassified" = misclassified at some torchattacks.PGD iterate; the last iterate is PGD's own."""
    images, labels = cifar_batch
    steps = 6
    attack = PixelAG(tiny_model, eps_low=EPS, steps=steps, keep="misclassified")
    torch.manual_seed(11)
    adv = attack(images, labels)
    iterates = _iterates(tiny_model, images, labels, steps)
    assert torch.equal(attack.last_iterate, iterates[-1])
    with torch.no_grad():
        wrong = torch.stack([tiny_model(x).argmax(1) != labels for x in iterates])  # (steps + 1, N)
        broken = tiny_model(adv).argmax(1) != labels
    assert torch.equal(broken, wrong.any(dim=0))
    assert bool((broken >= wrong[-1]).all())
    # Each broken image carries its FIRST misclassified iterate; the others the last one.
    first = wrong.float().argmax(dim=0)
    for i in range(len(images)):
        expected = iterates[int(first[i])][i] if broken[i] else iterates[-1][i]
        assert torch.equal(adv[i], expected)
    assert (adv - images).abs().max() <= EPS + 1e-6


def test_keep_misclassified_is_never_weaker(resnet18, cifar_batch):
    images, labels = cifar_batch[0][:16], cifar_batch[1][:16]
    torch.manual_seed(5)
    adv = PixelAG(resnet18, eps=1 / 255, eps_low=1 / 255, alpha=0.5 / 255, steps=5, keep="misclassified")(images,
                                                                                                        labels)
    torch.manual_seed(5)
    last = torchattacks.PGD(resnet18, eps=1 / 255, alpha=0.5 / 255, steps=5)(images, labels)
    with torch.no_grad():
        assert (resnet18(adv).argmax(1) == labels).sum() <= (resnet18(last).argmax(1) == labels).sum()


def test_gaussian_start_is_the_official_mart_start(tiny_model, cifar_batch):
    """start="gaussian" with CE: x + 0.001 N(0, 1), then the steps (the official MART inner loop)."""
    images, labels = cifar_batch
    torch.manual_seed(2)
    ours = PixelAG(tiny_model, eps_low=EPS, steps=3, start="gaussian")(images, labels)
    torch.manual_seed(2)
    x = images + 0.001 * torch.randn_like(images)
    for _ in range(3):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(tiny_model(x), labels), x)
        x = torch.min(torch.max(x.detach() + ALPHA * grad.sign(), images - EPS), images + EPS).clamp(0, 1)
    assert torch.allclose(ours, x, atol=1e-7)


def test_background_inverts_the_cam_budget(resnet18, cifar_batch):
    images, labels = cifar_batch[0][:8], cifar_batch[1][:8]
    important = budget_map(cam_maps(resnet18, images), 1.0, 0.0) == 1.0
    attack = PixelAG.background(resnet18, steps=1)
    budget = attack.budget(images)
    assert torch.equal(budget == 8 / 255, important.expand_as(budget))
    assert torch.equal(budget == 12 / 255, ~important.expand_as(budget))
