"""The main job (``python -m benchmarks demo``) end to end on a few real images, and its offline error."""

import json

import pytest
import torch
import torchvision

from benchmarks.__main__ import main
from benchmarks.data import load_cifar10
from benchmarks.models import pretrained_resnet18

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_consistent_figures(data_dir, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--data-dir", data_dir, "--n", "12", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "demo.json").read_text())
    # Clean accuracy equals an independent evaluation of the same model on the same images.
    images, labels = load_cifar10(data_dir, n=12, download=False)
    with torch.no_grad():
        expected = (pretrained_resnet18()(images).argmax(1) == labels).float().mean().item()
    assert report["clean_accuracy"] == pytest.approx(expected)
    assert set(report["attacks"]) == {"pgd", "pixel_ag", "mma", "pixel_ag_adaptive"}
    for name, attack in report["attacks"].items():
        assert 0 <= attack["robust_accuracy"] <= report["clean_accuracy"], name
        assert attack["seconds"] > 0
    assert 0 < report["attacks"]["pixel_ag"]["important_fraction"] < 1
    assert report["attacks"]["pixel_ag_adaptive"]["params"]["eps"] == pytest.approx(12 / 255)
    assert (out / "demo.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "PGD-2" in (out / "demo.md").read_text()


def test_offline_without_data_names_the_folder(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data-dir", str(empty), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "cifar-10-batches-py" in error and str(empty) in error and "Traceback" not in error
