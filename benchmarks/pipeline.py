"""What the subcommands do, end to end: train an experiment, evaluate its models (and RobustBench's), compare, draw.

``run`` chains the four; the README's main job is ``run --preset smoke``. Every step only adds what is missing,
so any step (or the whole chain) can be killed and started again.
"""

import os

from . import UsageError
from .evaluate import read_json
from .presets import experiment_runs, resolve
from .train import MODEL_FILE, RUN_FILE, load_model, load_split, train_experiment


def default_out(preset):
    return os.path.join("results", preset)


#: Models that take only 32 x 32 images (a fixed position embedding).
SIZE_32_ONLY = ("vit-cifar", "vit-tiny-test")


def cmd_train(preset, experiment, dataset, seeds, out, data_dir, device, epochs=None, n_train=None, progress=True,
              model=None):
    from .demo import resolve_device
    from .models import MODELS
    from .presets import RECIPES

    settings = resolve(preset, dataset)
    if model is not None:
        if model not in MODELS:
            raise UsageError(f"--model must be one of {sorted(MODELS)}, got {model!r}")
        if model in SIZE_32_ONLY and RECIPES[dataset].image_size != 32:
            raise UsageError(f"--model {model} takes 32x32 images; {dataset} has "
                             f"{RECIPES[dataset].image_size}x{RECIPES[dataset].image_size}")
        settings["model"] = model  # part of the run folder's name: other models never share a folder
    if epochs is not None:
        settings["epochs"] = epochs
        settings["burn_in"] = min(settings["burn_in"], max(0, epochs - 1))
    if n_train is not None:
        settings["n_train"] = n_train
    runs = experiment_runs(experiment)
    seeds = list(seeds) if seeds else settings["seeds"]
    device = resolve_device(settings["device"] if device == "auto" else device)
    return train_experiment(settings, runs, seeds, out, data_dir, device, progress, experiment)


def trained_runs(out):
    """(folder, run record) of every finished run under ``<out>/runs``, in the experiment's order."""
    root = os.path.join(out, "runs")
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if os.path.exists(os.path.join(folder, MODEL_FILE)) and os.path.exists(os.path.join(folder, RUN_FILE)):
            found.append((folder, read_json(os.path.join(folder, RUN_FILE), "run.json")))
    found.sort(key=lambda item: (item[1].get("order", 0), item[1]["seed"]))
    return found


def _surrogate(choice, record, runs, dataset, device):
    """(model, label) for the trust checks' transfer attack, or (None, None).

    ``choice`` "auto": the paper's transfer check used an AT model as the surrogate of PART, so another trained run
    of the same dataset, AT first (``record`` is the evaluated run's, None for a zoo model or a loose checkpoint);
    "none"; or the path of a model.pt.
    """
    if choice == "none":
        return None, None
    if choice != "auto":
        return load_model(choice, device)[0], choice
    others = [(f, r) for f, r in runs if r["settings"]["dataset"] == dataset
              and (record is None or r["label"] != record["label"])]
    if not others:
        return None, None
    folder, other = sorted(others, key=lambda item: item[1]["spec"]["method"] != "at")[0]
    return load_model(os.path.join(folder, MODEL_FILE), device)[0], other["label"]


def suite_attacks(preset, dataset, attacks=None):
    """``attacks`` checked, or the preset's suite; a bad name is a UsageError (``run`` checks before training)."""
    from .evaluate import SUITES, check_attacks

    try:
        return check_attacks(attacks or SUITES[resolve(preset, dataset)["suite"]])
    except ValueError as error:
        raise UsageError(str(error)) from None


CHECKPOINTS_DIR = "checkpoints"


def checkpoint_folder(out, path, model):
    """Where a loose checkpoint's evaluation goes: ``<out>/checkpoints/<file stem>-<weights digest>/``, so two
    checkpoints never share an eval.json and ``compare --out`` finds them."""
    from .fingerprint import weights_digest

    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(out, CHECKPOINTS_DIR, f"{stem}-{weights_digest(model)[:8]}")


def cmd_evaluate(preset, out, data_dir, device, attacks=None, n=None, batch_size=None, checkpoints=(), zoo=(),
                 model_dir="models", dataset="cifar10", threat_model="Linf", surrogate="auto", progress=True,
                 cache_dir=None, seed=0, mix_alphas=None, all_severities=False, mix_accurate="standard"):
    """Evaluate our trained runs (default: every finished run under ``<out>/runs``), given checkpoints and zoo
    models, each into its own ``eval.json``: a run's in its folder, a loose checkpoint's under
    ``<out>/checkpoints/``, a zoo model's under ``<out>/zoo/``. With the runs of the ``mixing`` experiment
    (by default), also their mixtures at ``mix_alphas`` (:data:`benchmarks.mixtures.MIX_ALPHAS`), each under
    ``<out>/mixtures/`` (:mod:`benchmarks.mixtures`)."""
    from .demo import resolve_device
    from .evaluate import evaluate_model, parse_attack

    settings = resolve(preset, dataset)
    attacks = suite_attacks(preset, dataset, attacks)
    device = resolve_device(settings["device"] if device == "auto" else device)
    n = n or settings["n_test"]
    batch_size = batch_size or settings["eval_batch_size"]
    cache_dir = cache_dir or os.path.join(out, "data")
    for path, option in ((out, "--out"), (cache_dir, "--cache-dir")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{option} {path}: is a file, not a folder")
    if "cifar10c" in " ".join(attacks) and dataset != "cifar10":
        raise UsageError("cifar10c-S attacks need --dataset cifar10")
    if surrogate not in ("auto", "none") and not os.path.isfile(surrogate):
        raise UsageError(f"--surrogate {surrogate}: no such file (auto, none or a model.pt path)")
    for path in checkpoints:
        if not os.path.isfile(path):
            raise UsageError(f"--checkpoint {path}: {'is a folder' if os.path.isdir(path) else 'no such file'}")
    images, labels = load_split(dataset, data_dir, train=False, n=n)
    if len(images) < n:
        raise UsageError(f"--n {n}: the {dataset} test split has only {len(images)} images")
    for spec in attacks:
        name, subset = parse_attack(spec)
        if subset is not None and subset > n:
            raise UsageError(f"--attacks {spec}: more images than the {n} evaluated (--n)")
    from .mixtures import MIX_ALPHAS, check_accurate, check_alphas

    try:
        mix_alphas = check_alphas(MIX_ALPHAS if mix_alphas is None else mix_alphas)
    except ValueError as error:
        raise UsageError(f"--mix-alphas: {error}") from None
    try:
        check_accurate(mix_accurate, dataset)
    except ValueError as error:
        raise UsageError(f"--mix-accurate: {error}") from None
    runs = trained_runs(out)
    mix = not checkpoints and not zoo
    if not checkpoints and not zoo:
        checkpoints = [os.path.join(folder, MODEL_FILE) for folder, record in runs
                       if record["settings"]["dataset"] == dataset]
        if not checkpoints:
            raise UsageError(f"no trained {dataset} runs under {os.path.join(out, 'runs')}: run `part-bench train "
                             f"--preset {preset} --out {out}` first, or pass --checkpoint / --zoo")
    records = {os.path.abspath(os.path.join(f, MODEL_FILE)): r for f, r in runs}
    targets = []  # (folder, model, config, surrogate model)
    for path in checkpoints:
        model, saved = load_model(path, device)
        record = records.get(os.path.abspath(path))
        folder = os.path.dirname(path) if record is not None else checkpoint_folder(out, path, model)
        config = {"source": "ours", "label": saved.get("label", os.path.basename(os.path.dirname(path))),
                  "train_seed": saved.get("seed", 0), "dataset": dataset}
        sur, config["surrogate"] = _surrogate(surrogate, record, runs, dataset, device)
        targets.append((folder, model, config, sur))
    for name in zoo:
        from .zoo import load_zoo_model

        try:
            model = load_zoo_model(name, model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                                   device=device)
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(str(error)) from None
        config = {"source": "zoo", "label": name, "train_seed": 0, "dataset": dataset, "threat_model": threat_model}
        sur, config["surrogate"] = _surrogate(surrogate, None, runs, dataset, device)
        targets.append((os.path.join(out, "zoo", f"{dataset}-{threat_model}-{name}"), model, config, sur))
    if mix:
        from .mixtures import mixture_targets

        # The trust checks' transfer attack needs a model other than the mixture's own branches: none here.
        targets += [(folder, model, {**config, "surrogate": None}, None)
                    for folder, model, config in mixture_targets(out, runs, dataset, device, mix_alphas,
                                                                   mix_accurate)]
    results = []
    for folder, model, config, sur in targets:
        print(f"[evaluate] {config['label']} ({config['source']}): {len(images)} {dataset} test images, "
              f"{len(attacks)} attacks -> {folder}", flush=True)
        results.append(evaluate_model(model, images, labels, folder, attacks, config, batch_size=batch_size,
                                      device=device, seed=seed, progress=progress, data_dir=data_dir,
                                      cache_dir=cache_dir, surrogate=sur, all_severities=all_severities))
    return results


def cmd_compare(out, report_dir=None, title=None, model_info=None):
    """Write the comparison (``benchmarks.report.write_reports``) and print it; ``model_info``: RobustBench's
    model_info folder, checked before any work."""
    from .leaderboard import check_model_info_dir
    from .report import write_reports

    if model_info is not None:
        check_model_info_dir(model_info)
    rows, text = write_reports(out, report_dir, title or f"Comparison ({out})", model_info=model_info)
    if not rows:
        raise UsageError(f"no evaluations under {out}: run `part-bench evaluate --out {out}` first")
    print(text)
    where = report_dir or os.path.join(out, "report")
    print(f"[compare] wrote comparison.md, comparison.json and comparison.csv to {where}")
    ours = [r for r in rows if r["kind"] == "ours"]
    if ours:
        print(f"[compare] wrote {len(ours)} RobustBench leaderboard entr{'y' if len(ours) == 1 else 'ies'} to "
              f"{os.path.join(where, 'leaderboard')}")
    return rows


def cmd_figures(out, data_dir, report_dir=None, device="cpu", n_images=6):
    """Trade-off scatter, eps_low sweep when run, paired differences (PART variants against their baselines, else
    every pair of models evaluated on the same images) when per-image outcomes were saved, GradCAM grid of every
    trained label (first seed) on the same test images, and the CIFAR-10-C grid of the first of them."""
    from . import figures
    from .demo import resolve_device
    from .report import aggregate, collect, figure_comparisons

    if report_dir is not None and os.path.exists(report_dir) and not os.path.isdir(report_dir):
        raise UsageError(f"--report-dir {report_dir}: is a file, not a folder")
    report_dir = report_dir or os.path.join(out, "report")
    rows = aggregate(collect(out))
    written = []
    if rows:
        if any("natural" in r["values"] and figures.robust_key(r["values"]) for r in rows):
            written.append(figures.tradeoff_scatter(os.path.join(report_dir, "tradeoff.png"), rows))
        sweep = [r for r in rows if r["spec"] and r["kind"] == "ours"]
        if len({r["spec"]["eps_low"] for r in sweep if r["spec"]["method"] == "part"}) > 1:
            written.append(figures.eps_low_sweep(os.path.join(report_dir, "eps_low_sweep.png"), sweep))
        comparisons = figure_comparisons(rows)
        if comparisons:
            written.append(figures.paired_differences(os.path.join(report_dir, "paired_differences.png"),
                                                      comparisons))
    runs = trained_runs(out)
    if runs:
        firsts = {}  # label -> folder of its first run (runs come in the experiment's order)
        for folder, record in runs:
            firsts.setdefault(record["label"], folder)
        device = resolve_device(device)
        dataset = runs[0][1]["settings"]["dataset"]
        images, labels = load_split(dataset, data_dir, train=False, n=n_images)
        models = [(label, load_model(os.path.join(folder, MODEL_FILE), device)[0]) for label, folder in firsts.items()]
        written.append(figures.cam_comparison_grid(os.path.join(report_dir, "cams.png"), models, images.to(device),
                                                   labels.to(device)))
        if dataset == "cifar10":
            from .corruptions import corruption_grid, to_uint8_nhwc

            path = os.path.join(report_dir, "cifar10c.png")
            corruption_grid(path, to_uint8_nhwc(images[:1]))
            written.append(path)
    if not written:
        raise UsageError(f"nothing to draw under {out}: no evaluations and no trained runs; run `part-bench train` / "
                         f"`part-bench evaluate --out {out}` first")
    for path in written:
        print(f"[figures] wrote {path}", flush=True)
    return written
