r"""The five checks for obfuscated gradients of Athalye et al., as the PART paper's appendix H.3 reports them.

'Obfuscated Gradients Give a False Sense of Security: Circumventing Defenses to Adversarial Examples'
[https://arxiv.org/abs/1802.00420] (ICML 2018), section 3.1, lists behaviours that betray a defence whose robustness
comes from broken gradients rather than from the model. :func:`trust_checks` runs each one against a model on real
images; a "failed" check means the PGD accuracies reported for that model should not be trusted:

``one_step``         one-step attacks do not perform better than iterative ones: accuracy under FGSM (PGD-1: one
                     step of size eps from the clean image) must be >= accuracy under PGD-``steps``.
``transfer``         black-box attacks are weaker than white-box ones: PGD examples crafted on a ``surrogate`` model
                     and evaluated on the model must leave an accuracy >= the white-box PGD accuracy. "not run"
                     without a surrogate.
``unbounded``        unbounded attacks reach 100% success: PGD with eps = 1 must leave an accuracy
                     <= ``unbounded_tolerance``.
``random_sampling``  random sampling does not find adversarial examples where PGD failed: for every image PGD did not
                     break, ``samples`` points drawn uniformly in its L-inf eps-ball (clipped to [0, 1]) must all be
                     classified correctly.
``increasing_eps``   a larger distortion bound gives a stronger attack: PGD accuracy at eps, 2 eps, 4 eps and 8 eps
                     (8, 16, 32, 64 / 255 at the paper's eps; capped at 1) must not increase.

Every PGD runs ``torchattacks.PGD``'s arithmetic: ``steps`` steps, uniform random start, step size
:func:`step_size` (2/255 at the paper's eps = 8/255 and 20 steps). A white-box PGD is scored at full strength, as
the evaluation suite scores it: an image counts as broken when ANY iterate (the start included) is misclassified
(:class:`torchattacks_part.PixelAG` with a uniform budget and ``keep="misclassified"``, whose iterates are
``torchattacks.PGD``'s, tested). Scoring only the last iterate made ``random_sampling`` fail on models with tiny
margins: PGD's last iterate can end on the right side of a boundary that its own random start had crossed. The
transfer attack sends the surrogate's last iterate (``torchattacks.PGD`` itself). The one-step attack is
``torchattacks.FGSM``. The global torch seed is set to ``seed`` before each attack (and before the random sampling),
so a run is reproducible and each PGD accuracy equals that of ``torch.manual_seed(seed)`` followed by the same
``torchattacks.PGD`` over the same batches. The caller's random state is restored afterwards (``fork_rng``).

Random effects (random start, random sampling) may move an accuracy by an image or so: the comparisons of
``one_step``, ``transfer`` and ``increasing_eps`` allow a slack of ``max(1, floor(tolerance * N))`` images (one
image or the fraction ``tolerance``, whichever is larger); the comparisons count images, so no rounding enters.

Example::

    >>> results = trust_checks(model, images, labels, surrogate=other_model)
    >>> print(format_trust_markdown(results))
    >>> assert not failed_checks(results)
"""

import torch
import torch.nn as nn
import torchattacks
from tqdm.auto import tqdm

from torchattacks_part import PixelAG
from torchattacks_part.checks import check_images, check_labels, check_number, check_steps

__all__ = ["CHECKS", "STATUSES", "failed_checks", "format_trust_markdown", "step_size", "trust_checks"]

CHECKS = ("one_step", "transfer", "unbounded", "random_sampling", "increasing_eps")
STATUSES = ("passed", "failed", "not run")

#: The paper's PGD step size at eps = 8/255.
PAPER_ALPHA = 2 / 255
#: Multiples of eps of the ``increasing_eps`` check (8, 16, 32, 64 / 255 at eps = 8/255).
EPS_MULTIPLES = (1, 2, 4, 8)
#: The distortion bound of the ``unbounded`` check: the whole image range [0, 1].
UNBOUNDED_EPS = 1.0

_TITLES = {
    "one_step": "one-step attack not stronger than iterative",
    "transfer": "transfer attack weaker than white-box",
    "unbounded": "unbounded attack reaches 100% success",
    "random_sampling": "random sampling finds no adversarial example",
    "increasing_eps": "larger eps, stronger attack",
}


def step_size(eps, steps):
    """PGD step size: ``max(2/255, 2.5 * eps / steps)``.

    2/255 is the paper's step at eps = 8/255. ``2.5 * eps / steps`` is Madry et al.'s rule: the steps together can
    cross the ball 2.5 times over, so from any start PGD can reach the boundary and still move along it. A fixed
    2/255 would not do for large budgets: 20 steps of 2/255 move a pixel by at most 40/255, so "PGD with eps = 1"
    could not reach most of [0, 1] and the unbounded check would fail on every model; 2.5 * 1 / 20 = 0.125 can.
    """
    return max(PAPER_ALPHA, 2.5 * eps / steps)


def _device_of(module):
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _validate(model, images, labels, eps, steps, surrogate, samples, batch_size, device, seed, tolerance,
              unbounded_tolerance, progress, checks):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if surrogate is not None and not isinstance(surrogate, nn.Module):
        raise ValueError(f"surrogate must be None or a torch.nn.Module, got {type(surrogate).__name__}")
    check_images(images)
    check_labels(labels, images.shape[0])
    eps = check_number("eps", eps, inclusive=False)
    if eps > 1:
        raise ValueError(f"eps must be in (0, 1], got {eps!r}")
    check_steps("steps", steps)
    check_steps("samples", samples)
    check_steps("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    for name, value in (("tolerance", tolerance), ("unbounded_tolerance", unbounded_tolerance)):
        check_number(name, value)
        if value >= 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")
    if isinstance(checks, str) or not all(c in CHECKS for c in checks) or not checks:
        raise ValueError(f"checks must be a non-empty sequence of names from {list(CHECKS)}, got {checks!r}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must be None, a torch.device or a device string, got {device!r}") from error
    return eps, tuple(checks), device


def trust_checks(model, images, labels, eps=8 / 255, steps=20, surrogate=None, samples=100, batch_size=256,
                 device=None, seed=0, tolerance=0.005, progress=True, unbounded_tolerance=0.01, checks=CHECKS):
    r"""
    Run the obfuscated-gradient checks of Athalye et al. (ICML 2018) [https://arxiv.org/abs/1802.00420] on a model.

    Arguments:
        model (nn.Module): classifier taking images in [0, 1] and returning logits. Put in eval mode for the run
            (its mode is restored afterwards).
        images (torch.Tensor): real test images, on any device; each batch is moved to ``device``.
        labels (torch.Tensor): their labels.
        eps (float): L-inf budget of the attacks, in (0, 1]. (Default: 8/255)
        steps (int): PGD steps. (Default: 20)
        surrogate (nn.Module): source model of the transfer check (on its own device); None: "not run".
            (Default: None)
        samples (int): random points per image in the random sampling check. (Default: 100)
        batch_size (int): images per attack batch, and points per forward pass when sampling. (Default: 256)
        device (torch.device or str): where to attack; None: the device of the model's parameters. (Default: None)
        seed (int): torch seed set before each attack. (Default: 0)
        tolerance (float): slack of the comparisons, as a fraction of the images; the slack used is
            ``max(1, floor(tolerance * N))`` images. (Default: 0.005)
        progress (bool): show a tqdm progress bar over the attack batches. (Default: True)
        unbounded_tolerance (float): highest accuracy allowed under the unbounded attack. 0.01 rather than 0: it
            leaves room for an odd image in a thousand-image evaluation (a degenerate image, a flat region of a ReLU
            network) while a masked model, which keeps clean-level or chance-level accuracy, is far above it.
            (Default: 0.01)
        checks (sequence of str): which of :data:`CHECKS` to run; the others are reported "not run".
            (Default: all)

    Shape:
        - images: :math:`(N, C, H, W)`, range [0, 1].
        - labels: :math:`(N)`, class indices.
        - output: a list of one dict per check of :data:`CHECKS`, in that order: ``{"check": name, "status":
          "passed" | "failed" | "not run", "detail": one sentence with the figures, "values": {...}}``.
          Accuracies in ``values`` are fractions in [0, 1].

    Examples::
        >>> results = trust_checks(model, images, labels, eps=8/255, steps=20, surrogate=resnet)
        >>> failed_checks(results)
        []
    """
    eps, checks, device = _validate(model, images, labels, eps, steps, surrogate, samples, batch_size, device, seed,
                                    tolerance, unbounded_tolerance, progress, checks)
    if device is None:
        device = _device_of(model)
    n = images.shape[0]
    slack_images = max(1, int(tolerance * n + 1e-9))
    slack = slack_images / n
    run_transfer = "transfer" in checks and surrogate is not None
    eps_list = [min(UNBOUNDED_EPS, eps * m) for m in EPS_MULTIPLES]

    # The attack runs, each one pass over the batches: (key, attacked model, eps, steps) ; steps 0 = FGSM.
    runs = [("pgd", model, eps, steps)] if set(checks) - {"unbounded"} else []
    if "one_step" in checks:
        runs.append(("fgsm", model, eps, 0))
    if run_transfer:
        runs.append(("transfer", surrogate, eps, steps))
    if "unbounded" in checks:
        runs.append(("unbounded", model, UNBOUNDED_EPS, steps))
    if "increasing_eps" in checks:
        runs += [(f"eps{k}", model, e, steps) for k, e in enumerate(eps_list) if k > 0]
    n_batches = (n + batch_size - 1) // batch_size

    # Every submodule's own mode, restored one by one afterwards (train(flag) on the root would overwrite them all).
    modes = [(sub, sub.training) for m in (model, surrogate) if m is not None for sub in m.modules()]
    correct = {}
    found = None
    try:
        model.eval()
        if surrogate is not None:
            surrogate.eval()
        bar = tqdm(total=len(runs) * n_batches + ("random_sampling" in checks) * n_batches, desc="trust checks",
                   disable=not progress, leave=False)
        with bar, torch.random.fork_rng(devices=_cuda_indices(device, surrogate)):
            for key, attacked, run_eps, run_steps in runs:
                bar.set_postfix_str(key)
                correct[key] = _attack_correct(model, attacked, images, labels, run_eps, run_steps, batch_size,
                                               device, seed, bar)
            if "random_sampling" in checks:
                bar.set_postfix_str("random sampling")
                found = _random_sampling(model, images, labels, correct["pgd"], eps, samples, batch_size, device,
                                         seed, bar)
    finally:
        for sub, training in modes:
            sub.training = training

    count = {key: int(c.sum()) for key, c in correct.items()}  # compared in images: exact
    acc = {key: c / n for key, c in count.items()}
    name = f"PGD-{steps}"
    pct = _pct
    results = []
    for check in CHECKS:
        if check not in checks:
            results.append(_result(check, "not run", "Not requested (checks argument).", {}))
        elif check == "one_step":
            ok = count["fgsm"] >= count["pgd"] - slack_images
            results.append(_result(check, ok, (
                f"FGSM (one step of {_eps_str(eps)}) leaves {pct(acc['fgsm'])} accuracy, {name} {pct(acc['pgd'])}: "
                + ("the iterative attack is at least as strong." if ok else "the one-step attack is stronger.")),
                {"fgsm_accuracy": acc["fgsm"], "pgd_accuracy": acc["pgd"], "slack": slack}))
        elif check == "transfer":
            if surrogate is None:
                results.append(_result(check, "not run", (
                    f"No surrogate model given: nothing to transfer from (white-box {name} accuracy "
                    f"{pct(acc['pgd'])})."), {"pgd_accuracy": acc["pgd"]}))
                continue
            ok = count["transfer"] >= count["pgd"] - slack_images
            results.append(_result(check, ok, (
                f"{name} examples crafted on the surrogate leave {pct(acc['transfer'])} accuracy, white-box "
                f"{pct(acc['pgd'])}: " + ("the transfer attack is weaker." if ok else
                                         "the black-box attack beats the white-box one.")),
                {"transfer_accuracy": acc["transfer"], "pgd_accuracy": acc["pgd"], "slack": slack}))
        elif check == "unbounded":
            ok = acc["unbounded"] <= unbounded_tolerance
            results.append(_result(check, ok, (
                f"{name} with eps = 1 (step {step_size(UNBOUNDED_EPS, steps):.3g}) leaves {pct(acc['unbounded'])} "
                f"accuracy (allowed: {pct(unbounded_tolerance)})."),
                {"accuracy": acc["unbounded"], "eps": UNBOUNDED_EPS, "alpha": step_size(UNBOUNDED_EPS, steps),
                 "tolerance": unbounded_tolerance}))
        elif check == "random_sampling":
            robust = int(correct["pgd"].sum())
            hits = int((found > 0).sum())
            ok = hits == 0
            detail = (f"{samples} uniform points in the {_eps_str(eps)} ball of each of the {robust} images {name} "
                      f"did not break found an adversarial example for {hits} of them." if robust else
                      f"{name} broke every image: there is nothing for random sampling to find.")
            results.append(_result(check, ok, detail,
                {"pgd_robust": robust, "found": hits, "wrong_points": int(found.sum()), "samples": samples,
                 "eps": eps}))
        elif check == "increasing_eps":
            accs = [acc["pgd"]] + [acc[f"eps{k}"] for k in range(1, len(eps_list))]
            counts = [count["pgd"]] + [count[f"eps{k}"] for k in range(1, len(eps_list))]
            rises = [k for k in range(1, len(counts)) if counts[k] > counts[k - 1] + slack_images]
            ok = not rises
            figures = ", ".join(f"{_eps_str(e)}: {pct(a)}" for e, a in zip(eps_list, accs))
            results.append(_result(check, ok, (
                f"{name} accuracy by eps: {figures}; " + ("it never rises." if ok else
                                                         f"it rises at {_eps_str(eps_list[rises[0]])}.")),
                {"eps": eps_list, "accuracy": accs, "slack": slack}))
    return results


def _cuda_indices(device, surrogate):
    """The CUDA devices whose random state the run uses (restored afterwards by ``fork_rng``)."""
    devices = [device] + ([_device_of(surrogate)] if surrogate is not None else [])
    return sorted({d.index if d.index is not None else torch.cuda.current_device() for d in devices
                   if d.type == "cuda"})


def _result(check, status, detail, values):
    if isinstance(status, bool):
        status = "passed" if status else "failed"
    return {"check": check, "status": status, "detail": detail, "values": values}


def _pct(x):
    return f"{100 * x:.1f}%"


def _eps_str(eps):
    return f"{eps * 255:.4g}/255"


def _attack_correct(model, attacked, images, labels, eps, steps, batch_size, device, seed, bar):
    """Per-image bool (N,) on ``device``: ``model`` right on the attack's output. ``steps == 0`` means FGSM."""
    src = device if attacked is model else _device_of(attacked)
    if steps == 0:
        attack = torchattacks.FGSM(attacked, eps=eps)
    elif attacked is model:  # white box, at full strength: broken when any iterate is misclassified
        attack = PixelAG(model, eps=eps, eps_low=eps, alpha=step_size(eps, steps), steps=steps, keep="misclassified")
    else:  # transfer: the surrogate's last iterate, as a black-box attacker would send it
        attack = torchattacks.PGD(attacked, eps=eps, alpha=step_size(eps, steps), steps=steps, random_start=True)
    torch.manual_seed(seed)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(src)
        y = labels[start:start + batch_size].to(src)
        adv = attack(x, y)
        with torch.no_grad():
            out.append(model(adv.to(device)).argmax(1) == y.to(device))
        bar.update(1)
    return torch.cat(out)


def _random_sampling(model, images, labels, robust, eps, samples, batch_size, device, seed, bar):
    """Per-image count (N,) on ``device`` of the uniform points of its ball the model gets wrong.

    Only the ``robust`` images (those PGD did not break) are sampled; the others count 0. The robust images of a
    batch are tiled ``samples`` times and evaluated ``batch_size`` points at a time.
    """
    torch.manual_seed(seed)
    found = torch.zeros(robust.shape, dtype=torch.long, device=device)
    for start in range(0, images.shape[0], batch_size):
        keep = robust[start:start + batch_size]
        index = keep.nonzero().squeeze(1)
        if index.numel():
            x = images[start:start + batch_size].to(device)[index]
            y = labels[start:start + batch_size].to(device)[index]
            hit = torch.zeros(index.numel(), dtype=torch.long, device=device)
            total = index.numel() * samples
            for first in range(0, total, batch_size):
                point = torch.arange(first, min(first + batch_size, total), device=device) // samples
                noise = torch.empty((point.numel(),) + x.shape[1:], device=device, dtype=x.dtype).uniform_(-eps, eps)
                with torch.no_grad():
                    wrong = model((x[point] + noise).clamp(0, 1)).argmax(1) != y[point]
                hit.index_add_(0, point, wrong.long())
            found[start + index] = hit
        bar.update(1)
    return found


def failed_checks(results):
    """Names of the checks whose status is "failed", in the order of ``results``."""
    return [r["check"] for r in results if r["status"] == "failed"]


def format_trust_markdown(results):
    """A markdown table of :func:`trust_checks`' results; a failed check reads ``**FAILED**``."""
    shown = {"passed": "passed", "failed": "**FAILED**", "not run": "not run"}
    lines = ["| check | status | detail |", "|---|---|---|"]
    for r in results:
        title = _TITLES.get(r["check"], r["check"])
        detail = r["detail"].replace("|", "\\|")
        lines.append(f"| {r['check']} ({title}) | {shown.get(r['status'], r['status'])} | {detail} |")
    failed = failed_checks(results)
    if failed:
        lines += ["", f"**{len(failed)} check(s) FAILED: {', '.join(failed)}.** The PGD accuracies of this model "
                      "may come from obfuscated gradients."]
    return "\n".join(lines) + "\n"
