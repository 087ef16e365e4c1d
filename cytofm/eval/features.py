"""Batched feature extraction from a patch store's ``images`` array.

Batches are read by ``DataLoader`` workers, or with none by a read-ahead thread (zarr chunks
decoded off the main loop, pinned memory on a GPU), and go to the device as uint8, where they
are resized and normalised. Features can stream to a :class:`ChunkSink`, which writes whole
chunks of the feature array from a background thread while the device computes the next
batches.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from cytofm.errors import InputDataError
from cytofm.eval.backbones import LoadedBackbone
from cytofm.store import BackgroundWriter

__all__ = ["ChunkSink", "batches", "embed_array", "pick_device", "preprocess"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def preprocess(images: np.ndarray | torch.Tensor, bb: LoadedBackbone, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, S, S) at the backbone's input size (input
    size 0: the patches' own)."""
    x = torch.as_tensor(images).to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
    if bb.input_size and (x.shape[-1] != bb.input_size or x.shape[-2] != bb.input_size):
        x = F.interpolate(
            x,
            size=(bb.input_size, bb.input_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    mean = torch.tensor(bb.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(bb.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(array, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) over the first axis of a zarr or numpy array, ``batch`` rows at a time."""
    for start in range(0, array.shape[0], batch):
        yield start, np.asarray(array[start : start + batch])


class _Batches(torch.utils.data.Dataset):
    """Item i: (first row, uint8 rows) of batch i of an image array (zarr or numpy)."""

    def __init__(self, images, batch: int):
        self.images, self.batch = images, batch

    def __len__(self) -> int:
        return -(-self.images.shape[0] // self.batch)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        start = i * self.batch
        rows = np.ascontiguousarray(self.images[start : start + self.batch])
        return start, torch.from_numpy(rows)


class _ReadAhead:
    """Batches of ``_Batches`` read by one background thread, ``depth`` ahead of the consumer
    (pinned for a GPU): with no worker processes, the next batch is read and decompressed
    (zarr's codecs release the GIL) while the device runs the current one."""

    def __init__(self, data: _Batches, pin: bool, depth: int = 2):
        self.data, self.pin = data, pin
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="batch-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for i in range(len(self.data)):
                if self._stop.is_set():
                    return
                start, rows = self.data[i]
                self._put((start, rows.pin_memory() if self.pin else rows))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        self._put(None)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading (a consumer that ends early or fails); waits for the thread."""
        self._stop.set()
        self._thread.join(timeout=10)


def _loader(images, batch: int, workers: int, pin: bool):
    if workers == 0:
        return _ReadAhead(_Batches(images, batch), pin)
    return torch.utils.data.DataLoader(
        _Batches(images, batch),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )


class ChunkSink:
    """Feature rows, in order, written to a zarr array a whole chunk at a time by a background
    thread (so a chunk is never rewritten and the device never waits for the disk). Use as a
    context manager: leaving it normally writes the last partial chunk and waits for the
    thread; an exception stops the thread and propagates."""

    def __init__(self, array, chunk_rows: int | None = None, pending: int = 2):
        self.array = array
        self.chunk = int(chunk_rows or array.chunks[0])
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._next = 0
        self._writer = BackgroundWriter(self._store, "feature-writer", pending)

    def _store(self, item: tuple[int, np.ndarray]) -> None:
        start, block = item
        self.array[start : start + len(block)] = block

    def _send(self, block: np.ndarray) -> None:
        self._writer.put((self._next, block))
        self._next += len(block)

    def put(self, rows: np.ndarray) -> None:
        self._parts.append(np.asarray(rows, dtype=self.array.dtype))
        self._buffered += len(rows)
        while self._buffered >= self.chunk:
            data = np.concatenate(self._parts)
            self._send(data[: self.chunk])
            self._parts, self._buffered = [data[self.chunk :]], len(data) - self.chunk

    def __enter__(self) -> ChunkSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._buffered:
            self._send(np.concatenate(self._parts))
        try:
            self._writer.close()
        except BaseException:
            if exc_type is None:
                raise


@torch.no_grad()
def embed_array(
    bb: LoadedBackbone,
    images,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    desc: str = "embed",
    num_workers: int = 0,
    sink: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray | None:
    """Pooled features (N, D) float32 of every image; bf16 autocast on GPU when asked.

    ``num_workers`` DataLoader processes read the batches; with ``sink`` each batch's features
    go to it in row order (nothing is kept, None is returned)."""
    device = torch.device(device)
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    bb.model.to(device).eval()
    n = images.shape[0]
    out = None if sink else np.zeros((n, bb.model.num_features), np.float32)
    loader = _loader(images, batch_size, num_workers, pin=device.type == "cuda")

    def emit(done: _InFlight) -> None:
        feats, finite = done.result()
        if not finite.all():
            bad = done.start + np.flatnonzero(~finite)
            raise InputDataError(
                f"{desc}: {len(bad)} image(s) (rows {bad[:5].tolist()}) are not finite after "
                f"normalisation with mean {list(bb.mean)} and std {list(bb.std)}; the "
                "backbone's std must be positive (check its config.json or the backbone's "
                "'std' in config.yaml)"
            )
        if sink is None:
            out[done.start : done.start + len(feats)] = feats
        else:
            sink(feats)
        bar.update(len(feats))

    # one batch in flight: batch i's features are read back while the device runs batch i+1
    pending: _InFlight | None = None
    with tqdm(total=n, desc=desc, unit="img", mininterval=5) as bar, _closing(loader):
        for start, rows in loader:
            x = preprocess(rows, bb, device)
            finite = torch.isfinite(x).flatten(1).all(1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                f = bb.model(x).float()
            current = _InFlight(start, f, finite)
            if pending is not None:
                emit(pending)
            pending = current
        if pending is not None:
            emit(pending)
    return out


@contextlib.contextmanager
def _closing(loader):
    """Stops a read-ahead thread however the loop ends (DataLoaders clean up themselves)."""
    try:
        yield loader
    finally:
        if isinstance(loader, _ReadAhead):
            loader.close()


class _InFlight:
    """A batch's features and finiteness flags on their way to the host (copied without
    blocking into pinned memory on a GPU; ``result`` waits for that copy alone)."""

    def __init__(self, start: int, feats: torch.Tensor, finite: torch.Tensor):
        self.start, self._event = start, None
        if feats.device.type == "cuda":
            self._feats = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            self._finite = torch.empty(finite.shape, dtype=finite.dtype, pin_memory=True)
            self._feats.copy_(feats, non_blocking=True)
            self._finite.copy_(finite, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._feats, self._finite = feats, finite

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return self._feats.numpy(), self._finite.numpy()
