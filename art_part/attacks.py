"""ART evasion attacks over a ``PyTorchClassifier``: Pixel-AG and MMA with PART's per-entry budget.

Both classes are thin adapters. The attack itself is the :mod:`torchattacks_part` one
(:class:`~torchattacks_part.PixelAG` or :class:`~torchattacks_part.MMA`), built with the same parameters over a small
``nn.Module`` that applies the estimator's framework-specific preprocessing (e.g. ``preprocessing=(mean, std)``)
through ART's own ``_apply_preprocessing`` and then the raw ``estimator.model``. So the model, the CAM and the
gradients all see the input exactly as the estimator's ``predict`` and ``loss_gradient`` do, and there is one projected
sign-gradient loop in the project, not two.

They subclass :class:`art.attacks.evasion.ProjectedGradientDescentPyTorch` so that ART code that expects a PGD attack
(``attack_params``, ``set_params``, ``eps``/``eps_step``/``max_iter``/``num_random_init``/``batch_size``, trainers)
treats them as one. ART's own PGD already projects onto an array ``eps``, but its random start (``random_sphere``)
cannot broadcast an array ``eps`` (ValueError), which is why the random start here is the one of
:func:`torchattacks_part.step.uniform_start`, drawn inside each entry's own box.
"""

from numbers import Integral, Real

import numpy as np
import torch
import torch.nn as nn
from art.attacks.evasion import ProjectedGradientDescentPyTorch
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from art.estimators.pytorch import PyTorchEstimator
from art.preprocessing.standardisation_mean_std import StandardisationMeanStdPyTorch
from tqdm.auto import tqdm

from torchattacks_part.budget import RULES
from torchattacks_part.cam import CAM_METHODS
from torchattacks_part.checks import check_budget, check_budget_params, check_choice, check_number, check_steps
from torchattacks_part.mma import MMA
from torchattacks_part.pixel_ag import LOSSES, STARTS, PixelAG

__all__ = ["MMAPyTorch", "PixelAGPyTorch"]


def preprocessing_function(estimator):
    """``x -> `` what ``estimator.model`` takes: ART's framework-specific preprocessing of the estimator.

    ART's default, a mean-0 std-1 standardisation, is skipped: it changes nothing but copies its mean and std to the
    device on every call (two blocking copies per forward pass on a GPU).
    """
    operations = estimator.preprocessing_operations or []
    if all(isinstance(op, StandardisationMeanStdPyTorch) and np.all(np.asarray(op.mean) == 0)
           and np.all(np.asarray(op.std) == 1) for op in operations):
        return _identity
    return lambda x: estimator._apply_preprocessing(x, y=None, fit=False, no_grad=False)[0]


def _identity(x):
    return x


class EstimatorModule(nn.Module):
    """The estimator as a plain ``nn.Module``: its framework-specific preprocessing, then ``estimator.model``.

    The raw model is a registered submodule (``self.model``), so the CAM's layer search and ``model.parameters()``
    (which torchattacks reads for the device) walk into it.

    :param estimator: an ART ``PyTorchClassifier`` (any ``PyTorchEstimator`` whose preprocessing is all PyTorch).
    """

    def __init__(self, estimator):
        super().__init__()
        self.model = estimator.model
        self.estimator = estimator
        self.preprocess = preprocessing_function(estimator)

    def forward(self, x):
        return self.model(self.preprocess(x))


def check_estimator(name, estimator, requirements=(BaseEstimator, LossGradientsMixin, ClassifierMixin,
                                                  PyTorchEstimator)):
    """TypeError naming ``name`` unless ``estimator`` is an ART PyTorch classifier (e.g. ``PyTorchClassifier``)."""
    if all(isinstance(estimator, kind) for kind in requirements):
        return estimator
    hint = (": wrap the model first, PyTorchClassifier(model, loss, input_shape, nb_classes, clip_values=(0, 1))"
            if isinstance(estimator, nn.Module) else "")
    raise TypeError(f"{name} must be an ART PyTorchClassifier (art.estimators.classification), got "
                    f"{'a torch.nn.Module ' if isinstance(estimator, nn.Module) else ''}{type(estimator).__name__}"
                    f"{hint}")


def _same(a, b):
    """``a == b`` for parameter tuples, False where a comparison is not a plain bool (e.g. arrays)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _model_modes(model):
    return [(module, module.training) for module in model.modules()]


def _restore_modes(modes):
    for module, mode in modes:
        module.training = mode


class _PixelBudgetPyTorch(ProjectedGradientDescentPyTorch):
    """Shared machinery of :class:`PixelAGPyTorch` and :class:`MMAPyTorch` (validation, batching, labels, budget)."""

    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin, PyTorchEstimator)
    #: Parameters of the torchattacks_part attack besides the PGD ones, in the subclass.
    _own_params: tuple = ()

    def _setup(self, estimator, *, eps, eps_step, max_iter, num_random_init, batch_size, verbose, targeted, **own):
        """Validate every value, run ART's PGD constructor, then build the torchattacks_part attack."""
        check_estimator("estimator", estimator, self._estimator_requirements)
        values = dict(eps=eps, eps_step=eps_step, max_iter=max_iter, num_random_init=num_random_init,
                      batch_size=batch_size, verbose=verbose, targeted=targeted, **own)
        self._check_values(values)  # our ValueErrors first, before ART's own (TypeError-prone) checks
        super().__init__(estimator=estimator, norm=np.inf, eps=float(eps), eps_step=float(eps_step),
                         max_iter=max_iter, targeted=targeted, num_random_init=num_random_init,
                         batch_size=batch_size, random_eps=False, verbose=verbose)
        for name, value in own.items():
            setattr(self, name, value)
        self._module = EstimatorModule(estimator)
        self._built_for = None
        self.attack = None
        #: Number of degenerate CAMs (those images got ``eps`` everywhere) in the last ``generate`` call.
        self.last_degenerate = None
        #: Fraction of entries that kept the full ``eps`` in the last ``generate`` call.
        self.last_important_fraction = None
        self._check_params()
        self._build()

    # ----------------------------------------------------------------------------------------------- validation

    def _values(self):
        names = ("eps", "eps_step", "max_iter", "num_random_init", "batch_size", "verbose", "targeted", "norm",
                 "random_eps", "decay", "minimal") + self._own_params
        return {name: getattr(self, name) for name in names}

    def _check_values(self, values):
        """ValueError naming the parameter and its allowed values, for each value present in ``values``."""
        eps = check_number("eps", values["eps"])
        eps_low = values.get("eps_low")
        check_budget_params(eps, eps_low)
        check_number("eps_step", values["eps_step"], inclusive=False)
        check_steps("max_iter", values["max_iter"])
        check_steps("batch_size", values["batch_size"])
        init = values["num_random_init"]
        if isinstance(init, bool) or not isinstance(init, Integral) or init not in (0, 1):
            raise ValueError(f"num_random_init must be 0 (start at x) or 1 (one uniform start inside each entry's "
                             f"box); restarts are not supported, got {init!r}")
        if not isinstance(values["verbose"], bool):
            raise ValueError(f"verbose must be True or False, got {values['verbose']!r}")
        if values["targeted"] is not False:
            raise ValueError(f"targeted must be False: {type(self).__name__} is untargeted only, "
                             f"got {values['targeted']!r}")
        fixed = {  # ART's PGD parameters that this attack does not vary
            "norm": ("np.inf or 'inf'",
                     lambda v: (isinstance(v, str) and v == "inf") or (isinstance(v, Real) and v == np.inf)),
            "random_eps": ("False", lambda v: v is False),
            "decay": ("None", lambda v: v is None),
            "minimal": ("False", lambda v: v is False),
        }
        for name, (allowed, ok) in fixed.items():
            if name in values and not ok(values[name]):
                raise ValueError(f"{name} must be {allowed} for {type(self).__name__}, got {values[name]!r}")
        if "cam" in values:
            check_choice("cam", values["cam"], CAM_METHODS)
        if "rule" in values:
            check_choice("rule", values["rule"], RULES)
        if "loss" in values:
            check_choice("loss", values["loss"], LOSSES)
        if values.get("start") is not None:
            check_choice("start", values["start"], STARTS)
        if "k" in values:
            check_steps("k", values["k"])
        if "kappa" in values:
            check_number("kappa", values["kappa"])
        layer = values.get("target_layer")
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise ValueError(f"target_layer must be a module of estimator.model, a dotted module name or None, "
                             f"got {type(layer).__name__}")

    def _check_params(self) -> None:
        """Validate every parameter (called at the end of ``__init__`` and by ``set_params``)."""
        self._check_values(self._values())
        estimator = self.estimator
        clip = estimator.clip_values
        if clip is None or np.shape(clip) != (2,) or float(clip[0]) != 0.0 or float(clip[1]) != 1.0:
            raise ValueError(f"clip_values of the estimator must be (0, 1): the attack works on images in [0, 1], "
                             f"got {clip!r}")
        if not getattr(estimator, "channels_first", True):
            raise ValueError("channels_first of the estimator must be True: images are (N, C, H, W)")
        if "k" in self._own_params and self.k > estimator.nb_classes - 1:
            raise ValueError(f"k must be in [1, nb_classes - 1] = [1, {estimator.nb_classes - 1}], got {self.k}")

    def set_params(self, **kwargs) -> None:
        """Set attack parameters (names in ``attack_params``), validate them and rebuild the attack.

        On a ValueError nothing changes.
        """
        old = {name: getattr(self, name) for name in kwargs if name in self.attack_params and hasattr(self, name)}
        try:
            super().set_params(**kwargs)
            self._build()
        except Exception:
            for name, value in old.items():
                setattr(self, name, value)
            raise

    # ------------------------------------------------------------------------------------------- torch attack

    def _target_layer(self):
        layer = self.target_layer
        if isinstance(layer, str):
            try:
                return self.estimator.model.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"target_layer {layer!r} is not a module of estimator.model") from None
        return layer

    def _make_attack(self, module, target_layer):
        raise NotImplementedError

    def _build(self):
        """(Re)build the torchattacks_part attack from the current parameters."""
        self.attack = self._make_attack(self._module, self._target_layer())
        self._built_for = tuple(self._values().items())

    def _current_attack(self):
        """The torchattacks_part attack, rebuilt (after validation) when an attribute was assigned directly."""
        if not _same(self._built_for, tuple(self._values().items())):
            self._check_params()
            self._build()
        return self.attack

    # ------------------------------------------------------------------------------------------------- inputs

    def _check_x(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[0] == 0:
            got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"x must be a non-empty numpy array of shape (N, C, H, W), got {got}")
        shape = tuple(getattr(self.estimator, "input_shape", x.shape[1:]) or x.shape[1:])
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, shape))}) (the estimator's input_shape), "
                             f"got {x.shape}")
        if x.dtype.kind not in "fiu":
            raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise ValueError("x must not contain NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"x must lie in [0, 1] (the estimator's clip_values), got values in [{lo:.4g}, {hi:.4g}]")
        return x.astype(ART_NUMPY_DTYPE, copy=False)

    def _check_y(self, y, n):
        """None, class indices (N,) or (N, 1), or one-hot / scores (N, nb_classes)."""
        if y is None:
            return None
        nb_classes = self.estimator.nb_classes
        expected = f"class indices of shape ({n},) or one-hot labels of shape ({n}, {nb_classes})"
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise ValueError(f"y must be {expected}, got dtype {y.dtype}")
        if y.ndim == 2 and y.shape == (n, 1) and nb_classes != 1:
            y = y[:, 0]
        if y.ndim == 1 and y.dtype.kind == "b":
            raise ValueError(f"y must be {expected}: bool class indices are ambiguous, got dtype bool (one-hot rows "
                             f"may be bool)")
        if y.ndim == 1 and y.shape == (n,):
            if not np.isfinite(y).all() or not (np.round(y) == y).all():
                raise ValueError(f"y must be {expected}: indices must be integers")
            if y.min() < 0 or y.max() >= nb_classes:
                raise ValueError(f"y must be {expected}: indices must lie in [0, {nb_classes - 1}], "
                                 f"got values in [{y.min()}, {y.max()}]")
            return y.astype(np.int64)
        if y.ndim == 2 and y.shape == (n, nb_classes):
            if not np.isfinite(y).all():
                raise ValueError(f"y must be {expected}: got NaN or inf")
            return y
        raise ValueError(f"y must be {expected}, got shape {y.shape}")

    def _check_budget(self, budget, x):
        if budget is None:
            return None
        if isinstance(budget, torch.Tensor):
            budget = budget.detach().cpu().numpy()
        try:
            budget = np.asarray(budget, dtype=ART_NUMPY_DTYPE)
        except (TypeError, ValueError):
            raise ValueError(f"budget must be a numpy array of shape (N or 1, C or 1, H, W), "
                             f"got {type(budget).__name__}") from None
        check_budget(torch.from_numpy(budget), torch.from_numpy(x))
        return budget

    # ----------------------------------------------------------------------------------------------- generate

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, budget: np.ndarray | None = None,
                 **kwargs) -> np.ndarray:
        """Adversarial examples for ``x``, each entry within its own budget.

        :param x: images, numpy array (N, C, H, W) with values in [0, 1].
        :param y: true labels, one-hot (N, nb_classes) or class indices (N,). None uses the estimator's
            predictions, as ART does to avoid label leaking.
        :param budget: optional per-entry L-inf budget, numpy array broadcastable to ``x`` of shape
            (N or 1, C or 1, H, W); it replaces the CAM (``eps``/``eps_low`` are then not used for the budget).
        :return: adversarial examples, numpy float32 array of the shape of ``x``.
        :raises ValueError: on a bad ``x``, ``y``, ``budget`` or keyword, before any model work.
        """
        if kwargs:
            raise ValueError(f"generate got unsupported keyword argument(s) {sorted(kwargs)}; it takes x, y and "
                             f"budget (use budget instead of ART's mask)")
        attack = self._current_attack()
        x = self._check_x(x)
        n = x.shape[0]
        y = self._check_y(y, n)
        budget = self._check_budget(budget, x)

        modes = _model_modes(self.estimator.model)
        try:
            labels = np.argmax(self._set_targets(x, y), axis=1).astype(np.int64)  # ART's path, predictions for None
            self._module.training = False  # torchattacks restores train mode when this flag is set; we restore
            device = self.estimator.device
            adv = np.empty_like(x)
            degenerate, important = 0, 0.0
            starts = range(0, n, self.batch_size)
            for start in tqdm(starts, desc=type(self).__name__, leave=False, disable=not self.verbose):
                end = min(start + self.batch_size, n)
                images = torch.from_numpy(x[start:end]).to(device)
                targets = torch.from_numpy(labels[start:end]).to(device)
                batch_budget = None
                if budget is not None:
                    part = budget[start:end] if budget.shape[0] == n else budget
                    batch_budget = torch.from_numpy(np.ascontiguousarray(part)).to(device)
                adv[start:end] = attack(images, targets, budget=batch_budget).detach().cpu().numpy()
                degenerate += int(attack.last_degenerate)
                important += float(attack.last_important_fraction) * (end - start)
        finally:
            _restore_modes(modes)
        self.last_degenerate = degenerate
        self.last_important_fraction = important / n
        return adv

    def compute_budget(self, x: np.ndarray) -> np.ndarray:
        """The per-entry budget ``generate`` would use for ``x`` without a ``budget`` argument.

        :param x: images, numpy array (N, C, H, W) in [0, 1].
        :return: numpy float32 array (N, 1, H, W), or (N, 3, H, W) for ``rule="jet"``, of ``eps`` / ``eps_low``
            (for ``rule="linear"``, of values in [eps_low, eps]: ``eps_low + (eps - eps_low) * map``).
        """
        attack = self._current_attack()
        x = self._check_x(x)
        modes = _model_modes(self.estimator.model)
        try:
            parts = [attack.budget(torch.from_numpy(x[i:i + self.batch_size]).to(self.estimator.device))
                     for i in range(0, x.shape[0], self.batch_size)]
        finally:
            _restore_modes(modes)
        return torch.cat(parts).cpu().numpy().astype(ART_NUMPY_DTYPE, copy=False)


class PixelAGPyTorch(_PixelBudgetPyTorch):
    """Pixel-AG (PART, ICML 2024) as an ART evasion attack: PGD with budget ``eps`` on the pixels the estimator's
    class activation map marks as important and ``eps_low`` elsewhere.

    | Paper link: https://arxiv.org/abs/2406.00685

    It runs :class:`torchattacks_part.PixelAG` on the estimator (preprocessing included). With ``eps_low == eps``
    (or None) it is PGD with a uniform budget; with ``num_random_init=0`` and a given ``budget`` it equals ART's
    ``ProjectedGradientDescentPyTorch`` with ``eps=budget`` (the objective is the cross-entropy of
    :mod:`torchattacks_part.losses`, not ``estimator.loss``; its sign gradient is the same for a cross-entropy
    estimator).
    """

    attack_params = ProjectedGradientDescentPyTorch.attack_params + ["eps_low", "cam", "target_layer", "rule", "loss",
                                                                     "start"]
    _own_params = ("eps_low", "cam", "target_layer", "rule", "loss", "start")

    def __init__(self, estimator, eps: float = 8 / 255, eps_low: float | None = 7 / 255, eps_step: float = 2 / 255,
                 max_iter: int = 10, num_random_init: int = 1, batch_size: int = 128, cam: str = "gradcam",
                 target_layer=None, rule: str = "cam", loss: str = "ce", verbose: bool = False,
                 targeted: bool = False, start: str | None = None):
        """
        Create a :class:`PixelAGPyTorch` instance.

        :param estimator: a ``PyTorchClassifier`` with ``clip_values=(0, 1)`` whose model returns logits.
        :param eps: budget of important pixels, ``>= 0``.
        :param eps_low: budget of the other pixels, ``0 <= eps_low <= eps``; None (or ``eps``) for a uniform budget,
            in which case no CAM is computed.
        :param eps_step: step size, ``> 0``.
        :param max_iter: number of steps, integer ``>= 1``.
        :param num_random_init: 0 starts at ``x``; 1 starts at a random point (see ``start``). Restarts (> 1) are not
            supported.
        :param batch_size: number of images per batch, integer ``>= 1``.
        :param cam: CAM method, one of :data:`torchattacks_part.cam.CAM_METHODS` (default ``"gradcam"``).
        :param target_layer: CAM layer: a module of ``estimator.model``, its dotted name (``"layer4"``) or None for
            the last convolutional block.
        :param rule: how the CAM becomes a budget: ``"cam"`` (paper), ``"jet"`` (authors' code), ``"random"`` or
            ``"linear"`` (continuous: ``eps_low + (eps - eps_low) * map``).
        :param loss: ``"ce"`` (AT, MART, PART) or ``"kl"`` (TRADES' inner maximisation, PART-T).
        :param verbose: show a progress bar over batches.
        :param targeted: must be False (untargeted only); present for ART's parameter conventions.
        :param start: the random start of ``num_random_init=1``: ``"uniform"`` in each entry's box or
            ``"gaussian"``, ``x + 0.001 N(0, 1)`` as TRADES and the official MART code do; None: ``"uniform"`` for
            ``loss="ce"``, ``"gaussian"`` for ``loss="kl"``.
        """
        self._setup(estimator, eps=eps, eps_step=eps_step, max_iter=max_iter, num_random_init=num_random_init,
                    batch_size=batch_size, verbose=verbose, targeted=targeted, eps_low=eps_low, cam=cam,
                    target_layer=target_layer, rule=rule, loss=loss, start=start)

    def _make_attack(self, module, target_layer):
        return PixelAG(module, eps=float(self.eps), eps_low=None if self.eps_low is None else float(self.eps_low),
                       alpha=float(self.eps_step), steps=self.max_iter, random_start=self.num_random_init == 1,
                       cam=self.cam, target_layer=target_layer, rule=self.rule, loss=self.loss, start=self.start)


class MMAPyTorch(_PixelBudgetPyTorch):
    """Minimum-margin attack (Gao et al., ICML 2022) with PART's per-pixel budget, as an ART evasion attack.

    | Paper link: https://arxiv.org/abs/2206.07314

    It runs :class:`torchattacks_part.MMA` on the estimator: the ``k`` most likely wrong classes are attacked in turn
    with the margin loss ``-max(z_y - z_t + kappa, 0)`` and, per image, the example with the largest final margin is
    kept. By default (``eps_low=None``) the budget is ``eps`` everywhere; with ``eps_low`` it follows the CAM as in
    :class:`PixelAGPyTorch`.
    """

    attack_params = ProjectedGradientDescentPyTorch.attack_params + ["k", "kappa", "eps_low", "cam", "target_layer",
                                                                     "rule"]
    _own_params = ("k", "kappa", "eps_low", "cam", "target_layer", "rule")

    def __init__(self, estimator, eps: float = 8 / 255, eps_step: float = 2 / 255, max_iter: int = 20, k: int = 3,
                 kappa: float = 50.0, eps_low: float | None = None, num_random_init: int = 1, batch_size: int = 128,
                 cam: str = "gradcam", target_layer=None, rule: str = "cam", verbose: bool = False,
                 targeted: bool = False):
        """
        Create a :class:`MMAPyTorch` instance.

        :param estimator: a ``PyTorchClassifier`` with ``clip_values=(0, 1)`` whose model returns logits.
        :param eps: budget of important pixels (of every pixel when ``eps_low`` is None), ``>= 0``.
        :param eps_step: step size, ``> 0``.
        :param max_iter: number of steps per target class, integer ``>= 1``.
        :param k: number of target classes, integer in ``[1, nb_classes - 1]``.
        :param kappa: margin confidence, ``>= 0``.
        :param eps_low: budget of the other pixels, ``0 <= eps_low <= eps``, or None for a uniform ``eps``.
        :param num_random_init: 0 starts at ``x``; 1 starts at a random point of each entry's box (shared by the
            ``k`` targets). Restarts (> 1) are not supported.
        :param batch_size: number of images per batch (each runs as ``k x batch_size`` images), integer ``>= 1``.
        :param cam: CAM method, one of :data:`torchattacks_part.cam.CAM_METHODS`.
        :param target_layer: CAM layer: a module of ``estimator.model``, its dotted name or None.
        :param rule: ``"cam"``, ``"jet"``, ``"random"`` or ``"linear"``, see :mod:`torchattacks_part.budget`.
        :param verbose: show a progress bar over batches.
        :param targeted: must be False (untargeted only); present for ART's parameter conventions.
        """
        self._setup(estimator, eps=eps, eps_step=eps_step, max_iter=max_iter, num_random_init=num_random_init,
                    batch_size=batch_size, verbose=verbose, targeted=targeted, k=k, kappa=kappa, eps_low=eps_low,
                    cam=cam, target_layer=target_layer, rule=rule)

    def _make_attack(self, module, target_layer):
        return MMA(module, eps=float(self.eps), alpha=float(self.eps_step), steps=self.max_iter, k=self.k,
                   kappa=float(self.kappa), eps_low=None if self.eps_low is None else float(self.eps_low),
                   random_start=self.num_random_init == 1, cam=self.cam, target_layer=target_layer, rule=self.rule)
