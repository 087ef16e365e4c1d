"""Rules the code base keeps: no subprocess of the tests without a timeout (a hung `snakemake`
or server would otherwise eat the whole CI run), and stage runners that only orchestrate."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKING = {"run", "call", "check_call", "check_output"}
PATH_PART = r"/(eval|features|cells|tiles|datasets|pretrain|backbones|qc|logs|report|demo)/"


def _calls_without_timeout(path: Path) -> list[str]:
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f, kws = node.func, {k.arg for k in node.keywords}
        on_subprocess = isinstance(f.value, ast.Name) and f.value.id == "subprocess"
        if on_subprocess and f.attr in BLOCKING and "timeout" not in kws:
            found.append(f"{name}:{node.lineno} subprocess.{f.attr}")
        # Popen(...).wait() / .communicate() with no timeout blocks forever on a hung child
        if f.attr in ("wait", "communicate") and not node.args and "timeout" not in kws:
            if not (isinstance(f.value, ast.Name) and f.value.id in ("event", "barrier")):
                found.append(f"{name}:{node.lineno} .{f.attr}()")
    return found


def test_every_subprocess_of_the_tests_and_benchmarks_has_a_timeout():
    files = sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    missing = [hit for path in files for hit in _calls_without_timeout(path)]
    assert not missing, "add timeout= to: " + ", ".join(missing)


def test_the_rule_catches_a_call_without_timeout(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess\nsubprocess.run(['true'])\np.wait()\np.wait(timeout=1)\n")
    assert _calls_without_timeout(sample) == ["sample.py:2 subprocess.run", "sample.py:3 .wait()"]


def test_stage_runners_are_short_orchestration():
    """Every function in cytofm/stages/ is at most 60 lines: domain logic lives in the
    modules the stages call (cytofm/eval, cytofm/report, cytofm/cells, ...)."""
    long = []
    for path in sorted((REPO / "cytofm" / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_workflow_glue_is_short_and_spells_no_output_path():
    """common.smk hands the run plan (cytofm/plan.py) to the rules in at most 150 lines, and
    no rule file spells a results path: every one comes from cytofm/paths.py."""
    rules = REPO / "workflow" / "rules"
    assert len((rules / "common.smk").read_text().splitlines()) <= 150
    spelled = [
        f"{p.name}:{i}"
        for p in sorted([*rules.glob("*.smk"), REPO / "Snakefile"])
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "RESULTS" in line
        or ".zarr" in line
        or (re.search(PATH_PART, line) and "../" not in line)
    ]
    assert not spelled, spelled


def test_only_the_tracking_package_imports_mlflow():
    """mlflow stays out of every job's start-up: only cytofm/tracking/ imports it (and its
    submodules load it only where a run is sent, a model logged or loaded)."""
    found = []
    for path in sorted((REPO / "cytofm").rglob("*.py")):
        if path.is_relative_to(REPO / "cytofm" / "tracking"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "mlflow" for n in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found
