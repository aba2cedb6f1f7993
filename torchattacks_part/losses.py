"""Inner-maximisation objectives (what the attacks ascend)."""

import torch
import torch.nn.functional as F


def cross_entropy(logits, labels):
    """Mean cross-entropy, as ``torch.nn.CrossEntropyLoss()`` in torchattacks.PGD (AT, MART, PART, PART-M)."""
    return F.cross_entropy(logits, labels)


def trades_kl(logits_adv, probs_natural):
    """TRADES' inner objective: KL(p_natural || p_adv) summed over the batch (``KLDivLoss(size_average=False)``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), probs_natural, reduction="sum")


def minimum_margin(logits, labels, targets, kappa):
    """MMA's objective (Gao et al., ICML 2022): ``-sum max(z_y - z_t + kappa, 0)`` for one target class t per image.

    Ascending it pushes the target logit above the true one until the margin reaches ``kappa``.
    """
    true = logits.gather(1, labels[:, None])[:, 0]
    target = logits.gather(1, targets[:, None])[:, 0]
    return -torch.clamp(true - target + kappa, min=0).sum()
