"""``python -m benchmarks`` / ``part-bench``: the command line of the PART benchmarks.

One subcommand per function (``cmd_<name>``), each registered by an ``add_<name>_parser`` function, so later
subcommands (train, evaluate, compare, figures) slot in beside ``demo``. Heavy imports (torch, the attacks) happen
inside the subcommand, so ``--help`` stays fast.

Exit codes: 0 success; 2 a usage problem (bad arguments, data missing while offline, device not available),
reported on stderr in one line without a traceback.
"""

import argparse
import os
import sys
import tempfile
import time

from . import UsageError

PROG = "part-bench"


def int_at_least(minimum):
    """An argparse type: an integer >= ``minimum``, else a message saying so."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def check_out_folder(path, option="--out"):
    """An output folder must be a writable folder (or not exist yet): said before any work, not after an epoch."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a file, not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:  # a real write, not os.access: permissions, read-only mounts and root all answer the same way
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {existing} ({error.strerror})") from None


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


# --- demo ---------------------------------------------------------------------------------------------------------


def add_demo_parser(subparsers):
    from .demo import DEFAULT_BATCH_SIZE, DEFAULT_N, DEFAULT_OUT, DEFAULT_STEPS, FIGURE_IMAGES

    parser = subparsers.add_parser(
        "demo",
        help="attack a pretrained CIFAR-10 ResNet-18 with PGD, Pixel-AG, MMA and adaptive Pixel-AG",
        description=(
            "Clean and robust accuracy of the pretrained (standard, non-robust) CIFAR-10 ResNet-18 shipped in the "
            "pyautoattack wheel on the first N CIFAR-10 test images, under PGD, Pixel-AG, MMA and the paper's "
            "adaptive Pixel-AG. Writes demo.json, demo.md and demo.png (clean images, GradCAM, Pixel-AG budget "
            f"and perturbation of the first {FIGURE_IMAGES} images) to --out."
        ),
    )
    parser.add_argument("--data-dir", required=True,
                        help="folder holding cifar-10-batches-py/ (downloaded there by torchvision when missing)")
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N,
                        help=f"number of test images, the first N of the test set (default {DEFAULT_N}, a few "
                             "minutes on 2 CPU cores)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per batch (default {DEFAULT_BATCH_SIZE}); MMA, which attacks its k targets "
                             "as one batch, gets batch-size // k images per batch")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu (default auto)")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help=f"steps of every attack (default {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="torch seed, set again before each attack (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args):
    from .demo import run_demo

    run_demo(data_dir=args.data_dir, n=args.n, batch_size=args.batch_size, out=args.out, device=args.device,
             steps=args.steps, seed=args.seed, progress=not args.no_progress)
    return 0


# --- train / evaluate / compare / figures / run ---------------------------------------------------------------


def _add_common(parser, data=True, preset=True):
    from .presets import DATASETS, PRESETS

    if preset:
        parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                            help="smoke: CPU, minutes (tiny CNN, 5000 train / 500 test images); quick: one GPU "
                                 "call, under 9 minutes on an H200 (ResNet-18, 20,000 train / 10,000 test images, "
                                 "15 epochs, one-cycle lr, bf16 training; see benchmarks/RESULTS.md); paper: GPU, "
                                 "the paper's Table 1 recipe (default smoke)")
        parser.add_argument("--dataset", choices=DATASETS, default="cifar10", help="(default cifar10)")
    if data:
        parser.add_argument("--data-dir", required=True,
                            help="folder holding cifar-10-batches-py/, svhn/ or tiny-imagenet-200/ "
                                 "(CIFAR-10 and SVHN are downloaded there by torchvision when missing and online)")
    parser.add_argument("--out", default=None, help="results folder (default results/<preset>)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the preset's (smoke: cpu; paper: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_train_options(parser):
    from .presets import EXPERIMENTS

    parser.add_argument("--experiment", choices=sorted(EXPERIMENTS), default="main",
                        help="main: AT and PART; table1: the nine rows of Table 1; eps-low-sweep (Figure 4); "
                             "quadrant (Figure 1); cam-methods (Table 6); generators (Table 5); mask-rules "
                             "(paper rule vs released colour bands vs random mask); budget-rules (mask-rules plus "
                             "the continuous rule linear); standard: natural training, no attack (the accurate "
                             "branch of a mixed classifier); mixing: standard and AT, evaluated with their "
                             "mixtures at --mix-alphas (default main)")
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=None,
                        help="training seeds (default: the preset's: smoke 0; paper 0 1 2)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="override the preset's epochs (the burn-in is cut to epochs - 1 when longer)")
    parser.add_argument("--n-train", type=positive_int, default=None,
                        help="override the preset's training subset: the first N training images")
    from .models import MODELS

    parser.add_argument("--model", choices=sorted(MODELS), default=None,
                        help="override the preset's architecture (smoke: tiny; paper: resnet18, wrn-34-10 on "
                             "tiny-imagenet); vit-cifar is a CIFAR-sized ViT (timm, patch 4, 32x32 only)")


def _add_evaluate_options(parser):
    from .evaluate import ATTACK_HELP, SUITES

    parser.add_argument("--attacks", nargs="+", default=None,
                        help=f"attacks to run instead of the preset's suite (smoke: {' '.join(SUITES['smoke'])}; "
                             f"paper: {' '.join(SUITES['paper'])}); names: {ATTACK_HELP}")
    parser.add_argument("--n", type=positive_int, default=None,
                        help="evaluate the first N test images (default: the preset's: smoke 500; paper 10000)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch size")
    parser.add_argument("--surrogate", default="auto",
                        help="model of the trust checks' transfer attack: auto (another trained run, AT first), "
                             "none, or a model.pt path (default auto)")
    parser.add_argument("--cache-dir", default=None,
                        help="where generated CIFAR-10-C goes when the official files are not in "
                             "<data-dir>/CIFAR-10-C (default <out>/data)")
    parser.add_argument("--cifar10c-all-severities", action="store_true",
                        help="when cifar10c-S has to generate CIFAR-10-C, generate all five severities (146 MB for "
                             "500 images) rather than S alone")
    parser.add_argument("--mix-accurate", choices=("standard", "pretrained"), default="standard",
                        help="accurate branch of the mixing experiment's mixtures: its standard run, or the "
                             "pretrained CIFAR-10 ResNet-18 of the pyautoattack wheel (default standard)")
    parser.add_argument("--mix-alphas", type=float, nargs="+", default=None, metavar="ALPHA",
                        help="weights of the robust branch of the mixing experiment's mixtures, each in [0, 1] "
                             "(default 0 0.25 0.5 0.75 1; used only when the runs of --experiment mixing are there)")


def add_train_parser(subparsers):
    parser = subparsers.add_parser("train", help="train the runs of an experiment (resumable)",
                                   description="Train every run of --experiment under --preset, one folder per run "
                                               "in <out>/runs/; a killed run resumes from its last epoch.")
    _add_common(parser)
    _add_train_options(parser)
    parser.set_defaults(func=cmd_train)


def cmd_train(args):
    from .pipeline import cmd_train as train, default_out

    check_out_folder(args.out)
    train(args.preset, args.experiment, args.dataset, args.seeds, args.out or default_out(args.preset),
          args.data_dir, args.device, epochs=args.epochs, n_train=args.n_train, progress=not args.no_progress,
          model=args.model)
    return 0


def add_evaluate_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="evaluate trained runs, checkpoints or RobustBench zoo models (resumable)",
        description="Run the preset's attack suite on every trained run under <out>/runs (default), on "
                    "--checkpoint files, or on RobustBench model-zoo models (--zoo NAME, read from --model-dir). "
                    "Each attack's result is saved as soon as it is computed; a killed evaluation resumes.")
    _add_common(parser)
    _add_evaluate_options(parser)
    parser.add_argument("--checkpoint", nargs="+", default=(), help="model.pt files written by train")
    parser.add_argument("--zoo", nargs="+", default=(), help="RobustBench model names, e.g. Wong2020Fast")
    parser.add_argument("--model-dir", default="models",
                        help="RobustBench model folder: <model-dir>/<dataset>/<threat>/<name>.pt (default models)")
    parser.add_argument("--threat-model", default="Linf", help="RobustBench threat model (default Linf)")
    parser.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    from .pipeline import cmd_evaluate as evaluate, default_out

    evaluate(args.preset, args.out or default_out(args.preset), args.data_dir, args.device, attacks=args.attacks,
             n=args.n, batch_size=args.batch_size, checkpoints=args.checkpoint, zoo=args.zoo,
             model_dir=args.model_dir, dataset=args.dataset, threat_model=args.threat_model,
             surrogate=args.surrogate, progress=not args.no_progress, cache_dir=args.cache_dir,
             mix_alphas=args.mix_alphas, all_severities=args.cifar10c_all_severities,
             mix_accurate=args.mix_accurate)
    return 0


def add_compare_parser(subparsers):
    parser = subparsers.add_parser(
        "compare", help="side-by-side tables of saved evaluations (md, json, csv)",
        description="Collect every eval.json under --out (runs/, checkpoints/, zoo/) and write comparison.md, .json "
                    "and .csv: accuracy per attack (mean and sample std over seeds), the worst case over the attacks "
                    "inside eps 8/255, attack agreement, paired differences with 95% intervals and exact McNemar "
                    "p-values, CIFAR-10-C per corruption, trust checks, and a RobustBench leaderboard entry per "
                    "model of ours.")
    parser.add_argument("--out", default=os.path.join("results", "smoke"),
                        help="results folder (default results/smoke)")
    parser.add_argument("--report-dir", default=None, help="where to write (default <out>/report)")
    parser.add_argument("--model-info", default=None, metavar="DIR",
                        help="RobustBench's model_info folder (<DIR>/<dataset>/<threat_model>/<name>.json, e.g. "
                             "robustbench-model-info beside the data): show RobustBench's reported clean and "
                             "AutoAttack accuracy of each zoo model next to ours, flagged when the difference is "
                             "larger than our sampling error; nothing is downloaded")
    parser.set_defaults(func=cmd_compare)


def cmd_compare(args):
    from .pipeline import cmd_compare as compare

    compare(args.out, args.report_dir, model_info=args.model_info)
    return 0


def add_figures_parser(subparsers):
    parser = subparsers.add_parser(
        "figures", help="trade-off scatter, CAM grid (AT vs PART), eps_low sweep, CIFAR-10-C grid",
        description="Draw the figures of the saved runs and evaluations under --out into --report-dir: the "
                    "accuracy-robustness trade-off, the paired differences between models, the eps_low sweep (when "
                    "run), GradCAM of every trained model on the same test images and the CIFAR-10-C grid.")
    parser.add_argument("--out", default=os.path.join("results", "smoke"),
                        help="results folder (default results/smoke)")
    parser.add_argument("--data-dir", required=True, help="folder holding the data set (for the CAM grid)")
    parser.add_argument("--report-dir", default=None, help="where to write (default <out>/report)")
    parser.set_defaults(func=cmd_figures)


def cmd_figures(args):
    from .pipeline import cmd_figures as figures

    figures(args.out, args.data_dir, args.report_dir)
    return 0


def add_run_parser(subparsers):
    parser = subparsers.add_parser("run", help="train, evaluate, compare and draw: the whole pipeline",
                                   description="train + evaluate + compare + figures for one preset and "
                                               "experiment; every step skips what is already done.")
    _add_common(parser)
    _add_train_options(parser)
    _add_evaluate_options(parser)
    parser.set_defaults(func=cmd_run)


def cmd_run(args):
    from .pipeline import cmd_compare, cmd_evaluate, cmd_figures, cmd_train, default_out, suite_attacks

    out = args.out or default_out(args.preset)
    check_out_folder(out)
    began = time.perf_counter()
    progress = not args.no_progress
    suite_attacks(args.preset, args.dataset, args.attacks)  # a typo in --attacks fails now, not after training
    cmd_train(args.preset, args.experiment, args.dataset, args.seeds, out, args.data_dir, args.device,
              epochs=args.epochs, n_train=args.n_train, progress=progress, model=args.model)
    cmd_evaluate(args.preset, out, args.data_dir, args.device, attacks=args.attacks, n=args.n,
                 batch_size=args.batch_size, dataset=args.dataset, surrogate=args.surrogate,
                 progress=progress, cache_dir=args.cache_dir, mix_alphas=args.mix_alphas,
                 all_severities=args.cifar10c_all_severities, mix_accurate=args.mix_accurate)
    cmd_compare(out)
    cmd_figures(out, args.data_dir)
    # Timings depend on what else the machine runs: say how long this took and how busy the machine was.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"[run] done in {time.perf_counter() - began:.0f} s on {os.cpu_count()} CPU cores; load average (1, 5, 15 "
          f"min) {load}", flush=True)
    return 0


def add_cifar10c_parser(subparsers):
    parser = subparsers.add_parser("cifar10c", help="generate CIFAR-10-C (19 corruptions x 5 severities)",
                                   description="Generate CIFAR-10-C from the CIFAR-10 test set with the "
                                               "CIFAR-specific parameters of Hendrycks & Dietterich (2019), in "
                                               "RobustBench's layout (<out>/CIFAR-10-C/<name>.npy, labels.npy).")
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--out", required=True, help="folder to write CIFAR-10-C/ into")
    parser.add_argument("--n", type=positive_int, default=10000,
                        help="first N test images (default 10000: the full, RobustBench-readable layout)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="(default 0)")
    parser.add_argument("--severities", type=int, nargs="+", choices=(1, 2, 3, 4, 5), default=None, metavar="S",
                        help="generate and store only these severities (1..5), one <name>-severity<S>.npy each "
                             "(default: all five, in RobustBench's layout)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_cifar10c)


def cmd_cifar10c(args):
    from .corruptions import CIFAR10C_TEST_SIZE, generate_cifar10c

    if args.n > CIFAR10C_TEST_SIZE:
        raise UsageError(f"--n {args.n}: CIFAR-10-C has {CIFAR10C_TEST_SIZE} test images at most")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: is a file, not a folder")

    print(generate_cifar10c(args.data_dir, args.out, n=args.n, seed=args.seed, progress=not args.no_progress,
                            severities=args.severities or "all"))
    return 0


# --- entry point --------------------------------------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Benchmarks and demos of PART (ICML 2024).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_demo_parser(subparsers)
    add_run_parser(subparsers)
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_compare_parser(subparsers)
    add_figures_parser(subparsers)
    add_cifar10c_parser(subparsers)
    return parser


def main(argv=None):
    """Run one subcommand; ``argv`` defaults to ``sys.argv[1:]``.

    :return: 0 on success.
    :raises SystemExit: code 2 on a usage problem (argparse's convention), after one ``error:`` line on stderr.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # say it with the subcommand's usage, not the top level's
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except UsageError as error:
        parser.exit(2, f"{PROG} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
