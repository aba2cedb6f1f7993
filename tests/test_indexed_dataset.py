"""art_part.IndexedDataset: the one-line way to train from a DataLoader or an ART PyTorchDataGenerator with
``mask_refresh > 1``, whose per-sample mask cache needs each batch's sample indices.

Real CIFAR-10 training images and the tiny CNN of conftest, on the CPU. Two kinds of evidence that the masks belong
to their samples through the wrapper: (1) with no augmentation and a sampler that replays fit(x, y)'s shuffles (its
seed's randperm each epoch), fit_loader and fit_generator train exactly the weights fit(x, y) trains: equal by
construction, since the batches, the refresh pass (index order, same batch size) and the global RNG stream are the
same. A plain shuffled DataLoader is *not* fit's order (fit shuffles with the trainer's own generator), so no such
equality is claimed for it; instead (2) with shuffling and augmentation, every step's budget is recomputed from the
CAM of each sample's un-augmented image under the model as it was at the refresh, moved by that batch's crop and flip.
"""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator
from art.estimators.classification import PyTorchClassifier
from torch.utils.data import DataLoader, IterableDataset, Sampler, Subset, TensorDataset

import art_part
from art_part import IndexedDataset
from art_part.augment import crop_flip
from art_part.masks import MaskCache
from art_part.trainer import AdversarialTrainerPARTPyTorch
from benchmarks.data import load_cifar10
from torchattacks_part import cam_maps, important_pixels

EPS, EPS_LOW = 8 / 255, 4 / 255
N, BATCH = 128, 64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny batches, one thread


@pytest.fixture(scope="module")
def train_data(data_dir):
    """The first 128 CIFAR-10 training images (float32 (N, 3, 32, 32) in [0, 1]) and labels (int64), as tensors."""
    return load_cifar10(data_dir, train=True, n=N, download=False)


def make_trainer(model, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0.0, 1.0), optimizer=optimizer)
    options = dict(method="part", eps=EPS, eps_low=EPS_LOW, steps=2, burn_in=1, mask_refresh=2, verbose=False)
    options.update(kwargs)
    return AdversarialTrainerPARTPyTorch(classifier, **options)


def state_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FitOrder(Sampler):
    """The order in which fit(x, y) visits the samples: in epoch e the (e + 1)-th ``randperm`` of a generator seeded
    with the trainer's seed (the trainer calls ``set_epoch`` before each epoch; ``iter`` draws nothing)."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            order = torch.randperm(self.n, generator=generator)
        return iter(order.tolist())

    def __len__(self):
        return self.n


# ------------------------------------------------------------------------------------------------ the wrapper


class Labelled(torch.utils.data.Dataset):
    """A map-style dataset with the attributes torchvision datasets carry."""

    classes = ["a", "b"]

    def __init__(self):
        self.targets = [0, 1, 1]

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i) / 4), self.targets[i]


def test_items_are_x_y_and_their_index():
    dataset = IndexedDataset(Labelled())
    assert art_part.IndexedDataset is IndexedDataset and "IndexedDataset" in art_part.__all__
    assert len(dataset) == 3
    x, y, i = dataset[2]
    assert torch.equal(x, Labelled()[2][0]) and y == 1 and i == 2
    assert dataset[-1][2] == 2 and dataset[np.int64(1)][2] == 1 and dataset[torch.tensor(0)][2] == 0
    with pytest.raises(IndexError, match="index 3 out of range for a dataset of 3"):
        dataset[3]
    # what code that inspects loader.dataset reads passes through; the wrapped dataset is .dataset
    assert dataset.classes == ["a", "b"] and dataset.targets == [0, 1, 1]
    assert isinstance(dataset.dataset, Labelled)
    with pytest.raises(AttributeError):
        dataset.no_such_attribute
    # DataLoader workers pickle it; copies work
    for clone in (pickle.loads(pickle.dumps(dataset)), copy.deepcopy(dataset)):
        assert clone[1][2] == 1 and clone.targets == [0, 1, 1]
    # collated by a DataLoader: the third item is an int64 index tensor
    _, _, index = next(iter(DataLoader(dataset, batch_size=3)))
    assert index.dtype == torch.int64 and index.tolist() == [0, 1, 2]


def test_wrapper_refuses_what_the_refresh_pass_cannot_read():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 2, 2), 0

    with pytest.raises(TypeError, match="map-style.*IterableDataset"):
        IndexedDataset(Stream())
    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(object())
    with pytest.raises(ValueError, match=r"items must be \(x, y\) pairs, got a tuple of 3"):
        IndexedDataset(IndexedDataset(Labelled()))[0]


# ------------------------------------------------------------------------------------------------ training


def test_training_through_the_wrapper_equals_fit_on_the_same_order(tiny_model, train_data):
    """mask_refresh=2, burn-in 1, 3 epochs (a refresh at epoch 1, its masks reused in epoch 2), no augmentation: a
    DataLoader over IndexedDataset that visits the samples in fit's order trains exactly fit's weights, through
    fit_loader and through fit_generator(PyTorchDataGenerator(...))."""
    x, y = train_data
    reference = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)  # the attack's random starts
    trained = make_trainer(reference, augment=False, seed=3)
    trained.fit(x.numpy(), y.numpy(), batch_size=BATCH, nb_epochs=3)
    assert [r["phase"] for r in trained.history] == ["burn-in", "part", "part"]
    assert 0 < trained.history[1]["important_fraction"] < 0.5

    for path in ("fit_loader", "fit_generator"):
        # generator=torch.Generator(): the loader draws its base seed from its own generator, not the global RNG
        loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=BATCH, sampler=FitOrder(N, 3),
                            generator=torch.Generator())
        model = copy.deepcopy(tiny_model).train()
        torch.manual_seed(0)
        trainer = make_trainer(model, augment=False, seed=3)
        if path == "fit_loader":
            trainer.fit_loader(loader, nb_epochs=3)
        else:
            trainer.fit_generator(PyTorchDataGenerator(loader, size=N, batch_size=BATCH), nb_epochs=3)
        fractions = [r["important_fraction"] for r in trainer.history]
        assert fractions == [r["important_fraction"] for r in trained.history], path
        assert state_equal(model, reference), path
    assert not state_equal(reference, tiny_model)


@pytest.mark.parametrize("path", ["fit_loader", "fit_generator"])
def test_each_sample_gets_the_mask_of_its_own_image(tiny_model, train_data, monkeypatch, path):
    """A shuffled DataLoader over IndexedDataset, with augmentation, mask_refresh=2, 4 epochs: each refresh computes
    the CAM mask of every un-augmented image; every PART step's budget is the mask of each sample's index from the
    latest refresh, moved by the crop and flip of its image."""
    x, y = train_data
    model = copy.deepcopy(tiny_model).train()
    trainer = make_trainer(model)
    refreshes, lookups, calls = [], [], []
    real_refresh, real_lookup, perturb = MaskCache.refresh, MaskCache.lookup, trainer.attack.perturb

    def refresh_spy(self, important, batches, epoch):
        refreshes.append((epoch, copy.deepcopy(model).eval()))  # the model the masks are computed from
        return real_refresh(self, important, batches, epoch)

    def lookup_spy(self, indices, offsets=None, flips=None, padding=4):
        lookups.append((indices.clone(), offsets.clone(), flips.clone()))
        return real_lookup(self, indices, offsets, flips, padding)

    def perturb_spy(images, labels, budget):
        calls.append((images.clone(), labels.clone(), budget.clone()))
        return perturb(images, labels, budget)

    monkeypatch.setattr(MaskCache, "refresh", refresh_spy)
    monkeypatch.setattr(MaskCache, "lookup", lookup_spy)
    trainer.attack.perturb = perturb_spy
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=BATCH, shuffle=True)
    if path == "fit_loader":
        trainer.fit_loader(loader, nb_epochs=4)
    else:
        trainer.fit_generator(PyTorchDataGenerator(loader, size=N, batch_size=BATCH), nb_epochs=4)

    assert [epoch for epoch, _ in refreshes] == [1, 3]
    expected = {epoch: torch.cat([important_pixels(cam_maps(frozen, x[i:i + 1])) for i in range(N)])
                for epoch, frozen in refreshes}
    assert (expected[1] != expected[3]).flatten(1).any(dim=1).float().mean() > 0.5  # stale masks would be caught
    per_epoch = N // BATCH
    assert len(calls) == 4 * per_epoch and len(lookups) == 3 * per_epoch
    seen = torch.zeros(N, dtype=torch.long)
    for step in range(per_epoch, 4 * per_epoch):
        epoch = step // per_epoch
        images, labels, budget = calls[step]
        index, offsets, flips = lookups[step - per_epoch]
        assert torch.equal(images, crop_flip(x[index], offsets, flips))  # the batch holds these samples...
        assert torch.equal(labels, y[index])
        masks = expected[1 if epoch < 3 else 3][index]  # ...and their budgets come from their own masks
        degenerate = masks.flatten(1).all(dim=1).view(-1, 1, 1, 1)
        reference = torch.where(crop_flip(masks, offsets, flips, fill=False) | degenerate, EPS, EPS_LOW)
        assert torch.equal(budget, reference), step
        seen[index] += 1
    assert (seen == 3).all()  # every sample once per PART epoch


# ------------------------------------------------------------------------------------------------ refusals


def test_a_loader_without_indices_is_refused_with_the_wrapper_as_the_fix(tiny_model, train_data):
    x, y = train_data
    plain = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    fix = r"wrap the dataset: DataLoader\(IndexedDataset\(dataset\), \.\.\.\)"
    messages = []
    with pytest.raises(ValueError, match=r"^loader: mask_refresh=10 \(> 1\) needs per-sample indices.*" + fix) as info:
        make_trainer(copy.deepcopy(tiny_model), mask_refresh=10).fit_loader(plain, nb_epochs=2)
    messages.append(str(info.value))
    with pytest.raises(ValueError, match=r"^generator: mask_refresh=10 \(> 1\) needs per-sample indices.*" + fix) \
            as info:
        make_trainer(copy.deepcopy(tiny_model), mask_refresh=10).fit_generator(
            PyTorchDataGenerator(plain, size=N, batch_size=BATCH), nb_epochs=2)
    messages.append(str(info.value))
    with pytest.raises(ValueError, match=r"NumpyDataGenerator does not give: wrap the dataset: "
                                         r"PyTorchDataGenerator\(DataLoader\(IndexedDataset\(dataset\)") as info:
        make_trainer(copy.deepcopy(tiny_model), mask_refresh=10).fit_generator(
            NumpyDataGenerator(x.numpy(), y.numpy(), batch_size=BATCH), nb_epochs=2)
    messages.append(str(info.value))
    assert not any("\n" in message for message in messages)  # one line each
    # the wrapper inside a Subset gives indices of the full dataset, past the mask cache: refused, with the order
    inside = DataLoader(Subset(IndexedDataset(TensorDataset(x, y)), range(64, 128)), batch_size=BATCH)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\).*got values in \[64, 127\].*outermost"):
        make_trainer(copy.deepcopy(tiny_model)).fit_loader(inside, nb_epochs=2)
    # a third item that is no index is refused before any work
    weights = DataLoader(TensorDataset(x, y, torch.rand(N)), batch_size=BATCH)
    with pytest.raises(ValueError, match=r"third item of a batch must be the samples' indices, integers of shape "
                                         r"\(64,\), got torch.float32"):
        make_trainer(copy.deepcopy(tiny_model)).fit_loader(weights, nb_epochs=2)
    # and mask_refresh=1 (the CAM of each batch) needs no index: plain (x, y) loaders train
    trainer = make_trainer(copy.deepcopy(tiny_model), mask_refresh=1)
    trainer.fit_loader(plain, nb_epochs=2)
    assert trainer.history[1]["phase"] == "part"
