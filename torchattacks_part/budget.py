"""From class activation maps to a per-entry perturbation budget (paper section 3.2, Algorithm 1).

Pixels a CAM marks as important keep the full budget ``eps``; the rest get ``eps_low``. Three binary rules decide
which pixels are important, and a fourth, ``"linear"``, gives every pixel a budget of its own between the two:

``"cam"``     the paper's rule: a pixel is important when its map value exceeds that image's mean + 1 std
              (the paper's "scaled weight omega > 1"). All channels of a pixel share its budget: (B, 1, H, W).
``"jet"``     the authors' released code (``craft_weight_matrix`` / ``process_overlay`` of their ``utils.py``),
              reproduced exactly by :func:`released_jet_mask`: torchcam's low-resolution map (4 x 4 at a CIFAR
              ResNet-18's ``layer4``) is resized to the image size by PIL's bicubic filter without clamping (a map in
              [0, 1] overshoots to about [-0.11, 1.12]), squared, coloured with matplotlib's ``jet`` colormap, and each
              of the 3 colour values is compared with mean + 1 std over all 3 x H x W values (numpy's population std,
              as the released code used numpy). The budget is per pixel *and* channel, (B, 3, H, W), and because of
              the colormap the CAM's peak usually lands in the low band. Use it only to reproduce the published
              numbers. It needs the map *before* any resize: pass the low-resolution maps with the image ``size``.
              Given maps already at the image size (what :func:`~torchattacks_part.cam.cam_maps` returns today, a
              bilinear resize) it skips the resize and only approximates the released masks (95.6 % of entries agree,
              no image identical, measured on 128 CIFAR-10 test images of the pretrained ResNet-18).
              Versions: the released code ran torchvision 0.14, whose ``to_pil_image`` keeps a float32 map as a
              float ('F') PIL image; that is what is reproduced here. From torchvision 0.16 on, ``to_pil_image``
              scales a float map by 255 and casts it to uint8, and the released code's ``** 2`` then wraps around in
              uint8: the same script on a new torchvision gives other masks (about 64 % of entries agree).
``"random"``  an ablation (does the CAM matter?): the same number of important pixels per image as ``"cam"``
              would pick, drawn uniformly at random.
``"linear"``  a continuous budget: ``eps_i = eps_low + (eps - eps_low) * m_i`` with ``m_i`` the pixel's own map
              value in [0, 1] (its importance, no threshold), all channels alike: (B, 1, H, W). ``m`` is the map at
              the image size as :func:`~torchattacks_part.cam.postprocess` gives it (bilinear, then min-max) when
              the maps are smaller; maps at the image size are taken as given, clamped to [0, 1]. It has no binary
              mask (:func:`important_pixels` refuses it): :func:`importance` gives its map, which is the one source
              of every rule's budget (:func:`budget_from_importance`). Its "important fraction" is the fraction of
              entries at the full budget, ``budget >= eps``.

A degenerate map (NaN, inf, all zero or constant) marks nothing: that image gets ``eps`` everywhere (every rule,
``"linear"`` included: ``m = 1``), i.e. plain PGD, never NaN. The released code turned such maps into ``eps_low``
everywhere through 0/0; we count them instead (:func:`degenerate_maps`) so callers can report how often it happens.
"""

from numbers import Integral

import torch

from .cam import postprocess
from .checks import check_budget_params, check_choice, check_generator

RULES = ("cam", "jet", "random", "linear")
#: The rules that mark each entry important or not (a boolean mask); the others give each entry its own budget.
BINARY_RULES = ("cam", "jet", "random")
QUARTERS = ("ul", "ur", "bl", "br")


def _check_maps(cams):
    if not isinstance(cams, torch.Tensor) or cams.dim() != 3:
        if isinstance(cams, torch.Tensor):
            got = f"a tensor of shape {tuple(cams.shape)}"
        else:
            kind = type(cams)
            got = "None" if cams is None else f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")
        raise ValueError(f"cams must be a torch tensor of shape (B, H, W), got {got}")
    return cams


def _check_size(size, cams):
    """None (the maps' own size) or (H, W), two integers >= 1."""
    if size is None:
        return tuple(cams.shape[-2:])
    try:
        size = tuple(size)
    except TypeError:
        raise ValueError(f"size must be None or (H, W), got {size!r}") from None
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, Integral) or v < 1 for v in size):
        raise ValueError(f"size must be None or (H, W), two integers >= 1, got {size!r}")
    return tuple(int(v) for v in size)


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


# The released pipeline, step by step. Its arithmetic runs in float64 where the released code's did (PIL's resampling
# sums, numpy's statistics) and rounds to float32 where it did, so the masks are the same bit for bit.


def _work_device(device):
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def _bicubic_filter(x):
    """PIL's bicubic kernel (Keys, a = -0.5), in double as in libImaging/Resample.c."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_PIL_COEFFS = {}


def _pil_coeffs(in_size, out_size, device):
    """PIL's ``precompute_coeffs`` for one axis: window starts, taps (out, k) and a validity mask, cached."""
    key = (in_size, out_size, device)
    if key not in _PIL_COEFFS:
        scale = in_size / out_size  # centre-aligned: output pixel xx covers [xx, xx + 1) * scale
        filterscale = max(scale, 1.0)  # the kernel widens only when downsampling
        support = 2.0 * filterscale
        starts, taps = [], []
        for xx in range(out_size):
            center = (xx + 0.5) * scale
            xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates, as Python's int()
            xmax = min(int(center + support + 0.5), in_size) - xmin
            k = [_bicubic_filter((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
            total = 0.0
            for w in k:
                total += w
            starts.append(xmin)
            taps.append([w / total if total != 0.0 else w for w in k])
        width = max(len(k) for k in taps)
        index = torch.tensor([[min(s + t, in_size - 1) for t in range(width)] for s in starts])
        valid = torch.tensor([[t < len(k) for t in range(width)] for k in taps])
        weight = torch.tensor([k + [0.0] * (width - len(k)) for k in taps], dtype=torch.float64)
        _PIL_COEFFS[key] = (index.to(device), weight.to(device), valid.to(device))
    return _PIL_COEFFS[key]


def _pil_resample_last_axis(x, out_size):
    """One PIL pass along the last axis: a float64 sum over the window, tap by tap, rounded to float32."""
    index, weight, valid = _pil_coeffs(x.shape[-1], out_size, x.device)
    x = x.double()
    total = torch.zeros(*x.shape[:-1], out_size, dtype=torch.float64, device=x.device)
    for t in range(index.shape[1]):
        total = torch.where(valid[:, t], total + x[..., index[:, t]] * weight[:, t], total)
    return total.float()


def pil_bicubic_resize(maps, size):
    """(B, h, w) maps -> (B, H, W) float32, as PIL's ``Image.resize(size, BICUBIC)`` of float ('F') images.

    PIL's convolution resampling: the Keys kernel with a = -0.5, centre-aligned coordinates, the kernel widened only
    when downsampling, weights normalised to sum 1, windows cut at the border; the width pass first, then the height
    pass, each summed in float64 and stored as float32. No clamping, so values overshoot the input's range. Equal to
    PIL bit for bit (tests). ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` uses the same kernel
    but sums in float32 and resizes both axes at once: it differs from PIL by up to about 2e-7.
    """
    maps = _check_maps(maps)
    height, width = _check_size(size, maps)
    out = maps.float()
    if out.shape[-1] != width:
        out = _pil_resample_last_axis(out, width)
    if out.shape[-2] != height:
        out = _pil_resample_last_axis(out.transpose(-1, -2), height).transpose(-1, -2)
    return out.contiguous()


_JET_TABLE = {}


def _jet_table(device):
    """matplotlib's ``jet`` lookup table as the released code used it: RGB of the 256 colours, then the under, over
    and bad colours, each channel as ``(255 * c).astype(np.double) / 255`` (``process_overlay``), float64."""
    if device not in _JET_TABLE:
        import matplotlib
        import numpy as np

        jet = matplotlib.colormaps["jet"]
        rgba = np.concatenate([jet(np.arange(256)), jet(np.array([-1.0, 2.0, np.nan], dtype=np.float32))])
        table = (255 * rgba[:, :3]).astype(np.double) / 255
        _JET_TABLE[device] = torch.as_tensor(table, dtype=torch.float64, device=device)
    return _JET_TABLE[device]


def jet_colours(values):
    """(B, H, W) values -> (B, 3, H, W) float64 ``jet`` colours, indexed as matplotlib's ``Colormap`` indexes floats.

    The index is ``int(256 * x)`` computed in float32, with x == 1 giving the last colour, x < 0 the "under" colour
    (jet: the first one), x > 1 the "over" colour (jet: the last one) and NaN the "bad" colour (0, 0, 0). The values
    are taken as they are: the released code squared its map first (:func:`released_jet_mask`).
    """
    scaled = values.float() * 256  # exact: matplotlib multiplies the float32 array by N = 256 in float32
    index = torch.nan_to_num(scaled, nan=0.0).clamp(0, 255).long()
    index = torch.where(scaled < 0, 256, index)
    index = torch.where(scaled > 256, 257, index)
    index = torch.where(torch.isnan(scaled), 258, index)
    return _jet_table(values.device)[index].permute(0, 3, 1, 2)


def released_jet_mask(maps, size=None):
    """The released code's mask, exactly: (B, h, w) low-resolution CAMs -> boolean (B, 3, H, W).

    Per image, as the authors' ``craft_weight_matrix`` and ``process_overlay`` (torchcam 0.3.2, torchvision 0.14):
    torchcam's normalisation (ReLU, then ``(m - min) / (max - min)``, which leaves a torchcam map as it is), PIL's
    bicubic resize of the float map to ``size`` (:func:`pil_bicubic_resize`, no clamping), the square, matplotlib's
    ``jet`` (:func:`jet_colours`), standardisation over all 3 x H x W colour values with one mean and numpy's
    population std, in float64, and the test ``float32(z) > 1`` (``torch.clamp(z, 1, z.max()).float()``, then
    ``> 1``). A constant map gives 0/0 there and marks nothing, as in the released code; :func:`important_pixels`
    gives such maps ``eps`` everywhere instead.

    :param maps: the CAMs at the target layer's resolution, before any resize (raw or normalised).
    :param size: (H, W) of the images; None keeps the maps' size (no resize).
    """
    maps = _check_maps(maps)
    size = _check_size(size, maps)
    device = maps.device
    work = maps.to(_work_device(device)).float()
    work = work.clamp(min=0)
    work = work - work.flatten(1).amin(dim=1).view(-1, 1, 1)
    work = work / work.flatten(1).amax(dim=1).view(-1, 1, 1)
    resized = pil_bicubic_resize(work, size)
    colours = jet_colours(resized.square()).flatten(1)
    mean = colours.mean(dim=1, keepdim=True)
    std = (colours - mean).square().mean(dim=1, keepdim=True).sqrt()
    important = ((colours - mean) / std).float() > 1
    return important.view(-1, 3, *size).to(device)


def important_pixels(cams, rule="cam", generator=None, size=None):
    """Boolean mask of important entries: (B, 1, H, W) for "cam"/"random", (B, 3, H, W) for "jet".

    :param cams: maps (B, h, w): at the image size (what :func:`~torchattacks_part.cam.cam_maps` returns), or at the
        target layer's resolution together with ``size``.
    :param rule: ``"cam"``, ``"jet"`` or ``"random"`` (module docstring). ``"linear"`` has no binary mask (every
        pixel gets its own budget): it raises a ValueError pointing to :func:`importance`, which gives its map.
    :param generator: optional ``torch.Generator`` for the ``"random"`` rule.
    :param size: (H, W) of the images when ``cams`` are smaller; None: the maps are at the image size. Rule
        ``"jet"`` resizes them as the released code did (:func:`released_jet_mask`: exact only this way); rules
        ``"cam"`` and ``"random"`` as :func:`~torchattacks_part.cam.postprocess` does (bilinear, then min-max).

    Degenerate maps mark every entry important (full eps).
    """
    check_choice("rule", rule, RULES)
    if rule not in BINARY_RULES:
        # A threshold of our choosing (m >= 1, m > 0.5, ...) would be a fifth rule nobody asked for: refuse instead.
        raise ValueError(f"rule must be one of {sorted(BINARY_RULES)} for important_pixels, got {rule!r}, which "
                         f"gives every pixel its own budget, not a binary mask: use importance(cams, {rule!r}) for "
                         f"its map in [0, 1], or budget_map for the budget")
    return _importance(cams, rule, generator, size)


def importance(cams, rule="cam", generator=None, size=None):
    """Per-entry importance in [0, 1], float32: the weight ``m`` of ``eps`` in the budget
    ``eps_low + (eps - eps_low) * m`` (:func:`budget_from_importance`), for every rule.

    Binary rules give their mask (:func:`important_pixels`) as 0. / 1.; ``"linear"`` gives the map itself: resized
    as :func:`~torchattacks_part.cam.postprocess` does when the maps are smaller than ``size``, else as given,
    clamped to [0, 1]. Degenerate maps give 1 everywhere (full eps), whatever the rule.

    :param cams: maps (B, h, w), as for :func:`important_pixels`.
    :param rule: one of :data:`RULES`, see the module docstring.
    :param generator: optional ``torch.Generator`` for the ``"random"`` rule.
    :param size: (H, W) of the images when ``cams`` are smaller, see :func:`important_pixels`.
    :return: float32 tensor (B, 1, H, W), or (B, 3, H, W) for ``"jet"``, on the maps' device.
    """
    return _importance(cams, rule, generator, size).float()


def _importance(cams, rule, generator, size):
    """The importance of every rule in its own type: a boolean mask for the binary rules, float32 for "linear"."""
    check_choice("rule", rule, RULES)
    check_generator("generator", generator)
    cams = _check_maps(cams)
    size = _check_size(size, cams)
    degenerate = degenerate_maps(cams).view(-1, 1, 1, 1)
    clean = torch.nan_to_num(cams.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if rule == "jet":
        return released_jet_mask(clean, size) | degenerate
    if tuple(clean.shape[-2:]) != size:
        clean = postprocess(clean, size)
    if rule == "linear":
        # The map is a weight: outside [0, 1] the budget would leave [eps_low, eps] (lerp extrapolates, even below
        # 0). cam_maps and postprocess already give [0, 1]; the clamp guards maps a caller normalised otherwise.
        return torch.where(degenerate, 1.0, clean.clamp(0, 1)[:, None])
    important = _above_mean_plus_std(clean)[:, None] | degenerate
    if rule == "random":
        count = important.flatten(1).sum(dim=1, keepdim=True)
        device = cams.device if generator is None else generator.device
        scores = torch.rand(important.flatten(1).shape, generator=generator, device=device).to(cams.device)
        rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each pixel in a random order
        important = (rank < count).view_as(important)
    return important


def budget_map(cams, eps, eps_low, rule="cam", generator=None, size=None):
    """Per-entry L-inf budgets from class activation maps.

    :param cams: torch tensor (B, H, W), e.g. from :func:`~torchattacks_part.cam.cam_maps`; or (B, h, w) maps at
        the target layer's resolution with ``size`` (needed for an exact ``"jet"``).
    :param eps: budget of important entries, finite.
    :param eps_low: budget of the others, ``0 <= eps_low <= eps``.
    :param rule: ``"cam"`` (paper), ``"jet"`` (released code), ``"random"`` (ablation) or ``"linear"`` (continuous,
        ``eps_low + (eps - eps_low) * map``); see the module docstring.
    :param generator: optional ``torch.Generator`` for the ``"random"`` rule.
    :param size: (H, W) of the images when ``cams`` are smaller, see :func:`important_pixels`.
    :return: tensor (B, 1, H, W) (or (B, 3, H, W) for ``"jet"``) of ``eps`` / ``eps_low`` (of values in
        [eps_low, eps] for ``"linear"``), on the maps' device, broadcastable to the images.
    """
    cams = _check_maps(cams)
    eps, eps_low, _ = check_budget_params(eps, eps_low)
    dtype = cams.dtype if cams.is_floating_point() else torch.float32
    return budget_from_importance(_importance(cams, rule, generator, size), eps, eps_low, dtype)


def budget_from_mask(important, eps, eps_low, dtype=torch.float32):
    """``eps`` where ``important`` is True, ``eps_low`` elsewhere (Algorithm 1 of the paper), in ``dtype``."""
    high = torch.tensor(eps, dtype=dtype, device=important.device)
    low = torch.tensor(eps_low, dtype=dtype, device=important.device)
    return torch.where(important, high, low)


def budget_from_importance(m, eps, eps_low, dtype=torch.float32):
    """``eps_low + (eps - eps_low) * m`` entry-wise, in ``dtype``: exactly ``eps`` where ``m`` is 1 (or True) and
    exactly ``eps_low`` where it is 0 (or False).

    :param m: importance: a boolean mask (the binary rules, as :func:`budget_from_mask`) or floats in [0, 1]
        (:func:`importance`), any shape.
    """
    if m.dtype == torch.bool:
        return budget_from_mask(m, eps, eps_low, dtype)
    high = torch.tensor(eps, dtype=dtype, device=m.device)
    low = torch.tensor(eps_low, dtype=dtype, device=m.device)
    # torch.lerp is low + m (high - low) for m < 0.5 and high - (high - low)(1 - m) above: exact at both ends, where
    # the plain formula can miss eps by a rounding error at m = 1.
    return torch.lerp(low, high, m.to(dtype))


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
