"""Figures of the benchmarks, drawn with matplotlib's Agg backend (no display needed).

Each figure is a function that takes tensors and a path and writes one PNG atomically. The figures build a
``matplotlib.figure.Figure`` with an Agg canvas directly rather than going through pyplot, so they neither need nor
change the global backend and leave no open figures behind.
"""


import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

#: Colours of the two budgets in budget maps: eps_low (most pixels) and eps (important pixels).
BUDGET_COLOURS = ("#1f3b73", "#ffc20a")
#: Colour of a wrong prediction in titles.
MISCLASSIFIED = "#c0001a"


def fraction_of_255(value):
    """``8/255`` for 8/255, else the number with 4 significant digits."""
    scaled = value * 255
    if abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{value:.4g}"


def save_figure(fig, path, dpi=150):
    """Write ``fig`` as a PNG to ``path`` atomically."""
    from art_part.checkpoint import atomic_write

    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _hwc(image):
    """(C, H, W) tensor or array in [0, 1] -> (H, W, C) float array clipped to [0, 1]."""
    array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image, dtype=float)
    return np.clip(array.transpose(1, 2, 0), 0, 1)


def _numpy(tensor):
    return tensor.detach().cpu().float().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, dtype=float)


def attack_grid(path, images, labels, preds, cams, budgets, perturbations, adv_preds, eps, eps_low, class_names,
                attack_name="Pixel-AG", title=None, dpi=150):
    """One column per image, four rows: the clean image, its CAM, its Pixel-AG budget and its perturbation.

    :param path: PNG to write.
    :param images: clean images (K, 3, H, W) in [0, 1].
    :param labels: true classes (K,).
    :param preds: the model's predictions on the clean images (K,).
    :param cams: class activation maps (K, H, W) in [0, 1], overlaid on the images with the ``jet`` colormap.
    :param budgets: per-pixel budgets (K, 1, H, W) (or (K, 3, H, W), shown as their channel maximum) of values
        ``eps`` / ``eps_low``.
    :param perturbations: adversarial minus clean images (K, 3, H, W). Shown as the size of each pixel's
        perturbation, max over channels of ``|delta|``, in units of 1/255 on a colour scale from 0 to ``eps``, with
        the outline of the full-budget region drawn over it: an L-inf attack with sign steps fills its box almost
        everywhere, so a magnified signed image is saturated noise, while the size shows where the budget differs.
    :param adv_preds: the model's predictions on the adversarial images (K,).
    :param eps: budget of the important pixels; :param eps_low: budget of the others.
    :param class_names: names indexed by class.
    :return: ``path``.
    """
    k = len(images)
    fig = Figure(figsize=(1.55 * k + 2.2, 7.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, k + 1, width_ratios=[1] * k + [0.28])
    axes = np.array([[fig.add_subplot(grid[i, j]) for j in range(k)] for i in range(4)])
    budget_cmap = ListedColormap(BUDGET_COLOURS)
    rows = (
        "clean image",
        "GradCAM\n(predicted class)",
        f"{attack_name} budget\n(rule \"cam\")",
        f"{attack_name}\nperturbation size",
    )
    cam_image = size_image = None
    for j in range(k):
        label, pred, adv = int(labels[j]), int(preds[j]), int(adv_preds[j])
        image = _hwc(images[j])

        ax = axes[0, j]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"true: {class_names[label]}\npred: {class_names[pred]}", fontsize=9,
                     color="black" if pred == label else MISCLASSIFIED)

        ax = axes[1, j]
        ax.imshow(image, interpolation="nearest")
        cam_image = ax.imshow(_numpy(cams[j]), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")

        ax = axes[2, j]
        budget = _numpy(budgets[j]).max(axis=0)
        ax.imshow(budget, cmap=budget_cmap, vmin=eps_low, vmax=eps, interpolation="nearest")
        share = float((budget >= eps - 1e-9).mean())
        ax.set_title(f"{share:.0%} at {fraction_of_255(eps)}", fontsize=8)

        ax = axes[3, j]
        size = np.abs(_numpy(perturbations[j])).max(axis=0) * 255
        size_image = ax.imshow(size, cmap="magma", vmin=0, vmax=eps * 255, interpolation="nearest")
        if 0 < share < 1:
            ax.contour(budget >= eps - 1e-9, levels=[0.5], colors="#7fd4ff", linewidths=0.9)
        ax.set_title(f"adv: {class_names[adv]}", fontsize=9, color="black" if adv == label else MISCLASSIFIED)

    for i, row in enumerate(axes):
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(rows[i], fontsize=9)

    side = [fig.add_subplot(grid[i, k]) for i in range(4)]
    side[0].axis("off")
    side[0].text(0, 0.5, "red: wrong\nprediction", color=MISCLASSIFIED, fontsize=8, va="center")
    fig.colorbar(cam_image, cax=side[1].inset_axes([0.0, 0.05, 0.22, 0.9]), label="CAM (0-1)")
    side[1].axis("off")
    side[2].axis("off")
    side[2].legend(
        handles=[Patch(color=BUDGET_COLOURS[1], label=f"eps {fraction_of_255(eps)}\n(important)"),
                 Patch(color=BUDGET_COLOURS[0], label=f"eps_low {fraction_of_255(eps_low)}")],
        loc="center left", fontsize=8, frameon=False)
    fig.colorbar(size_image, cax=side[3].inset_axes([0.0, 0.05, 0.22, 0.9]),
                 label="max |delta| (/255)\nblue line: eps region")
    side[3].axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=dpi)


# ------------------------------------------------------------------------------------------------ benchmark plots


def robust_key(row_values):
    """The robustness axis: AA when evaluated, else PGD-20, else the PGD with most steps (None: no robust value)."""
    if "aa" in row_values:
        return "aa"
    if "pgd-20" in row_values:
        return "pgd-20"
    steps = [int(name[4:]) for name in row_values if name.startswith("pgd-") and name[4:].isdigit()]
    return f"pgd-{max(steps)}" if steps else None


def _axis_name(key):
    return "AutoAttack" if key == "aa" else key.upper()


def accuracy_interval(value, confidence=0.95):
    """95 % interval of one row's accuracy, in [0, 1], and how it was made.

    One seed: Wilson's binomial interval at the evaluation's n images. Several seeds: Student's t interval of the
    mean over seeds (the seed-to-seed spread is the larger uncertainty of a training method; with 2 seeds it is
    wide, honestly so). Returns (low, high, "binomial" | "t over seeds").

    :param value: ``row["values"][name]`` of :func:`benchmarks.report.aggregate`: mean, std, n_seeds, n (per seed).
    """
    from .statistics import wilson_interval

    mean, seeds = value["mean"], value.get("n_seeds") or 1
    if seeds > 1 and value.get("std") is not None:
        from scipy.stats import t

        half = float(t.ppf(0.5 + confidence / 2, seeds - 1)) * value["std"] / seeds ** 0.5
        return max(mean - half, 0.0), min(mean + half, 1.0), "t over seeds"
    n = next((n for n in (value.get("n") or []) if n), None)
    if not n:
        return mean, mean, "none"
    return (*wilson_interval(round(mean * n), n, confidence), "binomial")


#: Smallest span of each trade-off axis, in points: a few images of difference must not fill the frame.
MIN_TRADEOFF_SPAN = 10.0


def tradeoff_scatter(path, rows, dpi=150, min_span=MIN_TRADEOFF_SPAN):
    """Accuracy-robustness trade-off: natural accuracy against AA (or PGD-20) robust accuracy, one point per model,
    with 95 % intervals on both axes (:func:`accuracy_interval`). Rows with ``row["curve"]`` (e.g. the mixtures of
    the ``mixing`` experiment) are joined by a line in the order of ``row["curve_position"]``.

    Both axes have the same scale (one point of accuracy is as long on either) and span at least ``min_span``
    points, so that a difference of a few images does not look like a strong trade-off. The number of images and
    the seeds are written on the figure. ``rows`` as :func:`benchmarks.report.aggregate` returns them.
    """
    points = [r for r in rows if "natural" in r["values"] and robust_key(r["values"])]
    if not points:
        raise ValueError("tradeoff_scatter: no model has both natural and robust (AA or PGD) accuracy")
    key = robust_key(points[0]["values"])
    points = [r for r in points if key in r["values"]]
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    kinds, ns, seeds, lows, highs = set(), set(), set(), [], []
    curves, labelled = {}, []
    for row in points:
        nat, rob = row["values"]["natural"], row["values"][key]
        (nl, nh, nk), (rl, rh, rk) = accuracy_interval(nat), accuracy_interval(rob)
        kinds.update((nk, rk))
        ns.update(n for n in (rob.get("n") or []) + (nat.get("n") or []) if n)
        seeds.add(len(row["seeds"]))
        x, y = 100 * rob["mean"], 100 * nat["mean"]
        lows += [100 * rl, 100 * nl]
        highs += [100 * rh, 100 * nh]
        bars = {"xerr": [[x - 100 * rl], [100 * rh - x]], "yerr": [[y - 100 * nl], [100 * nh - y]]}
        if row.get("curve"):
            curves.setdefault(row["curve"], []).append((row.get("curve_position", 0), x, y, row, bars))
            continue
        marker = "s" if row["kind"] == "zoo" else ("D" if "PART" in row["label"] else "o")
        ax.errorbar(x, y, **bars, fmt=marker, capsize=3, markersize=6, label=row["label"], zorder=3)
        labelled.append((x, y, row["label"]))
    placed = {label: (x, y) for x, y, label in labelled}
    for name, members in curves.items():
        # A mixture at alpha 0 or 1 is its branch itself: when not evaluated, the branches' own points end the line.
        ends = next((m[3].get("curve_ends") for m in members if m[3].get("curve_ends")), None) or ()
        for position, label in zip((0.0, 1.0), ends):
            if label in placed and all(m[0] != position for m in members):
                members.append((position, *placed[label], None, None))
        members.sort(key=lambda m: m[0])
        line, = ax.plot([m[1] for m in members], [m[2] for m in members], "-", marker=".", markersize=7,
                        label=name, zorder=2)
        for _, x, y, row, bars in members:
            if row is None:  # a branch's own point, drawn with its intervals above
                continue
            ax.errorbar(x, y, **bars, fmt="none", ecolor=line.get_color(), alpha=0.5, capsize=2, zorder=2)
            if row.get("curve_label"):
                ax.annotate(row["curve_label"], (x, y), textcoords="offset points", xytext=(5, -9), fontsize=7,
                            color=line.get_color())
    # Equal scale on both axes, at least min_span points each, centred on what is drawn.
    xs_lo, xs_hi = min(lows[0::2]), max(highs[0::2])
    ys_lo, ys_hi = min(lows[1::2]), max(highs[1::2])
    span = max(min_span, 1.15 * (xs_hi - xs_lo), 1.15 * (ys_hi - ys_lo))
    for setter, lo, hi in ((ax.set_xlim, xs_lo, xs_hi), (ax.set_ylim, ys_lo, ys_hi)):
        centre = (lo + hi) / 2
        low = min(max(centre - span / 2, 0.0), 100.0 - span)
        setter(low, low + span)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"{_axis_name(key)} robust accuracy (%)")
    ax.set_ylabel("natural accuracy (%)")
    n_text = f"n = {min(ns)}" if len(ns) == 1 else f"n = {min(ns)}-{max(ns)}" if ns else "n unknown"
    seed_text = (f"{next(iter(seeds))} seed{'s' if next(iter(seeds)) > 1 else ''} per model" if len(seeds) == 1
                 else f"{min(seeds)}-{max(seeds)} seeds per model")
    how = " and ".join(sorted(k for k in kinds if k != "none")) or "no interval"
    ax.set_title(f"accuracy-robustness trade-off (up and right is better)\n{n_text} test images, {seed_text}; "
                 f"bars: 95 % intervals ({how})", fontsize=9)
    # Labels beside the points when they are few and apart; a legend when points would share a label's place.
    crowded = len(labelled) > 4 or any(abs(a[0] - b[0]) < 0.12 * span and abs(a[1] - b[1]) < 0.05 * span
                                       for i, a in enumerate(labelled) for b in labelled[i + 1:])
    if not crowded:
        for x, y, label in labelled:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if curves or crowded:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=dpi)


def eps_low_sweep(path, rows, dpi=150):
    """Paper Figure 4: natural and PGD-20 accuracy of PART against eps_low, one panel per eps, AT dashed."""
    by_eps = {}
    for row in rows:
        spec = row["spec"]
        by_eps.setdefault(round(spec["eps"] * 255), []).append(row)
    panels = sorted(by_eps, reverse=True)
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, eps in zip(axes, panels):
        part = sorted((r for r in by_eps[eps] if r["spec"]["method"] == "part"),
                      key=lambda r: -r["spec"]["eps_low"])
        plain = [r for r in by_eps[eps] if r["spec"]["method"] == "at"]
        xs = [round(r["spec"]["eps_low"] * 255) for r in part]
        for key, colour in (("natural", "#1f77b4"), ("pgd-20", "#d62728")):
            ys = [100 * r["values"][key]["mean"] if key in r["values"] else np.nan for r in part]
            sd = [100 * (r["values"][key]["std"] or 0) if key in r["values"] else 0 for r in part]
            ax.plot(xs, ys, "-o", color=colour, label=f"PART {'natural' if key == 'natural' else 'PGD-20'}")
            ax.fill_between(xs, np.subtract(ys, sd), np.add(ys, sd), color=colour, alpha=0.15)
            if plain and key in plain[0]["values"]:
                ax.axhline(100 * plain[0]["values"][key]["mean"], color=colour, linestyle="--",
                           label=f"AT {'natural' if key == 'natural' else 'PGD-20'}")
        ax.set_xlabel("eps_low (/255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"eps = {eps}/255", fontsize=10)
        if xs:
            ax.set_xticks(xs)
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    return save_figure(fig, path, dpi=dpi)


def cam_comparison_grid(path, models, images, labels, class_names=None, dpi=150, title=None):
    """Paper Figure 2: GradCAM of each model (rows, e.g. AT then PART) on the same images (columns), for the
    predicted class, over the image with the ``jet`` colormap. Each column is titled with the true class; each CAM
    with the model's prediction, in red when it is wrong (the figure's legend says so).

    The colorbar sits in a column of its own, so every row of images has the same width and the rows line up.

    :param models: list of (label, model) with models on the images' device, in eval mode.
    :param images: (K, 3, H, W) in [0, 1]; :param labels: (K,) true classes.
    :param title: figure title; None: a default that names the CAM and the images.
    """
    import torch

    from torchattacks_part import cam_maps

    from .data import CIFAR10_CLASSES

    names = class_names or CIFAR10_CLASSES

    def name(index):
        return names[index] if index < len(names) else str(index)

    k, rows = len(images), len(models) + 1
    fig = Figure(figsize=(1.5 * k + 1.6, 1.65 * rows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, k + 1, width_ratios=[1] * k + [0.09])
    axes = np.array([[fig.add_subplot(grid[i, j]) for j in range(k)] for i in range(rows)])
    for j in range(k):
        axes[0, j].imshow(_hwc(images[j]), interpolation="nearest")
        axes[0, j].set_title(f"true: {name(int(labels[j]))}", fontsize=9)
    cam_image = None
    for i, (label, model) in enumerate(models, start=1):
        cams = cam_maps(model, images)
        with torch.no_grad():
            preds = model(images).argmax(dim=1)
        for j in range(k):
            axes[i, j].imshow(_hwc(images[j]), interpolation="nearest")
            cam_image = axes[i, j].imshow(_numpy(cams[j]), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                                          interpolation="bilinear")
            pred = int(preds[j])
            axes[i, j].set_title(f"pred: {name(pred)}", fontsize=8,
                                 color="black" if pred == int(labels[j]) else MISCLASSIFIED)
        axes[i, 0].set_ylabel(label, fontsize=9)
    axes[0, 0].set_ylabel("image", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    legend_ax = fig.add_subplot(grid[0, k])
    legend_ax.axis("off")
    legend_ax.text(0, 0.5, "red: wrong\nprediction", color=MISCLASSIFIED, fontsize=7, va="center")
    if cam_image is not None:
        fig.colorbar(cam_image, cax=fig.add_subplot(grid[1:, k]), label="GradCAM of the predicted class")
    fig.suptitle(title or f"GradCAM of each model on the first {k} test images (predicted class)", fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def paired_differences(path, comparisons, title=None, dpi=150):
    """Paired differences between models on the same test images: one panel per comparison (second - first, e.g.
    PART - AT), one line per attack: the difference pooled over seeds, in points, with its 95% interval
    (Newcombe's, :mod:`benchmarks.statistics`) as error bars, the per-seed differences as small open circles, a zero
    line, and n, seeds and the McNemar p written beside each line. Lines whose interval excludes 0 are drawn in
    colour, the others in grey.

    :param comparisons: list of {"first": label, "second": label, "entries": [...]} with the entries of
        :func:`benchmarks.report.add_statistics` (``row["paired"]`` items; those without a pooled result are left
        out).
    :return: ``path``.
    """
    from .report import p_text, points

    panels = [(c, [e for e in c["entries"] if e.get("pooled")]) for c in comparisons]
    panels = [(c, entries) for c, entries in panels if entries]
    if not panels:
        raise ValueError("paired_differences: no comparison with a pooled result")
    columns = 1 if len(panels) < 4 else 2
    rows = -(-len(panels) // columns)
    tallest = max(len(entries) for _, entries in panels)
    fig = Figure(figsize=(7.6 * columns, rows * (0.42 * tallest + 1.3) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax, (comparison, entries) in zip(axes, panels):
        ys = np.arange(len(entries))[::-1]
        seeds_all = sorted({s for e in entries for s in e["pooled"]["seeds"]})
        for y, entry in zip(ys, entries):
            pooled = entry["pooled"]
            colour = "#1f5fa8" if pooled["distinguishable"] else "#8c8c8c"
            mid, low, high = 100 * pooled["difference"], 100 * pooled["low"], 100 * pooled["high"]
            ax.errorbar(mid, y, xerr=[[mid - low], [high - mid]], fmt="o", color=colour, ecolor=colour,
                        elinewidth=2, capsize=4, markersize=6, zorder=3)
            if len(entry["seeds"]) > 1:
                ax.plot([100 * d["difference"] for d in entry["seeds"]], [y - 0.22] * len(entry["seeds"]), "o",
                        mfc="none", mec=colour, markersize=4, alpha=0.8, zorder=2)
            p = p_text(pooled["p"])
            ax.annotate(f"{points(pooled['difference'])} [{points(pooled['low'])}, {points(pooled['high'])}]  "
                        f"p {p if p.startswith('<') else '= ' + p}", xy=(1.0, y), xycoords=("axes fraction", "data"),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=8, color=colour)
        ns = [entry["seeds"][0]["n"] if len({d["n"] for d in entry["seeds"]}) == 1 else None for entry in entries]
        ax.set_yticks(ys, [f"{entry['label']}\nn = {n} × {len(entry['seeds'])}" if n is not None and
                           len(entry["seeds"]) > 1 else f"{entry['label']}\nn = {entry['pooled']['n']}"
                           for entry, n in zip(entries, ns)], fontsize=8)
        ax.axvline(0, color="black", linewidth=1, zorder=1)
        ax.set_ylim(-0.7, len(entries) - 0.3)
        lo = min(100 * e["pooled"]["low"] for e in entries)
        hi = max(100 * e["pooled"]["high"] for e in entries)
        lo = min(lo, *(100 * d["difference"] for e in entries for d in e["seeds"]), 0)
        hi = max(hi, *(100 * d["difference"] for e in entries for d in e["seeds"]), 0)
        pad = 0.08 * (hi - lo or 1)
        ax.set_xlim(lo - pad, hi + pad)
        seeds_text = f"seed {seeds_all[0]}" if len(seeds_all) == 1 else "seeds " + ", ".join(map(str, seeds_all))
        ax.set_title(f"{comparison['second']} \u2212 {comparison['first']}  ({seeds_text})", fontsize=10)
        ax.set_xlabel("accuracy difference (points), pooled over seeds, with Newcombe's 95% CI; p: exact McNemar"
                      + ("\nopen circles: single seeds" if len(seeds_all) > 1 else ""), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "Paired differences on the same test images (blue: interval excludes 0)", fontsize=11)
    return save_figure(fig, path, dpi=dpi)
