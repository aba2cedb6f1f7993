"""Models the benchmarks use by default."""

import importlib.resources

import torch


def pretrained_resnet18(device="cpu"):
    """The CIFAR-10 ResNet-18 shipped in the pyautoattack wheel (standard training, ~94% clean accuracy, not robust).

    Architecture from ``pyautoattack/examples/resnet.py`` (3x3 stem, no max-pool: ``layer4`` is 4x4 on 32x32
    inputs, the CAM layer). Loaded with ``weights_only=True``; nothing is downloaded. Returned in eval mode.
    """
    from pyautoattack.examples.resnet import ResNet18

    weights = importlib.resources.files("pyautoattack") / "examples" / "model_test.pt"
    with importlib.resources.as_file(weights) as path:
        state = torch.load(path, map_location=device, weights_only=True)
    model = ResNet18()
    model.load_state_dict(state)
    return model.to(device).eval()
