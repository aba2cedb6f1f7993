"""The obfuscated-gradient checks (benchmarks.trust) on real CIFAR-10 images.

An honest model (the pretrained ResNet-18) passes them, and its figures match independent torchattacks runs.
Deliberately gradient-masking wrappers of the same network fail the checks that expose them:

* ``Quantised``: the input is quantised outside autograd (shattered gradients: the loss gradient with respect to the
  input is exactly zero). PGD and FGSM cannot move, so the white-box accuracy stays near the clean one, but PGD
  examples transferred from the unmasked network break it (transfer) and eps = 1 leaves it far above 0% (unbounded:
  PGD stays at its random start). FGSM does not move either, so one_step passes.
* ``OffGrid``: the exact gradient on 8-bit images (the 256-level grid real images lie on), none off it. FGSM steps
  from the clean image with the true gradient and breaks most images; PGD's random start leaves the grid and then
  cannot move, so the one-step attack beats the iterative one (one_step).
* ``Reversed``: the backward pass returns the negated gradient (a misleading gradient), so PGD climbs towards more
  confidence and breaks nothing, while uniform noise still breaks the network's noise-fragile images
  (random_sampling). At eps = 16/255: at 8/255 the standard ResNet-18 is robust to uniform noise on all but about one
  image in sixteen, too few for a reliable test. (Quantised fails random_sampling too, but more weakly: its PGD
  keeps the random start, which already removes the noise-fragile images.)
"""

import pytest
import torch
import torch.nn as nn
import torchattacks

from torchattacks_part import PixelAG

from benchmarks.models import TinyCNN
from benchmarks.trust import CHECKS, failed_checks, format_trust_markdown, step_size, trust_checks

STEPS = 5  # PGD-5 instead of the paper's PGD-20 keeps this file fast on a CPU; the code path is the same.


def _zero_grad_link(x):
    """A (N, 1) zero that keeps the logits in x's autograd graph, so torchattacks gets a gradient (all zeros)."""
    return 0 * x.flatten(1)[:, :1]


class Quantised(nn.Module):
    """Input quantisation to ``levels`` levels computed outside autograd: a zero input gradient everywhere."""

    def __init__(self, base, levels=16):
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x):
        with torch.no_grad():
            logits = self.base(torch.round(x * self.levels) / self.levels)
        return logits + _zero_grad_link(x)


class OffGrid(nn.Module):
    """The base model's gradient on images whose every value is a multiple of 1/255, a zero gradient elsewhere."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        on_grid = (x * 255 - torch.round(x * 255)).abs().flatten(1).amax(1) < 1e-3
        with torch.no_grad():
            logits = self.base(x)
        logits = logits + _zero_grad_link(x)
        if x.requires_grad and bool(on_grid.any()):
            logits = torch.where(on_grid[:, None], self.base(x), logits)
        return logits


class _Negate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Reversed(nn.Module):
    """The base model's logits, with the input gradient negated."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(_Negate.apply(x))


def _by_name(results):
    assert [r["check"] for r in results] == list(CHECKS)
    return {r["check"]: r for r in results}


def _accuracy(model, images, labels):
    with torch.no_grad():
        return int((model(images).argmax(1) == labels).sum()) / labels.numel()


@pytest.fixture(scope="module")
def honest(resnet18, cifar_batch):
    """All checks on the pretrained ResNet-18, 32 images, PGD-5; a random-init TinyCNN is the surrogate."""
    torch.manual_seed(1)
    surrogate = TinyCNN().eval()
    images, labels = cifar_batch
    results = trust_checks(resnet18, images, labels, steps=STEPS, surrogate=surrogate, batch_size=16,
                           progress=False)
    return _by_name(results), surrogate


def test_honest_model_passes_every_check(honest):
    results, _ = honest
    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(CHECKS, "passed")
    assert results["unbounded"]["values"]["accuracy"] == 0.0
    assert results["random_sampling"]["values"]["pgd_robust"] == 0  # PGD broke every image: nothing to sample
    assert results["unbounded"]["values"]["alpha"] == pytest.approx(2.5 / STEPS)  # can cross [0, 1] in STEPS steps
    increasing = results["increasing_eps"]["values"]
    assert increasing["eps"] == pytest.approx([8 / 255, 16 / 255, 32 / 255, 64 / 255])
    assert all(b <= a for a, b in zip(increasing["accuracy"], increasing["accuracy"][1:]))
    assert failed_checks(list(results.values())) == []
    table = format_trust_markdown(list(results.values()))
    assert "FAILED" not in table and table.count("| passed |") == len(CHECKS)


def test_honest_figures_match_independent_torchattacks_runs(honest, resnet18, cifar_batch):
    results, surrogate = honest
    images, labels = cifar_batch
    # The same batches (16), the same seed before each attack: the same random starts.
    torch.manual_seed(0)
    fgsm = torch.cat([torchattacks.FGSM(resnet18, eps=8 / 255)(images[i:i + 16], labels[i:i + 16])
                      for i in (0, 16)])
    assert results["one_step"]["values"]["fgsm_accuracy"] == _accuracy(resnet18, fgsm, labels)
    assert 0 < results["one_step"]["values"]["fgsm_accuracy"] < 0.5  # a real, non-trivial figure

    torch.manual_seed(0)
    pgd = torchattacks.PGD(surrogate, eps=8 / 255, alpha=step_size(8 / 255, STEPS), steps=STEPS, random_start=True)
    transferred = torch.cat([pgd(images[i:i + 16], labels[i:i + 16]) for i in (0, 16)])
    transfer = results["transfer"]["values"]
    assert transfer["transfer_accuracy"] == _accuracy(resnet18, transferred, labels)
    assert transfer["transfer_accuracy"] > 0.8 and transfer["pgd_accuracy"] == 0.0  # both reported
    assert "surrogate" in results["transfer"]["detail"]


def test_random_sampling_passes_where_pgd_fails_and_pgd_matches_torchattacks(resnet18, cifar_batch):
    images, labels = cifar_batch
    eps = 1 / 255  # small enough that PGD leaves about half the images: the check has something to sample
    results = _by_name(trust_checks(resnet18, images, labels, eps=eps, steps=STEPS, samples=20, batch_size=64,
                                    checks=("random_sampling",), progress=False))
    torch.manual_seed(0)
    attack = PixelAG(resnet18, eps=eps, eps_low=eps, alpha=step_size(eps, STEPS), steps=STEPS, keep="misclassified")
    adv = attack(images, labels)
    torch.manual_seed(0)
    last = torchattacks.PGD(resnet18, eps=eps, alpha=step_size(eps, STEPS), steps=STEPS)(images, labels)
    assert torch.equal(attack.last_iterate, last)  # the iterates are torchattacks.PGD's
    with torch.no_grad():
        robust = int((resnet18(adv).argmax(1) == labels).sum())
        robust_last = int((resnet18(last).argmax(1) == labels).sum())
    sampling = results["random_sampling"]
    # Scored at full strength: an image any iterate broke is not sampled (never more than the last iterate leaves).
    assert sampling["values"]["pgd_robust"] == robust <= robust_last and 5 <= robust <= 27
    assert sampling["status"] == "passed" and sampling["values"]["found"] == 0
    assert {r["status"] for name, r in results.items() if name != "random_sampling"} == {"not run"}


def test_quantised_model_fails_transfer_and_unbounded(resnet18, cifar_batch):
    images, labels = cifar_batch
    masked = Quantised(resnet18).eval()
    raw = trust_checks(masked, images[:16], labels[:16], steps=STEPS, surrogate=resnet18, samples=10,
                       progress=False)
    results = _by_name(raw)
    assert {"transfer", "unbounded"} <= set(failed_checks(raw))
    assert results["one_step"]["status"] == "passed"  # neither FGSM nor PGD can move: no one-step advantage
    transfer = results["transfer"]["values"]
    assert transfer["pgd_accuracy"] >= 0.8 and transfer["transfer_accuracy"] <= 0.1
    assert results["unbounded"]["values"]["accuracy"] > 0.05
    table = format_trust_markdown(raw)
    for name in ("transfer", "unbounded"):
        line = next(row for row in table.splitlines() if row.startswith(f"| {name} "))
        assert "**FAILED**" in line
    assert "check(s) FAILED" in table
    assert not resnet18.training  # the fixture's mode is left alone


def test_reversed_gradient_model_fails_random_sampling(resnet18, cifar_batch):
    images, labels = cifar_batch
    masked = Reversed(resnet18).eval()
    raw = trust_checks(masked, images[:16], labels[:16], eps=16 / 255, steps=STEPS, samples=25,
                       checks=("random_sampling",), progress=False)
    sampling = _by_name(raw)["random_sampling"]
    assert sampling["status"] == "failed" and failed_checks(raw) == ["random_sampling"]
    # PGD, led away, breaks almost nothing: only its random start (scored too, at full strength) breaks one or two.
    assert sampling["values"]["pgd_robust"] >= 13
    assert sampling["values"]["found"] >= 3  # 6 or 7 of 16 here, whatever the seed
    assert "**FAILED**" in format_trust_markdown(raw)


def test_off_grid_model_fails_one_step(resnet18, cifar_batch):
    images, labels = cifar_batch
    masked = OffGrid(resnet18).eval()
    raw = trust_checks(masked, images[:16], labels[:16], steps=STEPS, checks=("one_step",), progress=False)
    one_step = _by_name(raw)["one_step"]
    assert one_step["status"] == "failed" and failed_checks(raw) == ["one_step"]
    assert one_step["values"]["fgsm_accuracy"] + 0.5 < one_step["values"]["pgd_accuracy"]
    assert "**FAILED**" in format_trust_markdown(raw) and "one-step attack is stronger" in one_step["detail"]


def test_transfer_not_run_without_surrogate(tiny_model, cifar_batch):
    images, labels = cifar_batch
    torch.manual_seed(123)
    state = torch.get_rng_state()
    results = _by_name(trust_checks(tiny_model, images[:8], labels[:8], steps=2, checks=("transfer",),
                                    progress=False))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left as it was
    transfer = results["transfer"]
    assert transfer["status"] == "not run" and "surrogate" in transfer["detail"].lower()
    assert failed_checks(list(results.values())) == []
    assert "| not run |" in format_trust_markdown(list(results.values()))


@pytest.mark.parametrize("kwargs, name", [
    ({"eps": 0}, "eps"), ({"eps": 1.5}, "eps"), ({"steps": 0}, "steps"), ({"samples": 2.5}, "samples"),
    ({"batch_size": 0}, "batch_size"), ({"tolerance": -0.1}, "tolerance"), ({"tolerance": 1}, "tolerance"),
    ({"unbounded_tolerance": 2}, "unbounded_tolerance"), ({"seed": "0"}, "seed"), ({"progress": 1}, "progress"),
    ({"checks": ("one_step", "gradient")}, "checks"), ({"checks": "one_step"}, "checks"),
    ({"surrogate": "resnet"}, "surrogate"), ({"device": "nonsense"}, "device"),
])
def test_bad_parameters_raise_naming_them(tiny_model, cifar_batch, kwargs, name):
    images, labels = cifar_batch
    with pytest.raises(ValueError, match=name):
        trust_checks(tiny_model, images, labels, **{"progress": False, **kwargs})


def test_bad_inputs_raise(tiny_model, cifar_batch):
    images, labels = cifar_batch
    with pytest.raises(ValueError, match="images"):
        trust_checks(tiny_model, images * 2, labels, progress=False)
    with pytest.raises(ValueError, match="labels"):
        trust_checks(tiny_model, images, labels[:4], progress=False)
    with pytest.raises(ValueError, match="model"):
        trust_checks(lambda x: x, images, labels, progress=False)
