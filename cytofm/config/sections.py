"""Every config key, defined once: the frozen dataclasses of each section, with type, default,
allowed values and a one-line doc on the field.

Each field declares its bounds once (``option(minimum=..., choices=...)``), and every section,
however it is built, is held to them; a section's ``check`` adds what the bounds cannot say
(relations between keys, plug-in names), naming the key, the bad value and what is allowed. The
schema, ``config.yaml`` and ``docs/configuration.md`` are generated from these classes (``python -m
cytofm.config``).

The sections are defined by topic, each module importing only :mod:`cytofm.config.common`
(the shared names and checks) and :mod:`cytofm.config.fields`: :mod:`~cytofm.config.slides`
(demo, tiling, cells, datasets, detection_eval), :mod:`~cytofm.config.pretrain`,
:mod:`~cytofm.config.features` (backbones, embed), :mod:`~cytofm.config.evaluate` and
:mod:`~cytofm.config.run` (resources, report, export, mlflow). This module holds the top-level
:class:`Config` that nests them, with the entries ``config.yaml`` ships or shows as examples,
and re-exports every section."""

from __future__ import annotations

import dataclasses

from cytofm.config.common import (  # noqa: F401 (re-exported: callers import them from here)
    BACKBONE_KINDS_BUILTIN,
    KINDS_WITHOUT_NETWORK,
    METRICS,
    PRECISIONS,
    PROTOCOLS,
    READERS,
)
from cytofm.config.evaluate import (
    EvalConfig,
    KnnConfig,
    LinearConfig,
    LoraConfig,
    MilConfig,
    SlideTaskConfig,
    TaskConfig,
    check_hierarchy_spec,
)
from cytofm.config.features import BackboneSpec, EmbedConfig
from cytofm.config.fields import Section, name_sections, option
from cytofm.config.pretrain import (
    CropsConfig,
    HeadsConfig,
    LossConfig,
    MaskingConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    ProbeConfig,
    TeacherConfig,
)
from cytofm.config.run import (
    RESOURCE_DEFAULTS,
    ExportConfig,
    ReportConfig,
    ResourcesConfig,
    RuleResources,
    TrackingConfig,
)
from cytofm.config.slides import (
    CellsConfig,
    DatasetConfig,
    DemoConfig,
    DetectionEvalConfig,
    TilingConfig,
)

__all__ = [
    "PROTOCOLS",
    "RESOURCE_DEFAULTS",
    "BackboneSpec",
    "CellsConfig",
    "Config",
    "CropsConfig",
    "DatasetConfig",
    "DemoConfig",
    "DetectionEvalConfig",
    "EmbedConfig",
    "EvalConfig",
    "ExportConfig",
    "HeadsConfig",
    "KnnConfig",
    "LinearConfig",
    "LoraConfig",
    "LossConfig",
    "MaskingConfig",
    "MilConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "ProbeConfig",
    "ReportConfig",
    "ResourcesConfig",
    "RuleResources",
    "SlideTaskConfig",
    "TaskConfig",
    "TeacherConfig",
    "TilingConfig",
    "TrackingConfig",
    "check_hierarchy_spec",
]


_EXAMPLE_DATASET = {
    "pbc": {
        "path": "/data/pbc/images",
        "format": "folder",
        "mpp": None,
        "patch_um": None,
        "patch_px": 64,
        "query": None,
        "split_column": "split",
        "classes": [],
    }
}
_SHIPPED_BACKBONES = {
    "cytofm": {"kind": "pretrained"},
    "random": {"kind": "random", "like": "cytofm", "seed": 0},
    "morphometry": {"kind": "morphometry"},
}
_EXAMPLE_BACKBONES = {
    "uni": {
        "kind": "timm",
        "arch": "vit_large_patch16_224",
        "weights": "/models/uni/pytorch_model.bin",
        "model_args": {"init_values": 1.0e-5, "dynamic_img_size": True},
        "input_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "vit_in1k": {"kind": "hub", "arch": "hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k"},
}


@dataclasses.dataclass(frozen=True)
class Config(Section):
    """cytofm configuration"""

    results: str = option(
        "results", "folder that receives every output (zarr stores, QC images, MLflow db)"
    )
    samples: str = option(
        "", 'your sample sheet (slides.tsv, see README.md); "" = no slides of your own'
    )
    seed: int = option(0, "global seed; same config + same data = same numbers on CPU")
    demo: DemoConfig = option(DemoConfig(), DemoConfig.__doc__)
    tiling: TilingConfig = option(TilingConfig(), TilingConfig.__doc__)
    cells: CellsConfig = option(CellsConfig(), CellsConfig.__doc__)
    datasets: dict[str, DatasetConfig] = option(
        {},
        "labelled cell collections to import (results/datasets/{name}.zarr)",
        example=_EXAMPLE_DATASET,
    )
    pretrain: PretrainConfig = option(PretrainConfig(), PretrainConfig.__doc__)
    backbones: dict[str, BackboneSpec] = option(
        {},
        "feature extractors to compare (results/features/<name>/); {} = no evaluation",
        shipped=_SHIPPED_BACKBONES,
        example=_EXAMPLE_BACKBONES,
    )
    embed: EmbedConfig = option(EmbedConfig(), EmbedConfig.__doc__)
    evaluate: EvalConfig = option(EvalConfig(), EvalConfig.__doc__)
    detection_eval: DetectionEvalConfig = option(DetectionEvalConfig(), DetectionEvalConfig.__doc__)
    resources: ResourcesConfig = option(ResourcesConfig(), ResourcesConfig.__doc__)
    report: ReportConfig = option(ReportConfig(), ReportConfig.__doc__)
    export: ExportConfig = option(ExportConfig(), ExportConfig.__doc__)
    mlflow: TrackingConfig = option(TrackingConfig(), TrackingConfig.__doc__)


name_sections(Config)
