"""Reports from saved evaluations: mean and sample std over seeds, order, flags, formats; and the presets."""

import csv
import io
import json
import math

import pytest

from benchmarks.presets import EXPERIMENTS, PRESETS, RECIPES, experiment_runs, resolve
from benchmarks.report import aggregate, collect, csv_text, markdown, write_reports


def write_eval(root, kind, name, label, seed, results, order=None):
    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"config": {"label": label, "train_seed": seed},
                                                  "results": results, "partial": {}}))
    if order is not None:
        (folder / "run.json").write_text(json.dumps({"label": label, "seed": seed, "order": order,
                                                     "spec": {"method": label.lower(), "eps": 8 / 255,
                                                              "eps_low": 7 / 255}}))


def acc(value):
    return {"accuracy": value, "n": 100}


@pytest.fixture
def results_dir(tmp_path):
    # PART is listed first alphabetically but comes second in the experiment: order wins.
    for seed, (nat, pgd) in enumerate([(0.80, 0.40), (0.82, 0.44), (0.84, 0.42)]):
        write_eval(tmp_path, "runs", f"a-part-seed{seed}", "PART", seed,
                   {"natural": acc(nat), "pgd-20": acc(pgd),
                    "cifar10c-1": {"accuracy": 0.5, "per_corruption": {"fog": 0.4, "snow": 0.6}},
                    "cifar10c-1/fog": acc(0.4), "cifar10c-1/snow": acc(0.6),
                    "trust": {"checks": [{"check": "one_step", "status": "passed"},
                                         {"check": "transfer", "status": "not run"}], "failed": []}}, order=1)
    write_eval(tmp_path, "runs", "b-at-seed0", "AT", 0,
               {"natural": acc(0.78), "pgd-20": acc(0.43), "aa": acc(0.40),
                "trust": {"checks": [{"check": "one_step", "status": "failed"},
                                     {"check": "transfer", "status": "passed"}], "failed": ["one_step"]}},
               order=0)
    write_eval(tmp_path, "zoo", "cifar10-Linf-Foo", "Foo", 0, {"natural": acc(0.9), "aa": acc(0.5)})
    return tmp_path


def test_rows_average_seeds_with_the_sample_std(results_dir):
    rows = aggregate(collect(str(results_dir)))
    assert [r["label"] for r in rows] == ["AT", "PART", "Foo"]
    part = rows[1]
    assert part["seeds"] == [0, 1, 2]
    assert part["values"]["natural"]["mean"] == pytest.approx(0.82)
    assert part["values"]["natural"]["std"] == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    assert part["values"]["pgd-20"]["std"] == pytest.approx(math.sqrt((0.02 ** 2 + 0.02 ** 2) / 2))
    assert rows[0]["values"]["natural"]["std"] is None  # one seed: no std
    assert part["corruptions"]["cifar10c-1"] == {"fog": pytest.approx(0.4), "snow": pytest.approx(0.6)}
    assert rows[0]["failed"] == ["one_step"] and rows[1]["failed"] == []
    assert rows[1]["trust"] == {"one_step": "passed", "transfer": "not run"}


def test_markdown_flags_failed_trust_checks_and_shows_mean_and_std(results_dir):
    text = markdown(aggregate(collect(str(results_dir))))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header.split(" | ")[2:6] == ["Natural", "PGD-20", "AA", "CIFAR-10-C (severity 1)"]
    at = next(line for line in lines if line.startswith("| AT |"))
    assert "**FAILED: one_step**" in at
    part = next(line for line in lines if line.startswith("| PART |"))
    assert "82.00 ± 2.00" in part and "passed (transfer not run)" in part
    assert any(line.startswith("| Foo (RobustBench) |") for line in lines)
    assert "| fog | 40.00 |" in text  # per-corruption table (PART only has CIFAR-10-C)


def test_csv_and_json_reports(results_dir):
    rows, text = write_reports(str(results_dir))
    report = results_dir / "report"
    assert (report / "comparison.md").read_text() == text
    assert json.loads((report / "comparison.json").read_text())[1]["values"]["natural"]["mean"] == pytest.approx(0.82)
    table = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert table == list(csv.DictReader(io.StringIO((report / "comparison.csv").read_text())))
    part_nat = next(r for r in table if r["model"] == "PART" and r["attack"] == "natural")
    assert float(part_nat["mean"]) == pytest.approx(0.82) and part_nat["seeds"] == "3"
    assert any(r["attack"] == "cifar10c-1/fog" for r in table)


def test_paper_preset_is_the_papers_recipe():
    cifar = resolve("paper", "cifar10")
    assert (cifar["model"], cifar["lr"], cifar["batch_size"], cifar["weight_decay"], cifar["alpha"]) == (
        "resnet18", 0.01, 128, 2e-4, 2 / 255)
    assert (cifar["epochs"], cifar["burn_in"], cifar["augment"], cifar["n_train"], cifar["seeds"]) == (
        80, 20, True, None, [0, 1, 2])
    svhn = resolve("paper", "svhn")
    assert (svhn["alpha"], svhn["augment"], svhn["weight_decay"]) == (1 / 255, False, 3.5e-3)
    tiny = resolve("paper", "tiny-imagenet")
    assert (tiny["model"], tiny["lr"], tiny["batch_size"], tiny["num_classes"]) == ("wrn-34-10", 0.02, 512, 200)
    smoke = resolve("smoke", "cifar10")
    assert smoke["model"] == "tiny" and smoke["device"] == "cpu" and smoke["burn_in"] < smoke["epochs"]
    assert set(PRESETS) == {"smoke", "paper"} and set(RECIPES) == {"cifar10", "svhn", "tiny-imagenet"}


def test_experiments_are_the_papers():
    table1 = experiment_runs("table1")
    assert [(r.method, r.mask_refresh) for r in table1] == [
        ("at", 1), ("part", 1), ("part", 10), ("trades", 1), ("part-t", 1), ("part-t", 10),
        ("mart", 1), ("part-m", 1), ("part-m", 10)]
    sweep = experiment_runs("eps-low-sweep")
    assert sorted(round(r.eps_low * 255) for r in sweep if r.method == "part") == [4, 5, 6, 7, 8, 9, 10, 11]
    quadrant = experiment_runs("quadrant")
    assert [r.low_quarter for r in quadrant] == ["ul", "ur", "bl", "br"]
    assert all((r.eps, r.eps_low, r.burn_in) == (12 / 255, 6 / 255, 0) for r in quadrant)
    assert [r.cam for r in experiment_runs("cam-methods")] == ["gradcam", "xgradcam", "layercam"]
    assert {(r.method, r.example_generator) for r in experiment_runs("generators")} == {
        ("at", "pgd"), ("part", "pgd"), ("at", "mma"), ("part", "mma")}
    assert [r.rule for r in experiment_runs("mask-rules")] == ["cam", "cam", "jet", "random"]
    slugs = [r.slug for name in EXPERIMENTS for r in experiment_runs(name)]
    assert all(s and s.replace("-", "").isalnum() for s in slugs)
    for bad in (lambda: experiment_runs("table9"), lambda: resolve("huge", "cifar10"),
                lambda: resolve("smoke", "mnist")):
        with pytest.raises(ValueError, match="experiment|preset|dataset"):
            bad()


def test_figures_from_saved_evaluations_include_the_eps_low_sweep(tmp_path, data_dir):
    """Figure 4 is drawn when PART runs with several eps_low were evaluated; AT is its dashed reference."""
    import matplotlib.image

    from benchmarks.pipeline import cmd_figures

    for order, (method, eps, low, nat, pgd) in enumerate([("at", 8, 8, 0.80, 0.45), ("part", 8, 7, 0.81, 0.45),
                                                          ("part", 8, 5, 0.83, 0.44), ("at", 12, 12, 0.70, 0.50),
                                                          ("part", 12, 10, 0.73, 0.50)]):
        folder = tmp_path / "runs" / f"r{order}"
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"config": {"label": f"{method} {eps} {low}", "train_seed": 0},
                                                      "results": {"natural": acc(nat), "pgd-20": acc(pgd)}}))
        (folder / "run.json").write_text(json.dumps({"order": order, "spec": {"method": method, "eps": eps / 255,
                                                                               "eps_low": low / 255}}))
    written = cmd_figures(str(tmp_path), data_dir)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["tradeoff.png", "eps_low_sweep.png"]
    sweep = matplotlib.image.imread(written[1])
    assert sweep.ndim == 3 and sweep.shape[1] > sweep.shape[0]  # two panels side by side: eps 12/255 and 8/255
