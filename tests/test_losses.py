"""The trainer's losses against their published formulas, written here independently with numpy loops.

Outer losses: TRADES (Zhang et al., ICML 2019, trades.py) and MART (Wang et al., ICLR 2020, mart.py), on random
logits. Then, inside the trainer: which inner loss each method's attack ascends (CE or TRADES' KL, with PART's
per-pixel budget), and that the outer loss of a training step is the plain formula on the step's natural and
adversarial logits, the budget map nowhere in it.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from art.estimators.classification import PyTorchClassifier

from art_part.trainer import METHODS, AdversarialTrainerPARTPyTorch
from torchattacks_part import PixelAG, budget_map, cam_maps
from torchattacks_part.losses import mart_loss, trades_kl, trades_loss

EPS, EPS_LOW, ALPHA = 8 / 255, 4 / 255, 2 / 255
#: What the paper and the authors' code prescribe, written out here (not read from the trainer's METHODS table).
INNER = {"at": "ce", "trades": "kl", "mart": "ce", "part": "ce", "part-t": "kl", "part-m": "ce"}
OUTER = {"at": "ce", "trades": "trades", "mart": "mart", "part": "ce", "part-t": "trades", "part-m": "mart"}


# ------------------------------------------------------------------------------------------ numpy references


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def cross_entropy_ref(logits, labels):
    """Mean over the batch of -log softmax(z)_y."""
    total = 0.0
    for z, y in zip(logits, labels):
        total += -math.log(softmax(z)[y])
    return total / len(logits)


def kl_sum_ref(logits_adv, logits_natural):
    """nn.KLDivLoss(size_average=False)(log_softmax(adv), softmax(nat)) = sum_i sum_k p_k (log p_k - log q_k)."""
    total = 0.0
    for za, zn in zip(logits_adv, logits_natural):
        p, q = softmax(zn), softmax(za)
        for k in range(len(p)):
            total += p[k] * (math.log(p[k]) - math.log(q[k]))
    return total


def trades_ref(logits_natural, logits_adv, labels, beta):
    """trades.py: loss_natural + beta * (1 / batch_size) * criterion_kl(log_softmax(adv), softmax(nat))."""
    return cross_entropy_ref(logits_natural, labels) + beta * kl_sum_ref(logits_adv, logits_natural) / len(labels)


def mart_ref(logits_natural, logits_adv, labels, beta):
    """mart.py of Wang et al. (2020), one sample at a time.

    loss_adv = CE(adv, y) + NLL(log(1.0001 - p_adv + 1e-12), y') with y' the most likely wrong class of p_adv;
    loss_robust = (1 / B) sum_i [sum_k KL(log(p_adv + 1e-12), p_nat)_k] * (1.0000001 - p_nat_y).
    """
    n = len(labels)
    boosted, robust = 0.0, 0.0
    for za, zn, y in zip(logits_adv, logits_natural, labels):
        pa, pn = softmax(za), softmax(zn)
        ranked = sorted(range(len(pa)), key=lambda k: pa[k])
        wrong = ranked[-2] if ranked[-1] == y else ranked[-1]
        boosted += -math.log(pa[y]) - math.log(1.0001 - pa[wrong] + 1e-12)
        kl = sum(pn[k] * (math.log(pn[k]) - math.log(pa[k] + 1e-12)) for k in range(len(pn)))
        robust += kl * (1.0000001 - pn[y])
    return boosted / n + beta * robust / n


def random_logits(seed, n=64, classes=10, scale=3.0):
    rng = np.random.RandomState(seed)
    natural = rng.randn(n, classes) * scale
    adv = natural + rng.randn(n, classes) * scale  # adversarial logits: correlated, but not the same
    labels = rng.randint(0, classes, n)
    # Some samples whose most likely adversarial class is the label, so MART's runner-up branch is exercised.
    adv[:8, :] -= 10.0
    adv[np.arange(8), labels[:8]] += 30.0
    return natural, adv, labels


def torch_args(natural, adv, labels, dtype=torch.float32):
    return torch.tensor(natural, dtype=dtype), torch.tensor(adv, dtype=dtype), torch.tensor(labels, dtype=torch.long)


# ------------------------------------------------------------------------------------------ outer losses


# float32 as trained (loose tolerance); float64 with a tolerance tight enough to see MART's 1.0000001 and 1e-12.
PRECISIONS = [(torch.float32, 1e-5), (torch.float64, 1e-11)]


@pytest.mark.parametrize("dtype, rel", PRECISIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_is_zhang_et_al_formula(seed, beta, dtype, rel):
    natural, adv, labels = random_logits(seed)
    ours = trades_loss(*torch_args(natural, adv, labels, dtype), beta=beta).item()
    assert ours == pytest.approx(trades_ref(natural, adv, labels, beta), rel=rel)


@pytest.mark.parametrize("dtype, rel", PRECISIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_mart_loss_is_wang_et_al_formula(seed, beta, dtype, rel):
    natural, adv, labels = random_logits(seed)
    ours = mart_loss(*torch_args(natural, adv, labels, dtype), beta=beta).item()
    assert ours == pytest.approx(mart_ref(natural, adv, labels, beta), rel=rel)


def test_references_tell_the_losses_apart():
    """The tolerance above is tight enough to fail on the classic slips (batchmean vs sum, no boost, no weight)."""
    natural, adv, labels = random_logits(5)
    t_nat, t_adv, t_lab = torch_args(natural, adv, labels)
    trades = trades_ref(natural, adv, labels, 6.0)
    assert trades_loss(t_nat, t_adv, t_lab, beta=1.0).item() != pytest.approx(trades, rel=1e-3)
    wrong_kl = cross_entropy_ref(natural, labels) + 6.0 * kl_sum_ref(adv, natural)  # forgot 1 / batch
    assert trades_loss(t_nat, t_adv, t_lab, 6.0).item() != pytest.approx(wrong_kl, rel=1e-3)
    mart = mart_ref(natural, adv, labels, 6.0)
    assert mart_loss(t_nat, t_adv, t_lab, 0.0).item() != pytest.approx(mart, rel=1e-3)
    assert trades_loss(t_nat, t_adv, t_lab, 6.0).item() != pytest.approx(mart, rel=1e-3)


def test_trades_inner_kl_is_summed_kl():
    natural, adv, _ = random_logits(4)
    probs = torch.softmax(torch.tensor(natural, dtype=torch.float32), dim=1)
    ours = trades_kl(torch.tensor(adv, dtype=torch.float32), probs).item()
    assert ours == pytest.approx(kl_sum_ref(adv, natural), rel=1e-5)


# ------------------------------------------------------------------------------------------ inside the trainer


def make_trainer(model, method, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                            clip_values=(0.0, 1.0), optimizer=optimizer)
    options = dict(method=method, eps=EPS, eps_low=EPS_LOW, alpha=ALPHA, steps=1, burn_in=1, verbose=False)
    options.update(kwargs)
    return AdversarialTrainerPARTPyTorch(clf, **options)


def one_step_reference(model, images, labels, budget, inner, seed):
    """One projected sign-gradient step of the given objective, from the start the paper's code draws.

    "ce": start x + U(-eps, eps) * budget / eps, objective mean CE; "kl": start x + 0.001 N(0, 1), objective
    sum_i KL(p_nat || p_adv) (TRADES). Objectives written out with log_softmax, not torch's loss functions.
    """
    model.eval()
    torch.manual_seed(seed)
    if inner == "ce":
        noise = torch.empty_like(images).uniform_(-EPS, EPS)
        start = torch.clamp(images + noise * (budget / EPS), 0, 1)
    else:
        start = images + 0.001 * torch.randn_like(images)
    with torch.no_grad():
        log_p_nat = torch.log_softmax(model(images), dim=1)
    x = start.clone().requires_grad_(True)
    log_q = torch.log_softmax(model(x), dim=1)
    if inner == "ce":
        objective = -log_q[torch.arange(len(labels)), labels].mean()
    else:
        objective = (log_p_nat.exp() * (log_p_nat - log_q)).sum()
    (grad,) = torch.autograd.grad(objective, x)
    stepped = start + ALPHA * grad.sign()
    return torch.clamp(images + torch.clamp(stepped - images, -budget, budget), 0, 1)


def test_the_trainer_offers_exactly_the_six_methods_and_standard_training():
    assert set(METHODS) == set(INNER) | {"standard"}
    assert METHODS["standard"] == (None, "ce", False)  # no attack, CE on the natural batch, no budget map


@pytest.mark.parametrize("method", sorted(INNER))
def test_inner_loss_of_each_method(tiny_model, cifar_batch, method):
    """AT, MART, PART, PART-M ascend CE; TRADES and PART-T ascend TRADES' KL; all within the per-pixel budget."""
    expected = INNER[method]
    images, labels = cifar_batch
    trainer = make_trainer(tiny_model, method, mart_start="uniform")  # the reference starts uniformly
    assert isinstance(trainer.attack, PixelAG) and trainer.attack.loss == expected
    budget = budget_map(cam_maps(tiny_model, images), EPS, EPS_LOW)
    assert (budget == EPS).any() and (budget == EPS_LOW).any()
    torch.manual_seed(11)
    ours = trainer.attack.perturb(images, labels, budget)
    right = one_step_reference(tiny_model, images, labels, budget, expected, seed=11)
    wrong = one_step_reference(tiny_model, images, labels, budget, "kl" if expected == "ce" else "ce", seed=11)
    # Sign gradients may flip where a gradient entry is ~0 and the two computations round differently.
    assert (ours - right).abs().max() < 1e-6 or (ours != right).float().mean() < 0.01
    assert (ours != wrong).float().mean() > 0.1
    assert ((ours - images).abs() <= budget + 1e-6).all()


@pytest.mark.parametrize("method", sorted(OUTER))
def test_outer_loss_of_a_training_step(tiny_model, cifar_batch, method):
    """The loss a training step minimises is the plain CE / TRADES / MART formula on that step's logits.

    For the PART methods the attack runs with the CAM budget map; the outer loss must not see it.
    """
    images, labels = cifar_batch
    trainer = make_trainer(tiny_model, method, steps=3)
    model = trainer._classifier.model
    model.train()
    before = copy.deepcopy(model)
    budget = budget_map(cam_maps(model, images), EPS, EPS_LOW) if method.startswith("part") else \
        torch.full_like(images[:, :1], EPS)
    captured = {}
    perturb = trainer.attack.perturb

    def spy(x, y, b):
        captured["adv"] = perturb(x, y, b)
        captured["budget"] = b
        return captured["adv"]

    trainer.attack.perturb = spy
    loss, natural_correct, adversarial_correct = trainer._step(model, trainer._classifier.optimizer, images, labels,
                                                               budget)
    assert torch.equal(captured["budget"], budget)
    before.train()  # batch statistics: the same logits the step saw
    with torch.no_grad():
        natural = before(images).double().numpy()
        adv = before(captured["adv"]).double().numpy()
    y = labels.numpy()
    outer = OUTER[method]
    if outer == "ce":
        expected = cross_entropy_ref(adv, y)
    elif outer == "trades":
        expected = trades_ref(natural, adv, y, 6.0)
    else:
        expected = mart_ref(natural, adv, y, 6.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert adversarial_correct.item() == (adv.argmax(1) == y).sum()
    if outer != "ce":
        assert natural_correct.item() == (natural.argmax(1) == y).sum()
    # and the update happened
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))
