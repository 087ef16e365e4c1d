"""Cell classes that differ in morphology, and a renderer that draws them in optical density.

Four classes loosely follow a cervical Pap smear:

============  =========  ==============  =====================================================
class         cell (um)  nucleus (um)    what tells it apart
============  =========  ==============  =====================================================
squamous      r 18-26    r 2.6-3.6       large flat cell, small round nucleus, low N:C, fine
                                         chromatin
lymphocyte    r 4.5-5.5  r 3.3-4.0       small round cell, dense round nucleus, scant cytoplasm
koilocyte     r 15-21    r 4.2-5.2       enlarged nucleus, often two nuclei, clear perinuclear
                                         halo with a dense rim
dysplastic    r 7.5-10   r 5.0-6.8       high N:C, irregular nuclear contour, coarse clumped
                                         chromatin, hyperchromasia
============  =========  ==============  =====================================================

Cytoplasm colour (cyanophilic vs eosinophilic) is drawn per cell independently of the class,
and stain vectors vary per slide (:class:`SlideStain`), so colour is a nuisance, not a label.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cytofm.synthetic.stain import SlideStain

__all__ = [
    "ABNORMAL_CLASSES",
    "CELL_CLASSES",
    "CellSpec",
    "render_cell",
    "render_debris",
    "sample_cell",
]

CELL_CLASSES: tuple[str, ...] = ("squamous", "lymphocyte", "koilocyte", "dysplastic")
ABNORMAL_CLASSES: tuple[str, ...] = ("dysplastic",)


@dataclasses.dataclass(frozen=True)
class Nucleus:
    dx_um: float  # offset of the nucleus centre from the cell centre
    dy_um: float
    radius_um: float
    aspect: float
    angle: float
    harmonics: np.ndarray  # (k, 3): harmonic order, amplitude, phase of the contour
    density: float
    grain_um: float
    contrast: float


@dataclasses.dataclass(frozen=True)
class CellSpec:
    cls: str
    radius_um: float
    aspect: float
    angle: float
    harmonics: np.ndarray
    cyto_density: float
    cyto_mix: float  # 0 = eosinophilic, 1 = cyanophilic
    nuclei: tuple[Nucleus, ...]
    halo: float  # perinuclear halo radius as a multiple of the nucleus radius (0 = none)

    @property
    def centroid_um(self) -> tuple[float, float]:
        """Nuclear centroid relative to the cell centre: the point a detector should find."""
        xs = [n.dx_um for n in self.nuclei]
        ys = [n.dy_um for n in self.nuclei]
        return float(np.mean(xs)), float(np.mean(ys))

    @property
    def extent_um(self) -> float:
        """Radius of a circle, about the cell centre, that holds the whole cell."""
        amp = float(np.abs(self.harmonics[:, 1]).sum()) if len(self.harmonics) else 0.0
        cell = self.radius_um * (1.0 + amp)
        nuc = max(np.hypot(n.dx_um, n.dy_um) + n.radius_um * 1.4 for n in self.nuclei)
        return max(cell, nuc) + 1.0


def _harmonics(rng: np.random.Generator, orders: range, amp: tuple[float, float]) -> np.ndarray:
    ks = np.array(list(orders), dtype=float)
    amps = rng.uniform(*amp, size=len(ks)) / np.sqrt(len(ks))
    phases = rng.uniform(0, 2 * np.pi, size=len(ks))
    return np.stack([ks, amps, phases], axis=1)


def sample_cell(cls: str, rng: np.random.Generator) -> CellSpec:
    """Draw the morphology of one cell of class ``cls``."""
    u = rng.uniform
    if cls == "squamous":
        r, nr = u(18, 26), u(2.6, 3.6)
        nuc = dict(density=u(1.1, 1.4), grain_um=0.4, contrast=0.15, aspect=u(0.85, 1.0))
        nuc_h, cell_h = _harmonics(rng, range(2, 4), (0.0, 0.04)), (0.03, 0.09)
        n_nuclei, cyto, halo, aspect = 1, u(0.16, 0.28), 0.0, u(0.7, 1.0)
    elif cls == "lymphocyte":
        r, nr = u(4.5, 5.5), u(3.3, 4.0)
        nuc = dict(density=u(1.3, 1.6), grain_um=0.5, contrast=0.2, aspect=u(0.88, 1.0))
        nuc_h, cell_h = _harmonics(rng, range(2, 4), (0.0, 0.04)), (0.0, 0.03)
        n_nuclei, cyto, halo, aspect = 1, u(0.25, 0.35), 0.0, u(0.9, 1.0)
    elif cls == "koilocyte":
        r, nr = u(15, 21), u(4.2, 5.2)
        nuc = dict(density=u(1.0, 1.3), grain_um=0.5, contrast=0.25, aspect=u(0.8, 1.0))
        nuc_h, cell_h = _harmonics(rng, range(2, 5), (0.03, 0.08)), (0.05, 0.1)
        n_nuclei = 2 if rng.random() < 0.5 else 1
        cyto, halo, aspect = u(0.22, 0.32), u(2.0, 2.5), u(0.75, 1.0)
    elif cls == "dysplastic":
        r, nr = u(7.5, 10.0), u(5.0, 6.8)
        nuc = dict(density=u(1.3, 1.7), grain_um=1.0, contrast=0.55, aspect=u(0.7, 1.0))
        nuc_h, cell_h = _harmonics(rng, range(2, 7), (0.12, 0.22)), (0.03, 0.08)
        n_nuclei, cyto, halo, aspect = 1, u(0.3, 0.45), 0.0, u(0.75, 1.0)
    else:
        raise ValueError(f"unknown cell class {cls!r}; expected one of {CELL_CLASSES}")

    nuclei = []
    if n_nuclei == 1:
        room = max(r * aspect - nr, 0.0) * 0.3
        theta = u(0, 2 * np.pi)
        offsets = [(room * u(0, 1) * np.cos(theta), room * u(0, 1) * np.sin(theta))]
    else:
        d = u(1.6, 1.9) * nr / 2
        theta = u(0, 2 * np.pi)
        offsets = [(d * np.cos(theta), d * np.sin(theta)), (-d * np.cos(theta), -d * np.sin(theta))]
    for dx, dy in offsets:
        nuclei.append(
            Nucleus(
                dx_um=float(dx),
                dy_um=float(dy),
                radius_um=float(nr * u(0.95, 1.05)),
                angle=float(u(0, np.pi)),
                harmonics=nuc_h,
                **nuc,
            )
        )
    return CellSpec(
        cls=cls,
        radius_um=float(r),
        aspect=float(aspect),
        angle=float(u(0, np.pi)),
        harmonics=_harmonics(rng, range(2, 6), cell_h),
        cyto_density=float(cyto),
        cyto_mix=float(u(0, 1)),
        nuclei=tuple(nuclei),
        halo=float(halo),
    )


def _soft_shape(
    xx: np.ndarray,
    yy: np.ndarray,
    radius: float,
    aspect: float,
    angle: float,
    harmonics: np.ndarray,
    edge: float,
) -> np.ndarray:
    """Soft (0..1) mask of a rotated ellipse whose radius is modulated by contour harmonics."""
    c, s = np.cos(angle), np.sin(angle)
    u = c * xx + s * yy
    v = (-s * xx + c * yy) / aspect
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    boundary = np.full_like(rho, radius)
    for k, amp, phase in harmonics:
        boundary += radius * amp * np.cos(k * theta + phase)
    return np.clip(0.5 + (boundary - rho) / edge, 0.0, 1.0)


def _texture(shape: tuple[int, int], grain_px: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter  # here: the demo's plan imports this module

    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(grain_px, 0.3))
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _bbox(
    canvas: np.ndarray, cx: float, cy: float, half: float
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    h, w = canvas.shape[:2]
    x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)) + 1, w)
    y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - cx, yy - cy


def render_cell(
    od: np.ndarray,
    spec: CellSpec,
    cx: float,
    cy: float,
    mpp: float,
    stain: SlideStain,
    rng: np.random.Generator,
) -> None:
    """Add one cell, centred at pixel (cx, cy), to an OD canvas (H, W, 3) in place."""
    box = _bbox(od, cx, cy, spec.extent_um / mpp + 2)
    if box is None:
        return
    ys, xs, xx, yy = box
    edge = max(0.6 / mpp, 1.0)  # membrane blur of ~0.6 um
    cell = _soft_shape(xx, yy, spec.radius_um / mpp, spec.aspect, spec.angle, spec.harmonics, edge)
    cyto = spec.cyto_density * cell * (1.0 + 0.12 * _texture(cell.shape, 3.0 / mpp, rng))
    nuc_total = np.zeros_like(cell)
    for n in spec.nuclei:
        nx, ny = xx - n.dx_um / mpp, yy - n.dy_um / mpp
        r_px = n.radius_um / mpp
        mask = _soft_shape(nx, ny, r_px, n.aspect, n.angle, n.harmonics, max(0.4 / mpp, 1.0))
        if spec.halo > 0:  # clear perinuclear zone with a condensed rim (koilocytosis)
            halo = _soft_shape(nx, ny, r_px * spec.halo, 1.0, 0.0, n.harmonics, 2.0 / mpp)
            rim = np.clip(
                halo
                - _soft_shape(nx, ny, r_px * spec.halo * 0.85, 1.0, 0.0, n.harmonics, 2.0 / mpp),
                0,
                1,
            )
            cyto = cyto * (1.0 - 0.85 * halo) + 0.35 * rim * spec.cyto_density * 3
        inner = _soft_shape(nx, ny, r_px * 0.82, n.aspect, n.angle, n.harmonics, 1.5 / mpp)
        chromatin = 1.0 + n.contrast * _texture(mask.shape, n.grain_um / mpp, rng)
        density = n.density * np.clip(chromatin, 0.2, None) * (mask + 0.25 * (mask - inner))
        nuc_total = np.maximum(nuc_total, density)
    cyto_vec = spec.cyto_mix * stain.cyano + (1.0 - spec.cyto_mix) * stain.eosino
    cyto_vec = cyto_vec / np.linalg.norm(cyto_vec)
    od[ys, xs] += stain.intensity * (
        np.clip(cyto, 0, None)[..., None] * cyto_vec + nuc_total[..., None] * stain.nucleus
    )


def render_debris(
    od: np.ndarray,
    cx: float,
    cy: float,
    mpp: float,
    stain: SlideStain,
    rng: np.random.Generator,
) -> None:
    """Add debris: a tiny dark speck or a pale amorphous fragment. Not a cell."""
    speck = rng.random() < 0.5
    radius = rng.uniform(0.4, 1.2) if speck else rng.uniform(2.0, 6.0)
    density = rng.uniform(0.6, 1.0) if speck else rng.uniform(0.15, 0.35)
    harm = _harmonics(rng, range(2, 6), (0.1, 0.35))
    box = _bbox(od, cx, cy, radius * 1.6 / mpp + 2)
    if box is None:
        return
    ys, xs, xx, yy = box
    mask = _soft_shape(
        xx,
        yy,
        radius / mpp,
        rng.uniform(0.4, 1.0),
        rng.uniform(0, np.pi),
        harm,
        max(0.5 / mpp, 1.0),
    )
    vec = stain.nucleus if speck else stain.debris
    od[ys, xs] += stain.intensity * density * mask[..., None] * vec
