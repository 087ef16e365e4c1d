"""The config sections of how the run is carried out and what it leaves besides results:
job resources per rule, locally and on SLURM (``resources``), the results report
(``report``), files for other tools (``export``) and MLflow tracking (``mlflow``)."""

from __future__ import annotations

import dataclasses

from cytofm.config.fields import Section, option
from cytofm.errors import ConfigError

__all__ = [
    "RESOURCE_DEFAULTS",
    "ExportConfig",
    "ReportConfig",
    "ResourcesConfig",
    "RuleResources",
    "TrackingConfig",
]

# Per rule: threads, memory (MB), wall time (minutes); `resources.<rule>` overrides.
RESOURCE_DEFAULTS = {
    "demo_slide": (1, 3000, 30),
    "demo_crops": (1, 1000, 30),
    "tile": (1, 2000, 120),
    "cells": (1, 2000, 240),
    "import_dataset": (1, 2000, 60),
    "pretrain": (8, 8000, 720),
    "pretrain_probe": (2, 4000, 60),
    "backbone": (1, 8000, 60),
    "embed": (1, 4000, 120),  # 4 threads when jobs get a GPU (data loading)
    "evaluate": (1, 4000, 240),
    "mil": (1, 4000, 120),
}


@dataclasses.dataclass(frozen=True)
class RuleResources(Section):
    """one rule's job resources"""

    threads: int | None = option(None, "threads of the job", minimum=1)
    mem_mb: int | None = option(None, "memory, MB", minimum=1)
    runtime: int | None = option(None, "wall time, minutes", minimum=1)
    gpus: int | None = option(
        None,
        "pretrain only: GPUs of the pretraining job (DDP, one process each); per node when "
        "nodes > 1",
        minimum=0,
    )
    nodes: int | None = option(
        None,
        "pretrain only, SLURM: nodes of the pretraining job (srun starts one torchrun per node)",
        minimum=1,
    )


def _rule_field(rule: str):
    t, m, r = RESOURCE_DEFAULTS[rule]
    extra = "; threads 4 when jobs get a GPU" if rule in ("embed", "evaluate") else ""
    if rule == "embed":
        extra += "; also each embed_slides job, of embed.slides_per_job slides"
    return option(
        None, f"{rule} jobs (default: threads {t}, mem_mb {m}, runtime {r}{extra})", output=False
    )


@dataclasses.dataclass(frozen=True)
class ResourcesConfig(Section):
    """job resources, locally and on SLURM"""

    gpu: bool | str = option(
        "auto",
        "pretrain, embed and LoRA jobs request a GPU: auto = on a cluster or where this machine "
        "has one; true | false",
        more="Locally one GPU job runs at a time per GPU; on SLURM the plugin requests a GPU "
        "per job. `auto` is yes when jobs go to a cluster (Snakemake run with `--jobs`, as "
        "`profiles/slurm` does; the submitting host needs no GPU) or where `/dev/nvidia*` is "
        "visible, no on a CPU-only machine run with `--cores`.",
        example={"pretrain": {"threads": 8, "mem_mb": 8000, "runtime": 720, "gpus": 4}},
    )
    demo_slide: RuleResources | None = _rule_field("demo_slide")
    demo_crops: RuleResources | None = _rule_field("demo_crops")
    tile: RuleResources | None = _rule_field("tile")
    cells: RuleResources | None = _rule_field("cells")
    import_dataset: RuleResources | None = _rule_field("import_dataset")
    pretrain: RuleResources | None = _rule_field("pretrain")
    pretrain_probe: RuleResources | None = _rule_field("pretrain_probe")
    backbone: RuleResources | None = _rule_field("backbone")
    embed: RuleResources | None = _rule_field("embed")
    evaluate: RuleResources | None = _rule_field("evaluate")
    mil: RuleResources | None = _rule_field("mil")

    def check(self) -> None:
        if self.gpu not in (True, False, "auto"):
            raise ConfigError(f"resources.gpu must be auto, true or false, got {self.gpu!r}")
        for key in ("gpus", "nodes"):
            multi = [
                r
                for r in RESOURCE_DEFAULTS
                if r != "pretrain"
                and getattr(self, r) is not None
                and getattr(getattr(self, r), key)
            ]
            if multi:
                raise ConfigError(
                    f"resources: '{key}' is read for pretrain only (one job, several GPUs "
                    f"under torchrun); remove it from {multi}"
                )


@dataclasses.dataclass(frozen=True)
class ReportConfig(Section):
    """the results report: results/report/index.html (+ tables/, figures/)"""

    enabled: bool = option(True, "build it at the end of the run", output=False)
    max_slides: int = option(
        12, "slides shown in the QC and heatmap galleries (all stay in results/)", minimum=0
    )
    embedding: str = option(
        "auto",
        "2-D maps of features: auto (UMAP if umap-learn is installed, else PCA) | umap | pca",
        choices=("auto", "umap", "pca"),
    )
    max_points: int = option(3000, "points per embedding map (a seeded random subset)", minimum=10)


@dataclasses.dataclass(frozen=True)
class ExportConfig(Section):
    """files for other tools: QuPath GeoJSON, TRIDENT and STAMP HDF5 (results/export/)"""

    geojson: bool = option(
        False,
        "each slide's cells (detections) and tissue (annotations) as GeoJSON QuPath imports",
        more="`results/export/geojson/{slide}.geojson`, level-0 pixels; one such file can be "
        "asked for as a target without this flag. Specimens of fields are left out.",
    )
    tiles: bool = option(False, "also the kept tiles (objectType tile) in the GeoJSON")
    cell_diameter_um: float = option(
        9.0, "diameter of the circle a cell is drawn as in QuPath, um", above=0
    )
    hdf5: bool = option(
        False,
        "each backbone's features of each slide as HDF5 in TRIDENT's and STAMP's layouts",
        more="`results/export/trident/{backbone}/{kind}/{slide}.h5` (coords: level-0 px of "
        "each patch's top-left corner) and `results/export/stamp/...` (coords in um).",
    )


@dataclasses.dataclass(frozen=True)
class TrackingConfig(Section):
    """tracking; MLFLOW_TRACKING_URI in the environment wins over tracking_uri"""

    tracking_uri: str = option(
        "", '"" = sqlite:///<results>/mlflow.db ; "none" switches tracking off'
    )
    experiment: str = option("cytofm", "MLflow experiment name")
    defer: bool = option(
        True,
        "jobs spool their runs (no mlflow import: 2-3 s less per job); the workflow sends them "
        "to MLflow when it ends. false = every job logs live (pretraining always does)",
    )
    system_metrics_s: float = option(
        10.0,
        "seconds between samples of CPU, memory and GPU use logged by long jobs (pretraining, "
        "embedding, LoRA); 0 = none",
        minimum=0,
    )
    register_models: bool = option(
        True,
        "log the pretrained backbone and every final slide-level model as MLflow models and "
        "register them in the model registry",
    )
    log_slide_paths: bool = option(False, "log slide file paths (may hold personal data) to MLflow")
    log_slide_metadata: bool = option(
        False,
        "log each slide's vendor metadata (scan date, barcode, operator) to MLflow",
    )
