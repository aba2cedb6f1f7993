"""The mixing experiment end to end: a standard and an AT model of the same seed, mixed at several alphas, each
mixture evaluated by the suite as a model of its own, reported with 2 forward passes and drawn as one curve."""

import json

import pytest
import torch

from benchmarks import UsageError
from benchmarks.leaderboard import leaderboard_entry
from benchmarks.mixtures import MIX_ALPHAS, check_alphas, mixing_pairs
from benchmarks.models import build_model
from benchmarks.pipeline import cmd_evaluate, trained_runs
from benchmarks.presets import RunSpec, experiment_runs, resolve
from benchmarks.report import aggregate, collect
from benchmarks.train import MODEL_FILE, RUN_FILE, run_folder, save_model

N = 64


def make_run(out, spec, seed, settings, experiment="mixing", init_seed=None):
    torch.manual_seed(seed if init_seed is None else init_seed)
    model = build_model(settings["model"], settings["num_classes"])
    folder = run_folder(str(out), settings, spec, seed)
    import os

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RUN_FILE), "w") as f:
        json.dump({"label": spec.label, "seed": seed, "spec": spec.settings(), "settings": settings,
                   "order": 0 if spec.method == "standard" else 1, "experiment": experiment}, f)
    save_model(os.path.join(folder, MODEL_FILE), model, settings["model"], settings["num_classes"],
               settings["dataset"], spec.label, extra={"seed": seed, "method": spec.method})
    return model


@pytest.fixture
def mixing_out(tmp_path):
    settings = resolve("smoke", "cifar10")
    accurate, robust = experiment_runs("mixing")
    assert (accurate.method, robust.method) == ("standard", "at")
    models = {"standard": make_run(tmp_path, accurate, 0, settings, init_seed=1),
              "at": make_run(tmp_path, robust, 0, settings, init_seed=2)}
    return tmp_path, models


def test_alphas_are_checked():
    assert check_alphas([1, 0.5, 0]) == (0.0, 0.5, 1.0)
    assert MIX_ALPHAS == (0.0, 0.25, 0.5, 0.75, 1.0)
    for bad in ([], [0.5, 0.5], [1.5], [-0.1], "0.5", [float("nan")], [True]):
        with pytest.raises(ValueError, match="alpha"):
            check_alphas(bad)


def test_pairs_take_the_standard_and_the_at_run_of_each_seed(mixing_out):
    out, _ = mixing_out
    pairs = mixing_pairs(trained_runs(str(out)), "cifar10")
    assert [(seed, acc[1]["label"], rob[1]["label"]) for seed, acc, rob in pairs] == [(0, "Standard", "AT")]
    # Runs of another experiment are not mixed.
    assert mixing_pairs([(f, {**r, "experiment": "main"}) for f, r in trained_runs(str(out))], "cifar10") == []


def test_mixtures_are_evaluated_reported_and_drawn(mixing_out, data_dir, cifar_test):
    out, models = mixing_out
    alphas = (0.0, 0.5, 1.0)
    cmd_evaluate("smoke", str(out), data_dir, "cpu", attacks=["natural", "pgd-3"], n=N, batch_size=32,
                 progress=False, mix_alphas=alphas)
    rows = {r["label"]: r for r in aggregate(collect(str(out)))}
    mixed = {a: rows[f"Mix Standard+AT alpha={a:g}"] for a in alphas}
    # alpha 0 and 1 are the branches themselves: the same images survive, attacks included (same seeds).
    for alpha, branch in ((0.0, "Standard"), (1.0, "AT")):
        for attack in ("natural", "pgd-3"):
            assert mixed[alpha]["values"][attack]["mean"] == rows[branch]["values"][attack]["mean"], (alpha, attack)
    # alpha 0.5: the argmax of the averaged softmaxes, by hand.
    x, y = cifar_test
    x, y = x[:N], y[:N]
    with torch.no_grad():
        p = 0.5 * models["standard"].eval()(x).softmax(1) + 0.5 * models["at"].eval()(x).softmax(1)
    assert mixed[0.5]["values"]["natural"]["mean"] == pytest.approx((p.argmax(1) == y).float().mean().item())
    # Leaderboard: 2 forward passes and the mixing paper; our trained runs: 1.
    entry = leaderboard_entry(mixed[0.5])
    assert entry["number_forward_passes"] == 2 and "Mixing Classifiers" in entry["name"]
    assert leaderboard_entry(rows["AT"])["number_forward_passes"] == 1
    assert leaderboard_entry(rows["Standard"])["name"] == "Standardly trained model"
    # One curve, ordered by alpha.
    assert {r["curve"] for r in mixed.values()} == {"mixing Standard + AT"}
    assert [mixed[a]["curve_position"] for a in alphas] == list(alphas)
    assert mixed[0.5]["curve_ends"] == ["Standard", "AT"]  # the branches end the curve when 0 and 1 are not run
    # The paired-differences figure compares each mixture with its AT branch.
    from benchmarks.report import figure_comparisons

    assert {(c["first"], c["second"]) for c in figure_comparisons(list(rows.values()))} == \
        {("AT", f"Mix Standard+AT alpha={a:g}") for a in alphas}
    from benchmarks.figures import tradeoff_scatter

    path = tradeoff_scatter(str(out / "tradeoff.png"), list(rows.values()))
    assert (out / "tradeoff.png").stat().st_size > 0 and path.endswith("tradeoff.png")


def test_bad_mix_alphas_fail_before_any_work(mixing_out, data_dir):
    out, _ = mixing_out
    with pytest.raises(UsageError, match="--mix-alphas: alpha must be in"):
        cmd_evaluate("smoke", str(out), data_dir, "cpu", attacks=["natural"], n=8, progress=False,
                     mix_alphas=[0.5, 2.0])
    assert not list(out.glob("**/eval.json"))


def test_the_pretrained_resnet18_as_the_accurate_branch(mixing_out, data_dir, cifar_test, resnet18):
    """mix_accurate="pretrained" mixes the pyautoattack wheel's ResNet-18 (not the experiment's standard run) with
    the AT run: the mixture's natural accuracy is that of the averaged softmaxes, by hand."""
    out, models = mixing_out
    n = 32
    cmd_evaluate("smoke", str(out), data_dir, "cpu", attacks=["natural"], n=n, batch_size=32, progress=False,
                 mix_alphas=[0.5], mix_accurate="pretrained")
    rows = {r["label"]: r for r in aggregate(collect(str(out)))}
    mixed = rows["Mix ResNet-18 (pretrained)+AT alpha=0.5"]
    assert (out / "mixtures" / "cifar10-resnet-18-pretrained+at-alpha0.5-seed0" / "eval.json").exists()
    x, y = cifar_test[0][:n], cifar_test[1][:n]
    with torch.no_grad():
        p = 0.5 * resnet18.eval()(x).softmax(1) + 0.5 * models["at"].eval()(x).softmax(1)
    assert mixed["values"]["natural"]["mean"] == pytest.approx((p.argmax(1) == y).float().mean().item())
    with pytest.raises(UsageError, match="--mix-accurate: accurate must be one of"):
        cmd_evaluate("smoke", str(out), data_dir, "cpu", attacks=["natural"], n=8, progress=False,
                     mix_accurate="resnet")
