"""The dataset readers: CIFAR-10 against torchvision's own reader, SVHN on a synthetic file in torchvision's
format, TinyImageNet-200 on the shared sample folder checked image by image with PIL."""

import os
import shutil

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from PIL import Image

from pathlib import Path

from benchmarks import UsageError
from benchmarks.data import load_cifar10, load_svhn, load_tiny_imagenet
from benchmarks.train import load_split


def test_matches_torchvision(data_dir):
    images, labels = load_cifar10(data_dir, train=False, n=100, download=False)
    reference = torchvision.datasets.CIFAR10(data_dir, train=False, download=False)
    assert images.shape == (100, 3, 32, 32) and images.dtype.is_floating_point
    np.testing.assert_array_equal((images * 255).round().byte().permute(0, 2, 3, 1).numpy(), reference.data[:100])
    assert labels.tolist() == reference.targets[:100]


def test_test_split_needs_only_the_test_file(data_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    shutil.copy(f"{data_dir}/cifar-10-batches-py/test_batch", folder)
    images, _ = load_cifar10(str(tmp_path), train=False, n=5, download=False)
    assert len(images) == 5
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(str(tmp_path), train=True, n=5, download=False)


def _write_svhn(folder, name, count, seed=0):
    """A tiny .mat file in torchvision's SVHN format: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
    y = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(count, 1)  # 1..10, so 10 (digit 0) occurs
    folder.mkdir(exist_ok=True)
    scipy.io.savemat(str(folder / name), {"X": x, "y": y})
    return x, y


def test_svhn_reads_torchvision_format(tmp_path):
    x, y = _write_svhn(tmp_path / "svhn", "test_32x32.mat", 23)
    images, labels = load_svhn(str(tmp_path), split="test", download=False)
    assert images.shape == (23, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    # pixel (row, col, channel) of image i is X[row, col, channel, i]
    np.testing.assert_array_equal((images * 255).round().byte().permute(0, 2, 3, 1).numpy(), x.transpose(3, 0, 1, 2))
    assert labels.tolist() == [int(v) % 10 for v in y[:, 0]] and 0 in labels.tolist() and labels.max() == 9
    first, first_labels = load_svhn(str(tmp_path), split="test", n=7, download=False)
    assert torch.equal(first, images[:7]) and torch.equal(first_labels, labels[:7])


def test_svhn_matches_torchvision_reader(tmp_path, monkeypatch):
    _write_svhn(tmp_path / "svhn", "train_32x32.mat", 12, seed=1)
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)  # synthetic file, no md5
    reference = torchvision.datasets.SVHN(str(tmp_path / "svhn"), split="train", download=False)
    images, labels = load_svhn(str(tmp_path), split="train", download=False)
    np.testing.assert_array_equal((images * 255).round().byte().numpy(), reference.data)
    assert labels.tolist() == reference.labels.tolist()


def test_svhn_missing_names_folder_and_file(tmp_path, monkeypatch):
    def offline(self):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.SVHN, "download", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_svhn(str(tmp_path), split="test", download=True)
    message = str(error.value)
    assert str(tmp_path / "svhn") in message and "test_32x32.mat" in message and "no network" in message
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_svhn(str(tmp_path), split="train", download=False)
    _write_svhn(tmp_path / "svhn", "test_32x32.mat", 3)  # the test split needs only its own file
    assert len(load_svhn(str(tmp_path), split="test", download=False)[0]) == 3
    with pytest.raises(ValueError):
        load_svhn(str(tmp_path), split="valid", download=False)


TINY_SAMPLE = "tiny-imagenet-200-sample"


def _pil(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def tiny_root(data_dir):
    return os.path.join(data_dir, TINY_SAMPLE)


@pytest.fixture(scope="module")
def tiny_wnids(tiny_root):
    with open(os.path.join(tiny_root, "wnids.txt")) as f:
        return sorted(f.read().split())


def test_tiny_imagenet_train(data_dir, tiny_root, tiny_wnids):
    images, labels = load_tiny_imagenet(data_dir, split="train", folder=TINY_SAMPLE)
    assert len(tiny_wnids) == 200
    assert images.shape == (1000, 3, 64, 64) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.9
    assert labels.min() >= 0 and labels.max() < 200 and torch.bincount(labels).tolist() == [5] * 200
    # class index = position of the class folder among the sorted folder names (torchvision's ImageFolder order)
    reference = torchvision.datasets.ImageFolder(os.path.join(tiny_root, "train"))
    assert reference.classes == tiny_wnids
    assert labels.tolist() == reference.targets
    for i in (0, 3, 417, 999):
        path, target = reference.samples[i]
        assert labels[i] == target == tiny_wnids.index(os.path.basename(os.path.dirname(os.path.dirname(path))))
        np.testing.assert_array_equal((images[i] * 255).round().byte().permute(1, 2, 0).numpy(), _pil(path))
    first, first_labels = load_tiny_imagenet(tiny_root, split="train", n=7, folder=None)  # root given directly
    assert torch.equal(first, images[:7]) and torch.equal(first_labels, labels[:7])


def test_tiny_imagenet_val(data_dir, tiny_root, tiny_wnids):
    images, labels = load_tiny_imagenet(data_dir, split="val", folder=TINY_SAMPLE)
    assert images.shape == (500, 3, 64, 64) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    assert labels.min() >= 0 and labels.max() < 200 and len(set(labels.tolist())) > 100
    with open(os.path.join(tiny_root, "val", "val_annotations.txt")) as f:
        rows = [line.split("\t") for line in f]
    for i in (0, 1, 250, 499):
        name, wnid = rows[i][:2]
        assert name == f"val_{i}.JPEG"  # images come in annotation order, which numbers them
        assert labels[i] == tiny_wnids.index(wnid)
        expected = _pil(os.path.join(tiny_root, "val", "images", name))
        np.testing.assert_array_equal((images[i] * 255).round().byte().permute(1, 2, 0).numpy(), expected)


def test_tiny_imagenet_grayscale_comes_out_rgb(data_dir, tiny_root):
    images, _ = load_tiny_imagenet(data_dir, split="train", folder=TINY_SAMPLE)
    reference = torchvision.datasets.ImageFolder(os.path.join(tiny_root, "train"))
    gray = [i for i, (path, _) in enumerate(reference.samples) if Image.open(path).mode == "L"]
    assert gray  # the sample has grayscale JPEGs
    for i in gray[:5]:
        image = images[i]
        assert image.shape == (3, 64, 64)
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        np.testing.assert_array_equal(
            (image[0] * 255).round().byte().numpy(), np.asarray(Image.open(reference.samples[i][0]))
        )


def test_tiny_imagenet_missing_names_folder_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_tiny_imagenet(str(tmp_path), split="val")
    message = str(error.value)
    assert str(tmp_path / "tiny-imagenet-200") in message and "val_annotations.txt" in message
    assert "wnids.txt" in message and "tiny-imagenet-200.zip" in message
    with pytest.raises(ValueError):
        load_tiny_imagenet(str(tmp_path), split="test")


class _Payload:
    """A pickle that runs code when unpickled: it creates a file named by its argument."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_cifar10_file_that_is_not_official_is_never_unpickled(data_dir, tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "test_batch").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match="test_batch.*not the official"):
        load_cifar10(str(tmp_path), train=False, download=False)
    assert not marker.exists()
    with pytest.raises(UsageError, match="test_batch"):  # the CLI's one-line error
        load_split("cifar10", str(tmp_path), train=False)
    # One changed byte in a real file is refused too; verify=False reads a file the caller trusts.
    real = (Path(data_dir) / "cifar-10-batches-py" / "test_batch").read_bytes()
    edited = bytearray(real)
    edited[len(edited) // 2] ^= 1  # a pixel value, not the pickle structure
    (folder / "test_batch").write_bytes(bytes(edited))
    with pytest.raises(ValueError, match="md5"):
        load_cifar10(str(tmp_path), train=False, n=4, download=False)
    x, y = load_cifar10(str(tmp_path), train=False, n=4, download=False, verify=False)
    assert x.shape == (4, 3, 32, 32)
    shutil.rmtree(folder)


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    target = tmp_path / "data" / "new"

    def offline(self, root, **kwargs):  # what a cut download leaves: the folder and half an archive
        os.makedirs(root, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", type("Offline", (), {"__init__": offline,
                                                                              "filename": "cifar-10-python.tar.gz",
                                                                              "tgz_md5": "0" * 32}))
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="no network"):
        load_cifar10(str(target), download=True)
    assert not target.exists() and not list((tmp_path / "data").iterdir())
