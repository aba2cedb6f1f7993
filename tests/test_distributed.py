"""Data-parallel training launched by torchrun: 2 CPU processes with the gloo backend."""

import json
import os
import subprocess
import sys

import torch


def test_two_ranks_train_on_their_shards_and_end_identical(data_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "benchmarks.ddp_check", "--data-dir", data_dir, "--out", str(out), "--samples", "256"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]

    rank0 = torch.load(out / "weights.rank0.pt", weights_only=True)
    rank1 = torch.load(out / "weights.rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["world_size"] == 2
    for name in rank0:  # rank 0's checkpoint holds the final, shared weights, and training moved them
        assert torch.equal(checkpoint["model"][name], rank0[name]), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["burn-in", "part"]
    assert all(r["loss"] == r["loss"] for r in records)  # finite, not NaN

    # Each rank cached the masks of its own 128 samples (s = 2): disjoint shards that cover the data.
    own0 = ~checkpoint["masks"]["masks"].flatten(1).all(dim=1)
    own1 = ~torch.load(out / "last.rank1.pt", weights_only=True)["masks"]["masks"].flatten(1).all(dim=1)
    assert not (own0 & own1).any()
    assert 100 < own0.sum() <= 128 and 100 < own1.sum() <= 128
