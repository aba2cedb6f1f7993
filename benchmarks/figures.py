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
    :param perturbations: adversarial minus clean images (K, 3, H, W); shown as ``0.5 + delta / (2 eps)`` so that
        -eps is black, 0 grey and +eps white in each channel.
    :param adv_preds: the model's predictions on the adversarial images (K,).
    :param eps: budget of the important pixels; :param eps_low: budget of the others.
    :param class_names: names indexed by class.
    :return: ``path``.
    """
    k = len(images)
    fig = Figure(figsize=(1.55 * k + 1.9, 7.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, k, squeeze=False)
    budget_cmap = ListedColormap(BUDGET_COLOURS)
    magnification = 0.5 / eps if eps > 0 else 1.0
    rows = (
        "clean image",
        "GradCAM\n(predicted class)",
        f"{attack_name} budget\n(rule \"cam\")",
        f"{attack_name} perturbation\n(x{magnification:.0f}, grey = 0)",
    )
    cam_image = None
    for j in range(k):
        label, pred, adv = int(labels[j]), int(preds[j]), int(adv_preds[j])
        image = _hwc(images[j])

        ax = axes[0, j]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"true {class_names[label]}\npred {class_names[pred]}", fontsize=9,
                     color="black" if pred == label else "#c0001a")

        ax = axes[1, j]
        ax.imshow(image, interpolation="nearest")
        cam_image = ax.imshow(_numpy(cams[j]), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")

        ax = axes[2, j]
        budget = _numpy(budgets[j]).max(axis=0)
        ax.imshow(budget, cmap=budget_cmap, vmin=eps_low, vmax=eps, interpolation="nearest")
        share = float((budget >= eps - 1e-9).mean())
        ax.set_title(f"{share:.0%} at {fraction_of_255(eps)}", fontsize=8)

        ax = axes[3, j]
        delta = _numpy(perturbations[j]).transpose(1, 2, 0)
        ax.imshow(np.clip(0.5 + delta * magnification, 0, 1), interpolation="nearest")
        ax.set_title(f"adv: {class_names[adv]}", fontsize=9, color="black" if adv == label else "#c0001a")

    for i, row in enumerate(axes):
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(rows[i], fontsize=9)

    fig.colorbar(cam_image, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01, label="CAM")
    axes[2, -1].legend(
        handles=[Patch(color=BUDGET_COLOURS[1], label=f"eps {fraction_of_255(eps)}\n(important)"),
                 Patch(color=BUDGET_COLOURS[0], label=f"eps_low {fraction_of_255(eps_low)}")],
        loc="center left", bbox_to_anchor=(1.04, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=dpi)


# ------------------------------------------------------------------------------------------------ benchmark plots


def _robust_key(row_values):
    """The robustness axis: AA when evaluated, else PGD-20."""
    return "aa" if "aa" in row_values else "pgd-20"


def tradeoff_scatter(path, rows, dpi=150):
    """Accuracy-robustness trade-off: natural accuracy against AA (or PGD-20) robust accuracy, one point per model
    (error bars: std over seeds). ``rows`` as :func:`benchmarks.report.aggregate` returns them."""
    points = [r for r in rows if "natural" in r["values"] and _robust_key(r["values"]) in r["values"]]
    key = _robust_key(points[0]["values"]) if points else "pgd-20"
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in points:
        nat, rob = row["values"]["natural"], row["values"][key]
        marker = "s" if row["kind"] == "zoo" else ("o" if "PART" not in row["label"] else "D")
        ax.errorbar(100 * rob["mean"], 100 * nat["mean"], xerr=100 * (rob["std"] or 0), yerr=100 * (nat["std"] or 0),
                    fmt=marker, capsize=3, label=row["label"])
        ax.annotate(row["label"], (100 * rob["mean"], 100 * nat["mean"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.margins(0.25)  # room for the labels
    ax.set_xlabel(f"{'AA' if key == 'aa' else 'PGD-20'} robust accuracy (%)")
    ax.set_ylabel("natural accuracy (%)")
    ax.set_title("accuracy-robustness trade-off (up and right is better)", fontsize=10)
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


def cam_comparison_grid(path, models, images, labels, class_names=None, dpi=150):
    """Paper Figure 2: GradCAM of each model (rows, e.g. AT then PART) on the same images (columns), for the
    predicted class, over the image with the ``jet`` colormap.

    :param models: list of (label, model) with models on the images' device, in eval mode.
    :param images: (K, 3, H, W) in [0, 1]; :param labels: (K,) true classes.
    """
    import torch

    from torchattacks_part import cam_maps

    from .data import CIFAR10_CLASSES

    names = class_names or CIFAR10_CLASSES
    k = len(images)
    fig = Figure(figsize=(1.5 * k + 1.4, 1.6 * (len(models) + 1) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models) + 1, k, squeeze=False)
    for j in range(k):
        axes[0, j].imshow(_hwc(images[j]), interpolation="nearest")
        axes[0, j].set_title(names[int(labels[j])] if int(labels[j]) < len(names) else str(int(labels[j])),
                             fontsize=9)
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
            axes[i, j].set_title(f"pred {names[pred] if pred < len(names) else pred}", fontsize=8,
                                 color="black" if pred == int(labels[j]) else "#c0001a")
        axes[i, 0].set_ylabel(label, fontsize=9)
    axes[0, 0].set_ylabel("image", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if cam_image is not None:
        fig.colorbar(cam_image, ax=axes[1:, :].ravel().tolist(), fraction=0.02, pad=0.01, label="GradCAM")
    return save_figure(fig, path, dpi=dpi)

