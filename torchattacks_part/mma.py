import torch

from .attack import PixelBudgetAttack
from .checks import check_number, check_steps
from .losses import minimum_margin, top_wrong_classes
from .pixel_ag import ADAPTIVE_EPS, ADAPTIVE_EPS_LOW
from .step import ascend, uniform_start


class MMA(PixelBudgetAttack):
    r"""
    Minimum-margin attack in the paper 'Fast and Reliable Evaluation of Adversarial Robustness with Minimum-Margin
    Attack' [https://arxiv.org/abs/2206.07314] (Gao et al., ICML 2022), with PART's per-pixel budget.

    The k wrong classes with the largest natural logits become targets; for each target, projected sign-gradient
    ascent on the CW-style margin ``-max(z_y - z_t + kappa, 0)`` from one shared random start; per image, the
    adversarial example whose final margin ``z_t - z_y`` is largest is kept. The k targets run as one batch of
    k x N images.

    By default the budget is ``eps`` everywhere (the evaluation of paper Table 1). With ``eps_low`` the budget
    follows the attacked model's CAM exactly as in :class:`~torchattacks_part.PixelAG`: Pixel-AG inside MMA,
    for training (paper Table 5) and for the adaptive MMA of Table 3 (:meth:`adaptive`).

    Distance Measure : Linf (per entry)

    Arguments:
        model (nn.Module): model to attack.
        eps (float): budget of important pixels. (Default: 8/255)
        alpha (float): step size. (Default: 2/255)
        steps (int): number of steps per target. (Default: 20)
        k (int): number of target classes. (Default: 3)
        kappa (float): margin confidence. (Default: 50)
        eps_low (float or None): budget of the other pixels; None for a uniform eps. (Default: None)
        random_start (bool): start uniformly in each entry's box. (Default: True)
        cam, target_layer, rule: as in :class:`~torchattacks_part.PixelAG`.

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1].
        - labels: :math:`(N)`.
        - budget (optional): :math:`(N, 1 \text{ or } C, H, W)`, replaces the CAM.
        - output: :math:`(N, C, H, W)`.

    Examples::
        >>> attack = torchattacks_part.MMA(model, eps=8/255, alpha=2/255, steps=20, k=3)
        >>> adv_images = attack(images, labels)
        >>> adaptive = torchattacks_part.MMA.adaptive(model, steps=20)  # paper Table 3

    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=20, k=3, kappa=50.0, eps_low=None,
                 random_start=True, cam="gradcam", target_layer=None, rule="cam"):
        check_steps("k", k)
        kappa = check_number("kappa", kappa)
        super().__init__("MMA", model, eps, eps_low, alpha, steps, random_start, cam, target_layer, rule)
        self.k, self.kappa = k, kappa

    @classmethod
    def adaptive(cls, model, steps=20, **kwargs):
        """The paper's adaptive MMA (Table 3): eps 12/255, eps_low 8/255, CAM of the attacked model."""
        return cls(model, eps=ADAPTIVE_EPS, eps_low=ADAPTIVE_EPS_LOW, steps=steps, **kwargs)

    def perturb(self, images, labels, budget):
        n, k = images.shape[0], self.k
        with torch.no_grad():
            logits = self.get_logits(images)
        targets = top_wrong_classes(logits, labels, k)  # (N, k), most likely wrong class first
        start = uniform_start(images, budget, self.eps) if self.random_start else images

        # All k targets at once: row j * N + i is image i attacked towards its j-th target.
        def tile(t):
            return t.repeat(k, *([1] * (t.dim() - 1)))

        labels_k, targets_k = tile(labels), targets.t().reshape(-1)
        budget_k = tile(budget) if budget.shape[0] == n else budget

        def objective(adv_images):
            return minimum_margin(self.get_logits(adv_images), labels_k, targets_k, self.kappa)

        adv = ascend(objective, tile(images), tile(start), budget_k, self.alpha, self.steps)
        with torch.no_grad():
            final = self.get_logits(adv)
        margin = final.gather(1, targets_k[:, None])[:, 0] - final.gather(1, labels_k[:, None])[:, 0]
        best = margin.view(k, n).argmax(dim=0)
        return adv.view(k, n, *images.shape[1:])[best, torch.arange(n, device=images.device)]
