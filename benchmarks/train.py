"""``part-bench train``: the runs of an experiment under a preset, each resumable, each in its own folder.

A run folder ``<out>/runs/<dataset>-<model>-<label slug>-seed<seed>/`` holds

- ``run.json``: the run's settings (preset recipe + :class:`~benchmarks.presets.RunSpec`), written first;
- ``last.pt`` and ``log.jsonl``: the trainer's per-epoch checkpoint and log (atomic; a killed run resumes from
  its last finished epoch with the same result as an uninterrupted one);
- ``model.pt``: the final weights with what is needed to rebuild the model (``arch``, ``num_classes``), written
  atomically when training ends. A run with ``model.pt`` is done and is skipped.
"""

import json
import os
import time

import torch

from art_part.checkpoint import atomic_save, atomic_write_text
from art_part.checkpoint import load as load_checkpoint

from . import UsageError
from .presets import RunSpec

MODEL_FILE = "model.pt"
RUN_FILE = "run.json"


def load_split(dataset, data_dir, train, n=None):
    """Images float32 (N, C, H, W) in [0, 1] and int64 labels of a dataset split; offline gaps -> UsageError."""
    from .data import load_cifar10, load_svhn, load_tiny_imagenet

    try:
        if dataset == "cifar10":
            return load_cifar10(data_dir, train=train, n=n, download=True)
        if dataset == "svhn":
            return load_svhn(data_dir, split="train" if train else "test", n=n, download=True)
        if dataset == "tiny-imagenet":
            return load_tiny_imagenet(data_dir, split="train" if train else "val", n=n)
    except FileNotFoundError as error:
        raise UsageError(" ".join(str(error).split())) from None
    raise ValueError(f"dataset must be cifar10, svhn or tiny-imagenet, got {dataset!r}")


def run_folder(out, settings, spec, seed):
    return os.path.join(out, "runs", f"{settings['dataset']}-{settings['model']}-{spec.slug}-seed{seed}")


def save_model(path, model, arch, num_classes, dataset, label, extra=None):
    """Final weights plus what rebuilds the model: only tensors, strings and numbers (``weights_only`` loads it)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"arch": arch, "num_classes": num_classes, "dataset": dataset, "label": label,
                 "state_dict": state, **(extra or {})}, path)


def load_model(path, device="cpu"):
    """A model saved by :func:`save_model` (``weights_only=True``), in eval mode, and its record."""
    from .models import build_model

    record = load_checkpoint(path, device)
    model = build_model(record["arch"], record["num_classes"])
    model.load_state_dict(record["state_dict"])
    return model.to(device).eval(), record


def train_run(settings, spec, seed, out, data, device, progress=True, order=0, experiment=None):
    """Train one run (or finish it, or skip it when done). Returns its folder."""
    from art.estimators.classification import PyTorchClassifier

    from art_part.trainer import AdversarialTrainerPARTPyTorch
    from torchattacks_part.budget import quadrant_mask

    from .models import build_model

    folder = run_folder(out, settings, spec, seed)
    final = os.path.join(folder, MODEL_FILE)
    os.makedirs(folder, exist_ok=True)
    record = {"label": spec.label, "seed": seed, "spec": spec.settings(), "settings": settings, "order": order,
              "experiment": experiment}
    run_path = os.path.join(folder, RUN_FILE)
    if os.path.exists(run_path):
        with open(run_path) as f:
            previous = json.load(f)
        if previous["spec"] != record["spec"] or previous["settings"] != record["settings"]:
            raise UsageError(f"{folder} holds a run with other settings; remove it or use another --out")
    atomic_write_text(json.dumps(record, indent=2) + "\n", run_path)
    if os.path.exists(final):
        print(f"[train] {spec.label} seed {seed}: done ({final})", flush=True)
        return folder

    x, y = data
    torch.manual_seed(seed)
    model = build_model(settings["model"], settings["num_classes"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9,
                                weight_decay=settings["weight_decay"])
    classifier = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=settings["num_classes"], clip_values=(0.0, 1.0), optimizer=optimizer,
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    fixed_mask = None
    if spec.low_quarter is not None:
        fixed_mask = quadrant_mask(x.shape[2], x.shape[3], spec.low_quarter)
    trainer = AdversarialTrainerPARTPyTorch(
        classifier, method=spec.method, eps=spec.eps, eps_low=spec.eps_low, alpha=settings["alpha"], steps=10,
        burn_in=settings["burn_in"] if spec.burn_in is None else spec.burn_in, mask_refresh=spec.mask_refresh,
        cam=spec.cam, rule=spec.rule, fixed_mask=fixed_mask, example_generator=spec.example_generator,
        augment=settings["augment"], schedule="paper", checkpoint_dir=folder, seed=seed,
        # fp32 as in the paper: bf16 autocast (amp) has not been validated against its numbers on a GPU yet.
        amp=False, channels_last=device.type == "cuda", verbose=progress)
    began = time.perf_counter()
    print(f"[train] {spec.label} seed {seed}: {settings['epochs']} epochs on {len(x)} {settings['dataset']} "
          f"images -> {folder}", flush=True)

    def report(_, epoch):
        natural = epoch["natural_acc"]
        print(f"[train] {spec.label} seed {seed} epoch {epoch['epoch']}/{settings['epochs']} ({epoch['phase']}): "
              f"loss {epoch['loss']:.3f}, natural {'-' if natural is None else f'{100 * natural:.1f}%'}, "
              f"adversarial {100 * epoch['adversarial_acc']:.1f}%, {epoch['seconds']:.0f} s", flush=True)

    trainer.fit(x.numpy(), y.numpy(), batch_size=settings["batch_size"], nb_epochs=settings["epochs"],
                resume=True, callback=report)
    save_model(final, model, settings["model"], settings["num_classes"], settings["dataset"], spec.label,
               extra={"seed": seed, "method": spec.method, "train_seconds": time.perf_counter() - began})
    return folder


def train_experiment(settings, runs, seeds, out, data_dir, device, progress=True, experiment=None):
    """Train every run of ``runs`` (a list of RunSpec) for every seed; returns the run folders. A run's position
    in ``runs`` is its row in the reports."""
    if not runs or not all(isinstance(r, RunSpec) for r in runs):
        raise ValueError("runs must be a non-empty list of RunSpec")
    data = load_split(settings["dataset"], data_dir, train=True, n=settings["n_train"])
    return [train_run(settings, spec, seed, out, data, device, progress, order, experiment)
            for seed in seeds for order, spec in enumerate(runs)]
