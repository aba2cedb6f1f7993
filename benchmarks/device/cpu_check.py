"""CPU checks behind the quick preset: bf16 against fp32, and the one-cycle schedule, at smoke scale.

``python -m benchmarks.device.cpu_check --data-dir DIR [--configs fp32 bf16 fp32-seed1 onecycle] [--n-train N]
[--methods at part] [--out DIR]``

Each configuration trains the smoke preset's AT and PART (s=1) (tiny CNN, the first 5000 CIFAR-10 training images,
or ``--n-train``, 10 epochs) through :func:`benchmarks.train.train_experiment`, changed only as its entry in
:data:`CONFIGS` says, and
then measures natural and PGD-20 accuracy (``torchattacks.PGD``, eps 8/255, alpha 2/255, random start, seed 0, fp32)
on the first 500 test images with a loop of its own (independent of ``benchmarks.evaluate``). It writes
``<out>/cpu_check.json`` and prints a markdown table.

- ``fp32`` is the smoke preset as it is; ``bf16`` the same with ``settings["amp"] = "bf16"`` (bf16 autocast of every
  training forward, on the CPU); ``fp32-seed1`` the smoke preset with seed 1, to show what a change of seed alone
  does to these numbers (the noise the bf16 difference is judged against).
- ``onecycle`` is the quick preset's schedule shape scaled down: one-cycle learning rate per batch (0 -> 0.1 at 2/5
  of the updates -> 0: a mean of 0.05, against 0.037 for the smoke preset's 0.05 with / 10 for the last 3 of 10
  epochs), weight decay 5e-4, burn-in 3 of 10 epochs (the quick preset: 4 of 15).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CONFIGS = {
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "fp32-seed1": {"seed": 1},
    "onecycle": {"schedule": "onecycle", "lr": 0.1, "weight_decay": 5e-4, "burn_in": 3},
}
N_TEST = 500


def evaluate(model, images, labels, batch_size=250, seed=0):
    """(natural accuracy, PGD-20 accuracy) in fp32, with torchattacks.PGD."""
    import torch
    import torchattacks

    model = model.eval()
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=20, random_start=True)
    torch.manual_seed(seed)
    natural = robust = 0
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        with torch.no_grad():
            natural += int((model(x).argmax(1) == y).sum())
        adv = attack(x, y)
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == y).sum())
    return natural / len(images), robust / len(images)


def run_config(name, data_dir, out, train_data, test_data, methods=("at", "part"), progress=False):
    import torch

    from ..presets import experiment_runs, resolve
    from ..train import MODEL_FILE, load_model, train_experiment

    change = dict(CONFIGS[name])
    seed = change.pop("seed", 0)
    settings = {**resolve("smoke", "cifar10"), **change, "n_train": len(train_data[0])}
    device = torch.device("cpu")
    began = time.perf_counter()
    runs = [r for r in experiment_runs("main") if r.method in methods]
    folders = train_experiment(settings, runs, [seed], os.path.join(out, name), data_dir, device,
                               progress=progress, experiment="main", data=train_data)
    seconds = time.perf_counter() - began
    rows = []
    for folder in folders:
        model, record = load_model(os.path.join(folder, MODEL_FILE))
        natural, pgd = evaluate(model, *test_data)
        with open(os.path.join(folder, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        rows.append({"config": name, "label": record["label"], "seed": seed, "precision": record.get("precision"),
                     "natural": natural, "pgd20": pgd, "train_log": log,
                     "train_seconds": record.get("train_seconds")})
    return {"config": name, "settings": settings, "seed": seed, "seconds": seconds, "rows": rows,
            "n_train": len(train_data[0])}


def markdown(results):
    lines = ["| config | training images | model | seed | precision | natural (%) | PGD-20 (%) | last-epoch train "
             "natural / adv (%) | train time (s) |", "|---|---:|---|---|---|---:|---:|---|---:|"]
    for result in results:
        for r in result["rows"]:
            last = r["train_log"][-1]
            lines.append(f"| {r['config']} | {result['n_train']} | {r['label']} | {r['seed']} | {r['precision']} | "
                         f"{100 * r['natural']:.1f} | {100 * r['pgd20']:.1f} | "
                         f"{100 * last['natural_acc']:.1f} / {100 * last['adversarial_acc']:.1f} | "
                         f"{r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.cpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", default=os.path.join("results", "cpu-check"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--n-train", type=int, default=None, help="training images (default: the smoke preset's)")
    parser.add_argument("--methods", nargs="+", choices=("at", "part"), default=["at", "part"])
    args = parser.parse_args(argv)
    import torch

    from ..data import load_cifar10
    from ..presets import resolve

    torch.set_num_threads(args.threads)
    smoke = resolve("smoke", "cifar10")
    train_data = load_cifar10(args.data_dir, train=True, n=args.n_train or smoke["n_train"], download=False)
    test_data = load_cifar10(args.data_dir, train=False, n=N_TEST, download=False)
    path = os.path.join(args.out, "cpu_check.json")
    results = []
    if os.path.exists(path):
        with open(path) as f:
            results = [r for r in json.load(f)["results"] if r["config"] not in args.configs]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for name in args.configs:
        print(f"[cpu-check] {name}: {CONFIGS[name] or 'the smoke preset'}", flush=True)
        results.append(run_config(name, args.data_dir, args.out, train_data, test_data, args.methods))
        os.makedirs(args.out, exist_ok=True)
        info = {"machine": f"{platform.machine()} {platform.processor()} ({os.cpu_count()} cores), torch "
                           f"{torch.__version__}, {args.threads} thread(s)",
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "commit": commit,
                "command": "python -m benchmarks.device.cpu_check " + " ".join(sys.argv[1:] if argv is None
                                                                             else argv)}
        with open(path, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
