"""Conda environments of the rules (`snakemake --use-conda`), checked without conda.

Conda channels may be unreachable where the tests run, so the environment files are validated
statically: every rule that runs code names an environment, and every third-party module that
the rule scripts and the cytofm package import is provided by a package of that environment.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
# run by Snakemake itself (outside the job environment), not by the rule scripts
OUTSIDE_ENV = {"snakemake", "snakemake-executor-plugin-slurm", "snakemake-storage-plugin-http"}
# opt-in plug-ins imported only when a config asks for them; README.md tells users to install them
OPT_IN = {"cellpose": "pip install cellpose"}
# hard dependencies that no cytofm module imports, and why they are needed all the same
RUNTIME_ONLY = {
    "openslide-bin": "the OpenSlide C library that openslide-python loads",
    "imagecodecs": "the JPEG / JPEG 2000 / LZW codecs tifffile uses for compressed TIFF tiles",
    "snakemake-executor-plugin-slurm": "Snakemake loads it for profiles/slurm",
    "snakemake-storage-plugin-http": "Snakemake loads it for http(s) paths in the sample sheet",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _rule_blocks() -> dict[str, str]:
    blocks = {}
    for path in RULES:
        text = path.read_text()
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", text, re.M):
            blocks[m.group(1)] = m.group(2)
    return blocks


def _env_packages(env_file: Path) -> set[str]:
    env = yaml.safe_load(env_file.read_text())
    names = set()
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            names.add(_norm(re.split(r"[<>=!~ \[]", item, maxsplit=1)[0]))
    return names


def _imports(paths) -> set[str]:
    mods = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "cytofm"}


def test_every_rule_that_runs_code_names_an_existing_env():
    blocks = _rule_blocks()
    assert {"tile", "cells", "pretrain", "embed", "evaluate", "mil", "mil_summary"} <= set(blocks)
    for rule, body in blocks.items():
        if not re.search(r"^\s+(script|shell|run):", body, re.M):
            continue
        m = re.search(r"conda:\s*\n\s+\"([^\"]+)\"", body)
        assert m, f"rule {rule} has no conda: directive"
        env = (REPO / "workflow" / "rules" / m.group(1)).resolve()
        assert env.is_file(), f"rule {rule}: {env} missing"


def test_env_provides_every_import_of_the_scripts_and_package():
    """Each third-party import of workflow/scripts and cytofm/ maps (through the installed
    distributions' metadata) to a package listed in envs/cytofm.yaml."""
    provided = _env_packages(REPO / "envs" / "cytofm.yaml")
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    package = sorted((REPO / "cytofm").rglob("*.py"))
    modules = _imports(scripts + package)
    dists = importlib.metadata.packages_distributions()
    assert {"torch", "timm", "zarr", "peft", "mlflow", "openslide"} <= modules
    missing = {}
    for mod in sorted(modules - set(OPT_IN)):
        owners = {_norm(d) for d in dists.get(mod, [])}
        if not owners:
            missing[mod] = "no installed distribution provides it"
        elif not owners & provided:
            missing[mod] = sorted(owners)
    assert not missing, f"imports not provided by envs/cytofm.yaml: {missing}"


def test_opt_in_imports_are_documented_and_guarded():
    """An import left out of the environment is named in the documentation (README.md and
    docs/) with its install command, and the code importing it turns its absence into an error
    saying that command."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    docs = "\n".join(p.read_text() for p in pages)
    for mod, install in OPT_IN.items():
        assert install in docs, f"neither README.md nor docs/ says `{install}`"
        users = [
            p
            for p in sorted((REPO / "cytofm").rglob("*.py"))
            + sorted((REPO / "workflow" / "scripts").glob("*.py"))
            if mod in _imports([p])
        ]
        assert users, f"{mod} is listed as opt-in but nothing imports it"
        for path in users:
            text = path.read_text()
            assert "except ImportError" in text and install in text, (
                f"{path.name} imports {mod} without an error saying `{install}`"
            )


def _project() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _workflow_imports() -> set[str]:
    """Top-level modules imported by the package, the rule scripts and the .smk files."""
    mods = _imports(sorted((REPO / "cytofm").rglob("*.py")))
    mods |= _imports(sorted((REPO / "workflow" / "scripts").glob("*.py")))
    for smk in [REPO / "Snakefile", *RULES]:
        for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", smk.read_text(), re.M):
            mods.add(m.group(1))
    return mods - set(sys.stdlib_module_names) - {"cytofm"}


def test_every_hard_dependency_is_imported():
    """A dependency in pyproject.toml is imported by cytofm (or is one of RUNTIME_ONLY, each
    with its reason); what cytofm can do without is an extra."""
    deps = {_norm(re.split(r"[<>=!~ \[]", d, maxsplit=1)[0]) for d in _project()["dependencies"]}
    dists = importlib.metadata.packages_distributions()
    used = {_norm(d) for m in _workflow_imports() for d in dists.get(m, [])}
    assert set(RUNTIME_ONLY) <= deps, sorted(set(RUNTIME_ONLY) - deps)
    unused = deps - used - set(RUNTIME_ONLY)
    assert not unused, f"in pyproject.toml but imported by no cytofm module: {sorted(unused)}"


def test_extras_are_imported_only_behind_a_clear_error():
    """Each module of an optional dependency is imported only where its absence is caught and
    turned into the pip command to run."""
    dists = importlib.metadata.packages_distributions()
    extras = {k: v for k, v in _project()["optional-dependencies"].items() if k != "dev"}
    assert extras
    for extra, reqs in extras.items():
        for req in reqs:
            dist = _norm(re.split(r"[<>=!~ \[]", req, maxsplit=1)[0])
            modules = {m for m, ds in dists.items() if dist in {_norm(d) for d in ds}}
            users = [p for p in sorted((REPO / "cytofm").rglob("*.py")) if _imports([p]) & modules]
            assert users, f"extra '{extra}': nothing imports {dist}"
            for path in users:
                text = path.read_text()
                assert "except ImportError" in text and f"pip install {dist}" in text, (
                    f"{path.relative_to(REPO)} imports {dist} (extra '{extra}') unguarded"
                )


def test_repository_has_a_licence_matching_pyproject():
    licence = (REPO / "LICENSE").read_text()
    assert _project()["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_env_matches_the_package_requirements():
    """The environment carries every runtime requirement of pyproject.toml (bar Snakemake)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = {_norm(re.split(r"[<>=!~ \[]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    provided = _env_packages(REPO / "envs" / "cytofm.yaml")
    assert required - OUTSIDE_ENV <= provided, sorted(required - OUTSIDE_ENV - provided)


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_post_deploy_installs_cytofm_without_touching_the_env(env):
    """cytofm itself comes from the checkout (no dependency resolution inside the env)."""
    script = env.with_name(env.stem + ".post-deploy.sh")
    assert script.is_file(), f"{script.name} missing: cytofm would not be importable in {env.name}"
    text = script.read_text()
    assert "pip install --no-deps -e" in text and "CYTOFM_SRC" in text
