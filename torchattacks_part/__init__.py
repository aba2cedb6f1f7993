"""PART's attacks for torchattacks: Pixel-AG and MMA with a per-pixel budget from class activation maps.

The math lives here once (``cam``, ``budget``, ``step``, ``losses``); ``art_part`` adapts it to ART.
"""

from .apgd import auto_pgd
from .budget import (QUARTERS, RULES, budget_from_importance, budget_map, degenerate_maps, important_pixels,
                     importance, quadrant_mask)
from .cam import CAM_METHODS, cam_maps
from .mixing import MixedClassifier
from .mma import MMA
from .mma_eval import MMAEval
from .pixel_ag import ADAPTIVE_EPS, ADAPTIVE_EPS_LOW, PixelAG

__all__ = [
    "ADAPTIVE_EPS",
    "ADAPTIVE_EPS_LOW",
    "CAM_METHODS",
    "MMA",
    "MMAEval",
    "MixedClassifier",
    "PixelAG",
    "QUARTERS",
    "RULES",
    "auto_pgd",
    "budget_from_importance",
    "budget_map",
    "cam_maps",
    "degenerate_maps",
    "important_pixels",
    "importance",
    "quadrant_mask",
]
