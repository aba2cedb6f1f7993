"""PART trainers for ART: AT, TRADES, MART and their pixel-reweighted versions PART, PART-T, PART-M; and standard
(natural) training, for the accurate branch of a mixed classifier.

One code path trains all seven. The plain methods are the PART code with the budget map switched off (``eps``
everywhere), so comparisons are fair. The per-pixel budget enters only the inner maximisation (Pixel-AG with CE for
PART and PART-M, with TRADES' KL for PART-T); the outer losses are the standard TRADES and MART losses of
:mod:`torchattacks_part.losses`.

Everything per batch stays on the device: data, shuffling, CIFAR augmentation (:mod:`art_part.augment`), masks
(:mod:`art_part.masks`), attack and update. Each epoch ends with an atomic checkpoint and a JSON-lines record; a run
resumed from its checkpoint ends with the same weights as an uninterrupted one (on CPU).

Reliability: bad input fails before any work (the arrays of ``fit`` are checked once; a loader's or generator's
first batch eagerly, every later one on the device, read where the loop syncs anyway); a checkpoint never holds
non-finite weights; a checkpoint names its run (data, seed, settings) and resumes only that run; ``log.jsonl`` is
rewritten from the checkpoint on resume; temporary files a kill left are removed at the next start.
"""

import copy
import hashlib
import math
import numbers
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from art.defences.trainer import AdversarialTrainer
from tqdm.auto import tqdm

from torchattacks_part.checks import check_budget_params, check_choice, check_number, check_steps
from torchattacks_part.losses import mart_loss, trades_loss

from . import checkpoint as ckpt
from .attacks import (MMAPyTorch, PixelAGPyTorch, _model_modes, _restore_modes, check_estimator,
                      preprocessing_function)
from .augment import crop_flip, draw_crop_flip
from .masks import MaskCache, mask_dtype

#: method -> (inner loss, outer loss, pixel-reweighted); inner loss None: no attack, the outer loss on the natural batch
METHODS = {
    "standard": (None, "ce", False),
    "at": ("ce", "ce", False),
    "trades": ("kl", "trades", False),
    "mart": ("ce", "mart", False),
    "part": ("ce", "ce", True),
    "part-t": ("kl", "trades", True),
    "part-m": ("ce", "mart", True),
}
EXAMPLE_GENERATORS = ("pgd", "mma")
SCHEDULES = ("paper", "released", "constant")
#: Random start of the inner attack of MART and PART-M: the official x + 0.001 N(0, 1), or uniform in the box.
MART_STARTS = ("gaussian", "uniform")
CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"


class AdversarialTrainerPARTPyTorch(AdversarialTrainer):
    """Adversarial training with AT, TRADES, MART, PART, PART-T or PART-M on a ``PyTorchClassifier``; or standard
    training (method "standard": cross-entropy on the augmented natural batch, no attack) through the same pipeline.

    | Paper link: https://arxiv.org/abs/2406.00685 (PART, ICML 2024)

    :param classifier: ``PyTorchClassifier`` with ``clip_values=(0, 1)`` and an ``optimizer``; its ``nb_classes``
        must match the model's output (checked with one forward pass of a zero input of ``input_shape``).
    :param method: one of ``METHODS``: "at", "trades", "mart", "part", "part-t", "part-m", or "standard" (no
        attack: its epoch records hold ``adversarial_acc``, ``important_fraction`` and ``mean_budget`` None).
    :param eps: budget of important pixels (8/255).
    :param eps_low: budget of the other pixels after the burn-in, PART methods only (7/255).
    :param alpha: attack step size (2/255; 1/255 on SVHN in the paper).
    :param steps: attack steps (10).
    :param random_start: random start of the inner attack (uniform in the box for AT and PART; TRADES' gaussian
        for the KL; see ``mart_start`` for MART and PART-M).
    :param beta: TRADES / MART trade-off lambda (6).
    :param burn_in: epochs of the plain method before the budget map switches on (20).
    :param mask_refresh: s, epochs between mask refreshes: 1 computes the CAM of every batch right before its
        attack; s > 1 caches one mask per sample, computed on the un-augmented images every s epochs.
    :param cam: CAM method; :param target_layer: CAM layer (None: last conv block); :param rule: "cam", "jet",
        "random" or "linear" (a continuous budget; with s > 1 the cache holds float32 maps; see
        :mod:`torchattacks_part.budget`).
    :param fixed_mask: optional boolean tensor (1 or B, 1, H, W) of important pixels that replaces the CAM for
        every batch after the burn-in, e.g. :func:`torchattacks_part.budget.quadrant_mask` for the paper's
        proof-of-concept (Figure 1). The same pixels in every (augmented) image: a fixed region, not an object.
    :param example_generator: "pgd" (Pixel-AG) or "mma" (minimum-margin attack with the same budget, paper Table 5).
    :param mma_k: MMA's number of target classes.
    :param augment: random crop (4-pixel zero padding) and horizontal flip on the device (CIFAR-10); False for SVHN.
    :param schedule: "paper" (lr / 10 at 3/4 of the epochs: epoch 60 of 80), "released" (lr / 10 for the last epoch
        only, as the authors' code did), "constant", or any torch LR scheduler built on the classifier's optimizer
        (stepped once per epoch; ``ReduceLROnPlateau`` gets the epoch loss). The decay of "paper" and "released"
        never hits the first epoch: with ``nb_epochs=1`` the only epoch trains at the optimizer's lr.
    :param checkpoint_dir: folder for ``last.pt`` (written atomically every epoch) and ``log.jsonl``; None: none.
        Checked at construction (not a file) and at the start of training (creatable and writable). A folder that
        already holds ``last.pt`` is continued with ``resume=True`` or started over with ``overwrite=True``; any other
        ``fit`` refuses it.
    :param track_natural: also report natural training accuracy (AT/PART: one extra no-grad eval forward a batch).
    :param amp: bf16 autocast on CUDA. :param channels_last: channels-last memory format on CUDA.
    :param seed: seed of the trainer's own generator (shuffling and augmentation), an integer in [0, 2**63 - 1].
    :param verbose: progress bars.
    :param mart_start: random start of the inner attack of MART and PART-M (``example_generator="pgd"``):
        "gaussian" (default), ``x + 0.001 N(0, 1)`` as in the official MART code and the authors' ``part_mart.py``,
        or "uniform" in each entry's box, as AT and PART start.

    Every ``fit`` that does not resume starts from the optimizer's hyper-parameters (lr, momentum, ...) and the
    scheduler's state as they were when the trainer was built, so a second ``fit`` repeats the schedule instead of
    continuing from the decayed lr; the model's weights carry over, as in ART.
    """

    def __init__(self, classifier, method="part", eps=8 / 255, eps_low=7 / 255, alpha=2 / 255, steps=10,
                 random_start=True, beta=6.0, burn_in=20, mask_refresh=1, cam="gradcam", target_layer=None,
                 rule="cam", fixed_mask=None, example_generator="pgd", mma_k=3, augment=True, schedule="paper",
                 checkpoint_dir=None, track_natural=True, amp=False, channels_last=False, seed=0, verbose=True,
                 mart_start="gaussian"):
        check_estimator("classifier", classifier)
        check_choice("method", method, METHODS)
        check_choice("example_generator", example_generator, EXAMPLE_GENERATORS)
        check_choice("mart_start", mart_start, MART_STARTS)
        eps, eps_low, alpha = check_budget_params(eps, eps_low, alpha)
        check_steps("steps", steps)
        check_steps("mask_refresh", mask_refresh)
        check_number("beta", beta)
        seed = _check_seed(seed)
        checkpoint_dir = _check_checkpoint_dir(checkpoint_dir)
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be an integer >= 0, got {burn_in!r}")
        if fixed_mask is not None and (not isinstance(fixed_mask, torch.Tensor) or fixed_mask.dtype != torch.bool
                                       or fixed_mask.dim() != 4 or fixed_mask.shape[1] != 1):
            got = (f"{tuple(fixed_mask.shape)} {fixed_mask.dtype}" if isinstance(fixed_mask, torch.Tensor)
                   else type(fixed_mask).__name__)
            raise ValueError(f"fixed_mask must be None or a boolean tensor of shape (1 or B, 1, H, W), got {got}")
        if isinstance(schedule, str):
            check_choice("schedule", schedule, SCHEDULES)
        elif not hasattr(schedule, "step") or not hasattr(schedule, "state_dict"):
            raise ValueError(f"schedule must be one of {list(SCHEDULES)} or a torch LR scheduler, got {schedule!r}")
        if getattr(classifier, "optimizer", None) is None:
            raise ValueError("classifier must have an optimizer: build the PyTorchClassifier with optimizer=...")
        if not isinstance(schedule, str) and getattr(schedule, "optimizer", classifier.optimizer) \
                is not classifier.optimizer:
            raise ValueError("schedule must be built on the classifier's optimizer (classifier.optimizer), "
                             "not on another one")
        # clip_values (0, 1) is checked by the attack built below, before any work.
        inner, self.outer, self.pixel_reweighted = METHODS[method]
        #: False for "standard": no attack is ever called.
        self.attacked = inner is not None
        self.method, self.eps, self.alpha, self.steps = method, eps, alpha, steps
        self.eps_low = eps_low if self.pixel_reweighted else eps
        self.beta, self.burn_in, self.mask_refresh = float(beta), burn_in, mask_refresh
        self.augment, self.schedule, self.checkpoint_dir = augment, schedule, checkpoint_dir
        self.track_natural, self.amp, self.channels_last, self.seed = track_natural, amp, channels_last, seed
        self.verbose = verbose
        self.random_start, self.cam, self.rule = random_start, cam, rule
        self.example_generator, self.mma_k, self.mart_start = example_generator, mma_k, mart_start
        self.fixed_mask = None if fixed_mask is None else fixed_mask.to(classifier.device)
        common = dict(eps=eps, eps_step=alpha, max_iter=steps, num_random_init=int(random_start),
                      eps_low=self.eps_low, cam=cam, target_layer=target_layer, rule=rule)
        if example_generator == "mma":
            art_attack = MMAPyTorch(classifier, k=mma_k, **common)
        else:
            start = mart_start if self.outer == "mart" else None  # None: uniform for CE, gaussian for the KL
            # "standard" still builds one (never called): ART's AdversarialTrainer holds an attack.
            art_attack = PixelAGPyTorch(classifier, loss=inner or "ce", start=start, **common)
        super().__init__(classifier, art_attack, ratio=1.0)
        #: The torchattacks_part attack the loop calls, with a budget tensor, on device tensors.
        self.attack = art_attack.attack
        self.device = classifier.device
        self.history = []
        self._scheduler = None
        self._rank, self._world, self._train_model = 0, 1, classifier.model
        self._preprocess = preprocessing_function(classifier)
        self._input_shape = tuple(classifier.input_shape)
        self._dtype = _model_dtype(classifier.model)
        _check_nb_classes(classifier, self._preprocess, self._dtype)
        # What every fresh fit starts from (see the class docstring).
        self._initial_groups = [copy.deepcopy({k: v for k, v in group.items() if k != "params"})
                                for group in classifier.optimizer.param_groups]
        self._initial_schedule = None if isinstance(schedule, str) else copy.deepcopy(schedule.state_dict())
        self._run = None

    # ------------------------------------------------------------------------------------------------- phases

    def part_active(self, epoch):
        """True when epoch (0-based) is past the burn-in and the method is pixel-reweighted."""
        return self.pixel_reweighted and self.eps_low < self.eps and epoch >= self.burn_in

    def refresh_due(self, epoch):
        return self.part_active(epoch) and (epoch - self.burn_in) % self.mask_refresh == 0

    # ------------------------------------------------------------------------------------------------- public

    def fit(self, x, y, batch_size=128, nb_epochs=80, resume=False, callback=None, overwrite=False, **kwargs):
        """Train on numpy arrays: x (N, C, H, W) floating point in [0, 1], y one-hot (N, classes) or indices (N,).

        The whole set is checked once (dtype, shape against the classifier's ``input_shape``, finite values in
        [0, 1], labels in [0, nb_classes)), cast to float32 (float64 and float16 arrays too) and moved to the device
        once; shuffling and augmentation run there.

        :param resume: continue from ``checkpoint_dir/last.pt`` when it exists. The checkpoint must hold this run:
            the same data (number of samples and a fingerprint of the values), seed and settings; ``nb_epochs`` may
            be larger (training longer: the extra epochs follow the schedule the run was started with), not smaller.
        :param callback: called as ``callback(trainer, record)`` after each epoch's checkpoint.
        :param overwrite: start a new run in a ``checkpoint_dir`` that already holds one (its ``last.pt`` and
            ``log.jsonl`` are removed first). Without it (or ``resume``) such a folder is refused.
        """
        self._check_run_args(nb_epochs, resume, overwrite, callback)
        check_steps("batch_size", batch_size)
        x, y = self._arrays(x, y)
        self._train(_TensorSource(x, y, batch_size), nb_epochs, resume, callback, overwrite)

    def fit_loader(self, loader, nb_epochs=80, resume=False, callback=None, overwrite=False):
        """Train from a torch ``DataLoader`` of un-augmented (x, y) or (x, y, index) batches.

        Images must be floating point in [0, 1], channels-first as the classifier's ``input_shape``; they are cast to
        the model's dtype on the device. Labels are class indices (integers, or integral floats) or one-hot rows.
        The first batch is checked before any work; the others on the device, reported (``ValueError``) at the
        loop's next synchronisation (every 20 batches and at the end of the epoch), before that epoch's checkpoint.

        ``mask_refresh > 1`` caches one mask per sample, so each batch must name its samples: wrap the dataset,
        ``DataLoader(IndexedDataset(dataset), ...)`` (:class:`art_part.IndexedDataset`: item i is (x, y, i)), or
        give a map-style dataset of your own that yields (x, y, index) with index in [0, len(dataset)). The refresh
        pass reads ``loader.dataset`` again in index order (same batch size and workers, no shuffling), so the
        dataset must be map-style and yield un-augmented images.
        ``resume``, ``callback`` and ``overwrite`` as in :meth:`fit`.
        """
        self._check_run_args(nb_epochs, resume, overwrite, callback)
        self._fit_loader(loader, "loader", nb_epochs, resume, callback, overwrite)

    def fit_generator(self, generator, nb_epochs=80, resume=False, callback=None, overwrite=False, **kwargs):
        """Train from an ART ``DataGenerator`` (a ``PyTorchDataGenerator`` runs through its DataLoader).

        Its batches are checked as in :meth:`fit_loader`. ``mask_refresh > 1`` needs a ``PyTorchDataGenerator``
        whose DataLoader yields each sample's index, as in :meth:`fit_loader`:
        ``PyTorchDataGenerator(DataLoader(IndexedDataset(dataset), ...), len(dataset), batch_size)``.
        """
        self._check_run_args(nb_epochs, resume, overwrite, callback)
        if not callable(getattr(generator, "get_batch", None)) or not hasattr(generator, "size") \
                or not hasattr(generator, "batch_size"):
            raise TypeError(f"generator must be an ART DataGenerator (e.g. art.data_generators.PyTorchDataGenerator "
                            f"or NumpyDataGenerator), got {type(generator).__name__}")
        loader = getattr(generator, "iterator", None)
        if isinstance(loader, torch.utils.data.DataLoader):
            return self._fit_loader(loader, "generator", nb_epochs, resume, callback, overwrite)
        if self.pixel_reweighted and self.mask_refresh > 1 and self.fixed_mask is None:
            raise ValueError(f"mask_refresh={self.mask_refresh} (> 1) needs per-sample indices, which a "
                             f"{type(generator).__name__} does not give: wrap the dataset: PyTorchDataGenerator("
                             f"DataLoader(IndexedDataset(dataset), ...), size, batch_size) (art_part.IndexedDataset), "
                             f"or use fit(x, y)")
        source = _GeneratorSource(generator, self._batch_check("generator"))
        self._train(source, nb_epochs, resume, callback, overwrite)

    # ------------------------------------------------------------------------------------------------- inputs

    def _fit_loader(self, loader, name, nb_epochs, resume, callback, overwrite):
        source = _LoaderSource(loader, self._batch_check(name))
        if self.pixel_reweighted and self.mask_refresh > 1 and self.fixed_mask is None and not source.indexed:
            raise ValueError(f"{name}: mask_refresh={self.mask_refresh} (> 1) needs per-sample indices, but the "
                             f"DataLoader yields (x, y): wrap the dataset: DataLoader(IndexedDataset(dataset), ...) "
                             f"(art_part.IndexedDataset yields (x, y, index))")
        self._train(source, nb_epochs, resume, callback, overwrite)

    def _check_run_args(self, nb_epochs, resume, overwrite, callback):
        check_steps("nb_epochs", nb_epochs)
        for name, value in (("resume", resume), ("overwrite", overwrite)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if resume and overwrite:
            raise ValueError("resume and overwrite are both True: pass one (resume continues the run in "
                             "checkpoint_dir, overwrite starts it over)")
        if resume and not self.checkpoint_dir:
            raise ValueError("resume=True needs checkpoint_dir, the folder of the run to continue")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be None or callable as callback(trainer, record), "
                            f"got {type(callback).__name__}")

    def _batch_check(self, name):
        return _BatchCheck(name, self._input_shape, self._classifier.nb_classes, self.device, self._dtype)

    def _arrays(self, x, y):
        """fit's x and y, checked once, as device tensors: images in the model's dtype, labels int64 indices."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            hint = ": divide uint8 images by 255" if x.dtype.kind in "iu" else ""
            raise ValueError(f"x must hold floating-point images in [0, 1], got dtype {x.dtype}{hint}")
        if x.ndim >= 1 and x.shape[0] == 0:
            raise ValueError("x must hold at least one image, got an empty array")
        _check_image_shape("x", x.shape, self._input_shape)
        y = _label_array(np.asarray(y), len(x), self._classifier.nb_classes)
        x = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device).to(self._dtype)
        lo, hi = (float(v) for v in torch.stack(torch.aminmax(x)).tolist())  # NaN propagates to both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("x must not contain NaN or inf")
        if lo < 0 or hi > 1:
            raise ValueError(f"x must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        return x, torch.as_tensor(y, device=self.device)

    # ------------------------------------------------------------------------------------------------- loop

    def _train(self, source, nb_epochs, resume, callback, overwrite):
        if self.pixel_reweighted and self.eps_low < self.eps and self.burn_in >= nb_epochs:
            raise ValueError(f"burn_in must be < nb_epochs for {self.method} (PART never starts otherwise), got "
                             f"burn_in={self.burn_in}, nb_epochs={nb_epochs}")
        shape = source.image_shape
        if self.fixed_mask is not None and tuple(self.fixed_mask.shape[-2:]) != shape[-2:]:
            raise ValueError(f"fixed_mask must match the images' height and width {shape[-2:]}, "
                             f"got {tuple(self.fixed_mask.shape[-2:])}")
        self._rank, self._world = _distributed_rank_world()
        leader = self._rank == 0
        source.shard(self._rank, self._world, self.seed)
        path = self._prepare_folder(resume, overwrite) if self.checkpoint_dir else None
        identity = self._run_identity(source, nb_epochs) if path else None  # what the checkpoint will name
        state = None
        if resume and path and os.path.exists(path):
            state = ckpt.load(path, self.device)
            self._check_resume(state, path, identity)  # before anything changes
        model = self._classifier.model
        optimizer = self._classifier.optimizer
        self._reset_optimizer(optimizer)  # a fresh fit's lr; a resumed run then loads its own
        if self.channels_last and self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        # Data parallel: the update runs through DistributedDataParallel (gradients averaged across ranks); the
        # attack and the CAM use the plain module, since they need no gradient synchronisation.
        self._train_model = model
        if self._world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self._scheduler = self._make_scheduler(optimizer, nb_epochs)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self._extra_generators = source.generators()
        self.history = []  # this run's records (a resumed run gets those of the checkpoint back)
        self._run = identity
        masks = None
        if self.pixel_reweighted and self.mask_refresh > 1 and self.fixed_mask is None:
            masks = MaskCache(source.num_samples, self._mask_shape(source), self.device, mask_dtype(self.rule))
        start = 0
        if state is not None:
            start = self._restore(state, path, optimizer, generator, masks)
            if leader:  # a kill between last.pt and log.jsonl left the log an epoch short: last.pt decides
                self._write_log()
        self._full_budget = None
        for epoch in range(start, nb_epochs):
            record = self._epoch(epoch, nb_epochs, source, model, optimizer, generator, masks)
            if self._world > 1:
                # DDP syncs BatchNorm statistics at the start of each forward; end the epoch with rank 0's on all
                # ranks too, so every rank holds the model the checkpoint holds.
                for buffer in model.buffers():
                    torch.distributed.broadcast(buffer, 0)
            self._check_weights(model, optimizer, epoch)
            self.history.append(record)
            if path:
                self._save(path, epoch, optimizer, generator, masks)
                if leader:
                    self._write_log()
                if self._world > 1:
                    torch.distributed.barrier()
            if callback is not None:
                callback(self, record)

    def _epoch(self, epoch, nb_epochs, source, model, optimizer, generator, masks):
        began = time.perf_counter()
        part = self.part_active(epoch)
        # loss sum, natural correct, adversarial correct, n, important (entries at full eps), budget (entry means)
        totals = torch.zeros(6, device=self.device)
        ones = torch.ones((), device=self.device)  # batch sizes enter the totals without a copy per batch
        zero = torch.zeros((), device=self.device)
        degenerate = torch.zeros((), dtype=torch.long, device=self.device)  # degenerate CAMs this epoch
        if masks is not None and self.refresh_due(epoch):
            def important(images):
                nonlocal degenerate
                mask = self.attack.important(images)
                degenerate = degenerate + self.attack.last_degenerate
                return mask

            masks.refresh(important, source.unaugmented(), epoch)
        source.set_epoch(epoch)
        batches = source.batches(generator)
        bar = tqdm(batches, total=source.num_batches, desc=f"{self.method} epoch {epoch + 1}/{nb_epochs}",
                   disable=not self.verbose or self._rank != 0, leave=False)
        check = source.check  # None for fit's tensors, checked once as a whole
        for step, (x, y, index) in enumerate(bar):
            offsets = flips = None
            if self.augment:
                offsets, flips = draw_crop_flip(len(x), device=self.device, generator=generator)
                x = crop_flip(x, offsets, flips)
            if not self.attacked:
                budget = None  # "standard": no attack, no budget
            elif not part:
                budget = self._uniform_budget(x)
            elif self.fixed_mask is not None:
                budget = self.attack.budget_from(self.fixed_mask.expand(len(x), -1, -1, -1), x.dtype)
            elif masks is None:
                budget = self.attack.budget(x)  # s = 1: the CAM of this very batch, right before its attack
                degenerate += self.attack.last_degenerate
            else:
                budget = self.attack.budget_from(masks.lookup(index, offsets, flips), x.dtype)
            loss, natural_correct, adversarial_correct = self._step(model, optimizer, x, y, budget)
            # Every image's budget has as many entries: batch means weighted by batch size average over all entries.
            full = zero if budget is None else (budget >= self.eps).float().mean()
            mean = zero if budget is None else budget.float().mean()
            totals += torch.stack([loss.detach() * len(x), natural_correct, adversarial_correct,
                                   ones * len(x), full * len(x), mean * len(x)])
            if step % 20 == 0 or step == source.num_batches - 1:
                self._check_progress(totals[0], None if check is None else check.flags, check, epoch, step)
                n = totals[3].item()
                accuracy = {"adv_acc": f"{totals[2].item() / n:.3f}"} if self.attacked else \
                    {"nat_acc": f"{totals[1].item() / n:.3f}"}
                bar.set_postfix(loss=f"{totals[0].item() / n:.4f}", **accuracy)
        bar.close()
        flags = None if check is None else check.flags
        if self._world > 1:  # every rank logs the figures of the whole epoch (and stops on any rank's bad data)
            reduced = torch.cat([totals, degenerate.float().reshape(1)] + ([] if flags is None else [flags.float()]))
            torch.distributed.all_reduce(reduced)
            totals, degenerate = reduced[:6], reduced[6]
            if flags is not None:
                flags = reduced[7:] > 0
        self._check_progress(totals[0], flags, check, epoch, source.num_batches - 1)
        loss_sum, natural, adversarial, n, important, budget_sum = totals.tolist()
        lr = optimizer.param_groups[0]["lr"]
        self._step_scheduler(loss_sum / n)
        if not self.attacked:
            important_fraction = None
        elif masks is not None and part:
            important_fraction = float(masks.important_fraction)
        else:
            important_fraction = important / n
        phase = "part" if part else "burn-in" if self.pixel_reweighted else "plain" if self.attacked else "standard"
        return {
            "epoch": epoch + 1, "method": self.method, "phase": phase, "loss": loss_sum / n,
            # "standard" gets its natural accuracy from the update's own forward, at no cost.
            "natural_acc": natural / n if (self.track_natural or self.outer != "ce" or not self.attacked) else None,
            "adversarial_acc": adversarial / n if self.attacked else None, "lr": lr,
            "important_fraction": important_fraction,
            # The mean per-entry budget of this epoch's attacks, in eps's units (eps for plain epochs), so rules are
            # compared at a known average budget.
            "mean_budget": budget_sum / n if self.attacked else None,
            "degenerate_cams": int(degenerate.item()), "seconds": time.perf_counter() - began,
        }

    def _step(self, model, optimizer, x, y, budget):
        """One inner maximisation (eval mode, as torchattacks does) and one update (train mode); with ``budget``
        None (method "standard") only the update, on the natural batch."""
        if budget is None:
            return self._natural_step(model, optimizer, x, y)
        # The attack's own __call__ would re-validate the batch (host syncs); fit() validated the data once.
        model.eval()
        x_adv = self.attack.perturb(x, y, budget)
        model.train()
        natural_correct = torch.zeros((), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits_adv = self._forward(self._train_model, x_adv)
            if self.outer == "ce":
                loss = F.cross_entropy(logits_adv, y)
                if self.track_natural:
                    model.eval()
                    with torch.no_grad():
                        natural_correct = (self._forward(model, x).argmax(1) == y).sum().float()
                    model.train()
            else:
                logits_natural = self._forward(self._train_model, x)
                loss_fn = trades_loss if self.outer == "trades" else mart_loss
                loss = loss_fn(logits_natural.float(), logits_adv.float(), y, self.beta)
                natural_correct = (logits_natural.argmax(1) == y).sum().float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss, natural_correct, (logits_adv.argmax(1) == y).sum().float()

    def _natural_step(self, model, optimizer, x, y):
        """Standard training: one update on the cross-entropy of the natural batch; no attack, no adversarial
        accuracy (returned as 0, and logged as None)."""
        model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self._forward(self._train_model, x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss, (logits.argmax(1) == y).sum().float(), torch.zeros((), device=self.device)

    def _forward(self, model, x):
        if self.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(self._preprocess(x))

    def _uniform_budget(self, x):
        if self._full_budget is None or self._full_budget.shape[0] != x.shape[0]:
            self._full_budget = torch.full_like(x[:, :1], self.eps)
        return self._full_budget

    def _mask_shape(self, source):
        c, h, w = source.image_shape
        return (3 if self.attack.rule == "jet" else 1, h, w)

    # ------------------------------------------------------------------------------------------------- guards

    def _kept(self):
        """What a stop leaves behind, for error messages."""
        if not self.checkpoint_dir:
            return "no checkpoint (checkpoint_dir is None)"
        if not self.history:
            return f"no checkpoint written in {self.checkpoint_dir}"
        return f"kept the checkpoint of epoch {self.history[-1]['epoch']} in {self.checkpoint_dir}"

    def _check_progress(self, loss_sum, flags, check, epoch, step):
        """At the loop's synchronisation points: the data flags of a loader or generator, then the loss. One copy to
        the host for both."""
        if flags is None:
            values = [loss_sum.item()]
        else:
            values = torch.cat([loss_sum.reshape(1).float(), flags.float()]).tolist()
            check.raise_if_flagged(values[1:], epoch, step, self._kept())
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"training loss became NaN or inf in epoch {epoch + 1} by batch {step + 1}; "
                                     f"stopped, {self._kept()} (lower the learning rate?)")

    def _check_weights(self, model, optimizer, epoch):
        """Stop before a checkpoint would hold NaN or inf: parameters, buffers, optimizer state (one sync an epoch).

        The loss guard sees the loss before each update; the last update of an epoch can still break the weights.
        """
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
                        and v.dim() > 0 and v.device == self.device]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise FloatingPointError(f"the weights became NaN or inf in epoch {epoch + 1} (its losses were finite: "
                                     f"its last updates broke them); stopped without writing its checkpoint, "
                                     f"{self._kept()} (lower the learning rate?)")

    # ------------------------------------------------------------------------------------------------- schedule

    def _reset_optimizer(self, optimizer):
        """The optimizer's hyper-parameters and a torch scheduler's state as at construction (see the class)."""
        for group, initial in zip(optimizer.param_groups, self._initial_groups):
            if "initial_lr" not in initial:
                group.pop("initial_lr", None)  # set by a scheduler of an earlier fit
            group.update(copy.deepcopy(initial))
        if self._initial_schedule is not None:
            self.schedule.load_state_dict(copy.deepcopy(self._initial_schedule))

    def _make_scheduler(self, optimizer, nb_epochs):
        if not isinstance(self.schedule, str):
            return self.schedule
        if self.schedule == "constant":
            return None
        # The decay never hits the first epoch (epoch 0): with one epoch, it trains at the optimizer's lr.
        milestone = max(1, int(0.75 * nb_epochs) if self.schedule == "paper" else nb_epochs - 1)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.1)

    def _step_scheduler(self, epoch_loss):
        if self._scheduler is None:
            return
        if isinstance(self._scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self._scheduler.step(epoch_loss)
        else:
            self._scheduler.step()

    # ------------------------------------------------------------------------------------------------- checkpoints

    def _prepare_folder(self, resume, overwrite):
        """Check checkpoint_dir before any work, clean what a kill left, and return the checkpoint's path."""
        folder = self.checkpoint_dir
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise ValueError(f"checkpoint_dir {folder!r} cannot be created ({error.strerror or error})") from None
        if not os.path.isdir(folder):
            raise ValueError(f"checkpoint_dir {folder!r} is not a folder")
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise ValueError(f"checkpoint_dir {folder!r} is not writable ({error.strerror or error}): choose "
                             f"another folder") from None
        path = os.path.join(folder, CHECKPOINT_NAME)
        if not resume and not overwrite and os.path.exists(path):
            raise ValueError(f"checkpoint_dir {folder!r} already holds a run ({CHECKPOINT_NAME}): pass resume=True "
                             f"to continue it or overwrite=True to start it over, or choose another checkpoint_dir")
        own = [path, os.path.join(folder, LOG_NAME)] if self._rank == 0 else [_rank_path(path, self._rank)]
        for target in own:
            ckpt.remove_stale_temporaries(target)
            if overwrite and os.path.exists(target):
                os.remove(target)
        return path

    def _run_identity(self, source, nb_epochs):
        """What names this run in its checkpoint: the data, the seed and every setting that changes training."""
        schedule = self.schedule if isinstance(self.schedule, str) else type(self.schedule).__name__
        identity = {
            "method": self.method, "eps": self.eps, "eps_low": self.eps_low, "alpha": self.alpha,
            "steps": self.steps, "beta": self.beta, "burn_in": self.burn_in, "mask_refresh": self.mask_refresh,
            "rule": self.rule, "cam": self.cam, "random_start": self.random_start,
            "example_generator": self.example_generator,
            "mma_k": self.mma_k if self.example_generator == "mma" else None,
            "mart_start": self.mart_start if self.outer == "mart" and self.example_generator == "pgd" else None,
            "fixed_mask": None if self.fixed_mask is None else _fingerprint(self.fixed_mask),
            "augment": self.augment, "schedule": schedule, "seed": self.seed, "nb_epochs": nb_epochs,
        }
        identity.update(source.identity())
        return identity

    def _check_resume(self, state, path, identity):
        """ValueError unless the checkpoint holds this run; nb_epochs may grow (training longer), not shrink."""
        if state.get("world_size", 1) != self._world:
            raise ValueError(f"checkpoint {path} was written by {state.get('world_size', 1)} processes, this run has "
                             f"{self._world}: resume with the same number of processes")
        saved = state.get("run")
        keys = list(saved) + [k for k in identity if k not in saved] if saved is not None else ["method"]
        if saved is None:  # written before checkpoints named their run: only the method can be compared
            saved = {"method": state["method"]}
        differences = []
        for key in keys:
            old, new = saved.get(key), identity.get(key)
            if key == "nb_epochs":
                if new < old:
                    differences.append(f"nb_epochs was {old}, now {new} (fewer epochs than the run was started "
                                       f"with; more are allowed and extend it)")
            elif old != new:
                differences.append(f"{key} was {old!r}, now {new!r}")
        if differences:
            raise ValueError(f"cannot resume from {path}: it holds another run ({'; '.join(differences)}); resume "
                             f"with that run's data and settings, pass overwrite=True to start a new run in this "
                             f"folder, or choose another checkpoint_dir")

    def _save(self, path, epoch, optimizer, generator, masks):
        """Rank 0 writes the checkpoint; other ranks write only their own RNG state and masks beside it."""
        own = {
            "rng": ckpt.rng_state(generator, self._extra_generators),
            "masks": masks.state_dict() if masks is not None else None,
        }
        if self._rank != 0:
            ckpt.atomic_save(own, _rank_path(path, self._rank))
            return
        state = {
            "epoch": epoch + 1,
            "method": self.method,
            "run": self._run,
            "model": self._classifier.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": self._scheduler.state_dict() if self._scheduler is not None else None,
            "history": self.history,
            "world_size": self._world,
            **own,
        }
        ckpt.atomic_save(state, path)

    def _write_log(self):
        ckpt.atomic_write_text("".join(_json(r) for r in self.history), os.path.join(self.checkpoint_dir, LOG_NAME))

    def _restore(self, state, path, optimizer, generator, masks):
        """Load a checkpoint that :meth:`_check_resume` accepted; returns the number of epochs it holds."""
        self._classifier.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if self._scheduler is not None and state["scheduler"] is not None:
            self._scheduler.load_state_dict(state["scheduler"])
        own = state if self._rank == 0 else ckpt.load(_rank_path(path, self._rank), self.device)
        if masks is not None and own["masks"] is not None:
            masks.load_state_dict(own["masks"])
        ckpt.set_rng_state(own["rng"], generator, self._extra_generators)
        self.history = list(state["history"])
        return state["epoch"]


def _distributed_rank_world():
    """(rank, world size) of an initialised torch.distributed process group (e.g. under torchrun), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rank_path(path, rank):
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext}"


def _json(record):
    import json

    return json.dumps(record) + "\n"


# ----------------------------------------------------------------------------------------------------- checks


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer in [0, 2**63 - 1], got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed}")
    return int(seed)


def _check_checkpoint_dir(folder):
    """None, or a path whose nearest existing ancestor is a folder (writability is checked when training starts)."""
    if folder is None:
        return None
    if not isinstance(folder, (str, os.PathLike)) or isinstance(os.fspath(folder), bytes):
        raise TypeError(f"checkpoint_dir must be None or a folder path (str or os.PathLike), "
                        f"got {type(folder).__name__}")
    folder = os.fspath(folder)
    if not folder:
        raise ValueError("checkpoint_dir must be None or a folder path, got ''")
    probe = os.path.abspath(folder)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = "" if probe == os.path.abspath(folder) else f" ({probe} is a file)"
        raise ValueError(f"checkpoint_dir {folder!r} is not a folder{where}")
    return folder


def _model_dtype(model):
    """The dtype the model computes in: that of its first floating-point parameter (float32 without one)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _check_nb_classes(classifier, preprocess, dtype):
    """One no-grad eval forward of a zero input of ``input_shape``: the model must return (1, nb_classes) logits.

    Train/eval flags are restored; BatchNorm statistics do not move in eval mode.
    """
    model, shape = classifier.model, tuple(classifier.input_shape)
    modes = _model_modes(model)
    try:
        model.eval()
        with torch.no_grad():
            out = model(preprocess(torch.zeros((1, *shape), dtype=dtype, device=classifier.device)))
    except Exception as error:
        raise ValueError(f"classifier: its model fails on a zero input of input_shape {shape} "
                         f"({type(error).__name__}: {error}); check the classifier's input_shape") from error
    finally:
        _restore_modes(modes)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"classifier: its model must return logits of shape (N, nb_classes), got {got}")
    if out.shape[1] != classifier.nb_classes:
        raise ValueError(f"nb_classes of the classifier is {classifier.nb_classes} but its model outputs "
                         f"{out.shape[1]} logits per image: build the PyTorchClassifier with "
                         f"nb_classes={out.shape[1]}")


def _check_image_shape(what, shape, expected):
    """(N, C, H, W) with (C, H, W) the classifier's ``input_shape``; a channels-last batch gets a hint."""
    shape, expected = tuple(shape), tuple(expected)
    if len(shape) == 4 and shape[1:] == expected:
        return
    hint = ""
    if len(shape) == 4 and len(expected) == 3 and shape[1:] == (expected[1], expected[2], expected[0]):
        hint = ("; these look channels-last (N, H, W, C): transpose them, x.transpose(0, 3, 1, 2) for numpy or "
                "x.permute(0, 3, 1, 2) for torch")
    raise ValueError(f"{what} must be channels-first (N, C, H, W) = (N, {', '.join(map(str, expected))}) (the "
                     f"classifier's input_shape), got shape {shape}{hint}")


def _label_array(y, n, nb_classes, name="y"):
    """fit's labels: class indices (N,) (integers, or integral floats) or one-hot / score rows (N, nb_classes) ->
    int64 indices. Floats are never floored, bools never read as indices."""
    expected = f"class indices of shape ({n},) or one-hot rows of shape ({n}, {nb_classes})"
    if y.dtype.kind == "b":
        raise ValueError(f"{name} must be {expected}, got bool labels")
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be {expected}, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape == (n, 1) and nb_classes != 1:
        y = y[:, 0]
    if y.ndim == 2:
        if y.shape != (n, nb_classes):
            raise ValueError(f"{name} must be {expected}, got shape {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError(f"{name} must be {expected}: its rows hold NaN or inf")
        return y.argmax(1).astype(np.int64)
    if y.shape != (n,):
        raise ValueError(f"{name} must be {expected}, got shape {y.shape}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (np.round(y) == y).all()):
        raise ValueError(f"{name} must be {expected}: class indices must be integers, got non-integer values "
                         f"(they are not floored)")
    lo, hi = y.min(), y.max()
    if lo < 0 or hi >= nb_classes:
        raise ValueError(f"{name} must be {expected}: indices must lie in [0, {nb_classes - 1}], got values in "
                         f"[{lo:g}, {hi:g}]")
    return y.astype(np.int64)


def _fingerprint(*tensors, samples=4096):
    """A cheap hash of tensors: shape, dtype and a fixed strided sample of at most ``samples`` values each (one
    copy to the host)."""
    digest = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1)
        part = flat[:: max(1, flat.numel() // samples)][:samples]
        digest.update(f"{tuple(t.shape)} {t.dtype}".encode())
        digest.update(part.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _BatchCheck:
    """What the batches of a loader or a generator must be, checked without slowing a step.

    Dtypes and shapes are metadata: checked on the host as each batch arrives. Values (images finite in [0, 1];
    labels integral class indices in range, or finite one-hot rows) are checked eagerly on the first batch (one sync,
    before any work) and, for every later batch, on the device into :attr:`flags`, which the loop reads where it
    copies its loss to the host anyway.
    """

    def __init__(self, name, input_shape, nb_classes, device, dtype):
        self.name, self.input_shape, self.nb_classes = name, tuple(input_shape), nb_classes
        self.device, self.dtype = device, dtype
        #: (images bad, labels bad) over the batches seen since the first.
        self.flags = torch.zeros(2, dtype=torch.bool, device=device)
        self._first = True

    def batch(self, x, y):
        """One batch as device tensors: images in the model's dtype, labels int64 indices."""
        x = self._images(x)
        y, one_hot = self._labels(y, len(x))
        bad = self._bad(x, y, one_hot)
        if self._first:
            self._explain(bad.tolist(), x, y, one_hot)
            self._first = False
        else:
            self.flags |= bad
        if one_hot:
            return x, y.argmax(1)
        # A bad later batch is only reported at the next sync point: until then its labels must not reach torch's
        # losses (an out-of-range index fails there, on a GPU as a device-side assert). Clamping is a device op.
        return x, y.long().clamp_(0, self.nb_classes - 1)

    def images(self, x):
        """Host checks only (the refresh pass of s > 1 sees the same samples the training batches check)."""
        return self._images(x)

    def _images(self, x):
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if not x.is_floating_point():
            hint = ": divide uint8 images by 255" if x.dtype == torch.uint8 else ""
            raise ValueError(f"{self.name}: images must be floating point in [0, 1], got dtype {x.dtype}{hint}")
        _check_image_shape(f"{self.name}: images", x.shape, self.input_shape)
        return x.to(self.device, dtype=self.dtype, non_blocking=True)

    def _labels(self, y, n):
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(np.asarray(y))
        expected = f"class indices of shape ({n},) or one-hot rows of shape ({n}, {self.nb_classes})"
        if y.dtype == torch.bool:
            raise ValueError(f"{self.name}: labels must be {expected}, got bool labels")
        if y.is_complex():
            raise ValueError(f"{self.name}: labels must be {expected}, got dtype {y.dtype}")
        if y.dim() == 2 and y.shape[1] == 1 and self.nb_classes != 1:
            y = y[:, 0]
        if y.dim() == 2 and tuple(y.shape) == (n, self.nb_classes):
            return y.to(self.device, non_blocking=True), True
        if tuple(y.shape) != (n,):
            raise ValueError(f"{self.name}: labels must be {expected}, got shape {tuple(y.shape)}")
        return y.to(self.device, non_blocking=True), False

    def _bad(self, x, y, one_hot):
        """(2,) bool on the device, no sync: images outside [0, 1] or not finite; labels invalid."""
        lo, hi = torch.aminmax(x)
        bad_x = ~((lo >= 0) & (hi <= 1))  # NaN fails both comparisons
        if one_hot:
            bad_y = ~torch.isfinite(y).all() if y.is_floating_point() else torch.zeros((), dtype=torch.bool,
                                                                                       device=y.device)
        else:
            y_lo, y_hi = torch.aminmax(y)
            bad_y = ~((y_lo >= 0) & (y_hi < self.nb_classes))
            if y.is_floating_point():
                bad_y = bad_y | (y != torch.round(y)).any()
        return torch.stack([bad_x, bad_y])

    def _explain(self, bad, x, y, one_hot):
        """The first batch: a ValueError saying what is wrong, with the values (syncs only on bad data)."""
        bad_x, bad_y = bad
        if bad_x:
            lo, hi = (float(v) for v in torch.aminmax(x))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{self.name}: images must not contain NaN or inf (first batch)")
            raise ValueError(f"{self.name}: images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] in the "
                             f"first batch")
        if bad_y:
            top = self.nb_classes - 1
            if one_hot:
                raise ValueError(f"{self.name}: labels must be class indices in [0, {top}] or finite one-hot rows; "
                                 f"the first batch's rows hold NaN or inf")
            if y.is_floating_point() and not bool((y == torch.round(y)).all()):
                raise ValueError(f"{self.name}: labels must be integer class indices in [0, {top}] (floats are not "
                                 f"floored), got non-integer values in the first batch")
            lo, hi = (float(v) for v in torch.aminmax(y))
            raise ValueError(f"{self.name}: labels must be class indices in [0, {top}], got values in "
                             f"[{lo:g}, {hi:g}] in the first batch")

    def raise_if_flagged(self, flags, epoch, step, kept):
        bad_x, bad_y = flags
        where = (f"but a batch of epoch {epoch + 1} (by batch {step + 1}) holds others (the first batch was fine); "
                 f"stopped before this epoch's checkpoint, {kept}")
        if bad_x:
            raise ValueError(f"{self.name}: images must be floating-point values in [0, 1] with no NaN or inf, "
                             f"{where}")
        if bad_y:
            raise ValueError(f"{self.name}: labels must be integer class indices in [0, {self.nb_classes - 1}] or "
                             f"finite one-hot rows, {where}")


class _TensorSource:
    """The whole training set as device tensors; shuffled with the trainer's generator."""

    #: fit checked the whole set once: no per-batch checks.
    check = None

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.num_samples = len(x)
        self.num_batches = math.ceil(len(x) / batch_size)
        self.image_shape = tuple(x.shape[1:])

        self.own = None  # this rank's sample indices under data parallelism; None: all samples

    def identity(self):
        return {"num_samples": self.num_samples, "batch_size": self.batch_size,
                "data": _fingerprint(self.x, self.y)}

    def generators(self):
        return []

    def shard(self, rank, world, seed):
        """Give this rank a fixed, equal share of the samples (the remainder of N / world is left out), so each
        rank computes and caches the masks of its own samples only."""
        if world > 1:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed))
            self.own = order[rank::world][: self.num_samples // world].to(self.x.device)
            self.num_batches = math.ceil(len(self.own) / self.batch_size)

    def set_epoch(self, epoch):
        """Nothing to do: the shuffle draws from the trainer's generator."""

    def batches(self, generator):
        count = self.num_samples if self.own is None else len(self.own)
        order = torch.randperm(count, device=self.x.device, generator=generator)
        if self.own is not None:
            order = self.own[order]
        for start in range(0, count, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.x[index], self.y[index], index

    def unaugmented(self):
        every = torch.arange(self.num_samples, device=self.x.device) if self.own is None else self.own
        for start in range(0, len(every), self.batch_size):
            index = every[start:start + self.batch_size]
            yield self.x[index], index


class _LoaderSource:
    """A torch DataLoader of (x, y) or (x, y, index); batches moved to the device as they come.

    Labels may be class indices or one-hot rows. The loader's own random generators (``DataLoader(generator=...)``,
    a sampler's ``generator``) go into the checkpoint with the other RNG states, so that a resumed run reshuffles
    exactly as an uninterrupted one.
    """

    def __init__(self, loader, check):
        name = check.name
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise TypeError(f"{name} must be a torch.utils.data.DataLoader of (x, y) or (x, y, index) batches, got "
                            f"{type(loader).__name__}")
        try:
            self.num_samples, self.num_batches = len(loader.dataset), len(loader)
        except TypeError:
            raise ValueError(f"{name}: the DataLoader needs a map-style dataset with a length (an IterableDataset "
                             f"has none)") from None
        if self.num_samples == 0:
            raise ValueError(f"{name} is empty: its dataset holds no sample")
        if self.num_batches == 0:
            raise ValueError(f"{name} is empty: it yields no batch (drop_last=True with fewer samples than "
                             f"batch_size?)")
        self.loader, self.device, self.check = loader, check.device, check
        first = next(iter(loader))
        if not isinstance(first, (tuple, list)) or len(first) not in (2, 3):
            raise ValueError(f"{name} must yield (x, y) or (x, y, index) batches, got "
                             f"{type(first).__name__}{f' of {len(first)}' if isinstance(first, (tuple, list)) else ''}")
        check.batch(first[0], first[1])  # before any work
        self.indexed = len(first) == 3
        if self.indexed:
            self._index(first[2], len(first[0]))
        self.image_shape = tuple(first[0].shape[1:])

    def identity(self):
        return {"num_samples": self.num_samples, "batch_size": self.loader.batch_size,
                "num_batches": self.num_batches}

    def generators(self):
        found = []
        for owner in (self.loader, getattr(self.loader, "sampler", None),
                      getattr(getattr(self.loader, "batch_sampler", None), "sampler", None)):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator) and not any(g is f for f in found):
                found.append(g)
        return found

    def shard(self, rank, world, seed):
        """Under data parallelism the loader itself must shard: a ``DistributedSampler`` (masks of s > 1 are then
        computed for every sample, since the sampler reshuffles shards each epoch)."""
        sampler = getattr(self.loader, "sampler", None)
        if world > 1 and not isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            raise ValueError("loader: with several processes, fit_loader needs a DataLoader whose sampler is a "
                             "torch.utils.data.distributed.DistributedSampler")

    def set_epoch(self, epoch):
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def batches(self, generator):
        for batch in self.loader:
            x, y = self.check.batch(batch[0], batch[1])
            index = self._index(batch[2], len(batch[0])) if self.indexed else None
            yield x, y, index

    def unaugmented(self):
        """The refresh pass of ``mask_refresh > 1``: ``loader.dataset`` in index order, un-shuffled (a map-style
        dataset of (x, y, index), e.g. :class:`art_part.IndexedDataset`)."""
        # Its own generator: iterating a DataLoader without one draws its base seed from torch's global RNG, and a
        # refresh must leave the training's random stream (attack starts) as fit(x, y) does, untouched.
        ordered = torch.utils.data.DataLoader(self.loader.dataset, batch_size=self.loader.batch_size or 128,
                                              shuffle=False, num_workers=self.loader.num_workers,
                                              collate_fn=self.loader.collate_fn, generator=torch.Generator())
        for batch in ordered:
            if not isinstance(batch, (tuple, list)) or len(batch) != 3:
                raise ValueError(f"{self.check.name}: the mask refresh reads loader.dataset in order and needs "
                                 f"(x, y, index) items from it; wrap the dataset: "
                                 f"DataLoader(IndexedDataset(dataset), ...)")
            yield self.check.images(batch[0]), self._index(batch[2], len(batch[0]))

    def _index(self, index, n):
        """A batch's sample indices, checked on the host (metadata, and the range of a CPU tensor: no device sync),
        on the device: the mask cache has one row per sample of ``loader.dataset``."""
        name = self.check.name
        if not isinstance(index, torch.Tensor) or index.dtype.is_floating_point or index.dtype.is_complex \
                or index.dtype == torch.bool or tuple(index.shape) != (n,):
            got = f"{index.dtype} of shape {tuple(index.shape)}" if isinstance(index, torch.Tensor) else \
                type(index).__name__
            raise ValueError(f"{name}: the third item of a batch must be the samples' indices, integers of shape "
                             f"({n},), got {got}")
        if index.device.type == "cpu" and n:
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.num_samples:
                raise ValueError(f"{name}: sample indices must lie in [0, {self.num_samples}) (len(loader.dataset)), "
                                 f"got values in [{lo}, {hi}]: IndexedDataset must be the outermost dataset, e.g. "
                                 f"DataLoader(IndexedDataset(Subset(dataset, keep)), ...)")
        return index.to(self.device, non_blocking=True)


class _GeneratorSource:
    """An ART DataGenerator: ``ceil(size / batch_size)`` calls of ``get_batch`` per epoch."""

    def __init__(self, generator, check):
        size, batch_size = generator.size, generator.batch_size
        for name, value in (("size", size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"generator.{name} must be a known integer >= 0 (samples per epoch, batch size), "
                                 f"got {value!r}")
        if size == 0:
            raise ValueError("generator is empty (size 0)")
        if batch_size == 0:
            raise ValueError("generator.batch_size must be >= 1, got 0")
        self.generator, self.device, self.check = generator, check.device, check
        self.num_batches = math.ceil(size / batch_size)
        self.num_samples = int(size)
        self.image_shape = check.input_shape  # each batch is checked against it
        self.indexed = False

    def identity(self):
        return {"num_samples": self.num_samples, "batch_size": int(self.generator.batch_size)}

    def generators(self):
        return []

    def shard(self, rank, world, seed):
        if world > 1:
            raise ValueError("generator: an ART DataGenerator cannot be sharded across processes; use fit(x, y) or "
                             "fit_loader with a DistributedSampler")

    def set_epoch(self, epoch):
        """Nothing to do: the DataGenerator shuffles itself."""

    def batches(self, _):
        for _ in range(self.num_batches):
            batch = self.generator.get_batch()
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"generator.get_batch() must return (x, y), got {type(batch).__name__}")
            x, y = self.check.batch(batch[0], batch[1])
            yield x, y, None
