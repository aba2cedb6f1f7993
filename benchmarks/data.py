"""Datasets read from a data folder in their original layouts; downloaded by torchvision when online."""

import os
import pickle

import numpy as np
import torch

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _ensure_cifar10(data_dir, download, train):
    folder = os.path.join(data_dir, CIFAR10_FOLDER)
    needed = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if not missing:
        return folder
    if download:
        try:
            import torchvision

            torchvision.datasets.CIFAR10(root=data_dir, train=train, download=True)
            return folder
        except Exception as error:  # offline, proxy, disk: all end in the same advice
            reason = f" (download failed: {error})"
    else:
        reason = ""
    raise FileNotFoundError(
        f"CIFAR-10 not found in {os.path.abspath(folder)}{reason}: missing {', '.join(missing)}. "
        f"Put the python version of CIFAR-10 (the folder {CIFAR10_FOLDER}/ with data_batch_1..5 and test_batch, "
        f"as torchvision lays it out) under the --data-dir {os.path.abspath(data_dir)}, or run once online."
    )


def load_cifar10(data_dir, train=False, n=None, download=True):
    """CIFAR-10 as tensors: images float32 (N, 3, 32, 32) in [0, 1], labels int64 (N,).

    :param data_dir: folder holding ``cifar-10-batches-py/`` (torchvision layout).
    :param train: the 50,000 training images instead of the 10,000 test images.
    :param n: keep only the first ``n`` images (in file order, deterministic).
    :param download: try torchvision's download when files are missing.
    """
    folder = _ensure_cifar10(data_dir, download, train)
    images, labels = [], []
    for name in CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES:
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"])
        labels.extend(batch[b"labels"])
        if n is not None and len(labels) >= n:
            break
    data = np.concatenate(images)[:n].reshape(-1, 3, 32, 32)
    return torch.from_numpy(data).float().div_(255), torch.tensor(labels[:n], dtype=torch.int64)
