"""Direct tile decoding for tiled TIFF slides (Aperio SVS, generic pyramidal TIFF).

OpenSlide decodes a region through a 32 MB tile cache, converts every pixel to premultiplied
ARGB and copies it out; for the cell stage that costs 2.5-4x what decoding the same JPEG tiles
takes with tifffile + imagecodecs (libjpeg-turbo, which releases the GIL), and a slide wider
than the cache decodes the tiles shared by neighbouring blocks twice. Here each level is read
straight from its TIFF page:

* a tile is decoded by tifffile (which knows the page's JPEG tables, colour space and
  compression) into RGB; an absent tile (no bytes) is white, as OpenSlide shows it;
* a reader that knows which regions it will read (:meth:`TiledTiff.plan`) keeps each decoded
  tile until the last planned region needing it has been read, so every tile is decoded
  once and memory holds only tiles still awaited (about two rows of tiles, not the slide);
* a level is used only after one of its tiles decodes to exactly OpenSlide's pixels;
  otherwise, and for formats other than Aperio and generic TIFF (whose levels are plain TIFF
  pages), reads go to OpenSlide.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["TileReader", "TiledTiff"]

log = logging.getLogger(__name__)

# OpenSlide vendors whose levels are exactly the file's tiled TIFF pages
PLAIN_VENDORS = frozenset({"aperio", "generic-tiff"})


class TileReader:
    """One tiled TIFF page (a pyramid level, or a focal plane of one): its tiles, decoded on
    demand, and the decoded ones still awaited by planned reads."""

    def __init__(self, page, fd: int):
        key = page.keyframe  # a TiffFrame (another plane of a z-stack) shares its keyframe's
        self.fd = fd  # geometry, tables and decoder; only its tiles' offsets are its own
        self.width, self.height = int(key.imagewidth), int(key.imagelength)
        self.tw, self.th = int(key.tilewidth), int(key.tilelength)
        self.nx = -(-self.width // self.tw)
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        self.tables = key.jpegtables
        self._decode = key.decode
        self.awaited: dict[int, int] = {}  # tile -> planned reads not yet done
        self.cache: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()

    def tiles(self, x: int, y: int, w: int, h: int) -> list[int]:
        """Indices of the tiles under level pixels [x, x + w) x [y, y + h), in bounds."""
        x0, y0 = max(x, 0) // self.tw, max(y, 0) // self.th
        x1 = (min(x + w, self.width) - 1) // self.tw
        y1 = (min(y + h, self.height) - 1) // self.th
        return [r * self.nx + c for r in range(y0, y1 + 1) for c in range(x0, x1 + 1)]

    def decode(self, index: int) -> np.ndarray:
        """Tile ``index`` as (th, tw, 3) uint8 RGB; white where the file holds no data."""
        count = int(self.counts[index])
        if count == 0:
            return np.full((self.th, self.tw, 3), 255, np.uint8)
        data = os.pread(self.fd, count, int(self.offsets[index]))
        if len(data) != count:
            raise OSError(f"tile {index}: {len(data)} of {count} bytes (file truncated?)")
        tile = self._decode(data, index, jpegtables=self.tables)[0]
        return np.asarray(tile).reshape(self.th, self.tw, -1)[..., :3]

    def tile(self, index: int) -> np.ndarray:
        """A tile for one read: from the cache if decoded for an earlier planned read; kept
        while later planned reads still need it."""
        with self.lock:
            tile = self.cache.get(index)
        if tile is None:
            tile = self.decode(index)
        with self.lock:
            left = self.awaited.get(index, 0) - 1
            if left > 0:
                self.awaited[index] = left
                self.cache[index] = tile
            else:
                self.awaited.pop(index, None)
                self.cache.pop(index, None)
        return tile

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        for index in self.tiles(x, y, w, h):
            r, c = divmod(index, self.nx)
            tx, ty = c * self.tw, r * self.th
            # the part of the tile inside the request (and the level: edge tiles are padded)
            ax0, ay0 = max(x, tx), max(y, ty)
            ax1 = min(x + w, tx + self.tw, self.width)
            ay1 = min(y + h, ty + self.th, self.height)
            out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = self.tile(index)[
                ay0 - ty : ay1 - ty, ax0 - tx : ax1 - tx
            ]
        return out


class TiledTiff:
    """The tiled TIFF pages behind an OpenSlide slide's levels, read directly."""

    def __init__(self, path: Path, tif, pages: dict[int, object]):
        self.path = path
        self._tif = tif
        self._fd = os.open(path, os.O_RDONLY)
        self._pages = pages  # OpenSlide level -> TIFF page, not yet checked
        self._levels: dict[int, TileReader | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, vendor: str | None, level_dimensions) -> TiledTiff | None:
        """The reader for ``path``, or None where its levels are not plain tiled pages of
        8-bit RGB that tifffile decodes."""
        if vendor not in PLAIN_VENDORS:
            return None
        try:
            import tifffile

            tif = tifffile.TiffFile(path)
            pages: dict[int, object] = {}
            for level, (w, h) in enumerate(level_dimensions):
                for page in tif.pages:
                    if (
                        page.is_tiled
                        and (page.imagewidth, page.imagelength) == (w, h)
                        and page.samplesperpixel == 3
                        and page.bitspersample == 8
                        and page.planarconfig == 1
                        and page.imagedepth == 1
                    ):
                        pages[level] = page
                        break
        except Exception as exc:  # not a TIFF tifffile reads: OpenSlide reads it
            log.debug("%s: no direct tile reads (%s)", path, exc)
            return None
        return cls(path, tif, pages) if pages else None

    def level(self, level: int, osr) -> TileReader | None:
        """The level's tile reader once it has decoded one tile exactly as OpenSlide does."""
        with self._lock:
            if level not in self._levels:
                page = self._pages.get(level)
                self._levels[level] = (
                    _checked(TileReader(page, self._fd), level, osr) if page else None
                )
            return self._levels[level]

    def plan(self, level: int, osr, regions) -> None:
        """Regions ``(x, y, w, h)`` of ``level`` about to be read, in any order: each tile is
        then decoded once and kept only until the last of them has read it."""
        lv = self.level(level, osr)
        if lv is None:
            return
        with lv.lock:
            for x, y, w, h in regions:
                for index in lv.tiles(int(x), int(y), int(w), int(h)):
                    lv.awaited[index] = lv.awaited.get(index, 0) + 1

    def close(self) -> None:
        for lv in self._levels.values():
            if lv is not None:
                lv.cache.clear()
        self._tif.close()
        os.close(self._fd)


def _checked(lv: TileReader, level: int, osr) -> TileReader | None:
    """``lv`` if a tile with data (the middle one) decodes to exactly OpenSlide's pixels."""
    present = np.flatnonzero(lv.counts > 0)
    if len(present) == 0:
        return None
    index = int(present[len(present) // 2])
    r, c = divmod(index, lv.nx)
    tx, ty = c * lv.tw, r * lv.th
    w, h = min(lv.tw, lv.width - tx), min(lv.th, lv.height - ty)
    ds = osr.level_downsamples[level]
    try:
        ours = lv.decode(index)[:h, :w]
        theirs = np.asarray(osr.read_region((round(tx * ds), round(ty * ds)), level, (w, h)))
    except Exception as exc:  # a codec tifffile lacks, a damaged tile: OpenSlide reads it
        log.debug("level %d: no direct tile reads (%s)", level, exc)
        return None
    if theirs[..., 3].min() < 255 or not np.array_equal(ours, theirs[..., :3]):
        log.debug("level %d: tiles decode differently from OpenSlide; reading through it", level)
        return None
    return lv
