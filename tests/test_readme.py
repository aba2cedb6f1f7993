"""Every ```python block of README.md runs as written: one test per block, named by the line it starts on.

Each block is executed unchanged (``exec`` of its exact text, compiled under the name ``README.md`` with its own line
numbers, so a traceback points into the README) in a fresh namespace, from a fresh temporary working directory
(``checkpoint_dir="runs/..."`` lands there). The namespace holds only the names the README's "Use" section says a
snippet is given (:func:`given`):

========================  ===========================================================================================
``model``                 the pretrained CIFAR-10 ResNet-18 of the pyautoattack wheel (a fresh copy, eval mode)
``images``, ``labels``    the first 8 CIFAR-10 test images (torch float32 (8, 3, 32, 32) in [0, 1]), int64 labels
``loss``, ``optimizer``   ``nn.CrossEntropyLoss()``, SGD (lr 0.01, momentum 0.9) over ``model``'s parameters
``x_test``                ``images`` as a numpy array
``x_train``, ``y_train``  the first 16 CIFAR-10 training images (numpy float32) and labels (numpy int64)
``classifier``            an ART ``PyTorchClassifier`` of a fresh tiny CNN (benchmarks.models.TinyCNN, seed 0) with
                          SGD lr 0.01 momentum 0.9: the training snippet's 80 epochs fit in a test on it (the README
                          says so), never on a ResNet-18
========================  ===========================================================================================

One line is changed, in the open (:data:`PATCHES`): the training snippet's ``epochs, batch_size = 80, 128`` runs
with batches of 16, since ART's ``PyTorchDataGenerator`` refuses a batch size above the number of samples and the
given data holds 16 (the 80 epochs, the burn-in of 20 and the mask refreshes every 10 epochs run as written). Every
other size that keeps this file fast is that of the given data and model, not of the snippets.
"""

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from art.estimators.classification import PyTorchClassifier

from benchmarks.data import load_cifar10
from benchmarks.models import TinyCNN

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text):
    """(line of the block's first code line, 1-based; code) of every ```python block of ``text``. A block inside a
    list item is indented as its fence is; that indentation is removed, as Markdown does."""
    blocks, lines, start, indent = [], text.splitlines(), None, ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if start is None and re.fullmatch(r"```\s*python\s*", stripped):
            start, indent = number + 1, line[:len(line) - len(line.lstrip())]
        elif start is not None and stripped == "```":
            body = [code[len(indent):] if code.startswith(indent) else code.lstrip()
                    for code in lines[start - 1:number - 1]]
            blocks.append((start, "\n".join(body) + "\n"))
            start = None
    if start is not None:
        raise ValueError(f"README.md: the ```python block opened on line {start - 1} is never closed")
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))

#: Whole lines of README.md replaced before a snippet runs (module docstring): README line -> the line run instead.
PATCHES = {
    "epochs, batch_size = 80, 128   # the paper's": "epochs, batch_size = 80, 16   # the given data: 16 images",
}


def patched(code):
    lines = code.splitlines()
    for old, new in PATCHES.items():
        lines = [new if line == old else line for line in lines]
    return "\n".join(lines) + "\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny batches, one thread


def test_the_readme_has_its_snippets():
    # the three of "Use": torchattacks, ART, the trainer; a parser that found none would pass every test vacuously
    assert len(BLOCKS) >= 3
    # each patched line is in exactly one snippet: a README edit cannot leave a patch silently unused
    for old in PATCHES:
        assert sum(code.splitlines().count(old) for _, code in BLOCKS) == 1, old


@pytest.fixture(scope="module")
def test_images(data_dir):
    return load_cifar10(data_dir, train=False, n=8, download=False)


@pytest.fixture(scope="module")
def train_arrays(data_dir):
    images, labels = load_cifar10(data_dir, train=True, n=16, download=False)
    return images.numpy(), labels.numpy()


@pytest.fixture
def given(resnet18, test_images, train_arrays):
    """The namespace a snippet starts from: the names of the README's "Use" section (module docstring)."""
    model = copy.deepcopy(resnet18).eval()  # the session's model stays untouched when a snippet trains it
    images, labels = (t.clone() for t in test_images)
    x_train, y_train = (a.copy() for a in train_arrays)
    torch.manual_seed(0)
    tiny = TinyCNN()
    classifier = PyTorchClassifier(tiny, nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0, 1), optimizer=torch.optim.SGD(tiny.parameters(), lr=0.01,
                                                                                 momentum=0.9))
    return {
        "model": model, "images": images, "labels": labels, "loss": nn.CrossEntropyLoss(),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        "x_test": images.numpy().copy(), "x_train": x_train, "y_train": y_train, "classifier": classifier,
    }


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_snippet_runs_as_written(line, code, given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__", **given}
    torch.manual_seed(0)
    # Padded with blank lines so that the code object's line numbers are the README's.
    exec(compile("\n" * (line - 1) + patched(code), str(README), "exec"), namespace)
