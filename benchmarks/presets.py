"""Presets: how much to run (``smoke`` on a CPU, ``paper`` on a GPU) and what to run (the paper's experiments).

A **preset** fixes the scale and the training recipe of every run: data subset, model, epochs, learning rate,
evaluation subset and attack suite. ``paper`` is section 4.1 and appendix G of the paper, per dataset:

=============  ===========  ===  =====  ======  =====  ============  =======
dataset        model        lr   batch  wd      alpha  augmentation  epochs
=============  ===========  ===  =====  ======  =====  ============  =======
cifar10        ResNet-18    .01  128    2e-4    2/255  crop + flip   80 (burn-in 20, lr / 10 at 60)
svhn           ResNet-18    .01  128    3.5e-3  1/255  none          80
tiny-imagenet  WRN-34-10    .02  512    5e-4    2/255  crop + flip   80
=============  ===========  ===  =====  ======  =====  ============  =======

``smoke`` keeps the recipe's shape at CPU scale: a tiny CNN, 5000 training and 500 test images, 10 epochs with a
burn-in of 4; it shows the whole pipeline working in minutes, not the paper's numbers.

``quick`` is the paper's ResNet-18 and attack (PGD-10, eps 8/255, alpha 2/255) on a schedule short enough for one
call of the lent GPU machine (one H200, at most 10 minutes a call, 64 MiB carried): 15 epochs, burn-in 4, the
fast-AT one-cycle learning rate (Wong et al., 2020: per batch, linear from 0 up to 0.2 at 2/5 of the steps and back to
0; SGD momentum 0.9, weight decay 5e-4), batch 256, bf16 autocast of every training forward (example generation, CAM
and update) with channels-last on CUDA, fp32 evaluation. It trains on the first 20,000 of the 50,000 training images:
what travels to that machine beside the 10,000 test images within 64 MiB (``benchmarks/RESULTS.md``, "quick").

An **experiment** is a list of runs (:class:`RunSpec`): ``main`` (AT vs PART, the README's smoke run), ``table1``
(the nine rows of Table 1), ``eps-low-sweep`` (Figure 4), ``quadrant`` (Figure 1), ``cam-methods`` (Table 6),
``generators`` (Table 5: PGD vs MMA as the example generator), ``mask-rules`` (paper rule vs the released code's
colour-band rule vs a random mask of the same size, which the published code cannot run), ``budget-rules`` (the
same plus the continuous rule "linear", eps_low + (eps - eps_low) * CAM, compared at the mean budget each run
records), ``standard`` (natural training, no attack: the accurate branch of a mixed classifier, through the same
pipeline) and ``mixing`` (standard and AT, whose mixtures :mod:`benchmarks.mixtures` evaluates).
"""

import dataclasses
import re
from dataclasses import dataclass, field

from torchattacks_part.budget import QUARTERS


@dataclass(frozen=True)
class DatasetRecipe:
    """The paper's training recipe of one dataset."""

    model: str
    lr: float
    batch_size: int
    weight_decay: float
    alpha: float
    augment: bool
    num_classes: int
    image_size: int


RECIPES = {
    "cifar10": DatasetRecipe("resnet18", 0.01, 128, 2e-4, 2 / 255, True, 10, 32),
    "svhn": DatasetRecipe("resnet18", 0.01, 128, 3.5e-3, 1 / 255, False, 10, 32),
    "tiny-imagenet": DatasetRecipe("wrn-34-10", 0.02, 512, 5e-4, 2 / 255, True, 200, 64),
}
DATASETS = tuple(RECIPES)


@dataclass(frozen=True)
class Preset:
    """Scale of a run. ``None`` fields take the dataset's :data:`RECIPES` value."""

    name: str
    epochs: int
    burn_in: int
    n_train: int | None  # None: the whole training split
    n_test: int  # evaluation images: the first n of the test split
    suite: str  # attack suite, see benchmarks.evaluate.SUITES
    model: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    eval_batch_size: int = 500
    device: str = "auto"
    seeds: tuple = (0,)
    weight_decay: float | None = None
    #: "paper" (lr / 10 at 3/4 of the epochs), or "onecycle" (per batch: 0 -> lr at 2/5 of the steps -> 0)
    schedule: str = "paper"
    #: "fp32"; "bf16" (autocast of every training forward, any device); "bf16-cuda" (bf16 on CUDA, else fp32)
    amp: str = "fp32"


#: Training images of the quick preset: the first 20,000 (see the module docstring).
QUICK_N_TRAIN = 20000

PRESETS = {
    "smoke": Preset("smoke", epochs=10, burn_in=4, n_train=5000, n_test=500, suite="smoke", model="tiny", lr=0.05,
                    eval_batch_size=250, device="cpu"),
    "paper": Preset("paper", epochs=80, burn_in=20, n_train=None, n_test=10000, suite="paper", seeds=(0, 1, 2)),
    # One call of the lent H200: 20,000 training images is what travels (64 MiB a call); 15 epochs of AT and of
    # PART fit the 9-minute budget beside the evaluation and the speed benchmark (estimate in RESULTS.md).
    "quick": Preset("quick", epochs=15, burn_in=4, n_train=QUICK_N_TRAIN, n_test=10000, suite="quick", lr=0.2,
                    batch_size=256, eval_batch_size=1000, weight_decay=5e-4, schedule="onecycle", amp="bf16-cuda"),
}
SCHEDULES = ("paper", "onecycle")
AMP_MODES = ("fp32", "bf16", "bf16-cuda")


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment; ``label`` is its row in the tables (seeds are averaged under it)."""

    label: str
    method: str
    mask_refresh: int = 1
    eps: float = 8 / 255
    eps_low: float = 7 / 255
    cam: str = "gradcam"
    rule: str = "cam"
    example_generator: str = "pgd"
    low_quarter: str | None = None  # Figure 1: this quarter at eps_low, no CAM
    burn_in: int | None = None  # None: the preset's
    extra: dict = field(default_factory=dict)

    @property
    def slug(self):
        """A folder name: lower case, digits, dashes."""
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")

    def settings(self):
        return dataclasses.asdict(self)


def _table1():
    runs = []
    for plain, part in (("at", "part"), ("trades", "part-t"), ("mart", "part-m")):
        runs.append(RunSpec(plain.upper(), plain))
        for s in (1, 10):
            runs.append(RunSpec(f"{part.upper()} (s={s})", part, mask_refresh=s))
    return runs


def _eps_low_sweep():
    runs = []
    for eps, lows in ((12, (11, 10, 9, 8)), (8, (7, 6, 5, 4))):
        runs.append(RunSpec(f"AT eps={eps}/255", "at", eps=eps / 255, eps_low=eps / 255))
        runs += [RunSpec(f"PART eps={eps}/255 eps_low={low}/255", "part", eps=eps / 255, eps_low=low / 255)
                 for low in lows]
    return runs


def _quadrant():
    # Figure 1: plain AT from the first epoch, one quarter of every image at 6/255 and the rest at 12/255.
    return [RunSpec(f"AT {q} at 6/255", "part", eps=12 / 255, eps_low=6 / 255, low_quarter=q, burn_in=0)
            for q in QUARTERS]


EXPERIMENTS = {
    "main": lambda: [RunSpec("AT", "at"), RunSpec("PART (s=1)", "part")],
    "table1": _table1,
    "eps-low-sweep": _eps_low_sweep,
    "quadrant": _quadrant,
    "cam-methods": lambda: [RunSpec(f"PART {c}", "part", cam=c) for c in ("gradcam", "xgradcam", "layercam")],
    "generators": lambda: [RunSpec(f"{m.upper()} {g.upper()}", m, example_generator=g)
                           for g in ("pgd", "mma") for m in ("at", "part")],
    "mask-rules": lambda: [RunSpec("AT", "at"), RunSpec("PART rule=cam (paper)", "part"),
                           RunSpec("PART rule=jet (released code)", "part", rule="jet"),
                           RunSpec("PART rule=random (same size)", "part", rule="random")],
    "standard": lambda: [RunSpec("Standard", "standard")],
    # AT and the paper's rule share main's labels, so in one results folder those two runs are trained once.
    "budget-rules": lambda: [RunSpec("AT", "at"), RunSpec("PART (s=1)", "part"),
                             RunSpec("PART rule=jet (released code)", "part", rule="jet"),
                             RunSpec("PART rule=random (same size)", "part", rule="random"),
                             RunSpec("PART rule=linear (continuous)", "part", rule="linear")],
    # The two branches; evaluate adds their mixtures (benchmarks.mixtures). AT is main's run.
    "mixing": lambda: [RunSpec("Standard", "standard"), RunSpec("AT", "at")],
}


def experiment_runs(name):
    """The :class:`RunSpec` list of an experiment."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name]()


def resolve(preset, dataset):
    """The effective training settings of ``preset`` on ``dataset``: a dict."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if dataset not in RECIPES:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    p, r = PRESETS[preset], RECIPES[dataset]
    return dict(preset=p.name, dataset=dataset, model=p.model or r.model, lr=p.lr or r.lr,
                batch_size=p.batch_size or r.batch_size, weight_decay=p.weight_decay or r.weight_decay,
                alpha=r.alpha, augment=r.augment, num_classes=r.num_classes, epochs=p.epochs, burn_in=p.burn_in,
                n_train=p.n_train, n_test=p.n_test, suite=p.suite, eval_batch_size=p.eval_batch_size,
                device=p.device, seeds=list(p.seeds), schedule=p.schedule, amp=p.amp)
