import torch
import torch.nn.functional as F

from .attack import PixelBudgetAttack
from .checks import check_choice
from .losses import cross_entropy, trades_kl
from .step import FirstMisclassified, ascend, gaussian_start, uniform_start

#: The paper's adaptive attack (Tables 2 and 3): Pixel-AG / MMA at test time with a larger budget.
ADAPTIVE_EPS = 12 / 255
ADAPTIVE_EPS_LOW = 8 / 255

LOSSES = ("ce", "kl")
STARTS = ("uniform", "gaussian")
KEEPS = ("last", "misclassified")


class PixelAG(PixelBudgetAttack):
    r"""
    Pixel-reweighted adversarial example generation (Pixel-AG) in the paper 'Improving Accuracy-robustness
    Trade-off via Pixel Reweighted Adversarial Training' [https://arxiv.org/abs/2406.00685] (ICML 2024).

    PGD whose budget is ``eps`` on the pixels the model's class activation map marks as important and ``eps_low``
    elsewhere: each step is a sign-gradient step, a projection of every entry onto its own box
    [-eps_i, eps_i] and a clamp to [0, 1]. With ``eps_low == eps`` it is exactly ``torchattacks.PGD``.

    Distance Measure : Linf (per entry)

    Arguments:
        model (nn.Module): model to attack.
        eps (float): budget of important pixels. (Default: 8/255)
        eps_low (float): budget of the other pixels, 0 <= eps_low <= eps. (Default: 7/255)
        alpha (float): step size. (Default: 2/255)
        steps (int): number of steps. (Default: 10)
        random_start (bool): start from a random point (see ``start``) rather than from the images. (Default: True)
        start (str): the random start: "uniform" in each entry's box (torchattacks.PGD's) or "gaussian",
            x + 0.001 N(0, 1) as TRADES and the official MART code do (from x itself the KL gradient is zero).
            (Default: None: "uniform" for loss "ce", "gaussian" for "kl")
        cam (str): CAM method, "gradcam", "xgradcam", "layercam" or another pytorch-grad-cam method.
            (Default: "gradcam")
        target_layer (nn.Module or str): CAM layer; None picks the last convolutional block. (Default: None)
        rule (str): "cam" (paper), "jet" (released code) or "random" (ablation). (Default: "cam")
        loss (str): "ce" (AT, MART, PART, PART-M) or "kl" (TRADES' inner maximisation, PART-T). (Default: "ce")
        keep (str): "last" returns the last iterate (torchattacks.PGD's convention, what training uses);
            "misclassified" returns, per image, the first iterate (the start included) that the model misclassifies,
            and the last iterate for the others, so an image counts as broken when ANY iterate breaks it, as in
            AutoAttack's APGD: the evaluation at full strength. The last iterate stays in ``last_iterate``.
            (Default: "last")
        full_eps_on (str): "important" (PART's allocation) or "background" (the inverse: ``eps`` off the CAM's
            important pixels, ``eps_low`` on them; see :meth:`background`). (Default: "important")

    Shape:
        - images: :math:`(N, C, H, W)` where `N = number of batches`, `C = number of channels`,
          `H = height` and `W = width`. It must have a range [0, 1].
        - labels: :math:`(N)` where each value :math:`y_i` is :math:`0 \leq y_i \leq` `number of labels`.
        - budget (optional): :math:`(N, 1 \text{ or } C, H, W)`, replaces the CAM.
        - output: :math:`(N, C, H, W)`.

    The CAM is computed on the clean images, for the predicted class, in eval mode. ``last_degenerate`` and
    ``last_important_fraction`` report, for the last call, how many maps were degenerate (given eps everywhere)
    and which fraction of entries kept the full eps.

    Examples::
        >>> attack = torchattacks_part.PixelAG(model, eps=8/255, eps_low=7/255, alpha=2/255, steps=10)
        >>> adv_images = attack(images, labels)
        >>> adaptive = torchattacks_part.PixelAG.adaptive(model, steps=20)  # paper Table 2
        >>> full = torchattacks_part.PixelAG(model, eps_low=8/255, steps=20, keep="misclassified")  # PGD-20, any iterate

    """

    def __init__(self, model, eps=8 / 255, eps_low=7 / 255, alpha=2 / 255, steps=10, random_start=True,
                 cam="gradcam", target_layer=None, rule="cam", loss="ce", start=None, keep="last",
                 full_eps_on="important"):
        check_choice("loss", loss, LOSSES)
        start = check_choice("start", start, STARTS) if start is not None else "gaussian" if loss == "kl" else "uniform"
        check_choice("keep", keep, KEEPS)
        super().__init__("PixelAG", model, eps, eps_low, alpha, steps, random_start, cam, target_layer, rule,
                         full_eps_on)
        self.loss, self.start, self.keep = loss, start, keep
        self.supported_mode = ["default", "targeted"] if loss == "ce" else ["default"]
        #: The last iterate of the last call (with ``keep="misclassified"``, which returns another point).
        self.last_iterate = None

    @classmethod
    def adaptive(cls, model, steps=20, **kwargs):
        """The paper's adaptive attack (Table 2): eps 12/255, eps_low 8/255, CAM of the attacked model."""
        return cls(model, eps=ADAPTIVE_EPS, eps_low=ADAPTIVE_EPS_LOW, steps=steps, **kwargs)

    @classmethod
    def background(cls, model, steps=20, **kwargs):
        """The adaptive attack inverted: 8/255 on the CAM's important pixels, 12/255 on the others.

        PART lowers the budget off the CAM during training; this asks whether that region became the weak spot.
        """
        return cls(model, eps=ADAPTIVE_EPS, eps_low=ADAPTIVE_EPS_LOW, steps=steps, full_eps_on="background",
                   **kwargs)

    def perturb(self, images, labels, budget):
        if self.loss == "kl":
            with torch.no_grad():
                probs_natural = F.softmax(self.get_logits(images), dim=1)

            def loss(logits):
                return trades_kl(logits, probs_natural)
        else:
            sign, target = 1.0, labels
            if self.targeted:
                sign, target = -1.0, self.get_target_label(images, labels)

            def loss(logits):
                return sign * cross_entropy(logits, target)

        start = images
        if self.random_start:
            start = gaussian_start(images) if self.start == "gaussian" else uniform_start(images, budget, self.eps)
        tracker = FirstMisclassified(labels) if self.keep == "misclassified" else None

        def objective(adv_images):
            logits = self.get_logits(adv_images)
            if tracker is not None:
                tracker.observe(adv_images, logits)
            return loss(logits)

        adv_images = ascend(objective, images, start, budget, self.alpha, self.steps)
        self.last_iterate = adv_images
        if tracker is None:
            return adv_images
        with torch.no_grad():
            tracker.observe(adv_images, self.get_logits(adv_images))
        return tracker.result(adv_images)
