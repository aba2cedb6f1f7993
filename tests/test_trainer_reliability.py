"""AdversarialTrainerPARTPyTorch when things go wrong: non-finite weights, kills, resumes of another run, stale
temporary files, unusable checkpoint folders, a second fit, short schedules; and MART's official inner start.

Issue 9 items 4, 6, 7, 8, 13, 14; issue 8 section 4 (MART / PART-M start); issue 12 (second fit, integer degenerate
counts). Real CIFAR-10 images and the tiny CNN of conftest, on the CPU.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from art.estimators.classification import PyTorchClassifier

from art_part import checkpoint as ckpt
from art_part.attacks import MMAPyTorch, PixelAGPyTorch
from art_part.trainer import AdversarialTrainerPARTPyTorch
from benchmarks.data import load_cifar10
from torchattacks_part import MMA, PixelAG

EPS, EPS_LOW, ALPHA, LR = 8 / 255, 4 / 255, 2 / 255, 0.05
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(data_dir):
    images, labels = load_cifar10(data_dir, train=True, n=64, download=False)
    return images.numpy(), labels.numpy()


@pytest.fixture
def new_model(tiny_model):
    return lambda: copy.deepcopy(tiny_model).train()


def make_classifier(model, lr=LR):
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                             clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(model.parameters(), lr=lr,
                                                                                momentum=0.9))


def make_trainer(model, method="at", **kwargs):
    options = dict(method=method, eps=EPS, eps_low=EPS_LOW, steps=1, burn_in=1, verbose=False)
    options.update(kwargs)
    return AdversarialTrainerPARTPyTorch(make_classifier(model), **options)


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def count_attacks(trainer):
    calls = []
    perturb = trainer.attack.perturb

    def spy(images, labels, budget):
        calls.append(len(images))
        return perturb(images, labels, budget)

    trainer.attack.perturb = spy
    return calls


class Stop(Exception):
    pass


def stop_after(epoch):
    def callback(trainer, record):
        if record["epoch"] == epoch:
            raise Stop

    return callback


# --------------------------------------------------------------------------- item 4: non-finite weights, no save


@pytest.mark.parametrize("with_folder", [True, False])
def test_non_finite_weights_are_never_checkpointed(new_model, data, tmp_path, with_folder):
    """The last update of epoch 2 makes a weight NaN while every loss stays finite: training stops with a
    FloatingPointError at the end of epoch 2, and last.pt / log.jsonl keep epoch 1."""
    x, y = data
    model = new_model()
    trainer = make_trainer(model, checkpoint_dir=str(tmp_path) if with_folder else None)
    updates = []

    def poison(optimizer, args, kwargs):
        updates.append(1)
        if len(updates) == 4:  # 2 batches per epoch: the last update of epoch 2
            with torch.no_grad():
                model.head[2].weight[0, 0] = float("nan")

    trainer._classifier.optimizer.register_step_post_hook(poison)
    with pytest.raises(FloatingPointError, match=r"weights.*epoch 2") as error:
        trainer.fit(x, y, batch_size=32, nb_epochs=3)
    assert len(updates) == 4
    assert [r["epoch"] for r in trainer.history] == [1]
    if not with_folder:
        assert "no checkpoint" in str(error.value)
        return
    assert "kept the checkpoint of epoch 1" in str(error.value)
    state = ckpt.load(str(tmp_path / "last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    assert [r["epoch"] for r in read_log(tmp_path)] == [1]


# ------------------------------------------------------------------------------ item 6: the log follows last.pt


def test_resume_rewrites_a_log_the_kill_left_one_epoch_short(new_model, data, tmp_path):
    x, y = data
    make_trainer(new_model(), checkpoint_dir=str(tmp_path)).fit(x, y, batch_size=32, nb_epochs=2)
    full = (tmp_path / "log.jsonl").read_text()
    assert len(full.splitlines()) == 2
    # killed between the final last.pt and its log record:
    (tmp_path / "log.jsonl").write_text(full.splitlines(keepends=True)[0])
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    calls = count_attacks(trainer)
    trainer.fit(x, y, batch_size=32, nb_epochs=2, resume=True)
    assert calls == []  # nothing left to train
    assert (tmp_path / "log.jsonl").read_text() == full
    os.remove(tmp_path / "log.jsonl")
    make_trainer(new_model(), checkpoint_dir=str(tmp_path)).fit(x, y, batch_size=32, nb_epochs=2, resume=True)
    assert (tmp_path / "log.jsonl").read_text() == full


# ------------------------------------------------------------------------------ item 7: resume only the same run

_first_epoch = {}


def first_epoch_checkpoint(new_model, data, folder):
    """A PART run of 3 epochs on the 64 images, stopped after epoch 1 (computed once, copied into ``folder``)."""
    if "path" not in _first_epoch:
        origin = folder.parent / "origin"
        with pytest.raises(Stop):
            make_trainer(new_model(), "part", checkpoint_dir=str(origin)).fit(
                data[0], data[1], batch_size=32, nb_epochs=3, callback=stop_after(1))
        _first_epoch["path"] = origin
    shutil.copytree(_first_epoch["path"], folder)


@pytest.mark.parametrize("change, key", [
    (dict(n=16), "num_samples"),
    (dict(flip=True), "data"),
    (dict(seed=1), "seed"),
    (dict(nb_epochs=2), "nb_epochs"),
    (dict(method="part-m"), "method"),
    (dict(eps=6 / 255), "eps"),
    (dict(eps_low=2 / 255), "eps_low"),
    (dict(burn_in=0), "burn_in"),
    (dict(mask_refresh=2), "mask_refresh"),
    (dict(rule="random"), "rule"),
    (dict(cam="xgradcam"), "cam"),
    (dict(batch_size=16), "batch_size"),
])
def test_resume_refuses_another_run(new_model, data, tmp_path, change, key):
    folder = tmp_path / "run"
    first_epoch_checkpoint(new_model, data, folder)
    x, y = data
    change = dict(change)
    x = x[: change.pop("n", len(x))]
    y = y[: len(x)]
    if change.pop("flip", False):
        x = x[..., ::-1].copy()
    fit_args = {name: change.pop(name) for name in ("nb_epochs", "batch_size") if name in change}
    fit_args = dict(dict(batch_size=32, nb_epochs=3), **fit_args)
    model = new_model()
    before = copy.deepcopy(model.state_dict())
    trainer = make_trainer(model, **dict(dict(method="part"), **change), checkpoint_dir=str(folder))
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=rf"cannot resume.*\b{key}\b") as error:
        trainer.fit(x, y, resume=True, **fit_args)
    assert "was" in str(error.value) and "now" in str(error.value)
    assert calls == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was loaded


def test_resume_with_more_epochs_extends_the_run(new_model, data, tmp_path):
    """Training longer is allowed: the extra epochs follow the schedule of the run as it was started ("paper" over 4
    epochs decays at epoch 4 and stays decayed; a fresh 8-epoch run would decay at epoch 7 only, from lr), and the
    checkpoint then holds the new nb_epochs."""
    x, y = data[0][:32], data[1][:32]
    make_trainer(new_model(), checkpoint_dir=str(tmp_path)).fit(x, y, batch_size=32, nb_epochs=4)
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    trainer.fit(x, y, batch_size=32, nb_epochs=8, resume=True)
    assert [r["epoch"] for r in trainer.history] == list(range(1, 9))
    assert [r["lr"] for r in trainer.history] == pytest.approx([LR] * 3 + [LR / 10] * 5)
    assert ckpt.load(str(tmp_path / "last.pt"))["run"]["nb_epochs"] == 8
    assert [r["epoch"] for r in read_log(tmp_path)] == list(range(1, 9))


def test_checkpoints_without_a_run_record_still_resume(new_model, data, tmp_path):
    """last.pt files written before checkpoints named their run: only the method can be compared."""
    x, y = data[0][:32], data[1][:32]
    make_trainer(new_model(), checkpoint_dir=str(tmp_path)).fit(x, y, batch_size=32, nb_epochs=1)
    state = ckpt.load(str(tmp_path / "last.pt"))
    del state["run"]
    ckpt.atomic_save(state, str(tmp_path / "last.pt"))
    with pytest.raises(ValueError, match=r"cannot resume.*method was 'at', now 'trades'"):
        make_trainer(new_model(), "trades", checkpoint_dir=str(tmp_path)).fit(x, y, batch_size=32, nb_epochs=2,
                                                                             resume=True)
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    trainer.fit(x, y, batch_size=32, nb_epochs=2, resume=True)
    assert [r["epoch"] for r in trainer.history] == [1, 2]


# -------------------------------------------------------------------------------- item 8: stale temporary files

WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from art_part.checkpoint import atomic_write

    def write(f):
        f.write(b"partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(120)

    atomic_write(sys.argv[1], write)
""")


def start_writer(target):
    process = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT), str(target)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    return process


def test_stale_temporary_files_of_a_killed_run_are_removed(new_model, data, tmp_path):
    """A writer of last.pt killed mid-write leaves its temporary file: the next run removes it. A live writer's file
    (log.jsonl, another process still writing), temporary files of other targets and other files stay."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / ".notes.txt.tmp-abc").write_text("someone else's")
    killed = start_writer(folder / "last.pt")
    killed.kill()
    killed.wait()
    stale = set(os.listdir(folder)) - {"notes.txt", ".notes.txt.tmp-abc"}
    assert len(stale) == 1
    live = start_writer(folder / "log.jsonl")
    try:
        held = set(os.listdir(folder)) - stale - {"notes.txt", ".notes.txt.tmp-abc"}
        assert len(held) == 1
        past = time.time() - 3600
        for name in stale | held:
            os.utime(folder / name, (past, past))  # old: only the lock tells the live writer's file apart
        make_trainer(new_model(), checkpoint_dir=str(folder)).fit(data[0][:32], data[1][:32], batch_size=32,
                                                                  nb_epochs=1, resume=True)
        left = set(os.listdir(folder))
        assert not stale & left
        assert held <= left
        assert {"notes.txt", ".notes.txt.tmp-abc", "last.pt", "log.jsonl"} <= left
    finally:
        live.kill()
        live.wait()


def test_atomic_write_names_its_temporary_file_after_the_target(tmp_path):
    seen = []
    ckpt.atomic_write(str(tmp_path / "last.pt"), lambda f: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1 and seen[0].startswith(".last.pt.tmp-")
    assert os.listdir(tmp_path) == ["last.pt"]
    assert ckpt.remove_stale_temporaries(str(tmp_path / "last.pt")) == []


# ------------------------------------------------------------------------------ item 13: unusable checkpoint_dir


def test_checkpoint_dir_that_is_a_file_is_refused_at_construction(new_model, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match=r"^checkpoint_dir.*not a folder"):
        make_trainer(new_model(), checkpoint_dir=str(path))
    with pytest.raises(ValueError, match=r"^checkpoint_dir.*not a folder"):
        make_trainer(new_model(), checkpoint_dir=str(path / "below"))
    with pytest.raises(TypeError, match=r"^checkpoint_dir must be"):
        make_trainer(new_model(), checkpoint_dir=3)


def test_read_only_checkpoint_dir_is_refused_before_any_work(new_model, data, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permission bits: use a folder the kernel keeps read-only
            folder = "/sys"
        trainer = make_trainer(new_model(), checkpoint_dir=str(folder))
        calls = count_attacks(trainer)
        with pytest.raises(ValueError, match=r"^checkpoint_dir.*not writable"):
            trainer.fit(data[0][:32], data[1][:32], batch_size=32, nb_epochs=1)
        assert calls == []
    finally:
        (tmp_path / "read-only").chmod(0o755)


# ------------------------------------------------------------------------------ item 14: short "paper" schedules


@pytest.mark.parametrize("schedule, nb_epochs, lrs", [
    ("paper", 1, [LR]),
    ("released", 1, [LR]),
    ("paper", 2, [LR, LR / 10]),
    ("paper", 4, [LR, LR, LR, LR / 10]),
    ("released", 2, [LR, LR / 10]),
])
def test_the_decay_never_hits_the_first_epoch(new_model, data, schedule, nb_epochs, lrs):
    trainer = make_trainer(new_model(), schedule=schedule)
    trainer.fit(data[0][:32], data[1][:32], batch_size=32, nb_epochs=nb_epochs)
    assert [r["lr"] for r in trainer.history] == pytest.approx(lrs)


# ------------------------------------------------------------------------------ issue 12: a second fit


def test_a_second_fit_starts_at_the_initial_lr(new_model, data):
    x, y = data[0][:32], data[1][:32]
    trainer = make_trainer(new_model())
    trainer.fit(x, y, batch_size=32, nb_epochs=2)
    trainer.fit(x, y, batch_size=32, nb_epochs=2)
    assert [r["lr"] for r in trainer.history] == pytest.approx([LR, LR / 10])
    # a torch scheduler object goes back to its state at construction too
    model = new_model()
    clf = make_classifier(model)
    schedule = torch.optim.lr_scheduler.StepLR(clf.optimizer, step_size=1, gamma=0.5)
    trainer = AdversarialTrainerPARTPyTorch(clf, method="at", steps=1, schedule=schedule, verbose=False)
    for _ in range(2):
        trainer.fit(x, y, batch_size=32, nb_epochs=2)
        assert [r["lr"] for r in trainer.history] == pytest.approx([LR, LR / 2])


def test_a_second_fit_does_not_overwrite_a_run_unless_asked(new_model, data, tmp_path):
    x, y = data[0][:32], data[1][:32]
    trainer = make_trainer(new_model(), checkpoint_dir=str(tmp_path))
    trainer.fit(x, y, batch_size=32, nb_epochs=2)
    log = (tmp_path / "log.jsonl").read_text()
    calls = count_attacks(trainer)
    with pytest.raises(ValueError, match=r"^checkpoint_dir.*last.pt.*resume=True.*overwrite=True"):
        trainer.fit(x, y, batch_size=32, nb_epochs=1)
    with pytest.raises(ValueError, match=r"^checkpoint_dir"):
        make_trainer(new_model(), checkpoint_dir=str(tmp_path)).fit_loader(
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                        batch_size=32), nb_epochs=1)
    assert calls == [] and (tmp_path / "log.jsonl").read_text() == log
    with pytest.raises(ValueError, match=r"resume.*overwrite"):
        trainer.fit(x, y, batch_size=32, nb_epochs=1, resume=True, overwrite=True)
    with pytest.raises(ValueError, match=r"^overwrite must be True or False"):
        trainer.fit(x, y, batch_size=32, nb_epochs=1, overwrite="yes")
    trainer.fit(x, y, batch_size=32, nb_epochs=1, overwrite=True)
    assert [r["epoch"] for r in read_log(tmp_path)] == [1]
    assert ckpt.load(str(tmp_path / "last.pt"))["epoch"] == 1


# ------------------------------------------------------------------------------ issue 8: MART's official start


def test_mart_inner_attack_is_the_official_one(new_model, data):
    """Method "mart": the first attack equals the official MART inner step (Wang et al. 2020, mart.py): start at
    x + 0.001 N(0, 1) from the same RNG state, one sign step on the cross-entropy, projection, clamp."""
    x, y = data[0][:16], data[1][:16]
    model = new_model()
    reference = copy.deepcopy(model).eval()
    trainer = make_trainer(model, "mart", augment=False)
    assert trainer.attack.start == "gaussian"
    perturb = trainer.attack.perturb
    seen = {}

    def spy(images, labels, budget):
        if not seen:
            seen.update(rng=torch.get_rng_state(), images=images.clone(), labels=labels.clone())
            seen["out"] = perturb(images, labels, budget)
            return seen["out"]
        return perturb(images, labels, budget)

    trainer.attack.perturb = spy
    trainer.fit(x, y, batch_size=16, nb_epochs=1)

    torch.set_rng_state(seen["rng"])
    images, labels = seen["images"], seen["labels"]
    x_adv = images.detach() + 0.001 * torch.randn(images.shape).detach()
    x_adv.requires_grad_()
    loss_ce = F.cross_entropy(reference(x_adv), labels)
    grad = torch.autograd.grad(loss_ce, [x_adv])[0]
    x_adv = x_adv.detach() + ALPHA * torch.sign(grad.detach())
    x_adv = torch.min(torch.max(x_adv, images - EPS), images + EPS)
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
    assert (seen["out"] - x_adv).abs().max() < 1e-6

    uniform = make_trainer(new_model(), "mart", mart_start="uniform")
    assert uniform.attack.start == "uniform" and uniform.attacks[0].start == "uniform"


@pytest.mark.parametrize("method, start", [("mart", "gaussian"), ("part-m", "gaussian"), ("at", "uniform"),
                                           ("part", "uniform"), ("trades", "gaussian"), ("part-t", "gaussian")])
def test_inner_start_of_each_method(new_model, method, start):
    assert make_trainer(new_model(), method).attack.start == start


def test_mart_start_is_checked(new_model):
    with pytest.raises(ValueError, match=r"^mart_start must be one of \['gaussian', 'uniform'\]"):
        make_trainer(new_model(), "mart", mart_start="normal")
    with pytest.raises(ValueError, match=r"^start must be one of"):
        PixelAGPyTorch(make_classifier(new_model()), start="normal")


# ------------------------------------------------------------------------------ issue 12: integer counts


def test_last_degenerate_is_an_integer_count(tiny_model, data):
    images, labels = torch.from_numpy(data[0][:4]), torch.from_numpy(data[1][:4])
    for attack, kwargs in ((PixelAG(tiny_model, eps_low=EPS, steps=1), {}),  # uniform budget, no CAM
                           (PixelAG(tiny_model, eps_low=EPS_LOW, steps=1), {}),  # CAM
                           (PixelAG(tiny_model, steps=1), {"budget": torch.full((4, 1, 32, 32), EPS)}),
                           (MMA(tiny_model, steps=1, k=2), {})):
        attack(images, labels, **kwargs)
        assert attack.last_degenerate.dtype == torch.int64 and attack.last_degenerate.dim() == 0
    clf = make_classifier(tiny_model)
    for adapter in (PixelAGPyTorch(clf, max_iter=1), MMAPyTorch(clf, max_iter=1, k=2)):
        adapter.generate(data[0][:4], data[1][:4])
        assert type(adapter.last_degenerate) is int
