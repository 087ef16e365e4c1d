"""Typed, validated views of the config sections each stage uses.

The JSON schema (``workflow/schemas/config.schema.yaml``) checks the whole config before any job
runs; these frozen dataclasses check each stage's section again when the stage is called from
Python, and their messages name the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from cytofm.errors import ConfigError
from cytofm.provenance import canonical

__all__ = [
    "CellsConfig",
    "DatasetConfig",
    "DemoConfig",
    "EmbedConfig",
    "EvalConfig",
    "PretrainConfig",
    "ReportConfig",
    "SlideTaskConfig",
    "TaskConfig",
    "TilingConfig",
    "TrackingConfig",
    "from_mapping",
]

T = TypeVar("T")


def _positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{section}.{key} must be > 0, got {value!r}")


def _fraction(section: str, **values: float) -> None:
    for key, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{section}.{key} must be within [0, 1], got {value!r}")


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, section: str = "") -> T:
    """Build a config dataclass from a mapping, refusing keys the dataclass does not know."""
    mapping = dict(mapping or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in config section '{section or cls.__name__}'; "
            f"allowed: {sorted(names)}"
        )
    return cls(**mapping)


class _Section:
    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (tuples as lists, as YAML and JSON hold them). Nested mappings have
        sorted keys, so writing the same config in another key order changes nothing
        downstream (Snakemake compares rule params as written)."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: canonical(v) for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class DemoConfig(_Section):
    """The synthetic cytology demo: slides, ground truth and a labelled crop collection."""

    n_slides: int = 52
    pretrain_slides: int = 8
    width_px: int = 3072
    height_px: int = 3072
    mpp: float = 0.25
    cells_per_mm2: float = 110.0
    cluster_prob: float = 0.25
    abnormal_slide_fraction: float = 0.5
    abnormal_cell_fraction: float = 0.08
    debris_per_mm2: float = 60.0
    crops_per_class: int = 300
    crop_um: float = 48.0
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        s = "demo"
        if self.n_slides < 1:
            raise ConfigError(f"{s}.n_slides must be >= 1, got {self.n_slides!r}")
        if not 0 <= self.pretrain_slides < self.n_slides:
            raise ConfigError(
                f"{s}.pretrain_slides must be in [0, n_slides) = [0, {self.n_slides}), got "
                f"{self.pretrain_slides!r}: the rest of the slides are the slide task's cohort"
            )
        if min(self.width_px, self.height_px) < 512:
            raise ConfigError(
                f"{s}.width_px/height_px must be >= 512, got {self.width_px}x{self.height_px}"
            )
        _positive(s, mpp=self.mpp, cells_per_mm2=self.cells_per_mm2, crop_um=self.crop_um)
        _fraction(
            s,
            cluster_prob=self.cluster_prob,
            abnormal_slide_fraction=self.abnormal_slide_fraction,
            abnormal_cell_fraction=self.abnormal_cell_fraction,
        )
        if self.debris_per_mm2 < 0:
            raise ConfigError(f"{s}.debris_per_mm2 must be >= 0, got {self.debris_per_mm2!r}")
        if self.crops_per_class < 0:
            raise ConfigError(f"{s}.crops_per_class must be >= 0, got {self.crops_per_class!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{s}.jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")


@dataclasses.dataclass(frozen=True)
class TilingConfig(_Section):
    """Foreground mask and tile grid."""

    mpp: float = 0.5
    tile_px: int = 512
    mask_mpp: float = 4.0
    od_threshold: float = 0.06
    min_object_um2: float = 40.0
    dilate_um: float = 8.0
    min_foreground: float = 0.001
    save_images: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        s = "tiling"
        _positive(s, mpp=self.mpp, mask_mpp=self.mask_mpp, od_threshold=self.od_threshold)
        if self.tile_px < 16:
            raise ConfigError(f"{s}.tile_px must be >= 16, got {self.tile_px!r}")
        if self.mask_mpp < self.mpp:
            raise ConfigError(
                f"{s}.mask_mpp ({self.mask_mpp}) must be >= tiling.mpp ({self.mpp}): the mask "
                "is a low-resolution thumbnail"
            )
        if self.min_object_um2 < 0 or self.dilate_um < 0:
            raise ConfigError(f"{s}.min_object_um2 and {s}.dilate_um must be >= 0")
        _fraction(s, min_foreground=self.min_foreground)
        _check_reader(s, self.backend)


def _check_reader(section: str, backend: str) -> None:
    """``auto``, a built-in reader, or one a package registers (checked without importing the
    readers unless the name is not built in)."""
    if backend in ("auto", "openslide", "image", "tiatoolbox"):
        return
    from cytofm.wsi.reader import BACKENDS

    if backend not in BACKENDS:
        raise ConfigError(
            f"{section}.backend: no slide reader named {backend!r}; available: auto, "
            f"{', '.join(BACKENDS.names())}. A package adds one with an entry point in "
            '[project.entry-points."cytofm.readers"]'
        )


@dataclasses.dataclass(frozen=True)
class CellsConfig(_Section):
    """Nucleus detection and cell-centred patch extraction."""

    patch_um: float = 48.0
    patch_px: int = 64
    detector: str = "classical"
    model: str = ""
    weights: str = ""
    device: str = "auto"
    detect_mpp: float = 1.0
    nucleus_min_um: float = 4.0
    nucleus_max_um: float = 14.0
    threshold: float = 0.12
    min_darkness: float = 0.25
    merge_um: float = 11.0
    stain: str = "min_od"
    nuclear_purity: float = 0.5
    chunk: int = 256
    backend: str = "auto"

    def __post_init__(self) -> None:
        s = "cells"
        if self.stain not in ("min_od", "nuclear"):
            raise ConfigError(f"{s}.stain must be min_od or nuclear, got {self.stain!r}")
        if not 0 <= self.nuclear_purity <= 1:
            raise ConfigError(f"{s}.nuclear_purity must be in [0, 1], got {self.nuclear_purity!r}")
        _positive(
            s,
            patch_um=self.patch_um,
            detect_mpp=self.detect_mpp,
            nucleus_min_um=self.nucleus_min_um,
            threshold=self.threshold,
        )
        if self.patch_px < 8:
            raise ConfigError(f"{s}.patch_px must be >= 8, got {self.patch_px!r}")
        if self.nucleus_max_um < self.nucleus_min_um:
            raise ConfigError(
                f"{s}.nucleus_max_um ({self.nucleus_max_um}) must be >= cells.nucleus_min_um "
                f"({self.nucleus_min_um})"
            )
        if self.min_darkness < 0 or self.merge_um < 0:
            raise ConfigError(f"{s}.min_darkness and {s}.merge_um must be >= 0")
        if self.chunk < 1:
            raise ConfigError(f"{s}.chunk must be >= 1, got {self.chunk!r}")
        _check_reader(s, self.backend)
        if self.detector not in ("classical", "tiatoolbox", "cellpose"):  # a plug-in's name
            from cytofm.cells.detect import DETECTORS

            DETECTORS[self.detector]  # raises, naming what is available

    @property
    def patch_mpp(self) -> float:
        """Micrometres per pixel of the stored patches."""
        return self.patch_um / self.patch_px


@dataclasses.dataclass(frozen=True)
class DatasetConfig(_Section):
    """A labelled cell-image collection to import into the patch-store format."""

    name: str
    path: str
    format: str = "folder"
    mpp: float | None = None
    patch_um: float | None = None
    patch_px: int = 64
    query: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    group_column: str = "group"
    split_column: str = "split"
    chunk: int = 256
    classes: tuple = ()

    def __post_init__(self) -> None:
        s = f"datasets.{self.name}"
        if not self.name or not all(ch.isalnum() or ch in "._-" for ch in self.name):
            raise ConfigError(f"dataset name {self.name!r} may hold only letters, digits and '._-'")
        if self.query and self.format != "csv":
            raise ConfigError(f"{s}.query filters CSV rows; it needs format: csv")
        if self.format not in ("folder", "csv"):
            raise ConfigError(f"{s}.format must be 'folder' or 'csv', got {self.format!r}")
        if self.patch_px < 8:
            raise ConfigError(f"{s}.patch_px must be >= 8, got {self.patch_px!r}")
        if (self.mpp is None) != (self.patch_um is None):
            raise ConfigError(
                f"{s}: set both mpp and patch_um (crop a fixed field of view in micrometres) "
                f"or neither (resize whole images); got mpp={self.mpp!r}, "
                f"patch_um={self.patch_um!r}"
            )
        if self.mpp is not None:
            _positive(s, mpp=self.mpp, patch_um=self.patch_um)  # type: ignore[arg-type]
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


@dataclasses.dataclass(frozen=True)
class TrackingConfig(_Section):
    """MLflow tracking. ``MLFLOW_TRACKING_URI`` in the environment wins over ``tracking_uri``."""

    tracking_uri: str = ""
    experiment: str = "cytofm"
    defer: bool = True
    log_slide_paths: bool = False
    log_slide_metadata: bool = False


@dataclasses.dataclass(frozen=True)
class ReportConfig(_Section):
    """The results report (``results/report/``)."""

    max_slides: int = 12
    embedding: str = "auto"
    max_points: int = 3000

    def __post_init__(self) -> None:
        if self.max_slides < 0:
            raise ConfigError(f"report.max_slides must be >= 0, got {self.max_slides}")
        if self.max_points < 10:
            raise ConfigError(f"report.max_points must be >= 10, got {self.max_points}")
        if self.embedding not in ("auto", "umap", "pca"):
            raise ConfigError(f"report.embedding must be auto, umap or pca, got {self.embedding!r}")


@dataclasses.dataclass(frozen=True)
class PretrainConfig(_Section):
    """iBOT pretraining of a timm ViT (the demo default is a tiny ViT sized for a CPU)."""

    name: str = "cytofm_vit_demo"
    arch: str = "cytofm_vit_demo"
    model_args: dict = dataclasses.field(default_factory=dict)
    patch_size: int = 8
    drop_path: float = 0.0
    sources: tuple = ("cells",)
    splits: tuple = ("train", "val")
    transductive: bool = False
    global_size: int = 64
    local_size: int = 32
    n_local: int = 2
    global_scale: tuple = (0.8, 1.0)
    local_scale: tuple = (0.2, 0.3)
    keep_centre: float = 0.15
    hed_sigma: float = 0.05
    blur_prob: float = 0.3
    out_dim: int = 256
    patch_out_dim: int = 256
    shared_head: bool = False
    head_hidden_dim: int = 256
    head_bottleneck_dim: int = 64
    mask_ratio: tuple = (0.1, 0.5)
    mask_probability: float = 0.5
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    batch_size: int = 32
    steps: int = 400
    warmup_steps: int = 40
    lr: float = 4e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum: float = 0.992
    momentum_end: float = 1.0
    teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.04
    teacher_temp_warmup_steps: int = 40
    student_temp: float = 0.1
    center_momentum: float = 0.9
    clip_grad: float = 3.0
    freeze_last_layer_steps: int = -1
    checkpoint_every: int = 100
    log_every: int = 10
    knn_dataset: str = "demo_cells"
    knn_every: int = 100
    knn_k: int = 10
    precision: str = "auto"
    num_workers: int | str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        s = "pretrain"
        if self.num_workers != "auto" and not (
            isinstance(self.num_workers, int) and self.num_workers >= 0
        ):
            raise ConfigError(
                f"{s}.num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}"
            )
        for key in ("global_size", "local_size"):
            v = getattr(self, key)
            if v % self.patch_size:
                raise ConfigError(
                    f"{s}.{key} ({v}) must be a multiple of {s}.patch_size ({self.patch_size})"
                )
        if self.batch_size < 2:
            raise ConfigError(f"{s}.batch_size must be >= 2, got {self.batch_size!r}")
        if self.steps < 1:
            raise ConfigError(f"{s}.steps must be >= 1, got {self.steps!r}")
        lo, hi = self.mask_ratio
        if not 0 <= lo <= hi < 1:
            raise ConfigError(
                f"{s}.mask_ratio must satisfy 0 <= min <= max < 1, got {self.mask_ratio!r}"
            )
        _fraction(
            s,
            mask_probability=self.mask_probability,
            keep_centre=self.keep_centre,
            blur_prob=self.blur_prob,
        )
        for key in ("global_scale", "local_scale"):
            a, b = getattr(self, key)
            if not 0 < a <= b <= 1:
                raise ConfigError(f"{s}.{key} must satisfy 0 < min <= max <= 1, got {(a, b)!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"{s}.precision must be auto, fp32 or bf16, got {self.precision!r}")
        _positive(s, lr=self.lr, teacher_temp=self.teacher_temp, student_temp=self.student_temp)
        if not 0 <= self.momentum <= self.momentum_end <= 1:
            raise ConfigError(
                f"{s}.momentum ({self.momentum}) and momentum_end ({self.momentum_end}) must "
                "satisfy 0 <= momentum <= momentum_end <= 1"
            )
        for key in ("sources", "splits", "global_scale", "local_scale", "mask_ratio"):
            object.__setattr__(self, key, tuple(getattr(self, key)))


PROTOCOLS = ("linear", "knn", "fewshot", "lora")  # built in; packages add more (eval.protocols)


@dataclasses.dataclass(frozen=True)
class TaskConfig(_Section):
    """One evaluation task on an imported labelled collection."""

    name: str
    dataset: str
    label: str = "labels"
    group: str = "groups"
    split: str = "auto"
    protocols: tuple = PROTOCOLS
    shots: tuple = (1, 2, 4, 8, 16, 50)
    lora_shots: tuple = ()
    seeds: tuple = (0, 1, 2)
    fractions: tuple = ()
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        s = f"evaluate.tasks.{self.name}"
        if not self.name or not all(ch.isalnum() or ch in "._-" for ch in self.name):
            raise ConfigError(f"task name {self.name!r} may hold only letters, digits and '._-'")
        bad = sorted(set(self.protocols) - set(PROTOCOLS))
        if bad:
            from cytofm.eval.protocols import PROTOCOLS as REGISTERED

            bad = [p for p in bad if p not in REGISTERED]
            if bad:
                raise ConfigError(
                    f"{s}.protocols: unknown {bad}; choose from {REGISTERED.names()}, or install "
                    'a package that adds one ([project.entry-points."cytofm.protocols"])'
                )
        if any(int(k) < 1 for k in (*self.shots, *self.lora_shots)):
            raise ConfigError(
                f"{s}.shots and lora_shots must be >= 1, got {list(self.shots)}, "
                f"{list(self.lora_shots)}"
            )
        if not self.seeds:
            raise ConfigError(f"{s}.seeds must name at least one seed")
        if any(not 0 < float(f) <= 1 for f in self.fractions):
            raise ConfigError(
                f"{s}.fractions are shares of the training split in (0, 1], "
                f"got {list(self.fractions)}"
            )
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise ConfigError(
                f"{s}: test_fraction must be in (0, 1) and val_fraction in [0, 1), got "
                f"{self.test_fraction}, {self.val_fraction}"
            )
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(f"{s}: val_fraction + test_fraction leave too little to train on")
        if self.split not in ("auto", "given", "derived"):
            raise ConfigError(f"{s}.split must be auto, given or derived, got {self.split!r}")
        for key in ("protocols", "shots", "lora_shots", "seeds", "fractions"):
            object.__setattr__(self, key, tuple(getattr(self, key)))


@dataclasses.dataclass(frozen=True)
class SlideTaskConfig(_Section):
    """One slide-level task: a sheet column of slide labels, learnt by attention MIL over each
    slide's cached cell (or tile) features."""

    name: str
    label: str = "label"
    group: str = "patient_id"
    instances: str = "cells"
    slides: str = "all"
    folds: int = 3
    seeds: tuple = (0, 1, 2)
    truth_positive: tuple = ()
    classes: tuple = ()

    def __post_init__(self) -> None:
        s = f"evaluate.slide_tasks.{self.name}"
        if not self.name or not all(ch.isalnum() or ch in "._-" for ch in self.name):
            raise ConfigError(f"task name {self.name!r} may hold only letters, digits and '._-'")
        if self.instances not in ("cells", "tiles"):
            raise ConfigError(f"{s}.instances must be cells or tiles, got {self.instances!r}")
        if self.slides not in ("all", "demo"):
            raise ConfigError(f"{s}.slides must be all or demo, got {self.slides!r}")
        if self.folds < 2:
            raise ConfigError(f"{s}.folds must be >= 2, got {self.folds!r}")
        if not self.seeds:
            raise ConfigError(f"{s}.seeds must name at least one seed")
        for key in ("seeds", "truth_positive"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Protocol settings shared by every task (the ``evaluate`` section without ``tasks``)."""

    linear_Cs: tuple = (0.001, 0.01, 0.1, 1.0, 10.0)
    linear_max_iter: int = 1000
    knn_k: int = 20
    lora_rank: int = 2
    lora_alpha: float = 1.0
    lora_dropout: float = 0.25
    lora_target_modules: tuple = ("q", "v")
    lora_lrs: tuple = (0.01, 0.003, 0.001, 0.0003, 0.0001)
    lora_batch_size: int = 32
    lora_iters_per_shot: int = 100
    lora_fraction_epochs: int = 100
    lora_warmup_steps: int = 50
    lora_min_lr: float = 1e-6
    lora_max_steps: int = 0
    lora_weight_decay: float = 0.01
    lora_fractions: tuple = ()
    select_metric: str = "balanced_accuracy"
    bootstrap: int = 1000
    device: str = "auto"
    precision: str = "auto"
    mil_lr: float = 0.0005
    mil_weight_decay: float = 0.0001
    mil_max_epochs: int = 100
    mil_min_epochs: int = 20
    mil_patience: int = 10
    mil_batch_bags: int = 1
    mil_hidden: int = 128
    mil_attn_dim: int = 64
    mil_dropout: float = 0.25
    mil_balance: bool = True
    mil_top_k: int = 16

    def part(self, protocol: str) -> dict:
        """The keys a protocol family reads: ``mil`` (attention MIL, plus ``bootstrap``) or
        ``patch`` (everything else). Rules pass only these, so changing a MIL setting never
        reruns a patch-level evaluation and vice versa."""
        items = self.to_dict().items()
        if protocol == "mil":
            return {k: v for k, v in items if k.startswith("mil_") or k == "bootstrap"}
        return {k: v for k, v in items if not k.startswith("mil_")}

    def mil_train_args(self) -> dict:
        """Keyword arguments of :func:`cytofm.eval.mil.train_mil`."""
        return {
            "lr": self.mil_lr,
            "weight_decay": self.mil_weight_decay,
            "max_epochs": self.mil_max_epochs,
            "min_epochs": self.mil_min_epochs,
            "patience": self.mil_patience,
            "batch_bags": self.mil_batch_bags,
            "hidden": self.mil_hidden,
            "attn_dim": self.mil_attn_dim,
            "dropout": self.mil_dropout,
            "balance": self.mil_balance,
        }

    def __post_init__(self) -> None:
        s = "evaluate"
        _positive(s, mil_lr=self.mil_lr)
        for key in ("mil_max_epochs", "mil_batch_bags", "mil_hidden", "mil_attn_dim", "mil_top_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{s}.{key} must be >= 1, got {getattr(self, key)!r}")
        if not 0 <= self.mil_dropout < 1:
            raise ConfigError(f"{s}.mil_dropout must be in [0, 1), got {self.mil_dropout!r}")
        if not self.linear_Cs or min(self.linear_Cs) <= 0:
            raise ConfigError(f"{s}.linear_Cs must be positive numbers, got {self.linear_Cs!r}")
        if not self.lora_lrs or min(self.lora_lrs) <= 0:
            raise ConfigError(f"{s}.lora_lrs must be positive numbers, got {self.lora_lrs!r}")
        if self.knn_k < 1 or self.lora_rank < 1:
            raise ConfigError(f"{s}.knn_k and lora_rank must be >= 1")
        if "qkv" in self.lora_target_modules:
            raise ConfigError(
                f"{s}.lora_target_modules: 'qkv' is split into separate 'q', 'k' and 'v' "
                "projections before the adapters go on; list those instead (the protocol: "
                "[q, v]; all of attention: [q, k, v, proj])"
            )
        for key in ("lora_iters_per_shot", "lora_fraction_epochs", "lora_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{s}.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.lora_warmup_steps < 0 or self.lora_max_steps < 0:
            raise ConfigError(
                f"{s}.lora_warmup_steps and lora_max_steps must be >= 0 (lora_max_steps 0 = the "
                f"protocol's schedule), got {self.lora_warmup_steps}, {self.lora_max_steps}"
            )
        if self.select_metric not in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
            raise ConfigError(
                f"{s}.select_metric must be accuracy, balanced_accuracy, macro_f1 or auroc, "
                f"got {self.select_metric!r}"
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"{s}.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if any(not 0 < float(f) <= 1 for f in self.lora_fractions):
            raise ConfigError(
                f"{s}.lora_fractions are shares of the training split in (0, 1], "
                f"got {list(self.lora_fractions)}"
            )
        for key in ("linear_Cs", "lora_target_modules", "lora_lrs", "lora_fractions"):
            object.__setattr__(self, key, tuple(getattr(self, key)))


@dataclasses.dataclass(frozen=True)
class EmbedConfig(_Section):
    """Feature caching: which stores get features and how inference runs."""

    sources: tuple = ("datasets", "cells")
    batch_size: int = 256
    precision: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = sorted(set(self.sources) - {"datasets", "cells", "tiles"})
        if bad:
            raise ConfigError(f"embed.sources: unknown {bad}; choose from datasets, cells, tiles")
        if self.batch_size < 1:
            raise ConfigError(f"embed.batch_size must be >= 1, got {self.batch_size!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"embed.precision must be auto, fp32 or bf16, got {self.precision!r}")
        object.__setattr__(self, "sources", tuple(self.sources))
