"""The device protocol at toy scale on the CPU: pack, verify, the shell script end to end, the deadline.

A GPU session only has to run ``bash benchmarks/device_run.sh``; everything it does is run here first with
``--device cpu --toy`` (tiny CNN, 128 training and 128 test images, 2 epochs, a toy suite).
"""

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import load_cifar10
from benchmarks.device import pack as device_pack
from benchmarks.device.pack import PackError, assemble_split, from_mosaic, pack, read_manifest, slim_wheel, to_mosaic

ROOT = Path(__file__).resolve().parent.parent


def make_wheel(path, name, files):
    """A minimal valid pure-Python wheel holding ``files`` (path -> bytes)."""
    info = f"{name}-0.1.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, data in files.items():
            z.writestr(f, data)
        z.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture(scope="module")
def toy_pack(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("device")
    wheels = root / "whl"
    wheels.mkdir()
    make_wheel(wheels / "parttoywheel-0.1-py3-none-any.whl", "parttoywheel",
               {"parttoywheel/__init__.py": b"VALUE = 42\n"})
    manifest = pack(data_dir, str(root / "pack"), n_train=128, n_test=128, wheel_dir=str(wheels), root=str(ROOT),
                    per_part=100, method=0, progress=False)
    return root, manifest


def test_mosaic_round_trip_keeps_every_pixel():
    images = np.random.default_rng(0).integers(0, 256, (37, 3, 32, 32), dtype=np.uint8)
    mosaic = to_mosaic(images)
    assert mosaic.shape == (320, 3200, 3)
    assert np.array_equal(from_mosaic(mosaic, 37), images)
    assert np.array_equal(from_mosaic(device_pack.decode_webp(device_pack.encode_webp(mosaic, method=0)), 37), images)


def test_pack_assembles_to_the_cifar10_images_and_labels(toy_pack, data_dir):
    root, manifest = toy_pack
    dest = str(root / "pack")
    train = manifest["splits"]["train"]
    assert train["n"] == 128 and [p["count"] for p in train["parts"]] == [100, 28]
    assert all(p["bytes"] <= device_pack.PART_LIMIT_BYTES for p in train["parts"])
    assert [w["file"] for w in manifest["wheels"]] == ["parttoywheel-0.1-py3-none-any.whl"]
    assert manifest["carried_bytes"] < device_pack.LIMIT_BYTES
    for split, is_train in (("train", True), ("test", False)):
        images, labels = assemble_split(dest, split)
        x, y = load_cifar10(data_dir, train=is_train, n=128, download=False)
        assert images.dtype == np.uint8 and images.shape == (128, 3, 32, 32)
        assert np.array_equal(images, (x.numpy() * 255).round().astype(np.uint8))
        assert np.array_equal(labels, y.numpy())
    assert device_pack.verify_wheels(dest) == []


def test_an_altered_or_missing_part_stops_with_its_name(toy_pack, tmp_path):
    import shutil

    root, _ = toy_pack
    dest = tmp_path / "pack"
    shutil.copytree(root / "pack", dest)
    part = dest / "cifar10" / "test-001.webp"
    data = bytearray(part.read_bytes())
    data[-1] ^= 1
    part.write_bytes(bytes(data))
    assert assemble_split(str(dest), "train")[0].shape[0] == 128  # the other split is untouched
    with pytest.raises(PackError, match="test-001.webp: sha256"):
        assemble_split(str(dest), "test")
    part.unlink()
    with pytest.raises(PackError, match="test-001.webp: missing"):
        assemble_split(str(dest), "test")
    (dest / "manifest.json").unlink()
    with pytest.raises(PackError, match="no manifest"):
        read_manifest(str(dest))


def test_slim_wheel_drops_the_checkpoint_and_its_record_line(tmp_path):
    source = make_wheel(tmp_path / "pkg-0.1-py3-none-any.whl", "pkg",
                        {"pkg/__init__.py": b"", "pkg/examples/model_test.pt": b"x" * 1000})
    slim = tmp_path / "slim" / source.name
    slim.parent.mkdir()
    slim_wheel(source, slim, ["pkg/examples/model_test.pt"])
    with zipfile.ZipFile(slim) as z:
        names = z.namelist()
        record = z.read("pkg-0.1.dist-info/RECORD").decode()
    assert "pkg/examples/model_test.pt" not in names and "pkg/__init__.py" in names
    assert "model_test.pt" not in record and "pkg/__init__.py" in record


def test_device_run_sh_runs_every_stage_at_toy_scale(toy_pack, tmp_path):
    root, _ = toy_pack
    out, site, work = tmp_path / "out", tmp_path / "site", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "PART_DEVICE_PACK": str(root / "pack"), "PART_DEVICE_SITE": str(site)}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_run.sh"), "--device", "cpu", "--toy",
                             "--work", str(work), "--threads", "1", "--budget", "900", "--speed-epochs", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and {"log.txt", "summary.json", "summary.md", "results.tar.gz"} <= set(files), files
    assert (site / "parttoywheel" / "__init__.py").exists()  # the carried wheels were installed
    log = (out / "log.txt").read_text()
    assert "installed 1 wheels" in log and "[device] done in" in log
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["stages"]}
    for name in ("environment", "data", "calibrate", "train-at", "train-part", "cam", "eval natural", "eval pgd-2",
                 "eval pgd-last-2", "report"):
        assert status.get(name) == "done", (name, summary["stages"])
    assert any(name.startswith("speed") and s == "done" for name, s in status.items()), status
    assert summary["info"]["data"]["train_images"] == 128 and summary["info"]["settings"]["schedule"] == "onecycle"
    assert set(summary["training_logs"]) == {"AT", "PART (s=1)"}
    assert [r["phase"] for r in summary["training_logs"]["PART (s=1)"]] == ["burn-in", "part"]
    assert summary["cam"]["max_abs_difference"] < 1e-4
    assert any(t["what"].startswith("whole command") for t in summary["targets"])
    assert summary["speed"]["ratios"] and "at" in summary["speed"]["runs"]
    assert "## Stages" in (out / "summary.md").read_text()
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "results/report/comparison.md" in names and "results/speed.json" in names
    assert any(n.endswith("eval.json") for n in names) and not any(n.endswith(".pt") for n in names)
    evaluated = json.loads((work / "results" / "runs" / "cifar10-tiny-at-seed0" / "eval.json").read_text())
    assert {"natural", "pgd-2", "pgd-last-2"} <= set(evaluated["results"])


def test_stages_that_would_pass_the_deadline_are_skipped_and_say_so(toy_pack, tmp_path):
    from benchmarks.device.__main__ import main

    root, _ = toy_pack
    out = tmp_path / "out"
    assert main(["run", "--pack", str(root / "pack"), "--out", str(out), "--work", str(tmp_path / "work"),
                 "--device", "cpu", "--toy", "--budget", "20"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] and all(s["status"] == "skipped" for s in summary["stages"])
    assert "before the deadline" in summary["stages"][0]["detail"]
    assert "| skipped |" in (out / "summary.md").read_text()


def test_pack_command_prints_the_device_call(toy_pack, tmp_path, data_dir, capsys):
    from benchmarks.device.__main__ import main

    root, _ = toy_pack
    dest = tmp_path / "pack"
    assert main(["pack", "--data-dir", data_dir, "--dest", str(dest), "--n-train", "100", "--n-test", "100",
                 "--wheel-dir", str(root / "whl"), "--method", "0"]) == 0
    printed = capsys.readouterr().out
    assert f'run(command="bash benchmarks/device_run.sh", carry=["{dest}"], timeout_s=600)' in printed
    assert "of 64 MiB" in printed
    assert main(["verify", "--dest", str(dest)]) == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
