"""The evaluation suite: attack names, accuracies against independent computations, resumption, AutoAttack."""

import json

import pytest
import torch
import torchattacks

import benchmarks.evaluate as evaluate
from benchmarks import UsageError
from benchmarks.evaluate import ResultStore, attack_label, build_attack, check_attacks, evaluate_model

CONFIG = {"label": "tiny", "dataset": "cifar10"}


@pytest.fixture
def images(cifar_test):
    return cifar_test[0][:48], cifar_test[1][:48]


def test_suites_hold_the_papers_attacks():
    assert evaluate.SUITES["table1"] == ("natural", "pgd-20", "mma-20", "aa")
    paper = evaluate.SUITES["paper"]
    for name in ["adaptive-pgd-20", "adaptive-pgd-100", "adaptive-mma-20", "adaptive-mma-100", "pgd-10", "pgd-100",
                 "cifar10c-1", "trust"]:
        assert name in paper
    for suite in evaluate.SUITES.values():
        check_attacks(suite)


@pytest.mark.parametrize("name", ["pgd", "pgd-0", "fgsm", "cifar10c-6", "AA", "adaptive-aa-20"])
def test_unknown_attack_names_are_refused(name):
    with pytest.raises(ValueError, match="attacks"):
        check_attacks(["natural", name])


def test_labels():
    assert [attack_label(n) for n in ("natural", "pgd-20", "aa", "adaptive-mma-40", "cifar10c-1")] == [
        "Natural", "PGD-20", "AA", "Adaptive MMA-40", "CIFAR-10-C (severity 1)"]


def test_attacks_are_the_reference_implementations(tiny_model, monkeypatch):
    pgd = build_attack("pgd-7", tiny_model, torch.device("cpu"), 0)
    assert type(pgd) is torchattacks.PGD and pgd.steps == 7 and pgd.eps == 8 / 255 and pgd.alpha == 2 / 255
    adaptive = build_attack("adaptive-pgd-40", tiny_model, torch.device("cpu"), 0)
    assert (adaptive.eps, adaptive.eps_low, adaptive.steps) == (12 / 255, 8 / 255, 40)  # paper Table 2
    mma = build_attack("adaptive-mma-60", tiny_model, torch.device("cpu"), 0)
    assert (type(mma).__name__, mma.eps, mma.eps_low, mma.steps, mma.k) == ("MMA", 12 / 255, 8 / 255, 60, 3)

    built = {}

    class SpyAutoAttack:  # records how the reference AutoAttack is built and called
        def __init__(self, model, **kwargs):
            built.update(kwargs)

        def run_standard_evaluation(self, x, y, batch_size):
            built["called"] = batch_size
            return x + 0, y

    import pyautoattack

    monkeypatch.setattr(pyautoattack, "AutoAttack", SpyAutoAttack)
    aa = build_attack("aa", tiny_model, torch.device("cpu"), 3)
    aa(torch.zeros(5, 3, 32, 32), torch.zeros(5, dtype=torch.long))
    assert built == {"norm": "Linf", "eps": 8 / 255, "version": "standard", "device": torch.device("cpu"), "seed": 3,
                     "called": 5}


def test_accuracies_match_independent_computations(tiny_model, images, tmp_path):
    x, y = images
    data = evaluate_model(tiny_model, x, y, str(tmp_path), ["natural", "pgd-3"], CONFIG, batch_size=16,
                          progress=False)
    with torch.no_grad():
        natural = (tiny_model(x).argmax(1) == y).float().mean().item()
    assert data["results"]["natural"]["accuracy"] == pytest.approx(natural)
    correct = 0
    for index, start in enumerate(range(0, 48, 16)):  # the same per-batch seeds, an independent PGD
        torch.manual_seed(evaluate._seed(0, "pgd-3", index))
        attack = torchattacks.PGD(tiny_model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)
        adv = attack(x[start:start + 16], y[start:start + 16])
        assert (adv - x[start:start + 16]).abs().max() <= 8 / 255 + 1e-6
        correct += int((tiny_model(adv).argmax(1) == y[start:start + 16]).sum())
    assert data["results"]["pgd-3"]["correct"] == correct
    assert data["results"]["pgd-3"]["accuracy"] <= data["results"]["natural"]["accuracy"]
    stored = json.loads((tmp_path / "eval.json").read_text())
    assert stored["results"] == data["results"] and stored["partial"] == {}


class Killed(Exception):
    pass


def test_an_interrupted_attack_resumes_at_its_first_unfinished_batch(tiny_model, images, tmp_path, monkeypatch):
    x, y = images
    reference = evaluate_model(tiny_model, x, y, str(tmp_path / "whole"), ["natural", "pgd-2"], CONFIG,
                               batch_size=8, progress=False)["results"]
    real_build = evaluate.build_attack
    calls = []

    def build(name, model, device, seed, kill_after=None):
        attack = real_build(name, model, device, seed)

        def counted(xb, yb):
            calls.append(name)
            if kill_after is not None and calls.count("pgd-2") > kill_after:
                raise Killed()
            return attack(xb, yb)
        return counted

    monkeypatch.setattr(evaluate, "build_attack", lambda *a: build(*a, kill_after=3))
    with pytest.raises(Killed):
        evaluate_model(tiny_model, x, y, str(tmp_path / "cut"), ["natural", "pgd-2"], CONFIG, batch_size=8,
                       progress=False)
    stored = json.loads((tmp_path / "cut" / "eval.json").read_text())
    assert "natural" in stored["results"] and "pgd-2" not in stored["results"]
    assert stored["partial"]["pgd-2"]["batches_done"] == 3  # killed in its 4th of 6 batches

    calls.clear()
    monkeypatch.setattr(evaluate, "build_attack", lambda *a: build(*a))
    resumed = evaluate_model(tiny_model, x, y, str(tmp_path / "cut"), ["natural", "pgd-2"], CONFIG, batch_size=8,
                             progress=False)["results"]
    assert calls == ["pgd-2"] * 3  # only the three missing batches ran; natural was not redone
    for name in ("natural", "pgd-2"):
        assert resumed[name]["correct"] == reference[name]["correct"]

    calls.clear()
    evaluate_model(tiny_model, x, y, str(tmp_path / "cut"), ["natural", "pgd-2"], CONFIG, batch_size=8,
                   progress=False)
    assert calls == []  # finished attacks are never redone


def test_a_store_of_another_evaluation_is_refused(tmp_path):
    ResultStore(str(tmp_path / "eval.json"), {"n": 10}).save_result("natural", {"accuracy": 1.0})
    with pytest.raises(UsageError, match="another evaluation"):
        ResultStore(str(tmp_path / "eval.json"), {"n": 20})


def test_autoattack_through_pyautoattack_breaks_a_standard_model(resnet18, cifar_test, tmp_path):
    """The reference AutoAttack on the non-robust pretrained ResNet-18: every image falls, within eps."""
    x, y = cifar_test[0][:8], cifar_test[1][:8]
    attack = build_attack("aa", resnet18, torch.device("cpu"), 0)
    adv = attack(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert (resnet18(adv).argmax(1) == y).sum() == 0
