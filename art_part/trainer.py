"""PART trainers for ART: AT, TRADES, MART and their pixel-reweighted versions PART, PART-T, PART-M.

One code path trains all six. The plain methods are the PART code with the budget map switched off (``eps``
everywhere), so comparisons are fair. The per-pixel budget enters only the inner maximisation (Pixel-AG with CE for
PART and PART-M, with TRADES' KL for PART-T); the outer losses are the standard TRADES and MART losses of
:mod:`torchattacks_part.losses`.

Everything per batch stays on the device: data, shuffling, CIFAR augmentation (:mod:`art_part.augment`), masks
(:mod:`art_part.masks`), attack and update. Each epoch ends with an atomic checkpoint and a JSON-lines record; a run
resumed from its checkpoint ends with the same weights as an uninterrupted one (on CPU).
"""

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from art.defences.trainer import AdversarialTrainer
from tqdm.auto import tqdm

from torchattacks_part.checks import check_budget_params, check_choice, check_number, check_steps
from torchattacks_part.losses import mart_loss, trades_loss

from . import checkpoint as ckpt
from .attacks import MMAPyTorch, PixelAGPyTorch, preprocessing_function
from .augment import crop_flip, draw_crop_flip
from .masks import MaskCache

#: method -> (inner loss, outer loss, pixel-reweighted)
METHODS = {
    "at": ("ce", "ce", False),
    "trades": ("kl", "trades", False),
    "mart": ("ce", "mart", False),
    "part": ("ce", "ce", True),
    "part-t": ("kl", "trades", True),
    "part-m": ("ce", "mart", True),
}
EXAMPLE_GENERATORS = ("pgd", "mma")
SCHEDULES = ("paper", "released", "constant")
CHECKPOINT_NAME = "last.pt"


class AdversarialTrainerPARTPyTorch(AdversarialTrainer):
    """Adversarial training with AT, TRADES, MART, PART, PART-T or PART-M on a ``PyTorchClassifier``.

    | Paper link: https://arxiv.org/abs/2406.00685 (PART, ICML 2024)

    :param classifier: ``PyTorchClassifier`` with ``clip_values=(0, 1)`` and an ``optimizer``.
    :param method: one of ``METHODS``: "at", "trades", "mart", "part", "part-t", "part-m".
    :param eps: budget of important pixels (8/255).
    :param eps_low: budget of the other pixels after the burn-in, PART methods only (7/255).
    :param alpha: attack step size (2/255; 1/255 on SVHN in the paper).
    :param steps: attack steps (10).
    :param random_start: random start of the inner attack (uniform in the box; TRADES' gaussian for the KL).
    :param beta: TRADES / MART trade-off lambda (6).
    :param burn_in: epochs of the plain method before the budget map switches on (20).
    :param mask_refresh: s, epochs between mask refreshes: 1 computes the CAM of every batch right before its
        attack; s > 1 caches one mask per sample, computed on the un-augmented images every s epochs.
    :param cam: CAM method; :param target_layer: CAM layer (None: last conv block); :param rule: "cam", "jet" or
        "random" (see :mod:`torchattacks_part.budget`).
    :param fixed_mask: optional boolean tensor (1 or B, 1, H, W) of important pixels that replaces the CAM for
        every batch after the burn-in, e.g. :func:`torchattacks_part.budget.quadrant_mask` for the paper's
        proof-of-concept (Figure 1). The same pixels in every (augmented) image: a fixed region, not an object.
    :param example_generator: "pgd" (Pixel-AG) or "mma" (minimum-margin attack with the same budget, paper Table 5).
    :param mma_k: MMA's number of target classes.
    :param augment: random crop (4-pixel zero padding) and horizontal flip on the device (CIFAR-10); False for SVHN.
    :param schedule: "paper" (lr / 10 at 3/4 of the epochs: epoch 60 of 80), "released" (lr / 10 for the last epoch
        only, as the authors' code did), "constant", or any torch LR scheduler built on the classifier's optimizer
        (stepped once per epoch; ``ReduceLROnPlateau`` gets the epoch loss).
    :param checkpoint_dir: folder for ``last.pt`` (written atomically every epoch) and ``log.jsonl``; None: none.
    :param track_natural: also report natural training accuracy (AT/PART: one extra no-grad eval forward a batch).
    :param amp: bf16 autocast on CUDA. :param channels_last: channels-last memory format on CUDA.
    :param seed: seed of the trainer's own generator (shuffling and augmentation).
    :param verbose: progress bars.
    """

    def __init__(self, classifier, method="part", eps=8 / 255, eps_low=7 / 255, alpha=2 / 255, steps=10,
                 random_start=True, beta=6.0, burn_in=20, mask_refresh=1, cam="gradcam", target_layer=None,
                 rule="cam", fixed_mask=None, example_generator="pgd", mma_k=3, augment=True, schedule="paper",
                 checkpoint_dir=None, track_natural=True, amp=False, channels_last=False, seed=0, verbose=True):
        check_choice("method", method, METHODS)
        check_choice("example_generator", example_generator, EXAMPLE_GENERATORS)
        eps, eps_low, alpha = check_budget_params(eps, eps_low, alpha)
        check_steps("steps", steps)
        check_steps("mask_refresh", mask_refresh)
        check_number("beta", beta)
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
        self.method, self.eps, self.alpha, self.steps = method, eps, alpha, steps
        self.eps_low = eps_low if self.pixel_reweighted else eps
        self.beta, self.burn_in, self.mask_refresh = float(beta), burn_in, mask_refresh
        self.augment, self.schedule, self.checkpoint_dir = augment, schedule, checkpoint_dir
        self.track_natural, self.amp, self.channels_last, self.seed = track_natural, amp, channels_last, seed
        self.verbose = verbose
        self.fixed_mask = None if fixed_mask is None else fixed_mask.to(classifier.device)
        common = dict(eps=eps, eps_step=alpha, max_iter=steps, num_random_init=int(random_start),
                      eps_low=self.eps_low, cam=cam, target_layer=target_layer, rule=rule)
        if example_generator == "mma":
            art_attack = MMAPyTorch(classifier, k=mma_k, **common)
        else:
            art_attack = PixelAGPyTorch(classifier, loss=inner, **common)
        super().__init__(classifier, art_attack, ratio=1.0)
        #: The torchattacks_part attack the loop calls, with a budget tensor, on device tensors.
        self.attack = art_attack.attack
        self.device = classifier.device
        self.history = []
        self._scheduler = None
        self._rank, self._world, self._train_model = 0, 1, classifier.model
        self._preprocess = preprocessing_function(classifier)

    # ------------------------------------------------------------------------------------------------- phases

    def part_active(self, epoch):
        """True when epoch (0-based) is past the burn-in and the method is pixel-reweighted."""
        return self.pixel_reweighted and self.eps_low < self.eps and epoch >= self.burn_in

    def refresh_due(self, epoch):
        return self.part_active(epoch) and (epoch - self.burn_in) % self.mask_refresh == 0

    # ------------------------------------------------------------------------------------------------- public

    def fit(self, x, y, batch_size=128, nb_epochs=80, resume=False, callback=None, **kwargs):
        """Train on numpy arrays: x (N, C, H, W) in [0, 1], y one-hot (N, classes) or indices (N,).

        The whole set is moved to the device once; shuffling and augmentation run there.

        :param resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        :param callback: called as ``callback(trainer, record)`` after each epoch's checkpoint.
        """
        x = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
        y = np.asarray(y)
        y = torch.as_tensor(y.argmax(1) if y.ndim == 2 else y, dtype=torch.long, device=self.device)
        if x.dim() != 4 or y.shape != (x.shape[0],):
            raise ValueError(f"x must be (N, C, H, W) and y (N,) or (N, classes), got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        if not 0 <= float(x.min()) <= float(x.max()) <= 1:
            raise ValueError("x must lie in [0, 1]")
        check_steps("batch_size", batch_size)
        source = _TensorSource(x, y, batch_size)
        self._train(source, nb_epochs, resume, callback)

    def fit_loader(self, loader, nb_epochs=80, resume=False, callback=None):
        """Train from a torch ``DataLoader`` of un-augmented (x, y) or (x, y, index) batches.

        ``mask_refresh > 1`` needs the index (per-sample masks) and a map-style dataset for the refresh pass.
        """
        source = _LoaderSource(loader, self.device)
        if self.pixel_reweighted and self.mask_refresh > 1 and not source.indexed:
            raise ValueError("mask_refresh > 1 needs per-sample indices: the loader must yield (x, y, index)")
        self._train(source, nb_epochs, resume, callback)

    def fit_generator(self, generator, nb_epochs=80, resume=False, callback=None, **kwargs):
        """Train from an ART ``DataGenerator`` (a ``PyTorchDataGenerator`` runs through its DataLoader)."""
        loader = getattr(generator, "iterator", None)
        if isinstance(loader, torch.utils.data.DataLoader):
            return self.fit_loader(loader, nb_epochs, resume, callback)
        if self.pixel_reweighted and self.mask_refresh > 1 and self.fixed_mask is None:
            raise ValueError("mask_refresh > 1 needs per-sample indices: use fit(x, y), fit_loader, or a "
                             "PyTorchDataGenerator over a dataset that yields (x, y, index)")
        self._train(_GeneratorSource(generator, self.device), nb_epochs, resume, callback)

    # ------------------------------------------------------------------------------------------------- loop

    def _train(self, source, nb_epochs, resume, callback):
        check_steps("nb_epochs", nb_epochs)
        if resume and not self.checkpoint_dir:
            raise ValueError("resume=True needs checkpoint_dir, the folder of the run to continue")
        if self.pixel_reweighted and self.eps_low < self.eps and self.burn_in >= nb_epochs:
            raise ValueError(f"burn_in must be < nb_epochs for {self.method} (PART never starts otherwise), got "
                             f"burn_in={self.burn_in}, nb_epochs={nb_epochs}")
        shape = getattr(source, "image_shape", None)  # an ART DataGenerator's shape is known at its first batch
        if self.fixed_mask is not None and shape is not None and tuple(self.fixed_mask.shape[-2:]) != shape[-2:]:
            raise ValueError(f"fixed_mask must match the images' height and width {shape[-2:]}, "
                             f"got {tuple(self.fixed_mask.shape[-2:])}")
        model = self._classifier.model
        optimizer = self._classifier.optimizer
        if self.channels_last and self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self._rank, self._world = _distributed_rank_world()
        source.shard(self._rank, self._world, self.seed)
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
        masks = None
        if self.pixel_reweighted and self.mask_refresh > 1 and self.fixed_mask is None:
            masks = MaskCache(source.num_samples, self._mask_shape(source), self.device)
        start = 0
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME) if self.checkpoint_dir else None
        leader = self._rank == 0
        if resume and path and os.path.exists(path):
            start = self._restore(path, optimizer, generator, masks)
        self._full_budget = None
        for epoch in range(start, nb_epochs):
            record = self._epoch(epoch, nb_epochs, source, model, optimizer, generator, masks)
            self.history.append(record)
            if self._world > 1:
                # DDP syncs BatchNorm statistics at the start of each forward; end the epoch with rank 0's on all
                # ranks too, so every rank holds the model the checkpoint holds.
                for buffer in model.buffers():
                    torch.distributed.broadcast(buffer, 0)
            if path:
                self._save(path, epoch, optimizer, generator, masks)
                if leader:
                    ckpt.atomic_write_text("".join(_json(r) for r in self.history),
                                           os.path.join(self.checkpoint_dir, "log.jsonl"))
                if self._world > 1:
                    torch.distributed.barrier()
            if callback is not None:
                callback(self, record)

    def _epoch(self, epoch, nb_epochs, source, model, optimizer, generator, masks):
        began = time.perf_counter()
        part = self.part_active(epoch)
        totals = torch.zeros(5, device=self.device)  # loss sum, natural correct, adversarial correct, n, important
        ones = torch.ones((), device=self.device)  # batch sizes enter the totals without a copy per batch
        degenerate = torch.zeros((), device=self.device)  # degenerate CAMs this epoch (refresh pass or batches)
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
        for step, (x, y, index) in enumerate(bar):
            offsets = flips = None
            if self.augment:
                offsets, flips = draw_crop_flip(len(x), device=self.device, generator=generator)
                x = crop_flip(x, offsets, flips)
            if not part:
                budget = self._uniform_budget(x)
            elif self.fixed_mask is not None:
                budget = self.attack.budget_from(self.fixed_mask.expand(len(x), -1, -1, -1), x.dtype)
            elif masks is None:
                budget = self.attack.budget(x)  # s = 1: the CAM of this very batch, right before its attack
                degenerate += self.attack.last_degenerate
            else:
                budget = self.attack.budget_from(masks.lookup(index, offsets, flips), x.dtype)
            loss, natural_correct, adversarial_correct = self._step(model, optimizer, x, y, budget)
            totals += torch.stack([loss.detach() * len(x), natural_correct, adversarial_correct,
                                   ones * len(x),
                                   (budget >= self.eps).float().mean() * len(x)])
            if step % 20 == 0 or step == source.num_batches - 1:
                self._check_finite(totals[0], epoch, step)
                n = totals[3].item()
                bar.set_postfix(loss=f"{totals[0].item() / n:.4f}", adv_acc=f"{totals[2].item() / n:.3f}")
        bar.close()
        if self._world > 1:  # every rank logs the figures of the whole epoch
            totals = torch.cat([totals, degenerate.reshape(1)])
            torch.distributed.all_reduce(totals)
            totals, degenerate = totals[:5], totals[5]
        self._check_finite(totals[0], epoch, source.num_batches - 1)
        loss_sum, natural, adversarial, n, important = totals.tolist()
        lr = optimizer.param_groups[0]["lr"]
        self._step_scheduler(loss_sum / n)
        if masks is not None and part:
            important_fraction = float(masks.important_fraction)
        else:
            important_fraction = important / n
        return {
            "epoch": epoch + 1, "method": self.method, "phase": "part" if part else "burn-in" if
            self.pixel_reweighted else "plain", "loss": loss_sum / n,
            "natural_acc": natural / n if (self.track_natural or self.outer != "ce") else None,
            "adversarial_acc": adversarial / n, "lr": lr, "important_fraction": important_fraction,
            "degenerate_cams": int(degenerate.item()), "seconds": time.perf_counter() - began,
        }

    def _step(self, model, optimizer, x, y, budget):
        """One inner maximisation (eval mode, as torchattacks does) and one update (train mode)."""
        # The attack's own __call__ would re-validate the batch (host syncs); fit() validated the data once.
        model.eval()
        x_adv = self.attack.perturb(x, y, budget)
        model.train()
        natural_correct = torch.zeros((), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda"):
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

    def _check_finite(self, loss_sum, epoch, step):
        if not math.isfinite(loss_sum.item()):
            last = "no checkpoint" if not self.history else f"the checkpoint of epoch {self.history[-1]['epoch']}"
            where = f" in {self.checkpoint_dir}" if self.checkpoint_dir else ""
            raise FloatingPointError(f"training loss became NaN or inf in epoch {epoch + 1} by batch {step + 1}; "
                                     f"stopped, keeping {last}{where} (lower the learning rate?)")

    # ------------------------------------------------------------------------------------------------- schedule

    def _make_scheduler(self, optimizer, nb_epochs):
        if not isinstance(self.schedule, str):
            return self.schedule
        if self.schedule == "constant":
            return None
        milestone = int(0.75 * nb_epochs) if self.schedule == "paper" else nb_epochs - 1
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.1)

    def _step_scheduler(self, epoch_loss):
        if self._scheduler is None:
            return
        if isinstance(self._scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self._scheduler.step(epoch_loss)
        else:
            self._scheduler.step()

    # ------------------------------------------------------------------------------------------------- checkpoints

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
            "model": self._classifier.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": self._scheduler.state_dict() if self._scheduler is not None else None,
            "history": self.history,
            "world_size": self._world,
            **own,
        }
        ckpt.atomic_save(state, path)

    def _restore(self, path, optimizer, generator, masks):
        state = ckpt.load(path, self.device)
        if state["method"] != self.method:
            raise ValueError(f"checkpoint {path} was trained with method {state['method']!r}, not {self.method!r}")
        self._classifier.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if self._scheduler is not None and state["scheduler"] is not None:
            self._scheduler.load_state_dict(state["scheduler"])
        if state.get("world_size", 1) != self._world:
            raise ValueError(f"checkpoint {path} was written by {state.get('world_size', 1)} processes, this run has "
                             f"{self._world}: resume with the same number of processes")
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


class _TensorSource:
    """The whole training set as device tensors; shuffled with the trainer's generator."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.num_samples = len(x)
        self.num_batches = math.ceil(len(x) / batch_size)
        self.image_shape = tuple(x.shape[1:])

        self.own = None  # this rank's sample indices under data parallelism; None: all samples

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


def _labels(y, device):
    """Class indices (B,) on the device from indices or one-hot / score rows (B, classes) (ART's convention)."""
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y.dim() == 2:
        y = y.argmax(1)
    return y.to(device=device, dtype=torch.long, non_blocking=True)


class _LoaderSource:
    """A torch DataLoader of (x, y) or (x, y, index); batches moved to the device as they come.

    Labels may be class indices or one-hot rows. The loader's own random generators (``DataLoader(generator=...)``,
    a sampler's ``generator``) go into the checkpoint with the other RNG states, so that a resumed run reshuffles
    exactly as an uninterrupted one.
    """

    def __init__(self, loader, device):
        self.loader, self.device = loader, device
        first = next(iter(loader))
        self.indexed = len(first) == 3
        self.image_shape = tuple(first[0].shape[1:])
        self.num_samples = len(loader.dataset)
        self.num_batches = len(loader)

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
            x = batch[0].to(self.device, dtype=torch.float32, non_blocking=True)
            index = batch[2].to(self.device, non_blocking=True) if self.indexed else None
            yield x, _labels(batch[1], self.device), index

    def unaugmented(self):
        ordered = torch.utils.data.DataLoader(self.loader.dataset, batch_size=self.loader.batch_size or 128,
                                              shuffle=False, num_workers=self.loader.num_workers,
                                              collate_fn=self.loader.collate_fn)
        for batch in ordered:
            yield batch[0].to(self.device, dtype=torch.float32), batch[2].to(self.device)


class _GeneratorSource:
    """An ART DataGenerator: ``size // batch_size`` calls of ``get_batch`` per epoch."""

    def __init__(self, generator, device):
        self.generator, self.device = generator, device
        self.num_batches = math.ceil(generator.size / generator.batch_size)
        self.num_samples = generator.size
        self.indexed = False

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
            x, y = self.generator.get_batch()[:2]
            yield torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device), _labels(y, self.device), None
