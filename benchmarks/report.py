"""``part-bench compare``: side-by-side tables from saved evaluations, as Markdown, JSON and CSV.

Every ``eval.json`` under ``<out>/runs/*/`` (our models) and ``<out>/zoo/*/`` (RobustBench models) becomes one
evaluated model; models with the same label (seeds of one run) become one row with the mean and the sample
standard deviation (n - 1) over seeds, as the paper's "averaged results and standard deviations of three runs".
Rows keep the experiment's order; zoo models follow. A failed trust check is flagged in the row and listed in its
own table.
"""

import csv
import io
import json
import math
import os

from art_part.checkpoint import atomic_write_text

from .evaluate import RESULTS_FILE, attack_label
from .train import RUN_FILE

REPORT_NAMES = ("comparison.md", "comparison.json", "comparison.csv")


def collect(out):
    """One dict per evaluated model under ``out``: label, seed, kind ("ours"/"zoo"), order, spec, results."""
    models = []
    for kind in ("runs", "zoo"):
        root = os.path.join(out, kind)
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name, RESULTS_FILE)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                stored = json.load(f)
            meta = stored["config"]
            run = {}  # our runs: the training record gives the experiment's order and the run's settings
            run_path = os.path.join(root, name, RUN_FILE)
            if os.path.exists(run_path):
                with open(run_path) as f:
                    run = json.load(f)
            models.append({"label": meta.get("label", name), "seed": meta.get("train_seed", 0),
                           "kind": "ours" if kind == "runs" else "zoo", "order": run.get("order", 10**6),
                           "spec": run.get("spec"), "folder": os.path.join(root, name),
                           "results": stored["results"]})
    models.sort(key=lambda m: (m["kind"] != "ours", m["order"], m["label"], m["seed"]))
    return models


def _mean_std(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(models):
    """Rows: label, kind, seeds, spec, per-attack {mean, std, n_seeds}, CIFAR-10-C per corruption, trust flags."""
    rows = {}
    for model in models:
        row = rows.setdefault(model["label"], {"label": model["label"], "kind": model["kind"], "seeds": [],
                                               "spec": model["spec"], "values": {}, "corruptions": {},
                                               "trust": {}, "failed": set()})
        row["seeds"].append(model["seed"])
        for name, result in model["results"].items():
            if "/" in name:  # one corruption; its severity's mean is the main entry
                continue
            if "checks" in result:
                for check in result["checks"]:
                    row["trust"].setdefault(check["check"], []).append(check["status"])
                row["failed"].update(result["failed"])
                continue
            row["values"].setdefault(name, []).append(result["accuracy"])
            for corruption, accuracy in result.get("per_corruption", {}).items():
                row["corruptions"].setdefault(name, {}).setdefault(corruption, []).append(accuracy)
    out = []
    for row in rows.values():
        values = {name: dict(zip(("mean", "std"), _mean_std(v)), n_seeds=len(v)) for name, v in row["values"].items()}
        corruptions = {sev: {c: _mean_std(v)[0] for c, v in per.items()} for sev, per in row["corruptions"].items()}
        trust = {check: ("failed" if "failed" in s else "passed" if all(x == "passed" for x in s) else "not run")
                 for check, s in row["trust"].items()}
        out.append({"label": row["label"], "kind": row["kind"], "seeds": row["seeds"], "spec": row["spec"],
                    "values": values, "corruptions": corruptions, "trust": trust, "failed": sorted(row["failed"])})
    return out


_KINDS = ("natural", "pgd", "mma", "aa", "adaptive-pgd", "adaptive-mma", "cifar10c", "trust")


def _column_key(name):
    """Table 1's columns first (natural, PGD-20, MMA-20, AA), then by attack kind and number of steps."""
    table1 = ("natural", "pgd-20", "mma-20", "aa")
    if name in table1:
        return (0, table1.index(name), 0)
    kind, _, number = name.rpartition("-")
    if not number.isdigit():
        kind, number = name, "0"
    return (1, _KINDS.index(kind) if kind in _KINDS else len(_KINDS), int(number))


def _columns(rows):
    """Attack columns, in :func:`_column_key` order."""
    return sorted({name for row in rows for name in row["values"]}, key=_column_key)


def _pct(entry):
    if entry is None:
        return "-"
    text = f"{100 * entry['mean']:.2f}"
    return text if entry["std"] is None else f"{text} ± {100 * entry['std']:.2f}"


def _trust_cell(row):
    if not row["trust"]:
        return "-"
    if row["failed"]:
        return "**FAILED: " + ", ".join(row["failed"]) + "**"
    not_run = [c for c, s in row["trust"].items() if s == "not run"]
    return "passed" + (f" ({', '.join(not_run)} not run)" if not_run else "")


def markdown(rows, title="Comparison"):
    """The Markdown report: the accuracy table, CIFAR-10-C per corruption, trust checks."""
    columns = _columns(rows)
    lines = [f"## {title}", "", "Accuracy (%) on the evaluated test images; mean ± sample std over seeds when "
             "several. eps = 8/255 for every attack; adaptive attacks use 12/255 on the CAM's important pixels and "
             "8/255 elsewhere.", ""]
    header = ["model", "seeds", *(attack_label(c) for c in columns), "trust checks"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(columns) + "---|"]
    for row in rows:
        name = row["label"] + (" (RobustBench)" if row["kind"] == "zoo" else "")
        cells = [name, str(len(row["seeds"])), *(_pct(row["values"].get(c)) for c in columns), _trust_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    severities = sorted({sev for row in rows for sev in row["corruptions"]})
    for severity in severities:
        corruptions = list(dict.fromkeys(c for row in rows for c in row["corruptions"].get(severity, {})))
        with_data = [row for row in rows if severity in row["corruptions"]]
        lines += ["", f"### {attack_label(severity)}: accuracy (%) per corruption", "",
                  "| corruption | " + " | ".join(r["label"] for r in with_data) + " |",
                  "|---|" + "---:|" * len(with_data)]
        for corruption in corruptions:
            cells = [f"{100 * r['corruptions'][severity].get(corruption, float('nan')):.2f}" for r in with_data]
            lines.append(f"| {corruption} | " + " | ".join(cells) + " |")
    checks = list(dict.fromkeys(c for row in rows for c in row["trust"]))
    if checks:
        lines += ["", "### Trust checks (Athalye et al., 2018; paper appendix H.3)", "",
                  "| model | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
        for row in rows:
            if row["trust"]:
                cells = [("**FAILED**" if row["trust"].get(c) == "failed" else row["trust"].get(c, "-"))
                         for c in checks]
                lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows):
    """Long format: one line per (model, attack) with mean, std and the number of seeds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "kind", "attack", "label", "mean", "std", "seeds"])
    for row in rows:
        for name, entry in row["values"].items():
            writer.writerow([row["label"], row["kind"], name, attack_label(name), f"{entry['mean']:.6f}",
                             "" if entry["std"] is None else f"{entry['std']:.6f}", entry["n_seeds"]])
        for severity, per in row["corruptions"].items():
            for corruption, accuracy in per.items():
                writer.writerow([row["label"], row["kind"], f"{severity}/{corruption}", corruption,
                                 f"{accuracy:.6f}", "", len(row["seeds"])])
    return buffer.getvalue()


def write_reports(out, report_dir=None, title="Comparison"):
    """Collect, aggregate and write comparison.{md,json,csv} to ``report_dir`` (default ``<out>/report``).

    :return: (rows, markdown text); rows is empty when nothing was evaluated yet.
    """
    rows = aggregate(collect(out))
    report_dir = report_dir or os.path.join(out, "report")
    text = markdown(rows, title)
    md, js, cs = (os.path.join(report_dir, name) for name in REPORT_NAMES)
    atomic_write_text(text, md)
    atomic_write_text(json.dumps(rows, indent=1) + "\n", js)
    atomic_write_text(csv_text(rows), cs)
    return rows, text
