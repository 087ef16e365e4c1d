"""Stage ``model_card``: the pretrained backbone beside its model card, ready to share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cytofm.report.model_card import write_model_card
from cytofm.stages.context import JobContext

__all__ = ["run_model_card"]


def run_model_card(
    backbone_dir: str | Path,
    out_dir: str | Path,
    name: str,
    probe_json: str | Path | None = None,
    summary_csvs: Sequence[str | Path] = (),
    backbones: Sequence[str] = (),
    synthetic: bool = False,
    job: JobContext | None = None,
) -> Path:
    """``out_dir``: ``model.safetensors`` + ``config.json`` of ``backbone_dir`` and a
    ``README.md`` card with the probe and the ``backbones``' rows of each task summary."""
    job = job or JobContext()
    params = {"name": name, "backbones": list(backbones), "synthetic": synthetic}
    with job.run("model_card", params) as run:
        out = write_model_card(
            backbone_dir, out_dir, name, probe_json, summary_csvs, backbones, synthetic
        )
        run.log_artifact(out / "README.md", "model_card")
    return out
