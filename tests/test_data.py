"""The CIFAR-10 reader against torchvision's own reader of the same folder."""

import shutil

import numpy as np
import pytest
import torchvision

from benchmarks.data import load_cifar10


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
