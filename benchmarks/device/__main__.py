"""``python -m benchmarks.device pack | verify | run``: the quick protocol on the lent GPU machine.

Here: ``pack`` writes ``.device/`` (CIFAR-10 as verified lossless parts, the wheels the machine lacks) and prints
the exact device call; ``verify`` reassembles the pack as the machine will. There: ``run`` (through
``benchmarks/device_run.sh``) runs every stage against a deadline and writes the results to $OUT.
"""

import argparse
import sys

from .. import UsageError


def build_parser():
    from .pack import DEFAULT_PACK, ROWS, COLS
    from .run import add_arguments

    parser = argparse.ArgumentParser(prog="python -m benchmarks.device", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    pack = sub.add_parser("pack", help="write the pack folder and print the device call")
    pack.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    pack.add_argument("--dest", default=DEFAULT_PACK, help=f"pack folder (default {DEFAULT_PACK}, ignored by git)")
    pack.add_argument("--n-train", type=int, default=None, help="training images (default: the quick preset's)")
    pack.add_argument("--n-test", type=int, default=10000, help="test images (default 10000)")
    pack.add_argument("--wheel-dir", default=".whl", help="where the wheels are (default .whl)")
    pack.add_argument("--get-wheels", action="store_true",
                      help="fill --wheel-dir first (../shared/tools/device-wheels.sh and imagecorruptions)")
    pack.add_argument("--per-part", type=int, default=ROWS * COLS, help=f"images per part (default {ROWS * COLS})")
    pack.add_argument("--method", type=int, default=6, help="WebP effort 0-6 (default 6: smallest)")
    verify = sub.add_parser("verify", help="reassemble the pack as the device will, and check it")
    verify.add_argument("--dest", default=DEFAULT_PACK)
    run = sub.add_parser("run", help="the quick protocol (on the device: through benchmarks/device_run.sh)")
    add_arguments(run)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            from .pack import pack

            pack(args.data_dir, args.dest, n_train=args.n_train, n_test=args.n_test, wheel_dir=args.wheel_dir,
                 per_part=args.per_part, method=args.method, get_wheels=args.get_wheels)
            return 0
        if args.command == "verify":
            from .pack import assemble_split, read_manifest, verify_wheels

            manifest = read_manifest(args.dest)
            for split in ("train", "test"):
                images, labels = assemble_split(args.dest, split, manifest)
                print(f"[verify] {split}: {len(images)} images, {len(labels)} labels, every sha256 matches")
            bad = verify_wheels(args.dest, manifest)
            print(f"[verify] wheels: {len(manifest['wheels'])}, altered or missing: {bad or 'none'}")
            return 1 if bad else 0
        from .run import main as run_main

        args.argv = argv[1:]
        return run_main(args)
    except UsageError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
