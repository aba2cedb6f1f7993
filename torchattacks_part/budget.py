"""From class activation maps to a per-entry perturbation budget (paper section 3.2, Algorithm 1).

Pixels a CAM marks as important keep the full budget ``eps``; the rest get ``eps_low``. Three rules decide which
pixels are important:

``"cam"``     the paper's rule: a pixel is important when its map value exceeds that image's mean + 1 std
              (the paper's "scaled weight omega > 1"). All channels of a pixel share its budget: (B, 1, H, W).
``"jet"``     the authors' released code: the map is squared, coloured with matplotlib's ``jet`` colormap and
              each of the 3 colour values is compared with mean + 1 std over all 3 x H x W values, so the budget is
              per pixel *and* channel, (B, 3, H, W). Because of the colormap the CAM's peak usually lands in the
              low band. Use it only to reproduce the published numbers. Differences we keep on purpose: the map
              is the bilinear one :func:`~torchattacks_part.cam.cam_maps` returns, not torchcam's bicubic
              resize, and colours stay float rather than uint8.
``"random"``  an ablation (does the CAM matter?): the same number of important pixels per image as ``"cam"``
              would pick, drawn uniformly at random.

A degenerate map (NaN, inf, all zero or constant) marks nothing: that image gets ``eps`` everywhere, i.e. plain
PGD, never NaN. The released code turned such maps into ``eps_low`` everywhere through 0/0; we count them instead
(:func:`degenerate_maps`) so callers can report how often it happens.
"""

import torch

from .checks import check_budget_params, check_choice

RULES = ("cam", "jet", "random")
QUARTERS = ("ul", "ur", "bl", "br")


def degenerate_maps(cams):
    """Boolean (B,): maps with a non-finite value, or constant up to float noise (all zero included)."""
    flat = cams.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    safe = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    hi, lo = safe.amax(dim=1), safe.amin(dim=1)
    constant = (hi - lo) <= 1e-6 * torch.maximum(hi.abs(), lo.abs())
    return ~finite | constant


def _above_mean_plus_std(values):
    """Entries above their image's mean + 1 std (population std), over all non-batch dimensions."""
    flat = values.flatten(1)
    threshold = flat.mean(dim=1) + flat.std(dim=1, correction=0)
    return values > threshold.view(-1, *([1] * (values.dim() - 1)))


_JET_LUT = {}


def _jet_lut(device, dtype):
    """matplotlib's 256-entry ``jet`` table (RGB), cached per device."""
    key = (device, dtype)
    if key not in _JET_LUT:
        import matplotlib
        import numpy as np

        table = matplotlib.colormaps["jet"](np.arange(256))[:, :3]
        _JET_LUT[key] = torch.as_tensor(table, device=device, dtype=dtype)
    return _JET_LUT[key]


def jet_colours(cams):
    """(B, H, W) maps in [0, 1] -> (B, 3, H, W) ``jet`` colours of the squared map, indexed as matplotlib does."""
    index = (cams.clamp(0, 1).square() * 256).long().clamp(max=255)
    return _jet_lut(cams.device, cams.dtype)[index].permute(0, 3, 1, 2)


def important_pixels(cams, rule="cam", generator=None):
    """Boolean mask of important entries: (B, 1, H, W) for "cam"/"random", (B, 3, H, W) for "jet".

    Degenerate maps mark every entry important (full eps).
    """
    check_choice("rule", rule, RULES)
    if not isinstance(cams, torch.Tensor) or cams.dim() != 3:
        got = tuple(cams.shape) if isinstance(cams, torch.Tensor) else type(cams).__name__
        raise ValueError(f"cams must be a tensor of shape (B, H, W), got {got}")
    degenerate = degenerate_maps(cams).view(-1, 1, 1, 1)
    clean = torch.nan_to_num(cams.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if rule == "jet":
        return _above_mean_plus_std(jet_colours(clean)) | degenerate
    important = _above_mean_plus_std(clean)[:, None] | degenerate
    if rule == "random":
        count = important.flatten(1).sum(dim=1, keepdim=True)
        device = cams.device if generator is None else generator.device
        scores = torch.rand(important.flatten(1).shape, generator=generator, device=device).to(cams.device)
        rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each pixel in a random order
        important = (rank < count).view_as(important)
    return important


def budget_map(cams, eps, eps_low, rule="cam", generator=None):
    """Per-entry L-inf budgets from class activation maps.

    :param cams: tensor (B, H, W), e.g. from :func:`~torchattacks_part.cam.cam_maps`.
    :param eps: budget of important entries.
    :param eps_low: budget of the others, ``0 <= eps_low <= eps``.
    :param rule: ``"cam"`` (paper), ``"jet"`` (released code) or ``"random"`` (ablation); see the module docstring.
    :param generator: optional ``torch.Generator`` for the ``"random"`` rule.
    :return: tensor (B, 1, H, W) (or (B, 3, H, W) for ``"jet"``) of ``eps`` / ``eps_low``, on the maps' device,
        broadcastable to the images.
    """
    eps, eps_low, _ = check_budget_params(eps, eps_low)
    dtype = cams.dtype if cams.is_floating_point() else torch.float32
    return budget_from_mask(important_pixels(cams, rule, generator), eps, eps_low, dtype)


def budget_from_mask(important, eps, eps_low, dtype=torch.float32):
    """``eps`` where ``important`` is True, ``eps_low`` elsewhere (Algorithm 1 of the paper), in ``dtype``."""
    high = torch.tensor(eps, dtype=dtype, device=important.device)
    low = torch.tensor(eps_low, dtype=dtype, device=important.device)
    return torch.where(important, high, low)


def quadrant_mask(height, width, low_quarter, device=None):
    """The fixed mask of the paper's proof-of-concept (Figure 1): every pixel is important except one quarter.

    :param height: image height; :param width: image width (the quarters split both in half).
    :param low_quarter: the quarter that gets ``eps_low``: "ul" (upper left), "ur", "bl" or "br".
    :return: boolean tensor (1, 1, H, W), False on ``low_quarter``, broadcastable to a batch.
    """
    check_choice("low_quarter", low_quarter, QUARTERS)
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    important = torch.ones(1, 1, height, width, dtype=torch.bool, device=device)
    rows = slice(0, height // 2) if low_quarter[0] == "u" else slice(height // 2, height)
    cols = slice(0, width // 2) if low_quarter[1] == "l" else slice(width // 2, width)
    important[..., rows, cols] = False
    return important
