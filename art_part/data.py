"""Datasets for the trainer: :class:`IndexedDataset` gives each sample its index, which ``mask_refresh > 1`` needs.

With ``mask_refresh=s > 1`` the trainer keeps one importance mask per *sample* (:mod:`art_part.masks`), so every
batch it trains on must say which samples it holds. ``fit(x, y)`` knows (it shuffles the arrays itself); a
``DataLoader`` or an ART ``PyTorchDataGenerator`` says it when its dataset yields ``(x, y, index)``:

    loader = DataLoader(IndexedDataset(dataset), batch_size=128, shuffle=True)
    trainer.fit_loader(loader)                                              # or
    trainer.fit_generator(PyTorchDataGenerator(loader, len(dataset), 128))
"""

import operator

import torch


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose item ``i`` is ``(x, y, i)``, where ``(x, y) = dataset[i]``.

    The index is the position in this dataset, in ``[0, len(dataset))``, which is what the trainer's mask cache is
    indexed by. It must therefore be the *outermost* dataset the ``DataLoader`` reads:
    ``DataLoader(IndexedDataset(Subset(ds, keep)))``, not ``DataLoader(Subset(IndexedDataset(ds), keep))`` (whose
    indices would point past the subset). Shuffling and samplers work as with any dataset: the sampler picks ``i``,
    the item carries it.

    The refresh pass of ``mask_refresh > 1`` reads the dataset again, in index order (a ``DataLoader`` without
    shuffling over ``loader.dataset``), so the wrapped dataset must be map-style (``__getitem__`` and ``__len__``;
    an ``IterableDataset`` is refused) and should yield un-augmented images: the trainer augments on the device, and
    moves each cached mask with its image's crop and flip.

    Attributes the wrapper does not have (``classes``, ``targets``, ``transform``, ...) are read from the wrapped
    dataset, so code that inspects ``loader.dataset`` keeps working; ``dataset`` is the wrapped one.

    :param dataset: a map-style dataset whose items are ``(x, y)`` pairs (a ``TensorDataset`` of images and labels,
        a torchvision dataset with ``transform=ToTensor()``, ...).
    """

    def __init__(self, dataset):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise TypeError("dataset must be a map-style dataset (with __getitem__ and __len__): the mask refresh "
                            "reads it in index order; got an IterableDataset "
                            f"({type(dataset).__name__})")
        if not callable(getattr(dataset, "__getitem__", None)):
            raise TypeError(f"dataset must be a map-style dataset (with __getitem__ and __len__), got "
                            f"{type(dataset).__name__}")
        try:
            len(dataset)
        except TypeError:
            raise TypeError(f"dataset must be a map-style dataset with a length (__len__), got "
                            f"{type(dataset).__name__} without one") from None
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        i = operator.index(i)  # samplers give ints; a tensor or numpy scalar index works too
        n = len(self.dataset)
        if i < 0:  # the mask cache needs the position in [0, n), not Python's negative alias
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} samples")
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else \
                type(item).__name__
            raise ValueError(f"IndexedDataset: the wrapped dataset's items must be (x, y) pairs, got {got} at index "
                             f"{i}")
        return item[0], item[1], i

    def __getattr__(self, name):
        # Only called for attributes the wrapper lacks. "dataset" itself and dunders are not forwarded, so that
        # copy and pickle (DataLoader workers) never recurse before __init__ has set self.dataset.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self):
        return f"IndexedDataset({self.dataset!r})"
