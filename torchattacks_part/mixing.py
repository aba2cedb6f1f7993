"""Mixing classifiers (Bai, Anderson, Kim, Sojoudi, "Mixing Classifiers to Alleviate the Accuracy-Robustness
Trade-Off", L4DC 2024, https://arxiv.org/abs/2311.15165).

An accurate (standard) classifier and a robust one are mixed in probability space,

    p(x) = (1 - alpha) * softmax(accurate(x)) + alpha * softmax(robust(x)),

and :class:`MixedClassifier` returns ``log p(x)`` as its logits: ``softmax`` of the output is the mixture itself,
its argmax is the mixture's prediction, and cross-entropy on it is the mixture's negative log-likelihood. The output
is one differentiable function of the input, so an attack (torchattacks, ART, AutoAttack) given the mixed model
attacks the mixture, never a single branch.
"""

import math
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MixedClassifier", "check_alpha"]


def check_alpha(alpha):
    """The mixing weight of the robust branch: a finite real number in [0, 1] (not a bool, not a string)."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number in [0, 1], got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of the robust branch), got {alpha!r}")
    return float(alpha)


class MixedClassifier(nn.Module):
    """``log((1 - alpha) * softmax(accurate(x)) + alpha * softmax(robust(x)))``, as logits.

    Computed stably as ``logsumexp(log_softmax(accurate(x)) + log(1 - alpha), log_softmax(robust(x)) + log(alpha))``.
    At ``alpha`` 0 or 1 exactly the output is the log-softmax of one branch (no ``log 0``, no NaN in the gradient)
    and the other branch is not run at all.

    :param accurate: the accurate (standard) classifier, an ``nn.Module`` returning logits (B, K).
    :param robust: the robust classifier, an ``nn.Module`` returning logits (B, K).
    :param alpha: weight of the robust branch, a finite real in [0, 1]. It may be changed later (``mixed.alpha =``),
        validated again.
    :param input_shape: optional shape of one input, e.g. ``(3, 32, 32)``: both branches then run once on a zero
        input (eval mode, no gradient, train/eval flags restored) and different class counts fail at construction.
        Without it they fail at the first forward.

    ``number_forward_passes = 2`` (one per branch) for RobustBench-style leaderboard entries. ``eval()`` and
    ``train()`` reach both branches (they are submodules), and so do ``.to()``, ``parameters()`` and
    ``state_dict()`` (keys ``accurate.*`` and ``robust.*``; ``alpha`` is an attribute, not in the state dict).
    """

    #: Forward passes of a base network per prediction.
    number_forward_passes = 2

    def __init__(self, accurate, robust, alpha, input_shape=None):
        super().__init__()
        for name, branch in (("accurate", accurate), ("robust", robust)):
            if not isinstance(branch, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module (a classifier returning logits), "
                                f"got {type(branch).__name__}")
        self.accurate = accurate
        self.robust = robust
        self.alpha = alpha
        if input_shape is not None:
            self._check_class_counts(input_shape)

    @property
    def alpha(self):
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self._alpha = check_alpha(value)

    def extra_repr(self):
        return f"alpha={self._alpha}"

    def _check_class_counts(self, input_shape):
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape must be a tuple of positive integers, got {input_shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be a tuple of positive integers, got {input_shape!r}")
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                counts = [self._logits(name, branch, _zeros_like_input(branch, shape))
                          for name, branch in (("accurate", self.accurate), ("robust", self.robust))]
        finally:
            for m, mode in modes:
                m.training = mode
        _check_same_classes(*counts)

    @staticmethod
    def _logits(name, branch, x):
        out = branch(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{name} must return logits of shape (B, num_classes), got {shape}")
        return out

    def forward(self, x):
        if self._alpha == 0.0:
            return F.log_softmax(self._logits("accurate", self.accurate, x), dim=1)
        if self._alpha == 1.0:
            return F.log_softmax(self._logits("robust", self.robust, x), dim=1)
        accurate = self._logits("accurate", self.accurate, x)
        robust = self._logits("robust", self.robust, x)
        _check_same_classes(accurate, robust)
        log_weights = (math.log1p(-self._alpha), math.log(self._alpha))
        # float32 at least: half-precision log-softmaxes lose the small branch's contribution.
        dtype = torch.promote_types(torch.promote_types(accurate.dtype, robust.dtype), torch.float32)
        terms = torch.stack([F.log_softmax(accurate.to(dtype), dim=1) + log_weights[0],
                             F.log_softmax(robust.to(dtype), dim=1) + log_weights[1]])
        return torch.logsumexp(terms, dim=0)


def _zeros_like_input(branch, shape):
    parameter = next(branch.parameters(), None)
    if parameter is None:
        return torch.zeros((1, *shape))
    return torch.zeros((1, *shape), device=parameter.device,
                       dtype=parameter.dtype if parameter.is_floating_point() else torch.float32)


def _check_same_classes(accurate, robust):
    if accurate.shape != robust.shape:
        raise ValueError(f"accurate and robust must have the same number of classes (and batch): accurate returns "
                         f"{tuple(accurate.shape)}, robust {tuple(robust.shape)}")
