"""Auto-PGD (Croce & Hein, ICML 2020) for an L-inf budget of its own per entry: the ascent core of :class:`MMAEval`.

One run of APGD, batched and on the device, exactly as AutoAttack's ``APGDAttack.attack_single_run`` (norm "Linf",
``eot_iter=1``) does it, except that the budget ``eps`` may be a tensor broadcastable to the images (a scalar eps
is the special case; with it the arithmetic, and so the result, is AutoAttack's):

- start: ``x + budget * t / max|t|`` with ``t ~ U(-1, 1)`` per entry, normalised per image, clamped to [0, 1];
- step size ``2 * budget`` per entry, times a per-image factor halved at checkpoints;
- step: ``z = P(x_k + eta * sign(grad))``, then ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with
  momentum ``a = 0.75`` (``1`` at the first step), P the projection onto the per-entry box and [0, 1];
- checkpoints after ``max(int(0.22 n), 1)`` steps, the interval shrinking by ``max(int(0.03 n), 1)`` down to
  ``max(int(0.06 n), 1)`` (AutoAttack's integer form of the p_j schedule); at a checkpoint an image halves its step
  and restarts from its best point when the loss rose in at most ``rho * interval`` of the interval's steps
  (``rho = 0.75``), or when its step was not halved at the last checkpoint and its best loss has not improved since;
- kept per image: the point of highest loss (``x_best``) and the latest iterate at which the model misclassified
  (``x_best_adv``, the evaluation's result).

Everything stays on the device: no ``.item()``, no host copies, no per-image Python loop. The loss is any callable
returning one value per image, e.g. cross-entropy with ``reduction="none"`` or the minimum margin of MMA.
"""

from collections import namedtuple

import torch

from .checks import check_generator, check_number, check_steps

#: Momentum of the update (the paper's alpha) and the oscillation threshold rho, as in AutoAttack.
MOMENTUM = 0.75
RHO = 0.75

APGDResult = namedtuple("APGDResult", ["x_best", "loss_best", "x_best_adv", "robust"])
APGDResult.__doc__ = """One APGD run.

x_best: (B, C, H, W) the point of highest loss per image; loss_best: (B,) its loss;
x_best_adv: (B, C, H, W) the latest iterate the model misclassified (the start where it never did);
robust: (B,) bool, True where the model classified every iterate (start included) correctly.
"""


def checkpoints(steps):
    """The iterations (0-based, after which) APGD checks its step size, and the interval length of each check.

    AutoAttack's integer schedule: first interval ``max(int(0.22 n), 1)``, each next one ``max(int(0.03 n), 1)``
    shorter, never under ``max(int(0.06 n), 1)``. E.g. n = 100: checks after iterations 21, 40, 56, 69, 79, 86, 92,
    98; n = 20 (MM3): after 3, 6, 8, then after every iteration.

    :return: list of ``(iteration, interval)``.
    """
    steps = check_steps("steps", steps)
    first, decrease, minimum = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, k = [], first
    i = k - 1
    while i < steps:
        out.append((i, k))
        k = max(k - decrease, minimum)
        i += k
    return out


def _as_budget(budget, images, check=True):
    budget = torch.as_tensor(budget, dtype=images.dtype, device=images.device)
    try:
        shape = torch.broadcast_shapes(budget.shape, images.shape)
    except RuntimeError:
        shape = None
    if shape != images.shape:
        raise ValueError(f"budget must be a number or a tensor broadcastable to the images {tuple(images.shape)}, "
                         f"got shape {tuple(budget.shape)}")
    if check and not bool(torch.isfinite(budget).all() & (budget >= 0).all()):  # one host sync, before the loop
        raise ValueError("budget must be finite and >= 0 everywhere")
    return budget


def random_start(images, budget, generator=None):
    """AutoAttack's L-inf start: ``clamp(x + budget * t / (max|t| + 1e-12), 0, 1)``, ``t ~ U(-1, 1)`` per entry.

    ``t`` is drawn on the CPU and moved, as AutoAttack does, so a CPU ``generator`` seeded with s gives AutoAttack's
    start under ``torch.manual_seed(s)`` on any device. ``generator=None`` draws from the global CPU generator.
    """
    budget = _as_budget(budget, images, check=False)
    t = (2 * torch.rand(images.shape, generator=generator) - 1).to(images.device, images.dtype)
    scale = t.abs().view(t.shape[0], -1).max(1)[0]
    t = t / (scale.view(-1, *([1] * (images.dim() - 1))) + 1e-12)
    return (images + budget.expand_as(images) * t).clamp(0.0, 1.0)


def auto_pgd(logits_fn, loss_fn, images, labels, budget, steps, start=None, generator=None, rho=RHO,
             momentum=MOMENTUM):
    """One run of L-inf APGD with a per-entry budget, ascending ``loss_fn``.

    :param logits_fn: callable mapping images (B, C, H, W) in [0, 1] to logits (B, num_classes).
    :param loss_fn: callable ``(logits, labels) -> (B,)``, one loss per image to maximise; a targeted loss keeps its
        targets in a closure (e.g. ``functools.partial``).
    :param images: natural images (B, C, H, W) in [0, 1], the centres of the boxes.
    :param labels: (B,) true labels: an iterate counts as adversarial where the argmax differs from them.
    :param budget: per-entry half-width, a number or a tensor broadcastable to the images, >= 0.
    :param steps: number of iterations (AutoAttack's ``n_iter``).
    :param start: starting point, projected onto the box; None draws :func:`random_start` from ``generator``.
    :param generator: CPU ``torch.Generator`` for the start (None: the global one).
    :param rho: oscillation threshold of the step-size rule. (Default: 0.75)
    :param momentum: weight ``a`` of the new step in the momentum update. (Default: 0.75)
    :return: :data:`APGDResult` ``(x_best, loss_best, x_best_adv, robust)``, detached.
    """
    steps = check_steps("steps", steps)
    check_generator("generator", generator)
    rho = check_number("rho", rho)
    momentum = check_number("momentum", momentum)
    if momentum > 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    images = images.detach()
    budget = _as_budget(budget, images)
    n = images.shape[0]
    view = (-1,) + (1,) * (images.dim() - 1)
    lower = (images - budget).clamp(min=0.0)  # the box [x - b, x + b] intersected with [0, 1]
    upper = (images + budget).clamp(max=1.0)

    def project(z):
        return torch.min(torch.max(z, lower), upper)

    def evaluate(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = logits_fn(x)
            loss = loss_fn(logits, labels)
            if loss.shape != (n,):
                raise ValueError(f"loss_fn must return one loss per image, shape ({n},), got {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return logits.detach(), loss.detach(), grad.detach()

    x_adv = random_start(images, budget, generator) if start is None else project(start.detach())
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    logits, loss, grad = evaluate(x_adv)
    grad_best = grad.clone()
    robust = logits.argmax(1) == labels
    loss_best = loss.clone()

    two_budget = 2 * budget
    factor = torch.ones((n,) + (1,) * (images.dim() - 1), dtype=images.dtype, device=images.device)  # 1, 1/2, ...
    # AutoAttack's loss history: row i holds the loss after iteration i. Its first check compares row 0 with
    # row -1, the last row, still 0 then; we keep that (a quirk, but the reference behaviour).
    loss_steps = torch.zeros((steps, n), dtype=loss.dtype, device=images.device)
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best, dtype=torch.bool)
    schedule = dict(checkpoints(steps))

    x_adv_old = x_adv.clone()
    for i in range(steps):
        with torch.no_grad():
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv
            a = momentum if i > 0 else 1.0
            z = project(x_adv + (two_budget * factor) * torch.sign(grad))
            x_adv = project(x_adv + (z - x_adv) * a + grad2 * (1 - a))

        logits, loss, grad = evaluate(x_adv)

        with torch.no_grad():
            fooled = logits.argmax(1) != labels
            robust = robust & ~fooled
            x_best_adv = torch.where(fooled.view(view), x_adv, x_best_adv)
            loss_steps[i] = loss
            better = loss > loss_best
            x_best = torch.where(better.view(view), x_adv, x_best)
            grad_best = torch.where(better.view(view), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)

            if i in schedule:
                k = schedule[i]
                increases = torch.zeros_like(loss_best)
                for c in range(k):
                    increases += (loss_steps[i - c] > loss_steps[i - c - 1]).to(increases.dtype)
                oscillating = increases <= k * rho
                stalled = ~reduced_last_check & (loss_best_last_check >= loss_best)
                reduce = oscillating | stalled
                reduced_last_check = reduce
                loss_best_last_check = loss_best.clone()
                factor = torch.where(reduce.view(view), factor / 2.0, factor)
                x_adv = torch.where(reduce.view(view), x_best, x_adv)
                grad = torch.where(reduce.view(view), grad_best, grad)

    return APGDResult(x_best.detach(), loss_best, x_best_adv.detach(), robust)
