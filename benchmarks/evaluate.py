"""``part-bench evaluate``: the RobustBench-style evaluation suite, resumable image by image, with per-image outcomes.

Attacks (names as on the command line; L-inf, eps 8/255, step 2/255 unless said otherwise). Every attack is scored
at full strength: an image counts as broken when ANY point the attack visited is misclassified, as AutoAttack does.

==========================  ==================================================================================
``natural``                 clean accuracy
``pgd-K``                   PGD with K steps and a uniform random start; broken if any iterate (the start
                            included) misclassifies it: PGD-20 in Table 1, K = 10..100 in Table 7
``pgd-last-K``              the same run scored on its last iterate only, i.e. ``torchattacks.PGD`` (what papers
                            that used torchattacks, the PART authors included, report); computed with ``pgd-K``
``mma-K``                   the MMA paper's evaluation attack (Gao et al., ICML 2022): APGD-T on the minimum margin
                            for each of the k = 3 most likely wrong classes, broken if any target breaks it
``mma-part-K``              the PART authors' training-time MMA (k = 3 targets, PGD on the margin, last iterate),
                            which their Table 1 reports as "MMA"
``aa``                      AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square) through the reference
                            implementation, ``pyautoattack``; never torchattacks' 10-iteration variant
``adaptive-pgd-K``          the paper's adaptive attack (Table 2): Pixel-AG on the evaluated model's own CAM
                            with eps 12/255 on important pixels and 8/255 elsewhere, K steps, any iterate
``adaptive-mma-K``          the same budget inside ``mma-K`` (Table 3)
``background-pgd-K``        the adaptive budget inverted: 8/255 on the CAM's important pixels, 12/255 on the
                            others. PART lowers eps off the CAM in training: is that region its weak spot?
``background-mma-K``        the inverted budget inside ``mma-K``
``cifar10c-S``              accuracy on each of the 19 CIFAR-10-C corruptions at severity S (Table 4: S = 1),
                            one result per corruption plus their mean
``trust``                   the five obfuscated-gradient checks of Athalye et al. (2018) (appendix H.3)
==========================  ==================================================================================

``NAME@N`` runs an attack on the first N of the evaluated images only (``aa@1000``): every subset is a prefix of
the test split, so results on different N still pair image by image on their common prefix.

Results go to ``eval.json`` in the evaluated model's folder: per attack its accuracy and which images survived
(:mod:`benchmarks.outcomes`). The file's identity (``config``) names the weights (a digest), the evaluation seed,
eps and the batch size; every result names its image subset (count and digest). A file of another evaluation is
refused, never mixed in. It is rewritten atomically after every batch: a finished attack is never redone, and an
interrupted one restarts after its last finished image. Each batch is attacked after seeding torch with (seed,
attack, batch index), so a resumed evaluation gives the same numbers as an uninterrupted one (the batch size is
part of the identity: another batch size means other random draws).
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
from . import outcomes
from .fingerprint import images_digest, weights_digest

EPS = 8 / 255
ALPHA = 2 / 255
MMA_K = 3
RESULTS_FILE = "eval.json"

SUITES = {
    "table1": ("natural", "pgd-20", "pgd-last-20", "mma-20", "mma-part-20", "aa"),
    "smoke": ("natural", "pgd-20", "pgd-last-20", "mma-20", "mma-part-20", "aa", "adaptive-pgd-20",
              "adaptive-mma-20", "background-pgd-20", "background-mma-20", "pgd-10", "pgd-40", "cifar10c-1", "trust"),
    # The one-GPU-call protocol (benchmarks.device): the cheap attacks on the whole test set, the costly ones on a
    # prefix of it.
    "quick": ("natural", "pgd-20", "pgd-last-20", "aa@1000", "mma-20@1000", "adaptive-pgd-20@1000",
              "background-pgd-20@1000", "trust@500"),
    "paper": ("natural", "pgd-20", "pgd-last-20", "mma-20", "mma-part-20", "aa",
              *(f"adaptive-pgd-{k}" for k in (20, 40, 60, 80, 100)),
              *(f"adaptive-mma-{k}" for k in (20, 40, 60, 80, 100)),
              "background-pgd-20", "background-mma-20",
              *(f"pgd-{k}" for k in (10, 40, 60, 80, 100)),
              "cifar10c-1", "trust"),
}

_STEPPED = ("pgd", "pgd-last", "mma", "mma-part", "adaptive-pgd", "adaptive-mma", "background-pgd", "background-mma")
_PATTERN = re.compile(rf"^(natural|aa|trust|(?:{'|'.join(_STEPPED)})-[1-9]\d*|cifar10c-[1-5])(?:@([1-9]\d*))?$")
ATTACK_HELP = ("natural, pgd-K, pgd-last-K, mma-K, mma-part-K, aa, adaptive-pgd-K, adaptive-mma-K, background-pgd-K, "
               "background-mma-K, cifar10c-S (S in 1..5), trust; NAME@N: on the first N images only")


def parse_attack(spec):
    """``"aa@1000"`` -> ``("aa", 1000)``; ``"pgd-20"`` -> ``("pgd-20", None)`` (all evaluated images)."""
    match = _PATTERN.match(spec) if isinstance(spec, str) else None
    if not match:
        raise ValueError(f"attacks: unknown attack {spec!r}; allowed: {ATTACK_HELP}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def check_attacks(specs):
    """Validate attack names (see the module docstring); returns them as a list."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise ValueError(f"attacks must name at least one of: {ATTACK_HELP}")
    seen = {}
    for spec in specs:
        name, n = parse_attack(spec)
        if name in seen and seen[name] != n:
            raise ValueError(f"attacks: {name} is asked on two subsets ({spec!r} and another size); name it once")
        seen[name] = n
    return specs


def _kind_steps(name):
    kind, _, steps = name.rpartition("-")
    return kind, int(steps)


def attack_label(name):
    """Column title of an attack: "PGD-20", "PGD-20 (last iterate)", "Adaptive MMA-40", "AA", ..."""
    fixed = {"natural": "Natural", "aa": "AA", "trust": "Trust checks"}
    if name in fixed:
        return fixed[name]
    if name.startswith("cifar10c-"):
        return f"CIFAR-10-C (severity {name[-1]})"
    kind, steps = _kind_steps(name)
    prefix = "Adaptive " if kind.startswith("adaptive-") else "Background " if kind.startswith("background-") else ""
    base = "MMA" if "mma" in kind else "PGD"
    suffix = {"pgd-last": " (last iterate)", "mma-part": " (PART variant)"}.get(kind, "")
    return f"{prefix}{base}-{steps}{suffix}"


def max_eps(name):
    """The largest per-entry budget of an attack (0 for natural, None for corruptions and the trust checks)."""
    from torchattacks_part import ADAPTIVE_EPS

    if name == "natural":
        return 0.0
    if name in ("trust",) or name.startswith("cifar10c-"):
        return None
    return ADAPTIVE_EPS if name.startswith(("adaptive-", "background-")) else EPS


def job_of(name):
    """The run that computes ``name``: ``pgd-last-K`` is scored from the same run as ``pgd-K``."""
    return name.replace("pgd-last-", "pgd-", 1) if name.startswith("pgd-last-") else name


def job_outputs(job):
    """The results one run gives: ``pgd-K`` gives ``pgd-K`` (any iterate) and ``pgd-last-K`` (last iterate)."""
    if job.startswith("pgd-"):
        return job, job.replace("pgd-", "pgd-last-", 1)
    return (job,)


def build_attack(name, model, device, seed):
    """A callable ``(x, y) -> adversarial x`` for an attack name (``natural``: the identity).

    The PGD-family attacks are :class:`torchattacks_part.PixelAG` with ``keep="misclassified"`` (the first
    misclassified iterate per image); with a uniform budget it runs exactly ``torchattacks.PGD``'s arithmetic and
    random start, whose last iterate stays in ``attack.last_iterate``.
    """
    import torchattacks_part as tp

    if name == "natural":
        return lambda x, y: x
    if name == "aa":
        from pyautoattack import AutoAttack

        adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", device=device, seed=seed)
        adversary.verbose = False
        return lambda x, y: adversary.run_standard_evaluation(x, y, batch_size=len(x))[0]
    kind, steps = _kind_steps(job_of(name))
    if kind == "pgd":
        return tp.PixelAG(model, eps=EPS, eps_low=EPS, alpha=ALPHA, steps=steps, keep="misclassified")
    if kind == "adaptive-pgd":
        return tp.PixelAG.adaptive(model, steps=steps, alpha=ALPHA, keep="misclassified")
    if kind == "background-pgd":
        return tp.PixelAG.background(model, steps=steps, alpha=ALPHA, keep="misclassified")
    if kind == "mma-part":
        return tp.MMA(model, eps=EPS, alpha=ALPHA, steps=steps, k=MMA_K)
    if kind == "mma":
        return tp.MMAEval(model, eps=EPS, steps=steps, k=MMA_K)
    if kind == "adaptive-mma":
        return tp.MMAEval.adaptive(model, steps=steps, k=MMA_K)
    return tp.MMAEval.background(model, steps=steps, k=MMA_K)


def _survived(job, attack, model, x, y):
    """{result name: bool (B,) on the device}: which images of the batch the model still classifies correctly."""
    adv = attack(x, y)
    with torch.no_grad():
        survived = {job: model(adv).argmax(dim=1) == y}
        if len(job_outputs(job)) > 1:  # the same run's last iterate
            survived[job_outputs(job)[1]] = model(attack.last_iterate).argmax(dim=1) == y
    return survived


def _seed(seed, name, batch):
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 7919 + batch) % 2**63


def _differences(stored, config):
    keys = sorted(set(stored) | set(config))
    return ", ".join(f"{k}: {stored.get(k)!r} there, {config.get(k)!r} now" for k in keys
                     if stored.get(k) != config.get(k))


def read_json(path, what):
    """A JSON object read from ``path``, or a UsageError naming the file and what it is not."""
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path} is not a readable {what} ({error}); move it away or repair it: it was left as "
                         f"it is") from None
    if not isinstance(stored, dict):
        raise UsageError(f"{path} is not a valid {what} (a JSON {type(stored).__name__}, not an object); move it "
                         f"away or repair it: it was left as it is")
    return stored


def _corrupt(path, name, why):
    return UsageError(f"{path}: the result of {name} is corrupt or was edited ({why}); delete the file to evaluate "
                      f"again")


def _check_result(path, name, result):
    """A stored result must be an object; with per-image outcomes, its counts must agree with them."""
    if not isinstance(result, dict):
        raise _corrupt(path, name, "not an object")
    if "checks" in result:
        return
    if not isinstance(result.get("accuracy"), (int, float)) or isinstance(result["accuracy"], bool) \
            or not 0 <= result["accuracy"] <= 1:
        raise _corrupt(path, name, f"accuracy {result.get('accuracy')!r} is not a number in [0, 1]")
    if "survived" not in result:
        return
    try:
        survived = outcomes.unpack(result["survived"])
    except ValueError as error:
        raise _corrupt(path, name, error) from None
    if result.get("n") != len(survived) or result.get("correct") != int(survived.sum()) \
            or abs(result["accuracy"] - survived.mean()) > 1e-9:
        raise _corrupt(path, name, "accuracy, correct, n and the per-image outcomes disagree")


def read_results(path):
    """An ``eval.json``, checked: a config and results objects, every result consistent with its outcomes.

    :raises UsageError: naming ``path`` and what is wrong; the file is never modified.
    """
    stored = read_json(path, "eval.json")
    if (not isinstance(stored.get("config"), dict) or not isinstance(stored.get("results"), dict)
            or not isinstance(stored.get("partial", {}), dict)):
        raise UsageError(f"{path} is not a valid eval.json (no config/results objects); move it away or repair "
                         f"it: it was left as it is")
    for name, result in stored["results"].items():
        _check_result(path, name, result)
    stored.setdefault("partial", {})
    return stored


class ResultStore:
    """``eval.json``: finished results and the progress of the attack under way, rewritten atomically.

    Progress is kept in images (``done``), with the per-image outcomes so far; both are checked on load, so a
    truncated, hand-edited or foreign file is refused with its path rather than counted.
    """

    def __init__(self, path, config):
        self.path, self.config = path, config
        self.data = {"config": config, "results": {}, "partial": {}}
        if not os.path.exists(path):
            return
        if not os.path.isfile(path):
            raise UsageError(f"{path} is not a file: the evaluation's results cannot be written there")
        stored = read_results(path)
        if stored["config"] != config:
            raise UsageError(f"{path} holds results of another evaluation ({_differences(stored['config'], config)});"
                             f" delete it or choose another --out to start over")
        self.data = stored

    @property
    def results(self):
        return self.data["results"]

    def done(self, name, n, images=None):
        """True when ``name`` is stored for these ``n`` images; a result for other images is a UsageError."""
        result = self.results.get(name)
        if result is None:
            return False
        if result.get("n") != n or (images is not None and result.get("images", images) != images):
            raise UsageError(f"{self.path} holds {name} on {result.get('n')} images (digest {result.get('images')}), "
                             f"now asked on {n} (digest {images}); delete it or choose another --out")
        return True

    def partial(self, job, n, images, outputs, step):
        """The saved progress of ``job`` on these ``n`` images, checked, or a fresh one."""
        state = self.data["partial"].get(job)
        fresh = {"done": 0, "n": n, "images": images, "seconds": 0.0,
                 "survived": {o: outcomes.pack(torch.zeros(0, dtype=torch.bool)) for o in outputs}}
        if state is None:
            return fresh
        try:
            done = state["done"]
            counts = {o: len(outcomes.unpack(state["survived"][o])) for o in outputs}
            valid = (isinstance(done, int) and (state["n"], state["images"]) == (n, images) and 0 <= done < n
                     and done % step == 0 and set(counts.values()) == {done})
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise UsageError(f"{self.path}: the saved progress of {job} does not fit {n} images in batches of {step} "
                             f"(corrupt, edited, or from another --n); delete the file to evaluate again")
        return state

    def save_partial(self, job, state):
        self.data["partial"][job] = state
        self._write()

    def save_result(self, name, result, job=None):
        self.results[name] = result
        self.data["partial"].pop(job or name, None)
        self._write()

    def _write(self):
        atomic_write_text(json.dumps(self.data, indent=1) + "\n", self.path)


def _result(name, survived, n, images, seconds, label=None):
    count = int(survived.sum())
    return {"accuracy": count / n, "correct": count, "n": n, "images": images, "max_eps": max_eps(name),
            "seconds": round(seconds, 3), "label": label or attack_label(name), "survived": outcomes.pack(survived)}


def accuracy_under(job, attack, model, images, labels, store, batch_size, device, seed, progress, key=None,
                   label=None, wanted=None):
    """Run ``job`` on ``images`` batch by batch, resuming from and saving to ``store``; returns its results.

    :param key: the job's name in the store (default ``job``; a CIFAR-10-C corruption is ``natural`` under
        ``cifar10c-S/<corruption>``), and ``label`` its title.
    :param wanted: which of the job's outputs to store (default all).
    """
    from tqdm.auto import tqdm

    key = key or job
    outputs = job_outputs(job)
    names = {o: o if key == job else key for o in outputs}  # output -> result name
    n = len(images)
    digest = images_digest(images, labels)
    state = store.partial(key, n, digest, outputs, batch_size)
    survived = {o: [torch.as_tensor(outcomes.unpack(state["survived"][o]))] for o in outputs}
    bar = tqdm(total=n, initial=state["done"], desc=key, unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, leave=False)
    for start in range(state["done"], n, batch_size):
        stop = min(start + batch_size, n)
        x, y = images[start:stop].to(device), labels[start:stop].to(device)
        began = time.perf_counter()
        torch.manual_seed(_seed(seed, key, start // batch_size))
        batch = _survived(job, attack, model, x, y)
        for o in outputs:
            survived[o].append(batch[o].cpu())  # one copy per batch: it waits for the device, the timing is whole
        state = {"done": stop, "n": n, "images": digest, "seconds": state["seconds"] + time.perf_counter() - began,
                 "survived": {o: outcomes.pack(torch.cat(survived[o])) for o in outputs}}
        if stop < n:
            store.save_partial(key, state)
        bar.update(stop - start)
    bar.close()
    results = {}
    for o in outputs:
        if wanted is None or o in wanted:
            results[names[o]] = _result(names[o], torch.cat(survived[o]), n, digest, state["seconds"],
                                        label or attack_label(names[o]))
    for name, result in results.items():
        store.save_result(name, result, job=key)
    store.data["partial"].pop(key, None)
    return results


def evaluate_corruptions(name, model, store, n, batch_size, device, seed, progress, data_dir, cache_dir,
                         all_severities=False):
    """One result per CIFAR-10-C corruption at the severity of ``name`` on the first ``n`` test images, then their
    mean under ``name``. Generated images cover that severity only, or all five with ``all_severities``."""
    from . import corruptions as cc

    severity = int(name[-1])
    folder = cc.cifar10c_folder(data_dir, cache_dir, n=n, severity=severity)
    if folder is None and all_severities:
        print(f"[evaluate] CIFAR-10-C: no official files in {os.path.join(data_dir, 'CIFAR-10-C')}; generating "
              f"the 5 severities of the 19 corruptions of the first {n} test images into {cache_dir}", flush=True)
        folder = cc.generate_cifar10c(data_dir, cache_dir, n=n, progress=progress, severities="all")
    if folder is None:
        # Only the severity evaluated: the five would cost five times the time and disk (140 MB for 500 images).
        # A later cifar10c-S adds its severity to the same folder; `python -m benchmarks cifar10c` generates all.
        print(f"[evaluate] CIFAR-10-C: no official files in {os.path.join(data_dir, 'CIFAR-10-C')}; generating "
              f"severity {severity} of the 19 corruptions of the first {n} test images into {cache_dir} (all five "
              f"severities: python -m benchmarks cifar10c --n {n} --out {cache_dir})", flush=True)
        folder = cc.generate_cifar10c(data_dir, cache_dir, n=n, progress=progress, severities=(severity,))
    per = {}
    for corruption in cc.CORRUPTIONS:
        key = f"{name}/{corruption}"
        if key not in store.results:
            images, labels = cc.load_cifar10c(folder, corruption, severity, n=n)
            accuracy_under("natural", build_attack("natural", model, device, seed), model, images, labels, store,
                           batch_size, device, seed, progress, key=key, label=corruption)
        per[corruption] = store.results[key]["accuracy"]
    result = {"accuracy": sum(per.values()) / len(per), "n": n, "label": attack_label(name),
              "per_corruption": per, "source": folder, "max_eps": None}
    store.save_result(name, result)
    return result


def evaluate_model(model, images, labels, out_dir, attacks, config, batch_size=500, device=None, seed=0,
                   progress=True, data_dir=None, cache_dir=None, surrogate=None, all_severities=False):
    """Run ``attacks`` on ``model``; results in ``<out_dir>/eval.json``, returned as its dict.

    :param model: classifier on [0, 1] images returning logits; evaluated in eval mode.
    :param images: float (N, C, H, W) in [0, 1] (CPU is fine: batches move to ``device``); labels int64 (N,).
    :param attacks: names (see the module docstring), ``NAME@M`` for the first M <= N images only.
    :param config: what identifies the evaluated model (label, dataset, ...); the weights' digest, ``seed``, eps
        and ``batch_size`` are added. A stored file with another identity is refused rather than mixed.
    :param surrogate: optional model for the trust checks' transfer attack.
    :param all_severities: when ``cifar10c-S`` must generate CIFAR-10-C, generate all five severities (RobustBench's
        layout, reused by any later severity) instead of S alone.
    """
    from . import trust

    specs = [parse_attack(spec) for spec in check_attacks(attacks)]
    for name, n in specs:
        if n is not None and n > len(images):
            raise ValueError(f"attacks: {name}@{n} asks for more images than the {len(images)} evaluated")
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    config = {**config, "weights": weights_digest(model), "seed": seed, "eps": EPS, "batch_size": batch_size}
    store = ResultStore(os.path.join(out_dir, RESULTS_FILE), config)
    digests = {}  # n -> digest of the first n images

    def subset(n):
        if n not in digests:
            digests[n] = images_digest(images[:n], labels[:n])
        return images[:n], labels[:n], digests[n]

    for name, n in specs:
        n = n or len(images)
        x, y, digest = subset(n)
        job = job_of(name)
        if store.done(name, n, None if name.startswith("cifar10c-") else digest):
            print(f"[evaluate] {attack_label(name)}: {_fmt(store.results[name])} (saved)", flush=True)
            continue
        if name.startswith("cifar10c-"):
            result = evaluate_corruptions(name, model, store, n, batch_size, device, seed, progress, data_dir,
                                          cache_dir, all_severities)
        elif name == "trust":
            began = time.perf_counter()
            checks = trust.trust_checks(model, x, y, eps=EPS, surrogate=surrogate, batch_size=batch_size,
                                        device=device, seed=seed, progress=progress)
            result = {"checks": checks, "failed": trust.failed_checks(checks), "label": attack_label(name),
                      "surrogate": surrogate is not None, "n": n, "seconds": round(time.perf_counter() - began, 3)}
            store.save_result(name, result)
        else:
            attack = build_attack(name, model, device, seed)
            # The PART authors' MMA attacks its k targets as one batch: give it k times fewer images per batch.
            size = max(1, batch_size // MMA_K) if job.startswith("mma-part-") else batch_size
            wanted = {o for o in job_outputs(job) if o == name or o not in store.results}
            result = accuracy_under(job, attack, model, x, y, store, size, device, seed, progress,
                                    wanted=wanted)[name]
        print(f"[evaluate] {attack_label(name)}: {_fmt(result)}", flush=True)
    return store.data


def _fmt(result):
    if "checks" in result:
        return "all passed or not run" if not result["failed"] else f"FAILED: {', '.join(result['failed'])}"
    return f"{100 * result['accuracy']:.2f}%"
