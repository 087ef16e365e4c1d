"""Training patches from many zarr stores, read chunk by chunk (never a file per sample).

The epoch order shuffles chunks, then shuffles samples inside windows of a few chunks, so a
batch touches only a handful of chunks and each is decompressed once while it is cached. The
order is a function of (seed, epoch), so the batch of any global step can be rebuilt exactly
(resume) and split across DDP ranks without communication.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from cytofm.errors import InputDataError
from cytofm.store import open_store

__all__ = ["PatchSource"]


class PatchSource:
    """``exclude``: store index -> rows of that store never to be read (an evaluation task's
    test rows); they are left out of every epoch and of the channel statistics."""

    def __init__(
        self,
        stores: list[str | Path],
        window_chunks: int = 8,
        cache_chunks: int = 16,
        exclude: dict[int, np.ndarray] | None = None,
    ):
        if not stores:
            raise InputDataError("pretraining has no patch stores; check pretrain.sources")
        self.paths = [Path(p) for p in stores]
        self.arrays = []
        sizes, chunk_sizes, shapes = [], [], set()
        for p in self.paths:
            images = open_store(p)["images"]
            self.arrays.append(images)
            sizes.append(images.shape[0])
            chunk_sizes.append(images.chunks[0])
            shapes.add(tuple(images.shape[1:]))
        if len(shapes) > 1:
            raise InputDataError(
                f"patch stores differ in patch size {sorted(shapes)}; pretrain on stores made with "
                "the same cells.patch_px / datasets patch_px"
            )
        self.patch_shape = shapes.pop()
        self.sizes = np.asarray(sizes, np.int64)
        # stores without patches (a slide where no cell was found): listed, add nothing
        self.empty = [p for p, n in zip(self.paths, sizes, strict=True) if n == 0]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.chunk_sizes = chunk_sizes
        self.window = window_chunks
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_chunks
        self.keep = np.ones(int(self.offsets[-1]), bool)  # global rows pretraining may read
        for s, rows in (exclude or {}).items():
            self.keep[self.offsets[s] + np.asarray(rows, np.int64)] = False
        self.n_excluded = int((~self.keep).sum())
        if len(self) == 0:
            raise InputDataError(
                "the pretraining stores hold no patches"
                + (f" once {self.n_excluded} test rows are left out" if self.n_excluded else "")
                + f": {self.paths}"
            )

    def __len__(self) -> int:
        return int(self.keep.sum())

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """Global sample indices of one epoch: shuffled chunks, shuffled within windows."""
        rng = np.random.default_rng([seed, 17, epoch])
        chunks = [
            (s, c)
            for s, (n, cs) in enumerate(zip(self.sizes, self.chunk_sizes, strict=True))
            for c in range(int(np.ceil(n / cs)))
        ]
        order = rng.permutation(len(chunks))
        out = []
        for w in range(0, len(order), self.window):
            idx = []
            for k in order[w : w + self.window]:
                s, c = chunks[k]
                start = self.offsets[s] + c * self.chunk_sizes[s]
                stop = min(start + self.chunk_sizes[s], self.offsets[s + 1])
                rows = np.arange(start, stop)
                idx.append(rows[self.keep[start:stop]])
            block = np.concatenate(idx)
            out.append(block[rng.permutation(len(block))])
        return np.concatenate(out)

    def _chunk(self, s: int, c: int) -> np.ndarray:
        key = (s, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        cs = self.chunk_sizes[s]
        data = self.arrays[s][c * cs : (c + 1) * cs]
        self._cache[key] = data
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) in the order given."""
        out = np.empty((len(indices), *self.patch_shape), np.uint8)
        stores = np.searchsorted(self.offsets, indices, side="right") - 1
        for i, (gi, s) in enumerate(zip(indices, stores, strict=True)):
            local = int(gi - self.offsets[s])
            cs = self.chunk_sizes[s]
            out[i] = self._chunk(int(s), local // cs)[local % cs]
        return out

    def channel_stats(self, n: int = 2048, seed: int = 0) -> tuple[list[float], list[float]]:
        """Per-channel mean and std (in [0, 1]) from a sample: the backbone's normalisation."""
        rng = np.random.default_rng([seed, 5])
        allowed = np.flatnonzero(self.keep)
        idx = np.sort(rng.choice(allowed, size=min(n, len(allowed)), replace=False))
        x = self.read(idx).reshape(-1, 3).astype(np.float64) / 255.0
        return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()
