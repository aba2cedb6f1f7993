"""PART's attacks for the Adversarial Robustness Toolbox (ART).

:class:`PixelAGPyTorch` and :class:`MMAPyTorch` are thin adapters: ART's evasion-attack interface (numpy in, numpy
out, ``attack_params``, ``set_params``, batching, labels from the estimator's predictions when ``y`` is None) over the
torch attacks of :mod:`torchattacks_part`, which hold the math (CAM, per-entry budget, projected sign-gradient loop).
They plug into ART's trainers, e.g. ``art.defences.trainer.AdversarialTrainer(classifier, PixelAGPyTorch(classifier))``.
"""

from .attacks import MMAPyTorch, PixelAGPyTorch

__all__ = ["MMAPyTorch", "PixelAGPyTorch"]
