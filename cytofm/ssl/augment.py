"""Multi-crop views for cytology, made for a whole batch at once on the patches' device.

The work is split in two so the GPU never waits for the CPU:

- :func:`draw_view_params` runs in the DataLoader workers. It turns each image's generator
  (seeded from (seed, step, position in the global batch)) into a few numbers per view: the
  crop box, a flip and quarter turns, the HED stain scale/shift, brightness/contrast and a blur
  sigma. A step's views are therefore a function of (seed, step) alone, whatever the number of
  workers or processes, and a resumed job sees exactly the views an uninterrupted one would.
- :class:`ViewMaker` runs where the uint8 patches are (the GPU in training, the CPU in tests
  and the demo) and makes every view of the batch with batched tensor operations: crop +
  resize + flip/turn as two batched matrix products per view (the rows of the matrices are the
  antialiased bilinear weights ``F.interpolate(..., antialias=True)`` uses, so the result is
  that resize of the crop), stain jitter as a per-image 3x3 map in optical-density space,
  brightness/contrast as arithmetic, blur as one grouped convolution.

What the views do: every crop keeps the patch centre (where the cell's nucleus is) inside it,
so no view loses the cell; flips and 90-degree turns (cells have no up); HED-space stain jitter
(stain varies between labs and batches); mild brightness/contrast and blur (focus varies across
a smear). :func:`reference_view` spells the same views out image by image with the plain
torch operations; it is the specification the tests hold the batched maker to, and the
per-image cost the throughput benchmark compares against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

__all__ = [
    "N_GLOBAL",
    "ViewMaker",
    "ViewParams",
    "draw_view_params",
    "reference_view",
]

N_GLOBAL = 2  # global views per image (iBOT's two teacher views)
MIN_CROP_PX = 4  # no crop side below this many patch pixels

# Ruifrok & Johnston haematoxylin-eosin-DAB stain matrix (rows: H, E, D in RGB OD space)
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_N_UNIFORMS = 16  # uniforms drawn per view (fixed, so each parameter has its own stream)


class ViewParams(NamedTuple):
    """Every random choice of one step's views; V views (globals first), B images each."""

    boxes: torch.Tensor  # int64 (V, B, 4): x0, y0, width, height in patch pixels
    dihedral: torch.Tensor  # int64 (V, B): horizontal flip (bit 0) + 2 * quarter turns
    color: torch.Tensor  # float32 (V, B, 8): HED scale (3), HED shift (3), brightness, contrast
    blur: torch.Tensor  # float32 (V, B): Gaussian sigma in view pixels; 0 = no blur

    def to(self, device, non_blocking: bool = False) -> ViewParams:
        return ViewParams(*(t.to(device, non_blocking=non_blocking) for t in self))


def _crop_boxes(u: torch.Tensor, side: int, scale, keep_centre: float) -> torch.Tensor:
    """(n, 4) float64 uniforms -> (n, 4) int64 boxes x0, y0, w, h inside a ``side`` patch that
    hold its central ``keep_centre`` fraction (when the crop is big enough to)."""
    lo, hi = float(scale[0]), float(scale[1])
    area = side * side * (lo + (hi - lo) * u[:, 0])
    log_aspect = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    aspect = torch.exp(log_aspect)
    w = torch.round(torch.sqrt(area * aspect).clamp(min=MIN_CROP_PX).clamp(max=side))
    h = torch.round(torch.sqrt(area / aspect).clamp(min=MIN_CROP_PX).clamp(max=side))
    keep, c = keep_centre * side / 2, side / 2

    def start(length: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        first = torch.ceil(c + keep - length).clamp(min=0)
        last = torch.minimum(side - length, torch.full_like(length, math.floor(c - keep)))
        fixed = first > last  # too small to hold the centre band: centred
        first = torch.where(fixed, torch.round(c - length / 2), first)
        last = torch.where(fixed, first, last)
        return torch.minimum(first + torch.floor(v * (last - first + 1)), last)

    return torch.stack([start(w, u[:, 2]), start(h, u[:, 3]), w, h], 1).long()


def draw_view_params(
    generators: list[torch.Generator],
    crops,
    side: int,
) -> ViewParams:
    """The views of B images (one generator each) of ``side``-pixel patches; ``crops`` is the
    ``pretrain.crops`` section. Cheap (a few microseconds per image): it runs in the workers."""
    n_views = N_GLOBAL + crops.n_local
    u = torch.stack(
        [torch.rand(n_views, _N_UNIFORMS, generator=g, dtype=torch.float64) for g in generators], 1
    )  # (V, B, K)
    v = u.shape[0]
    scales = [crops.global_scale] * N_GLOBAL + [crops.local_scale] * crops.n_local
    boxes = torch.stack([_crop_boxes(u[i], side, scales[i], crops.keep_centre) for i in range(v)])
    flip = (u[..., 4] < 0.5).long()
    turns = torch.floor(u[..., 5] * 4).clamp(max=3).long()
    s = crops.hed_sigma
    hed_scale = 1 - s + 2 * s * u[..., 6:9]
    hed_shift = -s + 2 * s * u[..., 9:12]
    b, c, (lo, hi) = crops.brightness, crops.contrast, crops.blur_sigma
    bright = 1 - b + 2 * b * u[..., 12:13]
    contrast = 1 - c + 2 * c * u[..., 13:14]
    sigma = lo + (hi - lo) * u[..., 15]
    blur = torch.where(u[..., 14] < crops.blur_prob, sigma, torch.zeros_like(sigma))
    color = torch.cat([hed_scale, hed_shift, bright, contrast], -1)
    return ViewParams(boxes, flip + 2 * turns, color.float(), blur.float())


def _blur_kernel(sigma: float) -> torch.Tensor:
    radius = max(int(math.ceil(3 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def reference_view(
    img: torch.Tensor,
    box,
    dihedral: int,
    color,
    blur: float,
    size: int,
    hed: bool,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """One view of one (3, H, W) image in [0, 1], made step by step with plain torch
    operations: the specification of :class:`ViewMaker` (training never calls it)."""
    x0, y0, w, h = (int(v) for v in box)
    crop = img[:, y0 : y0 + h, x0 : x0 + w]
    crop = F.interpolate(
        crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]
    if int(dihedral) & 1:
        crop = crop.flip(-1)
    crop = torch.rot90(crop, int(dihedral) // 2, dims=(1, 2))
    color = torch.as_tensor(color, dtype=torch.float32)
    if hed:
        od = -torch.log(crop.clamp(min=1e-3))  # (3, H, W)
        stains = torch.einsum("ij,jhw->ihw", _HED_FROM_RGB.T.contiguous(), od)
        stains = stains * color[0:3].view(3, 1, 1) + color[3:6].view(3, 1, 1)
        od = torch.einsum("ij,jhw->ihw", _RGB_FROM_HED.T.contiguous(), stains)
        crop = torch.exp(-od).clamp(0, 1)
    m = crop.mean()
    crop = ((crop - m) * color[7] + m) * color[6]
    if blur > 0:
        k = _blur_kernel(float(blur))
        r = (len(k) - 1) // 2
        x = F.pad(crop[None], (r, r, 0, 0), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        x = F.pad(x, (0, 0, r, r), mode="reflect")
        crop = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    crop = crop.clamp(0, 1)
    return (crop - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def resize_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    out: int,
    side: int,
    reverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, out, side) float32 weights that resample samples [start, start + length) of a
    ``side``-long axis to ``out`` samples: the antialiased bilinear (triangle) filter of
    ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``, zero outside the
    crop; ``reverse`` (n,) bool: output samples in reverse order (a flip). ``start``/``length``:
    (n,) integer tensors."""
    dev = start.device
    length = length.double()
    scale = (length / out)[:, None]  # (n, 1)
    support = torch.where(scale >= 1, scale, torch.ones_like(scale))
    inv = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    centre = scale * (torch.arange(out, device=dev, dtype=torch.float64) + 0.5)  # (n, out)
    first = torch.trunc(centre - support + 0.5).clamp(min=0)
    last = torch.minimum(torch.trunc(centre + support + 0.5), length[:, None])
    if reverse is not None:
        r = reverse[:, None]
        centre, first, last = (torch.where(r, t.flip(1), t) for t in (centre, first, last))
    # (n, out, side) in float32 from here: positions in the crop, then the triangle filter
    j = (torch.arange(side, device=dev) - start[:, None]).float()[:, None, :]
    offset = (0.5 - centre).float()[..., None]
    w = (1 - ((j + offset) * inv.float()[..., None]).abs()).clamp_(min=0)
    w *= (j >= first.float()[..., None]) & (j < last.float()[..., None])
    return w / w.sum(-1, keepdim=True).clamp_(min=1e-12)


class ViewMaker:
    """uint8 (B, H, W, 3) patches + :class:`ViewParams` -> normalised global (G*B, 3, g, g)
    and local (L*B, 3, l, l) views, view-major (every image's first view, then every image's
    second view...), on the patches' device."""

    def __init__(self, crops, mean, std):
        self.global_size = int(crops.global_size)
        self.local_size = int(crops.local_size)
        self.n_local = int(crops.n_local)
        self.hed = crops.hed_sigma > 0
        self.blur_max = float(crops.blur_sigma[1])
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._constants: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """mean, std, R^T, H^T on ``device``, copied there once (od' = R^T diag(a) H^T od +
        R^T b is the stain jitter in optical density)."""
        if device not in self._constants:
            self._constants[device] = tuple(
                t.to(device)
                for t in (
                    self.mean,
                    self.std,
                    _RGB_FROM_HED.T.contiguous(),
                    _HED_FROM_RGB.T.contiguous(),
                )
            )
        return self._constants[device]

    @torch.no_grad()
    def __call__(
        self, patches: torch.Tensor, params: ViewParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, _ = patches.shape
        if h != w:
            raise ValueError(f"multi-crop views need square patches, got {h}x{w}")
        imgs = patches.reshape(b, h, w * 3).float()  # (B, S, S * 3): pixel rows, channels last
        views = []
        for v in range(params.boxes.shape[0]):
            size = self.global_size if v < N_GLOBAL else self.local_size
            views.append(self._views(imgs, ViewParams(*(t[v] for t in params)), size))
        local = (
            torch.cat(views[N_GLOBAL:])
            if self.n_local
            else imgs.new_zeros(0, 3, self.local_size, self.local_size)
        )
        return torch.cat(views[:N_GLOBAL]), local

    def _views(self, imgs: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
        """One view of every image: (B, S, S * 3) pixel rows -> (B, 3, size, size) normalised.

        The view is ``left @ image @ right^T`` per channel, with the crop's resize weights
        along y (left) and x (right): two batched matrix products. Flips and quarter turns only
        reverse the order of a matrix's outputs and transpose the result."""
        b, side = imgs.shape[0], imgs.shape[1]
        boxes = p.boxes
        # The view is R img C^T (R: y weights, C: x weights), each possibly in reverse order. A
        # turn maps (R, C) to (C reversed, R) with the image transposed; whatever the turns,
        # the left matrix always weighs y and the right one x, so only their orders change.
        r_rev, c_rev = torch.zeros_like(p.dihedral, dtype=torch.bool), (p.dihedral & 1).bool()
        turns, transposed = p.dihedral // 2, torch.zeros_like(r_rev)
        for t in range(1, 4):
            on = turns >= t
            r_rev, c_rev = torch.where(on, ~c_rev, r_rev), torch.where(on, r_rev, c_rev)
            transposed = transposed ^ on
        # transposed: out = (C img R^T)^T, so the left (y) matrix is C, the right (x) one R
        y_rev = torch.where(transposed, c_rev, r_rev)
        x_rev = torch.where(transposed, r_rev, c_rev)
        # (B, size, S) each; uint8 -> [0, 1] folded into the left one
        left = resize_weights(boxes[:, 1], boxes[:, 3], size, side, y_rev) / 255
        right = resize_weights(boxes[:, 0], boxes[:, 2], size, side, x_rev)
        x = torch.bmm(left, imgs)  # (B, size, S * 3): rows of (x, channel) pairs
        x = x.view(b, size, side, 3).transpose(2, 3).reshape(b, size * 3, side)
        x = torch.bmm(x, right.transpose(1, 2))  # (B, size * 3, size)
        x = x.view(b, size, 3, size).permute(0, 2, 1, 3).contiguous()  # (B, 3, size, size)
        x = torch.where(transposed[:, None, None, None], x.transpose(-1, -2), x)
        color = p.color
        mean, std, rgb_t, hed_t = self._on(x.device)
        if self.hed:
            a, c = color[:, 0:3], color[:, 3:6]
            stain = rgb_t[None] * a[:, None, :] @ hed_t  # (B, 3, 3)
            shift = c @ rgb_t.T  # (B, 3)
            od = torch.log(x.clamp_(min=1e-3)).neg_()
            od = torch.einsum("bij,bjhw->bihw", stain, od).add_(shift[:, :, None, None])
            x = torch.exp(od.neg_()).clamp_(0, 1)
        m = x.mean((1, 2, 3), keepdim=True)
        x = (
            x.sub_(m)
            .mul_(color[:, 7, None, None, None])
            .add_(m)
            .mul_(color[:, 6, None, None, None])
        )
        x = self._blur(x, p.blur, self.blur_max)
        x = x.clamp_(0, 1)
        return x.sub_(mean).div_(std)

    @staticmethod
    def _blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
        """Separable Gaussian blur, one grouped convolution per axis for the whole batch; each
        kernel is cut at its own radius ceil(3 sigma) and the image padded by reflection, and
        sigma 0 is the identity. Shapes are fixed by the config (no host-device sync)."""
        big = max(int(math.ceil(3 * sigma_max)), 1)
        taps = torch.arange(-big, big + 1, device=x.device, dtype=torch.float64)
        s = sigma.double().clamp(min=1e-6)[:, None]
        k = torch.exp(-(taps[None] ** 2) / (2 * s**2))
        k = k * (taps[None].abs() <= torch.ceil(3 * s).clamp(min=1))
        k = torch.where((sigma > 0)[:, None], k, (taps == 0).double()[None])
        k = (k / k.sum(1, keepdim=True)).float().repeat_interleave(3, 0)  # (B * 3, 2 * big + 1)
        b, c, h, w = x.shape
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (big, big, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, big, big), mode="reflect"), k[:, None, :, None], groups=b * c)
        return y.view(b, c, h, w)
