"""The speed benchmark runs end to end and writes its JSON (no timing assertions: speed is measured, not tested)."""

import json

from benchmarks import speed


def test_speed_benchmark_writes_all_runs(data_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main(["--data-dir", data_dir, "--device", "cpu", "--model", "tiny", "--n", "64", "--batch-size",
                       "32", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"config", "runs", "ratios", "paper_table9", "memory_source", "markdown"}
    assert set(report["runs"]) == set(speed.RUNS)
    for name, run in report["runs"].items():
        assert len(run["warmup_seconds"]) == 1 and len(run["epoch_seconds"]) == 1, name
        assert all(t > 0 for t in run["warmup_seconds"] + run["epoch_seconds"]), name
        assert run["median_epoch_seconds"] > 0 and run["peak_memory_mib"] >= 0, name
    assert len(report["runs"]["part_s10"]["cam_pass_seconds"]) == 2
    assert set(report["ratios"]) == set(speed.RATIOS)
    assert all(r["value"] > 0 for r in report["ratios"].values())
    assert report["paper_table9"]["part/at"] == 1.76
    assert report["config"]["n"] == 64 and report["config"]["model"] == "tiny"
    printed = capsys.readouterr().out
    assert "| ratio of median epochs | wall | CPU time |" in printed and "PART (s=1) / AT" in printed


def test_cam_comparison_equals_pytorch_grad_cam_on_a_cnn_and_a_vit(cifar_batch):
    """The speed benchmark's CAM comparison gives pytorch-grad-cam the ViT's token reshape (else its maps of a
    token layer are wrong), so both architectures agree to float precision."""
    import torch

    from benchmarks.models import CAM_LAYERS, build_model

    images = cifar_batch[0][:8]
    for name in ("tiny", "vit-tiny-test"):
        torch.manual_seed(0)
        result = speed.cam_comparison(build_model(name, 10), images, torch.device("cpu"), CAM_LAYERS[name],
                                      repeats=1)
        assert result["shape"] == [8, 32, 32] and result["maps_equal_1e-4"], (name, result["max_abs_difference"])
