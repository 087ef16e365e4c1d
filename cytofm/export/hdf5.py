"""A feature store as the HDF5 files slide-level tools read: TRIDENT's and STAMP's layouts.

TRIDENT (``features_<encoder>/<slide>.h5``): ``features`` (N, D) and ``coords`` (N, 2) int64,
the level-0 pixel of each patch's top-left corner, with ``patch_size``,
``patch_size_level0``, ``level0_magnification`` and ``target_magnification`` on ``coords``
(its reader needs the first and the two magnifications) and ``encoder`` and ``name`` on
``features``. Magnifications follow the 10 / mpp convention (0.25 um/px = 40x).

STAMP (``stamp preprocess`` output): ``feats`` (N, D) and ``coords`` (N, 2) in micrometres
from the slide's top-left corner (each tile's top-left), with the file attributes ``extractor``,
``unit`` = "um", ``tile_size_um``, ``tile_size_px`` and ``feat_type`` = "tile". The two
layouts disagree on what ``coords`` holds, so each gets its own file.

Both files also carry cytofm's own attributes (backbone, slide and patch mpp, patch size in um
and px, the feature store's provenance as JSON) and ``centres`` (N, 2): the exact level-0
centres of the cells the rows come from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cytofm.errors import InputDataError
from cytofm.store import open_store
from cytofm.store_attrs import read_attrs

__all__ = ["write_features_h5"]


def _rows(features_store, instances_store):
    feats_g, inst = open_store(features_store), open_store(instances_store)
    fattrs = read_attrs(feats_g, "features", str(features_store))
    attrs = dict(inst.attrs)
    if "slide_mpp" not in attrs or ("patch_um" not in attrs and "tile_um" not in attrs):
        raise InputDataError(
            f"{instances_store} is not the cell or tile store of a slide: HDF5 exports are for "
            "slides' features"
        )
    if attrs.get("fields"):
        raise InputDataError(
            f"{instances_store} is a specimen of microscope fields: its coordinates are on a "
            "mosaic of the fields, not on one slide, which these layouts assume. Export slides "
            "only."
        )
    feats = np.asarray(feats_g["features"][:], np.float32)
    rows = np.asarray(feats_g["rows"][:], np.int64)
    centres = np.asarray(inst["coords"][:], np.float64).reshape(-1, 2)[rows]
    if len(feats) != len(centres):
        raise InputDataError(f"{features_store} and {instances_store} disagree on the rows")
    slide_mpp = float(attrs["slide_mpp"])
    if "patch_um" in attrs:  # cells
        patch_um, patch_px = float(attrs["patch_um"]), int(attrs["patch_px"])
    else:  # tiles
        patch_um, patch_px = float(attrs["tile_um"]), int(attrs["tile_px"])
    return feats, centres, fattrs, attrs, slide_mpp, patch_um, patch_px


def write_features_h5(
    features_store: str | Path,
    instances_store: str | Path,
    out_trident: str | Path,
    out_stamp: str | Path,
) -> dict:
    """Write one slide's features (``features_store``, rows of ``instances_store``) in
    TRIDENT's layout to ``out_trident`` and STAMP's to ``out_stamp``; returns the shape and
    patch geometry written."""
    import h5py

    feats, centres, fattrs, attrs, slide_mpp, patch_um, patch_px = _rows(
        features_store, instances_store
    )
    size0 = patch_um / slide_mpp  # patch side in level-0 px
    top_left = centres - size0 / 2
    common = {
        "cytofm_backbone": fattrs.backbone,
        "cytofm_slide_id": str(attrs.get("slide_id", "")),
        "slide_mpp": slide_mpp,
        "patch_mpp": patch_um / patch_px,
        "patch_size_um": patch_um,
        "patch_size_px": patch_px,
        "cytofm_provenance": json.dumps(fattrs.provenance, default=str),
    }
    name = str(attrs.get("slide_id", Path(out_trident).stem))
    written = {}
    for out, layout in ((out_trident, "trident"), (out_stamp, "stamp")):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs.update(common)
            f.create_dataset("centres", data=centres)
            if layout == "trident":
                ds = f.create_dataset("features", data=feats, chunks=True)
                ds.attrs.update({"encoder": fattrs.backbone, "name": name})
                co = f.create_dataset("coords", data=np.round(top_left).astype(np.int64))
                co.attrs.update(
                    {
                        "patch_size": patch_px,
                        "patch_size_level0": int(round(size0)),
                        "level0_magnification": 10.0 / slide_mpp,
                        "target_magnification": 10.0 * patch_px / patch_um,
                        "overlap": 0,
                        "name": name,
                    }
                )
            else:
                f.create_dataset("feats", data=feats, chunks=True)
                f.create_dataset("coords", data=(top_left * slide_mpp).astype(np.float32))
                f.attrs.update(
                    {
                        "extractor": fattrs.backbone,
                        "unit": "um",
                        "tile_size_um": patch_um,
                        "tile_size_px": patch_px,
                        "feat_type": "tile",
                    }
                )
        tmp.replace(out)
        written[layout] = str(out)
    return {"n": int(len(feats)), "dim": int(feats.shape[1]) if feats.ndim == 2 else 0,
            "patch_size_level0_px": size0, **written}  # fmt: skip
