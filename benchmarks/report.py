"""``part-bench compare``: side-by-side tables from saved evaluations, as Markdown, JSON and CSV.

Every ``eval.json`` under ``<out>/runs/*/`` (our models) and ``<out>/zoo/*/`` (RobustBench models) becomes one
evaluated model; models with the same label (seeds of one run) become one row with the mean and the sample
standard deviation (n - 1) over seeds, as the paper's "averaged results and standard deviations of three runs".
Rows keep the experiment's order; zoo models follow. A failed trust check is flagged in the row and listed in its
own table.

From the per-image outcomes saved with each result (``survived``, :mod:`benchmarks.outcomes`) the report adds
(:mod:`benchmarks.statistics` has the formulas):

* the worst case over the attacks inside the threat model (eps 8/255, natural included), per seed, as a column;
* an attack-agreement table per model label, summed over its seeds: how many images one attack breaks that
  another misses;
* paired comparisons of every two rows evaluated on the same test images (same ``n`` and image hash), per attack
  and per seed and pooled over seeds: difference in points, Newcombe's 95% interval, the exact McNemar p-value;
* with ``model_info`` (RobustBench's ``model_info`` folder), RobustBench's reported accuracies of zoo models next
  to ours (:mod:`benchmarks.leaderboard`), and a leaderboard entry for each of our models.

Results of older files without ``survived`` / ``images`` / ``max_eps`` are left out of these and listed as such.
"""

import csv
import io
import json
import math
import os

from art_part.checkpoint import atomic_write_text

from . import UsageError
from . import statistics as st
from .evaluate import RESULTS_FILE, attack_label, read_json, read_results
from .train import RUN_FILE

REPORT_NAMES = ("comparison.md", "comparison.json", "comparison.csv")


def collect(out):
    """One dict per evaluated model under ``out`` (``runs/*/``, ``checkpoints/*/`` (loose checkpoints evaluated by
    path), ``zoo/*/``): label, seed, kind ("ours"/"zoo"), order, spec, settings, config, folder, results."""
    models = []
    for kind in ("runs", "checkpoints", "mixtures", "zoo"):
        root = os.path.join(out, kind)
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name, RESULTS_FILE)
            if not os.path.exists(path):
                continue
            stored = read_results(path)  # a corrupt or edited file: one line naming it, nothing written
            meta = stored["config"]
            run = {}  # our runs: the training record gives the experiment's order and the run's settings
            run_path = os.path.join(root, name, RUN_FILE)
            if os.path.exists(run_path):
                run = read_json(run_path, "run.json")
            models.append({"label": meta.get("label", name), "seed": meta.get("train_seed", 0),
                           "kind": "zoo" if kind == "zoo" else "ours", "order": run.get("order", 10**6),
                           "spec": run.get("spec"), "settings": run.get("settings"), "config": meta,
                           "folder": os.path.join(root, name), "results": stored["results"],
                           "training": _last_epoch(os.path.join(root, name, LOG_FILE))})
    models.sort(key=lambda m: (m["kind"] != "ours", m["order"], m["label"], m["seed"]))
    return models


#: The trainer's JSON-lines log in a run folder (art_part.trainer.LOG_NAME).
LOG_FILE = "log.jsonl"


def _last_epoch(path):
    """The training budget of a run's last epoch from its ``log.jsonl``: {"mean_budget", "important_fraction",
    "epoch"}, or None (no log, an unreadable one, or a log written before the trainer recorded ``mean_budget``)."""
    try:
        with open(path) as f:
            last = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
    if not isinstance(last, dict) or not isinstance(last.get("mean_budget"), (int, float)):
        return None
    return {key: last.get(key) for key in ("mean_budget", "important_fraction", "epoch")}


def _mean_std(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(models):
    """Rows: label, kind, seeds, spec, settings, per-attack {mean, std, n_seeds, n}, CIFAR-10-C per corruption, trust
    flags; and from the per-image outcomes (:func:`add_statistics`) worst_case, agreement, paired and
    missing_outcomes."""
    rows = {}
    for model in models:
        row = rows.setdefault(model["label"], {"label": model["label"], "kind": model["kind"], "seeds": [],
                                               "spec": model["spec"], "settings": model.get("settings"),
                                               "config": model.get("config") or {}, "values": {}, "n": {},
                                               "corruptions": {}, "trust": {}, "failed": set()})
        row["seeds"].append(model["seed"])
        if model.get("training"):
            row.setdefault("training", []).append(model["training"])
        for name, result in model["results"].items():
            if "/" in name:  # one corruption; its severity's mean is the main entry
                continue
            if "checks" in result:
                for check in result["checks"]:
                    row["trust"].setdefault(check["check"], []).append(check["status"])
                row["failed"].update(result["failed"])
                continue
            row["values"].setdefault(name, []).append(result["accuracy"])
            row["n"].setdefault(name, []).append(result.get("n"))
            for corruption, accuracy in result.get("per_corruption", {}).items():
                row["corruptions"].setdefault(name, {}).setdefault(corruption, []).append(accuracy)
    out = []
    for row in rows.values():
        values = {name: dict(zip(("mean", "std"), _mean_std(v)), n_seeds=len(v), n=row["n"][name])
                  for name, v in row["values"].items()}
        corruptions = {sev: {c: _mean_std(v)[0] for c, v in per.items()} for sev, per in row["corruptions"].items()}
        trust = {check: ("failed" if "failed" in s else "passed" if all(x == "passed" for x in s) else "not run")
                 for check, s in row["trust"].items()}
        config = row["config"]
        out.append({"label": row["label"], "kind": row["kind"], "seeds": row["seeds"], "spec": row["spec"],
                    "settings": row["settings"], "dataset": config.get("dataset"),
                    "forward_passes": config.get("forward_passes", 1),
                    "training_budget": _training_budget(row.get("training")),
                    **{key: config[key] for key in ("curve", "curve_position", "curve_label") if key in config},
                    **({"curve_ends": [config["mixture"]["accurate"]["label"], config["mixture"]["robust"]["label"]]}
                       if isinstance(config.get("mixture"), dict) else {}),
                    "eps": config.get("eps", DEFAULT_EPS), "values": values, "corruptions": corruptions,
                    "trust": trust, "failed": sorted(row["failed"])})
    add_statistics(out, models)
    return out


# ------------------------------------------------------------------------------------ statistics of the outcomes

#: The threat model's budget when an evaluation does not store it (files of before ``config["eps"]``).
DEFAULT_EPS = 8 / 255
WORST = "worst-case"


def eps_text(value):
    """``8/255`` for 8/255, else the number with 4 significant digits."""
    scaled = value * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-3 else f"{value:.4g}"


def _is_attack(name, result):
    """Attacks whose outcomes the statistics use: not the corruptions (nor their mean) and not the trust checks."""
    return ("/" not in name and not name.startswith("cifar10c") and isinstance(result, dict)
            and "checks" not in result and "accuracy" in result)


def _usable(model):
    """(results with readable outcomes, names without outcomes, problems): malformed outcomes are dropped with a
    note, never an error."""
    results, missing, problems = {}, [], []
    for name, result in model["results"].items():
        if not _is_attack(name, result):
            continue
        if "survived" not in result or result.get("images") is None:
            missing.append(name)
            continue
        try:
            st.outcome(result)
        except ValueError as error:
            problems.append(f"{model['label']} seed {model['seed']} {name}: {error}")
            continue
        results[name] = result
    return results, missing, problems


def _attack_title(name, results=(), eps=DEFAULT_EPS):
    if name == WORST:
        return f"Worst case (eps {eps_text(eps)})"
    for result in results:
        if isinstance(result, dict) and result.get("label"):
            return result["label"]
    return attack_label(name)


def _public(entry):
    return {k: v for k, v in entry.items() if k != "survived"}


def add_statistics(rows, models):
    """Attach the statistics of the per-image outcomes to ``rows`` (in place):

    * ``worst_case``: {mean, std, n_seeds, eps, per_seed: [{seed, accuracy, correct, n, images, attacks}]} or None;
    * ``agreement``: {attacks, seeds, cells: [{breaks, misses, count, n}]}, counts and n summed over the seeds;
    * ``paired``: on the later of every two rows, one entry per attack evaluated by both on the same images:
      {versus (the earlier row's label), attack, label, seeds: [per seed: seed, n, a, b, c, d, difference, low,
      high, p, distinguishable], pooled: (the same, pooled over the seeds, plus p_images), skipped: [why]};
      ``difference`` is this row minus ``versus``, a fraction;
    * ``missing_outcomes``: attack names with no per-image outcomes (older files); ``outcome_problems``: notes.
    """
    by_label = {}
    for model in models:
        by_label.setdefault(model["label"], {}).setdefault(model["seed"], model)  # first of a repeated seed
    usable = {}
    for row in rows:
        missing, problems, worst, agreement = set(), [], [], {}
        seeds = by_label.get(row["label"], {})
        names = set()
        for seed, model in seeds.items():
            results, miss, probs = _usable(model)
            usable[(row["label"], seed)] = (results, model["config"].get("eps", DEFAULT_EPS))
            missing.update(miss)
            problems += probs
            names.update(results)
        ordered = sorted(names, key=_column_key)
        for seed, model in seeds.items():
            results, eps = usable[(row["label"], seed)]
            try:
                entry = st.worst_case(results, eps)
            except ValueError as error:
                problems.append(f"{row['label']} seed {seed} worst case: {error}")
                entry = None
            if entry is not None:
                worst.append({"seed": seed, **_public(entry)})
            for cell in st.attack_agreement(results, ordered)["cells"]:
                total = agreement.setdefault((cell["breaks"], cell["misses"]), {"count": 0, "n": 0, "seeds": 0})
                total["count"] += cell["count"]
                total["n"] += cell["n"]
                total["seeds"] += 1
        if worst:
            mean, std = _mean_std([w["accuracy"] for w in worst])
            row["worst_case"] = {"mean": mean, "std": std, "n_seeds": len(worst), "eps": worst[0]["eps"],
                                 "per_seed": worst}
        else:
            row["worst_case"] = None
        present = [a for a in ordered if any((a, b) in agreement for b in ordered)]
        row["agreement"] = {"attacks": present, "seeds": len(seeds),
                            "cells": [{"breaks": x, "misses": y, **agreement[(x, y)]}
                                      for x in present for y in present if (x, y) in agreement]}
        row["missing_outcomes"] = sorted(missing, key=_column_key)
        row["outcome_problems"] = problems
        row["paired"] = []
    for j, second in enumerate(rows):
        for first in rows[:j]:
            second["paired"] += _paired(first, second, usable)


def _paired(first, second, usable):
    """The paired comparisons of row ``second`` against the earlier row ``first`` (second - first)."""
    seeds = [s for s in dict.fromkeys(first["seeds"]) if s in set(second["seeds"])]
    if not seeds:
        return []
    per_seed = {s: (usable[(first["label"], s)], usable[(second["label"], s)]) for s in seeds}
    attacks = sorted({name for (ra, _), (rb, _) in per_seed.values() for name in ra if name in rb}, key=_column_key)
    entries = []
    for name in attacks + [WORST]:
        vectors, details, skipped = [], [], []
        titles = []
        for seed in seeds:
            (ra, eps_a), (rb, eps_b) = per_seed[seed]
            if name == WORST:
                # the same attacks on both sides, else the worst cases are not comparable
                common = [a for a in ra if a in rb]
                try:
                    wa, wb = st.worst_case(ra, eps_a, attacks=common), st.worst_case(rb, eps_b, attacks=common)
                except ValueError as error:
                    skipped.append(f"seed {seed}: {error}")
                    continue
                if wa is None or wb is None:
                    continue
                a, b = dict(wa, survived=None), dict(wb, survived=None)
                va, vb = wa["survived"], wb["survived"]
                extra = {"attacks": wa["attacks"]}
            else:
                if name not in ra or name not in rb:
                    continue
                a, b = ra[name], rb[name]
                titles += [a, b]
                va, vb = st.outcome(a), st.outcome(b)
                extra = {}
            try:
                st.check_same_images(a, b, f"{first['label']} seed {seed}", f"{second['label']} seed {seed}")
            except ValueError as error:
                skipped.append(str(error))
                continue
            vectors.append((va, vb))
            details.append({"seed": seed, **st.paired_difference(va, vb), **extra})
        if not vectors:
            if skipped:
                entries.append({"versus": first["label"], "attack": name, "label": _attack_title(name, titles),
                                "seeds": [], "pooled": None, "skipped": skipped})
            continue
        pooled = st.pooled_comparison(vectors)
        pooled["seeds"] = [d["seed"] for d in details]
        entries.append({"versus": first["label"], "attack": name,
                        "label": _attack_title(name, titles, second["eps"]), "seeds": details, "pooled": pooled,
                        "skipped": skipped})
    return entries


_KINDS = ("natural", "pgd", "pgd-last", "mma", "mma-part", "aa", "adaptive-pgd", "adaptive-mma", "background-pgd",
          "background-mma", "cifar10c", "trust")


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


def _training_budget(records):
    """Mean over seeds of the last epoch's mean per-entry budget and full-eps fraction, or None."""
    if not records:
        return None
    fractions = [r["important_fraction"] for r in records if isinstance(r.get("important_fraction"), (int, float))]
    return {"mean_budget": sum(r["mean_budget"] for r in records) / len(records),
            "important_fraction": sum(fractions) / len(fractions) if fractions else None,
            "epoch": records[0].get("epoch"), "seeds": len(records)}


def _training_markdown(rows):
    """A table of the budgets the runs trained with (their last epoch), when some row differs from eps: the rules
    compared at a known average budget."""
    trained = [row for row in rows if row.get("training_budget")]
    if not any(abs(row["training_budget"]["mean_budget"] - row.get("eps", DEFAULT_EPS)) > 1e-9 for row in trained):
        return []
    lines = ["", "### Training budgets (last epoch)", "",
             "Mean per-entry L-inf budget of the training attacks in the last epoch (in /255; AT: eps everywhere) "
             "and the fraction of entries at the full eps.", "",
             "| model | mean budget (/255) | entries at full eps |", "|---|---:|---:|"]
    for row in trained:
        budget = row["training_budget"]
        fraction = budget["important_fraction"]
        lines.append(f"| {row['label']} | {255 * budget['mean_budget']:.3f} | "
                     f"{'-' if fraction is None else f'{100 * fraction:.1f}%'} |")
    return lines


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
    """The Markdown report: the accuracy table (with the worst case), CIFAR-10-C per corruption, trust checks, the
    attack agreement, the paired comparisons and, when checked, RobustBench's reported accuracies."""
    columns = _columns(rows)
    worst = any(row.get("worst_case") for row in rows)
    eps = next((row["worst_case"]["eps"] for row in rows if row.get("worst_case")), DEFAULT_EPS)
    lines = [f"## {title}", "", "Accuracy (%) on the evaluated test images; mean ± sample std over seeds when "
             "several. eps = 8/255 for every attack; adaptive attacks use 12/255 on the CAM's important pixels and "
             "8/255 elsewhere.", ""]
    header = ["model", "seeds", *(attack_label(c) for c in columns),
              *([_attack_title(WORST, eps=eps)] if worst else []), "trust checks"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(columns) + worst) + "---|"]
    for row in rows:
        name = row["label"] + (" (RobustBench)" if row["kind"] == "zoo" else "")
        cells = [name, str(len(row["seeds"])), *(_pct(row["values"].get(c)) for c in columns),
                 *([_pct(row.get("worst_case"))] if worst else []), _trust_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _worst_case_notes(rows)
    lines += _training_markdown(rows)
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
    lines += _agreement_markdown(rows)
    lines += _paired_markdown(rows)
    if any("robustbench" in row for row in rows):
        from .leaderboard import markdown_lines

        lines += markdown_lines(rows)
    return "\n".join(lines) + "\n"


def _minus(text):
    return text.replace("-", "\u2212")


def points(value, sign=True):
    """A fraction as signed points with 2 decimals and a true minus sign: 0.0084 -> "+0.84"."""
    return _minus(f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}")


def p_text(p):
    """A p-value for the text: "< 0.001", 3 decimals below 0.1, else 2."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _seeds_text(seeds):
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(str(s) for s in seeds)


def _worst_case_notes(rows):
    lines = []
    described = {}
    for row in rows:
        worst = row.get("worst_case")
        if worst:
            attacks = ", ".join(dict.fromkeys(a for w in worst["per_seed"] for a in w["attacks"]))
            ns = sorted({w["n"] for w in worst["per_seed"]})
            described.setdefault((attacks, tuple(ns)), []).append(row["label"])
    if described:
        eps = next(row["worst_case"]["eps"] for row in rows if row.get("worst_case"))
        parts = [f"{', '.join(labels)}: {attacks} (n = {', '.join(str(n) for n in ns)})"
                 for (attacks, ns), labels in described.items()]
        lines += ["", f"{_attack_title(WORST, eps=eps)}: an image counts as robust only if it survives every attack "
                  f"whose budget is within eps {eps_text(eps)} (natural included), on the first n test images all "
                  "of them evaluated; per seed, then mean ± std over seeds. Attacks: " + "; ".join(parts) + "."]
    missing = [f"{row['label']}: {', '.join(row['missing_outcomes'])}" for row in rows if row.get("missing_outcomes")]
    if missing:
        lines += ["", "No per-image outcomes saved (results of an older evaluation; evaluate again to add them), so "
                  "left out of the worst case, the attack agreement and the paired comparisons: "
                  + "; ".join(missing) + "."]
    problems = [p for row in rows for p in row.get("outcome_problems", [])]
    if problems:
        lines += ["", "Unreadable per-image outcomes, left out: " + "; ".join(problems) + "."]
    return lines


def _agreement_markdown(rows):
    with_table = [row for row in rows if len(row.get("agreement", {}).get("attacks", [])) > 1]
    if not with_table:
        return []
    lines = ["", "### Attack agreement: images the row's attack breaks that the column's attack misses", "",
             "Per model label, counts summed over its seeds, each pair of attacks on the first n test images both "
             "evaluated. A large count in row X, column Y: Y misses adversarial examples X finds; a count in the "
             "Natural row: the column's attack returned a correctly classified image for a misclassified clean one."]
    for row in with_table:
        table = row["agreement"]
        cells = {(c["breaks"], c["misses"]): c for c in table["cells"]}
        ns = {c["n"] for c in table["cells"]}
        one_n = len(ns) == 1
        size = f"n = {next(iter(ns))} image evaluations" if one_n else "count / image evaluations"
        seeds = table["seeds"]
        lines += ["", f"#### {row['label']} ({seeds} seed{'s' if seeds != 1 else ''}, {size})", "",
                  "| breaks \\ misses | " + " | ".join(attack_label(a) for a in table["attacks"]) + " |",
                  "|---|" + "---:|" * len(table["attacks"])]
        for x in table["attacks"]:
            out = []
            for y in table["attacks"]:
                cell = cells.get((x, y))
                out.append("-" if cell is None else str(cell["count"]) if one_n else f"{cell['count']} / {cell['n']}")
            lines.append(f"| {attack_label(x)} | " + " | ".join(out) + " |")
    return lines


def verdict(entry, pooled=False):
    """"distinguishable from zero (p < 0.05)" / "not distinguishable from zero", with the caveats when the interval
    and the exact test, or the pooled and the image-level test, disagree."""
    if entry["distinguishable"]:
        text = ("distinguishable from zero (p < 0.05)" if entry["p"] < 0.05 else
                f"distinguishable from zero by the interval, not by the exact test (p = {p_text(entry['p'])})")
        if pooled and len(entry.get("seeds", [])) > 1 and entry.get("p_images", 0) >= 0.05:
            text += f"; not with the images as units (p = {p_text(entry['p_images'])})"
        return text
    return "not distinguishable from zero"


def sentence(second, entry):
    """"PART − AT, Natural: +0.84 [−0.30, +2.00] points, p = 0.20 (n = 1000, seed 0): not distinguishable from
    zero" for the pooled result of one paired entry."""
    pooled = entry["pooled"]
    p = p_text(pooled["p"])
    return (f"{second} \u2212 {entry['versus']}, {entry['label']}: {points(pooled['difference'])} "
            f"[{points(pooled['low'])}, {points(pooled['high'])}] points, p {p if p.startswith('<') else '= ' + p} "
            f"(n = {pooled['n']}, {_seeds_text(pooled['seeds'])}): {verdict(pooled, pooled=True)}")


def _n_text(entry):
    ns = {d["n"] for d in entry["seeds"]}
    return str(entry["pooled"]["n"]) if len(entry["seeds"]) == 1 or len(ns) > 1 else \
        f"{next(iter(ns))} × {len(entry['seeds'])}"


def _paired_markdown(rows):
    entries = [(row["label"], e) for row in rows for e in row.get("paired", [])]
    if not entries:
        return []
    lines = ["", "### Paired comparisons on the same test images", "",
             "Difference: accuracy of the first-named model minus the second's, in points, on the images both were "
             "evaluated on (same n and image hash). 95% CI: Newcombe's (1998) hybrid score interval for paired "
             "proportions (method 10). p: exact McNemar test (binomial test of the images only one of the two "
             "models gets right). Seeds are paired by training seed and pooled (tables summed); \"p, images as "
             "units\" is the exact sign-flip test with the test image as the unit, valid although every seed "
             "sees the same images. Distinguishable from zero: the interval excludes 0.", "",
             "| comparison | attack | n | difference | 95% CI | McNemar p | p, images as units | per seed | "
             "verdict |", "|---|---|---:|---:|---|---:|---:|---|---|"]
    sentences, skipped = [], []
    for second, entry in entries:
        skipped += [f"{second} vs {entry['versus']}, {entry['label']}: {why}" for why in entry["skipped"]]
        pooled = entry["pooled"]
        if pooled is None:
            continue
        several = len(entry["seeds"]) > 1
        per_seed = "; ".join(f"s{d['seed']}: {points(d['difference'])} [{points(d['low'])}, {points(d['high'])}], "
                             f"p {p_text(d['p'])}" for d in entry["seeds"]) if several else _seeds_text(
            pooled["seeds"])
        lines.append(f"| {second} \u2212 {entry['versus']} | {entry['label']} | {_n_text(entry)} | "
                     f"{points(pooled['difference'])} | [{points(pooled['low'])}, {points(pooled['high'])}] | "
                     f"{p_text(pooled['p'])} | {p_text(pooled['p_images']) if several else '-'} | {per_seed} | "
                     f"{verdict(pooled, pooled=True)} |")
        sentences.append(f"- {sentence(second, entry)}.")
    lines += ["", "In words:", "", *sentences]
    if skipped:
        lines += ["", "Not compared (not on the same images): " + "; ".join(skipped) + "."]
    return lines


#: PART variants and the method each reweights (their baseline in the paired-differences figure).
#: method -> the method it is compared with in the paired-differences figure (a mixture: with its AT branch).
BASELINES = {"part": "at", "part-t": "trades", "part-m": "mart", "mixing": "at"}


def figure_comparisons(rows, limit=6):
    """The comparisons the paired-differences figure shows: each PART variant against its baseline method trained
    with the same eps (PART - AT, PART-T - TRADES, PART-M - MART) when there are such pairs, else every pair;
    at most ``limit``. Each is {"first", "second", "entries"} (the entries of ``row["paired"]`` with a pooled
    result)."""
    specs = {row["label"]: row.get("spec") or {} for row in rows}
    every, baseline = [], []
    for row in rows:
        by_first = {}
        for entry in row.get("paired", []):
            if entry.get("pooled"):
                by_first.setdefault(entry["versus"], []).append(entry)
        for first, entries in by_first.items():
            comparison = {"first": first, "second": row["label"], "entries": entries}
            every.append(comparison)
            a, b = specs.get(first, {}), specs.get(row["label"], {})
            if (b.get("method") in BASELINES and a.get("method") == BASELINES[b["method"]]
                    and a.get("eps") is not None and abs(a["eps"] - b.get("eps", -1)) < 1e-9):
                baseline.append(comparison)
    return (baseline or every)[:limit]


_CSV_COLUMNS = ["model", "kind", "attack", "label", "mean", "std", "seeds", "record", "versus", "seed", "n", "low",
                "high", "p", "p_images", "b", "c", "count", "reported"]


def csv_text(rows):
    """Long format, one line per record (column ``record``):

    * ``accuracy``: one line per (model, attack) with mean, std and the number of seeds (CIFAR-10-C corruptions
      as ``cifar10c-S/<corruption>``); ``worst-case``: the same for the worst case, with n per seed;
    * ``paired``: model minus ``versus`` (the other model) on one attack, per ``seed`` and ``pooled``: mean is the
      difference (a fraction), low/high its 95% interval, p McNemar's, p_images the image-level test (pooled),
      b/c the discordant counts (only versus survives / only model survives), n;
    * ``agreement``: images ``attack`` breaks that ``versus`` (another attack) misses: count, n (summed over seeds);
    * ``robustbench``: a zoo model's measured accuracy (mean, low/high its Clopper-Pearson interval, count the
      correct images, n) next to RobustBench's ``reported`` one (percent), p the exact binomial test.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, _CSV_COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        base = {"model": row["label"], "kind": row["kind"]}
        for name, entry in row["values"].items():
            writer.writerow({**base, "attack": name, "label": attack_label(name), "mean": f"{entry['mean']:.6f}",
                             "std": "" if entry["std"] is None else f"{entry['std']:.6f}",
                             "seeds": entry["n_seeds"], "record": "accuracy"})
        for severity, per in row["corruptions"].items():
            for corruption, accuracy in per.items():
                writer.writerow({**base, "attack": f"{severity}/{corruption}", "label": corruption,
                                 "mean": f"{accuracy:.6f}", "seeds": len(row["seeds"]), "record": "accuracy"})
        worst = row.get("worst_case")
        if worst:
            writer.writerow({**base, "attack": WORST, "label": _attack_title(WORST, eps=worst["eps"]),
                             "mean": f"{worst['mean']:.6f}", "std": "" if worst["std"] is None else
                             f"{worst['std']:.6f}", "seeds": worst["n_seeds"], "record": "worst-case",
                             "n": ";".join(str(w["n"]) for w in worst["per_seed"])})
        for entry in row.get("paired", []):
            if entry["pooled"] is None:
                continue
            for seed, d in [(d["seed"], d) for d in entry["seeds"]] + [("pooled", entry["pooled"])]:
                writer.writerow({**base, "attack": entry["attack"], "label": entry["label"],
                                 "mean": f"{d['difference']:.6f}", "seeds": len(entry["seeds"]),
                                 "record": "paired", "versus": entry["versus"], "seed": seed, "n": d["n"],
                                 "low": f"{d['low']:.6f}", "high": f"{d['high']:.6f}", "p": f"{d['p']:.6g}",
                                 "p_images": f"{d['p_images']:.6g}" if "p_images" in d else "", "b": d["b"],
                                 "c": d["c"]})
        agreement = row.get("agreement") or {"cells": [], "seeds": 0}
        for cell in agreement["cells"]:
            writer.writerow({**base, "attack": cell["breaks"], "label": attack_label(cell["breaks"]),
                             "seeds": cell["seeds"], "record": "agreement", "versus": cell["misses"],
                             "n": cell["n"], "count": cell["count"]})
        for check in row.get("robustbench", []):
            for item in check["checks"]:
                writer.writerow({**base, "attack": item["attack"], "label": item["metric"],
                                 "mean": f"{item['measured']:.6f}", "seeds": 1, "record": "robustbench",
                                 "seed": check["seed"], "n": item["n"], "low": f"{item['low']:.6f}",
                                 "high": f"{item['high']:.6f}", "p": f"{item['p']:.6g}", "count": item["correct"],
                                 "reported": item["reported"]})
    return buffer.getvalue()


def write_reports(out, report_dir=None, title="Comparison", model_info=None):
    """Collect, aggregate and write comparison.{md,json,csv} to ``report_dir`` (default ``<out>/report``), and the
    RobustBench leaderboard entry of each of our models to ``<report_dir>/leaderboard/<label slug>.json``.

    :param model_info: RobustBench's ``model_info`` folder (``<dir>/<dataset>/<threat_model>/<name>.json``): when
        given, zoo models get RobustBench's reported clean and AutoAttack accuracy next to ours
        (:func:`benchmarks.leaderboard.reported_vs_measured`). Nothing is downloaded.
    :return: (rows, markdown text); rows is empty, and nothing is written, when nothing was evaluated yet.
    """
    from . import leaderboard

    if model_info is not None:
        leaderboard.check_model_info_dir(model_info)
    if report_dir is not None and os.path.exists(report_dir) and not os.path.isdir(report_dir):
        raise UsageError(f"--report-dir {report_dir}: is a file, not a folder")
    models = collect(out)
    rows = aggregate(models)
    if not rows:
        return rows, ""
    if model_info is not None:
        leaderboard.attach_reported(rows, models, model_info)
    report_dir = report_dir or os.path.join(out, "report")
    text = markdown(rows, title)
    md, js, cs = (os.path.join(report_dir, name) for name in REPORT_NAMES)
    atomic_write_text(text, md)
    atomic_write_text(json.dumps(rows, indent=1) + "\n", js)
    atomic_write_text(csv_text(rows), cs)
    leaderboard.write_entries(rows, os.path.join(report_dir, "leaderboard"))
    return rows, text
