import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cytofm.config import (
    CellsConfig,
    DatasetConfig,
    DemoConfig,
    EmbedConfig,
    EvalConfig,
    PretrainConfig,
    SlideTaskConfig,
    TaskConfig,
    TilingConfig,
    TrackingConfig,
    from_mapping,
)
from cytofm.errors import ConfigError
from cytofm.eval.backbones import BackboneSpec

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = [
    REPO / "config.yaml",
    REPO / ".test" / "config.yaml",
    *sorted(REPO.glob("configs/*.yaml")),
]


def _merge(base: dict, over: dict) -> dict:
    """Snakemake's --configfile semantics: later files update nested mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


SECTIONS = {
    "demo": DemoConfig,
    "tiling": TilingConfig,
    "cells": CellsConfig,
    "mlflow": TrackingConfig,
    "pretrain": PretrainConfig,
    "embed": EmbedConfig,
    "evaluate": EvalConfig,
}
NOT_IN_DATACLASS = {"enabled", "nproc", "tasks", "slide_tasks"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name + ":" + p.parent.name)
def test_every_shipped_config_validates_and_builds(path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = _merge(config, yaml.safe_load(path.read_text()))
    validate(config, str(SCHEMA))  # fills defaults
    for key, cls in SECTIONS.items():
        section = {k: v for k, v in config[key].items() if k not in NOT_IN_DATACLASS}
        from_mapping(cls, section, key)
    for name, task in config["evaluate"]["tasks"].items():
        from_mapping(TaskConfig, {"name": name, **task}, f"evaluate.tasks.{name}")
    for name, task in config["evaluate"]["slide_tasks"].items():
        from_mapping(SlideTaskConfig, {"name": name, **task}, f"evaluate.slide_tasks.{name}")
    for name, spec in config["backbones"].items():
        from_mapping(BackboneSpec, {"name": name, **spec}, f"backbones.{name}")


def test_schema_defaults_match_dataclass_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())
    for key, cls in SECTIONS.items():
        props = schema["properties"][key]["properties"]
        defaults = cls().to_dict()
        for field in dataclasses.fields(cls):
            if key == "evaluate" and field.name == "tasks":
                continue
            assert field.name in props, f"{key}.{field.name} missing from the schema"
            assert props[field.name]["default"] == defaults[field.name], f"{key}.{field.name}"


def test_config_yaml_comments_every_key():
    lines = (REPO / "config.yaml").read_text().splitlines()
    keyed = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#") and ":" in ln]
    uncommented = [ln for ln in keyed if "#" not in ln]
    assert not uncommented, f"config.yaml keys without a comment: {uncommented}"


def test_schema_rejects_unknown_and_out_of_range():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["tiling"]["tile_px"] = 4
    with pytest.raises(Exception, match="tile_px|minimum"):
        validate(config, str(SCHEMA))
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["tiling"]["tile_size"] = 4
    with pytest.raises(Exception, match="tile_size"):
        validate(config, str(SCHEMA))


@pytest.mark.parametrize(
    ("cls", "values", "pattern"),
    [
        (TilingConfig, {"mpp": 0}, r"tiling\.mpp must be > 0, got 0"),
        (TilingConfig, {"mask_mpp": 0.1}, r"mask_mpp \(0\.1\) must be >= tiling\.mpp"),
        (TilingConfig, {"backend": "bioformats"}, "backend must be one of"),
        (CellsConfig, {"nucleus_min_um": 10, "nucleus_max_um": 5}, "nucleus_max_um"),
        (CellsConfig, {"patch_px": 4}, r"cells\.patch_px must be >= 8, got 4"),
        (DemoConfig, {"abnormal_cell_fraction": 1.5}, "abnormal_cell_fraction"),
        (DatasetConfig, {"name": "x", "path": "p", "mpp": 0.5}, "set both mpp and patch_um"),
        (DatasetConfig, {"name": "a b", "path": "p"}, "letters, digits"),
        (TaskConfig, {"name": "t", "dataset": "d", "protocols": ["svm"]}, "unknown.*svm"),
        (TaskConfig, {"name": "t", "dataset": "d", "shots": [0]}, "shots must be >= 1"),
        (
            TaskConfig,
            {"name": "t", "dataset": "d", "test_fraction": 0.6, "val_fraction": 0.4},
            "too little to train",
        ),
        (EvalConfig, {"select_metric": "f2"}, "select_metric"),
        (EmbedConfig, {"sources": ["slides"]}, "embed.sources"),
    ],
)
def test_dataclasses_name_the_bad_value(cls, values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cls(**values)


def test_from_mapping_refuses_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['tile_size'\].*tiling"):
        from_mapping(TilingConfig, {"tile_size": 3}, "tiling")


def test_patch_mpp():
    assert CellsConfig(patch_um=48, patch_px=64).patch_mpp == pytest.approx(0.75)
