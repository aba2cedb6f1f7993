"""PART's attacks for the Adversarial Robustness Toolbox (ART).

:class:`PixelAGPyTorch` and :class:`MMAPyTorch` are thin adapters: ART's evasion-attack interface (numpy in, numpy
out, ``attack_params``, ``set_params``, batching, labels from the estimator's predictions when ``y`` is None) over the
torch attacks of :mod:`torchattacks_part`, which hold the math (CAM, per-entry budget, projected sign-gradient loop).
They plug into ART's trainers, e.g. ``art.defences.trainer.AdversarialTrainer(classifier, PixelAGPyTorch(classifier))``.
:class:`IndexedDataset` makes any map-style dataset yield ``(x, y, index)``, which the trainer
(:mod:`art_part.trainer`) needs from a ``DataLoader`` or ``PyTorchDataGenerator`` with ``mask_refresh > 1``.
"""

from .attacks import MMAPyTorch, PixelAGPyTorch
from .data import IndexedDataset

__all__ = ["IndexedDataset", "MMAPyTorch", "PixelAGPyTorch"]
