"""The results report's page, section by section: per task a table of backbones x protocol
settings (mean ± std over seeds, bootstrap 95% CI, best marked only where the paired difference
says so), the few-shot and data-fraction curves, confusion matrices, embedding maps coloured by
class and by slide/group (biology or batch?), and for slide tasks the AUROC bars, attention
heatmaps and top-cell montages; then pretraining curves and QC thumbnails.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cytofm.config import ReportConfig
from cytofm.eval.summary import summary_table
from cytofm.report.figures import (
    embedding_map,
    plot_confusion,
    plot_fewshot,
    plot_fractions,
    plot_mil,
)
from cytofm.report.html import Figure, Section
from cytofm.report.tables import (
    main_metric,
    overview_table,
    results_table,
    sentence,
    to_html,
    write_table,
)
from cytofm.results import read_result
from cytofm.store import as_str_array, open_store

__all__ = ["EXPLAIN", "ReportBuilder", "detection_table", "load_comparisons"]

log = logging.getLogger(__name__)

EXPLAIN = {
    False: "Cells: mean ± standard deviation over seeds [95% CI over test items (patients where "
    "the task has them) and seeds; a backbone on several pretraining checkpoints pools them, "
    "with the checkpoint as the interval's top level]. A backbone is in bold only when its "
    "paired difference against every other backbone (same test items and seeds) has a CI above "
    "zero; the last column gives the differences and says 'no difference' otherwise. Metric: "
    "balanced accuracy on the test split.",
    True: "Cells: mean ± standard deviation over seeds [95% CI over slides (whole patients) and "
    "seeds, and pretraining checkpoints where a heading counts several]. A backbone is in bold "
    "only when its paired difference against every other backbone has a CI above zero; the "
    "last column gives the differences. Metric: AUROC of the out-of-fold slide predictions "
    "(patient-grouped folds). Heatmaps and montages: slides with the highest predicted "
    "abnormality first.",
}


CALIBRATION_COLUMNS = {
    "ece": "ECE raw",
    "ece_scaled": "ECE scaled",
    "nll": "NLL raw",
    "nll_scaled": "NLL scaled",
    "temperature": "temperature [range]",
    "coverage": "conformal coverage",
    "set_size": "mean set size",
}
CALIBRATION_INTRO = (
    "Does a probability of 0.9 mean 90%? Expected calibration error (top label, 15 confidence "
    "bins) and negative log-likelihood of the test predictions, raw and after temperature "
    "scaling (one temperature per trained model, fitted on the validation rows that chose its "
    "settings; for attention MIL on each fold's inner validation slides). Conformal: "
    "split-conformal prediction sets for the configured coverage (evaluate.conformal_alpha), "
    "calibrated on validation rows set apart from every choice (evaluate.conformal_share), "
    "their coverage and mean size on test. Mean over seeds [95% CI "
    "over test items (whole groups) and seeds; for the temperature, the range of the fitted "
    "values]. Shown: each protocol with all labels, few-shot and LoRA with the most labels; "
    "every setting is in the CSV."
)


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _embedding_panels(entry: Mapping[str, str]) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A task's dataset features, coloured by class, by group and by its batch column."""
    ds = open_store(entry["dataset"])
    feats = np.asarray(open_store(entry["features"])["features"][:], dtype=np.float32)
    classes = [str(c) for c in ds.attrs.get("classes", [])]
    labels = np.asarray(ds["labels"][:]).astype(int)
    names = np.array([classes[i] if i < len(classes) else str(i) for i in labels])
    panels = [(feats, names, "coloured by class")]
    if "groups" in ds:
        panels.append((feats, as_str_array(ds["groups"][:]), "coloured by group (slide/patient)"))
    column = entry.get("batch", "")
    if column and f"meta_{column}" in ds:  # the task's batch column: site, stain, scanner
        panels.append((feats, as_str_array(ds[f"meta_{column}"][:]), f"coloured by {column}"))
    return panels


def _slide_panels(
    stores: Mapping[str, str], meta: Mapping[str, Mapping[str, str]], max_points: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Cells of every slide (an equal share each), coloured by slide and by stain."""
    if not stores:
        return []
    per_slide = max(10, max_points // len(stores))
    rng = np.random.default_rng(seed)
    feats, slides = [], []
    for slide, path in sorted(stores.items()):
        f = open_store(path)["features"]
        n = f.shape[0]
        if n == 0:
            continue
        take = np.sort(rng.choice(n, min(n, per_slide), replace=False))
        feats.append(np.asarray(f[:], dtype=np.float32)[take])
        slides += [slide] * len(take)
    if not feats:
        return []
    x, slides = np.concatenate(feats), np.array(slides)
    panels = [(x, slides, "slide cells, coloured by slide")]
    stains = np.array([str(meta.get(s, {}).get("stain", "")) for s in slides])
    if len(set(stains) - {""}) > 1:
        panels.append((x, stains, "slide cells, coloured by stain"))
    return panels


def detection_table(paths: Sequence[str | Path], truth: Sequence[str | Path] = ()) -> pd.DataFrame:
    """One row per slide from the cells stage's QC JSONs: tiles, cells, density, the chromatin
    map and stain vectors used, and the warning of a slide where no cell was found; with
    ``truth`` (``qc/detection.json``), recall, precision and F1 against the slide's cell_truth
    table within the matching radius."""
    scored: dict[str, dict] = {}
    for t in truth:
        scored.update(json.loads(Path(t).read_text())["per_slide"])
    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        stain = d.get("stain") or {}
        vectors = stain.get("vectors")
        slide = d.get("slide_id", Path(p).name.split(".")[0])
        match = scored.get(slide) or {}
        rows.append(
            {
                **{k: match.get(k) for k in ("recall", "precision", "f1", "tolerance_um")},
                "slide": slide,
                "detector": d.get("detector", ""),
                "tiles": d.get("n_tiles"),
                "cells": d.get("n_cells"),
                "cells_per_mm2": d.get("cells_per_mm2_foreground_tiles"),
                "chromatin_map": stain.get("mode", "min_od"),
                "chromatin_vector": (
                    " ".join(f"{x:.2f}" for x in vectors[stain["nuclear"]]) if vectors else ""
                ),
                "stain_reason": stain.get("reason", ""),
                "status": "no cells found" if d.get("warning") else "ok",
            }
        )
    return pd.DataFrame(rows)


def _detection_html(det: pd.DataFrame) -> str:
    empty = det.loc[det["status"] != "ok", "slide"].tolist()
    note = (
        '<p class="skipped">No cells found in '
        + ", ".join(html.escape(str(s)) for s in empty)
        + ": kept with zero cells and left out of the steps that need cells (pretraining, "
        "features, MIL bags); their logs say why.</p>"
        if empty
        else ""
    )
    columns = ("slide", "tiles", "cells", "cells / mm²", "chromatin map", "chromatin OD (R G B)")
    scored = det["recall"].notna().any()
    truth_cols = ("recall", "precision", "F1") if scored else ()
    head = "".join(f"<th>{c}</th>" for c in (*columns[:4], *truth_cols, *columns[4:], "status"))

    def figures(r) -> str:
        if not scored:
            return ""
        if r.recall is None or pd.isna(r.recall):
            return "<td>-</td>" * 3
        return "".join(f"<td>{v:.3f}</td>" for v in (r.recall, r.precision, r.f1))

    body = "".join(
        "<tr>"
        + f"<th>{html.escape(str(r.slide))}</th><td>{r.tiles}</td><td>{r.cells}</td>"
        + f"<td>{(r.cells_per_mm2 or 0):.0f}</td>"
        + figures(r)
        + f'<td title="{html.escape(str(r.stain_reason))}">{html.escape(str(r.chromatin_map))}</td>'
        + f"<td>{html.escape(str(r.chromatin_vector))}</td>"
        + (f"<td>{r.status}</td>" if r.status == "ok" else f'<td class="skipped">{r.status}</td>')
        + "</tr>"
        for r in det.itertuples()
    )
    radius = det["tolerance_um"].dropna()
    if scored and len(radius):
        detectors = ", ".join(sorted({str(d) for d in det["detector"] if d})) or "classical"
        note += (
            f"<p>Recall, precision and F1 of the {html.escape(detectors)} detector "
            "(cells.detector): detections matched one-to-one to the true cells of "
            f"the slide's cell_truth table within {radius.iloc[0]:g} um "
            "(detection_eval.tolerance_um); pictures below (green ring: true cell found, "
            "yellow: missed; cyan cross: detection on a true cell, red: on none). Another "
            "detector run into another results folder gives the same table to compare.</p>"
        )
    return f"{note}<table><tr>{head}</tr>{body}</table>"


def _split_note(jsons: Sequence[Path]) -> str:
    """A caveat for a task whose split could not group by patient (no group column)."""
    for path in jsons:
        split = (read_result(path).get("split") or {}).get("source")
        if split == "stratified":
            return (
                " Caveat: this dataset has no patient (group) column, so its split is by cell: "
                "cells of one patient can sit in both the training and the test rows, and the "
                "intervals resample cells, not patients. Scores may be optimistic for new "
                "patients."
            )
    return ""


def _exposure_note(jsons: Sequence[Path]) -> str:
    """What pretraining saw of the task, from the results of this config's pretrained
    backbones: inductive (test rows left out, or never read) or transductive."""
    notes = set()
    for path in jsons:
        res = read_result(path)
        exp = res.get("exposure") or {}
        if exp.get("pretraining") != "this config's pretraining":
            continue
        if exp.get("transductive"):
            notes.add(
                f"{res['backbone']}: transductive (pretrain.transductive: true), pretraining "
                "may have read this task's test items"
            )
        elif exp.get("test_rows_excluded"):
            notes.add(
                f"{res['backbone']}: inductive, pretraining left out this task's "
                f"{exp['test_rows_excluded']} test rows"
            )
        else:
            notes.add(f"{res['backbone']}: inductive, pretraining never read this task's data")
    return (" Pretraining exposure: " + "; ".join(sorted(notes)) + ".") if notes else ""


def load_comparisons(paths: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """task -> its paired comparisons (rows of every comparisons CSV)."""
    frames = [pd.read_csv(p) for p in paths if Path(p).is_file()]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return {}
    allc = pd.concat(frames, ignore_index=True)
    return {str(t): part for t, part in allc.groupby("task")}


def _headline_rows(tables: Mapping[str, pd.DataFrame], compared: Mapping[str, pd.DataFrame]):
    """(task, row index, comparisons) of each task's headline row: the full-label linear
    probe, or attention MIL for a slide task."""
    for task, table in tables.items():
        settings = table["setting"].tolist()
        for i, setting in enumerate(settings):
            if setting == "linear probe, all labels" or setting.startswith("attention MIL"):
                yield task, i, compared.get(task)
                break


def _mil_pictures(jsons, dest: Path, max_slides: int, sec: Section, fig) -> None:
    """Heatmaps and montages of up to ``max_slides`` slides per backbone (highest predicted
    abnormality first), copied next to the page."""
    for path in jsons:
        res = read_result(path)
        src = path.with_suffix("")  # <backbone>/abmil.json -> <backbone>/abmil/
        slides = list(res.get("slides", []))
        proba = np.asarray(res.get("oof_proba") or [], dtype=float)  # (seeds, slides, classes)
        if proba.ndim == 3 and proba.shape[1] == len(slides):
            order = np.argsort(-proba[0][:, -1], kind="stable")  # most abnormal first
        else:
            order = np.arange(len(slides))
        for i in order[:max_slides]:
            slide = slides[int(i)]
            for kind in ("heatmap", "montage"):
                png = src / kind / f"{slide}.png"
                if png.is_file():
                    label = res["labels"][int(i)] if "labels" in res else "?"
                    fig(
                        _copy(png, dest / res["backbone"] / f"{kind}_{slide}.png"),
                        f"{res['backbone']} {kind}: {slide} (label {label})",
                        sec,
                        thumb=True,
                    )


class ReportBuilder:
    """Sections of the report page, with the tables and figures each writes under ``out``
    (``tables/``, ``figures/``); ``written`` lists them relative to ``out``."""

    def __init__(self, out: Path, cfg: ReportConfig) -> None:
        self.out, self.cfg = out, cfg
        self.figs, self.tabs = out / "figures", out / "tables"
        for folder in (self.figs, self.tabs):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.sections: list[Section] = []
        self.tables: dict[str, pd.DataFrame] = {}
        self.written: dict[str, list[str]] = {"tables": [], "figures": []}

    def fig(self, path: Path | None, caption: str, section: Section, thumb: bool = False) -> None:
        if path is not None and Path(path).is_file():
            rel = Path(path).relative_to(self.out).as_posix()
            (section.thumbs if thumb else section.figures).append(Figure(rel, caption))
            self.written["figures"].append(rel)

    def _table(self, table: pd.DataFrame, stem: str, **kw) -> dict[str, Path]:
        paths = write_table(table, self.tabs / stem, **kw)
        self.written["tables"] += [p.relative_to(self.out).as_posix() for p in paths.values()]
        return paths

    def _links(self, paths: Mapping[str, Path]) -> list[tuple[str, str]]:
        return [(p.relative_to(self.out).as_posix(), p.name) for p in paths.values()]

    def tasks(
        self,
        by_task,
        compared,
        embeddings,
        trees=None,
        calibration=None,
        robustness=None,
        checkpoints=None,
        n_boot: int = 1000,
    ) -> None:
        """One section per task: patch-level tasks first, then slide-level ones, each
        alphabetically; a task with a label tree is followed by its section (``trees``:
        task -> {"hierarchy", "screening", "csv"}), then by its calibration (``calibration``:
        task -> {"csv", "png"}), its batch-leak probe (``robustness``: task -> backbone ->
        JSON) and, for a leave-one-out task, its held-out values. ``checkpoints``: backbone ->
        [configured backbone, checkpoint index], as the task summaries pooled them."""
        summaries = {
            task: summary_table(sorted(paths), checkpoints, n_boot=n_boot)
            for task, paths in by_task.items()
        }
        for task in sorted(summaries, key=lambda t: (main_metric(summaries[t]) == "auroc", t)):
            embedding = (embeddings or {}).get(task) or {}
            self.task(task, sorted(by_task[task]), summaries[task], compared.get(task), embedding)
            if task in (trees or {}):
                self.label_tree(task, sorted(by_task[task]), trees[task])
            if task in (calibration or {}):
                self.calibration(task, calibration[task])
            if task in (robustness or {}):
                self.batch_leak(task, robustness[task])
            self.held_out(task, sorted(by_task[task]))

    def _csv_section(self, anchor, title, intro, csv_table, stem, html) -> Section:
        """A section showing ``html`` with ``csv_table`` written as ``tables/<stem>.csv`` and
        linked; appended to the page."""
        paths = {"csv": self.tabs / f"{stem}.csv"}
        csv_table.to_csv(paths["csv"], index=False, float_format="%.4g")
        self.written["tables"].append(paths["csv"].relative_to(self.out).as_posix())
        sec = Section(anchor, title, intro, tables_html=[html], links=self._links(paths))
        self.sections.append(sec)
        return sec

    def batch_leak(self, task: str, files: Mapping[str, str]) -> None:
        """Per backbone: the batch-leak probe next to the class probe, and the robustness
        index."""
        from cytofm.report.robustness import BATCH_INTRO, batch_table, plot_batch
        from cytofm.report.tables import plain_html

        table = batch_table(files)
        sec = self._csv_section(
            f"batch-{task}", f"Batch effects: {task}", BATCH_INTRO, table, f"{task}_batch",
            plain_html(table),
        )  # fmt: skip
        png = plot_batch(files, self.figs / f"{task}_batch.png", task)
        self.fig(png, "batch-leak probe and robustness index", sec)

    def held_out(self, task: str, jsons) -> None:
        """A leave-one-out task: each held-out value's balanced accuracy."""
        from cytofm.report.robustness import HELD_OUT_INTRO, held_out_table
        from cytofm.report.tables import plain_html

        table = held_out_table(jsons)
        if not table.empty:
            self._csv_section(
                f"held-out-{task}", f"Held out in turn: {task}", HELD_OUT_INTRO, table,
                f"{task}_held_out", plain_html(table),
            )  # fmt: skip

    def calibration(self, task: str, files: Mapping[str, str]) -> None:
        """ECE and NLL before and after temperature scaling, the temperatures, conformal
        coverage, and the reliability diagrams."""
        from cytofm.report.tables import long_view, plain_html

        long = pd.read_csv(files["csv"])
        if long.empty:
            return
        sec = self._csv_section(
            f"calibration-{task}", f"Calibration: {task}", CALIBRATION_INTRO, long,
            f"{task}_calibration", plain_html(long_view(long, CALIBRATION_COLUMNS)),
        )  # fmt: skip
        png = _copy(Path(files["png"]), self.figs / f"{task}_reliability.png")
        self.fig(png, "reliability before (raw) and after temperature scaling", sec)

    def label_tree(self, task: str, jsons, spec: Mapping) -> None:
        """Per-level metrics, mistake severity and screening operating points."""
        from cytofm.eval.hierarchy import LabelTree
        from cytofm.report.hierarchy import INTRO, hierarchy_html, hierarchy_view

        long = pd.read_csv(spec["csv"])
        if long.empty:
            return
        tree = LabelTree(spec["hierarchy"], read_result(jsons[0])["classes"], spec["screening"])
        self._csv_section(
            f"tree-{task}", f"Label tree: {task}", INTRO, long, f"{task}_hierarchy",
            hierarchy_html(hierarchy_view(long, tree), tree),
        )  # fmt: skip

    def task(self, task, jsons, summary, compared, embeddings) -> None:
        metric = main_metric(summary)
        table = results_table(summary, metric, compared)
        self.tables[task] = table
        paths = self._table(table, task)
        is_mil = metric == "auroc"
        sec = Section(
            anchor=f"task-{task}",
            title=f"{'Slide' if is_mil else 'Patch'}-level task: {task}",
            intro=EXPLAIN[is_mil] + _exposure_note(jsons) + _split_note(jsons),
            tables_html=[to_html(table), *_task_notes(summary, jsons)],
            links=self._links(paths),
        )
        figs = self.figs
        if is_mil:
            plot_mil(summary, figs / f"{task}_auroc.png")
            self.fig(figs / f"{task}_auroc.png", "slide AUROC and attention vs. truth", sec)
            _mil_pictures(jsons, figs / "mil" / task, self.cfg.max_slides, sec, self.fig)
        else:
            if (summary["protocol"].isin(["fewshot", "lora"])).any():
                plot_fewshot(summary, figs / f"{task}_fewshot.png")
                self.fig(figs / f"{task}_fewshot.png", "few-shot curves", sec)
            fractions = plot_fractions(summary, figs / f"{task}_fractions.png")
            self.fig(fractions, "data-fraction curve", sec)
            confusion = plot_confusion(jsons, figs / f"{task}_confusion.png")
            self.fig(confusion, "confusion matrices", sec)
            for backbone, entry in sorted(embeddings.items()):
                made = embedding_map(
                    _embedding_panels(entry),
                    figs / f"{task}_embedding_{backbone}.png",
                    f"{task}: {backbone}",
                    self.cfg.embedding,
                    self.cfg.max_points,
                )
                if made:
                    caption = f"{backbone} embeddings ({made[1]}) by class and group"
                    self.fig(made[0], caption, sec)
        self.sections.append(sec)

    def overview(self, compared) -> None:
        """First on the page: the headline row of every task, and one sentence per task."""
        overview = overview_table(self.tables) if self.tables else pd.DataFrame()
        if overview.empty:
            return
        paths = self._table(overview, "overview", first="task")
        verdicts = "".join(
            f"<li>{html.escape(sentence(task, self.tables[task].iloc[i], c))}</li>"
            for task, i, c in _headline_rows(self.tables, compared)
        )
        sec = Section(
            anchor="overview",
            title="Overview: tasks x backbones",
            intro="Full-label linear probe (balanced accuracy) per patch task and "
            "attention MIL (AUROC) per slide task; mean ± std [95% CI over test "
            "items and seeds]; bold only where the paired difference holds after Holm's "
            "adjustment over the task's comparisons. Each verdict is about this pretraining "
            "checkpoint, not the recipe: another pretraining draw of the same config can move "
            "it. "
            "What the numbers support:",
            tables_html=[f'<ul class="verdicts">{verdicts}</ul>', to_html(overview, first="task")],
            links=self._links(paths),
        )
        self.sections.insert(0, sec)

    def slide_cells(self, slide_features, slide_meta) -> None:
        sec = Section("slides-embedding", "Slide cells: biology or batch?")
        sec.intro = (
            "Cells of every slide in one map per backbone. Points that cluster by slide or "
            "stain rather than mixing show a backbone that encodes the batch."
        )
        for backbone, stores in sorted(slide_features.items()):
            panels = _slide_panels(stores, slide_meta or {}, self.cfg.max_points, 0)
            made = embedding_map(
                panels, self.figs / f"slides_embedding_{backbone}.png", backbone, self.cfg.embedding
            )
            if made:
                self.fig(made[0], f"{backbone}: slide cells ({made[1]})", sec)
        self.sections.append(sec)

    def pretraining(self, pretrain_dirs) -> None:
        sec = Section("pretraining", "Pretraining")
        sec.intro = "Losses, teacher collapse monitors (entropy, effective rank) and the kNN probe."
        for d in pretrain_dirs:
            curve = Path(d).parent / "training.png"
            if curve.is_file():
                name = Path(d).parent.name
                copied = _copy(curve, self.figs / f"pretrain_{name}.png")
                self.fig(copied, f"{name}: training curves", sec)
        self.sections.append(sec)

    def predictions(self, tables: Sequence[str | Path]) -> None:
        """Per slide task with unlabelled slides: their predictions and the heatmaps of up to
        ``max_slides`` of them per backbone."""
        from cytofm.report.predictions import INTRO, heatmap_of, predictions_html

        for csv in tables:
            table = pd.read_csv(csv)
            if table.empty:
                continue
            task = str(table["task"].iloc[0])
            sec = Section(f"predictions-{task}", f"Predictions: {task}", INTRO)
            paths = {"csv": self.tabs / f"predictions_{task}.csv"}
            table.to_csv(paths["csv"], index=False, float_format="%.4g")
            self.written["tables"].append(paths["csv"].relative_to(self.out).as_posix())
            sec.links = self._links(paths)
            shown: dict[tuple[str, str], str] = {}
            for backbone, rows in table.groupby("backbone", sort=True):
                for slide in list(rows["slide_id"].astype(str))[: self.cfg.max_slides]:
                    src = heatmap_of(Path(csv), slide, str(backbone))
                    if src.is_file():
                        dst = _copy(src, self.figs / "predict" / task / f"{backbone}_{slide}.png")
                        shown[(slide, str(backbone))] = dst.relative_to(self.out).as_posix()
                        self.fig(dst, f"{backbone}: {slide}", sec, thumb=True)
            sec.tables_html.append(predictions_html(table, shown))
            self.sections.append(sec)

    def quality_control(self, qc, detection, truth=()) -> None:
        sec = Section("qc", "Quality control")
        det = detection_table(detection, truth)
        shown = list(qc)[: self.cfg.max_slides] if self.cfg.max_slides else []
        sec.intro = (
            f"Tissue mask and tile grid, and detected cells, for {len(shown)} of {len(qc)} "
            "slides (all are in results/qc/)."
        )
        if not det.empty:
            path = self.tabs / "detection.csv"
            det.to_csv(path, index=False, float_format="%.4g")
            self.written["tables"].append(path.relative_to(self.out).as_posix())
            sec.links.append((path.relative_to(self.out).as_posix(), path.name))
            sec.tables_html.append(_detection_html(det))
        qc_dir = self.figs / "qc"
        for slide, png in shown:
            self.fig(_copy(Path(png), qc_dir / f"{slide}.png"), f"{slide}: tiles", sec, True)
            cells = Path(png).with_suffix(".cells.png")
            if cells.is_file():
                copied = _copy(cells, qc_dir / f"{slide}.cells.png")
                self.fig(copied, f"{slide}: cells", sec, True)
            for t in truth:
                overlay = Path(t).parent / "detection" / f"{slide}.png"
                if overlay.is_file():
                    copied = _copy(overlay, qc_dir / f"{slide}.detection.png")
                    self.fig(copied, f"{slide}: detections vs. truth", sec, True)
        self.sections.append(sec)


def _task_notes(summary: pd.DataFrame, jsons: Sequence[Path]) -> list[str]:
    """What a task's table leaves out: settings not evaluated, slides without cells."""
    skipped = sorted(
        {
            f"{r['protocol']} {r['shots']}-shot ({r['backbone']}): {r['skipped']}"
            for _, r in summary.iterrows()
            if r["skipped"]
        }
    )
    left_out = sorted(
        {
            f"{x['slide_id']} ({x['reason']})"
            for p in jsons
            for x in read_result(p).get("left_out") or []
        }
    )
    notes = []
    for intro, items in (
        ("Not evaluated: ", skipped),
        ("Slides left out of the cohort: ", left_out),
    ):
        if items:
            notes.append(
                f'<p class="skipped">{intro}' + "; ".join(html.escape(t) for t in items) + "</p>"
            )
    return notes
