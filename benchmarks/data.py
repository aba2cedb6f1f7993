"""Datasets read from a data folder in their original layouts; downloaded by torchvision when online."""

import os
import pickle

import numpy as np
import torch

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _remove_failed_download(data_dir, created):
    """Undo what a failed download left: a partial archive (one whose md5 is not the official one) and the
    folders it created, when they are empty."""
    from torchvision.datasets.cifar import CIFAR10  # the class itself, even where torchvision.datasets is patched
    from torchvision.datasets.utils import check_integrity

    partial = os.path.join(data_dir, CIFAR10.filename)
    if os.path.isfile(partial) and not check_integrity(partial, CIFAR10.tgz_md5):
        os.remove(partial)
    for path in reversed(created):  # the inner folder first
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def _ensure_cifar10(data_dir, download, train):
    folder = os.path.join(data_dir, CIFAR10_FOLDER)
    needed = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if not missing:
        return folder
    if download:
        created = [p for p in (data_dir, folder) if not os.path.exists(p)]
        try:
            import torchvision

            torchvision.datasets.CIFAR10(root=data_dir, train=train, download=True)
            return folder
        except Exception as error:  # offline, proxy, disk: all end in the same advice
            reason = f" (download failed: {error})"
            _remove_failed_download(data_dir, created)
    else:
        reason = ""
    raise FileNotFoundError(
        f"CIFAR-10 not found in {os.path.abspath(folder)}{reason}: missing {', '.join(missing)}. "
        f"Put the python version of CIFAR-10 (the folder {CIFAR10_FOLDER}/ with data_batch_1..5 and test_batch, "
        f"as torchvision lays it out) under the --data-dir {os.path.abspath(data_dir)}, or run once online."
    )


def _check_cifar10_file(path, name):
    """Refuse a CIFAR-10 batch whose md5 is not the official one (torchvision's list and ``check_integrity``):
    the batches are pickles, and unpickling a file of unknown origin can run code."""
    from torchvision.datasets.cifar import CIFAR10
    from torchvision.datasets.utils import check_integrity

    official = dict(CIFAR10.train_list + CIFAR10.test_list)[name]
    if not check_integrity(path, official):
        raise ValueError(f"{path} is not the official CIFAR-10 file {name} (its md5 is not {official}); it was not "
                         f"read, since these files are pickles. Replace it with the official file, or pass "
                         f"verify=False to read a file you trust")


def load_cifar10(data_dir, train=False, n=None, download=True, verify=True):
    """CIFAR-10 as tensors: images float32 (N, 3, 32, 32) in [0, 1], labels int64 (N,).

    :param data_dir: folder holding ``cifar-10-batches-py/`` (torchvision layout).
    :param train: the 50,000 training images instead of the 10,000 test images.
    :param n: keep only the first ``n`` images (in file order, deterministic).
    :param download: try torchvision's download when files are missing.
    :param verify: check each batch file's md5 against the official sums before unpickling it (ValueError naming
        the file on a mismatch); False reads files you trust (e.g. a re-packed CIFAR-10) as they are.
    """
    folder = _ensure_cifar10(data_dir, download, train)
    images, labels = [], []
    for name in CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES:
        path = os.path.join(folder, name)
        if verify:
            _check_cifar10_file(path, name)
        with open(path, "rb") as f:  # a pickle: only unpickled once its md5 is the official one (or verify=False)
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"])
        labels.extend(batch[b"labels"])
        if n is not None and len(labels) >= n:
            break
    data = np.concatenate(images)[:n].reshape(-1, 3, 32, 32)
    return torch.from_numpy(data).float().div_(255), torch.tensor(labels[:n], dtype=torch.int64)


SVHN_FOLDER = "svhn"
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}  # torchvision's names


def _ensure_svhn(data_dir, download, split):
    folder = os.path.join(data_dir, SVHN_FOLDER)
    name = SVHN_FILES[split]
    if os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
    if download:
        try:
            import torchvision

            torchvision.datasets.SVHN(root=folder, split=split, download=True)
            return os.path.join(folder, name)
        except Exception as error:  # offline, proxy, disk, md5: all end in the same advice
            reason = f" (download failed: {error})"
    else:
        reason = ""
    raise FileNotFoundError(
        f"SVHN not found in {os.path.abspath(folder)}{reason}: missing {name}. "
        f"Put the cropped-digits files of SVHN ({', '.join(SVHN_FILES[s] for s in ('train', 'test'))}, format 2 from "
        f"http://ufldl.stanford.edu/housenumbers/, as torchvision.datasets.SVHN(root='{os.path.abspath(folder)}') "
        f"reads them) in {os.path.abspath(folder)}/, or run once online."
    )


def load_svhn(data_dir, split="train", n=None, download=True):
    """SVHN cropped digits as tensors: images float32 (N, 3, 32, 32) in [0, 1], labels int64 (N,) in [0, 10).

    Reads ``<data_dir>/svhn/{train,test,extra}_32x32.mat``: the files of torchvision.datasets.SVHN with
    ``root=<data_dir>/svhn``. As in torchvision, the label 10 that SVHN gives the digit 0 becomes 0.

    :param data_dir: folder holding ``svhn/``.
    :param split: "train" (73,257 images), "test" (26,032) or "extra" (531,131).
    :param n: keep only the first ``n`` images (in file order, deterministic).
    :param download: try torchvision's download when the file is missing.
    """
    if split not in SVHN_FILES:
        raise ValueError(f"split must be one of {', '.join(SVHN_FILES)}, not {split!r}")
    path = _ensure_svhn(data_dir, download, split)
    import scipy.io

    mat = scipy.io.loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat["X"][..., :n], (3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    labels = mat["y"].astype(np.int64).reshape(-1)[:n]
    labels[labels == 10] = 0
    return torch.from_numpy(images).float().div_(255), torch.from_numpy(labels)


TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _tiny_imagenet_root(data_dir, folder, split):
    root = os.path.join(data_dir, folder) if folder else data_dir
    needed = ["wnids.txt", "train"] if split == "train" else ["wnids.txt", "val/images", "val/val_annotations.txt"]
    missing = [p for p in needed if not os.path.exists(os.path.join(root, p))]
    if missing:
        raise FileNotFoundError(
            f"TinyImageNet-200 not found in {os.path.abspath(root)}: missing {', '.join(missing)}. "
            f"Expected the original layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
            f"val/val_annotations.txt. torchvision does not download it: unzip {TINY_IMAGENET_URL} "
            f"so that {os.path.abspath(root)} holds that layout (the archive unpacks as {TINY_IMAGENET_FOLDER}/), "
            f"or pass folder= to name another folder under {os.path.abspath(data_dir)}."
        )
    return root


def _read_rgb(path):
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))  # some TinyImageNet JPEGs are grayscale
    if array.shape != (64, 64, 3):
        raise ValueError(f"{path}: expected a 64x64 image, got {array.shape[1]}x{array.shape[0]}")
    return array


def load_tiny_imagenet(data_dir, split="train", n=None, folder=TINY_IMAGENET_FOLDER):
    """TinyImageNet-200 as tensors: images float32 (N, 3, 64, 64) in [0, 1], labels int64 (N,) in [0, 200).

    Class index = position of the wnid in sorted order, the order torchvision's ImageFolder gives the train
    folder names (wnids.txt itself is not sorted). Train images come class by class, file names sorted within
    a class (ImageFolder's order, so the first ``n`` are not class-balanced); validation images come in the
    order of val/val_annotations.txt, which also gives their labels. Grayscale JPEGs are converted to RGB.

    :param data_dir: folder holding ``folder`` in the original layout.
    :param split: "train" or "val".
    :param n: keep only the first ``n`` images (deterministic; only those are decoded).
    :param folder: the dataset folder under ``data_dir``; None or "" when ``data_dir`` is that folder itself.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    root = _tiny_imagenet_root(data_dir, folder, split)
    with open(os.path.join(root, "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    items = []  # (path, label)
    if split == "train":
        for wnid in wnids:
            images = os.path.join(root, "train", wnid, "images")
            if not os.path.isdir(images):
                raise FileNotFoundError(f"TinyImageNet-200: missing {os.path.abspath(images)}/ for class {wnid}")
            items += [(os.path.join(images, name), index[wnid]) for name in sorted(os.listdir(images))
                      if name.lower().endswith((".jpeg", ".jpg"))]
            if n is not None and len(items) >= n:
                break
    else:
        with open(os.path.join(root, "val", "val_annotations.txt")) as f:
            for line in f:
                if line.strip():
                    name, wnid = line.split("\t")[:2]
                    items.append((os.path.join(root, "val", "images", name), index[wnid]))
    items = items[:n]
    images = np.stack([_read_rgb(path) for path, _ in items]) if items else np.zeros((0, 64, 64, 3), np.uint8)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div_(255), labels
