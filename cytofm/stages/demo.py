"""Stages of the synthetic demo: slides (with ground truth), the sheet and a crop collection."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from cytofm.config import DemoConfig
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.synthetic.demo import make_demo_crops, make_demo_sheet, make_demo_slide

__all__ = ["run_demo_crops", "run_demo_sheet", "run_demo_slide"]


def run_demo_slide(
    cfg: DemoConfig,
    slide_id: str,
    out_slide: str | Path,
    out_truth: str | Path,
    job: JobContext | None = None,
) -> dict:
    job = job or JobContext()
    with job.run("demo_slide", {"demo": cfg.to_dict(), "slide_id": slide_id}) as run:
        t0 = time.perf_counter()
        summary = make_demo_slide(cfg, slide_id, out_slide, out_truth)
        run.log_metrics(
            {
                "n_cells": summary["n_cells"],
                "abnormal": summary["abnormal"],
                "seconds": time.perf_counter() - t0,
            }
        )
    return summary


def run_demo_sheet(cfg: DemoConfig, out_tsv: str | Path, job: JobContext | None = None) -> Path:
    """Write the demo's slides.tsv, with paths relative to the sheet as users write theirs."""
    job = job or JobContext()
    with job.run("demo_sheet", {"demo": cfg.to_dict()}) as run:
        out = Path(out_tsv)
        sheet = make_demo_sheet(cfg, "slides")
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.to_csv(out, sep="\t", index=False)
        labelled = pd.to_numeric(sheet["abnormal"], errors="coerce")
        run.log_metrics(
            {
                "n_slides": len(sheet),
                "n_cohort": int(labelled.notna().sum()),
                "n_abnormal": int(labelled.sum()),
            }
        )
    return out


def run_demo_crops(cfg: DemoConfig, out_dir: str | Path, job: JobContext | None = None) -> dict:
    job = job or JobContext()
    with job.run("demo_crops", {"demo": cfg.to_dict()}) as run:
        t0 = time.perf_counter()
        table = make_demo_crops(cfg, out_dir)
        import json

        (Path(out_dir) / "provenance.json").write_text(
            json.dumps(provenance("demo_crops", cfg, n_crops=len(table)), indent=2)
        )
        run.log_metrics({"n_crops": len(table), "seconds": time.perf_counter() - t0})
    return {"n_crops": len(table)}
