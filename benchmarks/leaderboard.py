"""RobustBench both ways: its reported accuracies next to ours for zoo models, and leaderboard entries for ours.

* ``part-bench compare --model-info DIR`` reads RobustBench's leaderboard entries (the repository's
  ``model_info/`` folder: ``<DIR>/<dataset>/<threat_model>/<name>.json``; nothing is downloaded) and shows, for
  each zoo model, RobustBench's clean and AutoAttack accuracy next to ours (``natural`` and ``aa``). A difference
  is flagged when it is larger than the sampling error of our n explains: the exact binomial test of our correct
  count against the reported proportion, ``scipy.stats.binomtest(correct, n, reported)``, gives p < 0.05. Our
  accuracy comes with its exact (Clopper-Pearson) 95% interval. Evaluating on a subset, a different AutoAttack
  seed, or a different preprocessing are the usual reasons for a flag.
* Every ``compare`` writes, for each of our models (label, averaged over its seeds), its entry in the same JSON
  format to ``<report-dir>/leaderboard/<label slug>.json``, the footnote saying how it was measured.
"""

import json
import os
import re

from art_part.checkpoint import atomic_write_text

from . import UsageError

#: RobustBench's leaderboard fields, in the order of its files.
ENTRY_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                "architecture", "eps", "clean_acc", "reported", "footnote", "autoattack_acc")

#: (attack name here, RobustBench's field, the metric's name in the report)
METRICS = (("natural", "clean_acc", "clean"), ("aa", "autoattack_acc", "AutoAttack"))

#: ``settings["model"]`` of a run -> RobustBench's architecture name.
ARCHITECTURES = {"resnet18": "ResNet-18", "wrn-34-10": "WideResNet-34-10", "tiny": "TinyCNN (part-bench smoke model)"}

_PART = {"link": "https://arxiv.org/abs/2406.00685",
         "name": "Improving Accuracy-robustness Trade-off via Pixel Reweighted Adversarial Training",
         "authors": "Jiacheng Zhang, Feng Liu, Dawei Zhou, Jingfeng Zhang, Tongliang Liu", "venue": "ICML 2024"}
#: The paper of each training method (as in RobustBench's entries for AT, TRADES and MART).
METHOD_PAPERS = {
    "at": {"link": "https://arxiv.org/abs/1706.06083",
           "name": "Towards Deep Learning Models Resistant to Adversarial Attacks",
           "authors": "Aleksander Madry, Aleksandar Makelov, Ludwig Schmidt, Dimitris Tsipras, Adrian Vladu",
           "venue": "ICLR 2018"},
    "trades": {"link": "https://arxiv.org/abs/1901.08573",
               "name": "Theoretically Principled Trade-off between Robustness and Accuracy",
               "authors": "Hongyang Zhang, Yaodong Yu, Jiantao Jiao, Eric P. Xing, Laurent El Ghaoui, "
                          "Michael I. Jordan", "venue": "ICML 2019"},
    "mart": {"link": "https://openreview.net/forum?id=rklOg6EFwS",
             "name": "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
             "authors": "Yisen Wang, Difan Zou, Jinfeng Yi, James Bailey, Xingjun Ma, Quanquan Gu",
             "venue": "ICLR 2020"},
    "part": _PART, "part-t": _PART, "part-m": _PART,
    # As RobustBench's own entry of its standardly trained model (model_info/cifar10/Linf/Standard.json).
    "standard": {"link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model",
                 "authors": "", "venue": "N/A"},
    "mixing": {"link": "https://arxiv.org/abs/2311.15165",
               "name": "Mixing Classifiers to Alleviate the Accuracy-Robustness Trade-Off",
               "authors": "Yatong Bai, Brendon G. Anderson, Mingyuan Kim, Somayeh Sojoudi", "venue": "L4DC 2024"},
}

#: Test-set sizes of RobustBench's datasets (its leaderboard evaluates the full test set; ImageNet: 5000 images).
TEST_SIZES = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}


def check_model_info_dir(path):
    """:raises UsageError: ``path`` is not a folder (checked before any work)."""
    if not os.path.isdir(path):
        raise UsageError(f"--model-info {path}: no such folder (RobustBench's model_info folder, holding "
                         "<dataset>/<threat_model>/<name>.json)")


def model_info_path(model_info_dir, dataset, threat_model, name):
    return os.path.join(model_info_dir, dataset, threat_model, f"{name}.json")


def load_model_info(model_info_dir, dataset, threat_model, name):
    """RobustBench's leaderboard entry of a model as a dict, or None when there is no such file."""
    path = model_info_path(model_info_dir, dataset, threat_model, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_against_reported(correct, n, reported):
    """Our ``correct`` of ``n`` images against a reported accuracy (percent).

    :return: dict: measured (a fraction), low/high (95% Clopper-Pearson interval of ours, ``binomtest(...)
        .proportion_ci("exact")``), p (two-sided exact binomial test of ``correct ~ Bin(n, reported / 100)``) and
        flagged (p < 0.05: more than our sampling error).
    """
    from scipy.stats import binomtest

    test = binomtest(int(correct), int(n), p=min(max(reported / 100, 0.0), 1.0))
    interval = test.proportion_ci(confidence_level=0.95, method="exact")
    return {"measured": correct / n, "correct": int(correct), "n": int(n), "reported": reported,
            "low": float(interval.low), "high": float(interval.high), "p": float(test.pvalue),
            "flagged": bool(test.pvalue < 0.05)}


def reported_vs_measured(models, model_info_dir):
    """One dict per zoo model (``models`` from :func:`benchmarks.report.collect`): label, seed, dataset,
    threat_model, file (the entry's path) and entry (False: no RobustBench entry), and checks: one
    :func:`check_against_reported` dict per metric of :data:`METRICS` that both have, with attack, metric and
    field added; ``not_measured``: metrics RobustBench reports that we did not evaluate."""
    found = []
    for model in models:
        if model["kind"] != "zoo":
            continue
        config = model.get("config") or {}
        dataset, threat = config.get("dataset", "cifar10"), config.get("threat_model", "Linf")
        info = load_model_info(model_info_dir, dataset, threat, model["label"])
        item = {"label": model["label"], "seed": model["seed"], "dataset": dataset, "threat_model": threat,
                "file": model_info_path(model_info_dir, dataset, threat, model["label"]), "entry": info is not None,
                "checks": [], "not_measured": []}
        for attack, field, metric in METRICS if info else ():
            if info.get(field) in (None, ""):
                continue
            result = model["results"].get(attack)
            if not result or not result.get("n"):
                item["not_measured"].append(metric)
                continue
            correct = result.get("correct", round(result["accuracy"] * result["n"]))
            item["checks"].append({"attack": attack, "metric": metric, "field": field,
                                   **check_against_reported(correct, result["n"], float(info[field]))})
        found.append(item)
    return found


def attach_reported(rows, models, model_info_dir):
    """Put :func:`reported_vs_measured` on the zoo rows (``row["robustbench"]``, a list: one per seed)."""
    by_label = {}
    for item in reported_vs_measured(models, model_info_dir):
        by_label.setdefault(item["label"], []).append(item)
    for row in rows:
        if row["kind"] == "zoo":
            row["robustbench"] = by_label.get(row["label"], [])
    return rows


def markdown_lines(rows):
    """The report's section: reported vs measured, one line per (zoo model, metric)."""
    from .report import p_text

    lines = ["", "### RobustBench: reported vs measured", "",
             "Reported: RobustBench's leaderboard entry (its model_info file). Measured: ours on the first n test "
             "images, with the exact (Clopper-Pearson) 95% interval. Flagged when the exact binomial test of our "
             "correct count against the reported accuracy gives p < 0.05: a difference larger than the sampling "
             "error of our n.", "",
             "| model | metric | reported (%) | measured (%) | 95% CI | n | p | |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for row in rows:
        for item in row.get("robustbench", []):
            if not item["entry"]:
                lines.append(f"| {row['label']} | - | no RobustBench entry | | | | | |")
                continue
            for check in item["checks"]:
                flag = "**differs by more than sampling error**" if check["flagged"] else "consistent"
                lines.append(f"| {row['label']} | {check['metric']} | {check['reported']:.2f} | "
                             f"{100 * check['measured']:.2f} | [{100 * check['low']:.2f}, {100 * check['high']:.2f}] "
                             f"| {check['n']} | {p_text(check['p'])} | {flag} |")
            for metric in item["not_measured"]:
                lines.append(f"| {row['label']} | {metric} | reported | not evaluated | | | | |")
    return lines


def slug(label):
    """A file name: lower case, digits, dashes ("PART (s=1)" -> "part-s-1")."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "model"


def _mean_percent(row, name):
    entry = row["values"].get(name)
    return None if entry is None else f"{100 * entry['mean']:.2f}"


def leaderboard_entry(row):
    """RobustBench's leaderboard entry (:data:`ENTRY_FIELDS`) of one of our rows (:func:`benchmarks.report.aggregate`):
    accuracies are the mean over seeds, as strings with 2 decimals; link, name, authors and venue are those of the
    training method's paper (the model itself is this reproduction's, which the footnote says); autoattack_acc and
    reported are None when AA was not evaluated."""
    from .report import eps_text

    spec, settings = row.get("spec") or {}, row.get("settings") or {}
    paper = METHOD_PAPERS.get(spec.get("method"), {"link": "", "name": row["label"], "authors": "",
                                                   "venue": "N/A"})
    dataset = row.get("dataset") or settings.get("dataset") or "cifar10"
    clean, robust = _mean_percent(row, "natural"), _mean_percent(row, "aa")
    seeds = row["seeds"]
    parts = [f"{row['label']}: trained and evaluated by part-bench (reproduction of {paper['name'] or 'the method'}"
             f"{', method ' + spec['method'] if spec.get('method') else ''}; not the authors' checkpoint)",
             f"mean over {len(seeds)} training seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"]
    full = TEST_SIZES.get(dataset)
    for name, what in (("natural", "clean accuracy"), ("aa", "AutoAttack (pyautoattack, version 'standard': "
                                                              "APGD-CE, APGD-T, FAB-T, Square)")):
        entry = row["values"].get(name)
        if entry is None:
            parts.append(f"{what}: not evaluated")
            continue
        ns = sorted({n for n in entry.get("n", []) if n is not None})
        size = "/".join(str(n) for n in ns) or "?"
        subset = "" if full is not None and ns == [full] else (
            f" of the {full}" if full is not None else "")
        parts.append(f"{what} on the first {size}{subset} {dataset} test images"
                     + (" (a subset: not RobustBench's full test set)" if subset else ""))
    architecture = ARCHITECTURES.get(settings.get("model"), settings.get("model") or "unknown")
    return {"link": paper["link"], "name": paper["name"], "authors": paper["authors"], "additional_data": False,
            "number_forward_passes": row.get("forward_passes", 1), "dataset": dataset, "venue": paper["venue"], "architecture": architecture,
            "eps": eps_text(row.get("eps") or 8 / 255), "clean_acc": clean, "reported": robust,
            "footnote": "; ".join(parts) + ".", "autoattack_acc": robust}


def write_entries(rows, folder):
    """Write :func:`leaderboard_entry` of each of our rows to ``<folder>/<label slug>.json`` (atomically).

    :return: the paths written.
    """
    written = []
    for row in rows:
        if row["kind"] != "ours":
            continue
        path = os.path.join(folder, f"{slug(row['label'])}.json")
        atomic_write_text(json.dumps(leaderboard_entry(row), indent=2) + "\n", path)
        written.append(path)
    return written
