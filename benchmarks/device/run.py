"""``python -m benchmarks.device run``: the quick protocol on a fresh GPU machine, in one call, against a deadline.

Stages, in this order (each is timed; one whose estimate would pass the deadline is skipped and says so):

``environment``  GPU, driver, library versions, the pack's commit
``data``         CIFAR-10 from the pack (:mod:`benchmarks.device.pack`): every file's sha256 and every decoded
                 array's checked. The pipeline's own loader reads only the official pickled batches (md5-checked),
                 which do not travel: while this run calls the pipeline, its test-split loader is served these
                 verified arrays instead (:func:`serve_test_split`)
``calibrate``    a few AT batches of the quick recipe (untimed warm-up, then timed): the cost model of the later
                 estimates. When the training would not fit its share of the time left, the epochs (and the burn-in,
                 a quarter of them) are cut to fit, loudly
``train-at``, ``train-part``  :func:`benchmarks.train.train_run` on the verified arrays (same seed, same initial
                 weights); a run that would pass the hard deadline is stopped after its epoch
``cam``          our batched CAM against pytorch-grad-cam's GradCAM on 128 test images, trained AT weights
``eval <attack>``  :func:`benchmarks.pipeline.cmd_evaluate`, one attack of the suite at a time over both models
                 (natural, PGD first; AutoAttack last, after a first report)
``report``       :func:`benchmarks.pipeline.cmd_compare` and :func:`benchmarks.pipeline.cmd_figures`
``speed``        :mod:`benchmarks.speed` on the same training images (AT, PART s=1, s=10, the plain loop, ART's
                 Madry trainer), with fewer epochs or runs when time is short
``bundle``       always: ``summary.json``, ``summary.md``, ``results.tar.gz`` (every JSON, markdown, CSV and figure
                 of the run, not the weights), ``comparison.md`` and the figures, into ``--out`` ($OUT: at most 8
                 files come back, 16 MiB each). The summary is also rewritten after every stage, so a killed call
                 still leaves one.

``--toy`` runs the same stages at CPU-test scale (tiny CNN, the whole pack, a few batches, 2 epochs): the test
suite runs it, so a GPU session only has to run the real thing.
"""

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback

from .pack import DEFAULT_PACK, assemble_split, read_manifest, verify_wheels

DEFAULT_BUDGET_S = 540.0  # the whole command, wheel installation included: 9 minutes
HARD_MARGIN_S = 25.0  # kept for the bundle at the end
REPORT_ESTIMATE_S = 30.0
#: Cost of an attack per image, in PGD-20 passes (one pass: 20 forward + backward steps and a last forward).
ATTACK_WEIGHTS = {"natural": 0.03, "pgd": 1.0, "adaptive-pgd": 1.1, "background-pgd": 1.1, "mma": 3.3,
                  "mma-part": 3.3, "adaptive-mma": 3.4, "background-mma": 3.4, "aa": 100.0, "trust": 8.0}
#: An fp32 PGD-20 image against a bf16 AT training image (24 forward-equivalents in bf16 against 42 in fp32, TF32
#: convolutions at about half the bf16 rate): the estimate until PGD-20 itself has been timed.
PGD20_PER_AT_IMAGE = 3.5
PART_OVER_AT = 1.06
TOY_ATTACKS = ("natural", "pgd-2", "pgd-last-2", "adaptive-pgd-2@32", "trust@32", "aa@8")
LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "pillow", "opencv-python-headless", "opencv-python",
             "scikit-image", "timm", "tqdm", "matplotlib", "adversarial-robustness-toolbox", "torchattacks", "grad-cam",
             "ttach", "pyautoattack", "robustbench", "imagecorruptions")
IMPORTS = ("art", "torchattacks", "pytorch_grad_cam", "pyautoattack")
OUT_FILES = ("summary.md", "summary.json", "results.tar.gz", "comparison.md", "cams.png", "tradeoff.png")


class StageStopped(Exception):
    """A stage stopped itself before the deadline (a training run that would overrun)."""


class Deadline:
    def __init__(self, budget, started_at=None):
        self.started = started_at if started_at is not None else time.time()
        self.budget = budget
        self.end = self.started + budget

    def left(self):
        return self.end - time.time()

    def elapsed(self):
        return time.time() - self.started


def attack_kind(spec):
    """"adaptive-pgd-20@1000" -> ("adaptive-pgd", 20, 1000); "natural" -> ("natural", None, None)."""
    name, _, subset = spec.partition("@")
    subset = int(subset) if subset else None
    if name in ("natural", "aa", "trust"):
        return name, None, subset
    kind, _, steps = name.rpartition("-")
    kind = kind.replace("pgd-last", "pgd")
    return kind, int(steps), subset


def attack_estimate(spec, n_test, n_models, pgd20_image_s, done):
    """Seconds for one attack over all models; ``done``: specs already run (PGD's last iterate comes with it)."""
    kind, steps, subset = attack_kind(spec)
    if "pgd-last-" in spec and spec.replace("pgd-last-", "pgd-") in done:
        return 1.0
    weight = ATTACK_WEIGHTS.get(kind, 3.0) * ((steps or 20) / 20 if kind not in ("natural", "aa", "trust") else 1)
    return n_models * min(subset or n_test, n_test) * pgd20_image_s * weight


def ordered_suite(attacks):
    """The suite with AutoAttack last (the rest in the suite's order): AA is the one that may not fit."""
    return [a for a in attacks if not a.startswith("aa")] + [a for a in attacks if a.startswith("aa")]


class DeviceRun:
    def __init__(self, args):
        self.args = args
        self.deadline = Deadline(args.budget, args.started_at)
        self.out = os.path.abspath(args.out)
        self.work = os.path.abspath(args.work)
        self.results = os.path.join(self.work, "results")
        self.data_dir = os.path.join(self.work, "data")
        self.stages = []
        self.info = {"command": "python -m benchmarks.device run " + " ".join(args.argv), "toy": args.toy,
                     "budget_s": args.budget}
        self.train_data = self.test_data = None
        self.settings = None
        self.folders = []
        self.batch_s = None  # seconds per AT training batch (calibration)
        self.pgd20_image_s = None  # seconds per image of fp32 PGD-20, per model
        self.evaluated = []
        self.per_model_seconds = {}
        self.speed_report = None
        self.cam = None
        self.reported_after = None

    # ------------------------------------------------------------------------------------------------ stages

    def stage(self, name, estimate, fn, reserve=0.0):
        """Run ``fn`` unless ``estimate`` (seconds; None: unknown) plus ``reserve`` exceeds the time left."""
        left = self.deadline.left() - HARD_MARGIN_S
        record = {"name": name, "estimate_s": None if estimate is None else round(estimate, 1),
                  "left_before_s": round(left, 1), "at_s": round(self.deadline.elapsed(), 1)}
        if estimate is not None and estimate + reserve > left:
            record.update(status="skipped", seconds=0.0,
                          detail=f"estimated {estimate:.0f} s{f' + {reserve:.0f} s kept for later' if reserve else ''}"
                                 f", {max(left, 0):.0f} s left before the deadline")
            print(f"[device] SKIPPED {name}: {record['detail']}", flush=True)
            self.stages.append(record)
            self.write_summary()
            return None
        print(f"[device] {name}: start at {record['at_s']:.0f} s"
              f"{'' if estimate is None else f', estimate {estimate:.0f} s'}, {left:.0f} s left", flush=True)
        began = time.time()
        value = None
        cuda = self._cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        try:
            value = fn()
            record["status"] = "done"
        except StageStopped as stop:
            record.update(status="stopped", detail=str(stop))
        except Exception as error:  # one stage failing must not cost the others their results
            record.update(status="failed", detail=f"{type(error).__name__}: {error}")
            traceback.print_exc()
        record["seconds"] = round(time.time() - began, 2)
        if cuda is not None:
            record["peak_gpu_mib"] = round(cuda.max_memory_allocated() / 2**20)
        print(f"[device] {name}: {record['status']} in {record['seconds']:.1f} s"
              f"{'' if 'detail' not in record else ' (' + record['detail'] + ')'}", flush=True)
        self.stages.append(record)
        self.write_summary()
        return value

    def run(self):
        import torch

        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        self.stage("environment", 10, self.environment)
        data = self.stage("data", 30, self.load_data)
        if data is None:
            return self.finish()
        self.device = self.resolve_device()
        if self.device.type == "cuda" and self.args.no_tf32:
            torch.backends.cudnn.allow_tf32 = False
        self.autotune(True)
        self.stage("calibrate", 30, self.calibrate)
        for index, spec in enumerate(self.runs()):
            estimate = self.train_estimate(spec.method)
            self.stage(f"train-{spec.method}", estimate, lambda spec=spec, index=index: self.train(spec, index))
        models = self.trained()
        # Evaluation batches change size (subsets, AutoAttack's shrinking sets of robust images): cuDNN's autotuner
        # would benchmark every convolution again for each new size.
        self.autotune(False)
        if models:
            self.stage("cam", 20, self.cam_stage)
            attacks = ordered_suite(self.attacks())
            main = [a for a in attacks if not a.startswith("aa")]
            for spec in main:
                self.evaluate(spec, len(models))
            self.stage("report", REPORT_ESTIMATE_S, self.report)
            for spec in attacks[len(main):]:
                # one model at a time: the first model's time is the second's estimate
                paths = [os.path.join(folder, "model.pt") for folder, _ in models]
                for path in paths:
                    self.evaluate(spec, len(models), reserve=REPORT_ESTIMATE_S, checkpoint=path)
        self.autotune(True)
        self.speed()
        self.autotune(False)
        if models and self.evaluated and self.reported_after != len(self.evaluated):
            self.stage("report-final", REPORT_ESTIMATE_S, self.report)
        return self.finish()

    # ------------------------------------------------------------------------------------------------ pieces

    def _cuda(self):
        """torch.cuda when this run is on a GPU (peak memory per stage), else None."""
        device = getattr(self, "device", None)
        if device is None or device.type != "cuda":
            return None
        import torch

        return torch.cuda

    def autotune(self, on):
        """cuDNN's autotuner for the fixed batch shapes of training (and the speed benchmark), off otherwise."""
        import torch

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = on
            self.info["cudnn_benchmark"] = "on for calibration, training and the speed benchmark; off otherwise"

    def resolve_device(self):
        import torch

        name = self.args.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(name)

    def environment(self):
        import torch

        info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
            try:
                info["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                     "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                info["nvidia_smi"] = None
        versions = {}
        for name in LIBRARIES:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = None
        info["versions"] = versions
        failed = {}
        for module in IMPORTS:
            try:
                __import__(module)
            except Exception as error:  # reported, and the stages that need it fail on their own
                failed[module] = f"{type(error).__name__}: {error}"
        info["import_failures"] = failed
        try:
            manifest = read_manifest(self.args.pack)
            info["pack"] = {"source": manifest["source"], "created_utc": manifest["created_utc"],
                            "wheels": [w["file"] for w in manifest["wheels"]],
                            "wheels_altered_or_missing": verify_wheels(self.args.pack, manifest)}
        except Exception as error:
            info["pack"] = {"error": str(error)}
        self.info["environment"] = info
        print(f"[device] {info.get('gpu', 'no GPU')} | python {info['python']} | torch {versions['torch']} (CUDA "
              f"{info['torch_cuda']}, cuDNN {info['cudnn']}) | " +
              ", ".join(f"{k} {v}" for k, v in versions.items() if k != "torch" and v), flush=True)
        if failed:
            print(f"[device] imports that fail: {failed}", flush=True)

    def load_data(self):
        import torch

        manifest = read_manifest(self.args.pack)
        train_x, train_y = assemble_split(self.args.pack, "train", manifest)
        test_x, test_y = assemble_split(self.args.pack, "test", manifest)
        settings = self.base_settings(len(train_x), len(test_x))
        n_train, n_test = settings["n_train"], settings["n_test"]
        if n_train > len(train_x) or n_test > len(test_x):
            raise RuntimeError(f"the pack holds {len(train_x)} training and {len(test_x)} test images; the run needs "
                               f"{n_train} and {n_test}")
        os.makedirs(self.data_dir, exist_ok=True)
        self.test_data = (torch.from_numpy(test_x[:n_test]).float().div_(255), torch.from_numpy(test_y[:n_test]).long())
        self.train_data = (torch.from_numpy(train_x[:n_train]).float().div_(255),
                           torch.from_numpy(train_y[:n_train]).long())
        self.test_images = torch.from_numpy(test_x[:128]).float().div_(255)
        self.settings = settings
        self.info["data"] = {"train_images": n_train, "test_images": n_test, "pack": os.path.abspath(self.args.pack),
                             "train_images_sha256": manifest["splits"]["train"]["images_sha256"],
                             "test_images_sha256": manifest["splits"]["test"]["images_sha256"]}
        self.info["settings"] = settings
        print(f"[device] data: {n_train} training and {n_test} test images verified (sha256 of every part and "
              f"array)", flush=True)
        return True

    def base_settings(self, pack_train, pack_test):
        from ..presets import resolve

        settings = resolve(self.args.preset, "cifar10")
        if self.args.toy:
            settings.update(model="tiny", n_train=pack_train, n_test=pack_test, epochs=2, burn_in=1, batch_size=64,
                            eval_batch_size=64, lr=0.05)
        for key in ("epochs", "burn_in", "n_train", "n_test", "batch_size"):
            value = getattr(self.args, key)
            if value is not None:
                settings[key] = value
        if settings["n_train"] is None:
            settings["n_train"] = pack_train
        settings["burn_in"] = min(settings["burn_in"], settings["epochs"] - 1)
        return settings

    def runs(self):
        from ..presets import experiment_runs

        return experiment_runs("main")

    def attacks(self):
        if self.args.attacks:
            return list(self.args.attacks)
        if self.args.toy:
            return list(TOY_ATTACKS)
        from ..evaluate import SUITES

        return list(SUITES[self.settings["suite"]])

    def calibrate(self):
        """Time a few AT batches of the recipe (after an untimed warm-up epoch on the same batches)."""
        import torch
        from art.estimators.classification import PyTorchClassifier

        from art_part.trainer import AdversarialTrainerPARTPyTorch

        from ..models import build_model
        from ..speed import synchronize
        from ..train import bf16_forwards, training_precision

        s, device = self.settings, self.device
        batches = 2 if self.args.toy else 6
        n = min(len(self.train_data[0]), batches * s["batch_size"])
        x, y = self.train_data[0][:n].numpy(), self.train_data[1][:n].numpy()
        model = build_model(s["model"], s["num_classes"]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        classifier = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                       nb_classes=s["num_classes"], clip_values=(0.0, 1.0), optimizer=optimizer,
                                       device_type="gpu" if device.type == "cuda" else "cpu")
        bf16 = training_precision(s["amp"], device) == "bf16"
        trainer = AdversarialTrainerPARTPyTorch(classifier, method="at", alpha=s["alpha"], burn_in=0,
                                                schedule="constant", amp=bf16, channels_last=device.type == "cuda",
                                                verbose=False)
        times = []
        context = bf16_forwards(model, device.type, device.type == "cuda") if bf16 else _null()
        with context:
            for _ in range(2):
                synchronize(device)
                began = time.perf_counter()
                trainer.fit(x, y, batch_size=s["batch_size"], nb_epochs=1)
                synchronize(device)
                times.append(time.perf_counter() - began)
        self.batch_s = times[-1] / -(-n // s["batch_size"])
        at_image_s = times[-1] / n
        self.pgd20_image_s = at_image_s * PGD20_PER_AT_IMAGE
        batches_per_epoch = -(-s["n_train"] // s["batch_size"])
        epoch_s = self.batch_s * batches_per_epoch
        train_s = s["epochs"] * epoch_s * (1 + PART_OVER_AT)
        eval_core = 2 * s["n_test"] * self.pgd20_image_s * 1.1
        share = self.args.train_share * (self.deadline.left() - HARD_MARGIN_S - 20)
        self.info["calibration"] = {"batches": -(-n // s["batch_size"]), "seconds": times,
                                    "at_batch_s": self.batch_s, "at_epoch_s_estimate": epoch_s,
                                    "train_s_estimate": train_s, "pgd20_image_s_estimate": self.pgd20_image_s,
                                    "core_eval_s_estimate": eval_core, "train_share_s": share}
        print(f"[device] calibration: {self.batch_s * 1e3:.1f} ms per AT batch of {s['batch_size']}, so about "
              f"{epoch_s:.1f} s per AT epoch and {train_s:.0f} s for both trainings; training may use {share:.0f} s",
              flush=True)
        per_epoch = epoch_s * (1 + PART_OVER_AT)
        if train_s > share and max(2, int(share // per_epoch)) < s["epochs"]:
            epochs = max(2, int(share // per_epoch))
            burn_in = max(1, round(epochs * s["burn_in"] / s["epochs"]))
            note = (f"SHORTENED: {s['epochs']} epochs (burn-in {s['burn_in']}) would take about {train_s:.0f} s, more "
                    f"than the {share:.0f} s training may use; training {epochs} epochs (burn-in {burn_in}) instead")
            print(f"[device] {note}", flush=True)
            self.info["shortened"] = note
            s["epochs"], s["burn_in"] = epochs, min(burn_in, epochs - 1)
        del trainer, classifier, model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def train_estimate(self, method):
        at = [st for st in self.stages if st["name"] == "train-at" and st["status"] == "done"]
        if method != "at" and at:
            return at[0]["seconds"] * PART_OVER_AT  # the AT run just measured, plus the CAM
        if self.settings is None or self.batch_s is None:
            return None
        epoch_s = self.batch_s * -(-self.settings["n_train"] // self.settings["batch_size"])
        return self.settings["epochs"] * epoch_s * (PART_OVER_AT if method != "at" else 1.0)

    def train(self, spec, order):
        from ..train import train_run

        seconds = []

        def guard(record):
            seconds.append(record["seconds"])
            remaining = (self.settings["epochs"] - record["epoch"]) * seconds[-1]
            if record["epoch"] < self.settings["epochs"] and remaining > self.deadline.left() - HARD_MARGIN_S:
                rest = self.settings["epochs"] - record["epoch"]
                raise StageStopped(f"stopped after epoch {record['epoch']}: the other {rest} epochs (about "
                                   f"{remaining:.0f} s) would pass the deadline")

        folder = train_run(self.settings, spec, 0, self.results, self.train_data, self.device,
                           progress=not self.args.no_progress, order=order, experiment="main", on_epoch=guard)
        self.folders.append(folder)
        return folder

    def trained(self):
        from ..pipeline import trained_runs

        return trained_runs(self.results) if os.path.isdir(self.results) else []

    def cam_stage(self):
        from ..models import CAM_LAYERS, build_model
        from ..speed import cam_comparison, cam_markdown
        from ..train import MODEL_FILE, load_model

        runs = self.trained()
        at = [f for f, r in runs if r["spec"]["method"] == "at"]
        if at:
            model, weights = load_model(os.path.join(at[0], MODEL_FILE), self.device)[0], "trained AT"
        else:
            model, weights = build_model(self.settings["model"], 10), "initial"
        self.cam = cam_comparison(model, self.test_images, self.device, CAM_LAYERS[self.settings["model"]],
                                  repeats=5)
        self.cam["weights"] = weights
        print(f"[device] {cam_markdown(self.cam)}", flush=True)

    def evaluate(self, spec, n_models, reserve=0.0, checkpoint=None):
        """One attack over every trained model, or over ``checkpoint`` alone (then its estimate is one model's,
        and a model already evaluated with it gives the next one's)."""
        from ..pipeline import cmd_evaluate

        estimate = attack_estimate(spec, self.settings["n_test"], n_models, self.pgd20_image_s or 0.0,
                                   self.evaluated) if self.pgd20_image_s else None
        if checkpoint is not None:
            measured = self.per_model_seconds.get(spec)
            estimate = measured if measured is not None else (None if estimate is None else estimate / n_models)
        reserve = reserve + (REPORT_ESTIMATE_S if self.reported_after is None else 0.0)

        def run():
            began = time.time()
            with serve_test_split(self.data_dir, *self.test_data):
                cmd_evaluate(self.settings["preset"], self.results, self.data_dir, self.device.type, attacks=[spec],
                             n=self.settings["n_test"], batch_size=self.settings["eval_batch_size"],
                             progress=not self.args.no_progress, checkpoints=[checkpoint] if checkpoint else ())
            seconds = time.time() - began
            self.evaluated.append(spec)
            if checkpoint is not None:
                self.per_model_seconds[spec] = seconds
                return
            kind, steps, subset = attack_kind(spec)
            if spec.startswith("pgd-") and not spec.startswith("pgd-last"):
                # the cost model's unit, per image and model, from the real thing
                self.pgd20_image_s = seconds / (n_models * min(subset or self.settings["n_test"],
                                                               self.settings["n_test"])) * 20 / steps

        name = f"eval {spec}"
        if checkpoint is not None:
            name += f" ({os.path.basename(os.path.dirname(checkpoint))})"
        self.stage(name, estimate, run, reserve=reserve)

    def report(self):
        from ..pipeline import cmd_compare, cmd_figures

        self.reported_after = len(self.evaluated)
        errors = []
        try:
            cmd_compare(self.results)
        except Exception as error:
            errors.append(f"compare: {type(error).__name__}: {error}")
            traceback.print_exc()
        try:
            with serve_test_split(self.data_dir, *self.test_data):
                cmd_figures(self.results, self.data_dir, device=self.device.type)
        except Exception as error:
            errors.append(f"figures: {type(error).__name__}: {error}")
            traceback.print_exc()
        if errors:
            raise RuntimeError("; ".join(errors))

    def speed(self):
        from .. import speed

        if self.train_data is None:
            return
        s = self.settings
        epoch_s = None
        if self.batch_s is not None:
            epoch_s = self.batch_s * -(-s["n_train"] // s["batch_size"])
        # (runs, timed epochs) from the full benchmark down to the three runs of the AT / PART ratios
        everything = ["at", "part_s1", "part_s10", "plain", "art_madry"]
        plans = [(everything, self.args.speed_epochs), (everything, 1), (["at", "part_s1", "part_s10"], 1)]
        plans = [p for i, p in enumerate(plans) if p not in plans[:i]]
        # cost of one timed epoch of each run, in AT epochs (ART's trainer goes through numpy every batch)
        cost = {"at": 1.0, "part_s1": PART_OVER_AT, "part_s10": 1.05, "plain": 1.0, "art_madry": 2.5}
        reserve = REPORT_ESTIMATE_S if self.evaluated else 0.0
        left = self.deadline.left() - HARD_MARGIN_S - reserve
        chosen, estimate = plans[-1], None
        for runs, epochs in plans:
            # each run also has its warm-up batches and model set-up; s=10 its CAM passes
            estimate = None if epoch_s is None else sum(cost[r] for r in runs) * epoch_s * epochs + 5 * len(runs)
            chosen = (runs, epochs)
            if estimate is None or estimate <= left:
                break
        runs, epochs = chosen
        argv = ["--data-dir", self.data_dir, "--device", self.device.type, "--model", s["model"], "--n",
                str(s["n_train"]), "--batch-size", str(s["batch_size"]), "--epochs", str(epochs),
                "--runs", ",".join(runs), "--warmup-batches", "2", "--cam-batch", "0",
                "--out", os.path.join(self.results, "speed.json"), "--no-progress"]
        if s["amp"] == "bf16" or (s["amp"] == "bf16-cuda" and self.device.type == "cuda"):
            argv.append("--amp")
        if self.device.type == "cuda":
            argv.append("--channels-last")

        def run():
            args = speed.build_parser().parse_args(argv)
            args.argv = argv
            report = speed.run_on(args, self.device, *self.train_data, progress=not self.args.no_progress)
            report["cam"] = self.cam
            report["markdown"] = speed.markdown(report)
            self.speed_report = report
            print(report["markdown"], flush=True)

        self.stage(f"speed ({','.join(runs)}; {epochs} timed epoch{'s' if epochs > 1 else ''})", estimate, run,
                   reserve=reserve)

    # ------------------------------------------------------------------------------------------------ output

    def training_logs(self):
        logs = {}
        for folder, record in self.trained_or_partial():
            path = os.path.join(folder, "log.jsonl")
            if os.path.exists(path):
                with open(path) as f:
                    logs[record["label"]] = [json.loads(line) for line in f if line.strip()]
        return logs

    def trained_or_partial(self):
        found = []
        root = os.path.join(self.results, "runs")
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            path = os.path.join(root, name, "run.json")
            if os.path.exists(path):
                with open(path) as f:
                    found.append((os.path.join(root, name), json.load(f)))
        found.sort(key=lambda item: item[1].get("order", 0))
        return found

    def targets(self, logs):
        """The issue's targets next to what was measured."""
        rows = []
        n = self.settings["n_train"] if self.settings else None
        at = logs.get("AT", [])
        part = logs.get("PART (s=1)", [])
        if at and n:
            median = statistics.median(r["seconds"] for r in at[1:] or at)
            rows.append(("AT epoch, scaled to 50,000 images (training log)", f"{median * 50000 / n:.1f} s "
                         f"({median:.1f} s on {n})", "<= 10 s", median * 50000 / n <= 10))
        burn = self.settings["burn_in"] if self.settings else 0
        if len(at) == len(part) and len(at) > burn + 1:
            ratio = statistics.median(p["seconds"] for p in part[burn + 1:]) / statistics.median(
                a["seconds"] for a in at[burn + 1:])
            rows.append(("PART (s=1) / AT, epochs after the burn-in (training log)", f"{ratio:.3f}", "<= 1.05",
                         ratio <= 1.05))
        if self.speed_report:
            labels = {"part_s1/at": "PART (s=1) / AT (speed benchmark)",
                      "part_s10/at": "PART (s=10) / AT (speed benchmark)", "at/plain": "ours / plain torch loop"}
            for key, label in labels.items():
                r = self.speed_report["ratios"].get(key)
                if r:
                    rows.append((label, f"{r['value']:.3f}", f"<= {r['target']:.2f}", r["met"]))
            runs = self.speed_report["runs"]
            if "at" in runs:
                rows.append(("AT epoch (speed benchmark), scaled to 50,000 images",
                             f"{runs['at']['median_epoch_seconds'] * 50000 / n:.1f} s", "<= 10 s",
                             runs["at"]["median_epoch_seconds"] * 50000 / n <= 10))
        if self.cam:
            rows.append(("batched CAM vs pytorch-grad-cam GradCAM", f"{self.cam['speedup']:.1f}x, max map "
                         f"difference {self.cam['max_abs_difference']:.1e}", ">= 10x", self.cam["met"]))
        total = self.deadline.elapsed()
        rows.append(("whole command (wheel installation included)", f"{total / 60:.2f} min", "<= 9 min",
                     total <= 540))
        return rows

    def summary(self):
        logs = self.training_logs()
        comparison = os.path.join(self.results, "report", "comparison.json")
        data = {"info": self.info, "stages": self.stages, "elapsed_s": round(self.deadline.elapsed(), 1),
                "training_logs": logs, "speed": self.speed_report, "cam": self.cam,
                "targets": [dict(zip(("what", "measured", "target", "met"), row)) for row in self.targets(logs)]}
        if os.path.exists(comparison):
            with open(comparison) as f:
                data["comparison"] = json.load(f)
        return data

    def markdown(self, data):
        info, env = data["info"], data["info"].get("environment", {})
        lines = ["# Quick protocol on the device", "",
                 f"- Machine: {env.get('gpu', 'no GPU')}, {env.get('cpus')} CPUs; {env.get('nvidia_smi') or ''}",
                 f"- Python {env.get('python')}, torch {env.get('versions', {}).get('torch')} (CUDA "
                 f"{env.get('torch_cuda')}, cuDNN {env.get('cudnn')}); "
                 + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if k != "torch" and v),
                 f"- Date (UTC): {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}; pack of commit "
                 f"{env.get('pack', {}).get('source', {}).get('git_commit')}"
                 f" (dirty: {env.get('pack', {}).get('source', {}).get('git_dirty')})",
                 f"- Command: `{info['command']}`; budget {info['budget_s']:.0f} s, elapsed {data['elapsed_s']:.0f} s",
                 ""]
        if info.get("settings"):
            lines += [f"- Settings: `{json.dumps(info['settings'])}`", ""]
        if info.get("shortened"):
            lines += [f"**{info['shortened']}**", ""]
        lines += ["## Stages", "", "| stage | status | seconds | estimate | at (s) | peak GPU memory (MiB) | detail |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for s in data["stages"]:
            lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | "
                         f"{'-' if s['estimate_s'] is None else s['estimate_s']} | {s['at_s']} | "
                         f"{s.get('peak_gpu_mib', '-')} | {s.get('detail', '')} |")
        lines += ["", "## Targets", "", "| what | measured | target | met |", "|---|---|---|---|"]
        for t in data["targets"]:
            lines.append(f"| {t['what']} | {t['measured']} | {t['target']} | "
                         f"{'-' if t['met'] is None else ('yes' if t['met'] else '**no**')} |")
        for label, log in data["training_logs"].items():
            lines += ["", f"## Training: {label}", "", "| epoch | phase | loss | natural | adversarial | lr | s |",
                      "|---:|---|---:|---:|---:|---:|---:|"]
            for r in log:
                nat = "-" if r.get("natural_acc") is None else f"{100 * r['natural_acc']:.1f}"
                adv = "-" if r.get("adversarial_acc") is None else f"{100 * r['adversarial_acc']:.1f}"  # "standard"
                lines.append(f"| {r['epoch']} | {r['phase']} | {r['loss']:.3f} | {nat} | "
                             f"{adv} | {r['lr']:.4f} | {r['seconds']:.1f} |")
        report = os.path.join(self.results, "report", "comparison.md")
        if os.path.exists(report):
            with open(report) as f:
                lines += ["", f.read().strip()]
        if data.get("speed"):
            lines += ["", "## Speed (benchmarks.speed)", "", data["speed"]["markdown"]]
        elif data.get("cam"):
            from ..speed import cam_markdown

            lines += ["", "## CAM", "", cam_markdown(data["cam"])]
        return "\n".join(lines) + "\n"

    def write_summary(self):
        """summary.json and summary.md into --out (atomically), and the results bundle."""
        try:
            os.makedirs(self.out, exist_ok=True)
            data = self.summary()
            _atomic_text(os.path.join(self.out, "summary.json"), json.dumps(data, indent=1, default=str) + "\n")
            _atomic_text(os.path.join(self.out, "summary.md"), self.markdown(data))
            self.bundle()
        except Exception:  # the summary must never stop the run
            traceback.print_exc()

    def bundle(self):
        """results.tar.gz of the results folder (no weights, no data), and the report's main files beside it."""
        if not os.path.isdir(self.results):
            return
        path = os.path.join(self.out, "results.tar.gz")
        with tarfile.open(path + ".tmp", "w:gz") as tar:
            for folder, _, files in os.walk(self.results):
                for file in sorted(files):
                    full = os.path.join(folder, file)
                    if file.endswith((".pt", ".tmp")) or os.path.getsize(full) > 8 * 2**20:
                        continue
                    tar.add(full, arcname=os.path.join("results", os.path.relpath(full, self.results)))
        os.replace(path + ".tmp", path)
        report = os.path.join(self.results, "report")
        for name in ("comparison.md", "cams.png", "tradeoff.png"):
            if os.path.exists(os.path.join(report, name)):
                shutil.copyfile(os.path.join(report, name), os.path.join(self.out, name))

    def finish(self):
        self.info["elapsed_s"] = round(self.deadline.elapsed(), 1)
        self.write_summary()
        print(f"[device] done in {self.deadline.elapsed():.0f} s (budget {self.args.budget:.0f} s); results in "
              f"{self.out}: {', '.join(sorted(os.listdir(self.out)))}", flush=True)
        return 0


@contextlib.contextmanager
def serve_test_split(data_dir, images, labels):
    """Inside, the pipeline's loader (``benchmarks.pipeline.load_split``) returns the first n of ``images`` and
    ``labels`` for CIFAR-10's test split under ``data_dir``, and reads everything else as usual.

    The device run has checked every byte of these arrays against the pack's sha256 (a stronger check than the md5
    of the official pickled batches, which are 177 MB and do not travel), so the pipeline's functions run on them
    unchanged rather than on a file of our own making that the loader rightly refuses to unpickle.
    """
    from .. import pipeline

    original = pipeline.load_split

    def load_split(dataset, folder, train, n=None):
        if dataset == "cifar10" and not train and os.path.abspath(folder) == os.path.abspath(data_dir):
            return images[:n].clone(), labels[:n].clone()
        return original(dataset, folder, train, n)

    pipeline.load_split = load_split
    try:
        yield
    finally:
        pipeline.load_split = original


def _null():
    return contextlib.nullcontext()


def _atomic_text(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def add_arguments(parser):
    parser.add_argument("--pack", default=DEFAULT_PACK, help=f"the pack folder (default {DEFAULT_PACK})")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join("results", "device-out"),
                        help="where the results go (default $OUT, else results/device-out)")
    parser.add_argument("--work", default=None,
                        help="working folder for runs, weights and data (default /tmp/part-device, --toy: "
                             "<out>/../device-work)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--preset", default="quick", help="(default quick)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole command, counted from --started-at (default "
                             f"{DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--started-at", type=float, default=None,
                        help="UNIX time the command began (device_run.sh passes it, so the wheel installation counts)")
    parser.add_argument("--toy", action="store_true", help="CPU-test scale: tiny CNN, 2 epochs, a toy suite")
    parser.add_argument("--attacks", nargs="+", default=None, help="instead of the preset's suite")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--burn-in", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-share", type=float, default=0.5,
                        help="share of the time left after calibration that the two trainings may use; more "
                             "shortens the schedule (default 0.5)")
    parser.add_argument("--speed-epochs", type=int, default=1,
                        help="timed epochs of each speed run (default 1, after a 2-batch warm-up)")
    parser.add_argument("--no-tf32", action="store_true",
                        help="forbid TF32 convolutions (PyTorch allows them by default for fp32 convolutions)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", default=True, help=argparse.SUPPRESS)


def main(args):
    if args.work is None:
        args.work = os.path.join(os.path.dirname(os.path.abspath(args.out)), "device-work") if args.toy \
            else "/tmp/part-device"
    os.makedirs(args.out, exist_ok=True)
    extra = sorted(set(os.listdir(args.out)) - set(OUT_FILES) - {"log.txt"})
    if extra:
        print(f"[device] note: {args.out} already holds {extra}; only {len(OUT_FILES) + 1} files come back",
              file=sys.stderr)
    return DeviceRun(args).run()
