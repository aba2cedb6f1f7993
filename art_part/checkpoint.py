"""Atomic checkpoints and the RNG state that makes a resumed run continue exactly."""

import os
import random
import stat
import tempfile
import time

import numpy as np
import torch

from torchattacks_part.checks import check_generator

try:  # POSIX: a writer holds a lock on its temporary file, so a cleanup can tell a live writer's file from a stale one
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: Where no lock tells (no fcntl, or a file system without flock), a temporary file counts as stale after this long.
UNLOCKED_STALE_AFTER = 3600.0


def temporary_prefix(path):
    """The name prefix of :func:`atomic_write`'s temporary files for ``path``: ``.<name>.tmp-``."""
    return f".{os.path.basename(path)}.tmp-"


def atomic_write(path, write, binary=True):
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it to ``path``: a kill never
    leaves half a file, and readers see the old or the new version, nothing between.

    The temporary file is named ``.<name>.tmp-<random><ext>`` after its target (``.last.pt.tmp-k2j4.pt``) and, on
    POSIX, locked (``flock``) until it is renamed, so that :func:`remove_stale_temporaries` can remove what a killed
    writer left without touching a live writer's file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temporary_prefix(path), suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            _lock(f.fileno())
            write(f)
            f.flush()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary file, not for the result
            if os.name == "posix":  # renamed while still open and locked (Windows cannot rename an open file)
                os.replace(tmp, path)
        if os.name != "posix":
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _lock(fd):
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a cleanup's probe holds it (microseconds)
        except OSError:  # a file system without flock: the age rule of remove_stale_temporaries applies
            pass


def _held(path):
    """True when a live writer holds ``path``'s lock; None when no lock can tell (then the file's age decides)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the lock taken just now
    return False


def remove_stale_temporaries(path, min_age=1.0):
    """Remove the temporary files that :func:`atomic_write` calls for ``path`` left behind (a kill mid-write).

    Only files of ``path``'s own pattern (``.<name>.tmp-*``) in its folder go, and of those only the ones no live
    writer holds: unlocked and older than ``min_age`` seconds (a writer locks its file right after creating it), or,
    where no lock can tell, older than :data:`UNLOCKED_STALE_AFTER`. Returns the removed paths.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = temporary_prefix(path)
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in sorted(entries):
        if not entry.startswith(prefix):
            continue
        full = os.path.join(folder, entry)
        try:
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                continue
            age = time.time() - info.st_mtime
            held = _held(full)
            if age < min_age or held or (held is None and age < UNLOCKED_STALE_AFTER):
                continue
            os.remove(full)
        except FileNotFoundError:
            continue
        removed.append(full)
    return removed


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
    check_generator("generator", generator)
    for i, g in enumerate(extra):
        if not isinstance(g, torch.Generator):
            raise TypeError(f"extra[{i}] must be a torch.Generator (a data-loader generator), got {type(g).__name__}")
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
    check_generator("generator", generator)
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
