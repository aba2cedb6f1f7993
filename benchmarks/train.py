"""``part-bench train``: the runs of an experiment under a preset, each resumable, each in its own folder.

A run folder ``<out>/runs/<dataset>-<model>-<label slug>-seed<seed>/`` holds

- ``run.json``: the run's settings (preset recipe + :class:`~benchmarks.presets.RunSpec`), written first;
- ``last.pt`` and ``log.jsonl``: the trainer's per-epoch checkpoint and log (atomic; a killed run resumes from
  its last finished epoch with the same result as an uninterrupted one);
- ``model.pt``: the final weights with what is needed to rebuild the model (``arch``, ``num_classes``), written
  atomically when training ends. A run with ``model.pt`` is done and is skipped.
"""

import contextlib
import json
import math
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
    except (FileNotFoundError, ValueError) as error:  # missing offline, or not the official files
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
    """A model saved by :func:`save_model` (``weights_only=True``), in eval mode, and its record.

    :raises UsageError: one line naming ``path`` and what it is not (a folder, not a torch file, a trainer's
        last.pt or a bare state_dict, weights of another architecture); torch's own advice to unpickle with
        ``weights_only=False`` is never passed on.
    """
    from .models import MODELS, build_model

    def refuse(why):
        return UsageError(f"{path}: {why}; expected a model.pt written by part-bench train")

    if os.path.isdir(path):
        raise refuse("is a folder")
    if not os.path.isfile(path):
        raise refuse("no such file")
    try:
        record = load_checkpoint(path, device)
    except Exception:  # a text file, random bytes, half a file, or a pickle that is not weights-only
        raise refuse("not a readable weights-only torch file (truncated, corrupt, or not a checkpoint)") from None
    if not isinstance(record, dict) or not {"arch", "num_classes", "state_dict"} <= set(record):
        kind = ("a trainer checkpoint (last.pt)" if isinstance(record, dict) and "model" in record
                else "a bare state_dict" if isinstance(record, dict) else type(record).__name__)
        raise refuse(f"is {kind}, without arch / num_classes / state_dict")
    if record["arch"] not in MODELS or not isinstance(record["num_classes"], int):
        raise refuse(f"names an unknown architecture {record['arch']!r} (known: {sorted(MODELS)})")
    model = build_model(record["arch"], record["num_classes"])
    try:
        model.load_state_dict(record["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0][:200]
        raise refuse(f"its weights do not fit a {record['arch']} with {record['num_classes']} classes ({first})") \
            from None
    return model.to(device).eval(), record


def train_run(settings, spec, seed, out, data, device, progress=True, order=0, experiment=None, on_epoch=None):
    """Train one run (or finish it, or skip it when done). Returns its folder.

    Precision comes from ``settings["amp"]`` (see :func:`training_precision`; the quick preset trains in bf16 on
    CUDA, smoke and paper in fp32; set the key to force either). ``settings["schedule"]`` is "paper" (lr / 10 at 3/4
    of the epochs) or "onecycle" (:class:`OneCycleLR`). ``on_epoch(record)`` is called after every epoch's
    checkpoint (the device run stops a run that would overrun its deadline from there).
    """
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
        # run.json files written before a setting existed hold its old, only value
        if previous["spec"] != record["spec"] or {**LEGACY_SETTINGS, **previous["settings"]} != record["settings"]:
            raise UsageError(f"{folder} holds a run with other settings; remove it or use another --out")
    atomic_write_text(json.dumps(record, indent=2) + "\n", run_path)
    if os.path.exists(final):
        print(f"[train] {spec.label} seed {seed}: done ({final})", flush=True)
        return folder

    x, y = data
    precision = training_precision(settings.get("amp", "fp32"), device)
    channels_last = device.type == "cuda"
    torch.manual_seed(seed)
    model = build_model(settings["model"], settings["num_classes"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9,
                                weight_decay=settings["weight_decay"])
    schedule = settings.get("schedule", "paper")
    if schedule == "onecycle":
        steps = settings["epochs"] * math.ceil(len(x) / settings["batch_size"])
        schedule = OneCycleLR(optimizer, settings["lr"], steps)
    elif schedule != "paper":
        raise ValueError(f"settings['schedule'] must be paper or onecycle, got {schedule!r}")
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
        augment=settings["augment"], schedule=schedule, checkpoint_dir=folder, seed=seed,
        amp=precision == "bf16", channels_last=channels_last, verbose=progress)
    began = time.perf_counter()
    print(f"[train] {spec.label} seed {seed}: {settings['epochs']} epochs on {len(x)} {settings['dataset']} "
          f"images, {precision}{', channels-last' if channels_last else ''} -> {folder}", flush=True)

    def report(_, epoch):
        natural, adversarial = epoch["natural_acc"], epoch["adversarial_acc"]  # None: not measured ("standard")
        print(f"[train] {spec.label} seed {seed} epoch {epoch['epoch']}/{settings['epochs']} ({epoch['phase']}): "
              f"loss {epoch['loss']:.3f}, natural {'-' if natural is None else f'{100 * natural:.1f}%'}, "
              f"adversarial {'-' if adversarial is None else f'{100 * adversarial:.1f}%'}, lr {epoch['lr']:.4f}, "
              f"{epoch['seconds']:.1f} s", flush=True)
        if on_epoch is not None:
            on_epoch(epoch)

    autocast = bf16_forwards(model, device.type, channels_last) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        trainer.fit(x.numpy(), y.numpy(), batch_size=settings["batch_size"], nb_epochs=settings["epochs"],
                    resume=True, callback=report)
    save_model(final, model, settings["model"], settings["num_classes"], settings["dataset"], spec.label,
               extra={"seed": seed, "method": spec.method, "train_seconds": time.perf_counter() - began,
                      "precision": precision})
    return folder


def train_experiment(settings, runs, seeds, out, data_dir, device, progress=True, experiment=None, data=None,
                     on_epoch=None):
    """Train every run of ``runs`` (a list of RunSpec) for every seed; returns the run folders. A run's position
    in ``runs`` is its row in the reports.

    :param data: (images float32 (N, C, H, W) in [0, 1], int64 labels) to train on instead of reading the first
        ``settings["n_train"]`` training images from ``data_dir`` (the device run passes the arrays it verified).
    :param on_epoch: see :func:`train_run`.
    """
    if not runs or not all(isinstance(r, RunSpec) for r in runs):
        raise ValueError("runs must be a non-empty list of RunSpec")
    if data is None:
        data = load_split(settings["dataset"], data_dir, train=True, n=settings["n_train"])
    return [train_run(settings, spec, seed, out, data, device, progress, order, experiment, on_epoch)
            for seed in seeds for order, spec in enumerate(runs)]


#: Values of settings that run.json files written before the setting existed were trained with.
LEGACY_SETTINGS = {"schedule": "paper", "amp": "fp32"}


def training_precision(amp, device):
    """"bf16" or "fp32" for a settings["amp"] value: "fp32", "bf16" (any device) or "bf16-cuda" (bf16 on CUDA)."""
    if amp not in ("fp32", "bf16", "bf16-cuda"):
        raise ValueError(f"settings['amp'] must be fp32, bf16 or bf16-cuda, got {amp!r}")
    return "bf16" if amp == "bf16" or (amp == "bf16-cuda" and device.type == "cuda") else "fp32"


@contextlib.contextmanager
def bf16_forwards(model, device_type, channels_last=False):
    """Inside, every forward of ``model`` runs under bf16 autocast and returns fp32 logits; on exit the model is its
    plain fp32 self again (its weights stay fp32 throughout).

    The trainer's own ``amp`` covers only the update's forward; this covers the example generation (the 10 PGD
    steps, 10/11 of the work) and the CAM too, as fast adversarial training does (Wong et al., 2020). Each forward
    enters and leaves its own autocast region, so autocast's cache of bf16 weight copies never outlives an optimizer
    step (one region around the whole loop would keep using the first step's weights). With ``channels_last`` a
    4-D CUDA input is made channels-last first (the trainer does this only for the update's forward).
    """
    forward = model.forward

    def bf16_forward(x, *args, **kwargs):
        if channels_last and x.dim() == 4 and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(x, *args, **kwargs)
        return out.float()

    model.forward = bf16_forward
    try:
        yield model
    finally:
        del model.forward


class OneCycleLR:
    """One-cycle learning rate per batch (fast AT, Wong et al., 2020): linear from 0 to ``peak_lr`` at ``peak_at``
    of the ``total_steps`` updates and linearly back to 0 at the last.

    The trainer steps a scheduler once per epoch; this one follows every ``optimizer.step()`` through a step hook,
    and its count of updates travels in the trainer's checkpoint (``state_dict``), so a resumed run continues on the
    same curve. The update number k (1-based) uses ``lr_at(k)``.
    """

    def __init__(self, optimizer, peak_lr, total_steps, peak_at=0.4):
        if not 0 < peak_at < 1 or total_steps < 1:
            raise ValueError(f"OneCycleLR needs 0 < peak_at < 1 and total_steps >= 1, got {peak_at}, {total_steps}")
        self.optimizer, self.peak_lr, self.total_steps, self.peak_at = optimizer, float(peak_lr), total_steps, peak_at
        self.steps_done = 0
        self._apply()
        self._hook = optimizer.register_step_post_hook(self._after_step)

    def lr_at(self, step):
        t = min(max(step, 0), self.total_steps) / self.total_steps
        if t <= self.peak_at:
            return self.peak_lr * t / self.peak_at
        return self.peak_lr * (1 - t) / (1 - self.peak_at)

    def _apply(self):
        lr = self.lr_at(self.steps_done + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _after_step(self, optimizer, args, kwargs):
        self.steps_done += 1
        self._apply()

    def step(self):
        """Epoch end (the trainer's call): nothing to do, the rate already follows the updates."""

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"steps_done": self.steps_done, "peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "peak_at": self.peak_at}

    def load_state_dict(self, state):
        self.steps_done = int(state["steps_done"])
        self._apply()
