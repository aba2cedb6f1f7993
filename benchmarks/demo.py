"""``part-bench demo``: PART's attacks on real CIFAR-10 images and a real (pretrained, non-robust) ResNet-18.

Clean accuracy and robust accuracy under PGD, Pixel-AG, MMA and the paper's adaptive Pixel-AG, side by side, with
how much of each image Pixel-AG attacked with the full eps, how many CAMs were degenerate and how long each attack
took. Writes ``demo.json`` (every number, the configuration and the environment), ``demo.md`` (the table) and
``demo.png`` (see :func:`benchmarks.figures.attack_grid`).

The model is standard-trained, so every attack drives its accuracy close to 0%: the demo shows the tooling working
end to end, not a defence.
"""

import datetime
import json
import os
import platform
import sys
import time

import torch

from art_part.checkpoint import atomic_write_text

from . import UsageError
from .train import load_split

DEFAULT_N = 128
DEFAULT_BATCH_SIZE = 128
DEFAULT_STEPS = 20
DEFAULT_OUT = os.path.join("results", "demo")
#: Columns of demo.png.
FIGURE_IMAGES = 8

EPS = 8 / 255
EPS_LOW = 7 / 255
ALPHA = 2 / 255
MMA_K = 3
MODEL_NAME = "ResNet-18, CIFAR-10, standard training (pyautoattack wheel)"
NOT_ROBUST_NOTE = ("This model is standard-trained, not robust: robust accuracies near 0% are expected "
                   "(the demo shows the tooling, not a defence).")


def resolve_device(device):
    """``"auto"`` -> cuda when available, else cpu; ``"cuda"`` without CUDA is a :class:`UsageError`."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def device_description(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine() or 'cpu'}, {torch.get_num_threads()} threads"


def load_average():
    """The 1-minute load average of the machine (None where the OS has none): timings mean little on a busy CPU."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def attack_specs(model, steps):
    """The attacks of the demo, in table order, as dicts: key, label, budget (text), attack, reports_budget (whether
    it has a CAM budget to report) and tiles (how many copies of each image it forwards at once: MMA runs its k
    targets as one batch of k x N images, so it gets batches of ``batch_size // k`` images)."""
    import torchattacks

    import torchattacks_part as tp

    from .figures import fraction_of_255 as f255

    return [
        dict(key="pgd", label=f"PGD-{steps}", budget=f255(EPS), reports_budget=False, tiles=1,
             attack=torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)),
        dict(key="pixel_ag", label=f"Pixel-AG-{steps}", budget=f"{f255(EPS)} / {f255(EPS_LOW)}",
             reports_budget=True, tiles=1,
             attack=tp.PixelAG(model, eps=EPS, eps_low=EPS_LOW, alpha=ALPHA, steps=steps)),
        dict(key="mma", label=f"MMA-{steps} (k={MMA_K})", budget=f255(EPS), reports_budget=False, tiles=MMA_K,
             attack=tp.MMA(model, eps=EPS, alpha=ALPHA, steps=steps, k=MMA_K)),
        dict(key="pixel_ag_adaptive", label=f"Pixel-AG-{steps} adaptive",
             budget=f"{f255(tp.ADAPTIVE_EPS)} / {f255(tp.ADAPTIVE_EPS_LOW)}", reports_budget=True, tiles=1,
             attack=tp.PixelAG.adaptive(model, steps=steps, alpha=ALPHA)),
    ]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(n, batch_size):
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def predict(model, images, batch_size, device):
    """Predicted classes (N,) on the CPU."""
    preds = []
    with torch.no_grad():
        for start, stop in _batches(len(images), batch_size):
            preds.append(model(images[start:stop].to(device)).argmax(dim=1).cpu())
    return torch.cat(preds)


def run_attack(attack, label, images, labels, batch_size, device, seed, keep, reports_budget, progress):
    """Attack every batch after ``torch.manual_seed(seed)``; robust accuracy, time, CAM figures, first adversarials."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    n = len(images)
    correct = 0
    important = 0.0  # sum over batches of (important fraction x batch size): every image weighs the same
    degenerate = 0
    kept = []
    _sync(device)
    begin = time.perf_counter()
    for start, stop in tqdm(_batches(n, batch_size), desc=label, unit="batch", disable=not progress,
                            file=sys.stderr, dynamic_ncols=True):
        x, y = images[start:stop].to(device), labels[start:stop].to(device)
        adv = attack(x, y)
        with torch.no_grad():
            correct += int((attack.get_logits(adv).argmax(dim=1) == y).sum())
        if reports_budget:
            important += float(attack.last_important_fraction) * (stop - start)
            degenerate += int(attack.last_degenerate)
        if start < keep:
            kept.append(adv[: keep - start].cpu())
    _sync(device)
    seconds = time.perf_counter() - begin
    result = {
        "label": label,
        "robust_accuracy": correct / n,
        "correct": correct,
        "seconds": seconds,
        "important_fraction": important / n if reports_budget else None,
        "degenerate_cams": degenerate if reports_budget else None,
    }
    return result, torch.cat(kept)[:keep]


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _count(value):
    return "-" if value is None else str(value)


def table_rows(report):
    header = ("attack", "eps (important / other)", "robust acc.", "full-eps pixels", "degenerate CAMs", "seconds")
    rows = [("none (clean)", "-", _pct(report["clean_accuracy"]), "-", "-", f"{report['clean_seconds']:.1f}")]
    for result in report["attacks"].values():
        rows.append((result["label"], result["budget"], _pct(result["robust_accuracy"]),
                     _pct(result["important_fraction"]), _count(result["degenerate_cams"]),
                     f"{result['seconds']:.1f}"))
    return header, rows


def load_text(report):
    """How busy the machine was, for reading the seconds: '1-minute load average 3.7 -> 3.8 on 2 CPUs'."""
    start, end = report.get("load_average_start"), report.get("load_average_end")
    if start is None or end is None:
        return ""
    return f"1-minute load average {start:.1f} at start, {end:.1f} at end, on {report['cpu_count']} CPUs"


def format_text(report):
    """The table printed on stdout."""
    config = report["config"]
    header, rows = table_rows(report)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    text = [
        f"Model: {report['model']}",
        f"Data: first {config['n']} CIFAR-10 test images; device {report['device']} ({report['device_name']}); "
        f"{config['steps']} steps, alpha {report['alpha']}, seed {config['seed']}",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *[line(r) for r in rows],
        "",
        NOT_ROBUST_NOTE,
        f"Total {report['total_seconds']:.0f} s" + (f" ({load_text(report)})." if load_text(report) else "."),
    ]
    return "\n".join(text)


def format_markdown(report):
    """demo.md: the table, how it was made, and the figure."""
    config = report["config"]
    header, rows = table_rows(report)
    md = [
        "# PART attack demo",
        "",
        f"{report['model']}, first {config['n']} CIFAR-10 test images, {config['steps']} attack steps "
        f"(step size {report['alpha']}), seed {config['seed']}; {report['device_name']}, torch "
        f"{report['torch_version']}, torchattacks {report['torchattacks_version']}, {report['date']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        f"{NOT_ROBUST_NOTE} *Full-eps pixels*: the share of pixels the GradCAM marks as important "
        "(above mean + 1 std), which keep the full eps; the others get the lower budget. *Degenerate CAMs*: "
        "constant or non-finite maps, attacked with eps everywhere. MMA attacks its k targets as one batch, so it "
        "gets batches of batch size / k images.",
        "",
        f"Total {report['total_seconds']:.0f} s" + (
            f"; {load_text(report)} (a load above the CPU count means other work shared the CPU and inflated the "
            "seconds)." if load_text(report) else "."),
        "",
        f"Reproduce: `python -m benchmarks demo --data-dir DATA --n {config['n']} --batch-size "
        f"{config['batch_size']} --steps {config['steps']} --seed {config['seed']}`",
        "",
        "![clean images, GradCAM, Pixel-AG budget and perturbation](demo.png)",
        "",
    ]
    return "\n".join(md)


def draw_figure(path, model, attack, images, labels, clean_preds, adv_images, device, steps):
    """demo.png for the first images: the CAM and budget are those the attack itself computes."""
    import torchattacks_part as tp

    from .data import CIFAR10_CLASSES
    from .figures import attack_grid

    x = images.to(device)
    cams = tp.cam_maps(model, x)  # predicted class, layer found automatically (layer4 of this ResNet)
    budgets = attack.budget(x)  # = budget_map(cams, eps, eps_low, "cam"), exactly what Pixel-AG used
    with torch.no_grad():
        adv_preds = model(adv_images.to(device)).argmax(dim=1).cpu()
    return attack_grid(
        path, images, labels, clean_preds, cams.cpu(), budgets.cpu(), adv_images - images, adv_preds,
        eps=attack.eps, eps_low=attack.eps_low, class_names=CIFAR10_CLASSES, attack_name="Pixel-AG",
        title=f"Pixel-AG-{steps} on a pretrained (non-robust) CIFAR-10 ResNet-18: red = misclassified",
    )


def run_demo(data_dir, n=DEFAULT_N, batch_size=DEFAULT_BATCH_SIZE, out=DEFAULT_OUT, device="auto",
             steps=DEFAULT_STEPS, seed=0, progress=True, stream=None):
    """Run the demo, print its table to ``stream`` (stdout) and write demo.json, demo.md and demo.png to ``out``.

    :return: the report (the content of demo.json).
    """
    import torchattacks

    from .models import pretrained_resnet18

    stream = sys.stdout if stream is None else stream
    began = time.perf_counter()
    load_at_start = load_average()
    device = resolve_device(device)
    images, labels = load_split("cifar10", data_dir, train=False, n=n)
    n = len(images)  # fewer when n exceeds the test set
    model = pretrained_resnet18(device)

    _sync(device)
    start = time.perf_counter()
    clean_preds = predict(model, images, batch_size, device)
    _sync(device)
    clean_seconds = time.perf_counter() - start
    clean_accuracy = float((clean_preds == labels).float().mean())
    print(f"Clean accuracy on the first {n} CIFAR-10 test images: {100 * clean_accuracy:.1f}%", file=stream,
          flush=True)

    keep = min(FIGURE_IMAGES, n)
    attacks, kept = {}, {}
    figure_attack = None
    for spec in attack_specs(model, steps):
        key, attack = spec["key"], spec["attack"]
        images_per_batch = max(1, batch_size // spec["tiles"])
        result, kept[key] = run_attack(attack, spec["label"], images, labels, images_per_batch, device, seed, keep,
                                       spec["reports_budget"], progress)
        result["budget"] = spec["budget"]
        result["images_per_batch"] = images_per_batch
        result["params"] = {"eps": attack.eps, "eps_low": getattr(attack, "eps_low", None), "alpha": attack.alpha,
                            "steps": attack.steps, **({"k": attack.k} if key == "mma" else {})}
        attacks[key] = result
        if key == "pixel_ag":
            figure_attack = attack

    report = {
        "command": "demo",
        "config": {"data_dir": os.path.abspath(data_dir), "n": n, "batch_size": batch_size, "steps": steps,
                   "seed": seed, "device": str(device), "out": os.path.abspath(out), "figure_images": keep},
        "model": MODEL_NAME,
        "alpha": "2/255",
        "clean_accuracy": clean_accuracy,
        "clean_correct": int((clean_preds == labels).sum()),
        "clean_seconds": clean_seconds,
        "attacks": attacks,
        "torch_version": torch.__version__,
        "torchattacks_version": torchattacks.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": device_description(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_at_start,
    }
    os.makedirs(out, exist_ok=True)
    draw_figure(os.path.join(out, "demo.png"), model, figure_attack, images[:keep], labels[:keep],
                clean_preds[:keep], kept["pixel_ag"], device, steps)
    report["total_seconds"] = time.perf_counter() - began
    report["load_average_end"] = load_average()
    atomic_write_text(format_markdown(report), os.path.join(out, "demo.md"))
    atomic_write_text(json.dumps(report, indent=2) + "\n", os.path.join(out, "demo.json"))
    print(format_text(report), file=stream)
    print(f"Wrote {os.path.join(out, 'demo.json')}, demo.md and demo.png", file=stream, flush=True)
    return report
