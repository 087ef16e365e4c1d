"""Figures docs/measured.md quotes are made from the results files the benchmarks write."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

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


# --- every figure the documents quote is in a results file --------------------------------

_NUM = re.compile(r"(?<![\w.])[+-]?\d[\d,]*(?:\.\d+)?%?")
_CITE = re.compile(r"benchmarks/results/([\w.\-]+)|benchmarks/(\w+)\.py")
_RESULTS = REPO / "benchmarks" / "results"


def _canon(token: str) -> str:
    return token.rstrip("%").replace(",", "").lstrip("+-")


def _numbers_of(files) -> tuple[set[str], set[str], np.ndarray]:
    """Every number written in ``files`` (as text; those written as percentages apart) and
    every numeric value of their JSON."""
    text, percent, values = set(), set(), []

    def words(s: str) -> None:
        for t in _NUM.findall(s):
            text.add(_canon(t))
            if t.endswith("%"):
                percent.add(_canon(t))

    def walk(o) -> None:
        if isinstance(o, bool):
            return
        if isinstance(o, int | float):
            values.append(abs(float(o)))
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, str):
            words(o)

    for path in files:
        if path.suffix == ".json":
            walk(json.loads(path.read_text()))
        elif path.suffix in (".md", ".csv"):
            words(path.read_text())
    return text, percent, np.asarray(values, float)


def _cited(paragraph: str) -> set[Path]:
    """The results files a paragraph names (a file, or a script whose files it names)."""
    out: set[Path] = set()
    for result, script in _CITE.findall(paragraph):
        stem = result.split(".")[0] if result else script
        out |= {
            p
            for p in _RESULTS.iterdir()
            if p.name.split(".")[0] == stem or p.name.startswith(f"{stem}_")
        }
    return out


def _quoted(token: str, numbers) -> bool:
    """Whether ``token`` is one of ``numbers``: written so in a file, or a JSON value that
    rounds to it (a percentage: the value x 100; minutes: seconds / 60)."""
    text, percent, values = numbers
    c, is_percent = _canon(token), token.endswith("%")
    if c in (percent if is_percent else text):
        return True
    decimals = len(c.split(".")[1]) if "." in c else 0
    tol = 0.5 * 10**-decimals + 1e-12
    scales = (100.0,) if is_percent else (1.0, 1 / 60)
    return any(np.any(np.abs(values * s - float(c)) <= tol) for s in scales)


# the README and the pages it sends details to: their figures may also be docs/measured.md's
QUOTE_MEASURED = [
    "README.md",
    "docs/running.md",
    "docs/slides.md",
    "docs/predictions-and-exports.md",
    "docs/cli.md",
]


def _unquoted(doc: str) -> list[str]:
    """Figures of ``doc`` that no results file its paragraph cites holds. A paragraph without a
    citation reads those of the paragraph before it; code spans (commands, settings) are not
    figures, nor are integers below 100 (counts of seeds, folds, cores)."""
    paragraphs = re.split(r"\n\s*\n", (REPO / doc).read_text())
    missing, files = [], set()
    for paragraph in paragraphs:
        files = _cited(paragraph) or (set() if paragraph.startswith("#") else files)
        numbers = _numbers_of(files)
        if doc in QUOTE_MEASURED:  # these pages quote docs/measured.md
            text, percent, values = numbers
            words = {_canon(t) for t in _NUM.findall((REPO / "docs/measured.md").read_text())}
            numbers = (text | words, percent, values)
        prose = re.sub(r"`[^`]*`", " ", paragraph)
        for token in _NUM.findall(prose):
            small = "." not in token and not token.endswith("%") and float(_canon(token)) < 100
            if not small and not _quoted(token, numbers):
                where = " ".join(prose.split())[:70]
                missing.append(f"{token} ({sorted(p.name for p in files)[:2]}: {where}...)")
    return missing


@pytest.mark.parametrize("doc", ["docs/measured.md", *QUOTE_MEASURED])
def test_every_figure_is_in_a_results_file_the_paragraph_cites(doc):
    missing = _unquoted(doc)
    assert not missing, f"{doc} quotes figures no cited results file holds: {missing}"


def test_the_figure_check_catches_a_drifted_figure(tmp_path, monkeypatch):
    """A figure changed by a digit, or quoted next to another file, is found."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "From `benchmarks/results/detection_real.md`: platelet recall 0.820, white cells "
        "1.000.\n\nIn the same file: 0.821 of platelets.\n\n"
        "From `benchmarks/results/focus_planes.md`: recall 0.820.\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "_RESULTS", REPO_RESULTS)
    got = _unquoted("doc.md")
    assert [m.split(" ")[0] for m in got] == ["0.821", "0.820"]


REPO_RESULTS = _RESULTS


def test_the_transfer_tables_are_those_of_the_transfer_results():
    """Every table row docs/measured.md shows for transfer is a line of the results file
    benchmarks/transfer.py wrote (this run's, or the one-checkpoint run it replaced)."""
    lines = set()
    for name in ("transfer.md", "transfer_one_checkpoint.md"):
        lines |= set((REPO / "benchmarks/results" / name).read_text().splitlines())
    md = (REPO / "docs/measured.md").read_text()
    section = _section(md, "**Transfer between real collections", "**LoRA vs. the linear head")
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(rows) > 10
    missing = [line for line in rows if line not in lines]
    assert not missing, f"not in the transfer results: {missing}"


def test_the_suite_timing_in_the_development_guide_is_the_results_file():
    """docs/development.md's suite time and slowest tests are what benchmarks/suite_timing.py
    wrote from a timed CI log (benchmarks/results/suite_timing.md), not typed by hand."""
    timing = _benchmark("suite_timing")
    doc = (REPO / "docs/development.md").read_text()
    block = doc.split(timing.START, 1)[1].split(timing.END, 1)[0].strip()
    results = (REPO / "benchmarks/results/suite_timing.md").read_text()
    assert block and results.removeprefix("# Test suite time\n\n").strip() == block


def test_the_suite_timing_is_read_from_pytests_own_summary():
    timing = _benchmark("suite_timing")
    log = (
        "real\t2m31.5s\nuser\t1m0s\n"
        "============================= slowest 30 durations =============================\n"
        "364.10s setup    tests/test_eval_real.py::test_herlev\n"
        "101.25s call     tests/test_ssl_learns.py::test_learns\n"
        "(270 durations < 0.005s hidden.  Use -vv to show these durations.)\n"
        "========== 583 passed, 3 skipped, 2 warnings in 1822.62s (0:30:22) ==========\n"
    )
    run = timing.parse(log)
    assert run["counts"] == "583 passed, 3 skipped, 2 warnings" and run["seconds"] == 1822.62
    assert run["install_s"] == 151.5
    assert run["slowest"] == [
        (364.10, "setup", "tests/test_eval_real.py::test_herlev"),
        (101.25, "call", "tests/test_ssl_learns.py::test_learns"),
    ]
    text = timing.render(run, 2400.0, "abc1234", "2 cores")
    assert "583 passed, 3 skipped, 2 warnings in 1822.6 s (30.4 min)" in text
    assert "| 364.1 | setup | `tests/test_eval_real.py::test_herlev` |" in text
    with pytest.raises(SystemExit, match="no pytest summary"):
        timing.parse("collected 3 items\n")
