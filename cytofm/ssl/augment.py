"""Multi-crop views with augmentations that suit cytology.

Every crop keeps the patch centre (where the cell's nucleus is) inside it, so no view loses the
cell; flips and 90-degree rotations (cells have no up), HED-space stain jitter (stain varies
between labs and batches), mild brightness/contrast and blur (focus varies across a smear).
All randomness comes from the ``torch.Generator`` passed in, so a step's views are a function
of (seed, step) alone and a resumed job sees exactly the views an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = ["AugmentConfig", "MultiCrop", "hed_jitter"]

# Ruifrok & Johnston haematoxylin-eosin-DAB stain matrix (rows: H, E, D in RGB OD space)
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    global_size: int = 64
    local_size: int = 32
    n_global: int = 2
    n_local: int = 4
    global_scale: tuple[float, float] = (0.5, 1.0)
    local_scale: tuple[float, float] = (0.15, 0.45)
    keep_centre: float = 0.15  # fraction of the patch side around the centre every crop holds
    hed_sigma: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.0)


def _rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def hed_jitter(img: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Scale and shift each of the H, E, D stain concentrations of a (3, H, W) image in [0, 1]."""
    od = -torch.log(img.clamp(min=1e-3))  # (3, H, W)
    hed = torch.einsum("ij,jhw->ihw", _HED_FROM_RGB.T.contiguous(), od)
    alpha = _rand(g, 1 - sigma, 1 + sigma, 3).view(3, 1, 1)
    beta = _rand(g, -sigma, sigma, 3).view(3, 1, 1)
    hed = hed * alpha + beta
    od = torch.einsum("ij,jhw->ihw", _RGB_FROM_HED.T.contiguous(), hed)
    return torch.exp(-od).clamp(0, 1)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(int(math.ceil(3 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    img = img[None]  # (1, 3, H, W)
    img = F.conv2d(
        F.pad(img, (radius, radius, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).expand(3, 1, 1, -1),
        groups=3,
    )
    img = F.conv2d(
        F.pad(img, (0, 0, radius, radius), mode="reflect"),
        k.view(1, 1, -1, 1).expand(3, 1, -1, 1),
        groups=3,
    )
    return img[0]


class MultiCrop:
    """uint8 (B, H, W, 3) patches -> normalised global (G*B, 3, g, g) and local (L*B, 3, l, l)
    crops, view-major (all images' first view, then all images' second view...)."""

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        self.cfg = cfg
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def _crop_box(self, side: int, scale: tuple[float, float], g: torch.Generator):
        area = side * side * float(_rand(g, *scale))
        aspect = math.exp(float(_rand(g, math.log(3 / 4), math.log(4 / 3))))
        w = int(round(min(max(math.sqrt(area * aspect), 4), side)))
        h = int(round(min(max(math.sqrt(area / aspect), 4), side)))
        keep = self.cfg.keep_centre * side / 2
        c = side / 2
        # the crop must hold [c - keep, c + keep] in both axes (when it is big enough)
        x_lo, x_hi = max(0, math.ceil(c + keep - w)), min(side - w, math.floor(c - keep))
        y_lo, y_hi = max(0, math.ceil(c + keep - h)), min(side - h, math.floor(c - keep))
        if x_lo > x_hi:
            x_lo = x_hi = int(round(c - w / 2))
        if y_lo > y_hi:
            y_lo = y_hi = int(round(c - h / 2))
        x0 = int(torch.randint(x_lo, x_hi + 1, (1,), generator=g))
        y0 = int(torch.randint(y_lo, y_hi + 1, (1,), generator=g))
        return x0, y0, w, h

    def _view(self, img: torch.Tensor, size: int, scale, g: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        x0, y0, w, h = self._crop_box(img.shape[-1], scale, g)
        crop = img[:, y0 : y0 + h, x0 : x0 + w]
        crop = F.interpolate(
            crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        if float(_rand(g)) < 0.5:
            crop = crop.flip(-1)
        crop = torch.rot90(crop, int(torch.randint(0, 4, (1,), generator=g)), dims=(1, 2))
        if cfg.hed_sigma > 0:
            crop = hed_jitter(crop, cfg.hed_sigma, g)
        b = float(_rand(g, 1 - cfg.brightness, 1 + cfg.brightness))
        c = float(_rand(g, 1 - cfg.contrast, 1 + cfg.contrast))
        mean = crop.mean()
        crop = ((crop - mean) * c + mean) * b
        if float(_rand(g)) < cfg.blur_prob:
            crop = _gaussian_blur(crop, float(_rand(g, *cfg.blur_sigma)))
        crop = crop.clamp(0, 1)
        return (crop - self.mean) / self.std

    def __call__(
        self, batch: torch.Tensor, g: torch.Generator | Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``g``: one generator for the batch, or one per image (its views then depend on that
        image's generator alone, whatever else is in the batch)."""
        cfg = self.cfg
        imgs = batch.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
        gens = [g] * len(imgs) if isinstance(g, torch.Generator) else list(g)
        if len(gens) != len(imgs):
            raise ValueError(f"{len(gens)} generators for {len(imgs)} images")
        globals_ = [
            torch.stack(
                [
                    self._view(im, cfg.global_size, cfg.global_scale, gi)
                    for im, gi in zip(imgs, gens, strict=True)
                ]
            )
            for _ in range(cfg.n_global)
        ]
        locals_ = [
            torch.stack(
                [
                    self._view(im, cfg.local_size, cfg.local_scale, gi)
                    for im, gi in zip(imgs, gens, strict=True)
                ]
            )
            for _ in range(cfg.n_local)
        ]
        local = torch.cat(locals_) if locals_ else torch.zeros(0, 3, cfg.local_size, cfg.local_size)
        return torch.cat(globals_), local
