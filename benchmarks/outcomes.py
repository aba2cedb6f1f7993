"""Per-image outcomes: which evaluated images survived an attack, stored compactly in ``eval.json``.

An evaluation of ``n`` images under one attack is a boolean vector: ``True`` where the model still classified
image ``i`` (the i-th of the evaluated test subset) correctly after the attack. It is what paired statistics
(:mod:`benchmarks.statistics`), the worst case over attacks and the attack-agreement table are computed from, and
what a resumed evaluation appends to.

In JSON it is ``{"n": n, "bits": "<base64>"}``: the vector packed 8 images a byte (``numpy.packbits``, little bit
order: image ``i`` is bit ``i % 8`` of byte ``i // 8``), base64-encoded. 10,000 images take 1,668 characters.
"""

import base64

import numpy as np
import torch


def pack(survived):
    """A boolean vector (tensor, array or list) -> ``{"n": n, "bits": str}``."""
    if isinstance(survived, torch.Tensor):
        survived = survived.detach().cpu().numpy()
    survived = np.asarray(survived)
    if survived.ndim != 1 or survived.dtype != np.bool_:
        raise ValueError(f"survived must be a 1-D boolean vector, got dtype {survived.dtype} and shape "
                         f"{survived.shape}")
    bits = np.packbits(survived, bitorder="little")
    return {"n": int(survived.size), "bits": base64.b64encode(bits.tobytes()).decode("ascii")}


def unpack(stored):
    """``{"n": n, "bits": str}`` -> boolean numpy vector of length ``n``.

    :raises ValueError: when ``stored`` is not of that form (a truncated or hand-edited file).
    """
    if not isinstance(stored, dict) or not isinstance(stored.get("n"), int) or not isinstance(stored.get("bits"), str):
        raise ValueError(f"per-image outcomes must be {{'n': int, 'bits': base64 str}}, got {str(stored)[:80]}")
    n = stored["n"]
    try:
        raw = np.frombuffer(base64.b64decode(stored["bits"], validate=True), dtype=np.uint8)
    except ValueError as error:
        raise ValueError(f"per-image outcomes: bits are not base64 ({error})") from None
    if n < 0 or raw.size != (n + 7) // 8:
        raise ValueError(f"per-image outcomes: {raw.size} bytes cannot hold n = {n} images")
    return np.unpackbits(raw, bitorder="little", count=n).astype(bool)


def concat(first, second):
    """Outcomes of two consecutive image ranges as one."""
    return pack(np.concatenate([unpack(first), unpack(second)]))
