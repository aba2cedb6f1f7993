"""Atomic checkpoints and the RNG state that makes a resumed run continue exactly."""

import os
import random
import tempfile

import numpy as np
import torch


def atomic_write(path, write, binary=True):
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it to ``path``: a kill never
    leaves half a file, and readers see the old or the new version, nothing between."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary file, not for the result
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_save(obj, path):
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text, path):
    return atomic_write(path, lambda f: f.write(text), binary=False)


def load(path, device="cpu"):
    """Load a checkpoint with ``weights_only=True``."""
    return torch.load(path, map_location=device, weights_only=True)


def rng_state(generator=None, extra=()):
    """Every RNG the training loop draws from: torch (CPU and CUDA), Python's, numpy's global one, the trainer's own
    generator and any ``extra`` torch generators (e.g. a DataLoader's ``generator=``).

    Everything is stored as tensors and plain Python values, so the checkpoint loads with ``weights_only=True``.
    """
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    state["extra"] = [g.get_state() for g in extra]
    return state


def set_rng_state(state, generator=None, extra=()):
    """Restore what :func:`rng_state` saved. RNG states go back to the CPU first: a checkpoint loaded with
    ``map_location="cuda"`` has moved them to the GPU, where ``set_rng_state`` refuses them."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        _set_numpy_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
    saved = state.get("extra", [])
    if len(saved) != len(extra):
        raise ValueError(f"the checkpoint holds {len(saved)} data-loader generator state(s) but this run has "
                         f"{len(extra)}: resume with a DataLoader built the same way")
    for g, s in zip(extra, saved):
        g.set_state(s.cpu())


def _numpy_state():
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state):
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))
