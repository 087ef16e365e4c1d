"""Learned nucleus detectors behind ``cells.detector``: tiatoolbox's detection models and
cellpose, as optional plug-ins.

Both run on the region the ``cells`` stage has already read (the same pixels patches are cut
from), resampled to the resolution the model was trained at, and return nucleus centres in
that region's pixels like the classical detector; the stage maps them to level-0 pixels.
Weights come from ``cells.weights`` (a local file) or, when it is empty and the machine is
online, from the model's own hub. No accuracy is claimed for a model here unless measured
(``benchmarks/detection_real.py`` scores any configured detector).

- ``tiatoolbox``: ``cells.model`` names a tiatoolbox pretrained detection model
  (``sccnn-conic``, ``sccnn-crchisto``, ``mapde-conic``, ``mapde-crchisto``); the model's
  I/O config gives its resolution and window shapes, its own post-processing finds the peaks.
- ``cellpose``: ``cells.model`` names a cellpose model (``cpsam``, ``cyto3``, ``nuclei``) or
  ``cells.weights`` a trained file; nuclei are the centroids of its instance masks
  (``pip install cellpose`` in the environment; it is not a dependency of cytofm).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from cytofm.cells.detect import Detector, merge_close
from cytofm.config import CellsConfig
from cytofm.errors import ConfigError
from cytofm.wsi.reader import resample

__all__ = ["WindowedDetector", "centroids_of_masks", "resample"]

log = logging.getLogger(__name__)


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _weights(cfg: CellsConfig) -> str | None:
    if not cfg.weights:
        return None
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"cells.weights {cfg.weights!r} is not a file; give the path of the model's weights "
            "(or leave it empty to download the named model's weights when online)"
        )
    return str(path)


class WindowedDetector:
    """A dense model run window by window over a region, its maps stitched, then peaks.

    ``predict(batch)`` maps (n, in_h, in_w, 3) float inputs (after ``preproc``) to (n, out_h,
    out_w, C) maps aligned with the centre of each input window; ``peaks(map)`` returns
    (H, W, C) with non-zero values at detected centres. Windows overlap by ``in - stride``;
    where they do, the larger response is kept. The region is reflected at its borders so
    every pixel gets a full window.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        peaks: Callable[[np.ndarray], np.ndarray],
        model_mpp: float,
        in_shape: tuple[int, int],
        out_shape: tuple[int, int],
        stride: tuple[int, int] | None = None,
        preproc: Callable[[np.ndarray], np.ndarray] | None = None,
        merge_px: float = 0.0,
        batch_size: int = 128,
    ):
        self.predict, self.peaks, self.preproc = predict, peaks, preproc
        self.model_mpp = float(model_mpp)
        self.in_shape = tuple(int(v) for v in in_shape)
        self.out_shape = tuple(int(v) for v in out_shape)
        self.stride = tuple(int(v) for v in (stride or out_shape))
        if any(s > o for s, o in zip(self.stride, self.out_shape, strict=True)):
            raise ValueError(f"stride {self.stride} leaves gaps between outputs {self.out_shape}")
        self.merge_px = merge_px
        self.batch_size = batch_size

    def dense(self, image: np.ndarray) -> np.ndarray:
        """The stitched (H, W, C) output map of ``image`` (at the model's resolution)."""
        h, w = image.shape[:2]
        (ih, iw), (oh, ow), (sh, sw) = self.in_shape, self.out_shape, self.stride
        my, mx = (ih - oh) // 2, (iw - ow) // 2  # input context around each output window
        ny, nx = max(int(np.ceil((h - oh) / sh)), 0) + 1, max(int(np.ceil((w - ow) / sw)), 0) + 1
        ph, pw = (ny - 1) * sh + oh, (nx - 1) * sw + ow  # area the outputs cover (>= h, w)
        padded = cv2.copyMakeBorder(
            image, my, ih - oh - my + ph - h, mx, iw - ow - mx + pw - w, cv2.BORDER_REFLECT_101
        )
        origins = [(y * sh, x * sw) for y in range(ny) for x in range(nx)]
        out = None
        for start in range(0, len(origins), self.batch_size):
            part = origins[start : start + self.batch_size]
            batch = [padded[y : y + ih, x : x + iw].astype(np.float32) for y, x in part]
            if self.preproc is not None:
                batch = [np.asarray(self.preproc(b), np.float32) for b in batch]
            pred = np.asarray(self.predict(np.stack(batch)), np.float32)
            if pred.shape[1:3] != (oh, ow):
                raise ValueError(f"model output {pred.shape[1:3]} is not the expected {(oh, ow)}")
            if out is None:
                out = np.full((ph, pw, pred.shape[3]), -np.inf, np.float32)
            for (y, x), p in zip(part, pred, strict=True):
                np.maximum(out[y : y + oh, x : x + ow], p, out=out[y : y + oh, x : x + ow])
        return out[:h, :w]

    def __call__(self, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        image, scale = resample(rgb, mpp, self.model_mpp)
        prob = self.dense(image)
        found = np.asarray(self.peaks(prob))
        rc = np.argwhere(found.reshape(*found.shape[:2], -1).max(-1) > 0)
        if len(rc) == 0:
            return np.zeros((0, 2)), np.zeros((0,), np.float32)
        scores = prob.max(-1)[rc[:, 0], rc[:, 1]].astype(np.float32)
        xy, scores = merge_close(rc[:, ::-1].astype(np.float64), scores, self.merge_px)
        return (xy + 0.5) / scale - 0.5, scores


def tiatoolbox_detector(cfg: CellsConfig, background: np.ndarray) -> Detector:
    import torch
    from tiatoolbox.models.architecture import get_pretrained_model

    if not cfg.model:
        raise ConfigError(
            "cells.detector: tiatoolbox needs cells.model, a tiatoolbox nucleus-detection model "
            "such as sccnn-conic or mapde-conic (weights from cells.weights, or downloaded)"
        )
    try:
        model, io = get_pretrained_model(cfg.model, pretrained_weights=_weights(cfg))
    except ValueError as e:
        raise ConfigError(f"cells.model {cfg.model!r}: {e}") from None
    if io is None or not hasattr(model, "postproc"):
        raise ConfigError(f"cells.model {cfg.model!r} is not a tiatoolbox detection model")
    res = io.input_resolutions[0]
    if res.get("units") != "mpp":
        raise ConfigError(f"cells.model {cfg.model!r}: input resolution {res} is not in mpp")
    device = _device(cfg.device)
    model = model.to(device).eval()
    log.info("tiatoolbox detector %s at %s um/px on %s", cfg.model, res["resolution"], device)

    def predict(batch: np.ndarray) -> np.ndarray:
        return model.infer_batch(model, torch.from_numpy(batch), device=device)

    return WindowedDetector(
        predict,
        model.postproc,
        res["resolution"],
        tuple(io.patch_input_shape),
        tuple(io.patch_output_shape),
        stride=tuple(
            min(s, o) for s, o in zip(io.stride_shape, io.patch_output_shape, strict=True)
        ),
        preproc=model.preproc_func,
        merge_px=cfg.merge_um / res["resolution"],
    )


def centroids_of_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) centroids and areas (px) of the labelled instances of ``masks`` (0 = none)."""
    labels = np.asarray(masks).astype(np.int64)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros((0, 2)), np.zeros((0,), np.float32)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    area = np.bincount(lab, minlength=ids.max() + 1)[ids].astype(np.float64)
    cx = np.bincount(lab, weights=xs, minlength=ids.max() + 1)[ids] / area
    cy = np.bincount(lab, weights=ys, minlength=ids.max() + 1)[ids] / area
    return np.column_stack([cx, cy]), area.astype(np.float32)


class CellposeDetector:
    """Nuclei as centroids of a cellpose model's instance masks, run at ``cells.detect_mpp``
    with the expected nuclear diameter (mean of ``nucleus_min_um`` and ``nucleus_max_um``)."""

    def __init__(self, cfg: CellsConfig, model):
        self.cfg, self.model = cfg, model

    def __call__(self, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        image, scale = resample(rgb, mpp, cfg.detect_mpp)
        diameter = (cfg.nucleus_min_um + cfg.nucleus_max_um) / 2 / cfg.detect_mpp
        masks = self.model.eval(image, diameter=diameter)[0]
        xy, area = centroids_of_masks(masks)
        r_min = cfg.nucleus_min_um / 2 / cfg.detect_mpp
        keep = area >= np.pi * r_min**2 / 4  # fragments far below the smallest nucleus
        xy, scores = merge_close(xy[keep], area[keep], cfg.merge_um / cfg.detect_mpp)
        return (xy + 0.5) / scale - 0.5, scores


def cellpose_detector(cfg: CellsConfig, background: np.ndarray) -> Detector:
    try:
        from cellpose import models
    except ImportError:
        raise ConfigError(
            "cells.detector: cellpose needs the cellpose package in this environment "
            "(pip install cellpose)"
        ) from None
    weights = _weights(cfg)
    device = _device(cfg.device)
    model = models.CellposeModel(
        gpu=device.startswith("cuda"), pretrained_model=weights or cfg.model or "cpsam"
    )
    return CellposeDetector(cfg, model)
