"""budget_map against per-image numpy references of the paper's rule, the released code's jet rule and the ablation."""

import matplotlib
import numpy as np
import pytest
import torch

from torchattacks_part import budget_map, cam_maps, degenerate_maps, quadrant_mask

EPS, EPS_LOW = 8 / 255, 7 / 255


@pytest.fixture(scope="module")
def real_cams(resnet18, cifar_test):
    images, _ = cifar_test
    return cam_maps(resnet18, images[:48])


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


def test_degenerate_maps_get_full_eps_and_are_counted(real_cams):
    cams = real_cams[:5].clone()
    cams[0] = 0.0
    cams[1] = 0.37
    cams[2, 3, 4] = float("nan")
    cams[3, 0, 0] = float("inf")
    assert degenerate_maps(cams).tolist() == [True, True, True, True, False]
    for rule in ("cam", "jet", "random"):
        budget = budget_map(cams, EPS, EPS_LOW, rule)
        assert torch.isfinite(budget).all()
        assert (budget[:4] == EPS).all(), rule
        assert (budget[4] == EPS_LOW).any(), rule


def test_jet_rule_matches_matplotlib(real_cams):
    budget = budget_map(real_cams, EPS, EPS_LOW, rule="jet")
    assert budget.shape == (48, 3, 32, 32)
    jet = matplotlib.colormaps["jet"]
    for cam, b in zip(real_cams.numpy(), budget.numpy()):
        colours = jet(cam**2)[..., :3].transpose(2, 0, 1)  # the released code squares, then colours
        important = colours > colours.mean() + colours.std()
        np.testing.assert_array_equal(b, np.where(important, np.float32(EPS), np.float32(EPS_LOW)))
    # Per channel, not per pixel: some pixels keep eps in one channel only.
    per_pixel = (budget == EPS).sum(dim=1)
    assert ((per_pixel > 0) & (per_pixel < 3)).any()


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
