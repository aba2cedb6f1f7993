"""AdversarialTrainerPARTPyTorch: six methods from one loop, masks that belong to their images, exact resume, inputs.

Real CIFAR-10 training images and the tiny CNN of conftest throughout, on the CPU. Spies wrap the trainer's attack
(``trainer.attack.perturb``) and the mask cache to record what each training step really used, and the tests recompute
it independently: the CAM budget of the very image the attack got (s = 1), or the cached mask of the sample's index
from the model as it was at the refresh epoch, moved by the batch's crop and flip (s > 1).
"""

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from art.data_generators import PyTorchDataGenerator
from art.defences.trainer import AdversarialTrainer
from art.estimators.classification import PyTorchClassifier
from torch.utils.data import DataLoader, Dataset, TensorDataset

import art_part.trainer as trainer_module
from art_part import checkpoint as ckpt
from art_part.attacks import MMAPyTorch, PixelAGPyTorch
from art_part.augment import crop_flip
from art_part.masks import MaskCache
from art_part.trainer import METHODS, AdversarialTrainerPARTPyTorch
from benchmarks.data import load_cifar10
from torchattacks_part import (MMA, budget_from_importance, budget_map, cam_maps, importance, important_pixels,
                               quadrant_mask)

EPS, EPS_LOW = 8 / 255, 4 / 255
LR = 0.05
PLAIN, PIXEL = ("at", "trades", "mart"), ("part", "part-t", "part-m")
RECORD_KEYS = {"epoch", "method", "phase", "loss", "natural_acc", "adversarial_acc", "lr", "important_fraction",
               "mean_budget", "degenerate_cams", "seconds"}


@pytest.fixture(scope="module")
def train_data(data_dir):
    """The first 1000 CIFAR-10 training images (numpy float32 (N, 3, 32, 32) in [0, 1]) and labels (int64)."""
    images, labels = load_cifar10(data_dir, train=True, n=1000, download=False)
    return images.numpy(), labels.numpy()


@pytest.fixture
def new_model(tiny_model):
    """Factory of identical fresh TinyCNNs (seed 0), or of another initialisation with ``seed``."""

    def make(seed=None):
        if seed is None:
            return copy.deepcopy(tiny_model).train()
        torch.manual_seed(seed)
        return type(tiny_model)().train()

    return make


def make_classifier(model, lr=LR, optimizer=True, clip_values=(0.0, 1.0)):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4) if optimizer else None
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                             clip_values=clip_values, optimizer=opt)


def make_trainer(model, method="part", lr=LR, **kwargs):
    options = dict(method=method, eps=EPS, eps_low=EPS_LOW, steps=2, burn_in=1, verbose=False)
    options.update(kwargs)
    return AdversarialTrainerPARTPyTorch(make_classifier(model, lr), **options)


def spy_on_mask_cache(monkeypatch, model):
    """Record each mask refresh (its epoch and a frozen copy of the model it used) and each lookup (indices, crop
    offsets, flips) of the trainer's MaskCache. Returns the two lists, filled as training runs."""
    refreshes, lookups = [], []
    real_refresh, real_lookup = MaskCache.refresh, MaskCache.lookup

    def refresh_spy(self, important, batches, epoch):
        refreshes.append((epoch, copy.deepcopy(model).eval()))
        return real_refresh(self, important, batches, epoch)

    def lookup_spy(self, indices, offsets=None, flips=None, padding=4):
        lookups.append((indices.clone(), offsets.clone(), flips.clone()))
        return real_lookup(self, indices, offsets, flips, padding)

    monkeypatch.setattr(MaskCache, "refresh", refresh_spy)
    monkeypatch.setattr(MaskCache, "lookup", lookup_spy)
    return refreshes, lookups


def spy_attack(trainer, extra=None):
    """Record (images, labels, budget[, extra(images)]) of every call of the trainer's attack."""
    calls = []
    perturb = trainer.attack.perturb

    def spy(images, labels, budget):
        calls.append((images.clone(), labels.clone(), budget.clone(), extra(images) if extra else None))
        return perturb(images, labels, budget)

    trainer.attack.perturb = spy
    return calls


def two_levels(budgets):
    """The budgets hold exactly the two levels eps_low and eps (float32), both present."""
    return torch.equal(torch.cat([b.flatten() for b in budgets]).unique(), torch.tensor([EPS_LOW, EPS]))


def state_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------ 1. six methods


def test_trainer_is_an_art_adversarial_trainer(new_model, train_data):
    assert issubclass(AdversarialTrainerPARTPyTorch, AdversarialTrainer)
    trainer = make_trainer(new_model(), "part")
    assert isinstance(trainer, AdversarialTrainer)
    assert trainer.get_classifier() is trainer._classifier
    assert isinstance(trainer.attacks[0], PixelAGPyTorch) and trainer.attack is trainer.attacks[0].attack
    assert trainer.predict(train_data[0][:4]).shape == (4, 10)  # ART's own method, inherited
    assert set(METHODS) == set(PLAIN + PIXEL + ("standard",))


@pytest.mark.parametrize("method", PLAIN + PIXEL)
def test_each_method_trains_and_logs(new_model, train_data, tmp_path, method):
    x, y = train_data
    model = new_model()
    start = copy.deepcopy(model)
    trainer = make_trainer(model, method, checkpoint_dir=str(tmp_path))
    calls = spy_attack(trainer)
    ends = []
    trainer.fit(x, y, batch_size=128, nb_epochs=2, callback=lambda t, record: ends.append(len(calls)))

    assert ends == [8, 16]  # 1000 images in batches of 128, every batch attacked
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())

    records = read_log(tmp_path)
    assert records == trainer.history
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert set(record) == RECORD_KEYS and record["method"] == method
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        assert 0 <= record["natural_acc"] <= 1 and 0 <= record["adversarial_acc"] <= 1
        assert record["seconds"] > 0 and isinstance(record["degenerate_cams"], int) and record["degenerate_cams"] >= 0
    assert [r["lr"] for r in records] == pytest.approx([LR, LR / 10])  # "paper": lr / 10 at int(0.75 * 2) = 1

    burn_in, after = [c[2] for c in calls[:8]], [c[2] for c in calls[8:]]
    assert all(((b == EPS).all() for b in burn_in))  # every method: the plain method, eps everywhere, in the burn-in
    assert records[0]["important_fraction"] == 1.0
    assert records[0]["mean_budget"] == pytest.approx(EPS, rel=1e-6)  # eps everywhere
    assert records[0]["phase"] == ("burn-in" if method in PIXEL else "plain")
    if method in PLAIN:
        assert all((b == EPS).all() for b in after)
        assert records[1]["phase"] == "plain" and records[1]["important_fraction"] == 1.0
        assert records[1]["mean_budget"] == pytest.approx(EPS, rel=1e-6)
    else:
        values = torch.cat([b.flatten() for b in after])
        assert two_levels(after)
        fraction = (values == EPS).float().mean().item()
        assert 0.05 < fraction < 0.5
        assert records[1]["phase"] == "part" and records[1]["important_fraction"] == pytest.approx(fraction, abs=1e-6)
        # the mean over every entry of every budget the attacks used: eps_low + (eps - eps_low) * fraction
        assert records[1]["mean_budget"] == pytest.approx(values.double().mean().item(), rel=1e-6)
        assert records[1]["mean_budget"] == pytest.approx(EPS_LOW + (EPS - EPS_LOW) * fraction, rel=1e-6)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2


def test_natural_accuracy_pass_leaves_batchnorm_statistics_alone(new_model, train_data):
    """AT/PART's extra natural forward (for the accuracy) and the attack run in eval mode: after a step the BN running
    statistics are those of one train-mode forward of the adversarial batch, nothing else."""
    x, y = torch.from_numpy(train_data[0][:64]), torch.from_numpy(train_data[1][:64])
    model = new_model()
    trainer = make_trainer(model, "at", steps=3, track_natural=True)
    calls = []
    perturb = trainer.attack.perturb
    trainer.attack.perturb = lambda i, l, b: calls.append(perturb(i, l, b)) or calls[-1]
    reference = copy.deepcopy(model).train()
    _, natural_correct, _ = trainer._step(model, trainer._classifier.optimizer, x, y, torch.full_like(x[:, :1], EPS))
    with torch.no_grad():
        reference(calls[0])
        # natural accuracy: the weights before the update, eval mode (BN statistics of this step's forward)
        natural = (copy.deepcopy(reference).eval()(x).argmax(1) == y).sum().item()
    for (name, a), b in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), name
    assert natural_correct.item() == natural


# --------------------------------------------------------------------------------- 3. masks belong to their images


def test_s1_budget_is_the_cam_budget_of_each_augmented_image(new_model, train_data, monkeypatch):
    x, y = train_data[0][:256], train_data[1][:256]
    model = new_model()
    trainer = make_trainer(model, "part", mask_refresh=1)

    def independent_budget(images):  # the model as it is at this step, a copy in eval mode
        frozen = copy.deepcopy(model).eval()
        return budget_map(cam_maps(frozen, images), EPS, EPS_LOW)

    calls = spy_attack(trainer, extra=independent_budget)
    augmented = []
    real_crop_flip = trainer_module.crop_flip

    def crop_flip_spy(images, offsets, flips, *args, **kwargs):
        out = real_crop_flip(images, offsets, flips, *args, **kwargs)
        augmented.append((images.clone(), out.clone()))
        return out

    monkeypatch.setattr(trainer_module, "crop_flip", crop_flip_spy)
    trainer.fit(x, y, batch_size=64, nb_epochs=2)

    assert len(calls) == len(augmented) == 8
    for step, ((images, _, budget, reference), (before, after)) in enumerate(zip(calls, augmented)):
        assert torch.equal(images, after)  # the attack got the augmented images...
        assert not torch.equal(after, before)  # ...and augmentation did something
        if step < 4:  # burn-in
            assert (budget == EPS).all()
        else:
            assert budget.shape == (64, 1, 32, 32)
            assert torch.equal(budget, reference), step


def test_fixed_mask_replaces_the_cam_after_the_burn_in(new_model, train_data):
    """Paper Figure 1: a fixed quarter gets eps_low in every augmented image, the rest eps; no CAM is computed."""
    x, y = train_data[0][:128], train_data[1][:128]
    trainer = make_trainer(new_model(), "part", fixed_mask=quadrant_mask(32, 32, "br"))
    trainer.attack.important = None  # calling the CAM would fail
    calls = spy_attack(trainer)
    trainer.fit(x, y, batch_size=64, nb_epochs=2)
    expected = torch.full((1, 1, 32, 32), EPS)
    expected[..., 16:, 16:] = EPS_LOW
    assert [(c[2] == EPS).all().item() for c in calls] == [True, True, False, False]  # burn-in, then the mask
    for _, _, budget, _ in calls[2:]:
        assert torch.equal(budget, expected.expand(64, -1, -1, -1))
    assert trainer.history[-1]["important_fraction"] == pytest.approx(0.75)
    # the mean budget, by hand: eps in the burn-in, then 3/4 of the entries at eps and 1/4 at eps_low
    assert [r["mean_budget"] for r in trainer.history] == pytest.approx([EPS, EPS_LOW + (EPS - EPS_LOW) * 0.75],
                                                                        rel=1e-6)


def test_fixed_mask_is_checked(new_model, train_data):
    with pytest.raises(ValueError, match="fixed_mask"):
        make_trainer(new_model(), fixed_mask=torch.ones(1, 1, 32, 32))  # not boolean
    with pytest.raises(ValueError, match="fixed_mask"):
        make_trainer(new_model(), fixed_mask=quadrant_mask(16, 16, "ul")).fit(
            train_data[0][:32], train_data[1][:32], batch_size=32, nb_epochs=2)


def test_s2_masks_are_cached_per_sample_and_moved_with_their_images(new_model, train_data, monkeypatch):
    """s = 2, burn-in 1, 5 epochs: refreshes at epochs 1 and 3 (0-based) only, from the un-augmented images; every
    step's budget is the cached mask of each sample's index, with exactly that sample's crop and flip."""
    x, y = train_data[0][:256], train_data[1][:256]
    x_tensor = torch.from_numpy(x)
    model = new_model()
    trainer = make_trainer(model, "part", mask_refresh=2, lr=0.1)
    refreshes, lookups = spy_on_mask_cache(monkeypatch, model)
    draws, real_draw = [], trainer_module.draw_crop_flip

    def draw_spy(*args, **kwargs):
        draws.append(real_draw(*args, **kwargs))
        return draws[-1]

    monkeypatch.setattr(trainer_module, "draw_crop_flip", draw_spy)
    calls = spy_attack(trainer)
    trainer.fit(x, y, batch_size=64, nb_epochs=5)

    assert [epoch for epoch, _ in refreshes] == [1, 3]
    # The masks each refresh must produce: the CAM of the un-augmented image, one image at a time.
    expected = {epoch: torch.cat([important_pixels(cam_maps(frozen, x_tensor[i:i + 1])) for i in range(len(x))])
                for epoch, frozen in refreshes}
    changed = (expected[1] != expected[3]).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.5  # stale masks would be caught

    assert len(calls) == 20 and len(lookups) == 16 and len(draws) == 20
    seen = torch.zeros(len(x), dtype=torch.long)
    for step in range(4, 20):
        epoch = step // 4
        images, labels, budget, _ = calls[step]
        index, offsets, flips = lookups[step - 4]
        assert torch.equal(offsets, draws[step][0]) and torch.equal(flips, draws[step][1])
        # The images of the batch are the samples of these indices with exactly these crops and flips...
        assert torch.equal(images, crop_flip(x_tensor[index], offsets, flips))
        assert torch.equal(labels, torch.from_numpy(y)[index])
        # ...and so are their budgets, from the masks of the latest refresh.
        masks = expected[1 if epoch < 3 else 3][index]
        degenerate = masks.flatten(1).all(dim=1).view(-1, 1, 1, 1)  # all-important: eps everywhere, border too
        reference = torch.where(crop_flip(masks, offsets, flips, fill=False) | degenerate, EPS, EPS_LOW)
        assert torch.equal(budget, reference), step
        seen[index] += 1
    assert (seen == 4).all()  # every sample once per PART epoch
    assert trainer.history[1]["important_fraction"] == pytest.approx(expected[1].float().mean().item())


@pytest.mark.parametrize("s", [1, 2])
def test_degenerate_cams_are_counted_and_get_full_eps(new_model, train_data, s):
    """A model whose CAM layer outputs zeros has a degenerate (all-zero) map for every image: each such image gets
    eps everywhere, and the log counts them (s = 1: per batch; s = 2: in the refresh pass)."""
    x, y = train_data[0][:128], train_data[1][:128]
    model = new_model()
    model.features.register_forward_hook(lambda module, inputs, output: output * 0)
    trainer = make_trainer(model, "part", mask_refresh=s, steps=1)
    calls = spy_attack(trainer)
    trainer.fit(x, y, batch_size=64, nb_epochs=4)
    assert all((c[2] == EPS).all() for c in calls)
    counts = [r["degenerate_cams"] for r in trainer.history]
    assert counts == ([0, 128, 128, 128] if s == 1 else [0, 128, 0, 128])


# ------------------------------------------------------------------------------------------- 4. nothing lost


class Stop(Exception):
    pass


def stop_after(epoch):
    def callback(trainer, record):
        if record["epoch"] == epoch:
            raise Stop

    return callback


class IndexedDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def run(model, folder, s, source, x, y, callback=None, resume=False):
    trainer = make_trainer(model, "part", mask_refresh=s, checkpoint_dir=folder)
    if source.startswith("loader"):
        # "loader": shuffled from torch's global RNG; "loader-generator": from the loader's own generator, seeded
        # differently in the resumed run (its state must come back from the checkpoint).
        own = torch.Generator().manual_seed(99 if resume else 5) if source == "loader-generator" else None
        loader = DataLoader(IndexedDataset(x, y), batch_size=64, shuffle=True, generator=own)
        trainer.fit_loader(loader, nb_epochs=4, resume=resume, callback=callback)
    else:
        trainer.fit(x, y, batch_size=64, nb_epochs=4, resume=resume, callback=callback)
    return trainer


_uninterrupted = {}


@pytest.mark.parametrize("s, stop, source", [(1, 1, "numpy"), (1, 2, "numpy"), (2, 1, "numpy"), (2, 2, "numpy"),
                                             (2, 3, "numpy"), (2, 2, "loader"), (1, 2, "loader-generator")])
def test_resume_continues_exactly(new_model, train_data, tmp_path, s, stop, source):
    """A run stopped after epoch `stop` and resumed by a fresh trainer, model and optimizer (other initial weights,
    other global seed) ends with the weights of an uninterrupted run: burn-in 1, 4 epochs, augmentation on."""
    x, y = train_data[0][:256], train_data[1][:256]
    if (s, source) not in _uninterrupted:
        torch.manual_seed(1)
        model = new_model()
        trainer = run(model, str(tmp_path / "full"), s, source, x, y)
        _uninterrupted[s, source] = (model, trainer.history)
    full, full_history = _uninterrupted[s, source]

    torch.manual_seed(1)
    with pytest.raises(Stop):
        run(new_model(), str(tmp_path / "cut"), s, source, x, y, callback=stop_after(stop))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == stop

    torch.manual_seed(12345)
    model = new_model(seed=7)
    assert not state_equal(model, full)
    trainer = run(model, str(tmp_path / "cut"), s, source, x, y, resume=True)
    assert state_equal(model, full)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in trainer.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in full_history]
    assert [r["epoch"] for r in read_log(tmp_path / "cut")] == [1, 2, 3, 4]


def test_checkpoint_contents_load_with_weights_only(new_model, train_data, tmp_path):
    x, y = train_data[0][:128], train_data[1][:128]
    model = new_model()
    trainer = make_trainer(model, "part-m", mask_refresh=2, checkpoint_dir=str(tmp_path))
    trainer.fit(x, y, batch_size=64, nb_epochs=2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "masks", "method", "history"} <= set(state)
    assert state["epoch"] == 2 and state["method"] == "part-m"
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2
    assert {"torch", "python", "generator"} <= set(state["rng"])
    masks = state["masks"]["masks"]
    assert masks.shape == (128, 1, 32, 32) and masks.dtype == torch.bool and state["masks"]["refreshed_at"] == 1
    assert 0 < masks.float().mean() < 0.5
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "log.jsonl"]  # no temporary files left


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """torch, Python, numpy, the trainer's generator and a data loader's generator all come back exactly."""
    import random

    generator, extra = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    torch.manual_seed(3), random.seed(4), np.random.seed(5)
    ckpt.atomic_save({"rng": ckpt.rng_state(generator, [extra])}, str(tmp_path / "rng.pt"))

    def draw():
        return (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist(),
                torch.rand(3, generator=generator).tolist(), torch.rand(3, generator=extra).tolist())

    expected = draw()
    draw()  # move every RNG on
    ckpt.set_rng_state(ckpt.load(str(tmp_path / "rng.pt"))["rng"], generator, [extra])
    assert draw() == expected
    with pytest.raises(ValueError, match="generator"):
        ckpt.set_rng_state(ckpt.load(str(tmp_path / "rng.pt"))["rng"], generator, [])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    ckpt.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"half a checkpoint")
        else:
            with open(f, "wb") as handle:
                handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(new_model, train_data, tmp_path):
    """From the second batch of epoch 2 on every forward returns NaN (a batch the per-20-batch check does not see):
    training stops with FloatingPointError and last.pt still holds the finite weights of epoch 1."""
    x, y = train_data[0][:256], train_data[1][:256]
    model = new_model()
    poison = {"armed": False, "on": False}
    model.register_forward_hook(lambda module, inputs, output: output * float("nan") if poison["on"] else output)
    trainer = make_trainer(model, "part", checkpoint_dir=str(tmp_path))
    perturb = trainer.attack.perturb
    batches = []

    def spy(images, labels, budget):
        if poison["armed"]:
            batches.append(len(images))
            poison["on"] = len(batches) >= 2
        return perturb(images, labels, budget)

    trainer.attack.perturb = spy
    good = {}

    def callback(t, record):
        good["weights"] = copy.deepcopy(model.state_dict())
        poison["armed"] = True

    with pytest.raises(FloatingPointError, match="NaN or inf.*epoch 2") as error:
        trainer.fit(x, y, batch_size=64, nb_epochs=3, callback=callback)
    assert "checkpoint of epoch 1" in str(error.value)
    state = ckpt.load(str(tmp_path / "last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    assert all(torch.equal(state["model"][k], v) for k, v in good["weights"].items())
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # training really went bad
    assert [r["epoch"] for r in read_log(tmp_path)] == [1]


# ------------------------------------------------------------------------------------------------- 5. inputs


def test_each_fit_starts_a_new_history(new_model, train_data, tmp_path):
    x, y = train_data[0][:32], train_data[1][:32]
    trainer = make_trainer(new_model(), "at", steps=1, checkpoint_dir=str(tmp_path))
    trainer.fit(x, y, batch_size=32, nb_epochs=2)
    trainer.fit(x, y, batch_size=32, nb_epochs=1, overwrite=True)  # a second run into the same folder, as asked
    assert [r["epoch"] for r in trainer.history] == [1]
    assert [r["epoch"] for r in read_log(tmp_path)] == [1]


def test_fit_one_hot_equals_indices(new_model, train_data):
    x, y = train_data[0][:128], train_data[1][:128]
    models = []
    for labels in (y, np.eye(10, dtype=np.float32)[y]):
        torch.manual_seed(0)
        models.append(new_model())
        make_trainer(models[-1], "part-t").fit(x, labels, batch_size=64, nb_epochs=2)
    assert state_equal(*models)
    assert not state_equal(models[0], new_model())


def test_fit_loader_indexed_s2_and_unindexed_s1(new_model, train_data):
    x, y = train_data[0][:192], train_data[1][:192]
    model = new_model()
    trainer = make_trainer(model, "part", mask_refresh=2)
    calls = spy_attack(trainer)
    trainer.fit_loader(DataLoader(IndexedDataset(x, y), batch_size=64, shuffle=True), nb_epochs=2)
    assert len(calls) == 6 and not state_equal(model, new_model())
    assert two_levels([c[2] for c in calls[3:]])
    assert trainer.history[1]["phase"] == "part"

    model = new_model()
    trainer = make_trainer(model, "part", mask_refresh=1)
    calls = spy_attack(trainer)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64, shuffle=True)
    trainer.fit_loader(loader, nb_epochs=2)
    assert len(calls) == 6 and not state_equal(model, new_model())
    assert two_levels([c[2] for c in calls[3:]])

    with pytest.raises(ValueError, match="mask_refresh"):
        make_trainer(new_model(), "part", mask_refresh=2).fit_loader(loader, nb_epochs=2)


def test_fit_loader_equals_fit_on_the_same_batches(new_model, train_data):
    """The same images in the same batches (fit's first shuffle, no augmentation): fit_loader and fit make the same
    updates, with one-hot labels in the loader."""
    x, y = train_data[0][:128], train_data[1][:128]
    a, b = new_model(), new_model()
    torch.manual_seed(0)
    make_trainer(a, "trades", augment=False, seed=3).fit(x, y, batch_size=64, nb_epochs=1)
    order = torch.randperm(128, generator=torch.Generator().manual_seed(3))  # fit's shuffle (the trainer's seed)
    one_hot = torch.from_numpy(np.eye(10, dtype=np.float32)[y])
    torch.manual_seed(0)
    make_trainer(b, "trades", augment=False, seed=3).fit_loader(
        DataLoader(TensorDataset(torch.from_numpy(x)[order], one_hot[order]), batch_size=64,
                   generator=torch.Generator()), nb_epochs=1)  # its own generator: the global RNG stays as in fit
    assert state_equal(a, b)


def test_fit_generator_with_art_pytorch_data_generator(new_model, train_data):
    x, y = train_data[0][:128], train_data[1][:128]
    one_hot = torch.from_numpy(np.eye(10, dtype=np.float32)[y])  # ART's label convention
    loader = DataLoader(TensorDataset(torch.from_numpy(x), one_hot), batch_size=64, shuffle=True)
    model = new_model()
    trainer = make_trainer(model, "part-m")
    trainer.fit_generator(PyTorchDataGenerator(loader, size=128, batch_size=64), nb_epochs=2)
    assert [r["epoch"] for r in trainer.history] == [1, 2] and trainer.history[1]["phase"] == "part"
    assert all(math.isfinite(r["loss"]) for r in trainer.history)
    assert not state_equal(model, new_model())


def lrs_of(new_model, x, y, schedule_factory, nb_epochs):
    model = new_model()
    clf = make_classifier(model)
    schedule = schedule_factory(clf.optimizer)
    trainer = AdversarialTrainerPARTPyTorch(clf, method="at", steps=1, schedule=schedule, verbose=False)
    trainer.fit(x, y, batch_size=32, nb_epochs=nb_epochs)
    return [r["lr"] for r in trainer.history], trainer


def reference_lrs(factory, nb_epochs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)
    scheduler = factory(optimizer)
    lrs = []
    for _ in range(nb_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_schedules(new_model, train_data):
    x, y = train_data[0][:32], train_data[1][:32]
    paper, _ = lrs_of(new_model, x, y, lambda opt: "paper", 8)
    assert paper == pytest.approx([LR] * 6 + [LR / 10] * 2)  # lr / 10 at 3/4 of the epochs
    released, _ = lrs_of(new_model, x, y, lambda opt: "released", 8)
    assert released == pytest.approx([LR] * 7 + [LR / 10])  # the authors' code: the last epoch only
    constant, _ = lrs_of(new_model, x, y, lambda opt: "constant", 3)
    assert constant == pytest.approx([LR] * 3)

    for factory in (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
                    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=4)):
        ours, _ = lrs_of(new_model, x, y, factory, 4)
        assert ours == pytest.approx(reference_lrs(factory, 4))
        assert len(set(ours)) > 2

    plateau, trainer = lrs_of(new_model, x, y, lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=0), 4)
    losses = [r["loss"] for r in trainer.history]
    assert trainer._scheduler.best == min(losses)  # it was stepped with the epoch loss


def test_mma_example_generator_trains(new_model, train_data):
    x, y = train_data[0][:128], train_data[1][:128]
    model = new_model()
    trainer = make_trainer(model, "part", example_generator="mma", mma_k=2)
    assert isinstance(trainer.attacks[0], MMAPyTorch) and isinstance(trainer.attack, MMA)
    calls = spy_attack(trainer)
    trainer.fit(x, y, batch_size=64, nb_epochs=2)
    assert len(calls) == 4 and all(math.isfinite(r["loss"]) for r in trainer.history)
    assert (calls[0][2] == EPS).all()
    assert two_levels([c[2] for c in calls[2:]])
    assert not state_equal(model, new_model())


# --------------------------------------------------------------------------------------------- 6. bad input


@pytest.mark.parametrize("kwargs, name", [
    (dict(method="fgsm"), "method"),
    (dict(mask_refresh=0), "mask_refresh"),
    (dict(eps_low=9 / 255), "eps_low"),
    (dict(schedule="cosine"), "schedule"),
    (dict(example_generator="fgsm"), "example_generator"),
    (dict(burn_in=-1), "burn_in"),
])
def test_bad_parameters_raise_value_error_naming_them(new_model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_trainer(new_model(), **kwargs)


@pytest.mark.parametrize("clip_values", [None, (0.0, 255.0), (-1.0, 1.0)])
def test_classifier_clip_values_must_be_unit_range(new_model, clip_values):
    with pytest.raises(ValueError, match="clip_values"):
        AdversarialTrainerPARTPyTorch(make_classifier(new_model(), clip_values=clip_values))


def test_resume_needs_a_checkpoint_dir(new_model, train_data):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        make_trainer(new_model(), "at").fit(train_data[0][:32], train_data[1][:32], nb_epochs=1, resume=True)


def test_scheduler_must_drive_the_classifiers_optimizer(new_model):
    other = torch.optim.SGD(new_model().parameters(), lr=LR)
    with pytest.raises(ValueError, match="schedule"):
        make_trainer(new_model(), schedule=torch.optim.lr_scheduler.CosineAnnealingLR(other, T_max=4))
    with pytest.raises(ValueError, match="schedule"):
        make_trainer(new_model(), schedule=object())


def test_classifier_needs_an_optimizer(new_model):
    with pytest.raises(ValueError, match="optimizer"):
        AdversarialTrainerPARTPyTorch(make_classifier(new_model(), optimizer=False))


def test_burn_in_must_end_before_training_does_for_part(new_model, train_data):
    x, y = train_data[0][:32], train_data[1][:32]
    for burn_in, nb_epochs in ((2, 2), (3, 2)):
        with pytest.raises(ValueError, match="burn_in"):
            make_trainer(new_model(), "part", burn_in=burn_in).fit(x, y, batch_size=32, nb_epochs=nb_epochs)
    make_trainer(new_model(), "at", burn_in=20, steps=1).fit(x, y, batch_size=32, nb_epochs=1)  # plain: no PART phase


# ----------------------------------------------------------------------------------- 7. the continuous "linear" rule


def test_linear_rule_s1_budget_is_the_continuous_cam_budget_of_each_augmented_image(new_model, train_data):
    x, y = train_data[0][:128], train_data[1][:128]
    model = new_model()
    trainer = make_trainer(model, "part", rule="linear", mask_refresh=1)

    def independent_budget(images):  # the model as it is at this step, a copy in eval mode
        return budget_map(cam_maps(copy.deepcopy(model).eval(), images), EPS, EPS_LOW, rule="linear")

    calls = spy_attack(trainer, extra=independent_budget)
    trainer.fit(x, y, batch_size=64, nb_epochs=2)
    assert len(calls) == 4 and all((c[2] == EPS).all() for c in calls[:2])  # burn-in: eps everywhere
    for step, (_, _, budget, reference) in enumerate(calls[2:]):
        assert budget.shape == (64, 1, 32, 32) and torch.equal(budget, reference), step
    values = torch.cat([c[2].flatten() for c in calls[2:]])
    assert len(values.unique()) > 1000  # continuous, not two levels
    assert values.min() >= np.float32(EPS_LOW) and values.max() <= np.float32(EPS)
    burn_in, part = trainer.history
    assert burn_in["mean_budget"] == pytest.approx(EPS, rel=1e-6)
    assert part["mean_budget"] == pytest.approx(values.double().mean().item(), rel=1e-6)
    assert EPS_LOW < part["mean_budget"] < EPS
    # important_fraction of "linear": the fraction of entries at the full eps
    assert part["important_fraction"] == pytest.approx((values >= EPS).float().mean().item(), abs=1e-6)


def torchvision_move(maps, offsets, flips, padding=4):
    """Each (1, H, W) map through torchvision's pad (fill 0), crop and hflip: the crop and flip, independently."""
    import torchvision.transforms.functional as TF

    h, w = maps.shape[-2:]
    moved = []
    for m, (row, col), flip in zip(maps, offsets.tolist(), flips.tolist()):
        m = TF.crop(TF.pad(m, [padding], fill=0), row, col, h, w)
        moved.append(TF.hflip(m) if flip else m)
    return torch.stack(moved)


def test_linear_rule_s2_caches_float_maps_and_moves_them_with_their_images(new_model, train_data, tmp_path,
                                                                           monkeypatch):
    """s = 2, burn-in 1, 3 epochs: one refresh (epoch 1, 0-based) of float32 maps from the un-augmented images; each
    step's budget is eps_low + (eps - eps_low) * (the sample's map, with exactly its image's crop and flip)."""
    x, y = train_data[0][:128], train_data[1][:128]
    x_tensor = torch.from_numpy(x)
    model = new_model()
    trainer = make_trainer(model, "part", rule="linear", mask_refresh=2, checkpoint_dir=str(tmp_path))
    refreshes, lookups = spy_on_mask_cache(monkeypatch, model)
    calls = spy_attack(trainer)
    trainer.fit(x, y, batch_size=64, nb_epochs=3)

    ((epoch, frozen),) = refreshes
    assert epoch == 1
    # The maps of the refresh pass: the un-augmented images in index order, in batches of 64 as that pass reads them
    # (float maps, unlike masks, would show the rounding of another batch size).
    maps = torch.cat([importance(cam_maps(frozen, x_tensor[i:i + 64]), "linear") for i in range(0, len(x), 64)])
    assert len(calls) == 6 and len(lookups) == 4
    for step in range(2, 6):
        images, _, budget, _ = calls[step]
        index, offsets, flips = lookups[step - 2]
        assert torch.equal(images, crop_flip(x_tensor[index], offsets, flips))
        moved = torchvision_move(maps[index], offsets, flips)
        degenerate = (maps[index] == 1).flatten(1).all(dim=1).view(-1, 1, 1, 1)  # all ones: eps, border too
        reference = budget_from_importance(torch.where(degenerate, 1.0, moved), EPS, EPS_LOW)
        assert torch.equal(budget, reference), step
    values = torch.cat([c[2].flatten() for c in calls[2:]])
    assert len(values.unique()) > 1000
    for record in trainer.history[1:]:
        assert EPS_LOW < record["mean_budget"] < EPS
    assert trainer.history[2]["mean_budget"] == pytest.approx(
        torch.cat([c[2].flatten() for c in calls[4:]]).double().mean().item(), rel=1e-6)
    # the refresh's fraction of entries at full eps (un-augmented maps)
    assert trainer.history[1]["important_fraction"] == pytest.approx((maps >= 1).float().mean().item())
    state = torch.load(tmp_path / "last.pt", weights_only=True)["masks"]
    assert state["masks"].dtype == torch.float32 and torch.equal(state["masks"], maps)


def test_linear_rule_s2_resume_continues_exactly(new_model, train_data, tmp_path):
    """The float32 map cache goes through the checkpoint: a run stopped after epoch 2 and resumed by a fresh model
    ends with the weights of an uninterrupted one (burn-in 1, s = 2: epoch 3 uses the maps of the epoch-2 refresh)."""
    x, y = train_data[0][:128], train_data[1][:128]

    def train(model, folder, **kwargs):
        trainer = make_trainer(model, "part", rule="linear", mask_refresh=2, checkpoint_dir=folder)
        trainer.fit(x, y, batch_size=64, nb_epochs=4, **kwargs)
        return trainer

    torch.manual_seed(1)
    full = new_model()
    history = train(full, str(tmp_path / "full")).history
    torch.manual_seed(1)
    with pytest.raises(Stop):
        train(new_model(), str(tmp_path / "cut"), callback=stop_after(2))
    torch.manual_seed(12345)
    model = new_model(seed=7)
    resumed = train(model, str(tmp_path / "cut"), resume=True)
    assert state_equal(model, full)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_unknown_rule_is_refused_listing_the_rules(new_model):
    with pytest.raises(ValueError, match=r"rule must be one of \['cam', 'jet', 'linear', 'random'\], got 'lin'"):
        make_trainer(new_model(), "part", rule="lin")


# ------------------------------------------------------------------------------------ 8. standard training


def test_standard_is_plain_sgd_on_the_natural_batches_and_never_attacks(new_model, train_data, tmp_path):
    """One epoch of "standard" equals a hand-written SGD loop on the same batches (the trainer's shuffle, no
    augmentation); the attack is never called; the record has no adversarial accuracy and no budget."""
    x, y = train_data[0][:192], train_data[1][:192]
    model, reference = new_model(), new_model()
    trainer = make_trainer(model, "standard", augment=False, seed=3, checkpoint_dir=str(tmp_path))

    def never(*args, **kwargs):
        raise AssertionError("standard training called the attack")

    for name in ("perturb", "budget", "budget_from", "important", "forward"):
        setattr(trainer.attack, name, never)
    trainer.fit(x, y, batch_size=64, nb_epochs=1)

    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))  # fit's shuffle (the trainer's seed)
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9, weight_decay=2e-4)
    reference.train()
    loss_sum = correct = 0.0
    for start in range(0, len(x), 64):
        index = order[start:start + 64]
        images, labels = torch.from_numpy(x)[index], torch.from_numpy(y)[index]
        logits = reference(images)
        loss = nn.functional.cross_entropy(logits, labels)
        loss_sum += loss.item() * len(index)
        correct += (logits.argmax(1) == labels).sum().item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key].double(), theirs[key].double(), rtol=0, atol=1e-6), key
    assert not state_equal(model, new_model())

    (record,) = trainer.history
    assert set(record) == RECORD_KEYS and record["method"] == "standard" and record["phase"] == "standard"
    assert record["adversarial_acc"] is None and record["mean_budget"] is None
    assert record["important_fraction"] is None and record["degenerate_cams"] == 0
    assert record["natural_acc"] == pytest.approx(correct / len(x))
    assert record["loss"] == pytest.approx(loss_sum / len(x), rel=1e-5)
    assert read_log(tmp_path) == trainer.history  # None written as JSON null, read back


def test_standard_resumes_exactly_with_augmentation(new_model, train_data, tmp_path):
    x, y = train_data[0][:128], train_data[1][:128]

    def train(model, folder, **kwargs):
        trainer = make_trainer(model, "standard", checkpoint_dir=folder)
        trainer.fit(x, y, batch_size=64, nb_epochs=3, **kwargs)
        return trainer

    full = new_model()
    train(full, str(tmp_path / "full"))
    with pytest.raises(Stop):
        train(new_model(), str(tmp_path / "cut"), callback=stop_after(1))
    model = new_model(seed=7)
    resumed = train(model, str(tmp_path / "cut"), resume=True)
    assert state_equal(model, full) and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["lr"] for r in resumed.history] == pytest.approx([LR, LR, LR / 10])  # the same schedule
