"""CIFAR augmentation (random crop with zero padding, horizontal flip), batched on the device.

The trainer draws the crop offsets and flips itself, so the same geometric transform can be applied to an image and
to the budget map cached for it (PART with mask refresh s > 1): one gather does both.
"""

import torch
import torch.nn.functional as F


def crop_flip(tensor, offsets, flips, padding=4, fill=0):
    """Crop every (padded) image of ``tensor`` at its own offset, then mirror the flipped ones.

    :param tensor: (B, C, H, W), any dtype (images, maps, boolean masks).
    :param offsets: (B, 2) integer (row, column) offsets into the padded image, each in [0, 2 * padding].
    :param flips: (B,) boolean, True to mirror horizontally.
    :param padding: zero padding on every side, as ``torchvision.transforms.RandomCrop(32, padding=4)``.
    :param fill: value of the padding.
    :return: tensor of the input's shape and dtype.
    """
    b, _, h, w = tensor.shape
    padded = F.pad(tensor, (padding,) * 4, value=fill) if padding else tensor
    rows = offsets[:, :1] + torch.arange(h, device=tensor.device)  # (B, H)
    steps = torch.arange(w, device=tensor.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - steps, steps)  # (B, W), mirrored where flipped
    batch = torch.arange(b, device=tensor.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def draw_crop_flip(batch_size, padding=4, device="cpu", generator=None):
    """Random offsets (B, 2) in [0, 2 * padding] and flips (B,) with probability 1/2."""
    offsets = torch.randint(0, 2 * padding + 1, (batch_size, 2), device=device, generator=generator)
    flips = torch.rand(batch_size, device=device, generator=generator) < 0.5
    return offsets, flips
