"""Stage ``evaluate``: one task x one backbone x one protocol -> a result JSON.

Protocols ``linear``, ``knn`` and ``fewshot`` run on the cached features; ``lora`` fine-tunes
the backbone from the task's images. All share the task's split (given by the data, or derived
once from ``split_seed``, grouped by patient/slide/batch). The JSON holds every run's metrics,
the sampled training rows and seeds, the chosen hyper-parameters and validation scores, the
mean/std over seeds with a bootstrap 95% CI, and the resolved config.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cytofm.config import EvalConfig, TaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.backbones import BackboneSpec
from cytofm.eval.linear import fit_linear, full_proba, knn_proba, select_score
from cytofm.eval.metrics import classification_metrics, summarise
from cytofm.eval.predictions import block_key, save_predictions
from cytofm.eval.splits import (
    Split,
    given_split,
    has_groups,
    make_split,
    sample_fraction,
    sample_shots,
)
from cytofm.inductive import exposure
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import as_str_array, atomic_json, open_store

__all__ = ["load_task_data", "run_evaluate", "task_split"]

log = logging.getLogger(__name__)

INTERVAL_NOTE = (
    "ci95 covers test items (bootstrap of the seed-mean) and seeds (t on the seed-to-seed "
    "standard error), added in quadrature; ci95_test_only is the bootstrap part alone."
)


def load_task_data(task: TaskConfig, dataset_store: str | Path) -> dict[str, Any]:
    """Labels, groups, optional given splits and class names of a task's dataset store."""
    ds = open_store(dataset_store)
    if task.label not in ds:
        raise InputDataError(
            f"task '{task.name}': {dataset_store} has no array '{task.label}' "
            f"(arrays: {sorted(ds.array_keys())}); set evaluate.tasks.{task.name}.label"
        )
    labels = np.asarray(ds[task.label][:]).astype(np.int64)
    classes = [str(c) for c in ds.attrs.get("classes", [])] or [
        str(c) for c in range(int(labels.max()) + 1)
    ]
    groups = as_str_array(ds[task.group][:]) if task.group in ds else None
    splits = as_str_array(ds["splits"][:]) if "splits" in ds else None
    return {"labels": labels, "groups": groups, "splits": splits, "classes": classes, "store": ds}


def task_split(task: TaskConfig, data: dict[str, Any]) -> Split:
    if task.split == "given" or (task.split == "auto" and data["splits"] is not None):
        if data["splits"] is None:
            raise InputDataError(
                f"task '{task.name}' asks for the given split but dataset '{task.dataset}' has no "
                "split column; add one to its CSV (split_column) or set split: derived"
            )
        split = given_split(data["splits"])
    else:
        split = make_split(
            data["labels"],
            data["groups"],
            val_fraction=task.val_fraction,
            test_fraction=task.test_fraction,
            seed=task.split_seed,
        )
    _check_classes_in_parts(task, data, split)
    return split


def _check_classes_in_parts(task: TaskConfig, data: dict[str, Any], split: Split) -> None:
    """Every class needs training and test examples (and validation ones when there is a
    validation part); a class too small for that is an error, not a silently missing class."""
    labels, classes = data["labels"], data["classes"]
    parts = {"train": split.train, "test": split.test}
    if len(split.val):
        parts["val"] = split.val
    short = []
    for c, name in enumerate(classes):
        absent = [p for p, rows in parts.items() if not (labels[rows] == c).any()]
        if absent:
            short.append(f"'{name}' ({int((labels == c).sum())} images; none in {absent})")
    if short:
        raise InputDataError(
            f"task '{task.name}': class(es) {', '.join(short)} of dataset '{task.dataset}' are "
            f"too small to have examples in every part of the {split.source} split. Add images "
            "of those classes, merge or drop them (the dataset's 'query' filters CSV rows), or "
            "give a split column that places them."
        )


def _lora_settings(cfg: EvalConfig):
    from cytofm.eval.lora import LoraSettings

    return LoraSettings(
        rank=cfg.lora_rank,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        target_modules=tuple(cfg.lora_target_modules),
        batch_size=cfg.lora_batch_size,
        iters_per_shot=cfg.lora_iters_per_shot,
        fraction_epochs=cfg.lora_fraction_epochs,
        warmup_steps=cfg.lora_warmup_steps,
        min_lr=cfg.lora_min_lr,
        max_steps=cfg.lora_max_steps,
        weight_decay=cfg.lora_weight_decay,
    )


def _block(
    y_test,
    probas,
    runs,
    cfg: EvalConfig,
    shots=None,
    seed_independent=False,
    fraction=None,
    groups=None,
) -> dict:
    return {
        "shots": shots,
        "fraction": fraction,
        "seed_independent": seed_independent,
        "summary": summarise(y_test, probas, n_boot=cfg.bootstrap, seed=0, groups=groups),
        "runs": runs,
    }


def _groups_of(data: dict[str, Any], rows: np.ndarray) -> np.ndarray | None:
    """Groups (patients) of ``rows`` when the task has them (as the split decides), else
    None: the bootstrap then resamples whole groups."""
    if data["groups"] is None:
        return None
    g = data["groups"][rows]
    return g if has_groups(g) else None


def run_evaluate(
    task: TaskConfig,
    cfg: EvalConfig,
    protocol: str,
    spec: BackboneSpec,
    dataset_store: str | Path,
    out_json: str | Path,
    *,
    out_predictions: str | Path | None = None,
    features_store: str | Path | None = None,
    pretrained_dir: str | Path | None = None,
    job: JobContext | None = None,
) -> dict[str, Any]:
    job = job or JobContext()
    if protocol not in task.protocols:
        raise ValueError(f"protocol {protocol!r} is not configured for task '{task.name}'")
    data = load_task_data(task, dataset_store)
    labels, classes = data["labels"], data["classes"]
    n_classes = len(classes)
    split = task_split(task, data)
    tr, va, te = split.train, split.val, split.test
    y_test = labels[te]
    g_test = _groups_of(data, te)
    params = {"task": task.to_dict(), "evaluate": cfg.part("patch"), "backbone": spec.to_dict()}
    with job.run("evaluate", {**params, "protocol": protocol}) as run:
        t0 = time.perf_counter()
        feats = None
        if protocol != "lora":
            fs = open_store(features_store)
            feats = np.asarray(fs["features"][:], dtype=np.float32)
            if len(feats) != len(labels):
                raise InputDataError(
                    f"{features_store} has {len(feats)} rows but {dataset_store} has "
                    f"{len(labels)}; the feature store is stale, delete it and rerun embed"
                )
        blocks: list[dict] = []
        skipped: list[dict] = []
        predictions: dict[str, list[np.ndarray]] = {}

        def add_block(probas, runs, **kw):
            blocks.append(_block(y_test, probas, runs, cfg, groups=g_test, **kw))
            predictions[block_key(kw.get("shots"), kw.get("fraction"))] = probas

        def linear_on(rows):
            """Logistic regression on ``rows``, C chosen on val; test probabilities."""
            clf, C, val_scores = fit_linear(
                feats[rows],
                labels[rows],
                feats[va],
                labels[va],
                Cs=list(cfg.linear_Cs),
                class_names=classes,
                metric=cfg.select_metric,
                max_iter=cfg.linear_max_iter,
            )
            return full_proba(clf, feats[te], n_classes), {"C": C, "val": _fmt(val_scores)}

        if protocol == "linear":
            p, chosen = linear_on(tr)
            runs = [
                {
                    "seed": None,
                    **chosen,
                    "test": classification_metrics(y_test, p, classes),
                }
            ]
            add_block([p], runs, seed_independent=True)
        if protocol == "knn":
            p = knn_proba(feats[tr], labels[tr], feats[te], cfg.knn_k, n_classes)
            runs = [
                {
                    "seed": None,
                    "k": min(cfg.knn_k, len(tr)),
                    "test": classification_metrics(y_test, p, classes),
                }
            ]
            add_block([p], runs, seed_independent=True)
        # label budgets: k shots per class (fewshot, lora) and fractions of the training split
        # (linear, lora; seed 001's data-fraction curve), each over the task's seeds
        budgets: list[tuple[str, Any]] = []
        if protocol in ("fewshot", "lora"):
            shots = task.shots if protocol == "fewshot" else (task.lora_shots or task.shots)
            budgets += [("shots", int(k)) for k in shots]
        fractions = {"linear": task.fractions, "lora": cfg.lora_fractions}.get(protocol, ())
        budgets += [("fraction", float(f)) for f in fractions]
        if budgets:
            lora_ctx = (
                _lora_context(spec, pretrained_dir, data, cfg, split)
                if protocol == "lora"
                else None
            )
            bar = tqdm(
                total=len(budgets) * len(task.seeds),
                desc=f"{protocol} {spec.name} {task.name}",
                mininterval=5,
            )
            for kind, amount in budgets:
                probas, runs = [], []
                for seed in task.seeds:
                    if kind == "shots":
                        rows, short = sample_shots(labels, tr, amount, int(seed), n_classes)
                    else:
                        rows, short = sample_fraction(labels, tr, amount, int(seed)), []
                    bar.update(1)
                    if short:
                        break
                    if protocol == "lora":
                        p, chosen = _lora_run(
                            lora_ctx,
                            rows,
                            va,
                            te,
                            int(seed),
                            cfg,
                            classes,
                            shots=amount if kind == "shots" else None,
                        )
                    else:
                        p, chosen = linear_on(rows)
                    probas.append(p)
                    runs.append(
                        {
                            "seed": int(seed),
                            "train_rows": rows.tolist(),
                            **chosen,
                            "test": classification_metrics(y_test, p, classes),
                        }
                    )
                if short:
                    skipped.append(
                        {
                            "shots": amount,
                            "reason": "class(es) "
                            + ", ".join(
                                f"'{classes[c]}' ({int((labels[tr] == c).sum())})" for c in short
                            )
                            + f" have fewer than {amount} training examples; add images or "
                            f"remove {amount} from evaluate.tasks.{task.name}.shots",
                        }
                    )
                    log.warning(
                        "task %s: %s-shot skipped: %s", task.name, amount, skipped[-1]["reason"]
                    )
                    continue
                add_block(probas, runs, **{kind: amount})
                if protocol == "lora":  # steps run against the protocol's (max over seeds)
                    blocks[-1]["budget"] = max(
                        (r["budget"] for r in runs), key=lambda b: b["protocol_steps"]
                    )
            bar.close()
        seconds = time.perf_counter() - t0
        result = {
            "task": task.name,
            "dataset": task.dataset,
            "backbone": spec.name,
            "protocol": protocol,
            "classes": classes,
            "split": split.to_dict(),
            "test_rows": te.tolist(),
            "backbone_kind": spec.kind,
            "exposure": exposure(_backbone_provenance(pretrained_dir), spec.kind, task.dataset),
            "interval": INTERVAL_NOTE
            + (" Test rows are resampled by group." if g_test is not None else ""),
            "results": blocks,
            "skipped": skipped,
            "seconds": seconds,
            "provenance": provenance(
                "evaluate",
                params,
                protocol=protocol,
                features=_features_identity(features_store),
            ),
        }
        if out_predictions:
            save_predictions(out_predictions, y_test, g_test, predictions)
        atomic_json(out_json, result, default=_json_default)
        for b in blocks:
            tag = protocol if b["shots"] is None else f"{protocol}.{b['shots']}shot"
            run.log_metrics(
                {f"{tag}.{m}": v["mean"] for m, v in b["summary"].items() if np.isfinite(v["mean"])}
            )
        run.log_metrics({"seconds": seconds})
        run.log_artifact(out_json)
        log.info(
            "%s/%s/%s: %d result block(s), %d skipped, %.1f s",
            task.name,
            spec.name,
            protocol,
            len(blocks),
            len(skipped),
            seconds,
        )
    return result


def _backbone_provenance(pretrained_dir) -> dict | None:
    """The provenance an exported backbone carries (what its pretraining read), if any."""
    if not pretrained_dir:
        return None
    config = Path(pretrained_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("provenance")


def _fmt(scores: dict) -> dict[str, float]:
    return {str(k): float(v) for k, v in scores.items()}


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _features_identity(features_store) -> dict | None:
    if not features_store:
        return None
    attrs = open_store(features_store).attrs.get("provenance", {})
    return {
        "store": Path(features_store).name,
        "backbone": attrs.get("backbone"),
        "source_sha256": attrs.get("source_sha256"),
    }


def _lora_context(spec, pretrained_dir, data, cfg: EvalConfig, split: Split) -> dict:
    """Backbone and the images LoRA needs: val and test rows read once, training rows per run
    (a few-shot job never holds the whole collection in memory)."""
    from cytofm.eval.backbones import load_backbone_spec
    from cytofm.eval.features import pick_device

    device = pick_device(cfg.device)
    bb = load_backbone_spec(spec, pretrained_dir, device=str(device))
    images = data["store"]["images"]
    return {
        "bb": bb,
        "images": images,
        "val_images": _rows(images, split.val),
        "test_images": _rows(images, split.test),
        "labels": data["labels"],
        "device": device,
        "settings": _lora_settings(cfg),
    }


def _rows(array, rows: np.ndarray) -> np.ndarray:
    """Rows of a zarr array (sorted indices), read chunk-wise."""
    if len(rows) == 0:
        return np.zeros((0, *array.shape[1:]), array.dtype)
    return np.asarray(array.get_orthogonal_selection((np.asarray(rows),)))


def _lora_run(ctx, rows, val, test, seed, cfg: EvalConfig, names, shots=None):
    """Train one adapter per learning rate for the protocol's steps (k-shot: by ``shots``;
    data share: by the rows' batches), keep the best on val, score it on test."""
    from cytofm.eval.lora import budget, predict_proba, train_lora

    labels, bb, device = ctx["labels"], ctx["bb"], ctx["device"]
    train_images = _rows(ctx["images"], rows)
    plan = budget(ctx["settings"], shots=shots, n_train=len(rows))
    best, val_scores = None, {}
    for lr in cfg.lora_lrs:
        model = train_lora(
            bb,
            train_images,
            labels[rows],
            len(names),
            ctx["settings"],
            float(lr),
            seed,
            steps=plan["steps"],
            warmup_steps=plan["warmup_steps"],
            device=device,
            precision=cfg.precision,
        )
        if len(val):
            pv = predict_proba(model, bb, ctx["val_images"], device)
            val_scores[lr] = select_score(labels[val], pv, cfg.select_metric, names)
        else:
            val_scores[lr] = 0.0
        if best is None or val_scores[lr] > val_scores[best[0]]:
            best = (float(lr), model)
    p = predict_proba(best[1], bb, ctx["test_images"], device)
    return p, {"lr": best[0], "val": _fmt(val_scores), "budget": plan}
