"""Bad input fails fast, naming the parameter and what is allowed (issue 9, items 3, 9, 10, 11).

Each case checks that the error comes BEFORE any work (no attack call, no weight change) where the data allows it,
and that later batches of a loader or a generator are checked on the device and reported at the loop's next sync
point, before that epoch's checkpoint. Real CIFAR-10 images and the tiny CNN of conftest, on the CPU.
"""

import copy
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator
from art.estimators.classification import PyTorchClassifier
from torch.utils.data import DataLoader, TensorDataset

from art_part import checkpoint as ckpt
from art_part.attacks import MMAPyTorch, PixelAGPyTorch
from art_part.trainer import AdversarialTrainerPARTPyTorch
from benchmarks.data import load_cifar10
from torchattacks_part import MMA, PixelAG, budget_map
from torchattacks_part.checks import check_generator, check_labels, check_number

EPS, EPS_LOW, LR = 8 / 255, 4 / 255, 0.05
INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def data(data_dir):
    """64 CIFAR-10 training images (numpy float32 (N, 3, 32, 32) in [0, 1]) and labels (int64)."""
    images, labels = load_cifar10(data_dir, train=True, n=64, download=False)
    return images.numpy(), labels.numpy()


@pytest.fixture
def new_model(tiny_model):
    return lambda: copy.deepcopy(tiny_model).train()


def make_classifier(model, nb_classes=10, input_shape=(3, 32, 32)):
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=input_shape, nb_classes=nb_classes,
                             clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(model.parameters(), lr=LR))


def make_trainer(model, method="at", **kwargs):
    options = dict(method=method, eps=EPS, eps_low=EPS_LOW, steps=1, burn_in=1, verbose=False)
    options.update(kwargs)
    return AdversarialTrainerPARTPyTorch(make_classifier(model), **options)


def count_attacks(trainer):
    """Count the trainer's attack calls: work started when this is > 0."""
    calls = []
    perturb = trainer.attack.perturb

    def spy(images, labels, budget):
        calls.append(images.dtype)
        return perturb(images, labels, budget)

    trainer.attack.perturb = spy
    return calls


def loader_of(x, y, batch_size=32):
    return DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch_size)


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------------------ item 3: images of a loader


@pytest.mark.parametrize("case, match", [
    ("uint8", r"loader.*floating.*uint8"),
    ("255", r"loader.*\[0, 1\]"),
    ("negative", r"loader.*\[0, 1\]"),
    ("nan", r"loader.*NaN or inf"),
])
def test_fit_loader_checks_the_first_batch_before_any_work(new_model, data, case, match):
    x, y = data
    images = {"uint8": torch.from_numpy((x * 255).round().astype(np.uint8)), "255": torch.from_numpy(x * 255),
              "negative": torch.from_numpy(x - 0.5), "nan": torch.from_numpy(x).clone()}[case]
    if case == "nan":
        images[3, 1, 2, 2] = NAN
    model = new_model()
    before = copy.deepcopy(model)
    trainer = make_trainer(model)
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=match):
        trainer.fit_loader(loader_of(images, y), nb_epochs=1)
    assert calls == [] and same_weights(model, before)


@pytest.mark.parametrize("case", ["255", "nan"])
def test_fit_loader_reports_a_bad_later_batch_before_the_epoch_checkpoint(new_model, data, tmp_path, case):
    """The first batch is fine, the second is not: found on the device, reported at the next sync point (the end of
    the epoch here), as a ValueError about the data (not a FloatingPointError blaming the learning rate), and the
    epoch's checkpoint is not written."""
    x, y = data
    images = torch.from_numpy(x).clone()
    if case == "255":
        images[32:] *= 255
    else:
        images[40, 0, 5, 5] = NAN
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"loader.*epoch 1") as error:
        trainer.fit_loader(loader_of(images, y), nb_epochs=2)
    assert "[0, 1]" in str(error.value) and "NaN" in str(error.value)
    assert not os.path.exists(tmp_path / "last.pt")


def test_fit_generator_checks_its_batches(new_model, data, tmp_path):
    x, y = data
    trainer = make_trainer(new_model())
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=r"generator.*floating.*uint8"):
        trainer.fit_generator(NumpyDataGenerator((x * 255).astype(np.uint8), y, batch_size=32), nb_epochs=1)
    assert calls == []
    later = x.copy()
    later[32:] *= 255
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"generator.*epoch 1"):
        trainer.fit_generator(NumpyDataGenerator(later, y, batch_size=32), nb_epochs=1)
    assert not os.path.exists(tmp_path / "last.pt")
    # a good NumpyDataGenerator trains
    trainer = make_trainer(new_model())
    trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=32), nb_epochs=1)
    assert [r["epoch"] for r in trainer.history] == [1]


@pytest.mark.parametrize("case, match", [
    ("uint8", r"x.*floating.*uint8"),
    ("bool", r"x.*floating.*bool"),
    ("nan", r"x.*NaN or inf"),
    ("255", r"x.*\[0, 1\]"),
])
def test_fit_checks_the_images_before_any_work(new_model, data, case, match):
    x, y = data
    images = {"uint8": (x > 0.5).astype(np.uint8), "bool": x > 0.5, "nan": x.copy(), "255": x * 255}[case]
    if case == "nan":
        images[0, 0, 0, 0] = NAN
    trainer = make_trainer(new_model())
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=match):
        trainer.fit(images, y, batch_size=32, nb_epochs=1)
    assert calls == []


# ------------------------------------------------------------------------------------------------ item 9: labels


@pytest.mark.parametrize("labels, match", [
    (lambda y: np.where(y == 0, 10, y), r"y.*\[0, 9\]"),
    (lambda y: np.where(y == 0, -1, y), r"y.*\[0, 9\]"),
    (lambda y: y + 0.7, r"y.*integer"),
    (lambda y: y > 4, r"y.*bool"),
    (lambda y: np.eye(9, dtype=np.float32)[np.minimum(y, 8)], r"y.*\(64, 10\)"),
    (lambda y: y.astype(np.float32) * NAN, r"y"),
])
def test_fit_checks_the_labels_before_any_work(new_model, data, labels, match):
    x, y = data
    trainer = make_trainer(new_model())
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, labels(y), batch_size=32, nb_epochs=1)
    assert calls == []


def test_fit_accepts_integral_float_labels_and_one_hot(new_model, data):
    x, y = data
    for labels in (y.astype(np.float32), np.eye(10, dtype=np.float32)[y]):
        make_trainer(new_model()).fit(x[:32], labels[:32], batch_size=32, nb_epochs=1)


def test_fit_loader_checks_labels_of_the_first_and_later_batches(new_model, data, tmp_path):
    x, y = data
    bad = y.copy()
    bad[5] = 10
    trainer = make_trainer(new_model())
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=r"loader.*labels.*\[0, 9\]"):
        trainer.fit_loader(loader_of(x, bad), nb_epochs=1)
    assert calls == []
    with pytest.raises(ValueError, match=r"loader.*labels.*integer"):
        trainer.fit_loader(loader_of(x, y + 0.7), nb_epochs=1)
    with pytest.raises(ValueError, match=r"loader.*labels.*bool"):
        trainer.fit_loader(loader_of(x, y > 4), nb_epochs=1)
    assert calls == []
    later = y.copy()
    later[50] = -1
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"loader.*labels.*epoch 1"):
        trainer.fit_loader(loader_of(x, later), nb_epochs=1)
    assert not os.path.exists(tmp_path / "last.pt")


@pytest.mark.parametrize("attack_class", [PixelAG, MMA])
def test_attacks_refuse_bool_labels(tiny_model, data, attack_class):
    x, y = data
    attack = attack_class(tiny_model, steps=1)
    with pytest.raises(ValueError, match="labels"):
        attack(torch.from_numpy(x[:4]), torch.from_numpy(y[:4]) > 4)
    with pytest.raises(ValueError, match="labels"):
        check_labels(torch.ones(3, dtype=torch.bool), 3, 10)


def test_art_adapter_refuses_one_dimensional_bool_labels(tiny_model, data):
    x, y = data
    attack = PixelAGPyTorch(make_classifier(tiny_model), max_iter=1)
    with pytest.raises(ValueError, match="y"):
        attack.generate(x[:4], y[:4] > 4)
    attack.generate(x[:4], np.eye(10, dtype=bool)[y[:4]])  # one-hot rows may be boolean


# -------------------------------------------------------------------------------------------- item 10: infinity


@pytest.mark.parametrize("value", [INF, -INF, NAN])
def test_check_number_refuses_non_finite_values(value):
    with pytest.raises(ValueError, match=r"^eps must be a finite"):
        check_number("eps", value)


@pytest.mark.parametrize("name", ["eps", "eps_low", "alpha"])
def test_pixel_ag_refuses_infinite_budgets(tiny_model, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite"):
        PixelAG(tiny_model, **{name: INF})


@pytest.mark.parametrize("name", ["eps", "eps_low", "alpha", "kappa"])
def test_mma_refuses_infinite_parameters(tiny_model, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite"):
        MMA(tiny_model, **{name: INF})


@pytest.mark.parametrize("attack_class, name", [(PixelAGPyTorch, "eps"), (PixelAGPyTorch, "eps_low"),
                                                (PixelAGPyTorch, "eps_step"), (MMAPyTorch, "eps"),
                                                (MMAPyTorch, "eps_step"), (MMAPyTorch, "kappa")])
def test_art_adapters_refuse_infinity(tiny_model, attack_class, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite"):
        attack_class(make_classifier(tiny_model), **{name: INF})
    attack = attack_class(make_classifier(tiny_model))
    with pytest.raises(ValueError, match=rf"^{name} must be a finite"):
        attack.set_params(**{name: INF})
    assert getattr(attack, name) != INF  # rolled back


@pytest.mark.parametrize("name", ["eps", "eps_low", "alpha", "beta"])
def test_trainer_refuses_infinity(new_model, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite"):
        make_trainer(new_model(), **{name: INF})


def test_budget_map_refuses_infinity():
    cams = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"^eps must be a finite"):
        budget_map(cams, INF, EPS_LOW)
    with pytest.raises(ValueError, match=r"^eps_low must be a finite"):
        budget_map(cams, EPS, INF)


# ------------------------------------------------------------------------------------------------ item 11: types


@pytest.mark.parametrize("attack_class", [PixelAG, MMA])
@pytest.mark.parametrize("model", [None, lambda x: x, "resnet18"])
def test_attacks_need_a_module(attack_class, model):
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module"):
        attack_class(model)


@pytest.mark.parametrize("attack_class", [PixelAGPyTorch, MMAPyTorch])
def test_art_adapters_need_an_art_classifier(tiny_model, attack_class):
    with pytest.raises(TypeError, match=r"^estimator must be an ART PyTorchClassifier.*nn.Module"):
        attack_class(tiny_model)
    with pytest.raises(TypeError, match=r"^estimator must be an ART PyTorchClassifier"):
        attack_class(None)


def test_trainer_needs_an_art_classifier(new_model):
    with pytest.raises(TypeError, match=r"^classifier must be an ART PyTorchClassifier.*nn.Module"):
        AdversarialTrainerPARTPyTorch(new_model())


@pytest.mark.parametrize("seed, error", [("x", TypeError), (1.5, TypeError), (True, TypeError), (None, TypeError),
                                         (-1, ValueError), (2 ** 64, ValueError)])
def test_trainer_seed_is_checked(new_model, seed, error):
    with pytest.raises(error, match=r"^seed must be"):
        make_trainer(new_model(), seed=seed)
    make_trainer(new_model(), seed=np.int64(3))  # numpy integers are integers


def test_generator_arguments_are_checked():
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator"):
        check_generator("generator", 3)
    assert check_generator("generator", None) is None
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator"):
        ckpt.rng_state(generator=3)
    with pytest.raises(TypeError, match=r"generator"):
        ckpt.rng_state(extra=[3])


def test_fit_generator_needs_an_art_data_generator(new_model):
    trainer = make_trainer(new_model())
    for generator in (3, torch.Generator(), [1, 2]):
        with pytest.raises(TypeError, match=r"^generator must be an ART DataGenerator"):
            trainer.fit_generator(generator, nb_epochs=1)


def test_fit_loader_needs_a_data_loader(new_model, data):
    x, y = data
    trainer = make_trainer(new_model())
    for loader in ([(torch.from_numpy(x), torch.from_numpy(y))], TensorDataset(torch.from_numpy(x)), None):
        with pytest.raises(TypeError, match=r"^loader must be a torch.utils.data.DataLoader"):
            trainer.fit_loader(loader, nb_epochs=1)


def test_empty_data_is_refused_before_any_work(new_model, data):
    x, y = data
    trainer = make_trainer(new_model())
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=r"x.*at least one"):
        trainer.fit(x[:0], y[:0], batch_size=32, nb_epochs=1)
    with pytest.raises(ValueError, match=r"loader.*empty"):
        trainer.fit_loader(loader_of(x[:0], y[:0]), nb_epochs=1)
    dropped = DataLoader(TensorDataset(torch.from_numpy(x[:8]), torch.from_numpy(y[:8])), batch_size=32,
                         drop_last=True)
    with pytest.raises(ValueError, match=r"loader.*empty"):
        trainer.fit_loader(dropped, nb_epochs=1)
    with pytest.raises(ValueError, match=r"generator.*empty"):
        trainer.fit_generator(_EmptyGenerator(), nb_epochs=1)
    assert calls == []


class _EmptyGenerator:
    """A DataGenerator-like object of size 0 (ART's own constructor refuses size 0, a subclass may not)."""
    size, batch_size = 0, 8

    def get_batch(self):
        raise AssertionError("never called")


@pytest.mark.parametrize("source", ["fit", "loader"])
def test_channels_last_images_are_refused(new_model, data, source):
    x, y = data
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    trainer = make_trainer(new_model())
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=r"channels-first \(N, C, H, W\).*\(N, 3, 32, 32\)"):
        if source == "fit":
            trainer.fit(nhwc, y, batch_size=32, nb_epochs=1)
        else:
            trainer.fit_loader(loader_of(nhwc, y), nb_epochs=1)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):  # another size: the classifier's input_shape
        trainer.fit(x[:, :, :16, :16], y, batch_size=32, nb_epochs=1)
    assert calls == []


def test_float64_and_float16_images_are_cast_to_the_models_dtype(new_model, data):
    """float64 (fit and loader) and float16 (loader) images train in the model's float32; float64 gives exactly the
    float32 run, since the values are the float32 values widened."""
    x, y = data
    runs = {}
    for name, images in (("float32", torch.from_numpy(x)), ("float64", torch.from_numpy(x).double()),
                         ("float16", torch.from_numpy(x).half())):
        model = new_model()
        trainer = make_trainer(model, augment=False)
        calls = count_attacks(trainer)
        torch.manual_seed(0)
        trainer.fit_loader(loader_of(images, y), nb_epochs=1)
        assert calls and set(calls) == {torch.float32}
        runs[name] = model
    assert same_weights(runs["float32"], runs["float64"])
    assert math.isfinite(make_trainer(runs["float16"]).predict(x[:2]).sum())
    model = new_model()
    trainer = make_trainer(model, augment=False)
    calls = count_attacks(trainer)
    trainer.fit(x.astype(np.float64), y, batch_size=32, nb_epochs=1)
    assert set(calls) == {torch.float32}


def test_nb_classes_must_match_the_models_output(new_model):
    model = new_model()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"nb_classes.*5.*10"):
        AdversarialTrainerPARTPyTorch(make_classifier(model, nb_classes=5), method="at", verbose=False)
    assert same_weights(model, before) and model.training  # the check forward changed nothing


def test_pytorch_data_generator_errors_name_the_generator(new_model, data):
    x, y = data
    loader = loader_of(torch.from_numpy(x * 255), torch.from_numpy(y))
    with pytest.raises(ValueError, match=r"generator.*\[0, 1\]"):
        make_trainer(new_model()).fit_generator(PyTorchDataGenerator(loader, size=64, batch_size=32), nb_epochs=1)


def test_generator_arguments_of_the_math_are_checked():
    import torchattacks_part as tp

    cams = torch.rand(2, 8, 8)
    with pytest.raises(TypeError, match="generator"):
        tp.budget_map(cams, 8 / 255, 4 / 255, rule="random", generator=3)
    with pytest.raises(TypeError, match="generator"):
        tp.auto_pgd(lambda x: x.flatten(1)[:, :3], lambda z, y: z[:, 0], torch.rand(2, 3, 4, 4),
                    torch.zeros(2, dtype=torch.long), 0.1, steps=2, generator=3)
