"""Nucleus detectors, registered by name (``cells.detector`` in config).

A detector is built from the cells config and the slide's glass colour, and called on an RGB
region with its mpp; it returns nucleus centres (x, y) in that region's pixels and a score
per centre. :mod:`cytofm.cells.learned` provides ``tiatoolbox`` and ``cellpose``. Another
package adds its own with an entry point in the group ``cytofm.detectors`` naming a factory
``factory(cells_config, background_rgb) -> Detector`` (see :mod:`cytofm.registry`).
"""

from __future__ import annotations

import inspect
import itertools
from typing import Protocol

import cv2
import numpy as np

from cytofm.cells.stain import StainChoice, min_od_map
from cytofm.config import CellsConfig
from cytofm.registry import DETECTORS
from cytofm.wsi.mask import optical_density
from cytofm.wsi.reader import resample

__all__ = ["DETECTORS", "ClassicalDetector", "Detector", "make_detector", "register_detector"]


class Detector(Protocol):
    def __call__(self, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]: ...


def register_detector(name: str):
    """Register ``factory(cells_config, background_rgb) -> Detector`` under ``name``; a factory
    with a ``stain`` parameter also gets the slide's :class:`StainChoice`."""
    return DETECTORS.register(name)


def make_detector(
    cfg: CellsConfig, background: np.ndarray, stain: StainChoice | None = None
) -> Detector:
    factory = DETECTORS[cfg.detector]
    if stain is not None and "stain" in inspect.signature(factory).parameters:
        return factory(cfg, background, stain=stain)
    return factory(cfg, background)


def _scale_space_max(
    image: np.ndarray, sigmas: np.ndarray, with_scale: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """The strongest scale-normalised negative Laplacian of Gaussian over ``sigmas``
    (increasing): positive on blobs brighter than their surroundings (dark in the slide), and
    the index of the scale that gave it (a blob's radius is about sigma x sqrt(2); None unless
    ``with_scale``).
    Each scale's blur is the previous one blurred by the difference (Gaussians compose:
    sigma_k^2 = sigma_(k-1)^2 + d^2), so the wide kernels of the coarse scales are never
    applied. OpenCV's separable blur and 3x3 Laplacian agree with
    ``scipy.ndimage.gaussian_laplace`` to a few percent for sigma >= 1 px."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigmas[0], borderType=cv2.BORDER_REFLECT)
    response = _laplacian(blurred, sigmas[0])
    best = np.zeros(response.shape, np.uint8) if with_scale else None
    for k, (prev, sigma) in enumerate(itertools.pairwise(sigmas), start=1):
        step = float(np.sqrt(max(sigma**2 - prev**2, 0.0)))
        if step > 0:
            blurred = cv2.GaussianBlur(blurred, (0, 0), sigmaX=step, borderType=cv2.BORDER_REFLECT)
        layer = _laplacian(blurred, sigma)
        if best is not None:
            best[layer > response] = k
        np.maximum(response, layer, out=response)
    return response, best


def ring_median(
    image: np.ndarray, peaks: np.ndarray, radii: np.ndarray, n_angles: int = 16
) -> np.ndarray:
    """The median of ``image`` on a circle of the given radius around each peak (row, col),
    points outside the image left out (NaN where all are): the cytoplasm or glass around a
    nucleus."""
    if len(peaks) == 0:
        return np.zeros(0, np.float32)
    angles = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    rows = peaks[:, :1] + radii[:, None] * np.sin(angles)[None]
    cols = peaks[:, 1:] + radii[:, None] * np.cos(angles)[None]
    h, w = image.shape
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    values = image[np.clip(np.rint(rows), 0, h - 1).astype(int),
                   np.clip(np.rint(cols), 0, w - 1).astype(int)]  # fmt: skip
    values = np.where(inside, values, np.nan)
    out = np.full(len(peaks), np.nan, np.float32)
    some = inside.any(1)
    out[some] = np.nanmedian(values[some], axis=1)
    return out


def _laplacian(blurred: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.Laplacian(
        blurred, cv2.CV_32F, ksize=1, scale=-(sigma**2), borderType=cv2.BORDER_REFLECT
    )


def _local_maxima(response: np.ndarray, radius: int, threshold: float) -> np.ndarray:
    """(row, col) of pixels that are the maximum of their (2r+1)^2 neighbourhood and >= threshold.

    Ties on a plateau give neighbouring peaks; :func:`merge_close` folds them into one.
    """
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    dilated = cv2.dilate(response, kernel, borderType=cv2.BORDER_REFLECT)
    return np.argwhere((response >= dilated) & (response >= threshold))


def _neighbours(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the sorted indices of the points at distance <= ``radius`` (itself
    included), as CSR arrays ``(indptr, indices)``: candidate pairs come from a grid of
    cells of side ``radius`` (a point's 3 x 3 cells), all at once in numpy, so a cells job
    neither imports scipy.spatial (0.4 s) nor loops in Python over thousands of peaks."""
    n = len(xy)
    cell = np.floor((xy - xy.min(0)) / max(radius, 1e-9)).astype(np.int64) + 1
    stride = int(cell[:, 1].max()) + 2
    keys = cell[:, 0] * stride + cell[:, 1]
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    src, dst = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            probe = keys + dx * stride + dy
            lo = np.searchsorted(sorted_keys, probe, side="left")
            count = np.searchsorted(sorted_keys, probe, side="right") - lo
            within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            src.append(np.repeat(np.arange(n), count))
            dst.append(by_key[np.repeat(lo, count) + within])
    src, dst = np.concatenate(src), np.concatenate(dst)
    near = ((xy[dst] - xy[src]) ** 2).sum(1) <= radius * radius
    src, dst = src[near], dst[near]
    order = np.lexsort((dst, src))
    return np.searchsorted(src[order], np.arange(n + 1)), dst[order]


def merge_close(xy: np.ndarray, scores: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy merge of centres closer than ``radius``: strongest first, position averaged
    (score-weighted) over its group, so the two nuclei of a binucleate cell give one centre."""
    if len(xy) == 0 or radius <= 0:
        return xy, scores
    order = np.argsort(-scores, kind="stable")
    xy = np.asarray(xy, np.float64)[order]
    scores = np.asarray(scores, np.float32)[order]
    indptr, indices = _neighbours(xy, radius * (1 - 1e-9))
    if len(indices) == len(xy):  # nobody has a neighbour: nothing merges
        return xy, scores
    taken = np.zeros(len(xy), bool)
    group = np.empty(len(xy), np.int64)  # the strongest peak's group each peak joins
    heads: list[int] = []
    for i in range(len(xy)):
        if taken[i]:
            continue
        members = indices[indptr[i] : indptr[i + 1]]
        members = members[~taken[members]]
        taken[members] = True
        group[members] = len(heads)
        heads.append(i)
    w = scores.astype(np.float64)
    total = np.bincount(group, weights=w, minlength=len(heads))
    centres = np.stack(
        [np.bincount(group, weights=xy[:, k] * w, minlength=len(heads)) for k in (0, 1)], 1
    )
    return centres / total[:, None], scores[heads]


class ClassicalDetector:
    """Scale-normalised Laplacian-of-Gaussian blobs on a map of chromatin.

    The map is the slide's :class:`StainChoice`: the darkest-channel optical density (nuclei
    stained with haematoxylin absorb in every channel while cytoplasm of any stain colour
    absorbs mainly in one or two), or, for Romanowsky-type stains, the concentration of the
    slide's chromatin stain. Blobs are searched over the configured range of nuclear diameters;
    a peak must clear ``threshold`` (LoG response, in OD units) and ``min_darkness`` (smoothed
    map at the centre) and, on the stain map, hold at least ``nuclear_purity`` of the two
    stains there (red cells load on the other stain); peaks closer than ``merge_um`` merge.
    With ``min_contrast`` the centre must be that much darker than the median of the map on a
    ring at twice the blob's radius (a nucleus is darker than its own cytoplasm, a fold or an
    overlap of cytoplasm hardly so), and with ``min_surround`` that ring must carry that much
    signal itself (the nucleus lies in cytoplasm, not alone on the glass).
    """

    def __init__(self, cfg: CellsConfig, background: np.ndarray, stain: StainChoice | None = None):
        self.cfg = cfg
        self.background = np.asarray(background, np.float32)
        self.stain = stain or StainChoice()
        self._unmix = None
        if self.stain.mode == "nuclear":
            vectors = np.asarray(self.stain.vectors, np.float32)
            self._unmix = np.linalg.pinv(vectors).astype(np.float32)  # (3, n_stains)

    def maps(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The chromatin map and, on the stain map, the chromatin share of the stains."""
        od = optical_density(rgb, self.background)
        if self._unmix is None:
            return min_od_map(od), None
        conc = (od.reshape(-1, 3) @ self._unmix).reshape(*od.shape[:2], -1)
        nuc = np.clip(conc[..., self.stain.nuclear], 0, None)
        total = nuc + np.clip(np.delete(conc, self.stain.nuclear, axis=-1), 0, None).sum(-1)
        return nuc, nuc / np.maximum(total, 1e-3)

    def darkness(self, rgb: np.ndarray) -> np.ndarray:
        return self.maps(rgb)[0]

    def __call__(self, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        work, scale = resample(rgb, mpp, cfg.detect_mpp, coarse=True)  # ~ a read at detect_mpp
        dark, purity = self.maps(work)
        r_min = cfg.nucleus_min_um / 2 / cfg.detect_mpp
        r_max = cfg.nucleus_max_um / 2 / cfg.detect_mpp
        sigmas = np.geomspace(r_min / np.sqrt(2), r_max / np.sqrt(2), 5)
        rings = cfg.min_contrast > 0 or cfg.min_surround > 0
        response, scale_of = _scale_space_max(dark, sigmas, with_scale=rings)
        peaks = _local_maxima(response, max(int(r_min), 1), cfg.threshold)
        if len(peaks) == 0:
            return np.zeros((0, 2)), np.zeros((0,), np.float32)
        smooth = cv2.GaussianBlur(dark, (0, 0), sigmaX=max(r_min / 2, 0.5))
        keep = smooth[peaks[:, 0], peaks[:, 1]] >= cfg.min_darkness
        if rings:  # the cytoplasm or glass on the ring at twice the blob's radius
            radii = 2 * np.sqrt(2) * sigmas[scale_of[peaks[:, 0], peaks[:, 1]]]
            ring = ring_median(smooth, peaks, radii)
            ring = np.where(np.isfinite(ring), ring, 0.0)
            keep &= smooth[peaks[:, 0], peaks[:, 1]] - ring >= cfg.min_contrast
            keep &= ring >= cfg.min_surround
        if purity is not None:
            share = cv2.GaussianBlur(purity.astype(np.float32), (0, 0), max(r_min / 2, 0.5))
            keep &= share[peaks[:, 0], peaks[:, 1]] >= cfg.nuclear_purity
        peaks = peaks[keep]
        scores = response[peaks[:, 0], peaks[:, 1]].astype(np.float32)
        xy = peaks[:, ::-1].astype(np.float64)  # (row, col) -> (x, y)
        xy, scores = merge_close(xy, scores, cfg.merge_um / cfg.detect_mpp)
        # back to input pixels (pixel centres line up under resize)
        xy = (xy + 0.5) / scale - 0.5
        return xy, scores


def classical_detector(
    cfg: CellsConfig, background: np.ndarray, stain: StainChoice | None = None
) -> Detector:
    return ClassicalDetector(cfg, background, stain)
