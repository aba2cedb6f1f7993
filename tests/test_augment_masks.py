"""Device-side CIFAR augmentation (art_part.augment) against torchvision; the per-sample mask cache (art_part.masks).

Real CIFAR-10 images throughout. The crop and flip must be exactly torchvision's RandomCrop(32, padding=4) followed by
RandomHorizontalFlip, for the images and (with the same offsets) for the masks cached for them.
"""

import pytest
import torch
import torchvision.transforms.functional as TF

from art_part.augment import crop_flip, draw_crop_flip
from art_part.masks import MaskCache, mask_dtype
from torchattacks_part import RULES


def torchvision_crop_flip(image, offset, flip, padding=4, fill=0):
    """One (C, H, W) image through torchvision's functional pad, crop and hflip."""
    h, w = image.shape[-2:]
    padded = TF.pad(image, [padding], fill=fill)
    cropped = TF.crop(padded, int(offset[0]), int(offset[1]), h, w)
    return TF.hflip(cropped) if bool(flip) else cropped


def all_offsets_and_flips(n, padding=4):
    """Every (row, column, flip) combination, cycled over n images: the corners and both flips included."""
    combos = [(r, c, f) for r in range(2 * padding + 1) for c in range(2 * padding + 1) for f in (False, True)]
    combos = [combos[i % len(combos)] for i in range(n)]
    offsets = torch.tensor([[r, c] for r, c, _ in combos])
    flips = torch.tensor([f for _, _, f in combos])
    return offsets, flips


def test_crop_flip_equals_torchvision_on_every_offset(cifar_test):
    images = cifar_test[0][:162]  # 81 offsets x 2 flips
    offsets, flips = all_offsets_and_flips(len(images))
    ours = crop_flip(images, offsets, flips)
    for i in range(len(images)):
        assert torch.equal(ours[i], torchvision_crop_flip(images[i], offsets[i], flips[i])), i
    # Not the identity: the transform moved pixels and brought in zero padding.
    assert not torch.equal(ours, images)
    assert (ours[offsets[:, 0] == 0][:, :, :4] == 0).all()


def test_crop_flip_random_draws_equal_torchvision(cifar_test):
    images = cifar_test[0][:64]
    generator = torch.Generator().manual_seed(3)
    offsets, flips = draw_crop_flip(len(images), generator=generator)
    ours = crop_flip(images, offsets, flips)
    reference = torch.stack([torchvision_crop_flip(images[i], offsets[i], flips[i]) for i in range(len(images))])
    assert torch.equal(ours, reference)


def test_crop_flip_other_padding_and_fill(cifar_test):
    images = cifar_test[0][:18]
    offsets, flips = all_offsets_and_flips(len(images), padding=2)
    ours = crop_flip(images, offsets, flips, padding=2, fill=0.5)
    for i in range(len(images)):
        assert torch.equal(ours[i], torchvision_crop_flip(images[i], offsets[i], flips[i], padding=2, fill=0.5))


def test_crop_flip_keeps_dtype_of_masks(cifar_test):
    images = cifar_test[0][:32]
    masks = images.mean(dim=1, keepdim=True) > 0.5  # bool (B, 1, H, W)
    offsets, flips = all_offsets_and_flips(len(masks))
    moved = crop_flip(masks, offsets, flips, fill=False)
    assert moved.dtype == torch.bool and moved.shape == masks.shape
    for i in range(len(masks)):
        reference = torchvision_crop_flip(masks[i].to(torch.uint8), offsets[i], flips[i]).bool()
        assert torch.equal(moved[i], reference)


def test_draw_crop_flip_ranges_and_generator():
    offsets, flips = draw_crop_flip(4000, generator=torch.Generator().manual_seed(0))
    assert offsets.shape == (4000, 2) and flips.shape == (4000,) and flips.dtype == torch.bool
    assert offsets.min() == 0 and offsets.max() == 8
    assert set(offsets.flatten().tolist()) == set(range(9))
    assert 0.45 < flips.float().mean() < 0.55
    again = draw_crop_flip(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(offsets, again[0]) and torch.equal(flips, again[1])


def test_mask_cache_refresh_indexes_by_sample_and_lookup_moves_masks(cifar_test):
    images = cifar_test[0][:40]

    def important(x):  # any per-image rule: bright pixels
        return x.mean(dim=1, keepdim=True) > 0.45

    cache = MaskCache(len(images), (1, 32, 32), "cpu")
    assert cache.masks.all() and cache.refreshed_at is None
    # The refresh pass visits samples in shuffled batches: each mask must land at its own index.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    cache.refresh(important, [(images[order[i:i + 16]], order[i:i + 16]) for i in range(0, len(images), 16)], epoch=7)
    assert cache.refreshed_at == 7
    assert torch.equal(cache.masks, important(images))

    index = torch.tensor([5, 0, 39, 5])
    offsets = torch.tensor([[0, 8], [8, 0], [3, 5], [4, 4]])
    flips = torch.tensor([True, False, True, False])
    looked_up = cache.lookup(index, offsets, flips)
    for j, i in enumerate(index.tolist()):
        reference = torchvision_crop_flip(important(images[i:i + 1])[0].to(torch.uint8), offsets[j], flips[j]).bool()
        assert torch.equal(looked_up[j], reference)
    assert torch.equal(cache.lookup(index), important(images)[index])


def test_mask_cache_state_round_trip_and_shape_check(cifar_test):
    cache = MaskCache(8, (1, 32, 32), "cpu")
    cache.refresh(lambda x: x.mean(dim=1, keepdim=True) > 0.5, [(cifar_test[0][:8], torch.arange(8))], epoch=3)
    other = MaskCache(8, (1, 32, 32), "cpu")
    other.load_state_dict(cache.state_dict())
    assert torch.equal(other.masks, cache.masks) and other.refreshed_at == 3
    with pytest.raises(ValueError, match="shape"):
        MaskCache(9, (1, 32, 32), "cpu").load_state_dict(cache.state_dict())


def test_mask_cache_all_important_mask_stays_all_important_under_a_crop(cifar_test):
    """A degenerate CAM marks every pixel important (eps everywhere); the padding a crop brings in must not undo
    that, while an ordinary mask gets an unimportant border."""
    images = cifar_test[0][:2]
    cache = MaskCache(2, (1, 32, 32), "cpu")
    ordinary = images[1:].mean(dim=1, keepdim=True) > 0.45
    cache.refresh(lambda x: torch.cat([torch.ones_like(ordinary), ordinary]), [(images, torch.arange(2))], epoch=0)
    moved = cache.lookup(torch.arange(2), torch.tensor([[0, 0], [0, 0]]), torch.tensor([False, True]))
    assert moved[0].all()
    assert not moved[1, :, :4].any() and not moved[1, :, :, -4:].any()  # top rows, flipped left columns


# ------------------------------------------------------------------------- float maps (rule "linear", s > 1)


def linear_maps(x):
    """Any per-image float map in [0, 1] (B, 1, H, W): the brightness, min-max per image, as a stand-in CAM."""
    gray = x.mean(dim=1, keepdim=True)
    low = gray.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = gray.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (gray - low) / (high - low)


def test_float_mask_cache_lookup_is_the_crop_and_flip_of_each_map(cifar_test):
    images = cifar_test[0][:40]
    cache = MaskCache(len(images), (1, 32, 32), "cpu", torch.float32)
    assert cache.masks.dtype == torch.float32 and (cache.masks == 1).all()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(2))
    cache.refresh(linear_maps, [(images[order[i:i + 16]], order[i:i + 16]) for i in range(0, len(images), 16)],
                  epoch=4)
    maps = linear_maps(images)
    assert torch.equal(cache.masks, maps) and cache.refreshed_at == 4
    # the fraction at full eps: the entries at 1 (each image's brightest pixels)
    assert cache.important_fraction.item() == pytest.approx((maps >= 1).float().mean().item())

    offsets, flips = all_offsets_and_flips(len(images))
    index = torch.arange(len(images)).flip(0)
    looked_up = cache.lookup(index, offsets, flips)
    assert looked_up.dtype == torch.float32 and looked_up.shape == (40, 1, 32, 32)
    for j, i in enumerate(index.tolist()):
        # torchvision's pad (fill 0), crop and flip of the map, computed on its own
        assert torch.equal(looked_up[j], torchvision_crop_flip(maps[i], offsets[j], flips[j], fill=0)), j
    assert torch.equal(cache.lookup(index), maps[index])
    assert (looked_up[offsets[:, 0] == 0][:, :, :4] == 0).all()  # the padding is unimportant: weight 0


def test_float_mask_cache_all_ones_map_stays_all_ones_under_a_crop(cifar_test):
    """A degenerate CAM gives m = 1 everywhere (eps everywhere): the crop's padding must not lower its border."""
    images = cifar_test[0][:2]
    cache = MaskCache(2, (1, 32, 32), "cpu", torch.float32)
    ordinary = linear_maps(images[1:])
    cache.refresh(lambda x: torch.cat([torch.ones_like(ordinary), ordinary]), [(images, torch.arange(2))], epoch=0)
    moved = cache.lookup(torch.arange(2), torch.tensor([[0, 0], [0, 0]]), torch.tensor([False, True]))
    assert (moved[0] == 1).all()
    assert (moved[1, :, :4] == 0).all() and (moved[1, :, :, -4:] == 0).all()


def test_float_mask_cache_state_round_trip_and_dtype_check(cifar_test):
    cache = MaskCache(8, (1, 32, 32), "cpu", torch.float32)
    cache.refresh(linear_maps, [(cifar_test[0][:8], torch.arange(8))], epoch=3)
    state = cache.state_dict()
    assert state["masks"].dtype == torch.float32
    other = MaskCache(8, (1, 32, 32), "cpu", torch.float32)
    other.load_state_dict(state)
    assert torch.equal(other.masks, cache.masks) and other.refreshed_at == 3
    with pytest.raises(ValueError, match="dtype"):
        MaskCache(8, (1, 32, 32), "cpu").load_state_dict(state)  # a boolean cache (another rule)
    with pytest.raises(ValueError, match="shape"):
        MaskCache(9, (1, 32, 32), "cpu", torch.float32).load_state_dict(state)


def test_boolean_mask_cache_refuses_float_maps(cifar_test):
    with pytest.raises(TypeError, match="float32"):  # the bool cast would make every map value > 0 important
        MaskCache(8, (1, 32, 32), "cpu").refresh(linear_maps, [(cifar_test[0][:8], torch.arange(8))], epoch=0)
    with pytest.raises(ValueError, match="dtype"):
        MaskCache(8, (1, 32, 32), "cpu", torch.float16)


def test_mask_dtype_per_rule():
    assert [mask_dtype(rule) for rule in RULES] == [torch.float32 if r == "linear" else torch.bool for r in RULES]
