"""The ``mixing`` experiment: a standard and an adversarially trained model of the same run, mixed in probability
space (:class:`torchattacks_part.mixing.MixedClassifier`; Bai et al., L4DC 2024) at several weights alpha of the
robust branch, each mixture evaluated by the same suite as every other model.

The mixtures are models of their own: each gets a folder ``<out>/mixtures/<dataset>-<accurate>+<robust>-alpha<a>-
seed<s>/`` with its ``eval.json`` and a ``run.json`` naming both branches (label, folder, weights digest), so
``compare`` lists them beside the trained runs, their leaderboard entries say 2 forward passes, and the trade-off
figure draws them as one curve from the standard model (alpha 0) to the robust one (alpha 1).
"""

import json
import os

from art_part.checkpoint import atomic_write_text

from .fingerprint import weights_digest
from .leaderboard import slug
from .train import MODEL_FILE, RUN_FILE, load_model

#: The weights of the robust branch the experiment evaluates.
MIX_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIXTURES_DIR = "mixtures"
#: Methods that can serve as the accurate branch, and the robust branch the curve mixes it with (first found).
ACCURATE_METHODS = ("standard",)
ROBUST_METHODS = ("at", "trades", "mart", "part", "part-t", "part-m")
#: The accurate branch: the experiment's own standard run, or the pretrained CIFAR-10 ResNet-18 of the pyautoattack
#: wheel (about 94 % clean accuracy; nothing downloaded).
ACCURATE_CHOICES = ("standard", "pretrained")
PRETRAINED_LABEL = "ResNet-18 (pretrained)"


def check_alphas(alphas):
    """A non-empty sequence of distinct weights in [0, 1], sorted; ValueError naming ``alphas`` otherwise."""
    from torchattacks_part.mixing import check_alpha

    if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__iter__"):
        raise ValueError(f"alphas must be a sequence of numbers in [0, 1], got {alphas!r}")
    values = [check_alpha(a) for a in alphas]
    if not values or len(set(values)) != len(values):
        raise ValueError(f"alphas must hold at least one weight, each once, got {list(alphas)!r}")
    return tuple(sorted(values))


def alpha_text(alpha):
    """0.25 -> "0.25", 1.0 -> "1"."""
    return f"{alpha:g}"


def check_accurate(accurate, dataset):
    """``accurate`` is one of :data:`ACCURATE_CHOICES`; "pretrained" only on CIFAR-10. ValueError otherwise."""
    if accurate not in ACCURATE_CHOICES:
        raise ValueError(f"accurate must be one of {list(ACCURATE_CHOICES)}, got {accurate!r}")
    if accurate == "pretrained" and dataset != "cifar10":
        raise ValueError(f"accurate 'pretrained' is a CIFAR-10 model; the runs are of {dataset}")
    return accurate


def mixing_pairs(runs, dataset, accurate="standard"):
    """(seed, accurate (folder, record), robust (folder, record)) for each training seed of a ``mixing``
    experiment under ``runs`` (as :func:`benchmarks.pipeline.trained_runs` lists them): its standard run (or, with
    ``accurate="pretrained"``, (None, None): the pretrained ResNet-18) and its first adversarially trained run (AT
    before the others) of the same seed and dataset."""
    check_accurate(accurate, dataset)
    chosen = [(f, r) for f, r in runs if r.get("experiment") == "mixing" and r["settings"]["dataset"] == dataset]
    pairs = []
    for seed in sorted({r["seed"] for _, r in chosen}):
        found = [(None, None)] if accurate == "pretrained" else \
            [(f, r) for f, r in chosen if r["seed"] == seed and r["spec"]["method"] in ACCURATE_METHODS]
        robust = [(f, r) for f, r in chosen if r["seed"] == seed and r["spec"]["method"] in ROBUST_METHODS]
        robust.sort(key=lambda item: ROBUST_METHODS.index(item[1]["spec"]["method"]))
        if found and robust:
            pairs.append((seed, found[0], robust[0]))
    return pairs


def mixture_targets(out, runs, dataset, device, alphas=MIX_ALPHAS, accurate="standard"):
    """(folder, model, config) of every mixture to evaluate: one per alpha per pair of :func:`mixing_pairs`.

    The folder's ``run.json`` is written here (atomically) and names both branches by label, folder and weights
    digest, so a later run with retrained branches never reads a stale ``eval.json`` (the evaluation store checks
    the mixture's own weights digest, which covers both branches).

    :param accurate: "standard" (the experiment's standard run) or "pretrained" (the pretrained CIFAR-10 ResNet-18
        of the pyautoattack wheel, :func:`benchmarks.models.pretrained_resnet18`, as Bai et al. mix an accurate
        model of its own architecture with a robust one).
    """
    from torchattacks_part.mixing import MixedClassifier

    from .models import pretrained_resnet18

    alphas = check_alphas(alphas)
    targets = []
    for seed, (acc_folder, acc), (rob_folder, rob) in mixing_pairs(runs, dataset, accurate):
        if acc is None:
            accurate_net, acc = pretrained_resnet18(device), {"label": PRETRAINED_LABEL}
        else:
            accurate_net, _ = load_model(os.path.join(acc_folder, MODEL_FILE), device)
        robust_net, _ = load_model(os.path.join(rob_folder, MODEL_FILE), device)
        curve = f"mixing {acc['label']} + {rob['label']}"
        digests = weights_digest(accurate_net), weights_digest(robust_net)  # once per pair, not per alpha
        for alpha in alphas:
            model = MixedClassifier(accurate_net, robust_net, alpha).eval()
            label = f"Mix {acc['label']}+{rob['label']} alpha={alpha_text(alpha)}"
            name = f"{dataset}-{slug(acc['label'])}+{slug(rob['label'])}-alpha{alpha_text(alpha)}-seed{seed}"
            folder = os.path.join(out, MIXTURES_DIR, name)
            branches = {"accurate": {"label": acc["label"], "folder": acc_folder, "weights": digests[0]},
                        "robust": {"label": rob["label"], "folder": rob_folder, "weights": digests[1]},
                        "alpha": alpha}
            record = {"label": label, "seed": seed, "experiment": "mixing", "order": 10**5 + int(1000 * alpha),
                      "spec": {"method": "mixing", "alpha": alpha, "eps": rob["spec"]["eps"]},
                      "settings": rob["settings"],
                      "mixture": branches}
            os.makedirs(folder, exist_ok=True)
            atomic_write_text(json.dumps(record, indent=2) + "\n", os.path.join(folder, RUN_FILE))
            config = {"source": "ours", "label": label, "train_seed": seed, "dataset": dataset,
                      "forward_passes": MixedClassifier.number_forward_passes, "curve": curve,
                      "curve_position": alpha, "curve_label": f"\u03b1={alpha_text(alpha)}", "mixture": branches}
            targets.append((folder, model, config))
    return targets
