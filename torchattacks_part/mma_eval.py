"""The MMA paper's own evaluation attack: APGD-T on the minimum margin, target after target.

Facts of the released code (github Sjtubrian/MM-attack, ``attack_generator.eval_robust_mm_sequential`` with its
``attack_apgd.APGDAttack_targeted``; called from ``mm_attack.py``):

- per target one L-inf APGD-T run: 20 iterations for MM3 (k = 3) and MM9 (k = 9), 100 for "MM+" (k = 9); one
  restart, rho 0.75, seed 1, ``eot_iter`` 1, eps 0.031; AutoAttack's step size (2 eps, halved at its checkpoints),
  momentum 0.75 and start (a random point of the eps box, normalised per image);
- the loss is ``mm_loss = -(z_y - z_t)`` per image: no kappa and no clamp. (Its PGD-based variants,
  ``eval_robust_mmu_sequential`` and the training ``mmu_at_train``, use ``-max(z_y - z_t + 50, 0)``, the form of
  :class:`~torchattacks_part.MMA`.)
- target i (0-based) is ``sort(natural logits)[:, -(i + 2)]``: the (i + 1)-th most likely wrong class of an image
  classified correctly;
- sequential: images wrong on clean data are never attacked; target i attacks, in batches of 128, only the images
  no earlier target broke, and each target's call reseeds torch with the seed;
- an image counts as broken when the model misclassifies the returned point, i.e. when any iterate of any
  target's run was misclassified (APGD returns its latest misclassified iterate).
"""

from functools import partial

import torch

from .apgd import auto_pgd
from .attack import PixelBudgetAttack
from .checks import check_number, check_steps
from .losses import top_wrong_classes
from .pixel_ag import ADAPTIVE_EPS, ADAPTIVE_EPS_LOW


def mm_loss(logits, labels, targets, kappa=None):
    """The minimum-margin loss per image, (B,): ``z_t - z_y``, or ``-max(z_y - z_t + kappa, 0)`` with ``kappa``.

    ``kappa=None`` is the loss of the MMA paper's evaluation (its APGD-T's ``mm_loss``); a number gives the
    CW-style clamped form of its PGD-based training variant (:class:`~torchattacks_part.MMA`, kappa 50).
    """
    true = logits.gather(1, labels[:, None])[:, 0]
    target = logits.gather(1, targets[:, None])[:, 0]
    if kappa is None:
        return -(true - target)
    return -torch.clamp(true - target + kappa, min=0)


class MMAEval(PixelBudgetAttack):
    r"""
    Minimum-margin attack as evaluated in the paper 'Fast and Reliable Evaluation of Adversarial Robustness with
    Minimum-Margin Attack' [https://arxiv.org/abs/2206.07314] (Gao et al., ICML 2022), with PART's per-pixel budget.

    For each of the k wrong classes with the largest natural logits, in order, APGD-T (Croce & Hein, ICML 2020;
    :func:`~torchattacks_part.auto_pgd`) ascends the minimum margin ``z_t - z_y`` on the images that are correct
    on clean data and not yet broken. An image is broken when ANY target's run misclassifies it at any iterate;
    it then carries that point (AutoAttack's ``x_best_adv``). An image no target breaks carries its point of highest
    margin over all targets. This is the released ``eval_robust_mm_sequential``; the training-time variant
    (PGD, last iterate, largest final margin) is :class:`~torchattacks_part.MMA`.

    Each target's start is drawn from a CPU generator reseeded with ``seed``, as the released code reseeds per
    target; with a uniform budget the starts and the whole run are then those of the reference code.

    Distance Measure : Linf (per entry)

    Arguments:
        model (nn.Module): model to attack.
        eps (float): budget of important pixels. (Default: 8/255)
        steps (int): APGD iterations per target; the paper's MM3 uses 20, "MM+" 100 with k=9. (Default: 20)
        k (int): number of target classes, 1 <= k <= num_classes - 1. (Default: 3)
        kappa (float or None): None for the paper's unclamped margin ``z_t - z_y``; a number for
            ``-max(z_y - z_t + kappa, 0)``. (Default: None)
        eps_low (float or None): budget of the other pixels; None for a uniform eps. (Default: None)
        n_restarts (int): APGD restarts per target, each on the images still robust. (Default: 1)
        cam, target_layer, rule, full_eps_on: as in :class:`~torchattacks_part.PixelAG` (``full_eps_on=
            "background"``: see :meth:`background`).
        seed (int or None): seed of the random starts, reseeded per target (the released code uses 1);
            None draws from torch's global generator. (Default: 1)

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1].
        - labels: :math:`(N)`.
        - budget (optional): :math:`(N \text{ or } 1, 1 \text{ or } C, H, W)`, replaces the CAM.
        - output: :math:`(N, C, H, W)`.

    After a call, ``last_robust`` (N,) bool tells which images survived (correct on clean data and not broken),
    and ``last_broken_by`` (N,) the index of the target that broke each image (-1: not broken by any target, which
    includes images misclassified on clean data; those are returned unchanged).

    Examples::
        >>> attack = torchattacks_part.MMAEval(model, eps=8/255, steps=20, k=3)
        >>> adv_images = attack(images, labels)
        >>> robust_accuracy = attack.last_robust.float().mean()
        >>> adaptive = torchattacks_part.MMAEval.adaptive(model)  # eps 12/255, eps_low 8/255 from the CAM

    """

    def __init__(self, model, eps=8 / 255, steps=20, k=3, kappa=None, eps_low=None, n_restarts=1, cam="gradcam",
                 target_layer=None, rule="cam", seed=1, full_eps_on="important"):
        check_steps("k", k)
        check_steps("n_restarts", n_restarts)
        if kappa is not None:
            kappa = check_number("kappa", kappa)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        # APGD sets its own step size (2 * budget, halved at checkpoints): no alpha; it always starts at random.
        super().__init__("MMAEval", model, eps, eps_low, None, steps, True, cam, target_layer, rule, full_eps_on)
        self.k, self.kappa, self.n_restarts, self.seed = k, kappa, n_restarts, seed
        #: (N,) bool: images that survived the last call.
        self.last_robust = None
        #: (N,) long: target index that broke each image in the last call, -1 where none did.
        self.last_broken_by = None

    @classmethod
    def adaptive(cls, model, steps=20, **kwargs):
        """The paper's adaptive MMA (PART Table 3) with MMA's own evaluation: eps 12/255, eps_low 8/255 from the CAM."""
        return cls(model, eps=ADAPTIVE_EPS, eps_low=ADAPTIVE_EPS_LOW, steps=steps, **kwargs)

    @classmethod
    def background(cls, model, steps=20, **kwargs):
        """The adaptive budget inverted: 8/255 on the CAM's important pixels, 12/255 on the others."""
        return cls(model, eps=ADAPTIVE_EPS, eps_low=ADAPTIVE_EPS_LOW, steps=steps, full_eps_on="background",
                   **kwargs)

    def perturb(self, images, labels, budget):
        n, k = images.shape[0], self.k
        with torch.no_grad():
            logits = self.get_logits(images)
        targets = top_wrong_classes(logits, labels, k)  # (N, k), most likely first
        robust = logits.argmax(1) == labels
        view = (-1,) + (1,) * (images.dim() - 1)
        adv = images.clone()
        best = torch.full((n,), float("-inf"), dtype=logits.dtype, device=images.device)
        broken_by = torch.full((n,), -1, dtype=torch.long, device=images.device)
        per_image = budget.shape[0] == n

        for j in range(k):
            generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
            for _ in range(self.n_restarts):
                idx = robust.nonzero().squeeze(1)  # one host sync per target and restart, none inside APGD
                if idx.numel() == 0:
                    break
                loss = partial(mm_loss, targets=targets[idx, j], kappa=self.kappa)
                run = auto_pgd(self.get_logits, loss, images[idx], labels[idx], budget[idx] if per_image else budget,
                           self.steps, generator=generator)
                broken = ~run.robust
                improved = run.robust & (run.loss_best > best[idx])
                adv[idx] = torch.where(broken.view(view), run.x_best_adv,
                                       torch.where(improved.view(view), run.x_best, adv[idx]))
                best[idx] = torch.where(improved, run.loss_best, best[idx])
                broken_by[idx] = torch.where(broken, j, broken_by[idx])
                robust[idx] = run.robust
        self.last_robust, self.last_broken_by = robust, broken_by
        return adv
