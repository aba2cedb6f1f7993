"""budget_map against per-image numpy references of the paper's rule, the released code's jet rule and the ablation.

The released rule is checked against the authors' own pipeline rebuilt here from PIL, numpy and matplotlib (their
``craft_weight_matrix`` and ``process_overlay``, with torchvision 0.14's float ``to_pil_image``).
"""

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from torchattacks_part import (PixelAG, budget_from_importance, budget_map, cam_maps, degenerate_maps, importance,
                               important_pixels, quadrant_mask)
from torchattacks_part.budget import budget_from_mask, jet_colours, pil_bicubic_resize, released_jet_mask
from torchattacks_part.cam import postprocess

EPS, EPS_LOW = 8 / 255, 7 / 255


@pytest.fixture(scope="module")
def real_cams(resnet18, cifar_test):
    images, _ = cifar_test
    return cam_maps(resnet18, images[:48])


@pytest.fixture(scope="module")
def low_res_cams(resnet18, cifar_test):
    """GradCAM of the predicted class at layer4 (4 x 4), normalised as torchcam 0.3.2: ReLU, - min, / max."""
    images, _ = cifar_test
    features = {}
    hook = resnet18.layer4.register_forward_hook(lambda module, inputs, out: features.__setitem__("a", out))
    try:
        logits = resnet18(images[:48].clone().requires_grad_(True))
    finally:
        hook.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), features["a"])
    cams = (grads.mean(dim=(2, 3), keepdim=True) * features["a"]).sum(dim=1).detach().relu()
    cams = cams - cams.flatten(1).amin(1).view(-1, 1, 1)
    return cams / cams.flatten(1).amax(1).view(-1, 1, 1)


def pil_resize(low_res, size):
    """PIL's bicubic resize of a float ('F') image, which is what to_pil_image gave on torchvision 0.14."""
    image = Image.fromarray(np.asarray(low_res, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), resample=Image.BICUBIC))


def released_reference(low_res, size):
    """The authors' craft_weight_matrix + process_overlay for one map, on numpy: boolean (3, H, W)."""
    overlay = pil_resize(low_res, size)
    cmap_overlay = matplotlib.colormaps["jet"](overlay ** 2)  # squared with its overshoot, negatives included
    overlay = (255 * cmap_overlay[:, :, :3]).astype(np.double)
    normalized = overlay / 255
    mean, std = np.mean(normalized), np.std(normalized)
    weight = (normalized - mean) / std
    weight = np.clip(weight, 1, weight.max()).astype(np.float32)  # torch.clamp(w, 1, w.max()).float()
    return (weight > 1).transpose(2, 0, 1)  # generate_weighted_eps: torch.where(weight > 1, eps, eps_low)


def torchcam_normalise(maps):
    maps = np.maximum(maps, 0)
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def random_maps(rng, n, h, w, kind):
    """Map families in [0, 1]: uniform noise, smooth blobs (CAM-like) and isolated peaks (the largest overshoot)."""
    if kind == "noise":
        maps = rng.random((n, h, w))
    elif kind == "blobs":
        yy, xx = np.mgrid[0:h, 0:w]
        centres, widths = rng.random((n, 2, 1, 1)) * [[[h]], [[w]]], 0.5 + rng.random((n, 1, 1)) * h / 3
        maps = np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / (2 * widths**2))
        maps += 0.3 * rng.random((n, 1, 1)) * rng.random((n, h, w))
    else:
        maps = np.zeros((n, h, w))
        maps[np.arange(n), rng.integers(0, h, n), rng.integers(0, w, n)] = 1.0
        maps += 0.05 * rng.random((n, h, w))
    return torchcam_normalise(maps)


def test_cam_rule_matches_per_image_reference(real_cams):
    budget = budget_map(real_cams, EPS, EPS_LOW)
    assert budget.shape == (48, 1, 32, 32) and budget.dtype == torch.float32
    for cam, b in zip(real_cams.numpy(), budget.numpy()):
        important = cam > cam.mean() + cam.std()  # numpy std is the population std
        expected = np.where(important, np.float32(EPS), np.float32(EPS_LOW))
        np.testing.assert_array_equal(b[0], expected)
    fraction = (budget == EPS).float().mean()
    assert 0.05 < fraction < 0.4  # a minority of pixels keeps eps, as in the paper's figures


def test_budget_broadcasts_to_images(real_cams, cifar_test):
    images, _ = cifar_test
    budget = budget_map(real_cams, EPS, EPS_LOW)
    assert (images[:48] + budget).shape == images[:48].shape
    assert set(torch.unique(budget).tolist()) == {np.float32(EPS).item(), np.float32(EPS_LOW).item()}


def degenerate_examples(real_cams):
    """Five maps: all zero, constant, with a NaN, with an inf, and one real map (the only one not degenerate)."""
    cams = real_cams[:5].clone()
    cams[0] = 0.0
    cams[1] = 0.37
    cams[2, 3, 4] = float("nan")
    cams[3, 0, 0] = float("inf")
    return cams


def test_degenerate_maps_get_full_eps_and_are_counted(real_cams):
    cams = degenerate_examples(real_cams)
    assert degenerate_maps(cams).tolist() == [True, True, True, True, False]
    for rule in ("cam", "jet", "random", "linear"):
        budget = budget_map(cams, EPS, EPS_LOW, rule)
        assert torch.isfinite(budget).all()
        assert (budget[:4] == EPS).all(), rule
        assert (budget[4] == EPS_LOW).any(), rule


@pytest.mark.parametrize("shape, size", [((4, 4), (32, 32)), ((8, 8), (32, 32)), ((16, 16), (64, 64)),
                                         ((5, 7), (32, 48)), ((40, 36), (32, 32)), ((32, 32), (32, 32))])
def test_bicubic_resize_equals_pil(shape, size):
    rng = np.random.default_rng(sum(shape) + sum(size))
    maps = (rng.random((8, *shape)) * 1.4 - 0.2).astype(np.float32)  # any floats, not just [0, 1]
    expected = np.stack([pil_resize(m, size) for m in maps])
    ours = pil_bicubic_resize(torch.from_numpy(maps), size)
    assert ours.shape == (8, *size) and ours.dtype == torch.float32
    np.testing.assert_array_equal(ours.numpy(), expected)  # bit for bit, not just to ~1e-6


def test_bicubic_resize_overshoots_like_pil():
    maps = torch.from_numpy(random_maps(np.random.default_rng(1), 16, 4, 4, "peaks"))
    resized = pil_bicubic_resize(maps, (32, 32))
    assert resized.min() < -0.05 and resized.max() > 1.05  # no clamping: the released code squared these
    # torch's antialiased bicubic has PIL's kernel (a = -0.5) but sums in float32: close, not equal.
    torch_aa = F.interpolate(maps[:, None], size=(32, 32), mode="bicubic", antialias=True)[:, 0]
    assert (torch_aa - resized).abs().max() < 1e-6
    bicubic_075 = F.interpolate(maps[:, None], size=(32, 32), mode="bicubic", align_corners=False)[:, 0]
    assert (bicubic_075 - resized).abs().max() > 1e-2  # the default a = -0.75 is another filter


def test_jet_colours_index_as_matplotlib():
    ticks = np.arange(257, dtype=np.float32) / 256
    values = np.concatenate([ticks, np.nextafter(ticks, np.float32(-1)), np.nextafter(ticks, np.float32(2)),
                             np.float32([-0.3, -1e-8, 1.0, 1 + 1e-7, 1.3, np.inf, -np.inf, np.nan])])
    values = np.concatenate([values, np.random.default_rng(2).random(247, dtype=np.float32) * 1.4 - 0.2])
    values = values[: len(values) // 32 * 32].reshape(-1, 32)
    expected = (255 * matplotlib.colormaps["jet"](values)[..., :3]).astype(np.double) / 255
    ours = jet_colours(torch.from_numpy(values)[None])[0]
    assert ours.dtype == torch.float64
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("kind", ["noise", "blobs", "peaks"])
@pytest.mark.parametrize("shape, size", [((4, 4), (32, 32)), ((8, 8), (32, 32)), ((16, 16), (64, 64))])
def test_jet_rule_equals_the_released_pipeline(kind, shape, size):
    maps = random_maps(np.random.default_rng(sum(shape) + len(kind)), 24, *shape, kind)
    expected = np.stack([released_reference(m, size) for m in maps])
    mask = released_jet_mask(torch.from_numpy(maps), size)
    assert mask.shape == (24, 3, *size) and mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.numpy(), expected)
    budget = budget_map(torch.from_numpy(maps), EPS, EPS_LOW, rule="jet", size=size)
    np.testing.assert_array_equal(budget.numpy(), np.where(expected, np.float32(EPS), np.float32(EPS_LOW)))


def test_jet_rule_on_real_maps(low_res_cams, real_cams):
    assert low_res_cams.shape == (48, 4, 4)
    # The same CAM as cam_maps, before its bilinear resize.
    np.testing.assert_allclose(postprocess(low_res_cams, (32, 32)).numpy(), real_cams.numpy(), atol=1e-5)
    expected = np.stack([released_reference(m, (32, 32)) for m in low_res_cams.numpy()])
    budget = budget_map(low_res_cams, EPS, EPS_LOW, rule="jet", size=(32, 32))
    assert budget.shape == (48, 3, 32, 32)
    np.testing.assert_array_equal(budget.numpy(), np.where(expected, np.float32(EPS), np.float32(EPS_LOW)))
    # About a quarter of the entries keep eps (the released code gives 25.75 % on 128 test images), every image
    # somewhere in the band, and per channel: some pixels keep eps in one or two channels only.
    full = (budget == EPS).float()
    assert 0.2 < full.mean() < 0.3
    assert 0.1 < full.flatten(1).mean(1).min() and full.flatten(1).mean(1).max() < 0.4
    per_pixel = full.sum(dim=1)
    assert ((per_pixel > 0) & (per_pixel < 3)).any()
    # Full-size bilinear maps (no size) skip the resize: close to the released masks, but not them.
    approximate = important_pixels(real_cams, "jet").numpy()
    assert 0.9 < (approximate == expected).mean() < 0.99


def test_jet_rule_without_size_takes_the_maps_as_they_are(real_cams):
    # With maps at the image size the PIL resize is the identity and the rest of the pipeline is the released one.
    budget = budget_map(real_cams, EPS, EPS_LOW, rule="jet")
    assert budget.shape == (48, 3, 32, 32)
    expected = np.stack([released_reference(m, (32, 32)) for m in real_cams.numpy()])
    np.testing.assert_array_equal(budget.numpy(), np.where(expected, np.float32(EPS), np.float32(EPS_LOW)))


def test_cam_and_random_rules_resize_low_resolution_maps(low_res_cams, real_cams):
    for rule in ("cam", "random"):
        ours = important_pixels(low_res_cams, rule, generator=torch.Generator().manual_seed(0), size=(32, 32))
        same = important_pixels(postprocess(low_res_cams, (32, 32)), rule, generator=torch.Generator().manual_seed(0))
        assert ours.shape == (48, 1, 32, 32) and torch.equal(ours, same)
    agreement = (important_pixels(low_res_cams, "cam", size=(32, 32)) == important_pixels(real_cams, "cam"))
    assert agreement.float().mean() > 0.999  # cam_maps' maps, up to float rounding


def test_degenerate_low_resolution_maps_get_full_eps(low_res_cams):
    cams = low_res_cams[:4].clone()
    cams[0] = 0.0
    cams[1] = 0.5
    cams[2, 1, 1] = float("nan")
    assert degenerate_maps(cams).tolist() == [True, True, True, False]
    for rule in ("cam", "jet", "random", "linear"):
        budget = budget_map(cams, EPS, EPS_LOW, rule, size=(32, 32))
        assert budget.shape[-2:] == (32, 32) and torch.isfinite(budget).all()
        assert (budget[:3] == EPS).all(), rule
        assert (budget[3] == EPS_LOW).any(), rule


def test_random_rule_keeps_the_count_and_moves_the_pixels(real_cams):
    paper = budget_map(real_cams, EPS, EPS_LOW, "cam")
    generator = torch.Generator().manual_seed(0)
    shuffled = budget_map(real_cams, EPS, EPS_LOW, "random", generator=generator)
    assert torch.equal((paper == EPS).flatten(1).sum(1), (shuffled == EPS).flatten(1).sum(1))
    overlap = ((paper == EPS) & (shuffled == EPS)).sum() / (paper == EPS).sum()
    assert overlap < 0.5  # CAM regions are contiguous blobs; a random draw of the same size is not
    again = budget_map(real_cams, EPS, EPS_LOW, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, again)


def test_equal_budgets_give_eps_everywhere(real_cams):
    assert (budget_map(real_cams, EPS, EPS) == EPS).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(eps=-0.1, eps_low=0.0), "eps"),
        (dict(eps=EPS, eps_low=-0.1), "eps_low"),
        (dict(eps=EPS_LOW, eps_low=EPS), "eps_low"),
        (dict(eps=EPS, eps_low=EPS_LOW, rule="mask"), "rule"),
    ],
)
def test_bad_parameters(real_cams, kwargs, name):
    with pytest.raises(ValueError, match=name):
        budget_map(real_cams, **kwargs)


def test_bad_map_shape(real_cams):
    with pytest.raises(ValueError, match="cams"):
        budget_map(real_cams[:, None], EPS, EPS_LOW)


@pytest.mark.parametrize("cams", [np.zeros((2, 32, 32), dtype=np.float32), [[[0.0, 1.0]]], None],
                         ids=["numpy", "list", "None"])
def test_maps_must_be_a_tensor(cams):
    with pytest.raises(ValueError, match=r"cams must be a torch tensor of shape \(B, H, W\)"):
        budget_map(cams, EPS, EPS_LOW)


@pytest.mark.parametrize("size", [(32,), (0, 32), (32.0, 32), "ab", 32])
def test_bad_size(real_cams, size):
    with pytest.raises(ValueError, match="size"):
        budget_map(real_cams, EPS, EPS_LOW, "jet", size=size)


@pytest.mark.parametrize("quarter, rows, cols", [("ul", (0, 16), (0, 16)), ("ur", (0, 16), (16, 32)),
                                                 ("bl", (16, 32), (0, 16)), ("br", (16, 32), (16, 32))])
def test_quadrant_mask_lowers_exactly_one_quarter(quarter, rows, cols):
    mask = quadrant_mask(32, 32, quarter)
    assert mask.shape == (1, 1, 32, 32) and mask.dtype == torch.bool
    expected = torch.ones(32, 32, dtype=torch.bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = False
    assert torch.equal(mask[0, 0], expected)
    assert mask.float().mean().item() == 0.75  # same overall budget whichever quarter is low (paper Figure 1)


def test_quadrant_mask_bad_parameters():
    with pytest.raises(ValueError, match="low_quarter"):
        quadrant_mask(32, 32, "left")
    with pytest.raises(ValueError, match="height"):
        quadrant_mask(1, 32, "ul")


@pytest.mark.parametrize("eps, eps_low", [(float("inf"), 0.0), (float("inf"), float("inf"))])
def test_infinite_budgets_are_refused(real_cams, eps, eps_low):
    # The finiteness check lives in checks.check_budget_params.
    with pytest.raises(ValueError, match="eps"):
        budget_map(real_cams, eps, eps_low)


# ------------------------------------------------------------------------------------- the continuous "linear" rule


def test_linear_rule_closed_form_on_a_hand_made_map():
    """Dyadic maps and budgets (eps 1/2, eps_low 1/4): eps_low + (eps - eps_low) * m is exact in float32."""
    cams = torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.75, 0.125], [1.0, 0.0]]])
    budget = budget_map(cams, 0.5, 0.25, rule="linear")
    expected = torch.tensor([[[0.25, 0.3125], [0.375, 0.5]], [[0.4375, 0.28125], [0.5, 0.25]]])[:, None]
    assert budget.shape == (2, 1, 2, 2) and budget.dtype == torch.float32
    assert torch.equal(budget, expected)
    assert torch.equal(importance(cams, "linear"), cams[:, None])


def test_linear_rule_on_real_maps_endpoints_exact(real_cams):
    budget = budget_map(real_cams, EPS, EPS_LOW, rule="linear")
    assert budget.shape == (48, 1, 32, 32) and budget.dtype == torch.float32
    m = real_cams.double().numpy()[:, None]
    # float32: eps, eps_low and the lerp each round once (an ulp at 8/255 is 1.9e-9)
    np.testing.assert_allclose(budget.double().numpy(), EPS_LOW + (EPS - EPS_LOW) * m, rtol=0, atol=6e-9)
    assert (budget >= np.float32(EPS_LOW)).all() and (budget <= np.float32(EPS)).all()
    # Every image's map runs from 0 (min-max) to its peak: the low end is exactly eps_low.
    assert (budget.flatten(1).amin(1) == np.float32(EPS_LOW)).all()
    assert len(torch.unique(budget)) > 1000  # continuous, not two levels
    # Endpoints of the map itself: exactly eps at m = 1, exactly eps_low at m = 0, any eps.
    ends = torch.tensor([[[0.0, 1.0], [0.3, 1.0]]])
    for eps, eps_low in ((EPS, EPS_LOW), (12 / 255, 6 / 255), (0.1, 0.0), (EPS, EPS)):
        b = budget_map(ends, eps, eps_low, rule="linear")
        assert b[0, 0, 0, 0] == np.float32(eps_low) and (b[0, 0, :, 1] == np.float32(eps)).all()


def test_linear_rule_degenerate_maps_get_full_eps(real_cams):
    cams = degenerate_examples(real_cams)
    budget = budget_map(cams, EPS, EPS_LOW, "linear")
    assert torch.isfinite(budget).all()
    assert (budget[:4] == np.float32(EPS)).all()
    assert (importance(cams, "linear")[:4] == 1).all()
    assert torch.equal(budget[4], budget_map(real_cams[4:5], EPS, EPS_LOW, "linear")[0])


def test_linear_rule_clamps_maps_outside_the_unit_range():
    """A raw map (negative or above 1) must not push the budget outside [eps_low, eps]: lerp would extrapolate."""
    cams = torch.tensor([[[-0.5, 0.0], [0.5, 3.0]]])
    assert torch.equal(importance(cams, "linear"), torch.tensor([[[[0.0, 0.0], [0.5, 1.0]]]]))
    assert torch.equal(budget_map(cams, 0.5, 0.25, "linear"), torch.tensor([[[[0.25, 0.25], [0.375, 0.5]]]]))


def test_linear_rule_resizes_low_resolution_maps_as_postprocess(low_res_cams, real_cams):
    ours = importance(low_res_cams, "linear", size=(32, 32))
    assert ours.shape == (48, 1, 32, 32) and ours.dtype == torch.float32
    assert torch.equal(ours, postprocess(low_res_cams, (32, 32))[:, None])
    assert (ours - real_cams[:, None]).abs().max() < 1e-5  # cam_maps' maps, up to float rounding
    budget = budget_map(low_res_cams, EPS, EPS_LOW, "linear", size=(32, 32))
    assert torch.equal(budget, budget_map(postprocess(low_res_cams, (32, 32)), EPS, EPS_LOW, "linear"))


def test_importance_of_binary_rules_is_their_mask_and_gives_the_same_budget(real_cams, low_res_cams):
    for rule, cams, size in (("cam", real_cams, None), ("random", real_cams, None), ("jet", low_res_cams, (32, 32))):
        mask = important_pixels(cams, rule, generator=torch.Generator().manual_seed(0), size=size)
        m = importance(cams, rule, generator=torch.Generator().manual_seed(0), size=size)
        assert m.dtype == torch.float32 and torch.equal(m, mask.float())
        # 0. / 1. through lerp and the mask through torch.where: the same budget, bit for bit.
        budget = budget_map(cams, EPS, EPS_LOW, rule, generator=torch.Generator().manual_seed(0), size=size)
        assert torch.equal(budget_from_importance(m, EPS, EPS_LOW), budget)
        assert torch.equal(budget_from_importance(mask, EPS, EPS_LOW), budget)
        assert torch.equal(budget_from_mask(mask, EPS, EPS_LOW), budget)


def test_important_pixels_refuses_linear_and_points_to_importance(real_cams):
    with pytest.raises(ValueError, match=r"rule must be one of \['cam', 'jet', 'random'\] for important_pixels, "
                                         r"got 'linear'.*importance\(cams, 'linear'\)"):
        important_pixels(real_cams, "linear")


@pytest.mark.parametrize("call", [lambda c: budget_map(c, EPS, EPS_LOW, "linaer"), lambda c: importance(c, "linaer"),
                                  lambda c: important_pixels(c, "linaer")], ids=["budget_map", "importance",
                                                                              "important_pixels"])
def test_unknown_rule_lists_every_allowed_value(real_cams, call):
    with pytest.raises(ValueError, match=r"rule must be one of \['cam', 'jet', 'linear', 'random'\], got 'linaer'"):
        call(real_cams)


def test_pixel_ag_with_the_linear_rule_respects_and_uses_the_continuous_budget(resnet18, cifar_batch):
    images, labels = cifar_batch[0][:16], cifar_batch[1][:16]
    attack = PixelAG(resnet18, eps=EPS, eps_low=4 / 255, steps=10, rule="linear")
    budget = attack.budget(images)
    expected = budget_map(cam_maps(resnet18, images), EPS, 4 / 255, "linear")
    assert torch.equal(budget, expected)
    adv = attack(images, labels)
    delta = (adv - images).abs()
    assert (delta <= budget + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    # The box is used, not just respected: entries strictly inside (eps_low, eps) sit on their own bound.
    inner = ((budget > 4 / 255 + 1e-4) & (budget < EPS - 1e-4)).expand_as(delta)
    inside_image = (images > EPS) & (images < 1 - EPS)  # no [0, 1] clipping there
    on_bound = (delta - budget).abs() < 1e-6
    assert (on_bound & inner & inside_image).float().sum() > 0.3 * (inner & inside_image).float().sum()
    # Its important fraction is the fraction of entries at the full eps (a peak entry or none, no degenerate map).
    assert torch.isclose(attack.last_important_fraction, (budget >= EPS).float().mean())
    assert attack.last_important_fraction < 0.01 and attack.last_degenerate.item() == 0


def test_pixel_ag_background_inverts_the_linear_map(resnet18, tiny_model, cifar_batch):
    images = cifar_batch[0][:8]
    m = importance(cam_maps(resnet18, images), "linear")
    attack = PixelAG(resnet18, eps=EPS, eps_low=4 / 255, rule="linear", full_eps_on="background")
    assert torch.equal(attack.important(images), 1 - m)
    assert torch.equal(attack.budget(images), budget_from_importance(1 - m, EPS, 4 / 255))
    # A degenerate map keeps eps everywhere when inverted (it would otherwise get eps_low everywhere).
    tiny_model.features.register_forward_hook(lambda module, inputs, output: output * 0)  # all-zero CAMs
    zero = PixelAG(tiny_model, eps=EPS, eps_low=4 / 255, rule="linear", full_eps_on="background")
    assert (zero.important(images) == 1).all() and zero.last_degenerate.item() == len(images)
    assert (zero.budget(images) == np.float32(EPS)).all()
