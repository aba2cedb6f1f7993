"""Shared fixtures: real CIFAR-10 images, a tiny CNN and the pretrained ResNet-18 of the pyautoattack wheel.

The data folder comes from ``--data-dir``, else $PART_DATA_DIR, else ``../shared/data`` beside the checkout. A
missing folder fails the run with the folder's name: these tests never skip for want of data.
"""

import os
from pathlib import Path

import pytest
import torch

from benchmarks.data import load_cifar10
from benchmarks.models import TinyCNN, pretrained_resnet18

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (default ../shared/data)")


@pytest.fixture(scope="session")
def data_dir(request):
    path = request.config.getoption("--data-dir") or os.environ.get("PART_DATA_DIR") or ROOT.parent / "shared" / "data"
    return str(path)


@pytest.fixture(scope="session")
def cifar_test(data_dir):
    """The first 256 CIFAR-10 test images and labels."""
    return load_cifar10(data_dir, train=False, n=256, download=False)


@pytest.fixture(scope="session")
def cifar_batch(cifar_test):
    """32 real images: a batch for attack tests."""
    images, labels = cifar_test
    return images[:32].clone(), labels[:32].clone()


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="session")
def resnet18():
    """Real pretrained CIFAR-10 ResNet-18 (eval mode). Do not modify it in a test."""
    return pretrained_resnet18()


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny batches on a busy 2-core CPU make a 2-thread pool mostly spin-wait (7-20x
    slower measured here). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
