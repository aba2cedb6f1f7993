"""APGD with a per-entry budget against pyautoattack, and MMAEval against the MMA paper's own evaluation loop.

The reference for MMAEval is ``eval_robust_mm_sequential`` of github Sjtubrian/MM-attack: APGD-T with the loss
``-(z_y - z_t)`` per target among the top-k natural logits, reseeded per target, on the images not yet broken.
Its APGD is AutoAttack's; here it is pyautoattack's ``APGDAttack_targeted`` with that loss swapped in.
"""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

from torchattacks_part import MMA, MMAEval, auto_pgd
from torchattacks_part.apgd import checkpoints, random_start
from torchattacks_part.losses import minimum_margin
from torchattacks_part.mma_eval import mm_loss

EPS = 8 / 255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two shared cores: one thread is several times faster than two that compete."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def batch(tiny_model, cifar_batch):
    """16 real images labelled with the tiny model's own predictions, so every image is attacked."""
    images = cifar_batch[0][:16]
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    return images, labels


def ce(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none")


def mm_attack_reference(model, x, y, eps, steps, k, seed=1):
    """``eval_robust_mm_sequential`` (one batch of <= 128 images) on pyautoattack's APGD-T.

    :return: robust flags (N,) and the adversarial images of the broken ones (others: the natural image).
    """
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    adv = x.clone()
    for i in range(k):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, ys = x[idx], y[idx]
        with torch.no_grad():
            target = model(xs).sort(dim=1)[1][:, -(i + 2)]
        attack = APGDAttack_targeted(model, n_iter=steps, n_restarts=1, eps=eps, seed=seed, rho=0.75,
                                     n_target_classes=1, device="cpu")
        u = torch.arange(len(idx))
        attack.dlr_loss_targeted = lambda logits, labels: -(logits[u, labels] - logits[u, target])  # MM's mm_loss
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = attack.perturb(xs, ys)
        with torch.no_grad():
            fooled = model(out).argmax(1) != ys
        robust[idx[fooled]] = False
        adv[idx[fooled]] = out[fooled]
    return robust, adv


# ------------------------------------------------------------------------------------------------ (a) APGD core


def test_checkpoint_schedule_is_autoattacks():
    # n_iter_2 = 22, size_decr = 3, n_iter_min = 6 for 100 iterations
    assert checkpoints(100) == [(21, 22), (40, 19), (56, 16), (69, 13), (79, 10), (86, 7), (92, 6), (98, 6)]
    assert checkpoints(20)[:4] == [(3, 4), (6, 3), (8, 2), (9, 1)] and len(checkpoints(20)) == 14
    assert checkpoints(1) == [(0, 1)]


@pytest.mark.parametrize("eps, steps", [(2 / 255, 12), (EPS, 25)])
def test_core_equals_pyautoattack_apgd_ce(tiny_model, batch, eps, steps):
    images, labels = batch
    with torch.random.fork_rng():
        reference = APGDAttack(tiny_model, n_iter=steps, eps=eps, loss="ce", seed=3, device="cpu").perturb(
            images, labels)
    run = auto_pgd(tiny_model, ce, images, labels, eps, steps, generator=torch.Generator().manual_seed(3))
    ours = torch.where(run.robust.view(-1, 1, 1, 1), images, run.x_best_adv)  # APGDAttack.perturb's result
    assert torch.equal(ours, reference)
    with torch.no_grad():
        assert torch.equal(tiny_model(reference).argmax(1) == labels, run.robust)
    assert 0 < int(run.robust.sum()) < len(labels)  # a run that breaks some images, not all


def test_core_equals_pyautoattack_apgd_t_dlr(tiny_model, batch):
    images, labels = batch
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = APGDAttack_targeted(tiny_model, n_iter=15, eps=4 / 255, seed=0, n_target_classes=1,
                                        device="cpu").perturb(images, labels)
    with torch.no_grad():
        target = tiny_model(images).sort(dim=1)[1][:, -2]

    def dlr_targeted(logits, y):
        z = logits.sort(dim=1)[0]
        u = torch.arange(len(y))
        return -(logits[u, y] - logits[u, target]) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)

    run = auto_pgd(tiny_model, dlr_targeted, images, labels, 4 / 255, 15, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.where(run.robust.view(-1, 1, 1, 1), images, run.x_best_adv), reference)


@pytest.mark.parametrize("shape", [(16, 1, 32, 32), (16, 3, 32, 32), (1, 1, 32, 32)])
def test_core_with_a_per_entry_budget_equals_pyautoattack_single_run(tiny_model, batch, shape):
    # pyautoattack's single run broadcasts a tensor eps: its step 2 * eps and its projection become per entry.
    images, labels = batch
    g = torch.Generator().manual_seed(5)
    budget = torch.where(torch.rand(shape, generator=g) > 0.5, EPS, 2 / 255)
    start = (images + (2 * torch.rand(images.shape, generator=g) - 1) * budget).clamp(0, 1)
    attack = APGDAttack(tiny_model, n_iter=12, eps=budget, loss="ce", device="cpu")
    attack.init_hyperparam(images)
    x_best, robust, loss_best, x_best_adv = attack.attack_single_run(images, labels, x_init=start)
    run = auto_pgd(tiny_model, ce, images, labels, budget, 12, start=start)
    assert torch.equal(run.x_best, x_best) and torch.equal(run.loss_best, loss_best)
    assert torch.equal(run.x_best_adv, x_best_adv) and torch.equal(run.robust, robust)


def test_uniform_tensor_budget_equals_scalar_eps(tiny_model, batch):
    images, labels = batch
    scalar = auto_pgd(tiny_model, ce, images, labels, EPS, 8, generator=torch.Generator().manual_seed(1))
    tensor = auto_pgd(tiny_model, ce, images, labels, torch.full((16, 1, 32, 32), EPS), 8,
                      generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(scalar, tensor))


def test_random_start_is_autoattacks(batch):
    images, _ = batch
    with torch.random.fork_rng():
        torch.manual_seed(7)
        t = 2 * torch.rand(images.shape) - 1
        expected = (images + EPS * torch.ones_like(images) * (t / (t.abs().flatten(1).max(1)[0].view(-1, 1, 1, 1)
                                                                   + 1e-12))).clamp(0, 1)
    assert torch.equal(random_start(images, EPS, torch.Generator().manual_seed(7)), expected)


def test_mm_eval_equals_the_released_sequential_loop(tiny_model, batch):
    images, labels = batch
    robust, reference = mm_attack_reference(tiny_model, images, labels, 4 / 255, 10, k=3)
    attack = MMAEval(tiny_model, eps=4 / 255, steps=10, k=3)
    adv = attack(images, labels)
    assert torch.equal(attack.last_robust, robust)
    broken = ~robust
    assert torch.equal(adv[broken], reference[broken])
    with torch.no_grad():
        assert torch.equal(tiny_model(adv).argmax(1) == labels, robust)
    assert 0 < int(robust.sum()) < len(labels)


# ------------------------------------------------------------------------------------------------ (b) the loss


def test_mm_loss_closed_form():
    g = torch.Generator().manual_seed(0)
    logits = 10 * torch.randn(64, 10, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    targets = (labels + torch.randint(1, 10, (64,), generator=g)) % 10
    u = torch.arange(64)
    margin = logits[u, targets] - logits[u, labels]
    assert torch.equal(mm_loss(logits, labels, targets), margin)
    clamped = mm_loss(logits, labels, targets, kappa=5.0)
    torch.testing.assert_close(clamped, torch.minimum(margin - 5.0, torch.zeros(64)), atol=1e-5, rtol=0)
    assert (clamped <= 0).all() and (clamped[margin >= 5] == 0).all()
    torch.testing.assert_close(clamped.sum(), minimum_margin(logits, labels, targets, 5.0))  # MMA's summed form


# ------------------------------------------------------------------------------------------------ (c) the budget


@pytest.mark.parametrize("shape", [(16, 1, 32, 32), (16, 3, 32, 32), (1, 1, 32, 32)])
def test_stays_within_the_per_entry_budget(tiny_model, batch, shape):
    images, labels = batch
    g = torch.Generator().manual_seed(2)
    budget = torch.rand(shape, generator=g) * EPS * (torch.rand(shape, generator=g) > 0.3)  # zeros included
    attack = MMAEval(tiny_model, eps=EPS, steps=6)
    adv = attack(images, labels, budget=budget)
    assert adv.shape == images.shape
    assert ((adv - images).abs() <= budget + 1e-7).all()
    assert ((adv >= 0) & (adv <= 1)).all()
    frozen = (budget == 0).expand_as(adv)
    assert frozen.any() and torch.equal(adv[frozen], images[frozen])
    with torch.no_grad():
        assert torch.equal(tiny_model(adv).argmax(1) == labels, attack.last_robust)


def test_cam_budget(tiny_model, batch):
    images, labels = batch
    attack = MMAEval(tiny_model, eps=EPS, eps_low=2 / 255, steps=4)
    adv = attack(images, labels)
    budget = attack.budget(images)
    assert set(torch.unique(budget).tolist()) == {torch.tensor(EPS).item(), torch.tensor(2 / 255).item()}
    assert ((adv - images).abs() <= budget + 1e-7).all()
    assert torch.equal(attack(images, labels), adv)  # seeded starts: deterministic


def test_seeded_starts_leave_the_global_generator_alone(tiny_model, batch):
    images, labels = batch
    state = torch.get_rng_state()
    first = MMAEval(tiny_model, steps=3, seed=4)(images, labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(MMAEval(tiny_model, steps=3, seed=4)(images, labels), first)
    torch.manual_seed(0)
    unseeded = MMAEval(tiny_model, steps=3, seed=None)(images, labels)  # draws from the global generator
    assert not torch.equal(torch.get_rng_state(), state) and unseeded.shape == images.shape


def test_adaptive_preset(tiny_model):
    attack = MMAEval.adaptive(tiny_model)
    assert (attack.eps, attack.eps_low, attack.steps, attack.k, attack.kappa, attack.n_restarts, attack.seed) == (
        12 / 255, 8 / 255, 20, 3, None, 1, 1)


# ------------------------------------------------------------------------------------------------ (d) strength


def test_at_least_as_strong_as_the_training_time_mma(tiny_model, batch):
    images, labels = batch
    for eps in (1 / 255, 3 / 255):
        evaluation = MMAEval(tiny_model, eps=eps, steps=10)
        evaluation(images, labels)
        torch.manual_seed(0)
        adv = MMA(tiny_model, eps=eps, alpha=eps / 4, steps=10)(images, labels)
        with torch.no_grad():
            survivors = tiny_model(adv).argmax(1) == labels
        assert int(evaluation.last_robust.sum()) <= int(survivors.sum())


class ThreeDirections(nn.Module):
    """Linear logits around one image c: z = W (x - c) + b with b = (0, -0.1, -1, -1.2).

    Class 1 (the most likely wrong class) cannot be reached: its row equals the true class's. Ascending the margin
    towards class 2 moves x along v, which lifts class 3 (row 2v) over the true class first: s = v.(x - c) <= 0.8
    gives z_2 <= -0.2 < z_1 but z_3 up to 0.4 > z_0.
    """

    def __init__(self, centre, eps):
        super().__init__()
        d = centre.numel()
        g = torch.Generator().manual_seed(0)
        v = (torch.randint(0, 2, (d,), generator=g) * 2 - 1).float() * 0.8 / (eps * d)
        self.register_buffer("centre", centre)
        self.register_buffer("weight", torch.stack([torch.zeros(d), torch.zeros(d), v, 2 * v]))
        self.register_buffer("bias", torch.tensor([0.0, -0.1, -1.0, -1.2]))

    def forward(self, x):
        return (x - self.centre).flatten(1) @ self.weight.t() + self.bias


def test_any_target_breaks_an_image():
    centre = torch.full((1, 3, 32, 32), 0.5)
    model = ThreeDirections(centre, EPS).eval()
    images, labels = centre.expand(4, -1, -1, -1).clone(), torch.zeros(4, dtype=torch.long)

    first_only = MMAEval(model, eps=EPS, steps=5, k=1)
    first_only(images, labels)
    assert first_only.last_robust.all()  # target 1 alone breaks nothing

    attack = MMAEval(model, eps=EPS, steps=5, k=2)
    adv = attack(images, labels)
    assert not attack.last_robust.any()
    assert (attack.last_broken_by == 1).all()  # broken by the second target, not the first
    with torch.no_grad():
        out = model(adv)
    assert (out.argmax(1) == 3).all() and (out[:, 2] < out[:, 1]).all()  # broken through class 3

    # The training-time MMA keeps the target with the largest final margin (target 1): the image survives it.
    with torch.no_grad():
        survivors = model(MMA(model, eps=EPS, steps=5, k=2)(images, labels)).argmax(1) == labels
    assert survivors.all()


def test_naturally_misclassified_images_are_returned_unchanged(tiny_model, batch):
    images, labels = batch
    wrong = labels.clone()
    wrong[:4] = (labels[:4] + 1) % 10
    attack = MMAEval(tiny_model, eps=EPS, steps=3)
    adv = attack(images, wrong)
    assert torch.equal(adv[:4], images[:4])
    assert not attack.last_robust[:4].any() and (attack.last_broken_by[:4] == -1).all()


# ------------------------------------------------------------------------------------------------ (e) bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(k=0), "k"), (dict(k=2.0), "k"), (dict(steps=0), "steps"), (dict(n_restarts=0), "n_restarts"),
     (dict(kappa=-1.0), "kappa"), (dict(seed=-1), "seed"), (dict(seed=True), "seed"), (dict(eps=-0.1), "eps"),
     (dict(eps_low=0.5), "eps_low"), (dict(cam="nope", eps_low=1 / 255), "cam"), (dict(rule="nope"), "rule")],
)
def test_bad_parameters(tiny_model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        MMAEval(tiny_model, **kwargs)


def test_too_many_targets(tiny_model, batch):
    images, labels = batch
    with pytest.raises(ValueError, match="k must be in"):
        MMAEval(tiny_model, k=10, steps=1)(images, labels)


def test_bad_budget_and_images(tiny_model, batch):
    images, labels = batch
    attack = MMAEval(tiny_model, steps=1)
    with pytest.raises(ValueError, match="budget"):
        attack(images, labels, budget=torch.full((16, 2, 32, 32), EPS))
    with pytest.raises(ValueError, match="budget"):
        attack(images, labels, budget=-torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match="images"):
        attack(images * 2, labels)
    with pytest.raises(ValueError, match="labels"):
        attack(images, labels[:3])


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(steps=0), "steps"), (dict(momentum=1.5), "momentum"), (dict(rho=-0.1), "rho"),
     (dict(budget=torch.ones(2, 1, 32, 32)), "budget"), (dict(budget=-EPS), "budget")],
)
def test_core_bad_parameters(tiny_model, batch, kwargs, name):
    images, labels = batch
    args = dict(budget=EPS, steps=2) | kwargs
    with pytest.raises(ValueError, match=name):
        auto_pgd(tiny_model, ce, images, labels, args.pop("budget"), args.pop("steps"), **args)


def test_core_needs_one_loss_per_image(tiny_model, batch):
    images, labels = batch
    with pytest.raises(ValueError, match="one loss per image"):
        auto_pgd(tiny_model, lambda logits, y: ce(logits, y).sum(), images, labels, EPS, 2)
