"""``python -m benchmarks`` / ``part-bench``: the command line of the PART benchmarks.

One subcommand per function (``cmd_<name>``), each registered by an ``add_<name>_parser`` function, so later
subcommands (train, evaluate, compare, figures) slot in beside ``demo``. Heavy imports (torch, the attacks) happen
inside the subcommand, so ``--help`` stays fast.

Exit codes: 0 success; 2 a usage problem (bad arguments, data missing while offline, device not available),
reported on stderr in one line without a traceback.
"""

import argparse
import sys

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


# --- entry point --------------------------------------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Benchmarks and demos of PART (ICML 2024).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_demo_parser(subparsers)
    return parser


def main(argv=None):
    """Run one subcommand; ``argv`` defaults to ``sys.argv[1:]``.

    :return: 0 on success.
    :raises SystemExit: code 2 on a usage problem (argparse's convention), after one ``error:`` line on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        parser.exit(2, f"{PROG} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
