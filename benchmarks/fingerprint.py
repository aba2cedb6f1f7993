"""Digests that say WHICH weights and WHICH images a stored number belongs to.

A result file is only reusable for the model and the data it was computed on: two checkpoints in one folder, or
an evaluation resumed on other images, must not share numbers. These digests go into the identity of evaluations
(``eval.json``) so that such a mix is refused instead of reported.
"""

import hashlib

import torch

DIGEST_CHARS = 16


def _update(hasher, tensor):
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    hasher.update(str(tuple(tensor.shape)).encode())
    hasher.update(str(tensor.dtype).encode())
    hasher.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def weights_digest(model):
    """sha256 (first 16 hex digits) of a module's state dict: every parameter and buffer, by name, in order."""
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hasher.update(name.encode())
        _update(hasher, tensor)
    return hasher.hexdigest()[:DIGEST_CHARS]


def images_digest(images, labels):
    """sha256 (first 16 hex digits) of an image tensor and its labels, shapes and dtypes included."""
    hasher = hashlib.sha256()
    _update(hasher, images)
    _update(hasher, labels)
    return hasher.hexdigest()[:DIGEST_CHARS]
