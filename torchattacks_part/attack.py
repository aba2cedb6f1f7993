"""The small base class of the attacks that perturb each entry within its own budget.

A subclass overrides one hook, :meth:`PixelBudgetAttack.perturb`; the base class validates inputs, turns the
attacked model's CAM into the per-entry budget (or takes a budget the caller passes) and handles torchattacks'
normalisation, so :class:`~torchattacks_part.pixel_ag.PixelAG` and :class:`~torchattacks_part.mma.MMA` differ
only in their objective.
"""

import torch
from torchattacks.attack import Attack

from .budget import BINARY_RULES, RULES, budget_from_importance, degenerate_maps, importance, important_pixels
from .cam import CAM_METHODS, compute_maps, layer_candidates
from .checks import (check_budget, check_budget_params, check_choice, check_images, check_labels, check_module,
                     check_steps)

#: Where an attack puts its full ``eps``: PART's important pixels, or the rest (the background attacks).
FULL_EPS_ON = ("important", "background")


class PixelBudgetAttack(Attack):
    """Base of attacks with a per-entry L-inf budget: ``eps`` on important pixels, ``eps_low`` elsewhere (or, for
    rule "linear", ``eps_low + (eps - eps_low) * m`` with ``m`` each pixel's map value in [0, 1]).

    :param name: attack name (torchattacks convention).
    :param model: classifier returning logits.
    :param eps: budget of important pixels.
    :param eps_low: budget of the other pixels, ``0 <= eps_low <= eps``; ``None`` or ``eps`` means a uniform budget
        (no CAM is computed).
    :param alpha: step size.
    :param steps: number of steps.
    :param random_start: start from a random point of the per-entry box.
    :param cam: CAM method (see :data:`~torchattacks_part.cam.CAM_METHODS`).
    :param target_layer: CAM target layer: module, dotted name or None (last convolutional block).
    :param rule: how the CAM becomes a budget, see :mod:`torchattacks_part.budget`.
    :param full_eps_on: "important" (PART: ``eps`` on the CAM's important pixels) or "background" (the inverse:
        ``eps`` on the other pixels, ``eps_low`` on the important ones; an attack aimed at what PART gives up; for
        rule "linear" the map ``m`` becomes ``1 - m``).
    """

    def __init__(self, name, model, eps, eps_low, alpha, steps, random_start, cam, target_layer, rule,
                 full_eps_on="important"):
        check_module("model", model)
        eps, eps_low, alpha = check_budget_params(eps, eps_low, alpha)
        check_steps("steps", steps)
        check_choice("cam", cam, CAM_METHODS)
        check_choice("rule", rule, RULES)
        check_choice("full_eps_on", full_eps_on, FULL_EPS_ON)
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start must be True or False, got {random_start!r}")
        # Resolved once, and now: no layer for the CAM fails here, not mid-batch.
        cam_layers = layer_candidates(model, target_layer) if eps_low is not None and eps_low < eps else None
        super().__init__(name, model)
        self.eps, self.eps_low, self.alpha, self.steps = eps, eps_low, alpha, steps
        self.random_start = random_start
        self.cam, self.target_layer, self.rule = cam, target_layer, rule
        self.full_eps_on = full_eps_on
        self._cam_layers = cam_layers
        #: Number of degenerate CAMs (given eps everywhere) in the last call, a 0-dim int64 tensor on the model's
        #: device (read it with ``int(...)``, which syncs once).
        self.last_degenerate = None
        #: Fraction of entries that got the full eps in the last call, a 0-dim tensor (rule "linear": the entries
        #: whose budget is ``>= eps``).
        self.last_important_fraction = None
        self._num_classes = None

    @property
    def uses_cam(self):
        return self.eps_low is not None and self.eps_low < self.eps

    def _model_input(self, images):
        """What the model itself sees for images in [0, 1] (torchattacks normalises inside ``get_logits``)."""
        if self.normalization_used is not None:
            return self.normalize(images)
        return images

    def num_classes(self, images):
        if self._num_classes is None:
            with torch.no_grad():
                self._num_classes = int(self.get_logits(images[:1]).shape[1])
        return self._num_classes

    def important(self, images):
        """Boolean mask of the entries that keep ``eps``: (B, 1, H, W), or (B, 3, H, W) for rule "jet"; for rule
        "linear" the float32 importance map (B, 1, H, W) in [0, 1] (:func:`~torchattacks_part.budget.importance`).

        The CAM of the attacked model, on ``images`` (B, C, H, W) in [0, 1], for the predicted class. Sets
        ``last_degenerate``.
        """
        if self._cam_layers is None:
            self._cam_layers = layer_candidates(self.model, self.target_layer)
        # The released "jet" rule resizes the layer-resolution map itself (PIL's bicubic); the others take ours.
        cams = compute_maps(self.model, self._model_input(images), self._cam_layers, self.cam,
                            resize=self.rule != "jet")
        degenerate = degenerate_maps(cams)
        self.last_degenerate = degenerate.sum()
        # The binary rules keep their mask boolean (a bit per entry in the trainer's cache); "linear" is a map.
        select = important_pixels if self.rule in BINARY_RULES else importance
        important = select(cams, self.rule, size=images.shape[-2:])
        if self.full_eps_on == "background":
            # A degenerate map marks every entry important; inverted it would give eps_low everywhere: keep eps.
            kept = degenerate.view(-1, 1, 1, 1)
            important = ~important | kept if important.dtype == torch.bool else torch.where(kept, 1.0, 1 - important)
        return important

    def budget_from(self, important, dtype=torch.float32):
        """Budgets from an importance mask: ``eps`` where True, ``eps_low`` elsewhere; or from a float importance map
        in [0, 1] (rule "linear"): ``eps_low + (eps - eps_low) * m``. Sets the important fraction."""
        low = self.eps if self.eps_low is None else self.eps_low
        budget = budget_from_importance(important, self.eps, low, dtype)
        if important.dtype == torch.bool:
            self.last_important_fraction = important.float().mean()
        else:
            self.last_important_fraction = (budget >= self.eps).float().mean()
        return budget

    def budget(self, images):
        """The per-entry budget of ``images`` (B, C, H, W) in [0, 1]: (B, 1, H, W), or (B, 3, H, W) for rule "jet"."""
        if not self.uses_cam:
            self.last_degenerate = torch.zeros((), dtype=torch.long, device=images.device)
            return self.budget_from(torch.ones_like(images[:, :1], dtype=torch.bool), images.dtype)
        return self.budget_from(self.important(images), images.dtype)

    def forward(self, images, labels, budget=None):
        """Adversarial images for ``images`` (B, C, H, W) in [0, 1] and ``labels`` (B,).

        :param budget: optional per-entry budget broadcastable to the images; it replaces the CAM.
        """
        # torchattacks un-normalises normalised inputs as z * std + mean, which can miss 0 or 1 by a rounding error.
        check_images(images, slack=1e-5 if self.normalization_used is not None else 0.0)
        images = images.clone().detach().to(self.device).clamp_(0, 1)
        labels = check_labels(labels, images.shape[0], name="labels").clone().detach().to(self.device)
        check_labels(labels, images.shape[0], self.num_classes(images))
        if budget is None:
            budget = self.budget(images)
        else:
            budget = check_budget(budget, images)
            self.last_degenerate = torch.zeros((), dtype=torch.long, device=images.device)
            self.last_important_fraction = (budget >= self.eps).float().mean()
        return self.perturb(images, labels, budget)

    def perturb(self, images, labels, budget):
        """The hook: adversarial images within ``budget`` of ``images``."""
        raise NotImplementedError
