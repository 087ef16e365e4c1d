"""``cytofm``: what is not a workflow step (also ``python -m cytofm``).

    cytofm inspect <store>                       what a store holds and where it came from
    cytofm export --results R [--slides A B] [--geojson] [--hdf5 --backbone NAME]
    cytofm predict --model DIR --backbone DIR --slide FILE --out DIR [--mpp X] [--cell-head DIR]
    cytofm config check [--configfile FILE ...]  the config as the workflow would read it
    cytofm config write [--check]                regenerate config.yaml, schema and reference
    cytofm mlflow flush [RESULTS] [--ended]      send the runs a workflow left spooled
    cytofm --version

A mistake in what it is given (a bad config value, a missing file) prints one line naming it and
exits with status 2, as a wrong option does.

``export`` writes the same files as the workflow's export rules for the slides named;
``predict`` takes one slide through tiling, cells, embedding and a slide task's final model,
outside Snakemake, for a quick look (the workflow is the way for a cohort).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("cytofm")


def _inspect(args) -> int:
    from cytofm.store import open_store
    from cytofm.store_attrs import check_version

    store = open_store(args.store)
    attrs = dict(store.attrs)
    kind, version = check_version(attrs, str(args.store))
    print(f"{args.store}: {kind or 'unversioned'} store, schema version {version}")
    for name in sorted(store.array_keys()):
        arr = store[name]
        print(f"  {name:<14} {arr.dtype!s:<10} {tuple(arr.shape)}")
    for name in sorted(store.group_keys()):
        print(f"  {name}/ (group)")
    prov = attrs.get("provenance") or {}
    keep = ("stage", "cytofm_version", "git_commit", "config_hash", "created_utc", "job_id")
    for key in keep:
        if key in prov:
            print(f"  provenance.{key}: {prov[key]}")
    for name, recs in (prov.get("inputs") or {}).items():
        for r in recs:
            print(f"  input {name}: {r.get('artifact')} ({r.get('stage')}, job {r.get('job_id')})")
    if args.json:
        print(json.dumps({k: v for k, v in attrs.items() if k != "provenance"}, default=str))
    return 0


def _export(args) -> int:
    from cytofm.config import ExportConfig
    from cytofm.paths import Paths
    from cytofm.stages.export import run_export_features, run_export_geojson

    if not (args.geojson or args.hdf5):
        raise SystemExit("cytofm export: say what to write, --geojson and/or --hdf5")
    if args.hdf5 and not args.backbone:
        raise SystemExit("cytofm export --hdf5 needs --backbone (a name under backbones:)")
    p = Paths(str(args.results))
    cfg = ExportConfig(tiles=args.tiles)
    cells_dir = Path(p.cells()).parent  # the pattern's folder: results/cells
    slides = args.slides or sorted(f.name.removesuffix(".zarr") for f in cells_dir.glob("*.zarr"))
    if not slides:
        raise _UserError(f"no slide has cells under {cells_dir}; run the workflow first")
    for slide in slides:
        if args.geojson:
            counts = run_export_geojson(p.cells(slide), p.tiles(slide), p.geojson(slide), cfg)
            print(f"{p.geojson(slide)}: {counts}")
        if args.hdf5:
            kind = args.kind
            out = [
                p.features_h5(layout, args.backbone, kind, slide) for layout in ("trident", "stamp")
            ]
            run_export_features(p.features(args.backbone, kind, slide), p.store(kind, slide), *out)
            print(f"{out[0]}, {out[1]}")
    return 0


def _predict(args) -> int:
    from cytofm.config import CellsConfig, TilingConfig, from_mapping
    from cytofm.eval.backbones import BackboneSpec
    from cytofm.eval.mil_model import load_mil_model
    from cytofm.eval.traced import read_backbone_card
    from cytofm.stages.cells import run_cells
    from cytofm.stages.embed import run_embed
    from cytofm.stages.predict import run_predict
    from cytofm.stages.tile import run_tile

    _, card = load_mil_model(args.model)
    bcard = read_backbone_card(args.backbone)
    spec = from_mapping(BackboneSpec, bcard["provenance"]["config"], "backbone")
    out = Path(args.out)
    sid = args.slide_id or Path(args.slide).stem
    # the model's patch geometry unless a config says otherwise (a mismatch is refused below)
    cells = {"patch_um": card["features"]["patch_um"], "patch_px": card["features"]["patch_px"]}
    tiling: dict = {}
    if args.config:
        import yaml

        user = yaml.safe_load(Path(args.config).read_text()) or {}
        tiling, cells = user.get("tiling") or {}, {**cells, **(user.get("cells") or {})}
    tiling_cfg = from_mapping(TilingConfig, tiling, "tiling")
    cells_cfg = from_mapping(CellsConfig, cells, "cells")
    run_tile(args.slide, sid, args.mpp, tiling_cfg, out / "tiles.zarr", out / "qc.png",
             threads=args.threads)  # fmt: skip
    run_cells(args.slide, sid, args.mpp, out / "tiles.zarr", cells_cfg, out / "cells.zarr",
              out / "cells.png", threads=args.threads)  # fmt: skip
    run_embed(spec, out / "cells.zarr", out / "features.zarr", backbone_dir=args.backbone,
              pretrained_dir=args.pretrained, device=args.device)  # fmt: skip
    res = run_predict(args.model, sid, out / "features.zarr", out / "cells.zarr",
                      out / "prediction.json", out / "attention.npz", out / "heatmap.png",
                      slide_path=args.slide, mpp=args.mpp,
                      cell_head_dir=args.cell_head)  # fmt: skip
    probs = ", ".join(f"{c}: {p:.3f}" for c, p in res["probabilities"].items())
    print(f"{sid}: {res['predicted'] or 'no cells'} ({probs}); files in {out}")
    return 0


def _config_check(args) -> int:
    """Merge config.yaml and the ``--configfile`` overlays in order, as Snakemake does, and
    build the run plan from them (schema, bounds, the sheet, references): nothing runs."""
    import yaml

    from cytofm.plan import Plan

    base = _repo_root(args.root) / "config.yaml"
    config = yaml.safe_load(base.read_text()) or {}
    for path in args.configfile or []:
        overlay = yaml.safe_load(Path(path).read_text())
        if overlay is not None and not isinstance(overlay, dict):
            raise _UserError(f"{path}: a config file holds a mapping of keys, got {overlay!r}")
        merge_config(config, overlay or {})
    plan = Plan.build(config, local=True, validate=_validate)
    for note in plan.notes:
        print(note, file=sys.stderr)
    print(
        f"config ok: {len(plan.slide_ids)} slide(s), {len(plan.datasets)} dataset(s), "
        f"backbones {sorted(plan.backbones)}, tasks {sorted(plan.tasks)}, slide tasks "
        f"{sorted(plan.slide_tasks)}; results in {plan.config.results}"
    )
    return 0


def merge_config(config: dict, overlay: Mapping) -> dict:
    """``overlay`` merged into ``config`` in place as Snakemake merges ``--configfile`` files
    (``snakemake.utils.update_config``): mappings key by key, any other value replaced."""
    for key, value in overlay.items():
        if isinstance(value, Mapping):
            node = config.get(key)
            config[key] = merge_config(node if isinstance(node, dict) else {}, value)
        else:
            config[key] = value
    return config


def _validate(data, schema_path: str) -> None:
    """``data`` (the config, or the sheet's rows) against a JSON schema, as the workflow's
    validation does; empty cells of the sheet are absent keys."""
    import jsonschema
    import pandas as pd
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    rows = (
        [{k: v for k, v in r.items() if not pd.isna(v)} for r in data.to_dict("records")]
        if isinstance(data, pd.DataFrame)
        else [data]
    )
    check = jsonschema.Draft202012Validator(schema)
    for row in rows:
        error = jsonschema.exceptions.best_match(check.iter_errors(row))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            raise _UserError(f"{Path(schema_path).name}: {where}: {error.message}")


def _config_write(args) -> int:
    from cytofm.config.__main__ import main as generate

    return generate(["--root", str(_repo_root(args.root)), "--check" if args.check else "--write"])


def _mlflow_flush(args) -> int:
    from cytofm.tracking import main as tracking

    return tracking(["flush", str(args.results), *(["--ended"] if args.ended else [])])


class _UserError(Exception):
    """A mistake in what the command was given."""


def _repo_root(root: Path | None) -> Path:
    """Where config.yaml is: ``--root``, the working directory, or cytofm's own checkout."""
    for candidate in (root, Path.cwd(), Path(__file__).resolve().parents[1]):
        if candidate is not None and (candidate / "config.yaml").is_file():
            return candidate
    raise _UserError(
        "no config.yaml here or in cytofm's checkout; run from the repository or pass --root"
    )


def _parser() -> argparse.ArgumentParser:
    from cytofm import __version__

    ap = argparse.ArgumentParser(prog="cytofm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--version", action="version", version=f"cytofm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("inspect", help="shape, provenance and lineage of a zarr store")
    a.add_argument("store", type=Path)
    a.add_argument("--json", action="store_true", help="also print the attributes as JSON")
    a = sub.add_parser("export", help="QuPath GeoJSON / TRIDENT and STAMP HDF5 of given slides")
    a.add_argument("--results", type=Path, default=Path("results"), help="the results folder")
    a.add_argument("--slides", nargs="+", help="slide ids (default: every slide with cells)")
    a.add_argument("--geojson", action="store_true", help="cells and tissue for QuPath")
    a.add_argument("--tiles", action="store_true", help="also the tiles in the GeoJSON")
    a.add_argument("--hdf5", action="store_true", help="features as HDF5 (needs --backbone)")
    a.add_argument("--backbone", help="backbone name (results/features/<backbone>/)")
    a.add_argument("--kind", default="cells", choices=("cells", "tiles"))
    a = sub.add_parser("predict", help="one slide through a slide task's final model")
    a.add_argument(
        "--model", type=Path, required=True, help="results/eval/<task>/<backbone>/abmil/model"
    )
    a.add_argument("--backbone", type=Path, required=True, help="results/backbones/<backbone>")
    a.add_argument(
        "--pretrained",
        type=Path,
        help="the pretrained weights folder, if the backbone folder has no TorchScript copy",
    )
    a.add_argument("--slide", required=True, help="slide file (or a specimen's folder of fields)")
    a.add_argument("--slide-id", help="id for the outputs (default: the file name)")
    a.add_argument("--mpp", type=float, help="um/px at level 0 when the file does not say")
    a.add_argument("--config", type=Path, help="a config YAML whose tiling: and cells: to use")
    a.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    a.add_argument(
        "--cell-head",
        type=Path,
        help="results/eval/<cell task>/<backbone>/linear_head: also each cell's classes",
    )
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--device", default="auto")
    c = sub.add_parser("config", help="check or regenerate the configuration")
    csub = c.add_subparsers(dest="action", required=True)
    a = csub.add_parser("check", help="validate config.yaml and overlays, running nothing")
    a.add_argument("--configfile", nargs="+", type=Path, help="overlays, merged in order")
    a.add_argument("--root", type=Path, help="the repository (default: here, or cytofm's)")
    a = csub.add_parser("write", help="regenerate config.yaml, the schema and the reference")
    a.add_argument("--check", action="store_true", help="only say which files are stale")
    a.add_argument("--root", type=Path, help="the repository (default: here, or cytofm's)")
    m = sub.add_parser("mlflow", help="MLflow tracking")
    msub = m.add_subparsers(dest="action", required=True)
    a = msub.add_parser("flush", help="send the runs a workflow left spooled")
    a.add_argument("results", nargs="?", type=Path, default=Path("results"))
    a.add_argument("--ended", action="store_true", help="no job of these results still runs")
    return ap


COMMANDS = {
    ("inspect", None): _inspect,
    ("export", None): _export,
    ("predict", None): _predict,
    ("config", "check"): _config_check,
    ("config", "write"): _config_write,
    ("mlflow", "flush"): _mlflow_flush,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import os

    os.environ.setdefault("MLFLOW_TRACKING_URI", "none")  # a quick look is not a tracked run
    from cytofm.errors import CytofmError

    action = getattr(args, "action", None)
    name = " ".join(p for p in (args.command, action) if p)
    try:
        return COMMANDS[(args.command, action)](args)
    except (CytofmError, _UserError, FileNotFoundError, NotADirectoryError) as err:
        print(f"cytofm {name}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
