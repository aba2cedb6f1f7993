"""The command line end to end on a tiny smoke run: train AT and PART, evaluate, compare, draw; then resume."""

import json
import os

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.train import load_model

ATTACKS = ["natural", "pgd-3", "aa", "trust", "cifar10c-1"]


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    args = ["run", "--data-dir", data_dir, "--out", str(out), "--epochs", "2", "--n-train", "256", "--n", "24",
            "--batch-size", "12", "--attacks", *ATTACKS, "--no-progress"]
    return out, args


def test_run_trains_evaluates_compares_and_draws(smoke_run, capsys):
    out, args = smoke_run
    assert main(args) == 0
    printed = capsys.readouterr().out
    runs = sorted(os.listdir(out / "runs"))
    assert runs == ["cifar10-tiny-at-seed0", "cifar10-tiny-part-s-1-seed0"]
    for name in runs:
        folder = out / "runs" / name
        model, record = load_model(str(folder / "model.pt"))
        assert record["arch"] == "tiny" and record["num_classes"] == 10
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert [e["epoch"] for e in log] == [1, 2]
        stored = json.loads((folder / "eval.json").read_text())
        assert set(ATTACKS) <= set(stored["results"]) and stored["partial"] == {}
        assert stored["results"]["natural"]["n"] == 24 and stored["results"]["pgd-last-3"]["n"] == 24
        assert stored["results"]["pgd-3"]["correct"] <= stored["results"]["pgd-last-3"]["correct"]
        assert stored["results"]["aa"]["accuracy"] <= stored["results"]["natural"]["accuracy"]
        assert len(stored["results"]["cifar10c-1"]["per_corruption"]) == 19
        checks = {c["check"] for c in stored["results"]["trust"]["checks"]}
        assert checks == {"one_step", "transfer", "unbounded", "random_sampling", "increasing_eps"}
    part_log = [json.loads(line) for line in (out / "runs" / runs[1] / "log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in part_log] == ["burn-in", "part"]  # the burn-in is cut to epochs - 1
    # each model is the other's surrogate for the transfer check
    at_eval = json.loads((out / "runs" / runs[0] / "eval.json").read_text())
    assert at_eval["config"]["surrogate"] == "PART (s=1)"
    for name in ("comparison.md", "comparison.json", "comparison.csv", "tradeoff.png", "cams.png", "cifar10c.png"):
        assert (out / "report" / name).stat().st_size > 0, name
    table = (out / "report" / "comparison.md").read_text()
    assert table in printed  # the comparison is printed as written
    assert "| AT | 1 |" in table and "| PART (s=1) | 1 |" in table


def test_run_again_redoes_nothing(smoke_run, capsys, monkeypatch):
    out, args = smoke_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.pt")}
    import benchmarks.evaluate as evaluate

    monkeypatch.setattr(evaluate, "build_attack", lambda *a: pytest.fail("an attack was run again"))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count(": done (") == 2
    assert printed.count("(saved)") == 2 * len(ATTACKS)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.pt")} == before


def test_evaluate_checkpoints_by_path(smoke_run, data_dir, tmp_path, capsys):
    """Loose checkpoints: results under --out, one folder per checkpoint (two in one folder never share results),
    and compare finds them."""
    out, _ = smoke_run
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, run in (("a.pt", "cifar10-tiny-at-seed0"), ("b.pt", "cifar10-tiny-part-s-1-seed0")):
        (mine / name).write_bytes((out / "runs" / run / "model.pt").read_bytes())
    results = tmp_path / "results"
    assert main(["evaluate", "--data-dir", data_dir, "--out", str(results), "--checkpoint", str(mine / "a.pt"),
                 str(mine / "b.pt"), "--n", "16", "--attacks", "natural", "--no-progress", "--surrogate", "none"]) == 0
    folders = sorted((results / "checkpoints").iterdir())
    assert [f.name.split("-")[0] for f in folders] == ["a", "b"] and not list(mine.glob("*.json"))
    from benchmarks.data import load_cifar10

    x, y = load_cifar10(data_dir, n=16, download=False)
    for folder, name in zip(folders, ("a.pt", "b.pt")):
        model, _ = load_model(str(mine / name))
        with torch.no_grad():
            expected = int((model(x).argmax(1) == y).sum())
        assert json.loads((folder / "eval.json").read_text())["results"]["natural"]["correct"] == expected
    capsys.readouterr()
    assert main(["compare", "--out", str(results)]) == 0
    table = capsys.readouterr().out
    assert "| AT | 1 |" in table and "| PART (s=1) | 1 |" in table


def _text(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: _text(d / "notes.pt", "not a checkpoint"), "not a readable weights-only torch file"),
    (lambda d: d, "is a folder"),
    (lambda d: d / "missing.pt", "no such file"),
    (lambda d: (torch.save({"model": {}, "epoch": 1}, d / "last.pt"), d / "last.pt")[1], "trainer checkpoint"),
    (lambda d: (torch.save(torch.nn.Linear(2, 2).state_dict(), d / "sd.pt"), d / "sd.pt")[1], "bare state_dict"),
    (lambda d: (torch.save({"arch": "resnet18", "num_classes": 10, "state_dict": torch.nn.Linear(2, 2).state_dict()},
                           d / "other.pt"), d / "other.pt")[1], "do not fit a resnet18"),
    (lambda d: (_text(d / "half.pt", ""), d / "half.pt")[1], "not a readable"),
])
def test_a_bad_checkpoint_is_one_line(make, message, data_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--data-dir", data_dir, "--out", str(tmp_path / "out"), "--checkpoint", str(path),
              "--attacks", "natural", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert "weights_only=False" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [(["--n", "20000"], "has only 10000"),
                                            (["--n", "8", "--attacks", "aa@9"], "more images")])
def test_more_images_than_there_are_is_refused(smoke_run, extra, message, data_dir, tmp_path, capsys):
    out, _ = smoke_run
    checkpoint = out / "runs" / "cifar10-tiny-at-seed0" / "model.pt"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--data-dir", data_dir, "--out", str(tmp_path), "--attacks", "natural", "--checkpoint",
              str(checkpoint), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--out", "{tmp}", "--attacks", "natural"], "no trained cifar10 runs"),
    (["evaluate", "--out", "{tmp}", "--attacks", "pgd"], "attacks"),
    (["run", "--out", "{tmp}", "--attacks", "natural", "pgd"], "attacks"),
    (["compare", "--out", "{tmp}"], "no evaluations"),
    (["train", "--out", "{tmp}", "--device", "cuda"], "cuda"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, data_dir, tmp_path, capsys, monkeypatch):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] != "compare":
        argv += ["--data-dir", data_dir]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same error on a machine with a GPU
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_evaluate_a_zoo_model_beside_ours(smoke_run, data_dir, tmp_path, capsys, monkeypatch):
    """A RobustBench model by name, read offline from the model folder, lands in the same comparison table."""
    out, _ = smoke_run
    from benchmarks.robustbench_compat import import_robustbench

    import_robustbench()
    import robustbench.utils
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.model_zoo.models import model_dicts

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", lambda *a, **k: pytest.fail("download"))
    torch.manual_seed(0)
    zoo_model = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Wong2020Fast"]["model"]().eval()
    path = tmp_path / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    path.parent.mkdir(parents=True)
    torch.save(zoo_model.state_dict(), path)
    assert main(["evaluate", "--data-dir", data_dir, "--out", str(out), "--zoo", "Wong2020Fast",
                 "--model-dir", str(tmp_path / "models"), "--n", "8", "--attacks", "natural", "pgd-2",
                 "--no-progress"]) == 0
    stored = json.loads((out / "zoo" / "cifar10-Linf-Wong2020Fast" / "eval.json").read_text())
    from benchmarks.data import load_cifar10

    x, y = load_cifar10(data_dir, n=8, download=False)
    with torch.no_grad():
        assert stored["results"]["natural"]["correct"] == int((zoo_model(x).argmax(1) == y).sum())
    capsys.readouterr()
    assert main(["compare", "--out", str(out)]) == 0
    assert "| Wong2020Fast (RobustBench) | 1 |" in capsys.readouterr().out


def test_train_and_evaluate_on_the_tiny_imagenet_sample(data_dir, tmp_path):
    """TinyImageNet-200 in its original layout (the real sample: 5 train images a class, 500 val images)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "tiny-imagenet-200").symlink_to(os.path.join(data_dir, "tiny-imagenet-200-sample"))
    out = tmp_path / "out"
    assert main(["train", "--dataset", "tiny-imagenet", "--data-dir", str(root), "--out", str(out), "--epochs", "1",
                 "--n-train", "64", "--no-progress"]) == 0
    folder = out / "runs" / "tiny-imagenet-tiny-at-seed0"
    settings = json.loads((folder / "run.json").read_text())["settings"]
    assert (settings["num_classes"], settings["lr"], settings["augment"]) == (200, 0.05, True)
    model, _ = load_model(str(folder / "model.pt"))
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 200)
    assert main(["evaluate", "--dataset", "tiny-imagenet", "--data-dir", str(root), "--out", str(out), "--n", "10",
                 "--attacks", "natural", "--no-progress"]) == 0
    assert json.loads((folder / "eval.json").read_text())["results"]["natural"]["n"] == 10


def test_train_the_standard_experiment(data_dir, tmp_path, capsys):
    """Method "standard" from the command line: natural training through the same pipeline, no adversarial accuracy
    in its log (None, printed as "-")."""
    out = tmp_path / "out"
    assert main(["train", "--experiment", "standard", "--data-dir", data_dir, "--out", str(out), "--epochs", "1",
                 "--n-train", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "adversarial -," in printed
    folder = out / "runs" / "cifar10-tiny-standard-seed0"
    assert json.loads((folder / "run.json").read_text())["spec"]["method"] == "standard"
    (record,) = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert record["method"] == "standard" and record["adversarial_acc"] is None and record["mean_budget"] is None
    assert 0 <= record["natural_acc"] <= 1
    model, saved = load_model(str(folder / "model.pt"))
    assert saved["method"] == "standard" and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_train_a_vit_from_the_command_line(data_dir, tmp_path, capsys):
    """--model picks the architecture: PART on the CIFAR-sized ViT (its token CAMs), in a folder of its own."""
    out = tmp_path / "out"
    assert main(["train", "--experiment", "main", "--model", "vit-tiny-test", "--data-dir", data_dir, "--out",
                 str(out), "--epochs", "2", "--n-train", "64", "--no-progress"]) == 0
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert folders == ["cifar10-vit-tiny-test-at-seed0", "cifar10-vit-tiny-test-part-s-1-seed0"]
    part = out / "runs" / "cifar10-vit-tiny-test-part-s-1-seed0"
    last = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()][-1]
    # float32 means: 8/255 to within 1e-6 (a ViT at this size mostly has empty CAMs, i.e. eps everywhere)
    assert last["phase"] == "part" and 7 / 255 - 1e-6 <= last["mean_budget"] <= 8 / 255 + 1e-6
    model, saved = load_model(str(part / "model.pt"))
    assert type(model).__name__ == "VisionTransformer" and saved["method"] == "part"
    with pytest.raises(SystemExit):  # not a model name: argparse lists the choices
        main(["train", "--model", "vit", "--data-dir", data_dir, "--out", str(out)])
    assert "invalid choice: 'vit'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # before any data is read or any folder made
        main(["train", "--model", "vit-cifar", "--dataset", "tiny-imagenet", "--data-dir", data_dir, "--out",
              str(tmp_path / "other")])
    assert exit_.value.code == 2 and not (tmp_path / "other").exists()
    assert "--model vit-cifar takes 32x32 images; tiny-imagenet has 64x64" in capsys.readouterr().err
