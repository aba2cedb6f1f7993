"""``part-bench evaluate``: the RobustBench-style evaluation suite, resumable attack by attack, batch by batch.

Attacks (names as on the command line; L-inf, eps 8/255, step 2/255 unless said otherwise):

==========================  ==================================================================================
``natural``                 clean accuracy
``pgd-K``                   PGD with K steps and a random start (``torchattacks.PGD``): PGD-20 in Table 1,
                            K = 10..100 in Table 7
``mma-K``                   minimum-margin attack, k = 3 targets, K steps per target (Gao et al., 2022)
``aa``                      AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square) through the reference
                            implementation, ``pyautoattack``; never torchattacks' 10-iteration variant
``adaptive-pgd-K``          the paper's adaptive attack (Table 2): Pixel-AG on the evaluated model's own CAM
                            with eps 12/255 on important pixels and 8/255 elsewhere, K steps
``adaptive-mma-K``          the same budget inside MMA (Table 3)
``cifar10c-S``              accuracy on each of the 19 CIFAR-10-C corruptions at severity S (Table 4: S = 1),
                            one result per corruption plus their mean
``trust``                   the five obfuscated-gradient checks of Athalye et al. (2018) (appendix H.3)
==========================  ==================================================================================

Results go to ``eval.json`` in the evaluated model's folder. It is rewritten atomically after every batch: a
finished attack is never redone, and an interrupted one restarts at its first unfinished batch. Each batch is
attacked after seeding torch with (seed, attack, batch index), so a resumed evaluation gives the same numbers as an
uninterrupted one.
"""

import json
import os
import re
import sys
import time
import zlib

import torch

from art_part.checkpoint import atomic_write_text

from . import UsageError

EPS = 8 / 255
ALPHA = 2 / 255
MMA_K = 3
RESULTS_FILE = "eval.json"

SUITES = {
    "table1": ("natural", "pgd-20", "mma-20", "aa"),
    "smoke": ("natural", "pgd-20", "mma-20", "aa", "adaptive-pgd-20", "adaptive-mma-20", "pgd-10", "pgd-40",
              "cifar10c-1", "trust"),
    "paper": ("natural", "pgd-20", "mma-20", "aa",
              *(f"adaptive-pgd-{k}" for k in (20, 40, 60, 80, 100)),
              *(f"adaptive-mma-{k}" for k in (20, 40, 60, 80, 100)),
              *(f"pgd-{k}" for k in (10, 40, 60, 80, 100)),
              "cifar10c-1", "trust"),
}

_PATTERN = re.compile(
    r"^(natural|aa|trust|pgd-(\d+)|mma-(\d+)|adaptive-pgd-(\d+)|adaptive-mma-(\d+)|cifar10c-([1-5]))$")
ATTACK_HELP = "natural, pgd-K, mma-K, aa, adaptive-pgd-K, adaptive-mma-K, cifar10c-S (S in 1..5), trust"


def check_attacks(names):
    """Validate attack names (see the module docstring); returns them as a list."""
    names = list(names)
    if not names:
        raise ValueError(f"attacks must name at least one of: {ATTACK_HELP}")
    for name in names:
        match = _PATTERN.match(name)
        if not match or any(g is not None and int(g) < 1 for g in match.groups()[1:5]):
            raise ValueError(f"attacks: unknown attack {name!r}; allowed: {ATTACK_HELP}")
    return names


def attack_label(name):
    """Column title of an attack: "PGD-20", "Adaptive MMA-40", "AA", ..."""
    if name == "natural":
        return "Natural"
    if name == "aa":
        return "AA"
    if name == "trust":
        return "Trust checks"
    if name.startswith("cifar10c-"):
        return f"CIFAR-10-C (severity {name[-1]})"
    adaptive = name.startswith("adaptive-")
    kind, steps = name.removeprefix("adaptive-").rsplit("-", 1)
    return f"{'Adaptive ' if adaptive else ''}{kind.upper()}-{steps}"


def build_attack(name, model, device, seed):
    """A callable ``(x, y) -> adversarial x`` for an attack name (``natural``: the identity)."""
    import torchattacks

    import torchattacks_part as tp

    if name == "natural":
        return lambda x, y: x
    if name == "aa":
        from pyautoattack import AutoAttack

        adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", device=device, seed=seed)
        adversary.verbose = False
        return lambda x, y: adversary.run_standard_evaluation(x, y, batch_size=len(x))[0]
    adaptive = name.startswith("adaptive-")
    kind, steps = name.removeprefix("adaptive-").rsplit("-", 1)
    steps = int(steps)
    if kind == "pgd" and not adaptive:
        return torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
    if kind == "pgd":
        return tp.PixelAG.adaptive(model, steps=steps, alpha=ALPHA)
    if adaptive:
        return tp.MMA.adaptive(model, steps=steps, alpha=ALPHA, k=MMA_K)
    return tp.MMA(model, eps=EPS, alpha=ALPHA, steps=steps, k=MMA_K)


def _seed(seed, name, batch):
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 7919 + batch) % 2**63


class ResultStore:
    """``eval.json``: finished results and the running totals of the attack in progress, rewritten atomically."""

    def __init__(self, path, config):
        self.path, self.config = path, config
        self.data = {"config": config, "results": {}, "partial": {}}
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("config") != config:
                raise UsageError(f"{path} holds results of another evaluation (config {stored.get('config')}, now "
                                 f"{config}); delete it or choose another --out to start over")
            self.data = stored
            self.data.setdefault("partial", {})

    @property
    def results(self):
        return self.data["results"]

    def done(self, name):
        return name in self.results

    def partial(self, name):
        return self.data["partial"].get(name)

    def save_partial(self, name, state):
        self.data["partial"][name] = state
        self._write()

    def save_result(self, name, result):
        self.results[name] = result
        self.data["partial"].pop(name, None)
        self._write()

    def _write(self):
        atomic_write_text(json.dumps(self.data, indent=1) + "\n", self.path)


def _batches(n, batch_size):
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def accuracy_under(name, attack, model, images, labels, store, batch_size, device, seed, progress, key=None,
                   label=None):
    """Accuracy of ``model`` on ``attack(images)``, resuming from and saving to ``store`` under ``key`` (default
    ``name``), with ``label`` (default the attack's) as its title."""
    from tqdm.auto import tqdm

    key = key or name
    state = store.partial(key) or {"batches_done": 0, "correct": 0, "seen": 0, "seconds": 0.0}
    batches = _batches(len(images), batch_size)
    bar = tqdm(total=len(batches), initial=state["batches_done"], desc=key, unit="batch", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, leave=False)
    for index in range(state["batches_done"], len(batches)):
        start, stop = batches[index]
        x, y = images[start:stop].to(device), labels[start:stop].to(device)
        began = time.perf_counter()
        torch.manual_seed(_seed(seed, key, index))
        adv = attack(x, y)
        with torch.no_grad():
            correct = int((model(adv).argmax(dim=1) == y).sum())  # waits for the device: the timing is complete
        state = {"batches_done": index + 1, "correct": state["correct"] + correct, "seen": stop,
                 "seconds": state["seconds"] + time.perf_counter() - began}
        store.save_partial(key, state)
        bar.update(1)
    bar.close()
    result = {"accuracy": state["correct"] / len(images), "correct": state["correct"], "n": len(images),
              "seconds": round(state["seconds"], 3), "label": label or attack_label(name)}
    store.save_result(key, result)
    return result


def evaluate_corruptions(name, model, store, config, batch_size, device, seed, progress, data_dir, cache_dir):
    """One result per CIFAR-10-C corruption at the severity of ``name``, then their mean under ``name``."""
    from . import corruptions as cc

    severity = int(name[-1])
    n = config["n"]
    folder = cc.cifar10c_folder(data_dir, cache_dir, n=n)
    if folder is None:
        print(f"[evaluate] CIFAR-10-C: no official files in {os.path.join(data_dir, 'CIFAR-10-C')}; generating "
              f"the 19 corruptions of the first {n} test images into {cache_dir}", flush=True)
        folder = cc.generate_cifar10c(data_dir, cache_dir, n=n, progress=progress)
    per = {}
    for corruption in cc.CORRUPTIONS:
        key = f"{name}/{corruption}"
        if not store.done(key):
            images, labels = cc.load_cifar10c(folder, corruption, severity, n=n)
            accuracy_under("natural", lambda x, y: x, model, images, labels, store, batch_size, device, seed,
                           progress, key=key, label=corruption)
        per[corruption] = store.results[key]["accuracy"]
    result = {"accuracy": sum(per.values()) / len(per), "n": n, "label": attack_label(name),
              "per_corruption": per, "source": folder}
    store.save_result(name, result)
    return result


def evaluate_model(model, images, labels, out_dir, attacks, config, batch_size=500, device=None, seed=0,
                   progress=True, data_dir=None, cache_dir=None, surrogate=None):
    """Run ``attacks`` on ``model``; results in ``<out_dir>/eval.json``, returned as its dict.

    :param model: classifier on [0, 1] images returning logits; evaluated in eval mode.
    :param images: float (N, C, H, W) in [0, 1] (CPU is fine: batches move to ``device``); labels int64 (N,).
    :param config: what identifies the evaluation (model, data, n, seed); a stored file with another config is
        refused rather than mixed.
    :param surrogate: optional model for the trust checks' transfer attack.
    """
    from . import trust

    attacks = check_attacks(attacks)
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    config = {**config, "n": len(images), "seed": seed, "eps": EPS}
    store = ResultStore(os.path.join(out_dir, RESULTS_FILE), config)
    for name in attacks:
        if store.done(name):
            print(f"[evaluate] {attack_label(name)}: {_fmt(store.results[name])} (saved)", flush=True)
            continue
        if name.startswith("cifar10c-"):
            result = evaluate_corruptions(name, model, store, config, batch_size, device, seed, progress, data_dir,
                                          cache_dir)
        elif name == "trust":
            began = time.perf_counter()
            checks = trust.trust_checks(model, images, labels, eps=EPS, surrogate=surrogate, batch_size=batch_size,
                                        device=device, seed=seed, progress=progress)
            result = {"checks": checks, "failed": trust.failed_checks(checks), "label": attack_label(name),
                      "surrogate": surrogate is not None, "seconds": round(time.perf_counter() - began, 3)}
            store.save_result(name, result)
        else:
            attack = build_attack(name, model, device, seed)
            # MMA attacks its k targets as one batch: give it k times fewer images per batch.
            size = max(1, batch_size // MMA_K) if "mma" in name else batch_size
            result = accuracy_under(name, attack, model, images, labels, store, size, device, seed, progress)
        print(f"[evaluate] {attack_label(name)}: {_fmt(result)}", flush=True)
    return store.data


def _fmt(result):
    if "checks" in result:
        return "all passed or not run" if not result["failed"] else f"FAILED: {', '.join(result['failed'])}"
    return f"{100 * result['accuracy']:.2f}%"
