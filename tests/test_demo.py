"""The main job (``python -m benchmarks demo``) end to end on a few real images, and its usage errors."""

import json

import matplotlib.image
import pytest
import torch
import torchvision

from benchmarks.__main__ import main
from benchmarks.data import load_cifar10
from benchmarks.demo import attack_specs, run_attack
from torchattacks_part import PixelAG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 12  # with --batch-size 8: batches of 8 and 4 (MMA: 2 images per batch), so results accumulate over batches


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny batches, one thread


def test_demo_writes_consistent_figures(data_dir, tmp_path, capsys, resnet18):
    out = tmp_path / "demo"
    argv = ["demo", "--data-dir", data_dir, "--n", str(N), "--batch-size", "8", "--steps", "2", "--out", str(out),
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "demo.json").read_text())

    # Clean accuracy equals an independent evaluation of the same model on the same images.
    images, labels = load_cifar10(data_dir, n=N, download=False)
    with torch.no_grad():
        correct = int((resnet18(images).argmax(1) == labels).sum())
    assert report["clean_correct"] == correct
    assert report["clean_accuracy"] == pytest.approx(correct / N)

    assert report["config"]["n"] == N and report["config"]["steps"] == 2 and report["device"] == "cpu"
    assert report["torch_version"] == torch.__version__ and report["date"]
    assert report["cpu_count"] >= 1 and report["load_average_start"] >= 0 and report["load_average_end"] >= 0
    assert list(report["attacks"]) == ["pgd", "pixel_ag", "mma", "pixel_ag_adaptive"]
    for name, attack in report["attacks"].items():
        assert 0 <= attack["robust_accuracy"] <= 1, name
        assert attack["robust_accuracy"] == pytest.approx(attack["correct"] / N), name
        assert attack["seconds"] > 0, name
    assert report["attacks"]["pgd"]["robust_accuracy"] <= report["clean_accuracy"]
    assert report["attacks"]["mma"]["images_per_batch"] == 8 // 3
    for name in ("pixel_ag", "pixel_ag_adaptive"):
        attack = report["attacks"][name]
        assert 0 < attack["important_fraction"] < 1, name
        assert isinstance(attack["degenerate_cams"], int) and 0 <= attack["degenerate_cams"] <= N, name
    assert report["attacks"]["pgd"]["important_fraction"] is None
    # The fraction accumulated over batches equals one CAM budget of all N images (each image weighs the same).
    for name, attack in (("pixel_ag", PixelAG(resnet18)), ("pixel_ag_adaptive", PixelAG.adaptive(resnet18))):
        budget = attack.budget(images)
        assert report["attacks"][name]["important_fraction"] == pytest.approx(
            float((budget == attack.eps).float().mean()), abs=1e-6), name
        assert report["attacks"][name]["degenerate_cams"] == int(attack.last_degenerate), name
    assert report["attacks"]["pixel_ag_adaptive"]["params"]["eps"] == pytest.approx(12 / 255)
    assert report["attacks"]["pixel_ag_adaptive"]["params"]["eps_low"] == pytest.approx(8 / 255)

    png = out / "demo.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(png)  # decodes the whole file
    assert pixels.ndim == 3 and pixels.shape[0] > 400 and pixels.shape[1] > 800
    assert pixels[..., :3].std() > 0.05  # not blank
    markdown = (out / "demo.md").read_text()
    assert "PGD-2" in markdown and "| Pixel-AG-2 adaptive | 12/255 / 8/255 |" in markdown

    printed = capsys.readouterr().out
    assert f"{100 * correct / N:.1f}%" in printed and "not robust" in printed
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporary files


def test_each_attack_is_seeded(cifar_batch, resnet18):
    """Two runs of an attack from the same seed give the same adversarial images; another seed does not."""
    images, labels = cifar_batch[0][:4], cifar_batch[1][:4]
    spec = attack_specs(resnet18, steps=1)[0]
    assert spec["key"] == "pgd"

    def adversarials(seed):
        _, kept = run_attack(spec["attack"], "PGD-1", images, labels, 4, torch.device("cpu"), seed, keep=4,
                             reports_budget=False, progress=False)
        return kept

    first = adversarials(0)
    assert torch.equal(first, adversarials(0))
    assert not torch.equal(first, adversarials(1))


def test_offline_without_data_names_the_folder(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data-dir", str(empty), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "cifar-10-batches-py" in error and str(empty) in error and "network is unreachable" in error
    assert "Traceback" not in error and error.count("\n") == 1  # one line
    assert not (tmp_path / "out").exists()


def test_cuda_asked_for_but_missing_is_a_usage_error(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data-dir", data_dir, "--device", "cuda", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--device cuda" in error and "Traceback" not in error


@pytest.mark.parametrize("bad", [["--n", "0"], ["--steps", "-1"], ["--batch-size", "x"], ["--device", "tpu"]])
def test_bad_arguments_exit_2(data_dir, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data-dir", data_dir, "--out", str(tmp_path / "out"), *bad])
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
