"""Speed benchmark: what PART costs over AT, and what our ART trainer costs over a plain torch loop and ART's own.

``python -m benchmarks.speed --data-dir DIR [--device auto|cpu|cuda] [--model tiny|resnet18|wrn-34-10] [--n 512]
[--batch-size 128] [--epochs 2] [--warmup-batches K] [--amp] [--channels-last] [--cam-batch 128]
[--out results/speed.json]``

From one process, on the same architecture, the same initial weights and the same first ``n`` CIFAR-10 training
images, it trains (each run: one warm-up epoch, not timed, then ``--epochs`` timed epochs):

``plain``      a minimal plain-torch PGD-AT loop written here: PGD-10 (eps 8/255, alpha 2/255, uniform random start,
               the loop of ``torchattacks.PGD``), the same device-side shuffling and crop + flip augmentation
               (:mod:`art_part.augment`, drawn from a generator seeded as the trainer's), SGD.
``at``         :class:`art_part.trainer.AdversarialTrainerPARTPyTorch`, method "at".
``part_s1``    the same trainer, method "part", mask refresh s = 1 (a CAM of every batch right before its attack).
``part_s10``   method "part", s = 10 (per-sample masks, recomputed every 10 epochs). With ``burn_in=0`` the refresh
               falls in the warm-up epoch; the CAM pass over the training set is timed on its own afterwards and
               its tenth is added to the epoch time ("amortised").
``art_madry``  ART's ``AdversarialTrainerMadryPGD`` (max_iter 10, eps 8/255, eps_step 2/255, one random init,
               ratio 1). It works on numpy per batch and has no augmentation.

``--warmup-batches K`` makes each run's warm-up the first K batches (a separate, untimed pass from the same initial
weights) instead of a whole epoch. ``--amp`` runs every training forward of every run (attack steps, CAM, update)
under bf16 autocast, as the quick preset trains (:func:`benchmarks.train.bf16_forwards`). ``--cam-batch N`` also
times our batched CAM (:func:`torchattacks_part.cam.cam_maps`) against pytorch-grad-cam's ``GradCAM`` on the same N
images and model (median of ``--cam-repeats`` calls, after one untimed call each) and reports the largest difference
between their maps; target: ours at least 10x faster. The report also scales the AT epoch to CIFAR-10's 50,000
images against the quick preset's GPU target (<= 10 s).

All our trainer's runs use ``burn_in=0`` (PART active from the first epoch), ``track_natural=False`` (no extra
natural forward, so AT and the plain loop do the same work) and a constant learning rate. Each epoch is timed in
wall-clock time (``time.perf_counter``; ``torch.cuda.synchronize`` at each epoch end on CUDA) and in the process's CPU
time (``time.process_time``), which other processes on a shared CPU disturb far less (with ``--threads 1``; with more
threads it also counts the thread pool's spin-waits). The figures compared are the medians of the timed epochs.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the run minus what was allocated before it (the model);
on CPU the growth of the process's peak resident set (VmHWM, reset before each run through ``/proc/self/clear_refs``)
over its resident set at the start of the run, after ``malloc_trim``.

The figures are written as JSON (atomically) and printed as a markdown table. Speed targets are measured here, never
asserted by the tests: ``part_s1/at <= 1.05``, ``part_s10/at <= 1.02``, ``at/plain <= 1.05``. The paper's Table 9
(2x A100, ResNet-18, CIFAR-10, 80 epochs) has PART at 1.76x AT.
"""

import argparse
import contextlib
import copy
import ctypes
import datetime
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from . import UsageError
from .__main__ import positive_int

DEFAULT_N = 512
DEFAULT_BATCH_SIZE = 128
DEFAULT_EPOCHS = 2
DEFAULT_OUT = os.path.join("results", "speed.json")
RUNS = ("plain", "at", "part_s1", "part_s10", "art_madry")
RUN_LABELS = {
    "plain": "plain torch PGD-10 AT loop (this file)",
    "at": "ours: AdversarialTrainerPARTPyTorch, AT",
    "part_s1": "ours: PART, mask refresh s=1",
    "part_s10": "ours: PART, mask refresh s=10 (amortised)",
    "art_madry": "ART AdversarialTrainerMadryPGD",
}
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 2e-4
#: ratio -> (numerator run, denominator run, target or None)
RATIOS = {
    "part_s1/at": ("part_s1", "at", 1.05),
    "part_s10/at": ("part_s10", "at", 1.02),
    "at/plain": ("at", "plain", 1.05),
    "at/art_madry": ("at", "art_madry", None),
}
RATIO_LABELS = {
    "part_s1/at": "PART (s=1) / AT",
    "part_s10/at": "PART (s=10, amortised) / AT",
    "at/plain": "ours AT / plain torch loop",
    "at/art_madry": "ours AT / ART AdversarialTrainerMadryPGD",
}
#: Our batched CAM against pytorch-grad-cam's GradCAM on one batch: at least this many times faster.
CAM_TARGET = 10.0
#: AT epoch on CIFAR-10's 50,000 training images (the speed target of the quick preset's GPU run), seconds.
AT_EPOCH_TARGET_S = 10.0
FULL_TRAINING_SET = 50000
#: Table 9 of the paper: 2x NVIDIA A100, ResNet-18, CIFAR-10, 80 epochs (h:m:s for the whole run).
PAPER_TABLE9 = {
    "hardware": "2x NVIDIA A100, ResNet-18, CIFAR-10, 80 epochs",
    "at": "01:14:37", "part": "02:11:05", "at_seconds_per_epoch": 4477 / 80, "part_seconds_per_epoch": 7865 / 80,
    "part/at": round(7865 / 4477, 2), "memory_mb": {"at": 4608, "part": 4953},
}


# ------------------------------------------------------------------------------------------------- measuring


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None  # no /proc: not Linux
    return None


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM); False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return  # not glibc: nothing to trim


class PeakMemory:
    """Peak memory growth of one run, in MiB: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device):
        import torch

        self.device = device
        if device.type == "cuda":
            self.source = "torch.cuda.max_memory_allocated minus the allocation before the run"
        elif _proc_status_kib("VmHWM") is not None and _reset_peak_rss():
            self.source = ("CPU peak RSS growth: VmHWM (reset through /proc/self/clear_refs) minus VmRSS at the "
                           "start of the run, after malloc_trim")
        else:
            self.source = ("CPU peak RSS growth from resource.getrusage ru_maxrss (a process-lifetime peak: runs "
                           "that stay below an earlier peak show 0)")
        self._torch = torch
        self._baseline = 0

    def start(self):
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            self._torch.cuda.empty_cache()
            self._torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = self._torch.cuda.memory_allocated(self.device)
        elif self.source.startswith("CPU peak RSS growth: VmHWM"):
            _malloc_trim()
            _reset_peak_rss()
            self._baseline = _proc_status_kib("VmRSS") * 1024
        else:
            _malloc_trim()
            self._baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_mib(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = self._torch.cuda.max_memory_allocated(self.device)
        elif self.source.startswith("CPU peak RSS growth: VmHWM"):
            peak = _proc_status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self._baseline, 0) / 2 ** 20


def _now():
    """(wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


class EpochClock:
    """Epoch ends: ``lap()`` after each epoch (synchronised on CUDA) records the wall and CPU time since the last."""

    def __init__(self, device):
        self.device = device
        self.laps, self.cpu_laps = [], []
        self._last = None
        self.load = {}

    def start(self):
        synchronize(self.device)
        self.load["start"] = _loadavg()
        self._last = _now()

    def restart(self):
        """Start the next lap now, without recording one (after untimed work such as a memory reset)."""
        synchronize(self.device)
        self._last = _now()

    def lap(self):
        synchronize(self.device)
        now = _now()
        self.laps.append(now[0] - self._last[0])
        self.cpu_laps.append(now[1] - self._last[1])
        self._last = now

    def summary(self, warmup=1):
        self.load["end"] = _loadavg()
        timed, cpu = self.laps[warmup:], self.cpu_laps[warmup:]
        return {
            "warmup_seconds": self.laps[:warmup],
            "epoch_seconds": timed,
            "median_epoch_seconds": statistics.median(timed),
            "mean_epoch_seconds": statistics.fmean(timed),
            "epoch_cpu_seconds": cpu,
            "median_epoch_cpu_seconds": statistics.median(cpu),
            "loadavg_1min": self.load,
        }


def _loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _log(message, progress):
    if progress:
        print(f"[speed] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- the runs


class Setup:
    """What every run shares: the device, the data (numpy and device copies), the initial weights."""

    def __init__(self, model_name, x, y, device, batch_size, epochs, seed, amp, channels_last, progress,
                 warmup_batches=None):
        import torch

        from .models import build_model

        self.model_name, self.device, self.batch_size, self.epochs = model_name, device, batch_size, epochs
        self.seed, self.amp, self.channels_last, self.progress = seed, amp, channels_last, progress
        #: None: the warm-up is one whole epoch; k: the first k batches only (then the timed epochs from the start)
        self.warmup_batches = warmup_batches
        self.x, self.y = x, y  # CPU tensors
        self.x_np, self.y_np = x.numpy(), y.numpy()
        self.num_classes = 10
        torch.manual_seed(seed)
        self._initial = copy.deepcopy(build_model(model_name, self.num_classes).state_dict())
        self.parameters = sum(v.numel() for k, v in self._initial.items() if not k.endswith(
            ("running_mean", "running_var", "num_batches_tracked")))

    def fresh_model(self):
        """The architecture with the shared initial weights, on the device, train mode."""
        from .models import build_model

        model = build_model(self.model_name, self.num_classes)
        model.load_state_dict(self._initial)
        return model.to(self.device).train()

    def optimizer(self, model):
        import torch

        return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def classifier(self, model):
        import torch.nn as nn
        from art.estimators.classification import PyTorchClassifier

        return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=self.optimizer(model),
                                 input_shape=tuple(self.x.shape[1:]), nb_classes=self.num_classes,
                                 clip_values=(0.0, 1.0), device_type="gpu" if self.device.type == "cuda" else "cpu")

    def seed_all(self):
        import numpy as np
        import torch

        torch.manual_seed(self.seed)
        np.random.seed(self.seed)

    @property
    def warmup_n(self):
        """Images of the warm-up pass."""
        if self.warmup_batches is None:
            return len(self.x)
        return min(len(self.x), self.warmup_batches * self.batch_size)

    def precision(self, model):
        """bf16 autocast of every forward of ``model`` (attack, CAM, update), as the quick preset trains, or none."""
        from .train import bf16_forwards

        if not self.amp:
            return contextlib.nullcontext()
        return bf16_forwards(model, self.device.type, self.channels_last and self.device.type == "cuda")


def pgd(model, images, labels, eps=EPS, alpha=ALPHA, steps=STEPS):
    """PGD-L-inf with a uniform random start: the loop of ``torchattacks.PGD``, nothing else."""
    import torch
    import torch.nn.functional as F

    adv = (images + torch.empty_like(images).uniform_(-eps, eps)).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), images - eps), images + eps).clamp(0, 1)
    return adv.detach()


def run_plain(setup, memory):
    """The minimal plain-torch PGD-AT loop: device-side shuffle and crop + flip, PGD-10 in eval mode, one SGD step."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from art_part.augment import crop_flip, draw_crop_flip

    setup.seed_all()
    model = setup.fresh_model()
    optimizer = setup.optimizer(model)
    device, bs = setup.device, setup.batch_size
    cuda_extras = device.type == "cuda"
    if setup.channels_last and cuda_extras:
        model.to(memory_format=torch.channels_last)
    memory.start()
    clock = EpochClock(device)
    clock.start()
    x, y = setup.x.to(device), setup.y.to(device)
    generator = torch.Generator(device=device).manual_seed(setup.seed)
    n = len(x)
    with setup.precision(model):
        for epoch in range(setup.epochs + 1):
            order = torch.randperm(n, device=device, generator=generator)
            if epoch == 0:
                order = order[:setup.warmup_n]
            loss_sum = torch.zeros((), device=device)
            starts = range(0, len(order), bs)
            for start in tqdm(starts, desc=f"plain epoch {epoch + 1}/{setup.epochs + 1}", leave=False,
                              disable=not setup.progress):
                index = order[start:start + bs]
                xb, yb = x[index], y[index]
                offsets, flips = draw_crop_flip(len(xb), device=device, generator=generator)
                xb = crop_flip(xb, offsets, flips)
                if setup.channels_last and cuda_extras:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                model.eval()
                adv = pgd(model, xb, yb)
                model.train()
                loss = F.cross_entropy(model(adv), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(xb)
            loss_sum.item()
            clock.lap()
    return {**clock.summary(), "peak_memory_mib": memory.peak_mib()}


def _trainer(setup, method, mask_refresh):
    from art_part.trainer import AdversarialTrainerPARTPyTorch

    classifier = setup.classifier(setup.fresh_model())
    return AdversarialTrainerPARTPyTorch(
        classifier, method=method, eps=EPS, eps_low=7 / 255, alpha=ALPHA, steps=STEPS, burn_in=0,
        mask_refresh=mask_refresh, augment=True, schedule="constant", track_natural=False, amp=setup.amp,
        channels_last=setup.channels_last, seed=setup.seed, verbose=setup.progress)


def run_ours(setup, memory, method, mask_refresh=1):
    """Our ART trainer; for s > 1, the refresh passes are timed and taken out of the epochs they fell in.

    With ``setup.warmup_batches`` the warm-up is a separate trainer (same initial weights) fitted for one epoch on
    the first batches; the timed trainer then runs ``setup.epochs`` epochs, the first of them with s=10's refresh.
    """
    setup.seed_all()
    clock = EpochClock(setup.device)
    if setup.warmup_batches is not None:
        warm = _trainer(setup, method, mask_refresh)
        n = setup.warmup_n
        clock.start()
        with setup.precision(warm._classifier.model):
            warm.fit(setup.x_np[:n], setup.y_np[:n], batch_size=setup.batch_size, nb_epochs=1)
        clock.lap()
        del warm
        setup.seed_all()
    trainer = _trainer(setup, method, mask_refresh)
    refresh_in_epoch = {}
    timed_refresh = mask_refresh > 1 and trainer.pixel_reweighted
    if timed_refresh:
        # The trainer calls attack.important only in MaskCache.refresh when s > 1: time those calls.
        important = trainer.attack.important

        def timed_important(images):
            began = _now()
            mask = important(images)
            synchronize(setup.device)
            ended, epoch = _now(), len(clock.laps)
            wall, cpu = refresh_in_epoch.get(epoch, (0.0, 0.0))
            refresh_in_epoch[epoch] = (wall + ended[0] - began[0], cpu + ended[1] - began[1])
            return mask

        trainer.attack.important = timed_important
    memory.start()
    if setup.warmup_batches is None:
        clock.start()
        epochs = setup.epochs + 1
    else:
        clock.restart()
        epochs = setup.epochs
    with setup.precision(trainer._classifier.model):
        trainer.fit(setup.x_np, setup.y_np, batch_size=setup.batch_size, nb_epochs=epochs,
                    callback=lambda trainer_, record: clock.lap())
    result = {**clock.summary(), "peak_memory_mib": memory.peak_mib()}
    result["trainer_record_seconds"] = [r["seconds"] for r in trainer.history]
    if timed_refresh:
        trainer.attack.important = important
        result.update(_amortise(setup, trainer, clock, refresh_in_epoch, mask_refresh))
    return result


def cam_pass_seconds(setup, trainer, passes):
    """(wall, CPU) seconds of mask refreshes over the whole training set (``MaskCache.refresh``, as the trainer)."""
    import torch

    from art_part.masks import MaskCache, mask_dtype

    x = torch.as_tensor(setup.x_np, device=setup.device)
    cache = MaskCache(len(x), (3 if trainer.attack.rule == "jet" else 1, *x.shape[2:]), setup.device,
                      mask_dtype(trainer.attack.rule))
    batches = [(x[i:i + setup.batch_size], torch.arange(i, min(i + setup.batch_size, len(x)), device=setup.device))
               for i in range(0, len(x), setup.batch_size)]
    wall, cpu = [], []
    for _ in range(passes):
        synchronize(setup.device)
        began = _now()
        cache.refresh(trainer.attack.important, batches, 0)
        synchronize(setup.device)
        ended = _now()
        wall.append(ended[0] - began[0])
        cpu.append(ended[1] - began[1])
    return wall, cpu


def _amortise(setup, trainer, clock, refresh_in_epoch, mask_refresh):
    """Epochs without their refresh, plus ``1 / s`` of one refresh pass timed on its own (wall and CPU)."""
    with setup.precision(trainer._classifier.model):
        wall, cpu = cam_pass_seconds(setup, trainer, max(2, setup.epochs))
    out = {
        "refresh_seconds_in_run": {str(k): v[0] for k, v in sorted(refresh_in_epoch.items())},
        "cam_pass_seconds": wall,
        "cam_pass_cpu_seconds": cpu,
    }
    for key, laps, passes, index in (("", clock.laps, wall, 0), ("_cpu", clock.cpu_laps, cpu, 1)):
        without = [lap - refresh_in_epoch.get(epoch, (0.0, 0.0))[index] for epoch, lap in enumerate(laps)][1:]
        share = statistics.median(passes) / mask_refresh
        out[f"epoch{key}_seconds_without_refresh"] = without
        out[f"raw_median_epoch{key}_seconds"] = statistics.median(laps[1:])
        # The figure compared with AT: an epoch without refresh plus a 1/s share of one refresh pass.
        out[f"median_epoch{key}_seconds"] = statistics.median(without) + share
        if not key:
            out["mean_epoch_seconds"] = statistics.fmean(without) + share
    return out


def run_art_madry(setup, memory):
    """ART's own Madry PGD trainer on the same weights and data: nb_epochs=1 per call, one call per epoch."""
    import numpy as np
    from art.defences.trainer import AdversarialTrainerMadryPGD

    setup.seed_all()
    classifier = setup.classifier(setup.fresh_model())
    trainer = AdversarialTrainerMadryPGD(classifier, nb_epochs=1, batch_size=setup.batch_size, eps=EPS,
                                         eps_step=ALPHA, max_iter=STEPS, num_random_init=1)
    y_onehot = np.eye(setup.num_classes, dtype=np.float32)[setup.y_np]
    memory.start()
    clock = EpochClock(setup.device)
    clock.start()
    # ART's trainer draws its own progress bars; without --progress they are swallowed.
    quiet = contextlib.nullcontext() if setup.progress else contextlib.redirect_stderr(io.StringIO())
    with quiet, setup.precision(classifier.model):
        for epoch in range(setup.epochs + 1):
            n = setup.warmup_n if epoch == 0 else len(setup.x_np)
            trainer.fit(setup.x_np[:n], y_onehot[:n])
            clock.lap()
    return {**clock.summary(), "peak_memory_mib": memory.peak_mib()}


def cam_comparison(model, images, device, layer, repeats=5):
    """Our batched CAM (:func:`torchattacks_part.cam.cam_maps`) against pytorch-grad-cam's ``GradCAM`` on the same
    batch and model (predicted class, the same target layer): the largest difference between the maps and the
    median time of ``repeats`` calls each, after one untimed call each. The library gets its own copy of the model
    (its constructor leaves a model in eval mode and its hooks copy activations to the CPU)."""
    import numpy as np
    from pytorch_grad_cam import GradCAM

    from torchattacks_part.cam import cam_maps

    model = model.to(device).eval()
    library_model = copy.deepcopy(model)
    x = images.to(device)

    def ours():
        return cam_maps(model, x, target_layer=layer)

    timed = {}
    target = library_model.get_submodule(layer)
    reshape = None
    if any(hasattr(m, "patch_embed") for m in library_model.modules()):
        # A ViT's block outputs tokens: pytorch-grad-cam needs the reshape to the patch grid that cam_maps does.
        from torchattacks_part.cam import token_reshape_transform

        reshape = token_reshape_transform(library_model, target, tuple(x.shape[-2:]))
    with GradCAM(model=library_model, target_layers=[target], reshape_transform=reshape) as cam:
        def library():
            return cam(input_tensor=x, targets=None)

        outputs = {}
        for name, call in (("ours", ours), ("pytorch_grad_cam", library)):
            outputs[name] = call()  # untimed: first-call costs (autotuning, hook set-up)
            times = []
            for _ in range(repeats):
                synchronize(device)
                began = time.perf_counter()
                call()
                synchronize(device)
                times.append(time.perf_counter() - began)
            timed[name] = times
    mine = outputs["ours"].float().cpu().numpy()
    theirs = np.asarray(outputs["pytorch_grad_cam"], dtype=np.float32)
    diff = np.abs(mine - theirs)
    ours_s, lib_s = statistics.median(timed["ours"]), statistics.median(timed["pytorch_grad_cam"])
    return {
        "batch": len(x), "layer": layer, "repeats": repeats, "shape": list(mine.shape),
        "max_abs_difference": float(diff.max()), "maps_equal_1e-4": bool(diff.max() <= 1e-4),
        "maps_differing_over_1e-3": int((diff.reshape(len(x), -1).max(axis=1) > 1e-3).sum()),
        "ours_seconds": timed["ours"], "pytorch_grad_cam_seconds": timed["pytorch_grad_cam"],
        "median_ours_seconds": ours_s, "median_pytorch_grad_cam_seconds": lib_s,
        "speedup": lib_s / ours_s if ours_s > 0 else None, "target_speedup": CAM_TARGET,
        "met": None if ours_s <= 0 else lib_s / ours_s >= CAM_TARGET,
    }


def cam_markdown(cam):
    return (f"Batched CAM (torchattacks_part.cam.cam_maps) vs pytorch-grad-cam GradCAM, batch {cam['batch']}, layer "
            f"`{cam['layer']}`: median {cam['median_ours_seconds'] * 1e3:.1f} ms vs "
            f"{cam['median_pytorch_grad_cam_seconds'] * 1e3:.1f} ms per call, **{cam['speedup']:.1f}x** (target >= "
            f"{cam['target_speedup']:.0f}x: {_met(cam['met'])}); largest map difference "
            f"{cam['max_abs_difference']:.2e} ({cam['maps_differing_over_1e-3']} of {cam['batch']} maps differ by "
            f"more than 1e-3).")


# ------------------------------------------------------------------------------------------------- report


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return platform.processor() or platform.machine()
    return platform.processor() or platform.machine()


def ratios(runs):
    """Median-epoch ratios, on wall time (``value``) and on process CPU time (``cpu_value``)."""
    out = {}
    for name, (num, den, target) in RATIOS.items():
        if num in runs and den in runs:
            wall = runs[num]["median_epoch_seconds"] / runs[den]["median_epoch_seconds"]
            cpu = runs[num]["median_epoch_cpu_seconds"] / runs[den]["median_epoch_cpu_seconds"]
            out[name] = {"value": wall, "cpu_value": cpu, "target": target,
                         "met": None if target is None else wall <= target,
                         "cpu_met": None if target is None else cpu <= target}
    return out


def _met(flag):
    return "-" if flag is None else ("yes" if flag else "**no**")


def markdown(report):
    runs, config = report["runs"], report["config"]
    cpu = config["device"] == "cpu"
    at = runs.get("at")
    warmup = "epoch" if not config.get("warmup_batches") else f"of {config['warmup_batches']} batches"
    lines = [
        f"{config['model']} ({config['parameters'] / 1e6:.2f}M parameters), n={config['n']}, batch "
        f"{config['batch_size']}, {config['epochs']} timed epoch(s) after a warm-up {warmup}"
        f"{', bf16 autocast' if config.get('amp') else ''}{', channels-last' if config.get('channels_last') else ''}, "
        f"{config['device_name']}",
        "",
    ]
    if cpu:
        lines += ["| run | timed epochs, wall (s) | median wall s/epoch | median CPU s/epoch | vs ours AT (wall / CPU) "
                  "| peak memory growth (MiB) | load avg (start / end) |",
                  "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| run | timed epochs (s) | median s/epoch | vs ours AT | peak memory growth (MiB) |",
                  "|---|---|---|---|---|"]
    for name in RUNS:
        if name not in runs:
            continue
        r = runs[name]
        epochs = ", ".join(f"{t:.2f}" for t in (r.get("epoch_seconds_without_refresh") or r["epoch_seconds"]))
        wall = r["median_epoch_seconds"]
        if cpu:
            vs = (f"{wall / at['median_epoch_seconds']:.3f}x / "
                  f"{r['median_epoch_cpu_seconds'] / at['median_epoch_cpu_seconds']:.3f}x") if at else "-"
            load = r["loadavg_1min"]
            loads = " / ".join("-" if load.get(k) is None else f"{load[k]:.1f}" for k in ("start", "end"))
            lines.append(f"| {RUN_LABELS[name]} | {epochs} | {wall:.2f} | {r['median_epoch_cpu_seconds']:.2f} | {vs} "
                         f"| {r['peak_memory_mib']:.0f} | {loads} |")
        else:
            vs = f"{wall / at['median_epoch_seconds']:.3f}x" if at else "-"
            lines.append(f"| {RUN_LABELS[name]} | {epochs} | {wall:.2f} | {vs} | {r['peak_memory_mib']:.0f} |")
    if "part_s10" in runs:
        r = runs["part_s10"]
        cam_wall, cam_cpu = statistics.median(r["cam_pass_seconds"]), statistics.median(r["cam_pass_cpu_seconds"])
        share = (f", {cam_wall / at['median_epoch_seconds']:.1%} of an AT epoch in wall time"
                 + (f", {cam_cpu / at['median_epoch_cpu_seconds']:.1%} in CPU time" if cpu else "")) if at else ""
        lines += ["", f"PART s=10: epochs without a refresh, plus 1/10 of one CAM pass over the training set "
                      f"(median {cam_wall:.2f} s wall, {cam_cpu:.2f} s CPU{share}). One such pass per epoch is "
                      f"what s=1 adds to AT, so AT x (1 + that share) predicts PART s=1 from quieter figures "
                      f"than two separate runs give."]
    if cpu:
        lines += ["", "| ratio of median epochs | wall | CPU time | target | met (wall) | met (CPU) |",
                  "|---|---|---|---|---|---|"]
    else:
        lines += ["", "| ratio of median epochs | measured | target | met |", "|---|---|---|---|"]
    for name, r in report["ratios"].items():
        target = "-" if r["target"] is None else f"<= {r['target']:.2f}"
        if cpu:
            lines.append(f"| {RATIO_LABELS[name]} | {r['value']:.3f} | {r['cpu_value']:.3f} | {target} | "
                         f"{_met(r['met'])} | {_met(r['cpu_met'])} |")
        else:
            lines.append(f"| {RATIO_LABELS[name]} | {r['value']:.3f} | {target} | {_met(r['met'])} |")
    paper = report["paper_table9"]
    empty = " - | - | - | - |" if cpu else " - | - |"
    lines.append(f"| paper Table 9: PART / AT ({paper['hardware']}) | {paper['part/at']:.2f} |{empty}")
    if at:
        full = at["median_epoch_seconds"] * FULL_TRAINING_SET / config["n"]
        lines += ["", f"AT epoch: {at['median_epoch_seconds']:.2f} s on {config['n']} images, so "
                      f"{full:.2f} s scaled to CIFAR-10's {FULL_TRAINING_SET} (target <= {AT_EPOCH_TARGET_S:.0f} s: "
                      f"{_met(full <= AT_EPOCH_TARGET_S)})."]
    if report.get("cam"):
        lines += ["", cam_markdown(report["cam"])]
    lines += ["", f"Memory: {report['memory_source']}."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- entry point


def _run_list(text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in RUNS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"runs must be a comma-separated subset of {','.join(RUNS)}, got {text!r}")
    return list(dict.fromkeys(names))  # in the order given (reverse it to see how much order matters)


def build_parser():
    from .models import MODELS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="Epoch time and peak memory of AT, PART (s=1, s=10) with our ART trainer, a plain torch "
                    "PGD-AT loop and ART's AdversarialTrainerMadryPGD, on one model, one set of initial weights and "
                    "the first N CIFAR-10 training images. Writes JSON and prints a markdown table.")
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available (default auto)")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18", help="architecture (default resnet18)")
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N,
                        help=f"training images, the first N of CIFAR-10's training set (default {DEFAULT_N})")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                        help=f"timed epochs per run, after one untimed warm-up epoch (default {DEFAULT_EPOCHS})")
    parser.add_argument("--runs", type=_run_list, default=list(RUNS),
                        help=f"comma-separated subset of {','.join(RUNS)}, run in that order (default all, in "
                             f"that order)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON output file (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every run")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast of every training forward (attack, CAM and update) in every run, as the "
                             "quick preset trains (slow on a CPU without AVX-512 BF16)")
    parser.add_argument("--warmup-batches", type=positive_int, default=None,
                        help="warm up on the first K batches instead of one whole epoch (default: one epoch)")
    parser.add_argument("--cam-batch", type=int, default=128,
                        help="batch of the CAM comparison, ours vs pytorch-grad-cam, on the first training images "
                             "(default 128; 0: none)")
    parser.add_argument("--cam-repeats", type=positive_int, default=5, help="timed calls of each CAM (default 5)")
    parser.add_argument("--cam-checkpoint", default=None,
                        help="model.pt (from part-bench train) whose weights the CAM comparison uses (default: the "
                             "benchmark's initial weights)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (CUDA only)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's own). On a CPU shared with other work, 1 "
                             "avoids the thread pool's spin-waits, which make 2-thread epochs 5x slower at random")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    return parser


def resolve_device(name):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch.cuda.is_available() is False")
    return torch.device(name)


def run(args):
    """Run the benchmark for parsed ``args``; returns the report dict (also written to ``args.out``)."""
    import torch

    from .data import load_cifar10

    progress = not args.no_progress
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        x, y = load_cifar10(args.data_dir, train=True, n=args.n)
    except FileNotFoundError as error:
        raise UsageError(" ".join(str(error).split())) from None
    return run_on(args, device, x, y, progress)


def run_on(args, device, x, y, progress=True):
    """Run the benchmark for parsed ``args`` on given training images ``x`` (float (N, 3, H, W) in [0, 1], CPU) and
    labels ``y`` instead of reading ``args.data_dir`` (the device run passes the arrays it verified)."""
    import torch

    from art_part.checkpoint import atomic_write_text

    setup = Setup(args.model, x, y, device, args.batch_size, args.epochs, args.seed, args.amp, args.channels_last,
                  progress, warmup_batches=args.warmup_batches)
    memory = PeakMemory(device)
    commit, dirty = _git_commit()
    config = {
        "model": args.model, "parameters": setup.parameters, "n": len(x), "batch_size": args.batch_size,
        "epochs": args.epochs, "warmup_epochs": 1, "warmup_batches": args.warmup_batches,
        "runs_in_order": list(args.runs), "seed": args.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU {_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "amp": args.amp, "channels_last": args.channels_last, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": commit, "git_dirty": dirty,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m benchmarks.speed " + " ".join(getattr(args, "argv", []) or []),
        "attack": {"eps": EPS, "eps_low": 7 / 255, "alpha": ALPHA, "steps": STEPS, "random_start": True},
        "optimizer": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
    }
    runners = {
        "plain": lambda: run_plain(setup, memory),
        "at": lambda: run_ours(setup, memory, "at"),
        "part_s1": lambda: run_ours(setup, memory, "part", 1),
        "part_s10": lambda: run_ours(setup, memory, "part", 10),
        "art_madry": lambda: run_art_madry(setup, memory),
    }
    runs = {}
    for name in args.runs:
        _log(f"{name}: {RUN_LABELS[name]}, 1 warm-up + {args.epochs} timed epoch(s) on {len(x)} images", progress)
        runs[name] = runners[name]()
        _log(f"{name}: median {runs[name]['median_epoch_seconds']:.2f} s/epoch, "
             f"peak memory growth {runs[name]['peak_memory_mib']:.0f} MiB", progress)
    cam = None
    if args.cam_batch > 0:
        from .models import CAM_LAYERS
        from .train import load_model

        model = load_model(args.cam_checkpoint)[0] if args.cam_checkpoint else setup.fresh_model()
        _log(f"CAM: ours vs pytorch-grad-cam GradCAM on {min(args.cam_batch, len(x))} images", progress)
        cam = cam_comparison(model, x[:args.cam_batch], device, CAM_LAYERS[args.model], args.cam_repeats)
        cam["weights"] = args.cam_checkpoint or "the benchmark's initial weights"
    report = {
        "config": config, "runs": runs, "ratios": ratios(runs), "paper_table9": PAPER_TABLE9,
        "memory_source": memory.source, "cam": cam,
    }
    report["markdown"] = markdown(report)
    atomic_write_text(json.dumps(report, indent=2) + "\n", args.out)
    return report


def main(argv=None):
    """Command line; ``argv`` defaults to ``sys.argv[1:]``. Returns 0; exits 2 on a usage problem."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        report = run(args)
    except UsageError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(report["markdown"])
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
