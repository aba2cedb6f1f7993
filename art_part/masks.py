"""Per-sample importance masks for PART with mask refresh s > 1 (paper section 4.5).

The released code kept masks in a list indexed by *batch number* and re-shuffled the loader between the mask pass
and the training pass, so every batch was trained with another batch's masks. Here masks are indexed by *sample*:
computed on the un-augmented images at each refresh epoch, and each batch applies to its cached masks exactly the
crop and flip applied to its images.
"""

import torch

from .augment import crop_flip


class MaskCache:
    """Boolean importance masks (N, c, H, W) for the N training samples, on the device.

    :param num_samples: number of training samples N.
    :param shape: (c, H, W) of one mask: c = 1, or 3 for the "jet" rule.
    :param device: where masks live (the training device).
    """

    def __init__(self, num_samples, shape, device):
        self.masks = torch.ones((num_samples, *shape), dtype=torch.bool, device=device)
        #: Epoch of the last refresh, or None before the first.
        self.refreshed_at = None
        #: Fraction of entries marked important at the last refresh (a 0-dim tensor; only the samples refreshed).
        self.important_fraction = None

    def refresh(self, important, batches, epoch):
        """Recompute every mask: ``important(images)`` -> masks, over ``batches`` of (un-augmented images, indices)."""
        marked = total = 0
        for images, indices in batches:
            mask = important(images)
            self.masks[indices] = mask
            marked, total = marked + mask.sum(), total + mask.numel()
        self.refreshed_at = epoch
        self.important_fraction = marked / max(total, 1)

    def lookup(self, indices, offsets=None, flips=None, padding=4):
        """The masks of ``indices``, moved by the batch's crop ``offsets`` and ``flips``.

        The zero padding a crop brings in is unimportant, except in an all-important mask (a degenerate CAM, which
        means eps everywhere): that one stays all-important.
        """
        masks = self.masks[indices]
        if offsets is None:
            return masks
        moved = crop_flip(masks, offsets, flips, padding, fill=False)
        return moved | masks.flatten(1).all(dim=1).view(-1, *([1] * (masks.dim() - 1)))

    def state_dict(self):
        return {"masks": self.masks, "refreshed_at": self.refreshed_at, "important_fraction": self.important_fraction}

    def load_state_dict(self, state):
        if tuple(state["masks"].shape) != tuple(self.masks.shape):
            raise ValueError(f"checkpoint masks have shape {tuple(state['masks'].shape)}, "
                             f"expected {tuple(self.masks.shape)}: resume with the same data")
        self.masks.copy_(state["masks"])
        self.refreshed_at = state["refreshed_at"]
        self.important_fraction = state.get("important_fraction")
