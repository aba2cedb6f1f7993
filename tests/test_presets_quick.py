"""The quick preset: its recipe, the one-cycle schedule (per batch, resumable) and bf16 training forwards."""

import json
import os

import pytest
import torch

from benchmarks.presets import PRESETS, QUICK_N_TRAIN, experiment_runs, resolve
from benchmarks.train import (MODEL_FILE, OneCycleLR, bf16_forwards, load_model, train_experiment, train_run,
                              training_precision)


def test_quick_preset_is_the_papers_model_on_a_fast_at_schedule():
    quick = resolve("quick", "cifar10")
    assert (quick["model"], quick["alpha"], quick["augment"]) == ("resnet18", 2 / 255, True)
    assert (quick["epochs"], quick["burn_in"], quick["schedule"], quick["lr"]) == (15, 4, "onecycle", 0.2)
    assert (quick["batch_size"], quick["weight_decay"], quick["amp"]) == (256, 5e-4, "bf16-cuda")
    assert (quick["n_train"], quick["n_test"], quick["suite"]) == (QUICK_N_TRAIN, 10000, "quick")
    assert QUICK_N_TRAIN == 20000 and "quick" in PRESETS
    for name in ("smoke", "paper"):
        assert (resolve(name, "cifar10")["amp"], resolve(name, "cifar10")["schedule"]) == ("fp32", "paper")


def test_training_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [training_precision(a, cpu) for a in ("fp32", "bf16", "bf16-cuda")] == ["fp32", "bf16", "fp32"]
    assert [training_precision(a, cuda) for a in ("fp32", "bf16", "bf16-cuda")] == ["fp32", "bf16", "bf16"]
    with pytest.raises(ValueError, match="amp"):
        training_precision("fp16", cpu)


def test_one_cycle_rises_to_its_peak_at_two_fifths_and_falls_to_zero_per_update():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = OneCycleLR(optimizer, 0.2, total_steps=100)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    assert seen[0] == pytest.approx(0.2 / 40) and seen[39] == pytest.approx(0.2) and seen[99] == pytest.approx(0)
    assert max(seen) == pytest.approx(0.2) and all(a < b for a, b in zip(seen[:39], seen[1:40]))
    assert all(a > b for a, b in zip(seen[39:99], seen[40:100]))
    state = schedule.state_dict()
    other = OneCycleLR(torch.optim.SGD(model.parameters(), lr=1.0), 0.2, total_steps=100)
    other.load_state_dict(state)
    assert other.steps_done == 100 and other.get_last_lr() == [0.0]


def test_bf16_forwards_cover_every_forward_and_follow_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    x = torch.rand(2, 3, 8, 8)
    with bf16_forwards(model, "cpu"):
        first = model(x)
        assert first.dtype == torch.float32  # logits come back in fp32
        assert not torch.equal(first, model.__class__.forward(model, x))  # bf16 arithmetic inside
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)  # as an optimizer step would: the next forward must see the new weights
        assert not torch.allclose(model(x), first, atol=1e-2)
    assert "forward" not in vars(model)  # the plain fp32 module again
    assert model(x).dtype == torch.float32


def _settings(**change):
    return {**resolve("smoke", "cifar10"), "epochs": 2, "burn_in": 1, "batch_size": 32, "n_train": 64,
            "schedule": "onecycle", **change}


def test_one_cycle_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, cifar_test):
    x, y = cifar_test[0][:64], cifar_test[1][:64]
    settings, spec = _settings(), experiment_runs("main")[1]  # PART (s=1): burn-in, then PART
    device = torch.device("cpu")
    whole = train_run(settings, spec, 0, str(tmp_path / "whole"), (x, y), device, progress=False)

    class Killed(Exception):
        pass

    def kill(record):
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_run(settings, spec, 0, str(tmp_path / "cut"), (x, y), device, progress=False, on_epoch=kill)
    cut = train_run(settings, spec, 0, str(tmp_path / "cut"), (x, y), device, progress=False)
    a, b = load_model(os.path.join(whole, MODEL_FILE))[0], load_model(os.path.join(cut, MODEL_FILE))[0]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    with open(os.path.join(whole, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    # 2 batches an epoch, 4 updates: the lr after update 2 is lr_at(3) = peak * (1 - 3/4) / 0.6
    assert log[0]["lr"] == pytest.approx(0.05 * 0.25 / 0.6) and log[1]["lr"] == 0


def test_train_experiment_takes_data_and_amp_from_settings(tmp_path, cifar_test):
    x, y = cifar_test[0][:32], cifar_test[1][:32]
    folders = train_experiment(_settings(amp="bf16", epochs=1, burn_in=0, n_train=32), experiment_runs("main")[:1],
                               [0], str(tmp_path), None, torch.device("cpu"), progress=False, data=(x, y))
    model, record = load_model(os.path.join(folders[0], MODEL_FILE))
    assert record["precision"] == "bf16" and "forward" not in vars(model)
    with open(os.path.join(folders[0], "run.json")) as f:
        assert json.load(f)["settings"]["amp"] == "bf16"


def test_run_json_without_the_new_settings_still_resumes(tmp_path, cifar_test):
    x, y = cifar_test[0][:32], cifar_test[1][:32]
    settings = {**resolve("smoke", "cifar10"), "epochs": 1, "burn_in": 0, "batch_size": 32, "n_train": 32}
    spec = experiment_runs("main")[0]
    folder = train_run(settings, spec, 0, str(tmp_path), (x, y), torch.device("cpu"), progress=False)
    path = os.path.join(folder, "run.json")
    with open(path) as f:
        record = json.load(f)
    for key in ("schedule", "amp"):
        del record["settings"][key]  # as written before these settings existed
    with open(path, "w") as f:
        json.dump(record, f)
    assert train_run(settings, spec, 0, str(tmp_path), (x, y), torch.device("cpu"), progress=False) == folder
