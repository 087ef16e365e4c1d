"""Stage ``embed``: one backbone x one patch store -> ``results/features/<backbone>/...zarr``,
and stage ``backbone``: each configured backbone built once -> ``results/backbones/<name>/``
(identity and a checked TorchScript copy that CPU embedding jobs load without timm).

The feature store holds ``features`` (N, D) float16 with row i belonging to row i of the
source store (``rows`` says so explicitly), a copy of the source ``ids`` when it has them, and
provenance: the backbone's identity and weights checksum, its preprocessing and the checksum of
the source store.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cytofm.errors import InputDataError
from cytofm.eval.backbones import BackboneSpec, LoadedBackbone, load_backbone_spec
from cytofm.eval.features import ChunkSink, embed_array, pick_device
from cytofm.hardware import loader_workers
from cytofm.provenance import provenance, tree_sha256
from cytofm.stages.context import JobContext
from cytofm.store import as_str_array, atomic_group, atomic_json, open_store, write_strings
from cytofm.store_attrs import store_attrs

__all__ = ["run_backbone", "run_embed", "write_feature_store"]

log = logging.getLogger(__name__)

EMBED_WORKERS_AUTO_MAX = 4


def run_backbone(
    spec: BackboneSpec,
    out_dir: str | Path,
    *,
    pretrained_dir: str | Path | None = None,
    job: JobContext | None = None,
) -> dict[str, Any]:
    """Build the backbone of ``spec`` on CPU and write its card and TorchScript copy."""
    from cytofm.eval.traced import materialise_backbone

    job = job or JobContext()
    with job.run("backbone", {"backbone": spec.to_dict()}) as run:
        t0 = time.perf_counter()
        bb = load_backbone_spec(spec, pretrained_dir, device="cpu")
        record = provenance("backbone", spec, backbone=bb.identity, preprocessing=bb.preprocessing)
        card = materialise_backbone(bb, out_dir, record)
        check = card["trace_check"] or {}
        run.log_metrics(
            {
                "torchscript": float(card["torchscript"] is not None),
                "n_params": bb.identity["n_params"],
                "seconds": time.perf_counter() - t0,
                **(
                    {"trace_max_abs_diff": check["max_abs_diff"]} if "max_abs_diff" in check else {}
                ),
            }
        )
        run.set_tags({"backbone.weights_sha256": bb.identity["weights_sha256"]})
    return card


def _load_for_embedding(spec, backbone_dir, pretrained_dir, dev) -> tuple[LoadedBackbone, str]:
    """The TorchScript copy on CPU when the backbone folder has one, else the model built from
    its spec (checked to be the weights the folder names)."""
    from cytofm.eval.traced import load_traced, read_backbone_card

    if backbone_dir is not None and dev.type == "cpu":
        traced = load_traced(backbone_dir)
        if traced is not None:
            return traced, "torchscript"
    bb = load_backbone_spec(spec, pretrained_dir, device=str(dev))
    if backbone_dir is not None:
        want = read_backbone_card(backbone_dir)["identity"].get("weights_sha256")
        have = bb.identity["weights_sha256"]
        if want != have:
            raise InputDataError(
                f"backbone '{spec.name}': the weights built now ({have[:12]}) are not those "
                f"of {backbone_dir} ({str(want)[:12]}); the weights changed since "
                "that folder was written: delete it (or rerun with --forcerun backbone)"
            )
    return bb, "eager"


def run_embed(
    spec: BackboneSpec,
    source_store: str | Path,
    out_store: str | Path,
    **kwargs,
) -> dict[str, Any]:
    """Features of every image of ``source_store`` into ``out_store`` (run_embed_many's
    keywords)."""
    return run_embed_many(spec, [(source_store, out_store)], **kwargs)


def run_embed_many(
    spec: BackboneSpec,
    pairs: list[tuple[str | Path, str | Path]],
    *,
    backbone_dir: str | Path | None = None,
    pretrained_dir: str | Path | None = None,
    batch_size: int = 256,
    precision: str = "auto",
    device: str = "auto",
    num_workers: int | str = "auto",
    job: JobContext | None = None,
    manifest: str | Path | None = None,
) -> dict[str, Any]:
    """Features of every image of each (patch store, feature store) pair, with the backbone
    loaded once: batches read by DataLoader workers, features written chunk by chunk in the
    background into a store renamed into place when complete (a failure leaves nothing that
    looks finished). A shard of slides is one job: ``manifest`` (JSON) is written last and
    lists each slide's feature store with its rows and source hash."""
    job = job or JobContext()
    dev = pick_device(device)
    # measured on an H200 with 16 cores (benchmarks/results/gpu_check_sweep.md): 4 workers
    # beat 8 and 15 on 96 and 224 px patches; more processes only contend for the cores
    workers = loader_workers(num_workers, dev, most=EMBED_WORKERS_AUTO_MAX)
    settings = {"batch_size": batch_size, "precision": precision}
    sources = [str(src) for src, _ in pairs]
    params = {"backbone": spec.to_dict(), "source": sources[0] if len(pairs) == 1 else sources}
    with job.run(
        "embed",
        {**params, **settings, "device": str(dev), "num_workers": workers},
        system_metrics=True,
    ) as run:
        t0 = time.perf_counter()
        bb, runtime = _load_for_embedding(spec, backbone_dir, pretrained_dir, dev)
        stores, t_embed = _embed_pairs(
            bb, spec, pairs, settings, dev, runtime, workers=workers
        )  # fmt: skip
        n, dim = sum(s["rows"] for s in stores), stores[-1]["dim"]
        seconds = time.perf_counter() - t0
        summary = {"n_images": n, "dim": dim, "seconds": seconds, "num_workers": workers}
        summary["images_per_second"] = n / t_embed if t_embed > 0 else float("nan")
        summary["n_stores"] = len(pairs)
        run.log_metrics(summary)
        run.set_tags({"backbone.weights_sha256": bb.identity["weights_sha256"]})
        log.info(
            "%s x %s: %d x %d features in %.1f s (%.0f images/s)",
            spec.name,
            sources[0] if len(pairs) == 1 else f"{len(pairs)} stores",
            n,
            dim,
            seconds,
            summary["images_per_second"],
        )
        if manifest is not None:  # the shard's own provenance: lineage reads it like a store's
            record = provenance("embed", settings, backbone=bb.identity, device=str(dev))
            atomic_json(manifest, {"provenance": record, "stores": stores})
    return summary


def _embed_pairs(bb, spec, pairs, settings, dev, runtime, *, workers) -> tuple[list, float]:
    """Each pair's feature store with the loaded backbone: (what each got, seconds embedding)."""
    t_embed, stores = 0.0, []
    for i, (source_store, out_store) in enumerate(pairs):
        src = _open_source(source_store)
        _fit_to_source(src.attrs.get("mpp"), bb, spec.name, source_store)
        record = _record(bb, settings, source_store, dev, runtime)
        t1 = time.perf_counter()
        rows, dim = _stream_features(
            bb, src, out_store, record, spec.name, source_store, batch_size=settings["batch_size"],
            device=str(dev), precision=settings["precision"], num_workers=workers,
        )  # fmt: skip
        t_embed += time.perf_counter() - t1
        stores.append({"source": str(source_store), "features": str(out_store), "rows": rows,
                       "dim": dim, "source_sha256": record["source_sha256"]})  # fmt: skip
        if len(pairs) > 1:
            log.info("%s: %d/%d %s, %d rows", spec.name, i + 1, len(pairs), source_store, rows)
    return stores, t_embed


def _open_source(source_store):
    src = open_store(source_store)
    if "images" not in src:
        raise ValueError(
            f"{source_store} has no 'images' array (a tile store without tiling.save_images?); "
            "embed cell stores or imported datasets, or set tiling.save_images: true"
        )
    return src


def _record(bb, settings: dict, source_store, dev, runtime: str) -> dict:
    return provenance(
        "embed",
        settings,
        backbone=bb.identity,
        preprocessing=bb.preprocessing,
        source_store=Path(source_store).name,
        source_sha256=tree_sha256(source_store),
        device=str(dev),
        runtime=runtime,
    )


def _stream_features(bb, src, out_store, record, name, source_store, **embed_kw) -> tuple:
    """Embed into a new feature store as the batches come; (rows, feature width)."""
    n, dim = src["images"].shape[0], bb.model.num_features
    desc = f"embed {name} {Path(source_store).stem}"

    def checked(feats: np.ndarray) -> np.ndarray:
        _check_finite(feats, name, source_store)
        return feats

    with atomic_group(out_store) as g:
        arr = _feature_array(g, n, dim)
        with ChunkSink(arr) as sink:
            embed_array(
                bb, src["images"], desc=desc, sink=lambda f: sink.put(checked(f)), **embed_kw
            )
        _finish_feature_store(g, n, dim, src, record, name)
    return n, dim


def _fit_to_source(src_mpp, bb, name: str, source_store) -> None:
    """Warn when the patches' um/px differs from the backbone's; give it to a backbone that
    measures in micrometres (morphometry)."""
    _warn_on_resolution(src_mpp, bb, name, source_store)
    if hasattr(bb.model, "set_mpp"):
        bb.model.set_mpp(src_mpp)
        if not src_mpp:
            log.warning(
                "%s has no mpp: backbone '%s' measures in pixels, not micrometres",
                source_store, name,
            )  # fmt: skip


def _warn_on_resolution(src_mpp, bb, name: str, source_store) -> None:
    if bb.mpp and src_mpp and abs(float(src_mpp) / float(bb.mpp) - 1) > 0.1:
        log.warning(
            "%s: patches are %.3f um/px but backbone '%s' was trained on %.3f um/px",
            *(source_store, src_mpp, name, bb.mpp),
        )


def _check_finite(feats: np.ndarray, name: str, source_store) -> None:
    if not np.isfinite(feats).all():
        bad = np.flatnonzero(~np.isfinite(feats).all(1))
        raise FloatingPointError(
            f"backbone '{name}' gave non-finite features for {len(bad)} rows of "
            f"{source_store} (first row {bad[0]}); check the weights file and preprocessing"
        )


def _feature_array(g, n: int, dim: int):
    return g.create_array(
        "features",
        shape=(n, dim),
        chunks=(max(min(n, 8192), 1), dim),
        dtype="float16",
        dimension_names=["n", "feature"],
    )


def _finish_feature_store(g, n: int, dim: int, src, record: dict, backbone: str) -> None:
    rows = g.create_array("rows", shape=(n,), chunks=(max(n, 1),), dtype="int64")
    if n:
        rows[:] = np.arange(n)
    if "ids" in src:
        write_strings(g, "ids", as_str_array(src["ids"][:]).tolist())
    attrs = dict(backbone=backbone, n=n, dim=dim, source_mpp=src.attrs.get("mpp"))
    g.attrs.update(store_attrs("features", provenance=record, **attrs))


def write_feature_store(out_store, feats: np.ndarray, src, record: dict, backbone: str) -> None:
    """``features`` float16 (N, D), ``rows`` (row i of the source store), the source's ``ids``
    and the provenance, written atomically (for features already in memory)."""
    n, dim = feats.shape
    with atomic_group(out_store) as g:
        arr = _feature_array(g, n, dim)
        if n:
            arr[:] = feats.astype(np.float16)
        _finish_feature_store(g, n, dim, src, record, backbone)
