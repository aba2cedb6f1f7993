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
