"""Input validation shared by every entry point.

Each check raises ``ValueError`` (a bad value) or ``TypeError`` (an object of the wrong kind) naming the offending
parameter and the allowed values, and runs before any model work, so a bad call fails fast and says what to change.
"""

import math
from numbers import Real

import torch
import torch.nn as nn


def check_number(name, value, *, minimum=0.0, inclusive=True):
    """Require a finite real number ``>= minimum`` (or ``> minimum`` when ``inclusive`` is False).

    NaN and infinities are refused: an infinite budget or step gives all-NaN images or fails later inside torch.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < minimum or (not inclusive and value == minimum):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be {bound} {minimum}, got {value!r}")
    return float(value)


def check_steps(name, value):
    """Require an integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_module(name, value):
    """Require a ``torch.nn.Module`` (a model), not a function, None or a name."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (the classifier returning logits), "
                        f"got {type(value).__name__}")
    return value


def check_generator(name, value):
    """Require None or a ``torch.Generator``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    return value


def check_budget_params(eps, eps_low, alpha=None):
    """The Pixel-AG budgets: ``0 <= eps_low <= eps``, ``alpha > 0``. ``eps_low=None`` means eps everywhere."""
    eps = check_number("eps", eps)
    if eps_low is not None:
        eps_low = check_number("eps_low", eps_low)
        if eps_low > eps:
            raise ValueError(f"eps_low must be in [0, eps] = [0, {eps}], got {eps_low!r}")
    if alpha is not None:
        alpha = check_number("alpha", alpha, inclusive=False)
    return eps, eps_low, alpha


def check_images(images, unit_range=True, slack=0.0):
    """A float tensor (N, C, H, W) with every value finite and, when ``unit_range``, in [-slack, 1 + slack]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (N, C, H, W), got {got}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image, got an empty batch")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images must not contain NaN or inf")
    if not unit_range:
        return images
    lo, hi = float(images.min()), float(images.max())
    if lo < -slack or hi > 1 + slack:
        raise ValueError(f"images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return images


def check_labels(labels, batch_size, num_classes=None, name="labels"):
    """Integer class indices of shape (N,) in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        got = f"dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of class indices of shape ({batch_size},) (not bool), "
                         f"got {got}")
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},) to match the images, got {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    top = "num_classes - 1" if num_classes is None else num_classes - 1
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise ValueError(f"{name} must be class indices in [0, {top}], got values in [{lo}, {hi}]")
    return labels


def check_budget(budget, images):
    """A per-entry budget broadcastable to the images: (N or 1, C or 1, H, W), finite and >= 0."""
    n, c, h, w = images.shape
    if not isinstance(budget, torch.Tensor) or budget.dim() != 4:
        got = tuple(budget.shape) if isinstance(budget, torch.Tensor) else type(budget).__name__
        raise ValueError(f"budget must be a tensor of shape ({n} or 1, {c} or 1, {h}, {w}), got {got}")
    bn, bc, bh, bw = budget.shape
    if bn not in (1, n) or bc not in (1, c) or (bh, bw) != (h, w):
        raise ValueError(f"budget must have shape ({n} or 1, {c} or 1, {h}, {w}), got {tuple(budget.shape)}")
    if not bool(torch.isfinite(budget).all()) or bool((budget < 0).any()):
        raise ValueError("budget must be finite and >= 0 everywhere")
    return budget.to(device=images.device, dtype=images.dtype)
