"""The ART adapters (art_part) against the torchattacks_part attacks, against ART's own PGD, and inside ART's trainer.

Real CIFAR-10 images throughout. Exact agreement is expected wherever both sides run the same float operations on the
same input: the adapter adds no arithmetic of its own.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from art.attacks.evasion import ProjectedGradientDescentPyTorch
from art.defences.trainer import AdversarialTrainer
from art.estimators.classification import PyTorchClassifier

import torchattacks_part
import torchattacks_part.mma
import torchattacks_part.pixel_ag
from art_part import MMAPyTorch, PixelAGPyTorch

EPS, EPS_LOW, STEP = 8 / 255, 4 / 255, 2 / 255
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
ATOL = 1e-6


def classifier(model, preprocessing=None, clip_values=(0.0, 1.0), optimizer=None):
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                             clip_values=clip_values, preprocessing=preprocessing, optimizer=optimizer)


def random_budget(shape, levels, seed):
    """A per-entry budget drawn from ``levels`` (numpy float32)."""
    return np.random.RandomState(seed).choice(levels, size=shape).astype(np.float32)


def cam_budget(model, images, eps=EPS, eps_low=EPS_LOW):
    """PART's budget of the model's own GradCAM, computed by torchattacks_part (numpy)."""
    return torchattacks_part.budget_map(torchattacks_part.cam_maps(model, images), eps, eps_low).numpy()


class Normalize(nn.Module):
    """(x - mean) / std in float32, the arithmetic of ART's StandardisationMeanStdPyTorch."""

    def forward(self, x):
        return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class Denormalize(nn.Module):
    """A real model that expects normalised input: z -> net(z * std + mean)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, z):
        return self.net(z * self.std + self.mean)


def assert_names(error, name):
    message = str(error.value)
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", message), f"{name!r} not named in: {message}"


# ------------------------------------------------------------------------------ 1. agreement with torchattacks_part


@pytest.mark.parametrize("loss", ["ce", "kl"])
@pytest.mark.parametrize("budget_source", ["cam", "given"])
def test_pixelag_equals_torchattacks_part(cifar_batch, tiny_model, loss, budget_source):
    images, labels = cifar_batch
    budget = None if budget_source == "cam" else random_budget((32, 1, 32, 32), [EPS, EPS_LOW], seed=0)
    attack = PixelAGPyTorch(classifier(tiny_model), eps=EPS, eps_low=EPS_LOW, eps_step=STEP, max_iter=5, loss=loss)
    reference = torchattacks_part.PixelAG(tiny_model, eps=EPS, eps_low=EPS_LOW, alpha=STEP, steps=5, loss=loss)

    torch.manual_seed(1)
    ours = attack.generate(images.numpy(), labels.numpy(), budget=budget)
    torch.manual_seed(1)
    theirs = reference(images, labels, budget=None if budget is None else torch.from_numpy(budget)).numpy()

    assert ours.dtype == np.float32 and ours.shape == images.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
    assert attack.last_degenerate == int(reference.last_degenerate)
    assert attack.last_important_fraction == pytest.approx(float(reference.last_important_fraction))
    # Not vacuous: the important entries went beyond eps_low and the low ones stayed within it.
    expected = budget if budget is not None else cam_budget(tiny_model, images)
    delta = np.abs(ours - images.numpy())
    assert delta[np.broadcast_to(expected == EPS, delta.shape)].max() > EPS_LOW + 1e-4
    assert delta[np.broadcast_to(expected == EPS_LOW, delta.shape)].max() <= EPS_LOW + ATOL


@pytest.mark.parametrize("attack_class", [PixelAGPyTorch, MMAPyTorch])
def test_linear_rule_through_the_adapters(cifar_batch, tiny_model, attack_class):
    """rule="linear": the adapter accepts it, its budget is the continuous CAM budget and generate stays within it."""
    images, labels = cifar_batch[0][:16], cifar_batch[1][:16]
    options = dict(eps=EPS, eps_low=EPS_LOW, eps_step=STEP, max_iter=3, rule="linear")
    attack = attack_class(classifier(tiny_model), **options, **({"k": 2} if attack_class is MMAPyTorch else {}))
    budget = attack.compute_budget(images.numpy())
    expected = torchattacks_part.budget_map(torchattacks_part.cam_maps(tiny_model, images), EPS, EPS_LOW, "linear")
    np.testing.assert_array_equal(budget, expected.numpy())
    assert len(np.unique(budget)) > 100  # continuous
    assert attack.attack.rule == "linear"  # the torchattacks_part attack the adapter runs
    torch.manual_seed(2)
    ours = attack.generate(images.numpy(), labels.numpy())
    assert (np.abs(ours - images.numpy()) <= budget + ATOL).all()
    assert attack.last_important_fraction == pytest.approx(float((expected >= EPS).float().mean()))


def test_target_layer_name_resolves_in_the_estimators_model(cifar_batch, tiny_model):
    images, labels = cifar_batch
    attack = PixelAGPyTorch(classifier(tiny_model), max_iter=3, target_layer="features.4")
    reference = torchattacks_part.PixelAG(tiny_model, steps=3, target_layer=tiny_model.features[4])
    torch.manual_seed(2)
    ours = attack.generate(images.numpy(), labels.numpy())
    torch.manual_seed(2)
    np.testing.assert_allclose(ours, reference(images, labels).numpy(), rtol=0, atol=ATOL)
    assert attack.last_important_fraction == pytest.approx(float(reference.last_important_fraction))


def test_mma_equals_torchattacks_part_on_pretrained_resnet(cifar_batch, resnet18):
    images, labels = cifar_batch[0][:8], cifar_batch[1][:8]
    attack = MMAPyTorch(classifier(resnet18), eps=EPS, eps_step=STEP, max_iter=3, k=3, eps_low=EPS_LOW)
    reference = torchattacks_part.MMA(resnet18, eps=EPS, alpha=STEP, steps=3, k=3, eps_low=EPS_LOW)
    torch.manual_seed(3)
    ours = attack.generate(images.numpy(), labels.numpy())
    torch.manual_seed(3)
    theirs = reference(images, labels).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
    assert 0 < attack.last_important_fraction < 1  # the real model's CAMs set the budget
    assert not resnet18.training


def test_mma_with_given_budget_equals_torchattacks_part(cifar_batch, tiny_model):
    images, labels = cifar_batch
    budget = random_budget((32, 3, 32, 32), [0.0, EPS_LOW, EPS], seed=4)
    attack = MMAPyTorch(classifier(tiny_model), max_iter=4, k=2, batch_size=32)
    reference = torchattacks_part.MMA(tiny_model, steps=4, k=2)
    torch.manual_seed(4)
    ours = attack.generate(images.numpy(), labels.numpy(), budget=budget)
    torch.manual_seed(4)
    theirs = reference(images, labels, budget=torch.from_numpy(budget)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
    assert np.all(np.abs(ours - images.numpy()) <= budget + ATOL)


@pytest.mark.parametrize("make", [
    lambda est: PixelAGPyTorch(est, eps_low=EPS_LOW, max_iter=4),
    lambda est: PixelAGPyTorch(est, eps_low=EPS_LOW, max_iter=4, loss="kl"),
    lambda est: MMAPyTorch(est, eps_low=EPS_LOW, max_iter=3, k=2),
], ids=["pixelag-ce", "pixelag-kl", "mma"])
def test_estimator_preprocessing_equals_set_normalization_used(cifar_batch, resnet18, make):
    """PyTorchClassifier(preprocessing=(mean, std)) over a model expecting normalised input, vs torchattacks_part
    with set_normalization_used on that model.

    torchattacks gives the attack normalised images and un-normalises them itself (z * std + mean), which is not
    bit-exact; the ART side therefore gets those very un-normalised images, so both attacks start from the same
    floats. (Fed the original images instead, the ~6e-8 round-trip error flips the sign of near-zero gradients: a
    few hundred entries then differ by a step, and the TRADES KL objective, whose first gradient is p_adv - p_nat at
    distance 0.001, diverges completely.)
    """
    model = Denormalize(resnet18).eval()
    images, labels = cifar_batch[0][:8], cifar_batch[1][:8]
    attack = make(classifier(model, preprocessing=(np.array(MEAN), np.array(STD))))
    params = dict(eps=attack.eps, eps_low=attack.eps_low, alpha=attack.eps_step, steps=attack.max_iter)
    if isinstance(attack, MMAPyTorch):
        reference = torchattacks_part.MMA(model, k=attack.k, **params)
    else:
        reference = torchattacks_part.PixelAG(model, loss=attack.loss, **params)
    reference.set_normalization_used(MEAN, STD)

    normalised = reference.normalize(images)
    start = reference.inverse_normalize(normalised)  # what torchattacks hands to forward()
    assert start.min() >= 0 and start.max() <= 1
    torch.manual_seed(5)
    ours = attack.generate(start.numpy(), labels.numpy())
    torch.manual_seed(5)
    theirs = reference.inverse_normalize(reference(normalised, labels)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)  # only the final round trip differs (~1e-7)
    assert attack.last_important_fraction == pytest.approx(float(reference.last_important_fraction))
    # The CAM saw the estimator's preprocessed input, not the raw [0, 1] images.
    budget = attack.compute_budget(start.numpy())
    np.testing.assert_array_equal(budget, cam_budget(nn.Sequential(Normalize(), model), start))
    assert not np.array_equal(budget, cam_budget(model, start))


# ---------------------------------------------------------------------------------- 2. ART's own PGD as reference


@pytest.mark.parametrize("setting", ["tiny-cam-budget", "tiny-channel-budget-normalised", "resnet18-cam-budget"])
def test_equals_art_pgd_with_array_eps(cifar_batch, tiny_model, resnet18, setting):
    """ART's ProjectedGradientDescentPyTorch (num_random_init=0) with eps = the per-entry budget is Pixel-AG.

    The two loops differ in order (ART: step, clip to [0, 1], project with sign * min(|d|, eps) in float64, no final
    clip; torchattacks_part: step, clamp(d, -eps, eps), clip), which is the same box projection because x lies in
    [0, 1]; ART's zero gradients give a zero step exactly as sign(0) = 0 does here (ART's inf-norm step is
    ones * grad.sign(), with no tolerance). Measured: bit-identical, so any difference above 1e-6 is a real bug.
    """
    images, labels = cifar_batch
    preprocessing = None
    if setting.startswith("resnet18"):
        model, images, labels = resnet18, images[:8], labels[:8]
    else:
        model = tiny_model
    n = images.shape[0]
    if "channel" in setting:  # per pixel and channel, zero budgets included
        budget = random_budget((n, 3, 32, 32), [0.0, 2 / 255, EPS_LOW, EPS], seed=6)
        preprocessing = (np.array(MEAN), np.array(STD))
    else:
        budget = cam_budget(model, images)
    estimator = classifier(model, preprocessing=preprocessing)
    eps = np.ascontiguousarray(np.broadcast_to(budget, images.shape))
    art_pgd = ProjectedGradientDescentPyTorch(estimator, eps=eps, eps_step=np.full_like(eps, STEP), max_iter=6,
                                              num_random_init=0, batch_size=8, verbose=False)
    ours = PixelAGPyTorch(estimator, eps_step=STEP, max_iter=6, num_random_init=0, batch_size=8)

    expected = art_pgd.generate(images.numpy(), labels.numpy())
    got = ours.generate(images.numpy(), labels.numpy(), budget=budget)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    delta = np.abs(got - images.numpy())
    assert np.all(delta <= eps + ATOL)
    assert (delta > eps - ATOL)[eps > 0].mean() > 0.3  # many entries reach their own bound


# ------------------------------------------------------------------------------------------------- 3. label formats


def test_labels_one_hot_indices_and_none(cifar_batch, tiny_model):
    images, labels = cifar_batch
    x, y = images.numpy(), labels.numpy()
    estimator = classifier(tiny_model)
    attack = PixelAGPyTorch(estimator, max_iter=4, num_random_init=0)
    predicted = estimator.predict(x).argmax(axis=1)
    assert (predicted != y).any()  # so that None is a real test of "predicted, not true, labels"
    tiny_model.train()  # the caller's mode must survive, and BatchNorm statistics must not move
    stats = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    from_indices = attack.generate(x, y)
    from_one_hot = attack.generate(x, np.eye(10, dtype=np.float32)[y])
    from_column = attack.generate(x, y[:, None])
    np.testing.assert_array_equal(from_one_hot, from_indices)
    np.testing.assert_array_equal(from_column, from_indices)

    from_none = attack.generate(x)
    np.testing.assert_array_equal(from_none, attack.generate(x, predicted))
    assert not np.array_equal(from_none, from_indices)

    assert tiny_model.training and all(m.training for m in tiny_model.modules())
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, stats[key]), key


# --------------------------------------------------------------------------------------- 4. ART adversarial training


def test_art_adversarial_trainer_with_pixelag(cifar_test, tiny_model):
    images, labels = cifar_test
    x, y = images.numpy(), np.eye(10, dtype=np.float32)[labels.numpy()]
    model = tiny_model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    estimator = classifier(model, optimizer=optimizer)
    attack = PixelAGPyTorch(estimator, eps=EPS, eps_low=EPS_LOW, eps_step=STEP, max_iter=3, batch_size=64)

    seen = []
    generate = attack.generate

    def spy(x_batch, y=None, **kwargs):
        # The budget the examples must respect, computed independently from the model of this very step.
        expected = cam_budget(estimator.model, torch.from_numpy(x_batch))
        adv = generate(x_batch, y=y, **kwargs)
        seen.append((x_batch.copy(), adv.copy(), expected, model.training))
        return adv

    attack.generate = spy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    AdversarialTrainer(estimator, attacks=attack, ratio=1.0).fit(x, y, nb_epochs=1, batch_size=64)

    assert len(seen) == 4 and sum(len(s[0]) for s in seen) == 256
    for x_batch, adv, expected, training in seen:
        delta = np.abs(adv - x_batch)
        assert np.all(delta <= np.broadcast_to(expected, delta.shape) + ATOL)
        assert delta[np.broadcast_to(expected == EPS, delta.shape)].max() > EPS_LOW + 1e-4
        assert 0 < (expected == EPS).mean() < 1
        assert training  # generate gave the trainer its model back in train mode
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert "head.2.weight" in changed and "features.0.weight" in changed


# ------------------------------------------------------------------------------------------------ 5. ValueErrors


@pytest.mark.parametrize("kwargs, name", [
    (dict(eps=-0.1), "eps"),
    (dict(eps="8/255"), "eps"),
    (dict(eps_low=-0.01), "eps_low"),
    (dict(eps_low=0.1), "eps_low"),  # > eps
    (dict(eps_step=-STEP), "eps_step"),
    (dict(eps_step=0.0), "eps_step"),
    (dict(max_iter=0), "max_iter"),
    (dict(max_iter=2.5), "max_iter"),
    (dict(num_random_init=2), "num_random_init"),
    (dict(batch_size=0), "batch_size"),
    (dict(cam="saliency"), "cam"),
    (dict(rule="top10"), "rule"),
    (dict(loss="mse"), "loss"),
    (dict(targeted=True), "targeted"),
    (dict(verbose="yes"), "verbose"),
    (dict(target_layer="features.9"), "target_layer"),
])
def test_pixelag_rejects_bad_parameters(tiny_model, kwargs, name):
    with pytest.raises(ValueError) as error:
        PixelAGPyTorch(classifier(tiny_model), **kwargs)
    assert_names(error, name)


@pytest.mark.parametrize("kwargs, name", [
    (dict(k=0), "k"),
    (dict(k=10), "k"),  # only 9 wrong classes
    (dict(kappa=-1.0), "kappa"),
    (dict(eps_low=0.5), "eps_low"),
    (dict(num_random_init=5), "num_random_init"),
    (dict(targeted=True), "targeted"),
])
def test_mma_rejects_bad_parameters(tiny_model, kwargs, name):
    with pytest.raises(ValueError) as error:
        MMAPyTorch(classifier(tiny_model), **kwargs)
    assert_names(error, name)


@pytest.mark.parametrize("clip_values", [None, (0.0, 255.0), (-1.0, 1.0)])
def test_rejects_estimator_without_unit_clip_values(tiny_model, clip_values):
    for attack_class in (PixelAGPyTorch, MMAPyTorch):
        with pytest.raises(ValueError) as error:
            attack_class(classifier(tiny_model, clip_values=clip_values))
        assert_names(error, "clip_values")


@pytest.mark.parametrize("params, name", [
    (dict(max_iter=0), "max_iter"),
    (dict(eps_low=1.0), "eps_low"),
    (dict(targeted=True), "targeted"),
    (dict(norm=2), "norm"),
    (dict(random_eps=True), "random_eps"),
    (dict(num_random_init=3), "num_random_init"),
])
def test_set_params_validates_and_rolls_back(tiny_model, params, name):
    attack = PixelAGPyTorch(classifier(tiny_model), max_iter=3)
    before = {key: getattr(attack, key) for key in params}
    with pytest.raises(ValueError) as error:
        attack.set_params(**params)
    assert_names(error, name)
    assert {key: getattr(attack, key) for key in params} == before


def test_set_params_rebuilds_the_attack(cifar_batch, tiny_model):
    images, labels = cifar_batch
    attack = PixelAGPyTorch(classifier(tiny_model), max_iter=3, num_random_init=0)
    attack.set_params(max_iter=1, eps_low=EPS)
    assert attack.attack.steps == 1 and attack.attack.eps_low == EPS
    reference = torchattacks_part.PixelAG(tiny_model, eps_low=EPS, steps=1, random_start=False)
    np.testing.assert_array_equal(attack.generate(images.numpy(), labels.numpy()),
                                  reference(images, labels).numpy())
    attack.eps_step = 1 / 255  # assigned directly: generate must notice
    reference = torchattacks_part.PixelAG(tiny_model, eps_low=EPS, alpha=1 / 255, steps=1, random_start=False)
    np.testing.assert_array_equal(attack.generate(images.numpy(), labels.numpy()),
                                  reference(images, labels).numpy())


def _bad_inputs():
    x = np.random.RandomState(7).rand(4, 3, 32, 32).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    return [
        (dict(x=x * 2, y=y), "x"),
        (dict(x=x - 0.5, y=y), "x"),
        (dict(x=nan, y=y), "x"),
        (dict(x=x[0], y=y), "x"),
        (dict(x=x[:, :, :16], y=y), "x"),
        (dict(x=x, y=y[:3]), "y"),
        (dict(x=x, y=np.array([0, 1, 2, 10])), "y"),
        (dict(x=x, y=np.array([0, 1, 2, -1])), "y"),
        (dict(x=x, y=np.array([0, 1, 2, 2.5])), "y"),
        (dict(x=x, y=np.eye(9)[y]), "y"),
        (dict(x=x, y=y, budget=np.full((4, 1, 16, 16), EPS)), "budget"),
        (dict(x=x, y=y, budget=np.full((4, 2, 32, 32), EPS)), "budget"),
        (dict(x=x, y=y, budget=np.full((2, 1, 32, 32), EPS)), "budget"),
        (dict(x=x, y=y, budget=np.full((4, 1, 32, 32), -EPS)), "budget"),
        (dict(x=x, y=y, budget=np.full((32, 32), EPS)), "budget"),
        (dict(x=x, y=y, mask=np.ones((4, 3, 32, 32))), "mask"),
    ]


@pytest.mark.parametrize("inputs, name", _bad_inputs())
@pytest.mark.parametrize("attack_class", [PixelAGPyTorch, MMAPyTorch])
def test_generate_rejects_bad_inputs_before_any_work(tiny_model, attack_class, inputs, name):
    attack = attack_class(classifier(tiny_model), max_iter=1, eps_low=EPS_LOW)
    forwards = []
    hook = tiny_model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(ValueError) as error:
            attack.generate(**inputs)
    finally:
        hook.remove()
    assert_names(error, name)
    assert not forwards  # failed before the model ran


# ------------------------------------------------------------------------------- 6. random start with array budget


def test_art_random_start_cannot_take_an_array_eps(cifar_batch, tiny_model):
    """Why the adapters do not use ART's random start: random_sphere cannot broadcast an array eps (ART 1.20.1).

    If this starts failing, ART has fixed it; the adapters would still be right, only this reason would be stale.
    """
    images, labels = cifar_batch
    eps = np.full((32, 1, 32, 32), EPS, dtype=np.float32)
    pgd = ProjectedGradientDescentPyTorch(classifier(tiny_model), eps=eps, eps_step=np.full_like(eps, STEP),
                                          max_iter=1, num_random_init=1, verbose=False)
    with pytest.raises(ValueError, match="broadcast"):
        pgd.generate(images.numpy(), labels.numpy())


@pytest.mark.parametrize("attack_class, module", [(PixelAGPyTorch, torchattacks_part.pixel_ag),
                                                  (MMAPyTorch, torchattacks_part.mma)])
@pytest.mark.parametrize("channels", [1, 3])
def test_random_start_stays_in_each_entrys_box(cifar_batch, tiny_model, monkeypatch, attack_class, module, channels):
    images, labels = cifar_batch
    x = images.numpy()
    levels = [0.0, 2 / 255, EPS_LOW, EPS, 16 / 255]
    budget = random_budget((32, channels, 32, 32), levels, seed=8)
    starts = []
    real_start = module.uniform_start

    def spy(*args, **kwargs):
        start = real_start(*args, **kwargs)
        starts.append(start.detach().cpu().numpy())
        return start

    monkeypatch.setattr(module, "uniform_start", spy)
    kwargs = dict(k=2) if attack_class is MMAPyTorch else {}
    attack = attack_class(classifier(tiny_model), eps=16 / 255, max_iter=2, num_random_init=1, batch_size=16,
                          **kwargs)
    torch.manual_seed(9)
    adv = attack.generate(x, labels.numpy(), budget=budget)
    assert len(starts) == 2  # one per batch of 16

    start = np.concatenate(starts)
    delta = np.abs(start - x)
    box = np.broadcast_to(budget, delta.shape)
    assert np.all(delta <= box + ATOL)
    assert np.all(start[box == 0] == x[box == 0])
    inside = (x > 0.1) & (x < 0.9)  # away from the [0, 1] clip
    for level in levels[1:]:
        chosen = delta[(box == level) & inside]
        assert chosen.max() > 0.95 * level  # the start fills each entry's own box ...
        assert chosen.mean() == pytest.approx(level / 2, rel=0.1)  # ... uniformly
    assert np.all(np.abs(adv - x) <= box + ATOL)
