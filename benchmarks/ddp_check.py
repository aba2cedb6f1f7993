"""Data-parallel PART training under torchrun: each rank trains on its shard, with its own masks.

    torchrun --nproc_per_node=2 -m benchmarks.ddp_check --data-dir ../shared/data --out results/ddp

Initialises the process group from torchrun's environment (gloo on CPU, nccl on CUDA), trains a tiny CNN with
PART (s = 2, 1 burn-in epoch) on the first --n CIFAR-10 training images, and writes each rank's final weights to
``--out/weights.rank<r>.pt``; rank 0 also writes the checkpoint and the JSON-lines log. The weights of all ranks
must be identical: that is what DistributedDataParallel guarantees and what the tests check.
"""

import argparse
import os

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=256, help="first N CIFAR-10 training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--method", default="part")
    parser.add_argument("--mask-refresh", type=int, default=2)
    args = parser.parse_args(argv)

    from art.estimators.classification import PyTorchClassifier

    from art_part.trainer import AdversarialTrainerPARTPyTorch

    from .data import load_cifar10
    from .models import build_model

    cuda = torch.cuda.is_available()
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = build_model("tiny", num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    classifier = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), (3, 32, 32), 10, optimizer=optimizer,
                                   clip_values=(0, 1), device_type="gpu" if cuda else "cpu")
    x, y = load_cifar10(args.data_dir, train=True, n=args.samples, download=False)
    trainer = AdversarialTrainerPARTPyTorch(classifier, method=args.method, burn_in=1, mask_refresh=args.mask_refresh,
                                            steps=3, checkpoint_dir=args.out, verbose=rank == 0)
    trainer.fit(x.numpy(), y.numpy(), batch_size=32, nb_epochs=args.epochs, overwrite=True)  # a fresh check each time
    torch.save(model.state_dict(), os.path.join(args.out, f"weights.rank{rank}.pt"))
    if rank == 0:
        print(trainer.history[-1])
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
