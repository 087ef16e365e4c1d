"""The config sections of iBOT self-supervised pretraining (``pretrain``): the ViT, the
multi-crop views and their augmentation, block masking, the projection heads, the loss terms,
AdamW and its schedules, the EMA teacher and the periodic kNN probe."""

from __future__ import annotations

import dataclasses

from cytofm.config.common import PRECISIONS, _tuples
from cytofm.config.fields import Section, option
from cytofm.errors import ConfigError

__all__ = [
    "CropsConfig",
    "HeadsConfig",
    "LossConfig",
    "MaskingConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "ProbeConfig",
    "TeacherConfig",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """the ViT"""

    arch: str = option(
        "cytofm_vit_demo",
        "timm ViT name (standard: vit_small_patch16_224) or cytofm_vit_demo (4 blocks, width 128)",
    )
    model_args: dict = option(
        {},
        "extra keyword arguments for the architecture (added to those it names)",
        more="Snakemake merges mappings key by key, so an overlay that changes the model "
        "names another `arch` rather than emptying this.",
    )
    patch_size: int = option(8, "ViT patch size in pixels (standard: 16)", minimum=1)
    drop_path: float = option(0.0, "stochastic depth rate of the student", minimum=0, maximum=1)


@dataclasses.dataclass(frozen=True)
class CropsConfig(Section):
    """multi-crop views and their augmentation"""

    global_size: int = option(64, "global crop size, px (standard: 224)", minimum=1)
    local_size: int = option(32, "local crop size, px (standard: 96)", minimum=1)
    n_local: int = option(2, "local crops per image (standard: 8-10)", minimum=0)
    global_scale: tuple = option(
        (0.8, 1.0),
        "area range of global crops (near 1: keeps the um/px scale, size is diagnostic)",
        length=2,
    )
    local_scale: tuple = option(
        (0.2, 0.3), "area range of local crops ((local_size/patch_px)^2 = no rescaling)", length=2
    )
    keep_centre: float = option(
        0.15,
        "every crop keeps this central fraction of the patch (the nucleus)",
        minimum=0,
        maximum=1,
    )
    hed_sigma: float = option(
        0.05, "HED stain jitter: scale/shift of each stain concentration", minimum=0
    )
    blur_prob: float = option(0.3, "chance of a Gaussian blur per view", minimum=0, maximum=1)
    blur_sigma: tuple = option(
        (0.1, 1.0), "range of the blur's sigma, pixels of the view", length=2, above=0
    )
    brightness: float = option(
        0.1, "brightness factor per view drawn from [1 - x, 1 + x]", minimum=0, below=1
    )
    contrast: float = option(
        0.1, "contrast factor per view drawn from [1 - x, 1 + x]", minimum=0, below=1
    )

    def check(self) -> None:
        s = "pretrain.crops"
        for key in ("global_scale", "local_scale"):
            a, b = getattr(self, key)
            if not 0 < a <= b <= 1:
                raise ConfigError(f"{s}.{key} must satisfy 0 < min <= max <= 1, got {(a, b)!r}")
        lo, hi = self.blur_sigma
        if lo > hi:
            raise ConfigError(f"{s}.blur_sigma must be [min, max], got {[lo, hi]!r}")
        _tuples(self, "global_scale", "local_scale", "blur_sigma")


@dataclasses.dataclass(frozen=True)
class MaskingConfig(Section):
    """iBOT block masking of the student's global crops"""

    ratio: tuple = option((0.1, 0.5), "fraction of patch tokens masked in a masked image", length=2)
    probability: float = option(
        0.5, "fraction of global crops that are masked", minimum=0, maximum=1
    )

    def check(self) -> None:
        lo, hi = self.ratio
        if not 0 <= lo <= hi < 1:
            raise ConfigError(
                f"pretrain.masking.ratio must satisfy 0 <= min <= max < 1, got {self.ratio!r}"
            )
        _tuples(self, "ratio")


@dataclasses.dataclass(frozen=True)
class HeadsConfig(Section):
    """DINO ([CLS]) and iBOT (patch) projection heads"""

    out_dim: int = option(256, "prototypes of the [CLS] head (standard: 65536)", minimum=1)
    patch_out_dim: int = option(256, "prototypes of the patch head (standard: 8192)", minimum=1)
    shared: bool = option(False, "one head for [CLS] and patch tokens")
    hidden_dim: int = option(256, "MLP width of the heads (standard: 2048)", minimum=1)
    bottleneck_dim: int = option(64, "bottleneck before the prototypes (standard: 256)", minimum=1)


@dataclasses.dataclass(frozen=True)
class LossConfig(Section):
    """loss terms"""

    ibot_weight: float = option(1.0, "weight of the masked-patch loss", minimum=0)
    koleo_weight: float = option(0.1, "weight of the KoLeo spreading term (0 = off)", minimum=0)
    student_temp: float = option(0.1, "student temperature", above=0)


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """AdamW and its schedules"""

    batch_size: int = option(32, "global batch (split across processes)", minimum=2)
    steps: int = option(400, "optimisation steps", minimum=1)
    warmup_steps: int = option(40, "linear learning-rate warm-up", minimum=0)
    lr: float = option(
        0.004, "peak learning rate per 256 images (scaled by batch_size / 256)", above=0
    )
    min_lr: float = option(0.000001, "final learning rate (cosine)", minimum=0)
    weight_decay: float = option(0.04, "start of the cosine weight-decay schedule", minimum=0)
    weight_decay_end: float = option(0.4, "end of the weight-decay schedule", minimum=0)
    clip_grad: float = option(3.0, "gradient norm clipping", above=0)
    freeze_last_layer_steps: int = option(-1, "steps with frozen prototypes; -1 = one epoch")


@dataclasses.dataclass(frozen=True)
class TeacherConfig(Section):
    """the EMA teacher"""

    momentum: float = option(
        0.992, "teacher EMA momentum at the start (cosine to momentum_end)", minimum=0, maximum=1
    )
    momentum_end: float = option(1.0, "teacher EMA momentum at the end", minimum=0, maximum=1)
    temp: float = option(0.04, "teacher temperature after warm-up", above=0)
    temp_warmup: float = option(0.04, "teacher temperature at step 0", above=0)
    temp_warmup_steps: int = option(40, "steps of teacher-temperature warm-up", minimum=0)
    center_momentum: float = option(0.9, "EMA of the teacher centre", minimum=0, maximum=1)

    def check(self) -> None:
        if not 0 <= self.momentum <= self.momentum_end <= 1:
            raise ConfigError(
                f"pretrain.teacher.momentum ({self.momentum}) and momentum_end "
                f"({self.momentum_end}) must satisfy 0 <= momentum <= momentum_end <= 1"
            )


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Section):
    """the periodic kNN probe during pretraining (and the pretrained-vs-random probe)"""

    dataset: str = option("demo_cells", 'labelled dataset of the probe ("" = none)')
    every: int = option(100, "steps between kNN probes", minimum=1)
    k: int = option(10, "neighbours of the kNN probe", minimum=1)


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Section):
    """iBOT self-supervised pretraining (results/pretrain/{name}/)"""

    enabled: bool = option(
        True,
        "pretrain a backbone (and, on the demo, probe it against random weights)",
        output=False,
    )
    nproc: int | str = option(
        "auto",
        "DDP processes (torchrun) in the job: auto = one per GPU of the job, 1 on CPU",
        output=False,
    )
    rdzv_port: int = option(
        29400,
        "multi-node pretraining: port of the torchrun rendezvous on the job's first node",
        minimum=1,
        maximum=65535,
        output=False,
    )
    env: dict = option(
        {},
        "environment variables for every pretraining process, e.g. {NCCL_SOCKET_IFNAME: ib0}",
        more="Set what your cluster's NCCL needs (interface, InfiniBand, timeouts); the job's "
        "own environment is passed on as well. Changing them reruns nothing.",
        output=False,
    )
    name: str = option("cytofm_vit_demo", "model name; outputs go to results/pretrain/<name>/")
    sources: tuple = option(
        ("cells",),
        'patch stores: "cells" (per-slide), "tiles" (needs tiling.save_images) or dataset names',
        items="string",
    )
    splits: tuple = option(
        ("train", "val"),
        "sample-sheet splits whose slides feed pretraining ([] = all slides)",
        items="string",
    )
    transductive: bool = option(
        False,
        "false: pretraining never reads a task's test rows nor a slide task's slides; true "
        "allows it (results say so)",
    )
    model: ModelConfig = option(ModelConfig(), "the ViT")
    crops: CropsConfig = option(CropsConfig(), "multi-crop views and their augmentation")
    masking: MaskingConfig = option(MaskingConfig(), "iBOT block masking of global crops")
    heads: HeadsConfig = option(HeadsConfig(), "DINO ([CLS]) and iBOT (patch) heads")
    loss: LossConfig = option(LossConfig(), "loss terms")
    optim: OptimConfig = option(OptimConfig(), "AdamW and its schedules")
    teacher: TeacherConfig = option(TeacherConfig(), "the EMA teacher")
    probe: ProbeConfig = option(ProbeConfig(), "periodic kNN probe on a labelled dataset")
    checkpoint_every: int = option(
        100, "steps between checkpoints (a rerun resumes from the last one)", minimum=1
    )
    log_every: int = option(10, "steps between MLflow metric logs", minimum=1)
    precision: str = option(
        "auto", "auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32", choices=PRECISIONS
    )
    num_workers: int | str = option(
        "auto",
        "DataLoader processes that read uint8 patches and draw view parameters: auto = cores - 1 "
        "(max 8) on GPU (a process's share under DDP), 0 on CPU",
        more="The views themselves are made on the training device, in batches. Every batch is a "
        "function of (seed, step, rank), so results do not depend on it; the log's "
        "`data_wait_fraction` is the share of step time spent waiting for the loader.",
    )
    compile: bool = option(
        False,
        "torch.compile the student and teacher (CUDA only; the first steps pay the compilation)",
        more="benchmarks/gpu_check.py measures pretraining with and without it.",
    )
    seeds: tuple = option(
        (0,),
        "one pretraining run per seed (weights, data order, views, masks): each is a checkpoint "
        "that every backbone built on it is evaluated with",
        items="integer",
        more="Verdicts about the recipe need several: with `[0, 1, 2]` every `pretrained` "
        "backbone (and each `random` one `like` it) becomes three, `<name>` for the first seed "
        "and `<name>_seed<N>` for the others (outputs under `results/pretrain/<name>_seed<N>/`), "
        "and the summaries, intervals and paired differences pool them with the checkpoint as "
        "the top level of variation. Adding seeds later reuses the first one's results.",
    )

    @property
    def seed(self) -> int:
        """The seed of this run (the first of ``seeds``; one pretraining job gets one)."""
        return int(self.seeds[0])

    def check(self) -> None:
        s = "pretrain"
        _tuples(self, "seeds")
        if not self.seeds:
            raise ConfigError(f"{s}.seeds must name at least one seed, e.g. [0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{s}.seeds {list(self.seeds)} repeats a seed; give distinct seeds")
        if self.num_workers != "auto" and not (
            isinstance(self.num_workers, int) and self.num_workers >= 0
        ):
            raise ConfigError(
                f"{s}.num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}"
            )
        if self.nproc != "auto" and not (isinstance(self.nproc, int) and self.nproc >= 1):
            raise ConfigError(f"{s}.nproc must be 'auto' or an integer >= 1, got {self.nproc!r}")
        for key in ("global_size", "local_size"):
            v = getattr(self.crops, key)
            if v % self.model.patch_size:
                raise ConfigError(
                    f"{s}.crops.{key} ({v}) must be a multiple of {s}.model.patch_size "
                    f"({self.model.patch_size})"
                )
        _tuples(self, "sources", "splits")
