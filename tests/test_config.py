import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config, validate

from cytofm.config import (
    CellsConfig,
    Config,
    DatasetConfig,
    DemoConfig,
    EmbedConfig,
    EvalConfig,
    PretrainConfig,
    TaskConfig,
    TilingConfig,
    check_moved,
    from_mapping,
)
from cytofm.config.fields import entry_type, hints, section_type
from cytofm.config.generate import generated
from cytofm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = [
    REPO / "config.yaml",
    *sorted((REPO / ".test").glob("*.yaml")),
    *sorted(REPO.glob("configs/*.yaml")),
]
# overlays used on top of another overlay (tests/test_real_eval.py)
BASES = {"real_data_ci.yaml": REPO / "configs" / "real_data.yaml"}


def _merge(base: dict, over: dict) -> dict:
    """What `snakemake --configfile ...` does: Snakemake's own update_config, which merges
    nested mappings key by key (so an overlay's `{}` changes nothing)."""
    out = copy.deepcopy(base)
    update_config(out, copy.deepcopy(over))
    return out


def _merged(*overlays: dict) -> dict:
    """config.yaml, then each overlay in command-line order, validated (defaults filled)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for over in overlays:
        config = _merge(config, over)
    validate(config, str(SCHEMA))
    return config


DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _readme_yaml_recipes() -> list[tuple[str, dict]]:
    """Every ```yaml block of README.md and docs/*.md ("page:line", its mapping)."""
    out = []
    for page in DOC_PAGES:
        text = page.read_text()
        for m in re.finditer(r"^( *)```yaml\n(.*?)^\1```", text, flags=re.S | re.M):
            body = "\n".join(ln[len(m.group(1)) :] for ln in m.group(2).splitlines())
            where = f"{page.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}"
            out.append((where, yaml.safe_load(body)))
    return out


def _noop_mappings(base, over, path=""):
    """Places where an overlay writes `{}` over a non-empty mapping: Snakemake keeps the base's
    keys there, so the overlay does not mean what it says."""
    found = []
    for key, value in (over or {}).items():
        here = f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(base, dict) and isinstance(base.get(key), dict):
            if not value and base[key]:
                found.append(here)
            found += _noop_mappings(base[key], value, here)
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name + ":" + p.parent.name)
def test_every_shipped_config_validates_and_builds(path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if path.name in BASES:
        config = _merge(config, yaml.safe_load(BASES[path.name].read_text()))
    config = _merge(config, yaml.safe_load(path.read_text()))
    validate(config, str(SCHEMA))  # fills defaults
    cfg = from_mapping(Config, config)
    assert set(cfg.evaluate.tasks) == set(config["evaluate"]["tasks"])
    assert set(cfg.backbones) == set(config["backbones"])


RECIPES = [
    *[(p.name, yaml.safe_load(p.read_text())) for p in sorted(REPO.glob("configs/*.yaml"))],
    *_readme_yaml_recipes(),
]


def test_readme_has_its_recipes():
    assert len(_readme_yaml_recipes()) >= 6  # the regex finds the blocks (indented ones too)


@pytest.mark.parametrize(("name", "overlay"), RECIPES, ids=[n for n, _ in RECIPES])
def test_recipes_mean_what_they_say_when_merged_as_snakemake_merges(name, overlay):
    """Every shipped overlay and README recipe, merged over config.yaml exactly as Snakemake
    merges: no `{}` that would silently keep the base's keys, every value it sets arrives,
    and the result validates and builds."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    assert not _noop_mappings(base, overlay), f"{name}: {{}} keeps config.yaml's keys there"
    config = _merged(overlay)

    def arrives(over, merged, path):
        for key, value in over.items():
            if isinstance(value, dict):
                arrives(value, merged[key], f"{path}{key}.")
            else:
                assert merged[key] == value, f"{name}: {path}{key}"

    arrives(overlay, config, "")
    from_mapping(Config, config)


def _built(config: dict):
    from cytofm.ssl.model import build_backbone, resolve_arch

    cfg = from_mapping(Config, config).pretrain
    m = cfg.model
    vit = build_backbone(m.arch, cfg.crops.global_size, m.patch_size, m.model_args)
    return cfg, vit, resolve_arch(m.arch, m.model_args)[0]


def test_vits16_overlay_trains_a_vit_s16():
    """README: `snakemake --configfile my_config.yaml configs/vits16.yaml` on a user config
    copied from config.yaml (README's step 2) builds ViT-S/16 itself, not the demo's model."""
    my_config = {"samples": "/data/project/slides.tsv", "demo": {"enabled": False}}
    vits16 = yaml.safe_load((REPO / "configs" / "vits16.yaml").read_text())
    cfg, vit, timm_arch = _built(_merged(my_config, vits16))
    n_params = sum(p.numel() for p in vit.parameters())
    assert timm_arch == "vit_small_patch16_224"
    assert (len(vit.blocks), vit.embed_dim, vit.patch_embed.patch_size) == (12, 384, (16, 16))
    assert round(n_params / 1e6, 1) == 21.7, n_params
    assert (cfg.crops.global_size, cfg.crops.local_size, cfg.crops.n_local) == (224, 96, 8)


def test_demo_config_trains_the_small_vit():
    cfg, vit, timm_arch = _built(_merged())
    assert (len(vit.blocks), vit.embed_dim, vit.patch_embed.patch_size) == (4, 128, (8, 8))
    assert cfg.model.arch == "cytofm_vit_demo" and timm_arch == "vit_small_patch16_224"


def test_generated_schema_config_and_reference_are_current():
    """The schema, config.yaml and docs/configuration.md are generated from the dataclasses;
    regenerate them (cytofm config write) when a field changes."""
    for path, text in generated(REPO).items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale"


def _fields(cls, path=""):
    """(dotted key, field, is a section) of every key; entries of a mapping as <name>."""
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if path.endswith("<name>.") and f.name == "name":
            continue
        yield f"{path}{f.name}", f, bool(section_type(tp) or entry_type(tp))
        if section_type(tp):
            yield from _fields(section_type(tp), f"{path}{f.name}.")
        elif entry_type(tp):
            yield from _fields(entry_type(tp), f"{path}{f.name}.<name>.")


def test_every_key_is_documented_and_in_the_reference():
    reference = (REPO / "docs" / "configuration.md").read_text()
    keys = list(_fields(Config))
    assert len(keys) > 150
    for key, field, is_section in keys:
        assert field.metadata.get("doc"), f"{key} has no doc"
        if "." not in key and is_section:
            assert f"## `{key}`" in reference, f"{key} has no section in the reference"
        elif not is_section or key.startswith("resources.") or key.endswith("tasks"):
            key = re.sub(r"^resources\.(\w+)\.(?=\w)", "resources.<rule>.", key)
            assert f"| `{key}` |" in reference, f"{key} missing from docs/configuration.md"


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ("pretrain", "lr", "pretrain.optim.lr"),
        ("pretrain", "teacher_temp", "pretrain.teacher.temp"),
        ("pretrain", "knn_dataset", "pretrain.probe.dataset"),
        ("evaluate", "lora_max_steps", "evaluate.lora.max_steps"),
        ("evaluate", "mil_top_k", "evaluate.mil.top_k"),
        ("evaluate", "linear_Cs", "evaluate.linear.Cs"),
    ],
)
def test_old_flat_keys_name_their_new_place(section, old, new):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config[section][old] = 1
    with pytest.raises(ConfigError, match=rf"'{section}\.{old}' is now '{re.escape(new)}'"):
        check_moved(config)
    with pytest.raises(ConfigError, match=re.escape(new)):
        from_mapping(type(getattr(Config(), section)), {old: 1}, section)


def test_updated_changes_nested_keys_and_checks_them():
    cfg = PretrainConfig().updated(
        {"optim.steps": 7, "model.patch_size": 16, "crops.global_size": 32}
    )
    assert (cfg.optim.steps, cfg.model.patch_size, cfg.crops.global_size) == (7, 16, 32)
    assert cfg.optim.lr == PretrainConfig().optim.lr
    with pytest.raises(ConfigError, match="multiple of pretrain.model.patch_size"):
        cfg.updated({"crops.global_size": 40})


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
        (TilingConfig, {"mpp": 0}, r"'tiling\.mpp' must be > 0, got 0"),
        (TilingConfig, {"mask_mpp": 0.1}, r"mask_mpp \(0\.1\) must be >= tiling\.mpp"),
        (TilingConfig, {"backend": "bioformats"}, "tiling.backend: no slide reader.*bioformats"),
        (CellsConfig, {"backend": "bioformats"}, "cells.backend: no slide reader.*bioformats"),
        (CellsConfig, {"detector": "hovernet"}, "cells.detector: no nucleus detector.*hovernet"),
        (CellsConfig, {"nucleus_min_um": 10, "nucleus_max_um": 5}, "nucleus_max_um"),
        (CellsConfig, {"patch_px": 4}, r"'cells\.patch_px' must be >= 8, got 4"),
        (DemoConfig, {"abnormal_cell_fraction": 1.5}, "abnormal_cell_fraction"),
        (DatasetConfig, {"name": "x", "path": "p", "mpp": 0.5}, "set both mpp and patch_um"),
        (DatasetConfig, {"name": "a b", "path": "p"}, "letters, digits"),
        (TaskConfig, {"name": "t", "dataset": "d", "protocols": ["svm"]}, "unknown.*svm"),
        (
            TaskConfig,
            {"name": "t", "dataset": "d", "shots": [0]},
            r"'evaluate\.tasks\.t\.shots' \(entry 0\) must be >= 1",
        ),
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


def _out_of_bounds(field) -> list:
    """One value outside each bound its field declares (in a list of one for list-valued
    fields)."""
    m = field.metadata
    bad = []
    if m.get("choices") is not None:
        words = not all(isinstance(c, (int, float)) for c in m["choices"])
        bad.append("not_one_of_the_choices" if words else max(m["choices"]) + 1)
    if m.get("minimum") is not None:
        bad.append(m["minimum"] - 1)
    if m.get("above") is not None:
        bad.append(m["above"])
    if m.get("maximum") is not None:
        bad.append(m["maximum"] + 1)
    if m.get("below") is not None:
        bad.append(m["below"])
    listed = (
        m.get("items")
        or isinstance(field.default, (tuple, list))
        or (
            field.default_factory is not dataclasses.MISSING
            and isinstance(field.default_factory(), (tuple, list))
        )
    )
    return [[b] for b in bad] if listed else bad


BOUNDED = [
    (key, field)
    for key, field, is_section in _fields(Config)
    if not is_section
    and any(
        field.metadata.get(b) is not None
        for b in ("choices", "minimum", "maximum", "above", "below")
    )
]


def test_every_declared_bound_is_enforced_as_the_workflow_builds_its_plan():
    """Each field's bounds (the ones the schema is generated from) refuse a value outside them
    in ``Plan.build(config, local=..., validate=validate)``, the call the workflow makes
    (workflow/rules/common.smk), naming the key: no bad
    value (``evaluate.lora.dropout: 1.5``) runs."""
    from cytofm.plan import Plan

    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert "Plan.build(config, local=LOCAL, validate=validate)" in common
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    names = {  # an entry of each named mapping, to reach its keys
        "datasets": "extra",
        "backbones": "cytofm",
        "evaluate.tasks": "demo_cells",
        "evaluate.slide_tasks": "demo_abnormal",
    }
    assert len(BOUNDED) > 150
    checked = 0
    for key, bad in ((k, b) for k, f in BOUNDED for b in _out_of_bounds(f)):
        checked += 1
        config = copy.deepcopy(shipped)
        config.setdefault("datasets", {})["extra"] = {"path": "crops"}
        parts = key.split(".")
        for mapping, name in names.items():
            head = mapping.split(".")
            if parts[: len(head)] == head and parts[len(head)] == "<name>":
                parts[len(head)] = name
        node = config
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[parts[-1]] = bad
        dotted = ".".join(parts)
        with pytest.raises(ConfigError, match=re.escape(dotted)) as err:
            Plan.build(config, local=True, validate=validate)
        assert repr(bad[0] if isinstance(bad, list) else bad) in str(err.value), (key, err.value)
    assert checked > len(BOUNDED)  # both ends of a range, each checked


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (("tiling", "tile_px"), "big", r"'tiling\.tile_px' must be integer, got 'big' \(str\)"),
        (("evaluate", "lora", "lrs"), [0.001, "fast"], r"'evaluate\.lora\.lrs' lists numbers"),
        (("pretrain", "num_workers"), 1.5, r"'pretrain\.num_workers' must be integer or string"),
        (("demo", "enabled"), "yes", r"'demo\.enabled' must be boolean"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_before_the_schema_speaks(key, value, message):
    from cytofm.plan import Plan

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    node = config
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    with pytest.raises(ConfigError, match=message):
        Plan.build(config, local=True, validate=validate)


def test_sections_built_in_code_are_held_to_the_same_bounds():
    """Not only config files: a section made in code, or changed with ``updated``, refuses a
    value outside its field's bounds, so no caller skips them."""
    from cytofm.config import LoraConfig, MilConfig

    with pytest.raises(ConfigError, match=r"'evaluate\.lora\.dropout' must be < 1, got 1\.5"):
        LoraConfig(dropout=1.5)
    with pytest.raises(ConfigError, match=r"'evaluate\.mil\.dropout' must be < 1, got 1\.0"):
        MilConfig().updated({"dropout": 1.0})
    with pytest.raises(ConfigError, match=r"'evaluate\.tasks\.t\.shots' \(entry 0\) must be >= 1"):
        TaskConfig(name="t", dataset="d", shots=(0, 2))
    assert LoraConfig(dropout=0.5).dropout == 0.5
