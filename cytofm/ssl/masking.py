"""Block-wise masking of patch tokens for masked image modelling (BEiT/iBOT style)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["BlockMasker"]


class BlockMasker:
    """Masks rectangular blocks of a (H, W) token grid until a target count is reached.

    Each block has an area between ``min_block`` tokens and what is still to be masked, and an
    aspect ratio drawn log-uniformly in [``min_aspect``, 1 / ``min_aspect``].
    """

    def __init__(self, grid: tuple[int, int], min_block: int = 4, min_aspect: float = 0.3):
        self.h, self.w = grid
        self.min_block = min_block
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, n_mask: int, generator: torch.Generator) -> torch.Tensor:
        """Boolean (H*W,) mask with (about) ``n_mask`` True entries. The grid lives in numpy
        (tiny arrays, no per-operation tensor overhead); every draw comes from ``generator``."""
        mask = np.zeros((self.h, self.w), dtype=bool)
        n_mask = min(n_mask, self.h * self.w)
        done, tries = 0, 0
        while done < n_mask and tries < 100:
            tries += 1
            left = n_mask - done
            max_area = max(left, self.min_block)
            area = _uniform(self.min_block, max_area, generator)
            aspect = math.exp(_uniform(*self.log_aspect, generator))
            bh = min(max(int(round(math.sqrt(area * aspect))), 1), self.h)
            bw = min(max(int(round(math.sqrt(area / aspect))), 1), self.w)
            top = int(torch.randint(0, self.h - bh + 1, (1,), generator=generator))
            lft = int(torch.randint(0, self.w - bw + 1, (1,), generator=generator))
            block = mask[top : top + bh, lft : lft + bw]  # a view: writes land in mask
            free = np.flatnonzero(~block)
            if 0 < len(free) <= left:
                block[:] = True
                done += len(free)
            elif len(free) > left:  # fill only part of the block so the count is not overshot
                rows, cols = np.unravel_index(free[:left], (bh, bw))  # row-major in the block
                mask[top + rows, lft + cols] = True
                done += left
        return torch.from_numpy(mask.reshape(-1))

    def batch(
        self,
        batch_size: int,
        ratio: tuple[float, float],
        probability: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """(B, H*W) masks: a fraction ``probability`` of images get a mask whose ratio is
        spread evenly over ``ratio`` (as iBOT does across the batch); the others none."""
        n = self.h * self.w
        masks = torch.zeros(batch_size, n, dtype=torch.bool)
        n_masked_images = int(round(batch_size * probability))
        lo, hi = ratio
        order = torch.randperm(batch_size, generator=generator)
        for k in range(n_masked_images):
            r = lo + (hi - lo) * (k + float(torch.rand(1, generator=generator))) / max(
                n_masked_images, 1
            )
            masks[order[k]] = self(int(round(r * n)), generator)
        return masks


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=generator))
