"""Inner-maximisation objectives (what the attacks ascend)."""

import torch
import torch.nn.functional as F


def cross_entropy(logits, labels):
    """Mean cross-entropy, as ``torch.nn.CrossEntropyLoss()`` in torchattacks.PGD (AT, MART, PART, PART-M)."""
    return F.cross_entropy(logits, labels)


def trades_kl(logits_adv, probs_natural):
    """TRADES' inner objective: KL(p_natural || p_adv) summed over the batch (``KLDivLoss(size_average=False)``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), probs_natural, reduction="sum")


def top_wrong_classes(logits, labels, k):
    """MMA's targets: the ``k`` wrong classes with the largest logits, (N, k), most likely first."""
    if k > logits.shape[1] - 1:
        raise ValueError(f"k must be in [1, num_classes - 1] = [1, {logits.shape[1] - 1}], got {k}")
    return logits.scatter(1, labels[:, None], float("-inf")).topk(k, dim=1).indices


def minimum_margin(logits, labels, targets, kappa):
    """MMA's objective (Gao et al., ICML 2022): ``-sum max(z_y - z_t + kappa, 0)`` for one target class t per image.

    Ascending it pushes the target logit above the true one until the margin reaches ``kappa``.
    """
    true = logits.gather(1, labels[:, None])[:, 0]
    target = logits.gather(1, targets[:, None])[:, 0]
    return -torch.clamp(true - target + kappa, min=0).sum()


# Outer (training) objectives. The per-pixel budget enters only through the inner maximisation above, never here.


def trades_loss(logits_natural, logits_adv, labels, beta=6.0):
    """TRADES (Zhang et al., ICML 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x_adv))``, the KL averaged over the batch."""
    natural = F.cross_entropy(logits_natural, labels)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="sum")
    return natural + beta * robust / logits_natural.shape[0]


def mart_loss(logits_natural, logits_adv, labels, beta=6.0):
    """MART (Wang et al., ICLR 2020): boosted CE on x_adv + ``beta * KL(p(x) || p(x_adv)) * (1 - p_y(x))``.

    The boosted CE adds ``-log(1 - max_{k != y} p_k(x_adv))``; constants (1.0001, 1e-12, 1.0000001) as in the
    authors' code.
    """
    probs_adv = F.softmax(logits_adv, dim=1)
    top2 = probs_adv.argsort(dim=1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == labels, top2[:, -2], top2[:, -1])
    boosted_ce = F.cross_entropy(logits_adv, labels) + F.nll_loss(torch.log(1.0001 - probs_adv + 1e-12), runner_up)
    probs_natural = F.softmax(logits_natural, dim=1)
    true_prob = probs_natural.gather(1, labels[:, None])[:, 0]
    kl = F.kl_div(torch.log(probs_adv + 1e-12), probs_natural, reduction="none").sum(dim=1)
    return boosted_ce + beta * (kl * (1.0000001 - true_prob)).mean()
