"""Per-sample importance masks for PART with mask refresh s > 1 (paper section 4.5).

The released code kept masks in a list indexed by *batch number* and re-shuffled the loader between the mask pass
and the training pass, so every batch was trained with another batch's masks. Here masks are indexed by *sample*:
computed on the un-augmented images at each refresh epoch, and each batch applies to its cached masks exactly the
crop and flip applied to its images. The binary rules cache one bit per entry; rule "linear" caches its float32
importance map in [0, 1] (the budget is continuous, a bit would lose it).
"""

import torch

from torchattacks_part.budget import BINARY_RULES

from .augment import crop_flip


def mask_dtype(rule):
    """The dtype a :class:`MaskCache` holds for ``rule``: float32 maps for "linear", bits for the binary rules."""
    return torch.bool if rule in BINARY_RULES else torch.float32


class MaskCache:
    """Importance masks (N, c, H, W) for the N training samples, on the device: boolean, or float32 maps in [0, 1].

    :param num_samples: number of training samples N.
    :param shape: (c, H, W) of one mask: c = 1, or 3 for the "jet" rule.
    :param device: where masks live (the training device).
    :param dtype: ``torch.bool`` (the binary rules) or ``torch.float32`` (rule "linear"; see :func:`mask_dtype`).
    """

    def __init__(self, num_samples, shape, device, dtype=torch.bool):
        if dtype not in (torch.bool, torch.float32):
            raise ValueError(f"dtype must be torch.bool or torch.float32, got {dtype!r}")
        # Before the first refresh every entry is important (all ones): eps everywhere, as for a degenerate CAM.
        self.masks = torch.ones((num_samples, *shape), dtype=dtype, device=device)
        #: Epoch of the last refresh, or None before the first.
        self.refreshed_at = None
        #: Fraction of entries marked important at the last refresh (a 0-dim tensor; only the samples refreshed).
        #: For float maps: the entries at 1, i.e. at the full eps.
        self.important_fraction = None

    def refresh(self, important, batches, epoch):
        """Recompute every mask: ``important(images)`` -> masks, over ``batches`` of (un-augmented images, indices)."""
        marked = total = 0
        for images, indices in batches:
            mask = important(images)
            if mask.is_floating_point() and self.masks.dtype == torch.bool:
                # The assignment would cast every map value > 0 to True: eps nearly everywhere, silently.
                raise TypeError("important(images) returned a float map, but this cache holds boolean masks: build "
                                "it with dtype=torch.float32 (rule 'linear')")
            self.masks[indices] = mask
            marked, total = marked + (mask >= 1).sum(), total + mask.numel()
        self.refreshed_at = epoch
        self.important_fraction = marked / max(total, 1)

    def lookup(self, indices, offsets=None, flips=None, padding=4):
        """The masks of ``indices``, moved by the batch's crop ``offsets`` and ``flips``.

        The zero padding a crop brings in is unimportant (False, or 0 in a float map), except in an all-important
        mask (a degenerate CAM, which means eps everywhere; all ones in a float map): that one stays all-important.
        """
        masks = self.masks[indices]
        if offsets is None:
            return masks
        moved = crop_flip(masks, offsets, flips, padding, fill=0)
        full = (masks >= 1).flatten(1).all(dim=1).view(-1, *([1] * (masks.dim() - 1)))
        return torch.where(full, masks, moved)

    def state_dict(self):
        return {"masks": self.masks, "refreshed_at": self.refreshed_at, "important_fraction": self.important_fraction}

    def load_state_dict(self, state):
        if tuple(state["masks"].shape) != tuple(self.masks.shape):
            raise ValueError(f"checkpoint masks have shape {tuple(state['masks'].shape)}, "
                             f"expected {tuple(self.masks.shape)}: resume with the same data")
        if state["masks"].dtype != self.masks.dtype:
            raise ValueError(f"checkpoint masks have dtype {state['masks'].dtype}, expected {self.masks.dtype}: "
                             f"resume with the same rule (float maps are rule 'linear', boolean masks the others)")
        self.masks.copy_(state["masks"])
        self.refreshed_at = state["refreshed_at"]
        self.important_fraction = state.get("important_fraction")
