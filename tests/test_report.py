"""Reports from saved evaluations: mean and sample std over seeds, order, flags, formats; and the presets."""

import csv
import io
import json
import math

import numpy as np
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
    assert set(PRESETS) == {"smoke", "quick", "paper"} and set(RECIPES) == {"cifar10", "svhn", "tiny-imagenet"}


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


# --------------------------------------------------------------------------- statistics of the per-image outcomes


def outcome(bits, images="h20", max_eps=8 / 255, label=None):
    from benchmarks.outcomes import pack

    survived = [c == "1" for c in bits]
    out = {"accuracy": sum(survived) / len(survived), "correct": sum(survived), "n": len(survived),
           "images": images, "max_eps": max_eps, "seconds": 0.5, "survived": pack(np.array(survived))}
    return out if label is None else {**out, "label": label}


# 20 images; per model and seed: natural, pgd-20, aa (aa@10: the first 10 images only)
OUTCOMES = {
    ("AT", 0): ("11111111111111110000", "11111111000000000000", "1111110000"),
    ("AT", 1): ("11111111111111100000", "11111110000000000000", "1111100000"),
    ("PART", 0): ("11111111111111111000", "11111100111100000000", "1111110000"),
    ("PART", 1): ("11111111111111111100", "11111111111000000000", "1111111000"),
}


@pytest.fixture
def outcomes_dir(tmp_path):
    for order, label in enumerate(("AT", "PART")):
        for seed in (0, 1):
            nat, pgd, aa = OUTCOMES[(label, seed)]
            results = {"natural": outcome(nat, max_eps=0.0, label="Natural"), "pgd-20": outcome(pgd, label="PGD-20"),
                       "aa": outcome(aa, images="h10", label="AA"),
                       "adaptive-pgd-20": outcome("0" * 20, max_eps=12 / 255, label="Adaptive PGD-20"),
                       "pgd-40": acc(0.3)}  # an older result: no per-image outcomes
            if label == "AT":
                results["mma-20"] = outcome("1" * 15, images="h15")  # mma-20@15: not PART's subset
            else:
                results["mma-20"] = outcome("1" * 20)
            folder = tmp_path / "runs" / f"{label.lower()}-seed{seed}"
            folder.mkdir(parents=True)
            (folder / "eval.json").write_text(json.dumps({"config": {
                "source": "ours", "label": label, "train_seed": seed, "dataset": "cifar10", "eps": 0.0313725,
                "seed": 0, "weights": f"{order}{seed}" * 8, "batch_size": 10, "surrogate": None},
                "results": results, "partial": {}}))
            (folder / "run.json").write_text(json.dumps({"label": label, "seed": seed, "order": order,
                                                         "spec": {"method": label.lower(), "eps": 8 / 255,
                                                                  "eps_low": 7 / 255},
                                                         "settings": {"model": "resnet18", "dataset": "cifar10"}}))
    return tmp_path


def _vector(bits):
    return np.array([c == "1" for c in bits])


def test_worst_case_column_over_the_threat_model(outcomes_dir):
    rows = aggregate(collect(str(outcomes_dir)))
    # worst case = natural & pgd-20 & aa (& mma-20) on the first 10 images (aa@10); adaptive (12/255) is outside
    expected = {}
    for (label, seed), (nat, pgd, aa) in OUTCOMES.items():
        survived = _vector(nat)[:10] & _vector(pgd)[:10] & _vector(aa)
        expected.setdefault(label, []).append(survived.mean())
    for row in rows:
        worst = row["worst_case"]
        assert [w["accuracy"] for w in worst["per_seed"]] == pytest.approx(expected[row["label"]])
        assert worst["mean"] == pytest.approx(np.mean(expected[row["label"]]))
        assert all(w["n"] == 10 and w["images"] == "h10" for w in worst["per_seed"])
        assert worst["per_seed"][0]["attacks"] == ["natural", "pgd-20", "aa", "mma-20"]
        assert row["missing_outcomes"] == ["pgd-40"]
    text = markdown(rows)
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert header.split(" | ")[-2] == "Worst case (eps 8/255)"
    at = next(line for line in text.splitlines() if line.startswith("| AT |"))
    assert f"| {100 * np.mean(expected['AT']):.2f} ± {100 * np.std(expected['AT'], ddof=1):.2f} |" in at
    assert "No per-image outcomes saved" in text and "AT: pgd-40" in text


def test_attack_agreement_table_sums_seeds(outcomes_dir):
    rows = aggregate(collect(str(outcomes_dir)))
    at = rows[0]["agreement"]
    cells = {(c["breaks"], c["misses"]): c for c in at["cells"]}
    # PGD-20 breaks, natural misses: images correct clean but broken by PGD, summed over both seeds
    by_hand = sum(int((_vector(nat) & ~_vector(pgd)).sum()) for (label, _), (nat, pgd, _) in OUTCOMES.items()
                  if label == "AT")
    assert by_hand == 8 + 8
    assert (cells[("pgd-20", "natural")]["count"], cells[("pgd-20", "natural")]["n"]) == (16, 40)
    assert cells[("aa", "pgd-20")]["n"] == 20  # aa@10: the common prefix of 10 images, twice
    assert cells[("pgd-20", "aa")]["count"] == 0 and cells[("aa", "pgd-20")]["count"] == 4  # images 6, 7; 5, 6
    text = markdown(rows)
    assert "### Attack agreement: images the row's attack breaks that the column's attack misses" in text
    assert "#### AT (2 seeds, count / image evaluations)" in text
    assert "| PGD-20 | 16 / 40 | - |" in text


def test_paired_comparisons_per_seed_and_pooled(outcomes_dir):
    from scipy.stats import binomtest

    from benchmarks.statistics import newcombe_paired_interval

    rows = aggregate(collect(str(outcomes_dir)))
    part = rows[1]
    pgd = next(e for e in part["paired"] if e["attack"] == "pgd-20")
    assert pgd["versus"] == "AT" and [d["seed"] for d in pgd["seeds"]] == [0, 1]
    tables = []
    for seed, d in zip((0, 1), pgd["seeds"]):
        a, b = _vector(OUTCOMES[("AT", seed)][1]), _vector(OUTCOMES[("PART", seed)][1])
        table = (int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum()))
        tables.append(table)
        assert (d["a"], d["b"], d["c"], d["d"], d["n"]) == (*table, 20)
        assert d["difference"] == pytest.approx(b.mean() - a.mean())
        assert d["p"] == pytest.approx(binomtest(table[1], table[1] + table[2], 0.5).pvalue)
        assert (d["low"], d["high"]) == pytest.approx(newcombe_paired_interval(*table))
    assert tables[0] == (6, 2, 4, 8)  # by hand: AT seed 0 alone on images 6, 7; PART alone on 8..11
    pooled = pgd["pooled"]
    b, c = tables[0][1] + tables[1][1], tables[0][2] + tables[1][2]
    assert (pooled["n"], pooled["b"], pooled["c"], pooled["seeds"]) == (40, b, c, [0, 1])
    assert pooled["p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    attacks = [e["attack"] for e in part["paired"]]
    assert attacks == ["natural", "pgd-20", "mma-20", "aa", "adaptive-pgd-20", "worst-case"]  # Table 1's order
    mma = next(e for e in part["paired"] if e["attack"] == "mma-20")
    assert mma["pooled"] is None and "not the same test images" in mma["skipped"][0]
    worst = next(e for e in part["paired"] if e["attack"] == "worst-case")
    assert worst["pooled"]["n"] == 20 and worst["seeds"][0]["attacks"] == ["natural", "pgd-20", "aa", "mma-20"]
    assert rows[0]["paired"] == []  # comparisons sit on the later row

    text = markdown(rows)
    assert "### Paired comparisons on the same test images" in text
    line = next(x for x in text.splitlines() if x.startswith("| PART \u2212 AT | PGD-20 |"))
    diff = 100 * pooled["difference"]
    assert f"| 20 × 2 | {diff:+.2f} |".replace("-", "\u2212") in line
    assert "s0: +10.00 [" in line and "not distinguishable from zero" in line
    sentence = next(x for x in text.splitlines() if x.startswith("- PART \u2212 AT, PGD-20:"))
    assert sentence.endswith(f"points, p = {pooled['p']:.2f} (n = 40, seeds 0, 1): not distinguishable from zero.")
    assert "Not compared (not on the same images): PART vs AT, MMA-20" in text

    # the same in the JSON and the CSV
    write_reports(str(outcomes_dir))
    stored = json.loads((outcomes_dir / "report" / "comparison.json").read_text())
    assert next(e for e in stored[1]["paired"] if e["attack"] == "pgd-20")["pooled"]["b"] == b
    table = list(csv.DictReader(io.StringIO((outcomes_dir / "report" / "comparison.csv").read_text())))
    paired = [r for r in table if r["record"] == "paired" and r["attack"] == "pgd-20"]
    assert [r["seed"] for r in paired] == ["0", "1", "pooled"]
    assert all(r["model"] == "PART" and r["versus"] == "AT" for r in paired)
    assert float(paired[-1]["mean"]) == pytest.approx(pooled["difference"]) and int(paired[-1]["c"]) == c
    assert float(paired[-1]["p"]) == pytest.approx(pooled["p"], rel=1e-5)
    assert any(r["record"] == "worst-case" for r in table)
    assert any(r["record"] == "agreement" and r["attack"] == "pgd-20" and r["versus"] == "natural"
               and r["count"] == "16" for r in table)


def test_distinguishable_difference_reads_so():
    """A clear difference on 1000 images: interval above 0 and p < 0.05 in the report's words."""
    from benchmarks.report import sentence
    from benchmarks.statistics import pooled_comparison

    a = np.zeros(1000, bool)
    b = np.r_[np.ones(60, bool), np.zeros(940, bool)]
    pooled = pooled_comparison([(a, b)])
    pooled["seeds"] = [0]
    text = sentence("PART", {"versus": "AT", "label": "Natural", "pooled": pooled})
    assert text.startswith("PART \u2212 AT, Natural: +6.00 [+")
    assert text.endswith("p < 0.001 (n = 1000, seed 0): distinguishable from zero (p < 0.05)")


def test_paired_differences_figure(outcomes_dir, data_dir):
    import matplotlib.image

    from benchmarks.pipeline import cmd_figures

    written = cmd_figures(str(outcomes_dir), data_dir)
    names = [p.rsplit("/", 1)[-1] for p in written]
    assert names == ["tradeoff.png", "paired_differences.png"]
    image = matplotlib.image.imread(written[1])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_pooled_verdict_warns_when_images_as_units_disagree():
    """10 images favour PART and 3 favour AT, the same ones in each of 3 seeds: the pooled table (30 vs 9) excludes
    0, the 13 images as units do not (p = 0.092)."""
    from scipy.stats import binomtest

    from benchmarks.report import verdict
    from benchmarks.statistics import pooled_comparison

    at = np.r_[np.zeros(10, bool), np.ones(3, bool), np.zeros(87, bool)]
    part = np.r_[np.ones(10, bool), np.zeros(90, bool)]
    pooled = pooled_comparison([(at, part)] * 3)
    pooled["seeds"] = [0, 1, 2]
    assert pooled["distinguishable"] and pooled["p"] < 0.05
    assert pooled["p_images"] == pytest.approx(binomtest(3, 13, 0.5).pvalue)
    assert verdict(pooled, pooled=True) == ("distinguishable from zero (p < 0.05); not with the images as units "
                                            f"(p = {pooled['p_images']:.3f})")


def test_training_budgets_come_from_each_runs_last_epoch(results_dir):
    # PART's seeds trained at 7.2/255 and 7.4/255 on average in their last epoch; AT's log predates mean_budget.
    for seed, budget in ((0, 7.2), (1, 7.4)):
        records = [{"epoch": 1, "mean_budget": 8 / 255, "important_fraction": 1.0},
                   {"epoch": 2, "mean_budget": budget / 255, "important_fraction": 0.2 + 0.1 * seed}]
        (results_dir / "runs" / f"a-part-seed{seed}" / "log.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
    (results_dir / "runs" / "b-at-seed0" / "log.jsonl").write_text(json.dumps({"epoch": 2, "loss": 1.0}) + "\n")
    rows = {r["label"]: r for r in aggregate(collect(str(results_dir)))}
    budget = rows["PART"]["training_budget"]
    assert budget["mean_budget"] == pytest.approx(7.3 / 255) and budget["important_fraction"] == pytest.approx(0.25)
    assert budget["seeds"] == 2 and budget["epoch"] == 2
    assert rows["AT"]["training_budget"] is None and rows["Foo"]["training_budget"] is None
    text = markdown(list(rows.values()))
    assert "### Training budgets (last epoch)" in text and "| PART | 7.300 | 25.0% |" in text
