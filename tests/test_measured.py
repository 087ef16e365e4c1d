"""Figures docs/measured.md quotes are made from the results files the benchmarks write."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_pretraining_loader_paragraph_is_the_results_file():
    """Rerunning benchmarks/pretrain_throughput.py rewrites its results; this fails until the
    paragraph in docs/measured.md is replaced by the one the script prints."""
    results = json.loads((REPO / "benchmarks/results/pretrain_throughput.json").read_text())
    paragraph = _benchmark("pretrain_throughput").measured_summary(results)
    assert _words(paragraph) in _words((REPO / "docs/measured.md").read_text())


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def test_the_demo_tables_are_those_of_the_demo_results():
    """Every table row and paired difference docs/measured.md shows for the demo is a line of
    benchmarks/results/demo.md, the file benchmarks/demo_run.py writes."""
    demo = set((REPO / "benchmarks/results/demo.md").read_text().splitlines())
    md = (REPO / "docs/measured.md").read_text()
    section = _section(md, "**End to end**", "**Cell detection on real specimens**")
    quoted = [
        line
        for line in section.splitlines()
        if line.startswith("|") or line.startswith("- crop task") or line.startswith("- slide")
    ]
    assert len(quoted) > 30
    missing = [line for line in quoted if line not in demo]
    assert not missing, f"not in benchmarks/results/demo.md: {missing}"
    results = json.loads((REPO / "benchmarks/results/demo.json").read_text())
    assert f"{results['jobs']} jobs in {results['seconds'] / 60:.1f} min" in section
