"""The model card of a pretrained backbone, in the Hugging Face layout.

:func:`write_model_card` makes a folder that can be shared or pushed to a hub as it is:
``model.safetensors`` and ``config.json`` of the exported backbone (timm's hub layout, so
``timm.create_model("hf-hub:<org>/<name>", pretrained=True)`` loads it once pushed) and a
``README.md`` whose YAML header is the hub's metadata and whose text says what the weights
were trained on (stores by name, cell counts, resolution), with which recipe and for how many
steps, how they compare with random weights of the same architecture on the probe and on each
evaluation task (with the intervals the evaluation computed), and what they are for and not.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cytofm.provenance import file_sha256

__all__ = ["model_card_text", "write_model_card"]

CARD_TAGS = ["cytology", "cytopathology", "self-supervised", "ibot", "vision-transformer", "cytofm"]
MAX_SOURCES = 20  # stores listed by name; the rest are counted


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)  # no second copy of the weights on the same file system
    except OSError:
        shutil.copy2(src, dst)


def _store_rows(path: str) -> tuple[int | None, dict]:
    """(rows, attributes) of a patch store from its metadata alone; (None, {}) when gone."""
    meta = Path(path) / "images" / "zarr.json"
    group = Path(path) / "zarr.json"
    try:
        rows = json.loads(meta.read_text())["shape"][0]
        attrs = json.loads(group.read_text()).get("attributes", {})
    except (OSError, ValueError, KeyError, IndexError):
        return None, {}
    return int(rows), attrs


def _data_section(prov: Mapping[str, Any], geometry: Mapping[str, Any]) -> list[str]:
    sources = prov.get("sources", [])
    rows = [(Path(s).stem, Path(s).parent.name, *_store_rows(s)) for s in sources]
    kinds = {"cells": "slide (cells found by the pipeline)", "datasets": "labelled image set"}
    excluded = (prov.get("inductive") or {}).get("excluded_rows", {})
    lines = [
        "## Training data",
        "",
        f"- {prov.get('n_patches', 'unknown')} cell-centred patches from {len(sources)} "
        f"patch store(s) ({len(prov.get('empty_sources', []))} without any cell)",
        f"- patches of {geometry.get('patch_um')} um at {geometry.get('mpp')} um/px",
    ]
    transductive = (prov.get("inductive") or {}).get("transductive")
    if transductive:
        lines.append("- **transductive**: the evaluation's test rows were seen in pretraining")
    else:
        held = sum(int(v.get("rows", 0)) for v in excluded.values())
        lines.append(
            f"- inductive: {held} test row(s) of the evaluation tasks were left out of pretraining"
        )
    lines += ["", "| store | kind | patches | mpp | stain |", "|---|---|---|---|---|"]
    for name, kind, n, attrs in rows[:MAX_SOURCES]:
        stain = (attrs.get("stain") or {}).get("mode", "") if isinstance(attrs, dict) else ""
        lines.append(
            f"| {name} | {kinds.get(kind, kind)} | {n if n is not None else 'n/a'} | "
            f"{attrs.get('mpp', 'n/a')} | {stain} |"
        )
    if len(rows) > MAX_SOURCES:
        rest = rows[MAX_SOURCES:]
        total = sum(r[2] or 0 for r in rest)
        lines.append(f"| ... {len(rest)} more store(s) | | {total} | | |")
    return lines


def _recipe_section(config: Mapping[str, Any], prov: Mapping[str, Any]) -> list[str]:
    recipe = {k: config[k] for k in config if k not in ("name",)}
    return [
        "## Recipe",
        "",
        "iBOT (masked image modelling + self-distillation of a teacher into a student) on a "
        f"timm ViT, {prov.get('steps', 'unknown')} optimiser steps"
        + (
            f" (resumed from step {prov['resumed_from_step']})"
            if prov.get("resumed_from_step")
            else ""
        )
        + "; the teacher's backbone is exported. The full pretraining configuration:",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=True).rstrip(),
        "```",
    ]


def _fmt(mean, low, high) -> str:
    if mean is None or pd.isna(mean):
        return "n/a"
    if low is None or pd.isna(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _results_section(
    probe: Mapping[str, Any] | None, summaries: Sequence[pd.DataFrame], backbones: Sequence[str]
) -> list[str]:
    lines = ["## Evaluation", ""]
    if probe:
        lines += [
            f"Linear probe on `{probe.get('dataset')}` (task `{probe.get('task')}`, "
            f"{probe.get('n_images')} images, {probe.get('n_classes')} classes, chance "
            f"{probe.get('chance', float('nan')):.3f}), balanced accuracy on the test rows:",
            "",
            "| weights | balanced accuracy (mean +- std over seeds) |",
            "|---|---|",
            f"| these | {probe['ssl_mean']:.3f} +- {probe['ssl_std']:.3f} |",
            f"| random, same architecture | {probe['random_mean']:.3f} +- "
            f"{probe['random_std']:.3f} |",
            "",
        ]
    rows = []
    for table in summaries:
        if table.empty or "backbone" not in table:
            continue
        # every training label: not the few-shot rows, not the data-fraction curve's
        full = table[(table["backbone"].isin(backbones)) & (table["shots"].astype(str) == "all")]
        for column in ("fraction", "skipped"):
            if column in full:
                full = full[full[column].isna()]
        for _, r in full.iterrows():
            ba, auroc = (_fmt(*(r.get(f"{m}_{k}") for k in ("mean", "ci_low", "ci_high")))
                         for m in ("balanced_accuracy", "auroc"))  # fmt: skip
            n = r.get("n_checkpoints")
            many = n is not None and not pd.isna(n) and int(n) > 1
            name = f"{r['backbone']} ({int(n)} checkpoints)" if many else r["backbone"]
            rows.append(f"| {r['task']} | {name} | {r['protocol']} | {ba} | {auroc} |")
    if rows:
        lines += [
            "Evaluation tasks, every training label (95% intervals over seeds and test samples, "
            "and over pretraining checkpoints where a backbone pools several; few-shot results "
            "are in the pipeline's report):",
            "",
            "| task | backbone | protocol | balanced accuracy | AUROC |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    if not probe and not rows:
        lines += ["No evaluation results were available when this card was written.", ""]
    return lines


def model_card_text(
    name: str,
    backbone_config: Mapping[str, Any],
    probe: Mapping[str, Any] | None = None,
    summaries: Sequence[pd.DataFrame] = (),
    backbones: Sequence[str] = (),
    synthetic: bool = False,
    license_id: str = "other",
) -> str:
    """The README.md of the card folder (see the module's doc)."""
    prov = backbone_config.get("provenance", {})
    geometry = backbone_config.get("patch_geometry", {})
    pcfg = backbone_config["pretrained_cfg"]
    header = {
        "library_name": "timm",
        "pipeline_tag": "image-feature-extraction",
        "license": license_id,
        "tags": CARD_TAGS + (["synthetic-data"] if synthetic else []),
    }
    arch = backbone_config["architecture"]
    args = backbone_config.get("model_args", {})
    warn = (
        [
            "> **Trained on the pipeline's synthetic demo slides.** These weights show that the "
            "pipeline runs; they are not a model of real cytology.",
            "",
        ]
        if synthetic
        else []
    )
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        *warn,
        f"A self-supervised ViT feature extractor for cytology cell patches: `{arch}` "
        f"({backbone_config.get('num_features')}-dimensional features), pretrained with iBOT "
        "by cytofm.",
        "",
        "## Model",
        "",
        f"- architecture: `{arch}` with {json.dumps(args)}",
        f"- input: {pcfg['input_size'][-1]} x {pcfg['input_size'][-1]} px RGB, normalised with "
        f"mean {pcfg['mean']} and std {pcfg['std']}",
        f"- patch geometry: {geometry.get('patch_um')} um cell-centred patches at "
        f"{geometry.get('mpp')} um/px (resize other resolutions to this before use)",
        f"- weights: `model.safetensors`, SHA-256 `{prov.get('weights_sha256')}`",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        "",
        "# this folder, read as timm reads a Hugging Face hub repository (or give its path)",
        'model = timm.create_model("local-dir:.", pretrained=True).eval()',
        "config = timm.data.resolve_data_config({}, model=model)  # input size, mean, std",
        "# or, once the folder is pushed to the hub",
        'model = timm.create_model("hf-hub:<org>/<name>", pretrained=True)',
        "```",
        "",
        f"Inputs: RGB scaled to [0, 1], resized to {pcfg['input_size'][-1]} px, normalised with "
        "the mean and std above (`config.json`'s `pretrained_cfg`); the model returns pooled "
        "features.",
        "",
        "In MLflow the same weights are registered as a model whose `predict` takes uint8 "
        "images (N, H, W, 3) and returns features (N, D): "
        f'`mlflow.pyfunc.load_model("models:/{name}/<version>")`.',
        "",
        *_data_section(prov, geometry),
        "",
        *_recipe_section(prov.get("config", {}), prov),
        "",
        *_results_section(probe, summaries, backbones),
        "## Intended use and limits",
        "",
        "- Research on cytology images: cell-level features for linear probes, kNN, few-shot "
        "classifiers, LoRA fine-tuning and slide-level attention MIL.",
        "- Not a medical device and not validated for diagnosis.",
        f"- Features are meant for patches of {geometry.get('patch_um')} um at "
        f"{geometry.get('mpp')} um/px from stains like those of the training stores; other "
        "resolutions, stains, preparations and scanners are outside what it was trained on, "
        "and the evaluation above says nothing about them.",
        "- The numbers above come from the tasks and cohorts named there; small cohorts give "
        "wide intervals, and an interval that includes the random-weights control is no "
        "evidence of a difference.",
        "",
        "## Provenance",
        "",
        f"- cytofm {prov.get('cytofm_version')}, commit `{prov.get('git_commit')}`, config "
        f"hash `{prov.get('config_hash')}`, written {prov.get('created_utc')}",
        f"- pretraining job `{prov.get('job_id')}` (MLflow run `{prov.get('mlflow_run_id')}`)",
        "- libraries: "
        + ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v),
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    backbone_dir: str | Path,
    out_dir: str | Path,
    name: str,
    probe_json: str | Path | None = None,
    summary_csvs: Sequence[str | Path] = (),
    backbones: Sequence[str] = (),
    synthetic: bool = False,
    license_id: str = "other",
) -> Path:
    """``out_dir``: the backbone's weights and config.json beside its README.md card."""
    backbone_dir, out_dir = Path(backbone_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((backbone_dir / "config.json").read_text())
    config.setdefault("provenance", {})["weights_sha256"] = file_sha256(
        backbone_dir / "model.safetensors"
    )
    probe = json.loads(Path(probe_json).read_text()) if probe_json else None
    summaries = [pd.read_csv(p) for p in summary_csvs if Path(p).is_file()]
    text = model_card_text(name, config, probe, summaries, backbones, synthetic, license_id)
    _link_or_copy(backbone_dir / "model.safetensors", out_dir / "model.safetensors")
    shutil.copy2(backbone_dir / "config.json", out_dir / "config.json")
    (out_dir / "README.md").write_text(text)
    return out_dir
