"""The iBOT training loop: one GPU, several (``torchrun``, DDP) or the CPU.

Every source of randomness of step ``s`` is seeded from (seed, s): the batch composition, each
image's views from (seed, s, its position in the global batch) and the masks of the whole global
batch, so a job resumed from a checkpoint continues exactly as an uninterrupted one would (same
data order, same schedule position, same weights), and the global batch is the same whether one
process makes it or several nodes split it. Two parts of the step are per process: drop-path
(stochastic depth) noise and the KoLeo term (nearest neighbours within a process's share, as
DINOv2 computes it); with both off, runs on any number of processes and nodes give the same
weights up to float summation order (tested), and the provenance says which holds.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cytofm.config import PretrainConfig
from cytofm.errors import CytofmError, InputDataError
from cytofm.hardware import loader_workers
from cytofm.ssl.augment import N_GLOBAL, ViewMaker, ViewParams, draw_view_params
from cytofm.ssl.data import PatchSource
from cytofm.ssl.heads import DINOHead
from cytofm.ssl.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from cytofm.ssl.masking import BlockMasker
from cytofm.ssl.model import MaskableViT, MultiCropStudent, build_backbone
from cytofm.ssl.monitor import effective_rank, knn_probe, teacher_entropies
from cytofm.ssl.schedules import cosine_schedule, linear_warmup_then_constant

__all__ = [
    "NonFiniteLossError",
    "StepBatch",
    "StepBatches",
    "Trainer",
    "fused_attention",
    "loader_workers",
]


log = logging.getLogger(__name__)


class StepBatch(NamedTuple):
    """What a loader worker hands over for one step: uint8 patches and small tensors of drawn
    parameters; the views are made from them on the training device (:class:`ViewMaker`)."""

    patches: torch.Tensor  # uint8 (B, H, W, 3): this rank's share of the global batch
    masks: torch.Tensor  # bool (G*B, N): iBOT masks of its global views, view-major
    boxes: torch.Tensor  # the view parameters (:class:`ViewParams`), (V, B, ...)
    dihedral: torch.Tensor
    color: torch.Tensor
    blur: torch.Tensor

    @property
    def views(self) -> ViewParams:
        return ViewParams(self.boxes, self.dihedral, self.color, self.blur)

    def to(self, device, non_blocking: bool = False) -> StepBatch:
        return StepBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is this rank's share of the global batch of that step: its uint8 patches,
    the random parameters of its multi-crop views and its iBOT masks. Workers only read and
    draw; the views are made on the device. Every item is a pure function of (seed, step,
    rank), so which worker makes it does not matter, and a resumed run sees exactly the
    batches it would have seen."""

    def __init__(self, source: PatchSource, masker: BlockMasker, cfg, rank: int, world: int,
                 steps_per_epoch: int):  # fmt: skip
        self.source, self.masker, self.cfg = source, masker, cfg
        self.rank, self.world, self.steps_per_epoch = rank, world, steps_per_epoch
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.cfg.optim.steps)

    def positions(self) -> np.ndarray:
        """This rank's positions in the global batch."""
        per_rank = self.cfg.optim.batch_size // self.world
        return np.arange(self.rank * per_rank, (self.rank + 1) * per_rank)

    def indices(self, step: int) -> np.ndarray:
        """Global rows of this rank's share of the batch of ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: self.source.epoch_order(self.cfg.seed, epoch)}
        order = self._orders[epoch]
        b = self.cfg.optim.batch_size
        idx = order[pos * b : (pos + 1) * b]
        if len(idx) < b:  # fewer samples than a batch: wrap around
            idx = np.resize(order, b)
        return idx[self.positions()]

    def __getitem__(self, step: int) -> StepBatch:
        """This rank's share of the batch of ``step``: each image's view parameters drawn from
        a generator of its own (seed, step, position in the global batch) and the iBOT masks
        of the whole global batch, sliced; so the global batch is the same however it is
        split."""
        step, cfg = int(step), self.cfg
        pos = self.positions()
        gens = [torch.Generator().manual_seed(_seed(cfg.seed, step, int(p))) for p in pos]
        raw = torch.from_numpy(self.source.read(self.indices(step)))  # uint8 (B, H, W, 3)
        views = draw_view_params(gens, cfg.crops, raw.shape[1])
        b = cfg.optim.batch_size
        g = torch.Generator().manual_seed(_seed(cfg.seed, step, -1))
        masks = self.masker.batch(
            b * N_GLOBAL, tuple(cfg.masking.ratio), cfg.masking.probability, g
        )
        mine = np.concatenate([v * b + pos for v in range(N_GLOBAL)])  # view-major, as the views
        return StepBatch(raw, masks[torch.from_numpy(mine)], *views)


def fused_attention(vit: nn.Module) -> bool:
    """Whether every attention block of a timm ViT calls ``scaled_dot_product_attention``
    (flash or memory-efficient kernels on a GPU) rather than the explicit softmax."""
    attns = [b.attn for b in getattr(vit, "blocks", []) if hasattr(b, "attn")]
    return bool(attns) and all(getattr(a, "fused_attn", False) for a in attns)


def _seed(seed: int, step: int, position: int) -> int:
    """A generator seed for one (seed, step, batch position); position -1: the whole batch."""
    return int(
        np.random.SeedSequence([int(seed), int(step), int(position) + 1]).generate_state(1)[0]
    )


class NonFiniteLossError(CytofmError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config mapping -> {"optim.lr": ..., ...} (to name what changed)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model_args":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param_groups(model: nn.Module) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or any(k in name for k in ("pos_embed", "cls_token", "mask_token"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False}]


def distributed_setup() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Builds student, teacher, losses, optimiser and schedules from a :class:`PretrainConfig`."""

    def __init__(
        self,
        cfg: PretrainConfig,
        source: PatchSource,
        out_dir: str | Path,
        device: str | torch.device | None = None,
    ):
        self.cfg = cfg
        self.source = source
        self.out_dir = Path(out_dir)
        self.rank, self.world = distributed_setup()
        self.resumed_world: int | None = None  # processes that wrote the checkpoint resumed
        if cfg.optim.batch_size % self.world:
            raise CytofmError(
                f"pretrain.optim.batch_size ({cfg.optim.batch_size}) must be divisible by the "
                f"number of processes ({self.world})"
            )
        if device is None:
            if torch.cuda.is_available():
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                device = f"cuda:{local}"
            else:
                device = "cpu"
        self.device = torch.device(device)
        use_bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and self.device.type == "cuda"
        )
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.mean, self.std = source.channel_stats(seed=cfg.seed)
        self.steps_per_epoch = max(len(source) // cfg.optim.batch_size, 1)
        self.freeze_steps = (
            self.steps_per_epoch
            if cfg.optim.freeze_last_layer_steps < 0
            else cfg.optim.freeze_last_layer_steps
        )

        torch.manual_seed(cfg.seed)
        self.student = self._build(cfg.model.drop_path).to(self.device)
        self.teacher = self._build(0.0).to(self.device)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOLoss(
            cfg.heads.out_dim, cfg.loss.student_temp, cfg.teacher.center_momentum
        ).to(self.device)
        self.ibot_loss = IBOTPatchLoss(
            cfg.heads.patch_out_dim if not cfg.heads.shared else cfg.heads.out_dim,
            cfg.loss.student_temp,
            cfg.teacher.center_momentum,
        ).to(self.device)
        self.koleo = KoLeoLoss()
        # one fused kernel for all parameters on CUDA; the CPU keeps PyTorch's default
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(_param_groups(self.student), lr=cfg.optim.lr, **fused)
        self.optimizer_impl = "fused" if fused else "default"
        lr_peak = cfg.optim.lr * cfg.optim.batch_size / 256
        n = cfg.optim.steps
        self.lr = cosine_schedule(lr_peak, cfg.optim.min_lr, n, cfg.optim.warmup_steps)
        self.wd = cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, n)
        self.momentum = cosine_schedule(cfg.teacher.momentum, cfg.teacher.momentum_end, n)
        self.teacher_temp = linear_warmup_then_constant(
            cfg.teacher.temp_warmup, cfg.teacher.temp, cfg.teacher.temp_warmup_steps, n
        )
        grid = cfg.crops.global_size // cfg.model.patch_size
        self.masker = BlockMasker((grid, grid))
        self.views = ViewMaker(cfg.crops, self.mean, self.std)  # runs on self.device
        self.batches = StepBatches(
            source, self.masker, cfg, self.rank, self.world, self.steps_per_epoch
        )
        # workers only read uint8 patches and draw view parameters; the views are made on the
        # device, so a few workers keep up (benchmarks/results/pretrain_throughput.md)
        self.num_workers = loader_workers(cfg.num_workers, self.device, self.world, most=8)
        log.info(
            "process %d of %d on %s (%s): %d patches, batch %d of %d, %d loader worker(s)",
            self.rank,
            self.world,
            self.device,
            "bf16" if self.autocast_dtype is not None else "fp32",
            len(source),
            cfg.optim.batch_size // self.world,
            cfg.optim.batch_size,
            self.num_workers,
        )
        self.step = 0
        self.history: list[dict[str, float]] = []  # metrics at every log step, for plots
        self.model = self.student
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.student,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # the mask token is idle on unmasked batches
            )
        self.fused_attention = fused_attention(self.student.backbone.vit)
        if not self.fused_attention:
            log.warning(
                "timm's attention blocks do not use scaled_dot_product_attention (is "
                "TIMM_FUSED_ATTN=0 set?); pretraining runs, but slower and with more memory"
            )
        # the modules called in a step; checkpoints and the EMA use the plain ones
        self.compiled = bool(cfg.compile and self.device.type == "cuda")
        self._student_step, self._teacher_step = self.model, self.teacher
        if self.compiled:
            self._student_step = torch.compile(self.model)
            self._teacher_step = torch.compile(self.teacher)
        elif cfg.compile:
            log.info("pretrain.compile applies on CUDA only; %s runs eagerly", self.device)

    # -- construction ---------------------------------------------------------------------
    def _build(self, drop_path: float) -> MultiCropStudent:
        cfg = self.cfg
        vit = build_backbone(
            cfg.model.arch,
            cfg.crops.global_size,
            cfg.model.patch_size,
            cfg.model.model_args,
            drop_path,
        )
        backbone = MaskableViT(vit)
        dim = backbone.embed_dim
        cls_head = DINOHead(dim, cfg.heads.out_dim, cfg.heads.hidden_dim, cfg.heads.bottleneck_dim)
        patch_head = (
            None
            if cfg.heads.shared
            else DINOHead(
                dim, cfg.heads.patch_out_dim, cfg.heads.hidden_dim, cfg.heads.bottleneck_dim
            )
        )
        return MultiCropStudent(backbone, cls_head, patch_head)

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_center": self.dino_loss.center,
            "ibot_center": self.ibot_loss.center,
            "config": self.cfg.to_dict(),
            "world": self.world,  # processes that wrote it (any number may resume it)
        }

    def save_checkpoint(self) -> None:
        """Atomic: written to a temporary file, then renamed over the previous checkpoint."""
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint.pt`` if present (tensors and plain values only)."""
        if not self.checkpoint_path.is_file():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as exc:  # pickled code (refused by weights_only), truncation, garbage
            raise InputDataError(
                f"{self.checkpoint_path} cannot be loaded as a training checkpoint "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Checkpoints are "
                "read with torch.load(weights_only=True), which refuses pickled code; a file "
                "that fails this is damaged or not one cytofm wrote. Move it away (or delete "
                "it) to start pretraining from scratch."
            ) from exc
        if state["config"] != self.cfg.to_dict():
            old, new = _flat(state["config"]), _flat(self.cfg.to_dict())
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            stale = self.checkpoint_path.with_suffix(".pt.stale")
            if self.rank == 0:
                os.replace(self.checkpoint_path, stale)
            log.warning(
                "%s was written with another config (changed: %s); kept as %s and "
                "training starts from scratch",
                self.checkpoint_path,
                changed,
                stale,
            )
            return False
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dino_loss.center.copy_(state["dino_center"])
        self.ibot_loss.center.copy_(state["ibot_center"])
        self.step = int(state["step"])
        self.resumed_world = int(state.get("world", self.world))
        if self.resumed_world != self.world:
            log.info(
                "the checkpoint was written by %d process(es); %d resume it on the same data "
                "order (batches, views and masks depend on the step, not on the split)",
                self.resumed_world,
                self.world,
            )
        log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
        return True

    # -- one step -------------------------------------------------------------------------
    def batch_indices(self, step: int) -> np.ndarray:
        """This rank's share of the global batch of ``step`` (a pure function of step)."""
        return self.batches.indices(step)

    def make_batch(self, step: int):
        """The batch of ``step`` made here, as a DataLoader worker would make it."""
        return self.batches[step]

    def loader(self, start: int, end: int) -> torch.utils.data.DataLoader:
        """Batches of steps ``start`` .. ``end - 1`` from worker processes, pinned for the GPU."""
        workers = self.num_workers
        return torch.utils.data.DataLoader(
            self.batches,
            batch_size=None,
            sampler=range(start, end),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batch: StepBatch) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        batch = batch.to(self.device, non_blocking=True)
        global_crops, local_crops = self.views(batch.patches, batch.views)
        masks = batch.masks
        n_g = N_GLOBAL
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lr[step])
            group["weight_decay"] = float(self.wd[step]) if group["apply_wd"] else 0.0
        torch.manual_seed(int(cfg.seed) * 1_000_003 + step * 104729 + self.rank)  # drop-path
        temp = float(self.teacher_temp[step])
        with self._autocast():
            with torch.no_grad():
                t_out = self._teacher_step(global_crops, None, None)
                q_cls = self.dino_loss.teacher_probs(t_out["global_cls"].float(), temp)
                q_patch = self.ibot_loss.teacher_probs(t_out["global_patch"].float(), temp)
            s_out = self._student_step(global_crops, local_crops, masks)
            s_cls = list(s_out["global_cls"].float().chunk(n_g))
            if "local_cls" in s_out:
                s_cls += list(s_out["local_cls"].float().chunk(cfg.crops.n_local))
            # each student global view is matched with the *other* teacher global view
            q_views = list(q_cls.chunk(n_g))
            loss_dino = self.dino_loss(s_cls, q_views)
            loss_ibot = self.ibot_loss(s_out["global_patch"].float(), q_patch, masks)
            loss = loss_dino + cfg.loss.ibot_weight * loss_ibot
            loss_koleo = torch.zeros((), device=self.device)
            if cfg.loss.koleo_weight > 0:
                embs = s_out["global_emb"].float().chunk(n_g)
                loss_koleo = sum(self.koleo(e) for e in embs) / n_g
                loss = loss + cfg.loss.koleo_weight * loss_koleo
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"pretraining loss is {loss.item()} at step {step} (dino {loss_dino.item()}, ibot "
                f"{loss_ibot.item()}). The last good checkpoint {self.checkpoint_path} is kept; "
                "lower pretrain.optim.lr, raise pretrain.optim.warmup_steps or use precision: "
                "fp32, then rerun to resume from it."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.optim.clip_grad)
        if step < self.freeze_steps:  # DINO: keep the prototypes fixed while features settle
            for head in (self.student.cls_head, self.student.patch_head):
                if head is not None:
                    for p in head.last_layer.parameters():
                        p.grad = None
        self.optimizer.step()
        m = float(self.momentum[step])
        with torch.no_grad():
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
        self.dino_loss.update_center(t_out["global_cls"])
        self.ibot_loss.update_center(t_out["global_patch"], masks)
        self.step += 1
        ent, batch_ent = teacher_entropies(q_cls)
        return {
            "loss": loss.item(),
            "loss_dino": loss_dino.item(),
            "loss_ibot": loss_ibot.item(),
            "loss_koleo": float(loss_koleo.detach()),
            "lr": float(self.lr[step]),
            "weight_decay": float(self.wd[step]),
            "teacher_momentum": m,
            "teacher_temp": temp,
            "grad_norm": float(grad_norm),
            "teacher_entropy": ent,
            "teacher_batch_entropy": batch_ent,
            "teacher_cls_effective_rank": effective_rank(t_out["global_cls"].float()),
            "mask_fraction": float(masks.float().mean()),
        }

    def fit(self, logger=None, knn=None, stop_at: int | None = None) -> dict[str, float]:
        """Train until ``optim.steps`` (or ``stop_at``); checkpoint every ``checkpoint_every``."""
        cfg = self.cfg
        end = min(cfg.optim.steps, stop_at if stop_at is not None else cfg.optim.steps)
        last: dict[str, float] = {}
        window_t, window_n = time.perf_counter(), 0
        bar = tqdm(
            total=end,
            initial=self.step,
            desc=f"pretrain {cfg.name} seed {cfg.seed}",
            mininterval=5,
            disable=self.rank != 0,
        )
        batches = iter(self.loader(self.step, end)) if self.step < end else iter(())
        window_wait = 0.0
        while self.step < end:
            t0 = time.perf_counter()
            batch = next(batches)
            window_wait += time.perf_counter() - t0
            last = self.train_step(batch)
            window_n += len(batch.patches) * self.world
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                dt = time.perf_counter() - window_t
                last["images_per_s"] = window_n / max(dt, 1e-9)
                # share of the step time spent waiting for the loader (0 = never the bottleneck)
                last["data_wait_fraction"] = min(window_wait / max(dt, 1e-9), 1.0)
                if self.device.type == "cuda":
                    last["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
                window_t, window_n, window_wait = time.perf_counter(), 0, 0.0
                self.history.append({"step": self.step, **last})
                if logger is not None and self.rank == 0:
                    logger.log_metrics(last, step=self.step)
            if (
                knn is not None
                and self.rank == 0
                and (self.step % cfg.probe.every == 0 or self.step == cfg.optim.steps)
            ):
                acc = knn_probe(
                    self.teacher.backbone.vit,
                    knn,
                    self.mean,
                    self.std,
                    cfg.crops.global_size,
                    cfg.probe.k,
                    self.device,
                )
                last["knn_balanced_accuracy"] = acc
                self.history.append({"step": self.step, "knn_balanced_accuracy": acc})
                if logger is not None:
                    logger.log_metrics({"knn_balanced_accuracy": acc}, step=self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.save_checkpoint()
        bar.close()
        if math.isnan(last.get("loss", 0.0)):
            raise NonFiniteLossError("loss is NaN")
        return last
