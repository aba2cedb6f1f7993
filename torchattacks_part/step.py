"""The one projected sign-gradient core every attack and trainer in this project runs on.

Pixel-AG (paper section 3.2) is PGD whose L-inf ball is a box with its own half-width per entry: after each
sign-gradient step the perturbation is clipped to [-budget_i, budget_i] and the image to [0, 1]. This is a
projection onto the per-entry box, not a repeated multiplication of the perturbation by the mask (the paper's
update formula can be read that way; the authors' code projects, and so do we).
"""

import torch


def uniform_start(images, budget, eps):
    """``images + U(-budget_i, budget_i)`` per entry, clamped to [0, 1].

    The noise is drawn as ``U(-eps, eps)`` and rescaled by ``budget / eps``: with a budget equal to ``eps`` everywhere
    the draw, the arithmetic and so the result are bit-for-bit those of ``torchattacks.PGD``.
    """
    if eps == 0:
        return images.clone()
    noise = torch.empty_like(images).uniform_(-eps, eps)
    return torch.clamp(images + noise * (budget / eps), min=0, max=1)


def gaussian_start(images, std=0.001):
    """TRADES' start for its KL inner maximisation: ``images + 0.001 * N(0, 1)`` (the first step projects it)."""
    return images + std * torch.randn_like(images)


def project(adv_images, images, budget):
    """Clip the perturbation entry-wise to [-budget, budget], then the image to [0, 1]."""
    delta = torch.clamp(adv_images - images, min=-budget, max=budget)
    return torch.clamp(images + delta, min=0, max=1)


class FirstMisclassified:
    """Per image, the first iterate the model misclassifies: AutoAttack's ``x_best_adv``.

    An evaluation attack is scored at full strength when an image counts as broken as soon as ANY iterate (the
    start included) breaks it; PGD's last iterate can end on the correct side of a boundary an earlier iterate had
    crossed. :meth:`observe` takes each iterate with the logits the attack computed for its gradient anyway, so
    tracking costs one extra forward pass (the final iterate's), and everything stays on the device.
    """

    def __init__(self, labels):
        self.labels = labels
        self.broken = None  # (B,) bool: some iterate so far was misclassified
        self.images = None  # the first misclassified iterate of each broken image

    def observe(self, adv_images, logits):
        adv_images = adv_images.detach()
        wrong = logits.detach().argmax(dim=1) != self.labels
        if self.images is None:
            self.images, self.broken = adv_images.clone(), wrong
            return
        new = (wrong & ~self.broken).view(-1, *([1] * (adv_images.dim() - 1)))
        self.images = torch.where(new, adv_images, self.images)
        self.broken = self.broken | wrong

    def result(self, last):
        """The first misclassified iterate of each broken image, ``last`` for the others."""
        return torch.where(self.broken.view(-1, *([1] * (last.dim() - 1))), self.images, last)


def ascend(objective, images, start, budget, alpha, steps):
    """``steps`` projected sign-gradient ascent steps on ``objective`` from ``start``.

    :param objective: callable mapping adversarial images (B, C, H, W) to a scalar to maximise.
    :param images: natural images, the centre of the box.
    :param start: starting point (see :func:`uniform_start`, :func:`gaussian_start`).
    :param budget: per-entry budget broadcastable to ``images``.
    :param alpha: step size.
    :param steps: number of steps.
    :return: detached adversarial images.
    """
    adv_images = start.detach()
    with torch.enable_grad():
        for _ in range(steps):
            adv_images.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(adv_images), adv_images)
            adv_images = project(adv_images.detach() + alpha * grad.sign(), images, budget).detach()
    return adv_images
