"""Figures of the results: few-shot and data-fraction curves, slide-task AUROC bars, confusion
matrices, embedding maps and the pretraining curves. The attention heatmaps and montages are
:mod:`cytofm.report.attention`, the QC images :mod:`cytofm.report.qc`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cytofm.results import read_result

__all__ = [
    "embedding_map",
    "placeholder",
    "plot_confusion",
    "plot_fewshot",
    "plot_fractions",
    "plot_history",
    "plot_mil",
    "plot_reliability",
    "project_2d",
]

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(result_jsons: list[str | Path], out_png: str | Path) -> Path | None:
    """One panel per backbone: the full-label linear probe's test confusion matrix (summed
    over runs), rows normalised to the share of each true class, counts written in."""
    panels = []
    for path in result_jsons:
        res = read_result(path)
        if res["protocol"] != "linear" or not res["results"]:
            continue
        block = res["results"][0]
        cm = np.sum([np.asarray(r["test"]["confusion_matrix"]) for r in block["runs"]], axis=0)
        panels.append((res["backbone"], res["classes"], cm, res["task"]))
    if not panels:
        return None
    plt = _plt()
    panels.sort(key=lambda p: p[0])
    n_cls = len(panels[0][1])
    size = 1.2 + 0.45 * n_cls
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 1, size), squeeze=False)
    for k, (ax, (backbone, classes, cm, _task)) in enumerate(zip(axes[0], panels, strict=True)):
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes if k == 0 else [], fontsize=7)
        ax.set_xlabel("predicted class")
        if k == 0:  # the classes read along the first panel's rows for all of them
            ax.set_ylabel("true class")
        ax.set_title(f"{backbone}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of the true class")
    fig.suptitle(f"{panels[0][3]}: linear probe, test confusion matrix (counts)", fontsize=9)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def plot_fractions(
    summary: pd.DataFrame, out_png: str | Path, metric: str = "balanced_accuracy"
) -> Path | None:
    """Metric vs. share of the training labels, one line per backbone x protocol with the
    95% CI band (Fig. 2 of Dausort, Godelaine et al.); None when the task has no fractions
    configured."""
    part = summary[(summary["skipped"] == "") & summary["fraction"].notna()]
    if part.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((backbone, protocol), grp) in enumerate(part.groupby(["backbone", "protocol"])):
        grp = grp.sort_values("fraction")
        x = 100 * grp["fraction"].to_numpy(float)
        colour = colours[i % len(colours)]
        label = f"{backbone} {'linear probe' if protocol == 'linear' else 'LoRA'}"
        ax.plot(x, grp[f"{metric}_mean"], "-o", color=colour, label=label, ms=4)
        ax.fill_between(
            x, grp[f"{metric}_ci_low"], grp[f"{metric}_ci_high"], color=colour, alpha=0.15, lw=0
        )
    ax.set_xlabel("training labels used (% of the training split)")
    ax.set_ylabel(metric.replace("_", " ") + " (test)")
    task = ", ".join(sorted(part["task"].unique()))
    ax.set_title(f"{task}: data-fraction curve (mean over seeds, 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def project_2d(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D map of the rows: UMAP when umap-learn is installed (or asked for), else PCA."""
    x = np.asarray(features, dtype=np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    if method in ("auto", "umap"):
        try:
            import umap
            from sklearn.neighbors import NearestNeighbors

            # Exact neighbours from sklearn (BLAS): umap-learn's own exact search for small
            # data calls its distance function once per pair from Python (~10 s for 3,000
            # rows). 200 layout epochs are umap-learn's default for large data; its 500 for
            # small data cost 2.5x the time for a plot that looks the same.
            k = min(15, len(x) - 1)
            dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
            reducer = umap.UMAP(
                n_components=2,
                random_state=seed,
                n_neighbors=k,
                n_epochs=200,
                precomputed_knn=(idx.astype(np.int32), dist.astype(np.float32)),
            )
            with warnings.catch_warnings():  # "n_jobs overridden by random_state": wanted
                warnings.simplefilter("ignore", UserWarning)
                return reducer.fit_transform(x), "UMAP"
        except ImportError:
            if method == "umap":
                raise ImportError(
                    "report.embedding: umap needs umap-learn (pip install umap-learn); "
                    "or set report.embedding: pca"
                ) from None
    from sklearn.decomposition import PCA

    n = min(2, x.shape[1], len(x))
    xy = PCA(n_components=n, random_state=seed).fit_transform(x)
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros(len(xy))])
    return xy, "PCA"


def _scatter(ax, xy, values, title, max_legend=12):
    cats = pd.Categorical(values)
    plt = _plt()
    cmap = plt.get_cmap("tab20" if len(cats.categories) > 10 else "tab10")
    for i, cat in enumerate(cats.categories):
        sel = cats.codes == i
        label = str(cat) if i < max_legend else None
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(cats.categories) <= max_legend:
        ax.legend(fontsize=6, markerscale=2, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    else:
        ax.text(0.01, 0.01, f"{len(cats.categories)} groups", transform=ax.transAxes, fontsize=7)


def embedding_map(
    panels: list[tuple[np.ndarray, np.ndarray, str]],
    out_png: str | Path,
    title: str,
    method: str = "auto",
    max_points: int = 3000,
    seed: int = 0,
) -> tuple[Path, str] | None:
    """One projection per feature set, drawn once per colouring.

    ``panels``: (features, values to colour by, panel title); panels that share a feature array
    (the same object) share one projection, so "by class" and "by slide" show the same points.
    """
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    used = "PCA"
    rng = np.random.default_rng(seed)
    for ax, (feats, values, panel_title) in zip(axes[0], panels, strict=True):
        key = id(feats)
        if key not in cache:
            take = np.arange(len(feats))
            if len(take) > max_points:
                take = np.sort(rng.choice(len(feats), max_points, replace=False))
            xy, used = project_2d(feats[take], method, seed)
            cache[key] = (xy, take)
        xy, take = cache[key]
        _scatter(ax, xy, np.asarray(values)[take], panel_title)
        ax.set_xlabel(f"{used} 1", fontsize=7)
        ax.set_ylabel(f"{used} 2", fontsize=7)
    fig.suptitle(f"{title} ({used} of the features)", fontsize=10)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png), used


def plot_fewshot(table: pd.DataFrame, out_png: str | Path, metric: str = "balanced_accuracy"):
    """Balanced accuracy vs. shots for each backbone x few-shot protocol, CI bands shaded;
    full-data linear probes as dashed horizontal lines."""
    plt = _plt()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ok = table[(table["skipped"] == "") & table["fraction"].isna()]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    backbones = sorted(ok["backbone"].unique())
    styles = {"fewshot": "-o", "lora": "--s"}
    for i, bb in enumerate(backbones):
        colour = colours[i % len(colours)]
        for protocol, style in styles.items():
            part = ok[(ok["backbone"] == bb) & (ok["protocol"] == protocol)]
            if part.empty:
                continue
            part = part.assign(k=part["shots"].astype(int)).sort_values("k")
            label = f"{bb} {'linear' if protocol == 'fewshot' else 'LoRA'}"
            ax.plot(part["k"], part[f"{metric}_mean"], style, color=colour, label=label, ms=4)
            ax.fill_between(
                part["k"],
                part[f"{metric}_ci_low"],
                part[f"{metric}_ci_high"],
                color=colour,
                alpha=0.15,
                lw=0,
            )
        full = ok[(ok["backbone"] == bb) & (ok["protocol"] == "linear")]
        if not full.empty:
            ax.axhline(
                full[f"{metric}_mean"].iloc[0],
                color=colour,
                ls=":",
                lw=1,
                label=f"{bb} linear, all labels",
            )
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for k in ok["shots"] if str(k) != "all"})
    if ticks:
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (shots)")
    ax.set_ylabel(metric.replace("_", " ") + " (test)")
    task = ", ".join(sorted(table["task"].unique()))
    ax.set_title(f"{task}: few-shot curves (mean over seeds, 95% bootstrap CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot_mil(table: pd.DataFrame, out_png: str | Path) -> None:
    """Slide-level AUROC per backbone and, where true cell classes are known, the AUROC of
    attention for the abnormal cells (mean over seeds, 95% bootstrap CI as error bars)."""
    plt = _plt()
    import numpy as np

    ok = table[table["skipped"] == ""].sort_values("backbone")
    panels = [("auroc", "slide label: AUROC (out-of-fold)")]
    if "attention_auroc_mean" in ok and ok["attention_auroc_mean"].notna().any():
        panels.append(("attention_auroc", "attention vs. true abnormal cells: AUROC"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 0.6, 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = np.arange(len(ok))
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        mean = ok[f"{metric}_mean"].to_numpy(float)
        err = np.abs(
            np.stack(
                [
                    mean - ok[f"{metric}_ci_low"].to_numpy(float),
                    ok[f"{metric}_ci_high"].to_numpy(float) - mean,
                ]
            )
        )
        ax.bar(x, mean, color=[colours[i % len(colours)] for i in range(len(ok))], width=0.6)
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=4)
        for xi, m in zip(x, mean, strict=True):
            ax.text(xi, 0.02, f"{m:.2f}", ha="center", va="bottom", fontsize=8, color="white")
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(x, ok["backbone"].tolist(), rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AUROC")
        ax.set_title(title, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    task = ", ".join(sorted(table["task"].unique()))
    fig.suptitle(f"{task}: attention MIL, mean over seeds with 95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot_history(history: list[dict], out_png: Path, title: str) -> Path:
    """Losses, teacher collapse monitors and the kNN probe against the step."""
    plt = _plt()

    panels = [
        ("losses", ["loss", "loss_dino", "loss_ibot"]),
        ("teacher", ["teacher_entropy", "teacher_batch_entropy"]),
        ("effective rank", ["teacher_cls_effective_rank"]),
        ("kNN balanced accuracy", ["knn_balanced_accuracy"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (name, keys) in zip(axes, panels, strict=True):
        for key in keys:
            pts = [(h["step"], h[key]) for h in history if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key, marker="." if len(pts) < 20 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _reliability_panels(result_jsons) -> list[tuple[str, str, dict]]:
    """(backbone, setting, pooled test probabilities) of the settings a reliability diagram
    shows (:func:`cytofm.report.tables.shown_block`), where calibrated ones were kept."""
    from cytofm.eval.predictions import result_blocks
    from cytofm.report.tables import setting_label, shown_block

    found: dict[tuple[str, str], dict[str, tuple]] = {}
    for res, block, key, pred in result_blocks(result_jsons):
        if pred["calibrated"].get(key):
            found.setdefault((res["backbone"], res["protocol"]), {})[key] = (block, pred)
    panels = []
    for (backbone, protocol), blocks in sorted(found.items()):
        key = shown_block(blocks)
        if key is None:
            continue
        block, pred = blocks[key]
        _, label = setting_label(protocol, block.get("shots"), None)
        n_seeds = len(pred["blocks"][key])
        entry = {
            "y": np.tile(pred["y_test"], n_seeds),
            "before": np.concatenate(pred["blocks"][key]),
            "after": np.concatenate(pred["calibrated"][key]),
        }
        panels.append((backbone, label, entry))
    return panels


def plot_reliability(result_jsons, out_png: str | Path, task: str = "") -> Path | None:
    """Reliability diagrams: per backbone (columns) and shown setting (rows), the accuracy of
    each confidence bin against its mean confidence, before and after temperature scaling
    (seeds pooled), with each curve's ECE; the diagonal is perfect calibration."""
    from cytofm.eval.calibration import ece, reliability

    panels = _reliability_panels(result_jsons)
    if not panels:
        return None
    plt = _plt()
    backbones = sorted({p[0] for p in panels})
    settings = list(dict.fromkeys(p[1] for p in panels))
    fig, axes = plt.subplots(
        len(settings),
        len(backbones),
        figsize=(2.9 * len(backbones) + 0.4, 2.7 * len(settings) + 0.4),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.set_visible(False)
    for backbone, setting, e in panels:
        ax = axes[settings.index(setting)][backbones.index(backbone)]
        ax.set_visible(True)
        ax.plot([0, 1], [0, 1], color="0.7", lw=1)
        y = e["y"]
        for name, colour in (("before", "tab:red"), ("after", "tab:blue")):
            r = reliability(y, e[name])
            seen = r["count"] > 0
            label = f"{'raw' if name == 'before' else 'scaled'}: ECE {ece(y, e[name]):.3f}"
            ax.plot(r["confidence"][seen], r["accuracy"][seen], "o-", ms=3, color=colour,
                    label=label)  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{backbone}\n{setting}", fontsize=8)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{task}: reliability before and after temperature scaling", fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def placeholder(out_png: str | Path, text: str) -> Path:
    """A small figure that says why there is nothing to plot (a workflow output must exist)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return Path(out_png)
