"""The evaluation suite: attack names, accuracies against independent computations, resumption, AutoAttack."""

import json

import pytest
import torch
import torchattacks

import benchmarks.evaluate as evaluate
from benchmarks import UsageError
from benchmarks import outcomes
from benchmarks.evaluate import ResultStore, attack_label, build_attack, check_attacks, evaluate_model
from benchmarks.fingerprint import weights_digest
from benchmarks.models import TinyCNN

CONFIG = {"label": "tiny", "dataset": "cifar10"}


@pytest.fixture
def images(cifar_test):
    return cifar_test[0][:48], cifar_test[1][:48]


def test_suites_hold_the_papers_attacks():
    assert evaluate.SUITES["table1"] == ("natural", "pgd-20", "pgd-last-20", "mma-20", "mma-part-20", "aa")
    paper = evaluate.SUITES["paper"]
    for name in ["adaptive-pgd-20", "adaptive-pgd-100", "adaptive-mma-20", "adaptive-mma-100", "pgd-10", "pgd-100",
                 "background-pgd-20", "background-mma-20", "cifar10c-1", "trust"]:
        assert name in paper
    for suite in evaluate.SUITES.values():
        check_attacks(suite)


@pytest.mark.parametrize("name", ["pgd", "pgd-0", "fgsm", "cifar10c-6", "AA", "adaptive-aa-20", "pgd-last",
                                  "mma-part-0", "aa@0", "aa@x", "background-pgd", "pgd-20@", 3])
def test_unknown_attack_names_are_refused(name):
    with pytest.raises(ValueError, match="attacks"):
        check_attacks(["natural", name])


def test_one_attack_on_two_subsets_is_refused():
    with pytest.raises(ValueError, match="aa"):
        check_attacks(["aa@100", "aa"])


def test_labels_and_budgets():
    names = ("natural", "pgd-20", "pgd-last-20", "aa", "mma-20", "mma-part-20", "adaptive-mma-40",
             "background-pgd-20", "cifar10c-1")
    assert [attack_label(n) for n in names] == [
        "Natural", "PGD-20", "PGD-20 (last iterate)", "AA", "MMA-20", "MMA-20 (PART variant)", "Adaptive MMA-40",
        "Background PGD-20", "CIFAR-10-C (severity 1)"]
    assert [evaluate.max_eps(n) for n in names] == [0.0, 8 / 255, 8 / 255, 8 / 255, 8 / 255, 8 / 255, 12 / 255,
                                                    12 / 255, None]
    assert evaluate.parse_attack("aa@1000") == ("aa", 1000) and evaluate.parse_attack("pgd-20") == ("pgd-20", None)


def test_attacks_are_built_as_named(tiny_model, monkeypatch):
    import torchattacks_part as tp

    cpu = torch.device("cpu")
    pgd = build_attack("pgd-7", tiny_model, cpu, 0)
    assert type(pgd) is tp.PixelAG and (pgd.eps, pgd.eps_low, pgd.alpha, pgd.steps) == (8 / 255, 8 / 255, 2 / 255, 7)
    assert pgd.keep == "misclassified" and not pgd.uses_cam
    assert build_attack("pgd-last-7", tiny_model, cpu, 0).steps == 7  # the same run, scored on its last iterate
    adaptive = build_attack("adaptive-pgd-40", tiny_model, cpu, 0)
    assert (adaptive.eps, adaptive.eps_low, adaptive.steps, adaptive.keep) == (12 / 255, 8 / 255, 40, "misclassified")
    background = build_attack("background-pgd-20", tiny_model, cpu, 0)
    assert (background.eps, background.eps_low, background.full_eps_on) == (12 / 255, 8 / 255, "background")
    part = build_attack("mma-part-60", tiny_model, cpu, 0)
    assert (type(part).__name__, part.eps, part.eps_low, part.steps, part.k) == ("MMA", 8 / 255, None, 60, 3)
    mma = build_attack("mma-20", tiny_model, cpu, 0)
    assert (type(mma).__name__, mma.eps, mma.steps, mma.k) == ("MMAEval", 8 / 255, 20, 3)
    adaptive_mma = build_attack("adaptive-mma-20", tiny_model, cpu, 0)
    assert (type(adaptive_mma).__name__, adaptive_mma.eps, adaptive_mma.eps_low) == ("MMAEval", 12 / 255, 8 / 255)
    background_mma = build_attack("background-mma-20", tiny_model, cpu, 0)
    assert (background_mma.eps_low, background_mma.full_eps_on) == (8 / 255, "background")

    built = {}

    class SpyAutoAttack:  # records how the reference AutoAttack is built and called
        def __init__(self, model, **kwargs):
            built.update(kwargs)

        def run_standard_evaluation(self, x, y, batch_size):
            built["called"] = batch_size
            return x + 0, y

    import pyautoattack

    monkeypatch.setattr(pyautoattack, "AutoAttack", SpyAutoAttack)
    aa = build_attack("aa", tiny_model, cpu, 3)
    aa(torch.zeros(5, 3, 32, 32), torch.zeros(5, dtype=torch.long))
    assert built == {"norm": "Linf", "eps": 8 / 255, "version": "standard", "device": cpu, "seed": 3, "called": 5}


def _independent_pgd(model, x, y, steps, batch_size, key="pgd-3"):
    """Per batch, with the suite's seeds: survival at torchattacks.PGD's last iterate and at every iterate."""
    last, every = [], []
    for index, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        survived_all = torch.ones(len(xb), dtype=torch.bool)
        for k in range(steps + 1):  # PGD-k from the same seed visits the first k iterates of PGD-steps
            torch.manual_seed(evaluate._seed(0, key, index))
            if k == 0:
                adv = torch.clamp(xb + torch.empty_like(xb).uniform_(-8 / 255, 8 / 255), 0, 1)
            else:
                adv = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=k, random_start=True)(xb, yb)
                assert (adv - xb).abs().max() <= 8 / 255 + 1e-6
            with torch.no_grad():
                correct = model(adv).argmax(1) == yb
            survived_all &= correct
        last.append(correct)
        every.append(survived_all)
    return torch.cat(last), torch.cat(every)


def test_accuracies_and_outcomes_match_independent_computations(tiny_model, images, tmp_path):
    x, y = images
    data = evaluate_model(tiny_model, x, y, str(tmp_path), ["natural", "pgd-3"], CONFIG, batch_size=16,
                          progress=False)
    results = data["results"]
    with torch.no_grad():
        natural = tiny_model(x).argmax(1) == y
    assert results["natural"]["accuracy"] == pytest.approx(natural.float().mean().item())
    assert outcomes.unpack(results["natural"]["survived"]).tolist() == natural.tolist()
    last, every = _independent_pgd(tiny_model, x, y, 3, 16)
    # pgd-3 counts an image broken when ANY iterate breaks it; pgd-last-3 is torchattacks.PGD's last iterate.
    assert outcomes.unpack(results["pgd-last-3"]["survived"]).tolist() == last.tolist()
    assert outcomes.unpack(results["pgd-3"]["survived"]).tolist() == every.tolist()
    assert results["pgd-3"]["correct"] == int(every.sum()) <= results["pgd-last-3"]["correct"] == int(last.sum())
    assert results["pgd-3"]["accuracy"] <= results["natural"]["accuracy"]
    for result in results.values():
        assert result["n"] == 48 and result["images"] == data["results"]["natural"]["images"]
    assert results["pgd-3"]["max_eps"] == 8 / 255 and results["natural"]["max_eps"] == 0.0
    stored = json.loads((tmp_path / "eval.json").read_text())
    assert stored["results"] == data["results"] and stored["partial"] == {}
    assert stored["config"]["weights"] == weights_digest(tiny_model) and stored["config"]["batch_size"] == 16


def test_a_subset_is_a_prefix_of_the_evaluated_images(tiny_model, images, tmp_path):
    x, y = images
    results = evaluate_model(tiny_model, x, y, str(tmp_path), ["natural", "pgd-last-2@20"], CONFIG, batch_size=8,
                             progress=False)["results"]
    assert results["pgd-last-2"]["n"] == 20 and results["natural"]["n"] == 48
    alone = evaluate_model(tiny_model, x[:20], y[:20], str(tmp_path / "alone"), ["pgd-last-2"], CONFIG,
                           batch_size=8, progress=False)["results"]
    assert alone["pgd-last-2"]["survived"] == results["pgd-last-2"]["survived"]
    assert alone["pgd-last-2"]["images"] == results["pgd-last-2"]["images"]
    with pytest.raises(ValueError, match="more images"):
        evaluate_model(tiny_model, x, y, str(tmp_path / "x"), ["aa@49"], CONFIG, progress=False)


class Killed(Exception):
    pass


def _killing_build(monkeypatch, calls, kill_after=None):
    real_build = build_attack

    def build(name, model, device, seed):
        attack = real_build(name, model, device, seed)

        class Counted:
            def __call__(self, xb, yb):
                calls.append(name)
                if kill_after is not None and name != "natural" and calls.count(name) > kill_after:
                    raise Killed()
                return attack(xb, yb)

            def __getattr__(self, item):
                return getattr(attack, item)

        return Counted()

    monkeypatch.setattr(evaluate, "build_attack", build)


def test_an_interrupted_attack_resumes_after_its_last_finished_image(tiny_model, images, tmp_path, monkeypatch):
    x, y = images
    reference = evaluate_model(tiny_model, x, y, str(tmp_path / "whole"), ["natural", "pgd-2"], CONFIG,
                               batch_size=8, progress=False)["results"]
    calls = []
    _killing_build(monkeypatch, calls, kill_after=3)
    with pytest.raises(Killed):
        evaluate_model(tiny_model, x, y, str(tmp_path / "cut"), ["natural", "pgd-2"], CONFIG, batch_size=8,
                       progress=False)
    stored = json.loads((tmp_path / "cut" / "eval.json").read_text())
    assert "natural" in stored["results"] and "pgd-2" not in stored["results"]
    assert stored["partial"]["pgd-2"]["done"] == 24  # killed in its 4th of 6 batches: 3 batches of 8 images

    calls.clear()
    _killing_build(monkeypatch, calls)
    resumed = evaluate_model(tiny_model, x, y, str(tmp_path / "cut"), ["natural", "pgd-2"], CONFIG, batch_size=8,
                             progress=False)["results"]
    assert calls == ["pgd-2"] * 3  # only the three missing batches ran; natural was not redone
    assert resumed == {**reference, **{k: {**v, "seconds": resumed[k]["seconds"]} for k, v in reference.items()}}

    calls.clear()
    evaluate_model(tiny_model, x, y, str(tmp_path / "cut"), ["natural", "pgd-2", "pgd-last-2"], CONFIG,
                   batch_size=8, progress=False)
    assert calls == []  # finished attacks are never redone, and pgd-last-2 came with pgd-2


def test_resuming_with_another_batch_size_is_refused_not_double_counted(tiny_model, images, tmp_path, monkeypatch):
    x, y = images
    calls = []
    _killing_build(monkeypatch, calls, kill_after=1)
    with pytest.raises(Killed):
        evaluate_model(tiny_model, x, y, str(tmp_path), ["pgd-2"], CONFIG, batch_size=8, progress=False)
    with pytest.raises(UsageError, match="batch_size"):
        evaluate_model(tiny_model, x, y, str(tmp_path), ["pgd-2"], CONFIG, batch_size=20, progress=False)


def test_a_hand_edited_partial_is_refused(tiny_model, images, tmp_path, monkeypatch):
    x, y = images
    calls = []
    _killing_build(monkeypatch, calls, kill_after=1)
    with pytest.raises(Killed):
        evaluate_model(tiny_model, x, y, str(tmp_path), ["pgd-2"], CONFIG, batch_size=8, progress=False)
    path = tmp_path / "eval.json"
    stored = json.loads(path.read_text())
    stored["partial"]["pgd-2"]["done"] = 400  # past the end
    path.write_text(json.dumps(stored))
    with pytest.raises(UsageError, match="saved progress"):
        evaluate_model(tiny_model, x, y, str(tmp_path), ["pgd-2"], CONFIG, batch_size=8, progress=False)


def test_an_edited_result_is_refused(tiny_model, images, tmp_path):
    x, y = images
    evaluate_model(tiny_model, x, y, str(tmp_path), ["natural"], CONFIG, batch_size=16, progress=False)
    path = tmp_path / "eval.json"
    stored = json.loads(path.read_text())
    stored["results"]["natural"]["accuracy"] = 0.99
    path.write_text(json.dumps(stored))
    with pytest.raises(UsageError, match="corrupt or was edited"):
        evaluate_model(tiny_model, x, y, str(tmp_path), ["natural"], CONFIG, batch_size=16, progress=False)


def test_other_weights_do_not_reuse_saved_results(tiny_model, images, tmp_path):
    x, y = images
    evaluate_model(tiny_model, x, y, str(tmp_path), ["natural"], CONFIG, batch_size=16, progress=False)
    zero = TinyCNN()
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    with pytest.raises(UsageError, match="weights"):
        evaluate_model(zero, x, y, str(tmp_path), ["natural"], CONFIG, batch_size=16, progress=False)


def test_other_images_do_not_reuse_saved_results(tiny_model, images, tmp_path):
    x, y = images
    evaluate_model(tiny_model, x, y, str(tmp_path), ["natural"], CONFIG, batch_size=16, progress=False)
    with pytest.raises(UsageError, match="images"):
        evaluate_model(tiny_model, x.flip(0), y.flip(0), str(tmp_path), ["natural"], CONFIG, batch_size=16,
                       progress=False)


@pytest.mark.parametrize("content", ["", "{\"config\": {", "[]", "{\"config\": 3, \"results\": {}}"])
def test_a_corrupt_eval_json_is_refused_and_left_alone(tiny_model, images, tmp_path, content):
    path = tmp_path / "eval.json"
    path.write_text(content)
    with pytest.raises(UsageError, match="eval.json"):
        evaluate_model(tiny_model, *images, str(tmp_path), ["natural"], CONFIG, progress=False)
    assert path.read_text() == content


def test_a_store_of_another_evaluation_is_refused(tmp_path):
    ResultStore(str(tmp_path / "eval.json"), {"seed": 10}).save_result("natural", {"accuracy": 1.0})
    with pytest.raises(UsageError, match="another evaluation"):
        ResultStore(str(tmp_path / "eval.json"), {"seed": 20})


def test_autoattack_through_pyautoattack_breaks_a_standard_model(resnet18, cifar_test, tmp_path):
    """The reference AutoAttack on the non-robust pretrained ResNet-18: every image falls, within eps."""
    x, y = cifar_test[0][:8], cifar_test[1][:8]
    attack = build_attack("aa", resnet18, torch.device("cpu"), 0)
    adv = attack(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert (resnet18(adv).argmax(1) == y).sum() == 0
