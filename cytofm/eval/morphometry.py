"""Hand-made cytology measurements as a backbone: the control a cytopathologist would name.

A pretrained backbone should beat random weights, but also what a cytotechnologist reads off
a cell without any learning: the nucleus's size, shape, darkness and chromatin, the cell's size
and the stain it takes up. Backbone kind ``morphometry`` measures these per patch (no weights,
no training) so every results table says whether the learned features add anything to them.

Per patch (a cell centred in it, as the cells stage and dataset imports cut them), at the
patch's um/px (the store's ``mpp``; pixel units, with a warning, when it has none):

* the **nucleus**: the connected component of dark pixels (optical density above the patch's
  Otsu threshold) nearest the centre, with scikit-image's region properties: area (um2),
  perimeter (um), eccentricity, solidity, mean darkness (optical density), chromatin texture
  (the standard deviation of optical density inside it) and granularity (mean absolute
  Laplacian of optical density inside it);
* the **cell**: the stained area (optical density above that of clear glass, 0.06), the
  nucleus-to-cell area ratio;
* **stain uptake** in the haematoxylin-eosin-DAB space (scikit-image's colour deconvolution):
  mean haematoxylin and eosin of the nucleus and of the rest of the cell;
* whether a nucleus was found (1/0); the nucleus features are 0 when none was.

14 features; the linear probe standardises them, kNN compares them as they are.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
from torch import nn

__all__ = ["FEATURES", "Morphometry", "measure_patch"]

log = logging.getLogger(__name__)

FEATURES = (
    "nucleus_area_um2",
    "nucleus_perimeter_um",
    "nucleus_eccentricity",
    "nucleus_solidity",
    "nucleus_darkness",
    "chromatin_texture",
    "chromatin_granularity",
    "cell_area_um2",
    "nucleus_to_cell_ratio",
    "nucleus_haematoxylin",
    "nucleus_eosin",
    "cytoplasm_haematoxylin",
    "cytoplasm_eosin",
    "nucleus_found",
)
GLASS_OD = 0.06  # mean optical density of clear glass stays below this
VERSION = "morphometry-1"  # the measurements' definition: part of the backbone's identity


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(rgb.astype(np.float64) / 255.0, 1 / 255.0, 1.0))


def measure_patch(rgb: np.ndarray, mpp: float = 1.0) -> np.ndarray:
    """The :data:`FEATURES` of one uint8 (H, W, 3) patch whose pixels are ``mpp`` um wide."""
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    od = _optical_density(rgb)
    dark = od.mean(-1)
    cell = dark > GLASS_OD
    out = np.zeros(len(FEATURES), np.float32)
    out[FEATURES.index("cell_area_um2")] = cell.sum() * mpp**2
    hed = rgb2hed(rgb)
    if dark.max() - dark.min() < 1e-6:
        return out
    nucleus_mask = (dark > threshold_otsu(dark)) & cell
    labels = label(nucleus_mask)
    regions = [r for r in regionprops(labels, intensity_image=dark) if r.area >= 4]
    if not regions:
        return out
    centre = (np.array(dark.shape) - 1) / 2
    region = min(regions, key=lambda r: float(np.hypot(*(np.array(r.centroid) - centre))))
    inside = labels == region.label
    lap = np.abs(ndimage.laplace(dark))
    rest = cell & ~inside
    values = {
        "nucleus_area_um2": region.area * mpp**2,
        "nucleus_perimeter_um": region.perimeter * mpp,
        "nucleus_eccentricity": region.eccentricity,
        "nucleus_solidity": region.solidity,
        "nucleus_darkness": dark[inside].mean(),
        "chromatin_texture": dark[inside].std(),
        "chromatin_granularity": lap[inside].mean(),
        "nucleus_to_cell_ratio": region.area / max(int(cell.sum()), 1),
        "nucleus_haematoxylin": hed[..., 0][inside].mean(),
        "nucleus_eosin": hed[..., 1][inside].mean(),
        "cytoplasm_haematoxylin": hed[..., 0][rest].mean() if rest.any() else 0.0,
        "cytoplasm_eosin": hed[..., 1][rest].mean() if rest.any() else 0.0,
        "nucleus_found": 1.0,
    }
    for name, value in values.items():
        out[FEATURES.index(name)] = value
    return out


class Morphometry(nn.Module):
    """(N, 3, H, W) images in [0, 1] (the preprocessing of this kind: no resizing, mean 0,
    std 1) -> (N, 14) measurements; runs on the CPU whatever the input's device."""

    num_features = len(FEATURES)
    traceable = False  # scikit-image inside: no TorchScript copy

    def __init__(self, mpp: float | None = None):
        super().__init__()
        self.mpp = mpp

    def set_mpp(self, mpp: float | None) -> None:
        """The patches' um/px (from the store being embedded)."""
        self.mpp = mpp

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.detach().float().clamp(0, 1) * 255).round().byte()
        rgb = rgb.permute(0, 2, 3, 1).cpu().numpy()
        mpp = float(self.mpp) if self.mpp else 1.0
        feats = np.zeros((len(rgb), self.num_features), np.float32)
        for i, im in enumerate(rgb):
            feats[i] = measure_patch(im, mpp)
        return torch.from_numpy(feats).to(x.device)


def identity_sha256() -> str:
    """Stands for weights in the backbone's identity: the measurements' definition."""
    return hashlib.sha256((VERSION + "|" + ",".join(FEATURES)).encode()).hexdigest()
